"""Data-quality checks of the lake's events table with Great Expectations (pandas datasource).

    checker = QualityChecker()                    # builds the GX context and suite once (slow)
    result = checker.check_partition(lake, "acme-in", date(2026, 10, 1))
    write_result(lake, result)                    # LAKE/_quality/events/tenant_id=T/event_date=D/result.json

The suite lives in :mod:`schemas.expectations`; this module reads the lake, runs GX and writes
results. Results are deterministic (no run time inside, expectations in suite order, sorted
keys), so rerunning a check replaces its file with the same bytes when the data did not change.
"""

from __future__ import annotations

import datetime as dt
import decimal
import json
import math
import re
from collections.abc import Sequence
from typing import Any

import pyarrow as pa
from apache_beam.io.filesystems import FileSystems
from pydantic import BaseModel, Field

from connectors import paths
from connectors.analytics_io import write_bytes_atomically
from connectors.lake import read_events, table_path
from schemas.expectations import (
    DEFAULT_MAX_FUTURE,
    ExpectationSpec,
    add_check_columns,
    build_suite,
    events_frame,
    events_specs,
    suite_fingerprint,
)
from schemas.lake import EVENTS_TABLE

__all__ = [
    "ExpectationOutcome",
    "QualityChecker",
    "QualityResult",
    "parse_partition_dir",
    "read_result",
    "result_path",
    "write_result",
]

QUALITY_DIR = "_quality"
EXAMPLES = 5
"""Unexpected examples kept per expectation."""
INDEX_COLUMN = "message_id"
READ_CHECK = "partition_readable"
_PARTITION_RE = re.compile(r"tenant_id=([^/]+)/event_date=(\d{4}-\d{2}-\d{2})/?$")


class ExpectationOutcome(BaseModel):
    """One expectation's result on one slice of the lake."""

    name: str = Field(description="Stable expectation name from schemas.expectations.")
    expectation: str = Field(description="GX expectation type, e.g. expect_column_values_to_not_be_null.")
    column: str | None = Field(
        default=None, description="The column checked; comma-separated for multi-column rules; None for table rules."
    )
    success: bool
    observed_value: Any = Field(default=None, description="Aggregate expectations: what was observed.")
    element_count: int | None = Field(default=None, description="Rows the expectation looked at.")
    unexpected_count: int | None = Field(default=None, description="Rows that broke it (row-level expectations).")
    unexpected_percent: float | None = None
    unexpected_examples: list[Any] = Field(
        default_factory=list,
        description=f"Up to {EXAMPLES} offending values, each as {{'message_id': ..., 'value': ...}} when known.",
    )
    error: str | None = Field(default=None, description="Set when the check itself raised (the data is unreadable).")


class QualityResult(BaseModel):
    """The suite's outcome on one partition (tenant, date) or one date range."""

    table: str = EVENTS_TABLE
    tenant_id: str | None = Field(description="The tenant checked; None = all tenants.")
    start_date: dt.date | None = Field(description="First event date checked (inclusive); None = open.")
    end_date: dt.date | None = Field(description="Last event date checked (inclusive); None = open.")
    rows: int
    suite: str
    suite_fingerprint: str
    gx_version: str
    success: bool
    failed: list[str] = Field(description="Names of the expectations that failed, in suite order.")
    expectations: list[ExpectationOutcome]

    @property
    def is_partition(self) -> bool:
        return self.tenant_id is not None and self.start_date is not None and self.start_date == self.end_date


def _jsonable(value: Any) -> Any:
    """GX results hold numpy scalars, Decimals, Timestamps and NaN: make them plain JSON values."""
    if value is None or isinstance(value, (bool, str, int)):
        return value
    if isinstance(value, float):
        return None if math.isnan(value) else float(value)
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_jsonable(v) for v in value]
    if isinstance(value, decimal.Decimal):
        return str(value)
    if hasattr(value, "item") and not hasattr(value, "isoformat"):  # numpy scalar
        return _jsonable(value.item())
    if hasattr(value, "isoformat"):
        text = value.isoformat()
        return None if text == "NaT" else text
    try:
        if value != value:  # NaN-like
            return None
    except TypeError:  # pd.NA refuses comparisons
        return None
    return str(value)


def _examples(result: dict[str, Any]) -> list[Any]:
    """Offending values, paired with their message_id when GX reports the index column."""
    values = result.get("partial_unexpected_list") or []
    index = result.get("partial_unexpected_index_list") or []
    examples = []
    for i, value in enumerate(values[:EXAMPLES]):
        entry = index[i] if i < len(index) and isinstance(index[i], dict) else None
        if entry is not None and INDEX_COLUMN in entry:
            examples.append({INDEX_COLUMN: _jsonable(entry[INDEX_COLUMN]), "value": _jsonable(value)})
        else:
            examples.append(_jsonable(value))
    return examples


def _columns(spec: ExpectationSpec) -> str | None:
    kwargs = spec.kwargs
    if "column" in kwargs:
        return kwargs["column"]
    if "column_A" in kwargs:
        return f"{kwargs['column_A']},{kwargs['column_B']}"
    if "column_list" in kwargs and spec.expectation.startswith("ExpectCompound"):
        return ",".join(kwargs["column_list"])
    return None


def _outcome(spec: ExpectationSpec, validation: Any) -> ExpectationOutcome:
    result = dict(validation.result or {})
    info = validation.exception_info or {}
    error = info.get("exception_message") if info.get("raised_exception") else None
    return ExpectationOutcome(
        name=spec.name,
        expectation=validation.expectation_config.type,
        column=_columns(spec),
        success=bool(validation.success),
        observed_value=_jsonable(result.get("observed_value")),
        element_count=result.get("element_count"),
        unexpected_count=result.get("unexpected_count"),
        unexpected_percent=_jsonable(result.get("unexpected_percent")),
        unexpected_examples=_examples(result),
        error=error,
    )


class QualityChecker:
    """A GX ephemeral context with the events suite, built once and reused for many slices.

    Building it imports GX and registers the suite (seconds): build one per process or Beam
    worker (``DoFn.setup``), not one per partition.
    """

    def __init__(self, max_future: dt.timedelta = DEFAULT_MAX_FUTURE) -> None:
        import great_expectations as gx
        from great_expectations.data_context.types.base import (
            DataContextConfig,
            InMemoryStoreBackendDefaults,
            ProgressBarsConfig,
        )

        config = DataContextConfig(
            store_backend_defaults=InMemoryStoreBackendDefaults(),
            analytics_enabled=False,  # no usage statistics from pipeline workers
            progress_bars=ProgressBarsConfig(globally=False),
        )
        self.gx_version = gx.__version__
        self.context = gx.get_context(mode="ephemeral", project_config=config)
        self.specs = events_specs(max_future)
        self.fingerprint = suite_fingerprint(self.specs)
        self.suite = self.context.suites.add(build_suite(self.specs))
        asset = self.context.data_sources.add_pandas("lake").add_dataframe_asset(EVENTS_TABLE)
        self.batch_definition = asset.add_batch_definition_whole_dataframe("slice")
        self.result_format = {
            "result_format": "SUMMARY",
            "partial_unexpected_count": EXAMPLES,
            "unexpected_index_column_names": [INDEX_COLUMN],
            "include_unexpected_rows": False,
        }

    def check_table(
        self, table: pa.Table, tenant: str | None, start: dt.date | None, end: dt.date | None
    ) -> QualityResult:
        """Run the suite on rows already read (a partition, a range, or test data)."""
        frame = add_check_columns(events_frame(table))
        batch = self.batch_definition.get_batch(batch_parameters={"dataframe": frame})
        validation = batch.validate(self.suite, result_format=self.result_format)
        by_name = {r.expectation_config.meta.get("name"): r for r in validation.results}
        outcomes = [_outcome(spec, by_name[spec.name]) for spec in self.specs]
        return self._result(tenant, start, end, table.num_rows, outcomes)

    def _result(self, tenant, start, end, rows, outcomes: list[ExpectationOutcome]) -> QualityResult:
        failed = [o.name for o in outcomes if not o.success]
        return QualityResult(
            tenant_id=tenant,
            start_date=start,
            end_date=end,
            rows=rows,
            suite=self.suite.name,
            suite_fingerprint=self.fingerprint,
            gx_version=self.gx_version,
            success=not failed,
            failed=failed,
            expectations=outcomes,
        )

    def check_range(
        self, lake: str, start: dt.date | None = None, end: dt.date | None = None, tenant: str | None = None
    ) -> QualityResult:
        """Check ``[start, end]`` (optionally one tenant) as one slice: also finds duplicates across dates.

        Unreadable data (a file that does not match the contract's types, a corrupt footer) is a
        result with the failed check ``partition_readable``; IO errors (network, permissions) raise.
        """
        try:
            table = read_events(lake, start, end, tenant)
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as err:
            outcome = ExpectationOutcome(
                name=READ_CHECK, expectation=READ_CHECK, success=False, error=f"{type(err).__name__}: {err}"
            )
            return self._result(tenant, start, end, 0, [outcome])
        return self.check_table(table, tenant, start, end)

    def check_partition(self, lake: str, tenant: str, date: dt.date) -> QualityResult:
        """Check one Hive partition ``tenant_id=T/event_date=D``."""
        return self.check_range(lake, date, date, tenant)


def parse_partition_dir(path: str) -> tuple[str, dt.date]:
    """``.../tenant_id=T/event_date=D`` (from connectors.lake.partition_dirs) -> (T, D)."""
    match = _PARTITION_RE.search(path)
    if not match:
        raise ValueError(f"not an events partition directory: {path!r}")
    return match.group(1), dt.date.fromisoformat(match.group(2))


def result_path(lake: str, result: QualityResult) -> str:
    """Where a result lives: per partition, or per range for range checks."""
    base = table_path(lake, f"{QUALITY_DIR}/{result.table}")
    if result.is_partition:
        partition = {"tenant_id": result.tenant_id, "event_date": result.start_date}
        return paths.join_under(paths.partition_path(base, partition), "result.json")
    ranges = paths.join_under(base, "ranges")
    tenant = (
        paths.partition_path(ranges, {"tenant_id": result.tenant_id}) if result.tenant_id else f"{ranges}/all_tenants"
    )
    start = result.start_date.isoformat() if result.start_date else "open"
    end = result.end_date.isoformat() if result.end_date else "open"
    return paths.join_under(tenant, f"{start}_{end}", "result.json")


def result_json(result: QualityResult) -> bytes:
    return (json.dumps(result.model_dump(mode="json"), indent=2, sort_keys=True) + "\n").encode()


def write_result(lake: str, result: QualityResult) -> str:
    """Write the result JSON atomically (a rerun replaces it); returns its path."""
    path = result_path(lake, result)
    return write_bytes_atomically(path, result_json(result), table_path(lake, QUALITY_DIR))


def read_result(path: str) -> QualityResult:
    with FileSystems.open(path) as handle:
        return QualityResult.model_validate_json(handle.read())


def read_results(lake: str, partitions: Sequence[tuple[str, dt.date]]) -> list[QualityResult]:
    """The stored results of these partitions (tenant, date), in the order given."""
    base = table_path(lake, f"{QUALITY_DIR}/{EVENTS_TABLE}")
    return [
        read_result(f"{base}/tenant_id={tenant}/event_date={date.isoformat()}/result.json")
        for tenant, date in partitions
    ]
