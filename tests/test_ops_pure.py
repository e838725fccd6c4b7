"""Operations are pure: `curate.ops` imports and runs with torch and transformers unimportable."""

from __future__ import annotations

import subprocess
import sys
import textwrap

BLOCKED_RUN = textwrap.dedent('''
    import importlib.abc, importlib.machinery, sys

    class Loader(importlib.abc.Loader):
        def create_module(self, spec):
            raise ImportError(f"blocked for this test: {spec.name}")

        def exec_module(self, module):
            pass

    class Block(importlib.abc.MetaPathFinder):  # found, but any import of them fails
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("torch", "transformers"):
                return importlib.machinery.ModuleSpec(name, Loader())

    sys.meta_path.insert(0, Block())
    try:
        import torch  # noqa: F401
    except ImportError:
        pass
    else:
        raise SystemExit("the blocker let torch in")

    import curate.ops as ops
    from curate.data import load_pool
    from curate.demo import QUERY_SETS, SAMPLE

    pool = load_pool(SAMPLE / "pool.jsonl")
    donor = ops.load_donor(SAMPLE / "donor.jsonl")
    flipped = ops.flip(pool, donor, ops.FlipConfig(domains=("math",), swap_frac=0.25))
    pruned = ops.prune(pool, ops.PruneConfig(keep=0.5, strategy="length"))
    stripped = ops.strip(pool, ops.StripConfig())
    weighted = pool.with_dataset(pool.dataset.add_column("w", [2.0] * len(pool)))
    reweighted = ops.reweight(weighted, ops.ReweightConfig(by="w"))
    clean = ops.decontaminate(pool, [str(QUERY_SETS["math"]), str(SAMPLE.parent / "benchmarks" / "math500.jsonl")])
    print(len(flipped.pool), sum(e.action == "replaced" for e in flipped.manifest), len(pruned.pool),
          len(stripped.pool), len(reweighted.pool), len(clean.pool))
    assert not any(m.split(".")[0] in ("torch", "transformers") for m in sys.modules if sys.modules[m] is not None)
''')


def test_ops_run_with_torch_and_transformers_unimportable():
    proc = subprocess.run([sys.executable, "-c", BLOCKED_RUN], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    flipped, swapped, pruned, stripped, reweighted, clean = map(int, proc.stdout.split())
    assert flipped == 80 and swapped > 0 and pruned == 40 and stripped == 80 and reweighted == 160 and clean == 80
