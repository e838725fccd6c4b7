"""`curate.analysis`: aggregates by any grouping column checked by hand, stability and audit tables."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

import polars as pl
import pytest

from curate.analysis import (
    aggregate_by,
    audit_tables,
    influence_aggregates,
    load_audit,
    stability_table,
)
from curate.audit.counterfactual import DESCRIPTIONS, ArmResult, AuditResult, verdict
from curate.errors import DataError
from curate.influence.stability import stability_all

# Per seed, f_q(arm) - f_q(full) on the objective (nats): removing the top rows hurts most.
DELTAS = {
    "full": [0.0, 0.0, 0.0], "top": [-0.9, -1.1, -1.0], "bottom": [0.2, 0.1, 0.3],
    "random": [-0.3, -0.2, -0.4], "length": [-0.5, -0.1, -0.3],
}


def make_audit(proxy: bool = False) -> AuditResult:
    """An `AuditResult` built with the real dataclasses and verdict, as `curate audit` would save it."""
    arms = {
        name: ArmResult(name, DESCRIPTIONS[name], 0 if name == "full" else 8,
                        [{"math": -10.0 + d, "code": -20.0} for d in deltas], deltas,
                        statistics.mean(deltas), statistics.stdev(deltas), [1000] * len(deltas))
        for name, deltas in DELTAS.items()
    }
    notes = ["PROXY MODE: every arm fine-tunes 'proxy', not the base 'base'"] if proxy else []
    return AuditResult(
        score_column="curate_influence_math", objective="math", trained="proxy" if proxy else "base", proxy=proxy,
        rows=80, removed=8, queries={"math": 32, "code": 32}, f_start={"math": -12.0, "code": -21.0},
        f_model=None if proxy else {"math": -9.5, "code": -19.0}, arms=arms, verdict=verdict(arms),
        fine_tunes=13, tokens=123456, config={"k": 0.1, "seeds": 3}, notes=notes,
    )


def write_audit(folder: Path, proxy: bool = False) -> AuditResult:
    """`make_audit` saved as `folder/results.json`; returns the result."""
    result = make_audit(proxy)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "results.json").write_text(json.dumps(result.to_dict(), indent=2))
    return result


def hand_stats(values: list[float]) -> tuple[int, float, float, float]:
    """n, mean and the 95% normal interval, computed without polars."""
    n, mean = len(values), sum(values) / len(values)
    half = 1.96 * math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) / math.sqrt(n)
    return n, mean, mean - half, mean + half


@pytest.fixture
def frame() -> pl.DataFrame:
    """12 rows: two domains, MATH types, sources, levels; one null and one NaN score."""
    scores = [1.0, 2.0, 4.0, -1.0, 0.5, None, 3.0, -2.0, 1.5, float("nan"), 2.5, 0.0]
    return pl.DataFrame({
        "curate_id": [f"r{k}" for k in range(12)],
        "curate_domain": ["math"] * 8 + ["code"] * 4,
        "level": [1, 2, 1, 2, 1, 2, 1, 2, None, None, None, None],
        "type": ["Algebra", "Geometry", "Algebra", "Algebra", "Geometry", "Algebra", "Geometry", "Algebra",
                 None, None, None, None],
        "source": ["MATH"] * 8 + ["taco"] * 4,
        "curate_influence_math": scores,
    })


def test_type_and_source_aggregates_match_hand_computation(frame):
    tables = influence_aggregates(frame)
    assert set(tables) == {"domain", "difficulty", "type", "source", "domain_difficulty"}
    rows = list(zip(frame["type"], frame["source"], frame["curate_influence_math"], strict=True))
    algebra = [s for t, _, s in rows if t == "Algebra" and s is not None]           # r5 (null) left out
    row = tables["type"].filter(pl.col("type") == "Algebra").row(0, named=True)
    assert (row["n"], row["mean"], row["ci_low"], row["ci_high"]) == pytest.approx(hand_stats(algebra))
    taco = [s for _, src, s in rows if src == "taco" and s is not None and not math.isnan(s)]  # NaN left out
    row = tables["source"].filter(pl.col("source") == "taco").row(0, named=True)
    assert (row["n"], row["mean"], row["ci_low"], row["ci_high"]) == pytest.approx(hand_stats(taco))
    assert tables["type"]["type"].to_list() == ["Algebra", "Geometry", None]        # code rows: null type, last


def test_domain_by_difficulty_cells(frame):
    table = influence_aggregates(frame)["domain_difficulty"]
    assert table.columns[:3] == ["query", "domain", "difficulty"]
    cell = table.filter((pl.col("domain") == "math") & (pl.col("difficulty") == 2)).row(0, named=True)
    assert (cell["n"], cell["mean"]) == (3, pytest.approx((2.0 - 1.0 - 2.0) / 3))  # r1, r3, r7 (r5 null)
    assert table.filter(pl.col("domain") == "code")["difficulty"].to_list() == [None]


def test_subject_stands_in_for_type_and_nested_columns_are_not_groups():
    frame = pl.DataFrame({"curate_id": ["a", "b", "c"], "subject": ["Algebra", "Algebra", "Precalculus"],
                          "source": [["x"], ["y"], ["x"]], "curate_influence_math": [1.0, 3.0, 5.0]})
    tables = influence_aggregates(frame)
    assert set(tables) == {"type"}
    assert tables["type"].filter(pl.col("type") == "Algebra")["mean"].item() == 2.0


def test_aggregate_by_two_query_sets():
    frame = pl.DataFrame({"g": ["a", "a", "b"], "curate_influence_x": [1.0, 2.0, 3.0],
                          "curate_influence_y": [0.0, None, 6.0]})
    table = aggregate_by(frame, {"group": "g"}, ["curate_influence_x", "curate_influence_y"])
    assert table.select("query", "group", "n", "mean").rows() == [
        ("x", "a", 2, 1.5), ("x", "b", 1, 3.0), ("y", "a", 1, 0.0), ("y", "b", 1, 6.0)]


def test_stability_table_rows():
    frame = pl.DataFrame({"curate_id": [str(k) for k in range(20)],
                          "curate_influence_m_split0": [float(k) for k in range(20)],
                          "curate_influence_m_split1": [float(k) for k in range(20)]})
    table = stability_table(stability_all(frame, query_sizes={"m": 10}))
    row = table.row(0, named=True)
    assert (row["query"], row["splits"], row["split_size"], row["rows"]) == ("m", 2, 5.0, 20)
    assert row["spearman_mean"] == pytest.approx(1.0) and row["stable"] == "yes"
    assert row["queries_needed"] is None


def test_audit_round_trip_and_tables(tmp_path):
    result = write_audit(tmp_path / "audit")
    assert load_audit(tmp_path / "audit") == result
    assert load_audit(tmp_path / "audit" / "results.json") == result
    tables = audit_tables(result)
    top = tables["arms"].filter(pl.col("arm") == "top").row(0, named=True)
    assert top["delta_mean"] == pytest.approx(-1.0) and top["seeds"] == 3
    assert top["f_mean"] == pytest.approx(-11.0)
    first = tables["comparisons"].row(0, named=True)            # top - random: diffs -0.6, -0.9, -0.6
    assert first["comparison"] == "top - random" and first["hurt_more"] == "top" and first["expected"] == "< 0"
    assert first["diff_mean"] == pytest.approx(-0.7)
    assert first["z"] == pytest.approx(-0.7 / (math.sqrt(0.03) / math.sqrt(3)))
    assert tables["comparisons"]["comparison"].to_list()[-1] == "length - random"
    assert tables["references"].row(0, named=True) == {"query": "math", "examples": 32, "f_start": -12.0,
                                                       "f_model": -9.5}


@pytest.mark.parametrize("content", ["not json", '{"score_column": "x"}', "[1, 2]",
                                     '{"verdict": {}, "arms": {}}'])
def test_load_audit_rejects_other_files(tmp_path, content):
    path = tmp_path / "results.json"
    path.write_text(content)
    with pytest.raises(DataError) as err:
        load_audit(path)
    assert str(path) in str(err.value) and "not a `curate audit` results.json" in str(err.value)
    assert "\n" not in str(err.value)


def test_load_audit_missing_file(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        load_audit(tmp_path)  # a folder without results.json


def test_split_and_checkpoint_columns_rank_nothing_on_their_own():
    from curate.analysis import influence_columns
    from curate.data.columns import EMBEDDING_PREFIX, main_score_columns

    columns = ["curate_influence_math", "curate_influence_math_split0", "curate_influence_math_ck0",
               "curate_influence_math_ck12", "curate_influence_checkpoint", "curate_embedding_code",
               "curate_embedding_code_split1"]
    assert influence_columns(pl.DataFrame({c: [0.0] for c in columns})) == ["curate_influence_math",
                                                                            "curate_influence_checkpoint"]
    assert main_score_columns(columns, EMBEDDING_PREFIX) == ["curate_embedding_code"]
