# Builds the bundled sample under curate/resources/sample/ from the shared public data.
# Run once by a developer; the output is committed (the repository cannot read the data at run
# time).   Usage: .venv/bin/python scripts/build_sample.py [--data /work/shared/data]
"""Build `curate/resources/sample/`: a tiny pool, donor pool and query sets for the offline demo.

Selection is seeded and deterministic: the same data folder gives byte-identical files. The script
never reads `heldout/` (reserved for acceptance evaluation). Every written line is parsed back as
JSON before the script reports success. See `curate/resources/sample/README.md` for the formats.
"""

from __future__ import annotations

import argparse
import ast
import gzip
import json
import random
import re
import shutil
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

SEED = 20250101
ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "curate" / "resources" / "sample"

# Our own wording, in the spirit of Bespoke-Stratos' system prompt (one prompt for every row).
SYSTEM_PROMPT = (
    "You are an assistant that answers by reasoning carefully before committing to an answer. "
    "First think the problem through in depth: restate what is asked, try approaches, check each "
    "step, notice and fix your mistakes, and revisit ideas that do not work. Write this reasoning "
    "inside <|begin_of_thought|> and <|end_of_thought|>, with steps separated by blank lines. "
    "Then give the final answer as a clean, self-contained solution inside <|begin_of_solution|> "
    "and <|end_of_solution|>, stating only the steps needed to reach the correct result."
)
MATH_PREFIX = "Return your final response within \\boxed{}. "  # Bespoke-Stratos' exact math prefix
CODE_PREFIX = "Generate an executable Python function generated from the given prompt. "

# Per-level counts (levels 1..5). Pool: spread over all levels. Donor: mostly hard problems, plus
# DONOR_MATH500 problems that are also MATH-500 test problems (for a decontamination demo).
POOL_MATH_BY_LEVEL = {1: 8, 2: 11, 3: 13, 4: 8, 5: 8}  # 48
DONOR_MATH_BY_LEVEL = {1: 2, 2: 3, 3: 7, 4: 13, 5: 12}  # 37, + 3 from MATH-500 = 40
DONOR_MATH500 = 3
N_POOL_CODE, N_DONOR_CODE = 32, 30
N_QUERIES = 32
# More GSM8K queries, drawn after the MBPP ones (so the first 32 math and all code queries stay as
# first built) and appended: the demo's math ranking needs 64 query answers to pass its own
# stability check (split-vs-split Spearman-Brown >= 0.7).
N_EXTRA_MATH_QUERIES = 32
MAX_MATH_CHARS = 2500  # the whole assistant turn of a pool row (the demo runs a 135M model on CPU)
MAX_CODE_CHARS = 2000  # statement + solution
MAX_DONOR_MATH_CHARS = 4000  # reasoning + reference solution

# Sources that ship no license file of their own: we write the notice ourselves.
NOTICES = {
    "NOTICE.mbpp": (
        "MBPP (Mostly Basic Python Problems), Austin et al. 2021, Google Research.\n"
        "Source: google-research/google-research mbpp/mbpp.jsonl (via the copy in\n"
        "OckBench/OckBench@b72752a0ba5989d3c212675ec60d3eedcd838628:data/mbpp.jsonl).\n"
        "License: Creative Commons Attribution 4.0 International (CC BY 4.0),\n"
        "https://creativecommons.org/licenses/by/4.0/ (per the MBPP dataset card).\n"
        "Changes: 32 rows of the test split (task_id 11-510) selected; CRLF line ends in `code`\n"
        "normalized to LF; the other fields dropped.\n"
    ),
    "NOTICE.qwen25math": (
        "Model chain-of-thought samples from QwenLM/Qwen2.5-Math\n"
        "@a45202bd16f1ec06f433442dc1152d0074773465:evaluation/data/eval_rm_maj_example/math_cot_100.jsonl\n"
        "(the Qwen2.5-Math evaluation harness; MIT License as recorded in this project's data\n"
        "MANIFEST; outputs of Qwen models). The problems and reference solutions are from the\n"
        "MATH dataset (Hendrycks et al. 2021, MIT License); see LICENSE.prm800k for MATH-500.\n"
        "Changes: one correct sample per problem kept, wrapped in thought/solution markers together\n"
        "with the MATH reference solution; see ../README.md.\n"
    ),
}
LICENSES = {  # source file under the data folder -> name under licenses/
    "gsm8k/LICENSE": "LICENSE.gsm8k",
    "math500/LICENSE.prm800k": "LICENSE.prm800k",
    "taco/LICENSE": "LICENSE.taco",
}


def read_jsonl(path: Path) -> list[dict]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def as_list(value) -> list:
    """The traces file stores lists natively, but some copies stringify them (Python literals)."""
    return ast.literal_eval(value) if isinstance(value, str) else list(value)


def norm(text: str) -> str:
    return " ".join(text.split())


# --- math -------------------------------------------------------------------------------------


def math_candidates(data: Path) -> list[dict]:
    """MATH problems with their shortest correct model CoT; `math500_id` where also in MATH-500."""
    math500 = {norm(r["problem"]): r["unique_id"] for r in read_jsonl(data / "math500/test.jsonl")}
    out, seen = [], set()
    for r in read_jsonl(data / "reasoning_traces/qwen25math_eval_rm_maj_math_cot_100.jsonl.gz"):
        key = norm(r["question"])
        if key in seen:
            continue
        seen.add(key)
        answers, scores = as_list(r["code"]), as_list(r["score"])
        correct = [a.strip() for a, ok in zip(answers, scores, strict=True) if ok is True]
        if not correct:
            continue
        out.append({
            "idx": r["idx"],
            "question": r["question"].strip(),
            "level": int(r["level"].removeprefix("Level ").strip()),
            "cot": min(correct, key=len),  # prefer short traces; ties keep the first
            "solution": r["solution"].strip(),
            "answer": r["answer"],
            "math500_id": math500.get(key),
        })
    return out


def math_pool_row(c: dict) -> dict:
    assistant = (
        "<|begin_of_thought|>\n\n" + c["cot"] + "\n\n<|end_of_thought|>\n\n"
        "<|begin_of_solution|>\n\n" + c["solution"] + "\n\n<|end_of_solution|>"
    )
    return {
        "system": SYSTEM_PROMPT,
        "conversations": [
            {"from": "user", "value": MATH_PREFIX + c["question"]},
            {"from": "assistant", "value": assistant},
        ],
        "level": c["level"],
    }


def math_donor_row(c: dict) -> dict:
    return {
        "problem": c["question"],
        "deepseek_reasoning": c["cot"],
        "deepseek_solution": None,  # no separate model solution: the CoT holds the model's answer
        "ground_truth_solution": c["solution"],
        "domain": "math",
        "source": "MATH",
        "test_cases": None,
        "starter_code": None,
        "level": c["level"],
    }


def pick_by_level(rng: random.Random, pool: list[dict], counts: dict[int, int], what: str) -> list[dict]:
    picked = []
    for level, n in counts.items():
        at_level = [c for c in pool if c["level"] == level]
        if len(at_level) < n:
            sys.exit(f"{what}: only {len(at_level)} level-{level} problems, need {n}")
        picked += rng.sample(at_level, n)
    return picked


def select_math(rng: random.Random, cands: list[dict]) -> tuple[list[dict], list[dict]]:
    def pool_len(c: dict) -> int:
        return len(math_pool_row(c)["conversations"][1]["value"])

    clean = [c for c in cands if c["math500_id"] is None]
    pool = pick_by_level(rng, [c for c in clean if pool_len(c) <= MAX_MATH_CHARS], POOL_MATH_BY_LEVEL, "pool")
    taken = {c["idx"] for c in pool}
    short = [c for c in clean if c["idx"] not in taken and len(c["cot"]) + len(c["solution"]) <= MAX_DONOR_MATH_CHARS]
    donor = pick_by_level(rng, short, DONOR_MATH_BY_LEVEL, "donor")
    in500 = sorted((c for c in cands if c["math500_id"] is not None), key=lambda c: c["idx"])
    donor += rng.sample(in500, DONOR_MATH500)
    # Order by level then source index, so the files read naturally and diff cleanly.
    return sorted(pool, key=lambda c: (c["level"], c["idx"])), sorted(donor, key=lambda c: (c["level"], c["idx"]))


# --- code -------------------------------------------------------------------------------------

_TACO_SCAFFOLD = re.compile(r"^\s*QUESTION:\s*\n(?P<body>.*?)\s*Use Standard Input format\s*ANSWER:\s*$", re.S)


def code_candidates(data: Path) -> list[dict]:
    """TACO stdin problems (call-based ones carry a glued-on starter code; skipped) with a solution."""
    with gzip.open(data / "taco/taco_generation_example.json.gz", "rt", encoding="utf-8") as f:
        rows = json.load(f)
    out, seen = [], set()
    for r in rows:
        m = _TACO_SCAFFOLD.match(r["prompt"])
        if not m or not r["output"]:
            continue
        statement, code = m.group("body").strip(), r["output"][0].strip()
        if norm(statement) in seen or len(statement) + len(code) > MAX_CODE_CHARS:
            continue
        seen.add(norm(statement))
        out.append({"task_id": r["task_id"], "statement": statement, "code": code})
    return out


def code_pool_row(c: dict) -> dict:
    assistant = "<|begin_of_solution|>\n\n```python\n" + c["code"] + "\n```\n\n<|end_of_solution|>"
    return {
        "system": SYSTEM_PROMPT,
        "conversations": [
            {"from": "user", "value": CODE_PREFIX + c["statement"]},
            {"from": "assistant", "value": assistant},
        ],
        "level": None,
    }


def code_donor_row(c: dict) -> dict:
    return {
        "problem": c["statement"],
        "deepseek_reasoning": "",
        "deepseek_solution": None,
        "ground_truth_solution": "```python\n" + c["code"] + "\n```",
        "domain": "code",
        "source": "taco",
        "test_cases": None,
        "starter_code": None,
        "level": None,
    }


# --- queries ----------------------------------------------------------------------------------


def gsm8k_queries(rng: random.Random, data: Path, n: int, exclude: Sequence[int] = ()) -> tuple[list[dict], list[int]]:
    """`n` rows in `{"question", "answer"}` shape not among the lines `exclude`, and their 0-based
    line numbers in test.jsonl."""
    rows = read_jsonl(data / "gsm8k/test.jsonl")
    picked = sorted(rng.sample(sorted(set(range(len(rows))) - set(exclude)), n))
    return [{"question": rows[i]["question"], "answer": rows[i]["answer"]} for i in picked], picked


def mbpp_queries(rng: random.Random, data: Path) -> list[dict]:
    rows = [r for r in read_jsonl(data / "mbpp/mbpp.jsonl") if 11 <= r["task_id"] <= 510]
    picked = sorted(rng.sample(rows, N_QUERIES), key=lambda r: r["task_id"])
    return [
        {"task_id": r["task_id"], "text": r["text"], "code": r["code"].replace("\r\n", "\n"), "test_list": r["test_list"]}
        for r in picked
    ]


# --- output -----------------------------------------------------------------------------------


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    with open(path, encoding="utf-8") as f:  # validate: every line parses back to what we wrote
        back = [json.loads(line) for line in f]
    assert back == rows, path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data", type=Path, default=Path("/work/shared/data"))
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    data, out = args.data, args.out

    rng = random.Random(SEED)
    pool_math, donor_math = select_math(rng, math_candidates(data))
    code = code_candidates(data)
    picked_code = rng.sample(code, N_POOL_CODE + N_DONOR_CODE)
    pool_code = sorted(picked_code[:N_POOL_CODE], key=lambda c: c["task_id"])
    donor_code = sorted(picked_code[N_POOL_CODE:], key=lambda c: c["task_id"])

    pool = [math_pool_row(c) for c in pool_math] + [code_pool_row(c) for c in pool_code]
    donor = [math_donor_row(c) for c in donor_math] + [code_donor_row(c) for c in donor_code]
    gsm8k, gsm8k_lines = gsm8k_queries(rng, data, N_QUERIES)
    mbpp = mbpp_queries(rng, data)
    extra, extra_lines = gsm8k_queries(rng, data, N_EXTRA_MATH_QUERIES, exclude=gsm8k_lines)
    gsm8k_lines += extra_lines
    files = {
        "pool.jsonl": pool,
        "donor.jsonl": donor,
        "queries/math.jsonl": gsm8k + extra,
        "queries/code.jsonl": mbpp,
    }
    for name, rows in files.items():
        write_jsonl(out / name, rows)
    (out / "licenses").mkdir(exist_ok=True)
    for src, dst in LICENSES.items():
        shutil.copyfile(data / src, out / "licenses" / dst)
    for name, text in NOTICES.items():
        (out / "licenses" / name).write_text(text, encoding="utf-8")

    # Provenance the README cites: which bundled problems came from where.
    print(f"pool: {len(pool_math)} math by level {dict(sorted(Counter(c['level'] for c in pool_math).items()))}, "
          f"{len(pool_code)} code")
    print(f"donor: {len(donor_math)} math by level {dict(sorted(Counter(c['level'] for c in donor_math).items()))}, "
          f"{len(donor_code)} code")
    print("pool math source idx:", [c["idx"] for c in pool_math])
    print("donor math source idx:", [c["idx"] for c in donor_math])
    print("donor problems also in MATH-500:", [(c["idx"], c["math500_id"]) for c in donor_math if c["math500_id"]])
    print("pool problems also in MATH-500:", [c["idx"] for c in pool_math if c["math500_id"]])
    print("pool TACO task_id:", [c["task_id"] for c in pool_code])
    print("donor TACO task_id:", [c["task_id"] for c in donor_code])
    print("GSM8K test.jsonl lines (0-based):", gsm8k_lines)
    print("GSM8K/MBPP query rows:", len(files["queries/math.jsonl"]), len(files["queries/code.jsonl"]),
          "MBPP task_id:", [r["task_id"] for r in files["queries/code.jsonl"]])
    total = 0
    for path in sorted(p for p in out.rglob("*") if p.is_file()):
        total += path.stat().st_size
        print(f"{path.stat().st_size:>9,d}  {path.relative_to(out)}")
    print(f"{total:>9,d}  total")
    if total >= 5_000_000:
        sys.exit("sample is over 5 MB")


if __name__ == "__main__":
    main()
