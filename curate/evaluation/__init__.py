"""Generation, grading and evaluation: benchmarks as `Problem`s, a code sandbox, math-verify
grading, `evaluate` (pass@1 / avg@k with bootstrap intervals), query sets for `curate score`, and
for `curate validate` the contamination check and the comparison with a baseline.

    from curate.evaluation import EvalConfig, HFEngine, evaluate, load_benchmark
    result = evaluate(HFEngine(model, tokenizer), load_benchmark("gsm8k"), EvalConfig(max_new_tokens=256))
    result.summary()["gsm8k"]["pass@1"]

Importing this package is cheap: torch, transformers and math-verify load on first use.
"""

from curate.evaluation.benchmarks import PACKAGED, Problem, load_benchmark
from curate.evaluation.compare import comparison, plot_comparison
from curate.evaluation.contamination import check_contamination
from curate.evaluation.engines import ENGINES, HFEngine, ServerEngine, ServerSettings
from curate.evaluation.evaluate import EvalConfig, EvalResult, ProblemRecord, evaluate
from curate.evaluation.generate import Generation, generate
from curate.evaluation.grading import Grade, extract_code, grade, grade_code, grade_math
from curate.evaluation.query import build_query_sets, write_query_sets
from curate.evaluation.sandbox import SandboxResult, isolation_level, run_python

__all__ = [
    "ENGINES",
    "PACKAGED",
    "HFEngine",
    "ServerEngine",
    "ServerSettings",
    "EvalConfig",
    "EvalResult",
    "Generation",
    "Grade",
    "Problem",
    "ProblemRecord",
    "SandboxResult",
    "build_query_sets",
    "check_contamination",
    "comparison",
    "evaluate",
    "extract_code",
    "generate",
    "grade",
    "grade_code",
    "grade_math",
    "isolation_level",
    "load_benchmark",
    "plot_comparison",
    "run_python",
    "write_query_sets",
]
