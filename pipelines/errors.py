"""The errors a run ends with on purpose, each with its exit code (README "Exit codes").

:func:`pipelines.options.main_entry` turns them into one line on stderr and the code; any other exception
is a bug and keeps its traceback (exit 1). ``UsageError`` is a ``ValueError`` and ``UnbalancedError`` a
``RuntimeError`` so that callers of ``run()`` that caught those before still do.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

EXIT_OK = 0
EXIT_ERROR = 1  # unexpected error (traceback), or check_lake --fail-on-error found failing expectations
EXIT_USAGE = 2  # unknown / invalid flag, flags that do not add up, invalid config file
EXIT_LEASE_HELD = 3  # stream_events: another consumer holds the lease; try again later
EXIT_LEASE_LOST = 4  # stream_events: the lease was lost mid-pass; nothing committed
EXIT_INPUT = 5  # input missing or empty: no lake, a glob matching nothing, an event never seen in range
EXIT_UNBALANCED = 6  # ingest: events in != lake rows + dead letters + duplicates
EXIT_RECONCILE = 8  # reconcile: the lake, the warehouse, the run records or the sinks disagree
EXIT_QUALITY = 7  # --quality-gate block: a partition failed the data-quality suite; its outputs not published


class PipelineError(Exception):
    """A run that could not do what was asked, for a reason the one-line message says."""

    exit_code = EXIT_ERROR

    def __init__(self, message: str, exit_code: int | None = None):
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class UsageError(PipelineError, ValueError):
    """The command line does not add up (unknown flag, bad value, conflicting flags)."""

    exit_code = EXIT_USAGE


class ConfigError(UsageError):
    """A config file (funnels, segments, PII policy, tracking plan) is unreadable or invalid."""


class InputError(PipelineError):
    """The input the run was pointed at is missing or empty."""

    exit_code = EXIT_INPUT


class UnbalancedError(PipelineError, RuntimeError):
    """Ingest accounting does not balance: an event was dropped or doubled somewhere."""

    exit_code = EXIT_UNBALANCED


class QualityError(PipelineError):
    """``--quality-gate block``: data failed its quality suite, so the run did not publish it / compute from it."""

    exit_code = EXIT_QUALITY


class ReconciliationError(PipelineError):
    """``pipelines.reconcile`` found numbers that should agree and do not."""

    exit_code = EXIT_RECONCILE


def _loc(loc: Sequence[Any]) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def describe_validation(err: Any, data: Any = None) -> str:
    """A pydantic ``ValidationError`` as one line: the first error's field path and message (+ how many more).

    When ``data`` is the parsed document and the path goes through a list entry that has a ``name``, the
    entry is named too (``segments[2] 'vip'``).
    """
    errors = err.errors()
    first = errors[0]
    loc = tuple(first.get("loc", ()))
    entry = ""
    node = data
    for i, part in enumerate(loc):
        try:
            node = node[part]
        except (KeyError, IndexError, TypeError):
            break
        if isinstance(part, int) and isinstance(node, Mapping) and "name" in node:
            entry = f"entry {_loc(loc[: i + 1])} ({node['name']!r}), "
    message = first.get("msg", "invalid")
    field = _loc(loc) or "(top level)"
    more = f" (+{len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{entry}field {field}: {message}{more}"
