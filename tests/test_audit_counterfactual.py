"""The counterfactual audit (`curate.audit.counterfactual`, `curate audit`) on a tiny model trained
here on real GSM8K rows: the verdict follows what it measures, and negated scores swap the arms.

These assert internal consistency only: on a 2-layer random-initialised model a few optimizer
steps give no reason to expect influence to beat random removal, and the tests do not ask it to.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import polars as pl
import pytest

from curate.audit.counterfactual import AuditConfig, audit, removal_sets, resolve_column
from curate.errors import DataError, UsageError
from curate.training import TrainConfig

from .cli_helpers import cli_error

MATH = Path(__file__).parents[1] / "curate" / "resources" / "sample" / "queries" / "math.jsonl"
# Expressible with `curate audit`'s options (its other TrainConfig fields are the defaults), so the
# CLI test below finds every fine-tune already recorded.
TRAIN = TrainConfig(max_steps=3, batch_size=2, learning_rate=1e-2, max_length=128, seed=0, device="cpu",
                    gradient_checkpointing=False)


def fine_tunes(out: Path) -> int:
    return sum(1 for line in (out / "audit.jsonl").read_text().splitlines() if "tokens_seen" in line)


@pytest.fixture(scope="module")
def setup(tiny_model_dir, tmp_path_factory):
    """M = the tiny random Llama fine-tuned on 16 GSM8K rows; those rows scored by influence on 4
    other GSM8K rows; then the audit (k = 0.25, 2 seeds, random baseline).

    Kept small (every step and every query answer costs logits over the 49k-token vocabulary): M
    has 6 steps, every arm 3, enough for each to make the held-out answers likelier than the random
    start (by ~16 nats of ~1490), which is all the assertions ask of the training."""
    from curate.data import load_pool
    from curate.influence.config import ScoreConfig
    from curate.influence.engine import score_pool
    from curate.training import load_trained, train_variant

    root = tmp_path_factory.mktemp("audit")
    gsm = load_pool(MATH, source="gsm")
    pool = gsm.with_dataset(gsm.dataset.select(range(16)))
    queries = {"math": list(gsm.with_dataset(gsm.dataset.select(range(16, 20))).examples())}
    trained = train_variant(str(tiny_model_dir), pool, TrainConfig(max_steps=6, batch_size=2, learning_rate=1e-2,
                                                                   max_length=128, device="cpu",
                                                                   gradient_checkpointing=False), root / "m")
    model, tokenizer = load_trained(Path(trained.model_dir), str(tiny_model_dir))
    table = score_pool(list(pool.examples()), queries, ScoreConfig(model="m", fisher="empirical"), root / "w",
                       model=model, tokenizer=tokenizer).table
    ds = pool.dataset
    for column in ("curate_influence_math", "curate_nll", "curate_tokens"):
        ds = ds.add_column(column, table[column].to_list())
    ds = ds.add_column("curate_influence_negated", [-s for s in table["curate_influence_math"].to_list()])
    scored = pool.with_dataset(ds)
    out = root / "audit"
    result = audit(scored, queries=queries, out_dir=out, base=str(tiny_model_dir), model=trained.model_dir,
                   score_column="curate_influence_math", k=0.25, seeds=2, baselines=("random",), train=TRAIN)
    return {"root": root, "scored": scored, "queries": queries, "result": result, "out": out,
            "base": str(tiny_model_dir), "model": trained.model_dir}


def test_verdict_agrees_with_what_it_measures(setup):
    r = setup["result"]
    assert set(r.arms) == {"full", "top", "bottom", "random"} and r.removed == 4 and r.rows == 16
    assert r.arms["full"].delta == [0.0, 0.0] and r.fine_tunes == 8 and fine_tunes(setup["out"]) == 8
    for arm in r.arms.values():  # delta = f(arm) - f(full), per seed
        assert arm.delta == pytest.approx([f["math"] - g["math"] for f, g in zip(arm.f, r.arms["full"].f, strict=True)])
    mean = {a: sum(arm.delta) / 2 for a, arm in r.arms.items()}
    v = r.verdict
    assert v.helpful_vs_random.diff_mean == pytest.approx(mean["top"] - mean["random"])
    assert v.harmful_vs_random.diff_mean == pytest.approx(mean["bottom"] - mean["random"])
    assert v.helpful_vs_harmful.diff_mean == pytest.approx(mean["top"] - mean["bottom"])
    assert v.helpful_hurts_more == (mean["top"] < mean["random"])
    assert v.harmful_hurts_less == (mean["bottom"] > mean["random"])
    assert v.supported <= (v.helpful_hurts_more and v.harmful_hurts_less)
    assert v.summary.startswith("supported" if v.supported else "weak" if v.helpful_hurts_more else "not supported")
    # the objective measures something: M (6 steps on the pool) and the full-pool fine-tune both
    # make the held-out GSM8K answers likelier than the random start
    assert r.f_model["math"] > r.f_start["math"] and all(f["math"] > r.f_start["math"] for f in r.arms["full"].f)
    saved = json.loads((setup["out"] / "results.json").read_text())
    assert saved["verdict"]["summary"] == v.summary and saved["config"]["train"]["max_steps"] == 3
    assert not list(setup["out"].glob("runs/*/model"))  # weights freed once evaluated


def test_negated_scores_get_the_opposite_verdict(setup):
    r = setup["result"]
    neg = audit(setup["scored"], queries=setup["queries"], out_dir=setup["out"], base=setup["base"],
                model=setup["model"], score_column="curate_influence_negated", objective="math", k=0.25, seeds=2,
                baselines=("random",), train=TRAIN)
    assert fine_tunes(setup["out"]) == 8  # same removed rows, same runs: all reused from audit.jsonl
    assert neg.arms["top"].delta == r.arms["bottom"].delta and neg.arms["bottom"].delta == r.arms["top"].delta
    assert neg.arms["random"].delta == r.arms["random"].delta
    assert neg.verdict.helpful_vs_harmful.diff_mean == pytest.approx(-r.verdict.helpful_vs_harmful.diff_mean)
    assert neg.verdict.helpful_vs_random.diff_mean == r.verdict.harmful_vs_random.diff_mean
    assert neg.verdict.helpful_hurts_more == (not r.verdict.harmful_hurts_less)
    assert neg.verdict.harmful_hurts_less == (not r.verdict.helpful_hurts_more)
    assert not (neg.verdict.supported and r.verdict.supported)


def test_cli_audit_reuses_the_runs_and_reports_errors(setup, tmp_path, capsys):
    from curate.cli import main

    scored = tmp_path / "scored.jsonl"
    setup["scored"].dataset.to_json(scored)
    queries = tmp_path / "q.jsonl"
    queries.write_text("".join(MATH.read_text().splitlines(keepends=True)[16:20]))
    args = ["audit", str(scored), "--base", setup["base"], "--model", setup["model"], "--query", f"math={queries}",
            "--column", "curate_influence_math", "--k", "0.25", "--seeds", "2", "--baselines", "random",
            "--max-steps", "3", "--batch-size", "2", "--lr", "0.01", "--max-length", "128", "--device", "cpu", "--no-gradient-checkpointing",
            "-o", str(setup["out"])]
    try:
        main(args)
    except SystemExit as e:
        assert not e.code
    captured = capsys.readouterr()
    err = " ".join(captured.err.split())  # rich wraps lines
    assert captured.out.strip().endswith("results.json")
    assert "verdict (curate_influence_math)" in err and "(0 to run, 8 done)" in err and fine_tunes(setup["out"]) == 8

    missing = cli_error([*args[:-2], "--column", "curate_influence_code", "-o", str(tmp_path / "x")], capsys)
    assert "curate_influence_math" in missing and "curate_influence_code" in missing
    assert "(0, 0.5]" in cli_error([*args, "--k", "0.7"], capsys)
    with pytest.raises(SystemExit) as exc:  # click's own check of the option's range
        main([*args, "--workers", "0"])
    assert exc.value.code == 2 and "'--workers': 0 is not in the range" in capsys.readouterr().err


def test_removal_sets_rank_ties_by_id_and_skip_nulls():
    table = pl.DataFrame({"curate_id": [f"r{i}" for i in range(8)],
                          "s": [5.0, 1.0, None, 3.0, 3.0, -2.0, 0.0, 4.0],
                          "curate_tokens": [10, 80, 30, 20, 50, 60, 70, 40],
                          "curate_nll": [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]})
    sets = removal_sets(table, "s", 2, seeds=3, seed=0, baselines=("random", "length", "perplexity"))
    assert sets["top"] == ["r0", "r7"] and sets["bottom"] == ["r5", "r6"] and sets["full"] == []
    assert sets["length"] == ["r1", "r6"] and sorted(sets["perplexity"]) == ["r3", "r4"]
    assert len(sets["random"]) == 3 and all(len(set(r)) == 2 for r in sets["random"])
    assert sets["random"] == removal_sets(table, "s", 2, seeds=3, seed=0, baselines=())["random"]


def test_config_and_column_errors():
    with pytest.raises(UsageError, match=r"k must be in \(0, 0.5\]"):
        AuditConfig(base="b", k=0.6)
    with pytest.raises(UsageError, match="unknown baselines"):
        AuditConfig(base="b", baselines=("similarity",))
    with pytest.raises(UsageError, match="workers must be >= 1"):
        AuditConfig(base="b", workers=0)
    with pytest.raises(DataError, match="available: curate_influence_math"):
        resolve_column(["curate_id", "curate_influence_math", "curate_influence_math_split0"], "x")
    assert resolve_column(["curate_influence_math", "curate_influence_math_split0", "curate_influence_math_ck0"],
                          None) == "curate_influence_math"


def fake_trainer(tmp_path, write_jsonl, monkeypatch, calls: list):
    """A scored 20-row pool, 4 queries, and a stand-in for fine-tune + evaluation (`_run_arm`)
    whose f_q is the sum of the kept rows' scores (so the scores are right by construction) plus a
    seed effect; each call appends the model trained to `calls` and its record names its process."""
    import curate.audit.counterfactual as cf
    from curate.data import load_pool

    rows = [json.loads(line) for line in MATH.read_text().splitlines()[:20]]
    scores = [float((7 * i) % 20 - 10) for i in range(20)]
    pool = load_pool(write_jsonl(tmp_path / "p.jsonl", [{**r, "curate_influence_math": s}
                                                         for r, s in zip(rows, scores, strict=True)]))
    queries = {"math": list(load_pool(MATH, source="q").examples())[20:24]}
    by_id = dict(zip(pool.dataset["curate_id"], scores, strict=True))

    def fake_run(scored, removed, config, seed, queries, run_dir, progress, start):
        calls.append(config.trained)
        f = sum(v for i, v in by_id.items() if i not in removed) + 0.5 * seed
        return {"f": {"math": f}, "steps": 1, "tokens_seen": 10, "final_loss": 1.0, "runtime_s": 0.0,
                "pid": os.getpid()}

    monkeypatch.setattr(cf, "_run_arm", fake_run)
    return pool, queries, scores


def test_proxy_mode_resume_and_a_supported_verdict_with_a_fake_trainer(tiny_model_dir, tmp_path, monkeypatch,
                                                                       write_jsonl):
    """Plumbing without training (`fake_trainer`)."""
    calls = []
    pool, queries, scores = fake_trainer(tmp_path, write_jsonl, monkeypatch, calls)
    kwargs = dict(queries=queries, out_dir=tmp_path / "a", base="some/large-model", model="some/large-sft",
                  proxy=str(tiny_model_dir), k=0.2, seeds=3, baselines=("random", "length"), train=TRAIN)
    result = audit(pool, **kwargs)
    assert set(calls) == {str(tiny_model_dir)} and len(calls) == 5 * 3
    assert result.proxy and result.trained == str(tiny_model_dir) and result.f_model is None
    assert any("PROXY MODE" in n for n in result.notes)
    assert result.verdict.supported and result.verdict.summary.startswith("supported")
    assert result.arms["top"].delta == [-sum(sorted(scores)[-4:])] * 3
    assert set(result.verdict.baselines_vs_random) == {"length"}
    calls.clear()
    again = audit(pool, **kwargs)  # every fine-tune is in audit.jsonl: none reruns
    assert calls == [] and again.to_dict() == result.to_dict()


def test_workers_fine_tune_in_forked_processes_with_the_same_result(tiny_model_dir, tmp_path, monkeypatch,
                                                                    write_jsonl):
    """workers=2: every fine-tune runs in a child process (the fake trainer records its pid), the
    result is the one-process run's, and the records are reused whatever the worker count."""
    calls = []
    pool, queries, _ = fake_trainer(tmp_path, write_jsonl, monkeypatch, calls)
    kwargs = dict(queries=queries, base=str(tiny_model_dir), model=str(tiny_model_dir), k=0.2, seeds=2,
                  baselines=("random", "length"), train=TRAIN)
    parallel = audit(pool, out_dir=tmp_path / "two", workers=2, **kwargs)
    records = [json.loads(line) for line in (tmp_path / "two" / "audit.jsonl").read_text().splitlines()]
    runs = [r for r in records if "pid" in r]
    assert len(runs) == 10 and all(r["pid"] != os.getpid() for r in runs) and calls == []  # none ran here
    one = audit(pool, out_dir=tmp_path / "one", workers=1, **kwargs)
    assert len(calls) == 10 and one.arms == parallel.arms and one.verdict == parallel.verdict
    again = audit(pool, out_dir=tmp_path / "two", workers=1, **kwargs)  # all recorded: nothing reruns
    assert len(calls) == 10 and again.arms == parallel.arms
