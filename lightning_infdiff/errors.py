"""Errors the toolkit raises on purpose, for a person to act on.

``infdiff`` prints a :class:`UsageError` as one line (``infdiff <command>: error: <message>``) and
exits with code 2, as the argument parser does for its own errors; anything else keeps its
traceback, because it is a bug to report.
"""

from __future__ import annotations

__all__ = ["UsageError"]


class UsageError(ValueError):
    """A bad input or configuration: the message names the key or file and what was expected."""
