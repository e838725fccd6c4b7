"""`curate run`: recipes checked in full before any work, shipped recipes valid, sample end to end."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from curate.cli import cli
from curate.demo import SAMPLE as SAMPLE_DIR
from curate.ops import load_donor
from curate.recipes import RecipeError, check_recipe, run_recipe

RECIPES = Path(__file__).resolve().parent.parent / "recipes"

THREE_MISTAKES = """\
inputs:
  pool: pool.jsonl
steps:
  - op: tag
    offline: true
  - op: shuffle
    seed: 1
  - op: prune
    strategy: length
    kep: 0.5
  - op: prune
    strategy: length
    keep: 1.5
output: out.parquet
"""


def _write(tmp_path: Path, text: str) -> Path:
    (tmp_path / "pool.jsonl").write_text((RECIPES.parent / "curate/resources/sample/pool.jsonl").read_text())
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    return path


def test_three_mistakes_reported_at_once_with_lines(tmp_path):
    path = _write(tmp_path, THREE_MISTAKES)
    errors = check_recipe(path)
    assert len(errors) == 3, errors
    assert errors[0].startswith(f"{path}:6: ") and "unknown op 'shuffle'" in errors[0]
    assert errors[1].startswith(f"{path}:10: ") and "unknown parameter 'kep'" in errors[1] and "keep" in errors[1]
    assert errors[2].startswith(f"{path}:13: ") and "keep 1.5: must be in (0, 1]" in errors[2]

    result = CliRunner().invoke(cli, ["run", str(path), "--dry-run"])
    assert isinstance(result.exception, RecipeError.__mro__[1])  # UsageError: exit code 2 at the CLI boundary
    for error in errors:
        assert error in result.output
    assert "3 error(s)" in str(result.exception)
    assert not (tmp_path / "out.parquet.steps").exists()  # nothing ran


def test_unknown_op_is_a_clear_error(tmp_path):
    path = _write(tmp_path, "inputs: {pool: pool.jsonl}\nsteps:\n  - op: import_python\noutput: out.parquet\n")
    with pytest.raises(RecipeError) as err:
        run_recipe(path)
    assert f"{path}:3: step 1: unknown op 'import_python'; expected one of tag, score, flip, prune" in str(err.value)


def test_structure_inputs_types_and_references(tmp_path):
    text = """\
inputs:
  pool: pool.jsonl
  donor: missing.jsonl
steps:
  - op: flip
    donor: nobody
    decontaminate: [math500]
    swap_frac: lots
  - op: score
    queries: [pool]
validate: {}
extra: 1
output: out.csv
"""
    errors = check_recipe(_write(tmp_path, text))
    joined = "\n".join(errors)
    assert ":3: input 'donor'" in joined and "does not exist" in joined
    assert ":6: flip (step 1): donor: 'nobody' is not an input" in joined
    assert ":7: flip (step 1): decontaminate: 'math500' is not an input" in joined
    assert ":8: flip (step 1): swap_frac: expected float" in joined
    assert ":9: score (step 2): missing parameter 'model'" in joined
    assert ":11: validate: missing key 'model'" in joined and ":11: validate: missing key 'eval'" in joined
    assert ":12: unknown top-level key 'extra'" in joined
    assert ":13: output:" in joined and ".csv" in joined
    assert not check_recipe(_write(tmp_path, text), check_files=False) == []


@pytest.mark.parametrize("recipe", sorted(RECIPES.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_recipes_pass_structural_checks(recipe):
    assert recipe.read_text().startswith("# Run:")
    if "- op: strip" in recipe.read_text():
        import curate.ops

        if not hasattr(curate.ops, "strip"):
            pytest.skip("the strip op is not built yet")
    assert check_recipe(recipe, check_files=False) == []


def test_sample_recipe_passes_with_files():
    assert check_recipe(RECIPES / "sample.yaml") == []


def test_sample_recipe_runs_end_to_end_and_resumes(tmp_path):
    import polars as pl

    recipe = tmp_path / "recipes" / "sample.yaml"
    recipe.parent.mkdir()
    shutil.copy(RECIPES / "sample.yaml", recipe)
    (tmp_path / "curate").symlink_to(RECIPES.parent / "curate")  # the recipe's ../curate/resources paths
    out = tmp_path / "result" / "sample.parquet"
    runner = CliRunner()
    first = runner.invoke(cli, ["run", str(recipe), "-o", str(out)])
    assert first.exit_code == 0, first.output
    frame = pl.read_parquet(out)
    assert frame.height == 72  # 80 rows, flipped in place, then the longest 90% kept
    assert {"curate_difficulty", "curate_id"} <= set(frame.columns)
    donor_ids = set(load_donor(SAMPLE_DIR / "donor.jsonl").dataset["curate_id"])
    assert len(donor_ids & set(frame["curate_id"])) > 0  # donor rows came in, under their own ids
    card = (tmp_path / "result" / "sample.README.md").read_text()
    assert "## Recipe" in card and "op: flip" in card and "## Recipe steps" in card
    assert "| 80 | 72 |" in card  # rows in / out, from the net manifest
    manifest = (tmp_path / "result" / "sample.manifest.jsonl").read_text().splitlines()
    assert any('"replaced"' in line for line in manifest) and any('"removed"' in line for line in manifest)
    stages = out.with_name("sample.parquet.steps")
    assert sorted(p.name for p in stages.iterdir()) == ["01-tag", "02-flip", "03-strip", "04-prune"]
    for stage in stages.iterdir():
        assert (stage / "pool.parquet").exists() and (stage / "pool.manifest.jsonl").exists()
        assert (stage / "pool.README.md").exists() and (stage / "step.json").exists()

    again = runner.invoke(cli, ["run", str(recipe), "-o", str(out)])
    assert again.exit_code == 0, again.output
    assert again.output.count("done before, skipped") == 4
    assert pl.read_parquet(out).equals(frame)

    # a changed parameter recomputes that step (and the ones after it), not the ones before
    recipe.write_text(recipe.read_text().replace("keep: 0.9", "keep: 0.5"))
    third = runner.invoke(cli, ["run", str(recipe), "-o", str(out)])
    assert third.exit_code == 0, third.output
    assert third.output.count("done before, skipped") == 3
    assert pl.read_parquet(out).height == 40


VALIDATED = """\
inputs:
  pool: pool.jsonl
steps:
  - op: prune
    strategy: length
    keep: 0.5
output: out.jsonl
validate:
  model: {model}
  eval: [gsm8k]
  limit: 2
  max_new_tokens: 8
  base_eval: false
  train: {{max_steps: 1, batch_size: 2, max_length: 256, gradient_checkpointing: false, save_steps: 1}}
"""


def test_validate_section_is_checked_with_the_recipe(tmp_path):
    text = VALIDATED.format(model="m").replace("  limit: 2", "  limit: 0\n  epochs: 3").replace("max_steps: 1", "max_steps: 0")
    joined = "\n".join(check_recipe(_write(tmp_path, text)))
    assert ":12: validate: unknown key 'epochs'" in joined
    text = VALIDATED.format(model="m").replace("max_steps: 1", "max_steps: 0").replace("  limit: 2\n", "  baseline: donor\n")
    joined = "\n".join(check_recipe(_write(tmp_path, text)))
    assert "validate: baseline 'donor' is not an input" in joined
    text = VALIDATED.format(model="m").replace("max_steps: 1", "max_steps: 0")
    joined = "\n".join(check_recipe(_write(tmp_path, text)))
    assert ":9: validate: max_steps" in joined


def test_validate_section_trains_the_output_against_the_baseline(tmp_path, tiny_model_dir):
    recipe = _write(tmp_path, VALIDATED.format(model=tiny_model_dir))
    result = run_recipe(recipe)
    assert set(result.validation["variants"]) == {"pool", "recipe"}
    assert (tmp_path / "out.jsonl.validate" / "results.json").exists()
    for name in ("pool", "recipe"):
        assert result.validation["variants"][name]["train"]["steps"] == 1  # the recipe's, not the default 100
