"""`curate report`: aggregates checked by hand, HTML/Markdown output, token and segment views,
ranking stability, the audit section, and the page as headless Chromium renders it (when installed)."""

from __future__ import annotations

import base64
import html
import io
import math
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from click.testing import CliRunner

from curate.analysis import influence_aggregates
from curate.cli import cli
from curate.data import load_pool, side_path, write_pool
from curate.report import query_sizes, render_report, top_token_positions, words
from curate.report.sections import _decoder
from tests.cli_helpers import cli_error
from tests.test_analysis import write_audit

SAMPLE = Path(__file__).resolve().parent.parent / "curate" / "resources" / "sample" / "pool.jsonl"


@pytest.fixture(scope="module")
def scored(tmp_path_factory) -> dict:
    """The sample pool with synthetic scores, difficulty, MATH type, source, behaviour counts, query
    splits (math: two identical splits; code: two independent random ones), a card recording the
    math query set's size (32), tokens.parquet and sentences.parquet."""
    tmp = tmp_path_factory.mktemp("scored")
    pool = load_pool(SAMPLE)
    base = pl.from_arrow(pool.dataset.data.table).select("curate_id", "curate_domain", "level")
    n = len(base)
    rng = np.random.default_rng(0)
    annotations = base.with_row_index("k").select(
        "curate_id",
        curate_influence_math=((pl.col("k") * 7919 % 101) / 10.0 - 5.0),
        curate_influence_code=((pl.col("k") * 31 % 17) / 3.0 - 2.0),
        curate_influence_math_split0=((pl.col("k") * 7919 % 101) / 10.0 - 5.0),
        curate_influence_math_split1=((pl.col("k") * 7919 % 101) / 10.0 - 5.0),
        curate_influence_code_split0=pl.Series(rng.normal(size=n)),
        curate_influence_code_split1=pl.Series(rng.normal(size=n)),
        curate_difficulty=pl.col("level").cast(pl.Int64),
        curate_behavior_verification=(pl.col("k") % 3).cast(pl.Int64),
    )
    # Native input columns, as a MATH or OpenThoughts pool would carry them.
    native = base.with_row_index("k").select(
        type=pl.when(pl.col("curate_domain") == "math")
        .then(pl.lit(["Algebra", "Geometry", "Number Theory"]).list.get(pl.col("k") % 3)),
        source=pl.when(pl.col("curate_domain") == "math").then(pl.lit("MATH")).otherwise(pl.lit("taco")),
    )
    dataset = pool.dataset.add_column("type", native["type"].to_list()).add_column("source", native["source"].to_list())
    card = {"Influence settings": "- query `math`: `queries/math.jsonl` (32 examples)"}
    path = write_pool(pool.with_dataset(dataset), tmp / "scored.parquet", annotations=annotations, extra_card=card)
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
    frame = pl.concat([base, native], how="horizontal").join(annotations, on="curate_id")
    return {"path": path, "frame": frame, "tokens": tokens, "tmp": tmp}


def test_side_paths(tmp_path):
    assert side_path(tmp_path / "x.parquet", "tokens") == tmp_path / "x.tokens.parquet"
    assert side_path(tmp_path, "sentences") == tmp_path / "sentences.parquet"


def test_aggregates_match_hand_computation(scored):
    frame = scored["frame"]
    tables = influence_aggregates(frame)
    assert set(tables) == {"domain", "difficulty", "difficulty_band", "domain_difficulty", "type", "source", "behavior"}
    assert set(tables["domain"]["query"]) == {"math", "code"}  # the _split columns are not query sets
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


def test_top_token_positions_take_either_sign():
    assert top_token_positions([0.1, 5.0, -1.0, 2.0]) == {1}            # ceil(0.05 * 4) = 1
    assert top_token_positions([0.1, 5.0, -6.0, 2.0]) == {2}            # by magnitude: the most harmful
    assert top_token_positions([float(v) for v in range(40)]) == {38, 39}
    assert top_token_positions([None, float("nan")]) == set()


def test_words_merge_fragments_and_keep_the_sum():
    pieces = ["<|", "begin", "_of", "_thought", "|>", "\n\n", "So", " x", " =", " 1", "2", ".", "\n", "Done",
              " ", "1", "0", ","]
    scores = [1.0, 1.0, 1.0, 1.0, 1.0, 0.5, -2.0, 0.25, None, 3.0, 4.0, 0.5, 0.0, -1.0, 0.0, 2.0, 1.0, 0.5]
    merged = words(pieces, scores)
    assert [w for w, _ in merged] == ["<|begin_of_thought|>\n\n", "So", " x", " =", " 12.\n", "Done ", "10,"]
    assert [v for _, v in merged] == [5.5, -2.0, 0.25, 0.0, 7.5, -1.0, 3.5]
    assert "".join(w for w, _ in merged) == "".join(pieces)


def test_html_report(scored, tmp_path):
    out = render_report(scored["path"], tmp_path / "report.html", top=5)
    page = out.read_text()
    assert page.startswith("<!DOCTYPE html>")
    # histograms, domain, difficulty band, difficulty, domain x band, type, source, behaviour, stability
    assert page.count('src="data:image/png;base64,') == 9
    frame = scored["frame"]
    for column in ("curate_influence_math", "curate_influence_code"):
        for i in frame.sort(column, descending=True).head(5)["curate_id"]:
            assert i in page
    # The first token block is the best example on math: exactly its top 5% words (by the sum of
    # their tokens' scores, either sign) are marked, green for positive, red for negative.
    best = frame.sort("curate_influence_math", descending=True)["curate_id"][0]
    row = scored["tokens"].filter(pl.col("curate_id") == best).row(0, named=True)
    block = page.split('<div class="resp">', 1)[1].split("</div>", 1)[0]
    marks = re.findall(r'<mark class="tok" style="background:rgba\((\d+),[^"]*" title="([^"]+)">', block)
    decode = _decoder(None)
    spans = words([decode(t) for t in row["token_ids"]], row["token_influence_math"])
    expected = sorted((v for _, v in spans), key=abs, reverse=True)[: math.ceil(0.05 * len(spans))]
    assert sorted(float(v) for _, v in marks) == pytest.approx(sorted(expected), rel=1e-3)
    assert all((red == "46") == (float(v) >= 0) for red, v in marks)
    assert "raises most:" in page and 'class="legend"' in page
    # Segment text is escaped, with its influence shown.
    assert "First &lt;step&gt; &amp;" in page and "<step>" not in page
    assert "-0.25" in page


def test_markdown_report_writes_pngs(scored, tmp_path):
    result = CliRunner().invoke(cli, ["report", str(scored["path"]), "-o", str(tmp_path / "r.md"), "--top", "3"])
    assert result.exit_code == 0, result.output
    text = (tmp_path / "r.md").read_text()
    pngs = sorted(p.name for p in tmp_path.glob("*.png"))
    assert pngs == sorted(f"r_{name}.png" for name in (
        "histograms", "mean_by_domain", "mean_by_difficulty_band", "mean_by_difficulty", "mean_by_domain_difficulty", "mean_by_type",
        "mean_by_source", "mean_by_behavior", "stability"))
    for name in pngs:
        assert f"]({name})" in text
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"


def test_pool_without_scores_is_a_one_line_error(tmp_path, capsys):
    line = cli_error(["report", str(SAMPLE), "-o", str(tmp_path / "r.html")], capsys)
    assert "no curate_influence_<q> columns" in line
    assert not (tmp_path / "r.html").exists()


@pytest.fixture(scope="module")
def full_report(scored, tmp_path_factory) -> dict:
    """The HTML report of `scored` with a proxy-mode audit, rendered once through the CLI."""
    tmp = tmp_path_factory.mktemp("full")
    audit = write_audit(tmp / "audit", proxy=True)
    out = tmp / "report.html"
    result = CliRunner().invoke(cli, ["report", str(scored["path"]), "-o", str(out), "--top", "3",
                                      "--audit", str(tmp / "audit")])
    assert result.exit_code == 0, result.output
    return {"path": out, "page": out.read_text(), "audit": audit}


def html_table(page: str, heading: str) -> list[dict[str, str]]:
    """The rows of the first table after `heading` (text of an <h2>/<h3>), as {column: cell text}."""
    table = page.split(heading, 1)[1].split("<table>", 1)[1].split("</table>", 1)[0]
    header = re.findall(r"<th>(.*?)</th>", table)
    return [dict(zip(header, re.findall(r"<td[^>]*>(.*?)</td>", row), strict=True))
            for row in re.findall(r"<tr>(.*?)</tr>", table)[1:]]


def images(page: str) -> dict[str, bytes]:
    """alt text -> decoded bytes of every <img> (all must be base64 data URIs)."""
    found = re.findall(r'<img alt="([^"]*)" src="data:image/png;base64,([^"]*)">', page)
    assert len(found) == page.count("<img"), "every image is an inline PNG data URI"
    return {alt: base64.b64decode(data) for alt, data in found}


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Rank correlation of tie-free values, without polars."""
    ra, rb = a.argsort().argsort(), b.argsort().argsort()
    return float(np.corrcoef(ra, rb)[0, 1])


def test_query_sizes_come_from_the_card(scored, tmp_path):
    assert query_sizes(scored["path"]) == {"math": 32}
    assert query_sizes(tmp_path / "elsewhere.parquet") == {}


def test_stability_section(full_report, scored):
    page = full_report["page"]
    rows = {r["query"]: r for r in html_table(page, "Ranking stability across disjoint query splits")}
    math_row, code_row = rows["math"], rows["code"]
    # math: identical splits of a 32-example query set (size from the card).
    assert (math_row["splits"], math_row["split_size"], math_row["rows"]) == ("2", "16", "80")
    assert float(math_row["spearman_mean"]) == 1.0 and float(math_row["rho_full"]) == 1.0
    assert math_row["stable"] == "yes"
    # code: independent random splits, size not recorded.
    frame = scored["frame"]
    rho = spearman(frame["curate_influence_code_split0"].to_numpy(), frame["curate_influence_code_split1"].to_numpy())
    assert abs(rho) < 0.3
    assert float(code_row["spearman_mean"]) == pytest.approx(rho, abs=1e-3)
    assert code_row["split_size"] == "" and code_row["stable"] == "no"
    assert "Split size unknown for code" in page
    assert "Warning: the ranking for &#x27;code&#x27; is unstable" in page
    assert "the ranking for &#x27;math&#x27; is unstable" not in page
    assert "ranks by query split 0 against split 1" in images(page)


def test_audit_section(full_report):
    page, audit = full_report["page"], full_report["audit"]
    assert f"Verdict: {html.escape(audit.verdict.summary)}." in page
    assert audit.verdict.summary.startswith("supported")
    assert "PROXY MODE" in page and "13 fine-tunes, 123,456 tokens" in page
    arms = {r["arm"]: r for r in html_table(page, "Arms: change in the objective")}
    assert list(arms) == ["full", "top", "bottom", "random", "length"]
    assert float(arms["top"]["delta_mean"]) == pytest.approx(-1.0) and arms["top"]["seeds"] == "3"
    comparisons = {r["comparison"]: r for r in html_table(page, "Paired comparisons over seeds")}
    assert comparisons["top - random"]["hurt_more"] == "top"
    assert float(comparisons["top - random"]["z"]) == pytest.approx(-7.0, abs=1e-3)
    assert comparisons["bottom - random"]["hurt_more"] == "random"
    assert comparisons["length - random"]["hurt_more"] == "tie"  # equal means: float noise is no winner
    assert "change in the query objective per audit arm" in images(page)


def test_type_source_and_behaviour_sections(full_report, scored):
    page = full_report["page"]
    algebra = scored["frame"].filter(pl.col("type") == "Algebra")["curate_influence_math"].to_list()
    row = next(r for r in html_table(page, "Mean influence by question type")
               if r["query"] == "math" and r["type"] == "Algebra")
    assert int(row["n"]) == len(algebra) and float(row["mean"]) == pytest.approx(sum(algebra) / len(algebra), rel=1e-3)
    assert {r["source"] for r in html_table(page, "Mean influence by source")} == {"MATH", "taco"}
    behaviour = html_table(page, "Mean influence with each behaviour present")
    assert {(r["behavior"], r["present"]) for r in behaviour} == {("verification", "True"), ("verification", "False")}
    figures = images(page)
    for title in ("Mean influence with each behaviour present (count &gt; 0) or absent",
                  "Mean influence by training domain and difficulty", "Mean influence by question type"):
        assert figures[title][:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("kind", ["missing", "not json", "other json"])
def test_bad_audit_path_is_a_one_line_error(scored, tmp_path, capsys, kind):
    bad = {"missing": tmp_path / "nope" / "results.json", "not json": tmp_path / "results.json",
           "other json": tmp_path / "other.json"}[kind]
    if kind == "not json":
        bad.write_text("# a card, not results\n")
    elif kind == "other json":
        bad.write_text('{"rows": 3}')
    line = cli_error(["report", str(scored["path"]), "-o", str(tmp_path / "r.html"), "--audit", str(bad)], capsys)
    assert str(bad) in line
    assert ("no such file" if kind == "missing" else "not a `curate audit` results.json") in line
    assert not (tmp_path / "r.html").exists()


def _chromium() -> str | None:
    return next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)


def test_html_report_in_headless_chromium_else_structure_only(full_report, tmp_path, record_property):
    """Always checks the page's structure: every image an inline PNG that decodes, the tables and
    token highlights present, tags balanced. Where a Chromium binary is installed, also renders the
    page headless: the screenshot must be written and not blank, and the browser must log no
    console message (the page has no scripts, so any is an error). The `html_check` property
    records which ran ("chromium" or "structure")."""
    from PIL import Image

    page = full_report["page"]
    for png in images(page).values():
        Image.open(io.BytesIO(png)).verify()
    assert page.count('<mark class="tok"') >= 2 and '<span class="seg"' in page
    for tag in ("table", "tr", "div", "p"):
        assert page.count(f"<{tag}>") + page.count(f"<{tag} ") == page.count(f"</{tag}>"), tag
    assert page.count("<table>") >= 12
    binary = _chromium()
    mode = "chromium" if binary else "structure"
    record_property("html_check", mode)
    print(f"html_check: {mode}")
    if binary is None:
        return
    shot = tmp_path / "shot.png"
    proc = subprocess.run(
        [binary, "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={tmp_path / 'profile'}",
         "--enable-logging=stderr", "--v=0", f"--screenshot={shot}", "--window-size=1200,2400",
         full_report["path"].as_uri()],
        capture_output=True, text=True, timeout=180)
    assert shot.is_file(), proc.stderr[-2000:]
    colors = Image.open(shot).convert("RGB").getcolors(maxcolors=1 << 20)
    assert colors is None or len(colors) > 50, "the screenshot is blank"
    assert not [line for line in proc.stderr.splitlines() if ":CONSOLE" in line]
