"""The library's error hierarchy. The CLI turns any `CurateError` into a one-line message."""

from __future__ import annotations


class CurateError(Exception):
    """Base class: a problem the user can fix (bad input, bad option, missing file).

    `exit_code` is what the CLI exits with; the message is printed on one line.
    """

    exit_code = 1


class UsageError(CurateError):
    """An option or argument is invalid (unknown role in `--map`, bad range, ...)."""

    exit_code = 2


class DataError(CurateError):
    """Input data cannot be read or understood: missing file, unknown format, bad row, empty pool."""


class StageMismatchError(CurateError):
    """A saved stage (factors, scores) was produced from other inputs or settings."""


class RequestFailures(CurateError):
    """A run finished and wrote its output, but rows lack values because requests to a server
    failed (more than the user allowed); a rerun retries them. Its own exit code, so scripts can
    tell it from bad input and bad options."""

    exit_code = 3


class NotBuiltError(CurateError):
    """The command exists in the design but is not implemented yet."""

    exit_code = 2


class MissingDependencyError(CurateError):
    """An optional dependency is not installed; the message carries the install hint."""
