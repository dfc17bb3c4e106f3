"""Errors the toolkit raises on purpose, for a person to act on.

``infdiff`` prints a :class:`UsageError` as one line (``infdiff <command>: error: <message>``) and
exits with code 2, as the argument parser does for its own errors; anything else keeps its
traceback, because it is a bug to report.
"""

from __future__ import annotations

__all__ = ["UsageError", "yaml_error"]


class UsageError(ValueError):
    """A bad input or configuration: the message names the key or file and what was expected."""


def yaml_error(path: object, err: Exception) -> UsageError:
    """A YAML syntax error as one line naming the file, the line and the column."""
    mark = getattr(err, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    problem = getattr(err, "problem", None) or str(err).splitlines()[0]
    return UsageError(f"{path}: not valid YAML{where}: {problem}")
