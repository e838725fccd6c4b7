"""`curate report`: aggregates checked by hand, HTML/Markdown output, token and segment views."""

from __future__ import annotations

import math
import re
from pathlib import Path

import polars as pl
import pytest
from click.testing import CliRunner

from curate.analysis import influence_aggregates
from curate.cli import cli
from curate.data import load_pool, write_pool
from curate.report import render_report, side_path, top_token_positions
from tests.cli_helpers import cli_error

SAMPLE = Path(__file__).resolve().parent.parent / "curate" / "resources" / "sample" / "pool.jsonl"


@pytest.fixture(scope="module")
def scored(tmp_path_factory) -> dict:
    """The sample pool with synthetic scores, difficulty, tokens.parquet and sentences.parquet."""
    tmp = tmp_path_factory.mktemp("scored")
    pool = load_pool(SAMPLE)
    base = pl.from_arrow(pool.dataset.data.table).select("curate_id", "curate_domain", "level")
    n = len(base)
    annotations = base.with_row_index("k").select(
        "curate_id",
        curate_influence_math=((pl.col("k") * 7919 % 101) / 10.0 - 5.0),
        curate_influence_code=((pl.col("k") * 31 % 17) / 3.0 - 2.0),
        curate_influence_math_split0=pl.lit(0.0),
        curate_difficulty=pl.col("level").cast(pl.Int64),
    )
    path = write_pool(pool, tmp / "scored.parquet", annotations=annotations)
    ids = base["curate_id"].to_list()
    # 40 tokens per example: ids 200..239 <-> text; scores chosen so the top 5% (2 tokens) are clear.
    tokens = pl.DataFrame({
        "curate_id": ids,
        "token_ids": [[200 + t for t in range(40)] for _ in ids],
        "token_influence_math": [[float((t * 13 + i) % 40) for t in range(40)] for i in range(n)],
    })
    tokens.write_parquet(side_path(path, "tokens"))
    sentences = pl.DataFrame({
        "curate_id": [i for i in ids for _ in range(2)],
        "segment": [s for _ in ids for s in (0, 1)],
        "start": [s * 10 for _ in ids for s in (0, 1)],
        "end": [s * 10 + 10 for _ in ids for s in (0, 1)],
        "text": [t for _ in ids for t in ("First <step> & ", "second step.")],
        "method": ["counterfactual"] * (2 * n),
        "segment_influence_math": [v for k in range(n) for v in (0.5 + k, -0.25)],
    })
    sentences.write_parquet(side_path(path, "sentences"))
    frame = base.join(annotations, on="curate_id")
    return {"path": path, "frame": frame, "tokens": tokens, "tmp": tmp}


def test_side_paths(tmp_path):
    assert side_path(tmp_path / "x.parquet", "tokens") == tmp_path / "x.tokens.parquet"
    assert side_path(tmp_path, "sentences") == tmp_path / "sentences.parquet"


def test_aggregates_match_hand_computation(scored):
    frame = scored["frame"]
    tables = influence_aggregates(frame)
    assert set(tables) == {"domain", "difficulty"}
    assert set(tables["domain"]["query"]) == {"math", "code"}  # the _split column is not a query set
    values = frame.filter(pl.col("curate_domain") == "math")["curate_influence_code"].to_list()
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    row = tables["domain"].filter((pl.col("query") == "code") & (pl.col("domain") == "math")).row(0, named=True)
    assert row["n"] == n
    assert row["mean"] == pytest.approx(mean)
    assert row["ci_low"] == pytest.approx(mean - 1.96 * std / math.sqrt(n))
    assert row["ci_high"] == pytest.approx(mean + 1.96 * std / math.sqrt(n))
    levels = tables["difficulty"].filter(pl.col("query") == "math")
    assert levels["n"].sum() == len(frame)


def test_singleton_groups_and_behaviours():
    frame = pl.DataFrame({
        "curate_id": ["a", "b", "c", "d"], "curate_domain": ["math", "math", "code", "code"],
        "curate_influence_math": [1.0, 3.0, 2.0, None], "level": [1, 1, 2, 3],
        "curate_behavior_verification": [0, 2, 1, 0],
    })
    tables = influence_aggregates(frame)
    level2 = tables["difficulty"].filter(pl.col("difficulty") == 2).row(0, named=True)
    assert level2["n"] == 1 and level2["mean"] == 2.0 and level2["ci_low"] is None and level2["ci_high"] is None
    assert tables["difficulty"]["difficulty"].to_list() == [1, 2]  # level 3 has only a null score
    present = tables["behavior"].filter(pl.col("present")).row(0, named=True)
    assert present["behavior"] == "verification" and present["n"] == 2 and present["mean"] == 2.5


def test_top_token_positions():
    assert top_token_positions([0.1, 5.0, -1.0, 2.0]) == {1}            # ceil(0.05 * 4) = 1
    assert top_token_positions([float(v) for v in range(40)]) == {38, 39}


def test_html_report(scored, tmp_path):
    out = render_report(scored["path"], tmp_path / "report.html", top=5)
    page = out.read_text()
    assert page.startswith("<!DOCTYPE html>")
    assert page.count('src="data:image/png;base64,') >= 3  # histograms, by domain, by difficulty
    frame = scored["frame"]
    for column in ("curate_influence_math", "curate_influence_code"):
        for i in frame.sort(column, descending=True).head(5)["curate_id"]:
            assert i in page
    # The first token block is the best example on math: exactly its 2 top tokens are marked.
    best = frame.sort("curate_influence_math", descending=True)["curate_id"][0]
    row = scored["tokens"].filter(pl.col("curate_id") == best).row(0, named=True)
    block = page.split('<div class="resp">', 1)[1].split("</div>", 1)[0]
    marks = re.findall(r'<mark class="tok" title="([^"]+)">', block)
    expected = sorted(row["token_influence_math"], reverse=True)[:2]
    assert sorted(float(m) for m in marks) == sorted(expected)
    # Segment text is escaped, with its influence shown.
    assert "First &lt;step&gt; &amp;" in page and "<step>" not in page
    assert "-0.25" in page


def test_markdown_report_writes_pngs(scored, tmp_path):
    result = CliRunner().invoke(cli, ["report", str(scored["path"]), "-o", str(tmp_path / "r.md"), "--top", "3"])
    assert result.exit_code == 0, result.output
    text = (tmp_path / "r.md").read_text()
    pngs = sorted(p.name for p in tmp_path.glob("*.png"))
    assert "r_histograms.png" in pngs and "r_mean_by_domain.png" in pngs
    for name in pngs:
        assert f"]({name})" in text
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"


def test_pool_without_scores_is_a_one_line_error(tmp_path, capsys):
    line = cli_error(["report", str(SAMPLE), "-o", str(tmp_path / "r.html")], capsys)
    assert "no curate_influence_<q> columns" in line
    assert not (tmp_path / "r.html").exists()
