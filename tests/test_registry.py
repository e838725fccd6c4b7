"""The registry is the one place an operation is wired: its commands' options are its settings,
recipes take the same keys, errors name what the user typed, and a new op needs one entry."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from curate.cli import cli
from curate.recipes import check_recipe, run_recipe
from curate.registry import OPERATIONS, Operation
from curate.settings import settings_of
from tests.cli_helpers import cli_error

SAMPLE = Path(__file__).parents[1] / "curate" / "resources" / "sample"

SHARED = {"pool", "out", "split", "maps", "emit", "fmt", "push_to_hub"}


def _command(name: str):
    import click

    return cli.get_command(click.Context(cli), name)


@pytest.mark.parametrize("name", list(OPERATIONS))
def test_command_options_are_the_settings(name):
    """Every option of an op's command is one of its settings (same default, choices and help),
    one of its inputs, or an option every dataset-writing command shares; nothing else."""
    op = OPERATIONS[name]
    command = _command(name)
    params = {p.name: p for p in command.params}
    settings = [s for s in settings_of(op.config_class) if s.meta["cli"]]
    own = settings_of(op.command_class) if op.command_class else []
    expected = SHARED | {s.name for s in settings + own} | {i.name for i in op.inputs}
    if not op.own_decontamination():
        expected.add("decontaminate")
    assert set(params) == expected
    for s in settings + own:
        option = params[s.name]
        assert s.flag in option.opts
        assert option.help.startswith(s.help({x.name: x.flag for x in settings + own})[:40])
        if s.kind == "value":
            assert option.required == s.required and (s.required or option.default == s.default)
        if s.kind == "value" and s.meta["choices"]:
            assert tuple(option.type.choices) == s.meta["choices"]
        if s.kind in ("list", "mapping"):
            assert option.multiple
        if s.kind == "flag":
            assert option.is_flag and s.default is False
    hidden = [s.name for s in settings_of(op.config_class) if not s.meta["cli"]]
    assert not set(hidden) & set(params)


def test_every_dataset_writing_command_is_an_operation_and_listed():
    result = CliRunner().invoke(cli, ["--help"])
    for name, op in OPERATIONS.items():
        assert name in result.output and op.summary[:30] in " ".join(result.output.split())
    assert {"tag", "score", "flip", "prune", "strip", "reweight"} <= set(OPERATIONS)


def test_no_op_is_wired_by_name_outside_the_registry():
    """No `op == "prune"`-style dispatch, and no import of an op's function by the CLI or recipes."""
    import re
    from pathlib import Path

    import curate

    root = Path(curate.__file__).parent
    dispatch = re.compile(r"""\bop\s*(==|in)\s*[\("'](tag|score|flip|prune|strip|reweight)""")
    offenders = []
    for path in root.rglob("*.py"):
        if path.name == "registry.py":
            continue
        text = path.read_text()
        offenders += [f"{path}: {m.group(0)}" for m in dispatch.finditer(text)]
        if path.parts[-2] in ("cli", "recipes"):
            offenders += [f"{path}: imports an op" for m in re.finditer(
                r"from curate\.ops import .*\b(flip|prune|strip|reweight)\b(?! as)", text)]
    assert offenders == []


def test_errors_name_the_flag_on_the_command_line_and_the_key_in_a_recipe(tmp_path, capsys):
    message = cli_error(["prune", str(SAMPLE / "pool.jsonl"), "-o", str(tmp_path / "o.jsonl")], capsys)
    assert message == "error: give exactly one of --keep (a fraction) and --keep-n (a count)"
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"inputs: {{pool: {SAMPLE / 'pool.jsonl'}}}\nsteps:\n  - op: prune\n    strategy: length\n"
                      "    keep_n: 0\noutput: out.jsonl\n")
    errors = check_recipe(recipe)
    assert errors == [f"{recipe}:5: prune (step 1): keep_n 0: must be >= 1"]


@pytest.fixture
def head(monkeypatch):
    """A new operation, added the documented way: its module plus one registry entry."""
    op = Operation("head", "Keep the first rows.", "Keep the first N rows of POOL.", "tests.toy_op:HeadConfig",
                   "tests.toy_op:run")
    monkeypatch.setitem(OPERATIONS, "head", op)
    return op


def test_a_new_operation_gets_a_command_and_recipe_steps_from_its_entry(tmp_path, head, capsys):
    out = tmp_path / "head.jsonl"
    result = CliRunner().invoke(cli, ["head", str(SAMPLE / "pool.jsonl"), "--n", "3", "-o", str(out),
                                      "--emit", "messages"])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 3 and "messages" in rows[0]
    manifest = (tmp_path / "head.manifest.jsonl").read_text().splitlines()
    assert len(manifest) == sum(1 for _ in (SAMPLE / "pool.jsonl").open()) - 3
    assert "Keep the first rows." in CliRunner().invoke(cli, ["--help"]).output

    bad = cli_error(["head", str(SAMPLE / "pool.jsonl"), "--n", "1", "--note", "bad", "-o", str(out)], capsys)
    assert bad == "error: --note 'bad' with --n 1"

    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"inputs: {{pool: {SAMPLE / 'pool.jsonl'}}}\nsteps:\n  - op: head\n    n: 2\n"
                      "    note: two rows\noutput: out.parquet\n")
    assert check_recipe(recipe) == []
    ran = run_recipe(recipe)
    assert ran.steps[0].rows == 2 and ran.steps[0].counts == {"kept": 2}
    recipe.write_text(recipe.read_text().replace("n: 2", "n: 1").replace("two rows", "bad"))
    assert check_recipe(recipe) == [f"{recipe}:5: head (step 1): note 'bad' with n 1"]


def test_operations_doc_is_generated_from_the_registry():
    from curate.registry import reference

    text = (Path(__file__).parents[1] / "docs" / "operations.md").read_text()
    marker = "do not edit below -->\n\n"
    assert text.split(marker, 1)[1] == reference(), "stale: run python scripts/docs_operations.py"
