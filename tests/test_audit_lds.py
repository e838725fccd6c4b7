"""The linear datamodeling score in `curate audit --lds`: exact on a planted case, ~0 for a shuffled
column, and the real subset fine-tunes of a tiny model resume after SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import curate.audit.counterfactual as cf
from curate.analysis import audit_tables, load_audit
from curate.audit.lds import lds_score, lds_summary, random_null, subset_rows
from curate.errors import UsageError
from curate.training import TrainConfig

MATH = Path(__file__).parents[1] / "curate" / "resources" / "sample" / "queries" / "math.jsonl"
TRAIN = TrainConfig(max_steps=2, batch_size=2, learning_rate=1e-2, max_length=128, seed=0, device="cpu",
                    gradient_checkpointing=False)


def test_subsets_are_seeded_sized_and_distinct():
    rows = subset_rows(40, 6, 0.5, seed=3)
    assert [len(r) for r in rows] == [20] * 6 and all((np.diff(r) > 0).all() and r.max() < 40 for r in rows)
    assert len({tuple(r) for r in rows}) == 6
    assert all((a == b).all() for a, b in zip(rows, subset_rows(40, 6, 0.5, seed=3), strict=True))
    assert not all((a == b).all() for a, b in zip(rows, subset_rows(40, 6, 0.5, seed=4), strict=True))
    assert [len(r) for r in subset_rows(3, 2, 0.99, seed=0)] == [2, 2]  # never the whole pool


def test_lds_is_one_for_additive_truth_and_near_zero_shuffled():
    effects = np.random.default_rng(0).normal(size=60)
    rows = subset_rows(60, 80, 0.5, seed=0)
    f = [effects[r].sum() + 5.0 for r in rows]  # a constant offset changes no rank
    exact = lds_score("score", f, effects, rows)
    assert exact.spearman == pytest.approx(1.0) and exact.ci_low == pytest.approx(1.0)
    # one shuffle keeps a chance correlation with the truth (~1/sqrt(60) per row); over many it averages out
    shuffled = [lds_score("shuffled", f, np.random.default_rng(s).permutation(effects), rows, bootstrap=200)
                for s in range(20)]
    assert abs(np.mean([s.spearman for s in shuffled])) < 0.1
    assert sum(s.ci_low < 0 < s.ci_high for s in shuffled) >= 14
    noisy = lds_score("noisy", f, effects + np.random.default_rng(2).normal(scale=1.0, size=60), rows)
    assert max(s.spearman for s in shuffled) < noisy.spearman < exact.spearman
    assert noisy.ci_low < noisy.spearman < noisy.ci_high
    nulls = effects.copy()
    nulls[:30], nulls[30] = np.nan, np.inf  # a null (or infinite) value counts as the others' mean
    filled = np.where(np.isfinite(nulls), nulls, effects[31:].mean())
    assert lds_score("n", f, nulls, rows).predicted == pytest.approx([filled[r].sum() for r in rows])
    assert lds_score("flat", [1.0] * 80, effects, rows).spearman is None
    null = random_null(f, rows, 60)  # chance: centred on 0, about ±2 / sqrt(80 subsets) wide
    assert abs(null.spearman) < 0.05 and -0.35 < null.ci_low < -0.1 and 0.1 < null.ci_high < 0.35


def test_audit_lds_on_a_planted_trainer_ranks_the_truth_first(tiny_model_dir, tmp_path, monkeypatch, write_jsonl):
    """A stand-in trainer whose f_q is by construction the sum of the kept rows' effects: the
    score column equal to the effects gets LDS 1, a shuffled copy ~0, and the report shows both."""
    from curate.data import load_pool

    rows = [json.loads(line) for line in MATH.read_text().splitlines()[:40]]
    effects = np.random.default_rng(5).normal(size=40)
    shuffled = np.random.default_rng(6).permutation(effects)
    pool = load_pool(write_jsonl(tmp_path / "p.jsonl", [
        {**r, "curate_influence_math": float(e), "curate_influence_shuffled": float(s), "curate_nll": float(i % 7),
         "curate_embedding_math": float(-e)} for i, (r, e, s) in enumerate(zip(rows, effects, shuffled, strict=True))]))
    by_id = dict(zip(pool.dataset["curate_id"], effects, strict=True))
    calls = []

    def fake_run(scored, removed, config, seed, queries, run_dir, progress, start):
        calls.append(sorted(removed))
        return {"f": {"math": float(sum(v for i, v in by_id.items() if i not in removed))}, "steps": 1,
                "tokens_seen": 10, "final_loss": 1.0, "runtime_s": 0.0}

    monkeypatch.setattr(cf, "_run_arm", fake_run)
    queries = {"math": list(load_pool(MATH, source="q").examples())[40:44]}
    kwargs = dict(queries=queries, out_dir=tmp_path / "a", base="b", model="m", proxy=str(tiny_model_dir), k=0.1,
                  seeds=1, lds=40, train=TRAIN)
    result = cf.audit(pool, score_column="curate_influence_math", **kwargs)
    lds = result.lds
    assert lds.subsets == 40 and lds.subset_size == 20 and len(lds.f) == 40
    assert set(lds.scores) == {"score", "length", "perplexity", "embedding", "random"}
    assert lds.scores["score"].spearman == pytest.approx(1.0)
    assert lds.scores["embedding"].spearman == pytest.approx(-1.0)  # the negated effects
    assert abs(lds.scores["random"].spearman) < 0.1 and lds.scores["random"].ci_low < 0 < lds.scores["random"].ci_high
    assert "above the best heuristic's" in lds_summary(lds) and "do not overlap" in lds_summary(lds)
    assert len(calls) == 6 + 40 and result.fine_tunes == 46  # 7 arms, but embedding removes what bottom removes: one run

    calls.clear()
    other = cf.audit(pool, score_column="curate_influence_shuffled", objective="math", **kwargs)
    assert len(calls) == 2  # only its own top and bottom arms: every subset fine-tune is reused
    assert abs(other.lds.scores["score"].spearman) < 0.4
    assert other.lds.f == lds.f and other.lds.scores["length"] == lds.scores["length"]

    saved = load_audit(tmp_path / "a")  # results.json round-trips, and the tables carry it
    assert saved.lds.scores["score"].spearman == other.lds.scores["score"].spearman
    table = audit_tables(saved)["lds"]
    assert table["ranking"].to_list()[0] == "score" and table.height == 5

    from curate.report import render_report

    scored = tmp_path / "scored.jsonl"
    pool.dataset.to_json(scored)
    page = render_report(scored, tmp_path / "r.html", audit=tmp_path / "a").read_text()
    assert "Linear datamodeling score" in page and "40 fine-tunes on random subsets of 20 of the 40 rows" in page


def test_lds_settings_are_checked():
    with pytest.raises(UsageError, match=r"lds must be 0 \(none\) or >= 3"):
        cf.AuditConfig(base="b", lds=2)
    with pytest.raises(UsageError, match=r"subset_frac must be in \(0, 1\)"):
        cf.AuditConfig(base="b", lds=5, subset_frac=1.0)


def test_real_subset_fine_tunes_resume_after_sigkill(tiny_model_dir, tmp_path):
    """`curate audit --lds 3` as a process of its own on a tiny Llama and 12 GSM8K rows: killed once
    its first fine-tunes are recorded, the rerun runs only the rest, and reports the LDS."""
    from curate.data import load_pool

    gsm = load_pool(MATH, source="gsm")
    ds = gsm.dataset.select(range(12))
    ds = ds.add_column("curate_influence_math", [float((5 * i) % 12) for i in range(12)])
    ds = ds.add_column("curate_tokens", [len(a) for a in ds["answer"]])
    scored = tmp_path / "scored.jsonl"
    ds.to_json(scored)
    queries = tmp_path / "q.jsonl"
    queries.write_text("".join(MATH.read_text().splitlines(keepends=True)[16:18]))
    out = tmp_path / "audit"
    args = [sys.executable, "-m", "curate", "audit", str(scored), "--base", str(tiny_model_dir), "--model",
            str(tiny_model_dir), "--query", f"math={queries}", "--k", "0.25", "--seeds", "1", "--baselines", "random",
            "--lds", "3", "--max-steps", "2", "--batch-size", "2", "--lr", "0.01", "--max-length", "128", "--device",
            "cpu", "--no-gradient-checkpointing", "-o", str(out)]
    log = out / "audit.jsonl"

    def finished() -> list[dict]:
        return [json.loads(line) for line in log.read_text().splitlines()] if log.is_file() else []

    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ})
    deadline = time.time() + 240
    while time.time() < deadline and len([r for r in finished() if "tokens_seen" in r]) < 2 and proc.poll() is None:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    before = [r["key"] for r in finished() if "tokens_seen" in r]
    assert 2 <= len(before) < 7, "the run should have been killed mid-way"
    done = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    runs = [r for r in finished() if "tokens_seen" in r]
    assert len(runs) == 7 and len({r["key"] for r in runs}) == 7  # 4 arms + 3 subsets, none run twice
    assert [r["key"] for r in runs[: len(before)]] == before
    assert "(" + f"{7 - len(before)} to run, {len(before)} done)" in " ".join(done.stderr.split())
    result = json.loads((out / "results.json").read_text())
    assert result["lds"]["subsets"] == 3 and len(result["lds"]["f"]) == 3
    assert set(result["lds"]["scores"]) == {"score", "random"}
    assert "linear datamodeling score over 3 subsets" in " ".join(done.stderr.split())
    card = (out / "README.md").read_text()  # the audit's card: verdict, arms and the LDS table
    assert "## Counterfactual audit" in card and "Linear datamodeling score" in card and "| random (baseline) |" in card
    assert (out / "README_audit_arms.png").is_file()


def test_non_finite_subset_objectives_are_left_out_with_a_note(tiny_model_dir, tmp_path, monkeypatch, write_jsonl):
    from curate.data import load_pool

    rows = [json.loads(line) for line in MATH.read_text().splitlines()[:12]]
    pool = load_pool(write_jsonl(tmp_path / "p.jsonl", [{**r, "curate_influence_math": float(i)}
                                                        for i, r in enumerate(rows)]))
    by_id = dict(zip(pool.dataset["curate_id"], range(12), strict=True))
    runs = []

    def fake_run(scored, removed, config, seed, queries, run_dir, progress, start):
        runs.append(1)
        diverged = len(removed) == 6 and len(runs) % 3 == 0  # every third subset fine-tune "diverges"
        f = float("nan") if diverged else float(sum(v for i, v in by_id.items() if i not in removed))
        return {"f": {"math": f}, "steps": 1, "tokens_seen": 1, "final_loss": 1.0, "runtime_s": 0.0}

    monkeypatch.setattr(cf, "_run_arm", fake_run)
    queries = {"math": list(load_pool(MATH, source="q").examples())[40:42]}
    result = cf.audit(pool, queries=queries, out_dir=tmp_path / "a", base="b", proxy=str(tiny_model_dir), k=0.1,
                      seeds=1, baselines=("random",), lds=12, train=TRAIN)
    left_out = 12 - result.lds.subsets
    assert left_out > 0 and any(f"LDS: {left_out} subset fine-tune(s) with a non-finite" in n for n in result.notes)
    assert all(np.isfinite(result.lds.f)) and result.lds.scores["score"].spearman == pytest.approx(1.0)
