"""Helpers for tests that drive `curate.cli.main` like a user would."""

from __future__ import annotations

import pytest

from curate.cli import main


def cli_error(args, capsys) -> str:
    """Run the CLI expecting failure; return its last stderr line, which must be a one-line error."""
    with pytest.raises(SystemExit) as exc:
        main(args)
    assert exc.value.code != 0
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("error:")
    return last
