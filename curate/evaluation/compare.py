"""The comparison of `curate validate`: every model against the baseline, as rows and as a plot.

    rows = comparison(evals, baseline="pool")   # evals: {model: eval.json's dict}
    plot_comparison(results, Path("RUN_DIR/results.png"))
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from curate.stages import atomic_write_bytes


def comparison(evals: dict[str, dict], baseline: str, resamples: int = 2000, seed: int = 0) -> list[dict[str, Any]]:
    """One row per benchmark and model: pass@1 with its 95% interval, truncated share, and the
    difference to `baseline` (pass@1 points in [−1, 1]) with a paired percentile-bootstrap 95%
    interval over the problems both answered (`resamples` resamples, seeded)."""
    import numpy as np

    rows = []
    base = evals[baseline]
    sources = list(dict.fromkeys(src for ev in evals.values() for src in ev["summary"]))
    for source, name in ((src, name) for src in sources for name in evals):
        ev = evals[name]
        summary = ev["summary"].get(source)
        if summary is not None:
            row = {"benchmark": source, "model": name, "n": summary["n"], "pass@1": summary["pass@1"],
                   "ci95": summary["ci95"], "truncated": summary["truncated"], "delta": None, "delta_ci95": None,
                   "samples": summary.get("samples"), "pass@k": summary.get("pass@k") or {}}
            ids = [i for i, s in ev["sources"].items() if s == source and i in base["scores"]]
            if name != baseline and ids:
                diff = np.array([ev["scores"][i] - base["scores"][i] for i in ids], dtype=np.float64)
                rng = np.random.default_rng(seed)
                means = diff[rng.integers(0, len(diff), size=(resamples, len(diff)))].mean(axis=1)
                row["delta"] = float(diff.mean())
                row["delta_ci95"] = [float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))]
            rows.append(row)
    return rows


def plot_comparison(results: dict[str, Any], path: Path) -> None:
    """Grouped bars: pass@1 per benchmark (x) and model (bars), with 95% interval error bars."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = results["comparison"]
    benches = list(dict.fromkeys(r["benchmark"] for r in rows))
    models = list(dict.fromkeys(r["model"] for r in rows))
    width = 0.8 / len(models)
    fig, ax = plt.subplots(figsize=(max(4.0, 1.6 * len(benches) * max(1, len(models) / 2)), 3.6))
    for k, model in enumerate(models):
        found = {r["benchmark"]: r for r in rows if r["model"] == model}
        xs = [i + (k - (len(models) - 1) / 2) * width for i, b in enumerate(benches) if b in found]
        ys = [found[b]["pass@1"] for b in benches if b in found]
        err = [[found[b]["pass@1"] - found[b]["ci95"][0] for b in benches if b in found],
               [found[b]["ci95"][1] - found[b]["pass@1"] for b in benches if b in found]]
        label = f"{model} (baseline)" if model == results["baseline"] else model
        ax.bar(xs, ys, width, yerr=err, capsize=3, label=label)
    ax.set_xticks(range(len(benches)), benches)
    ax.set_ylabel("pass@1 (95% bootstrap CI)")
    ax.set_ylim(0, 1)
    ax.set_title(f"{Path(results['base_model']).name or results['base_model']}: {results['train_config']['max_steps']} SFT steps per variant")
    ax.legend(fontsize="small")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())
