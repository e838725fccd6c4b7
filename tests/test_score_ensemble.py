"""`curate score --checkpoints`: influence averaged over checkpoints (`curate.influence.ensemble`)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import polars as pl
import pytest

from curate.errors import UsageError
from curate.influence.ensemble import expand_checkpoints, weigh

from .test_cli_score import pool_file, query_file, run  # noqa: F401 (fixtures)


def trainer_state(folder: Path, step: int, lrs: dict[int, float]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    history = [{"step": s, "learning_rate": lr, "loss": 1.0} for s, lr in lrs.items() if s <= step]
    (folder / "trainer_state.json").write_text(json.dumps({"global_step": step, "log_history": history}))
    return folder


def test_lr_weights_are_the_mean_rate_since_the_previous_checkpoint(tmp_path):
    lrs = {1: 4.0, 2: 3.0, 3: 2.0, 4: 1.0, 5: 0.5}
    paths = [str(trainer_state(tmp_path / f"checkpoint-{s}", s, lrs)) for s in (2, 5)]
    members, note = weigh(paths, "lr")
    assert note is None and [m.step for m in members] == [2, 5]
    assert [m.weight for m in members] == pytest.approx([3.5, (2.0 + 1.0 + 0.5) / 3])
    assert [m.weight for m in weigh(paths, "equal")[0]] == [1.0, 1.0]
    (tmp_path / "other").mkdir()
    members, note = weigh([*paths, str(tmp_path / "other")], "lr")
    assert [m.weight for m in members] == [1.0] * 3 and "no trainer_state.json" in note and "other" in note
    # independent models (their logs differ) and two seeds at one step are not one run's checkpoints
    other = str(trainer_state(tmp_path / "seed1" / "checkpoint-5", 5, {s: lr / 2 for s, lr in lrs.items()}))
    for group in ([paths[0], other], [paths[1], other]):
        members, note = weigh(group, "lr")
        assert [m.weight for m in members] == [1.0, 1.0] and "not the checkpoints of one run" in note


def test_globs_expand_in_step_order_and_errors_name_the_spec(tmp_path):
    for s in (10, 9, 100):
        (tmp_path / f"checkpoint-{s}").mkdir()
    got = expand_checkpoints([str(tmp_path / "checkpoint-*"), "final"])
    assert [Path(p).name for p in got] == ["checkpoint-9", "checkpoint-10", "checkpoint-100", "final"]
    with pytest.raises(UsageError, match="no folder matches"):
        expand_checkpoints([str(tmp_path / "nothing-*")])
    with pytest.raises(UsageError, match="more than once"):
        expand_checkpoints(["a", "a"])
    with pytest.raises(UsageError, match="more than once"):  # one folder, however it is written
        expand_checkpoints([str(tmp_path / "checkpoint-9"), str(tmp_path / "checkpoint-9") + "/"])


def test_identical_checkpoints_equal_the_single_model(tiny_model_dir, pool_file, query_file, tmp_path, capsys):  # noqa: F811
    a, b = tmp_path / "a", tmp_path / "b"
    shutil.copytree(tiny_model_dir, a)
    shutil.copytree(tiny_model_dir, b)
    common = [str(pool_file), "--query", f"math={query_file}", "--max-length", "300", "--fit-max-length", "300",
              "--query-splits", "2"]
    single, ensemble, work = tmp_path / "single.parquet", tmp_path / "ensemble.parquet", tmp_path / "work"
    assert run(["score", *common, "--model", str(a), "-o", str(single)]) == 0
    capsys.readouterr()
    both = ["score", *common, "--model", str(a), "--checkpoints", f"{a},{b}", "--work-dir", str(work)]
    assert run([*both, "-o", str(ensemble)]) == 0
    err = " ".join(capsys.readouterr().err.split())
    assert "checkpoint ensemble: 2 models" in err and "equal weights: no trainer_state.json" in err
    one, two = pl.read_parquet(single), pl.read_parquet(ensemble)
    for column in ("curate_influence_math", "curate_influence_math_split0", "curate_influence_math_split1",
                   "curate_nll", "curate_tokens"):
        assert two[column].to_list() == pytest.approx(one[column].to_list(), nan_ok=True), column
    assert two["curate_influence_math_ck0"].to_list() == pytest.approx(one["curate_influence_math"].to_list(), nan_ok=True)
    assert two["curate_influence_math"].null_count() == one["curate_influence_math"].null_count() > 0
    assert "curate_influence_math_split0_ck0" not in two.columns
    card = (tmp_path / "ensemble.README.md").read_text()
    assert "## Checkpoint ensemble" in card and f"- ck1: `{b}` (weight 1)" in card
    # each checkpoint keeps its own stages: a rerun recomputes none of them, and gives the same scores
    stages = {p: p.stat().st_mtime_ns for p in work.rglob("*") if p.is_file()}
    assert {p.name for p in work.iterdir()} == {"ck0", "ck1"} and len(stages) > 4
    assert run([*both, "-o", str(tmp_path / "again.parquet")]) == 0
    assert {p: p.stat().st_mtime_ns for p in stages} == stages
    assert pl.read_parquet(tmp_path / "again.parquet").equals(two)


def test_checkpoints_refuse_per_token_work(tiny_model_dir, pool_file, query_file, tmp_path, capsys):  # noqa: F811
    from .cli_helpers import cli_error

    line = cli_error(["score", str(pool_file), "--query", f"math={query_file}", "--model", str(tiny_model_dir),
                      "--checkpoints", str(tiny_model_dir), "--tokens", "-o", str(tmp_path / "o.parquet")], capsys)
    assert "--tokens does not combine with --checkpoints" in line
    missing = tmp_path / "checkpoint-9"
    line = cli_error(["score", str(pool_file), "--query", f"math={query_file}", "--model", str(tiny_model_dir),
                      "--checkpoints", f"{tiny_model_dir},{missing}", "-o", str(tmp_path / "o.parquet")], capsys)
    assert str(missing) in line and not (tmp_path / "o.parquet.work" / "ck0").exists()
