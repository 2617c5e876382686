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
import os
import posixpath
import re
from collections.abc import Sequence
from typing import Any

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems
from pydantic import BaseModel, Field

from connectors import paths
from connectors.analytics_io import EventFile, event_files, read_event_file, write_bytes_atomically
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
from schemas.lake import EVENTS_SCHEMA, EVENTS_TABLE

__all__ = [
    "ExpectationOutcome",
    "QualityChecker",
    "QualityResult",
    "check_files_and_write",
    "parse_partition_dir",
    "read_result",
    "result_path",
    "rows_by_partition",
    "write_result",
]

QUALITY_DIR = "_quality"
DOCS_SITE = "lake_quality"
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


def _read_chunk(lake: str, part, start: dt.date, end: dt.date, tenant: str | None) -> pa.Table:
    """The rows of a chunk of partitions: pyarrow's dataset for a local lake; Beam's filesystems (the run's
    ``--s3_*`` options, as the analytics read) for an object store."""
    if "://" not in lake:
        return read_events(lake, start, end, tenant)
    wanted = set(part)
    files = [f for f in event_files(lake, start, end, tenant) if (f.tenant_id, f.event_date) in wanted]
    tables = [read_event_file(f, EVENTS_SCHEMA.names).cast(_READ_SCHEMA) for f in files]
    return pa.concat_tables(tables) if tables else _READ_SCHEMA.empty_table()


_READ_SCHEMA = pa.schema([field.with_nullable(True) for field in EVENTS_SCHEMA], metadata=EVENTS_SCHEMA.metadata)
"""The contract's types with every column nullable: a null where the contract forbids one is for the suite to
report (``not_null:*``), as on a local lake, not a cast error that stops the check."""


_PARTITIONING = ds.partitioning(
    pa.schema([pa.field("tenant_id", pa.string()), pa.field("event_date", pa.date32())]), flavor="hive"
)


def _read_files(lake: str, files: Sequence[EventFile]) -> pa.Table:
    """The rows of these lake files only, read as :func:`_read_chunk` reads whole partitions (a missing column
    reads as nulls, a column of another type is an Arrow error): what a gate checks of one run's writes."""
    if "://" not in lake:
        dataset = ds.dataset(
            [os.path.abspath(f.path) for f in files],
            format="parquet",
            filesystem=pafs.LocalFileSystem(),
            schema=EVENTS_SCHEMA,
            partitioning=_PARTITIONING,
            partition_base_dir=os.path.abspath(table_path(lake, EVENTS_TABLE)),
        )
        return dataset.to_table()
    tables = [read_event_file(f, EVENTS_SCHEMA.names).cast(_READ_SCHEMA) for f in files]
    return pa.concat_tables(tables) if tables else _READ_SCHEMA.empty_table()


def _missing_mask(spec: ExpectationSpec, frame: Any):
    """Rows GX leaves out of a row-level expectation's percentage (nulls, as GX's ignore rules)."""
    kwargs = spec.kwargs
    if "column" in kwargs:
        return frame[kwargs["column"]].isna().to_numpy()
    if "column_A" in kwargs:
        return (frame[kwargs["column_A"]].isna() & frame[kwargs["column_B"]].isna()).to_numpy()
    return frame[list(kwargs["column_list"])].isna().all(axis=1).to_numpy()


def _split_outcome(spec: ExpectationSpec, validation: Any, frame: Any, codes: Any, n: int, message_ids: Any):
    """One expectation's result on a multi-partition frame -> one outcome per partition (code 0..n-1)."""
    import numpy as np

    whole = _outcome(spec, validation)
    result = dict(validation.result or {})
    if "unexpected_index_list" not in result or whole.error:  # table-level (or failed to run): same for all
        return [whole.model_copy() for _ in range(n)]
    indices = np.asarray(result.get("unexpected_index_list") or [], dtype=np.int64)
    values = result.get("unexpected_list") or []
    rows = np.bincount(codes, minlength=n)
    unexpected = np.bincount(codes[indices], minlength=n) if len(indices) else np.zeros(n, dtype=np.int64)
    if "missing_count" in result:
        counted = rows - np.bincount(codes, weights=_missing_mask(spec, frame), minlength=n).astype(np.int64)
    else:  # not-null expectations: every row counts
        counted = rows
    examples: list[list[Any]] = [[] for _ in range(n)]
    for position, row in enumerate(indices):
        bucket = examples[codes[row]]
        if len(bucket) < EXAMPLES:
            value = values[position] if position < len(values) else None
            bucket.append({INDEX_COLUMN: _jsonable(message_ids[row]), "value": _jsonable(value)})
    outcomes = []
    for i in range(n):
        bad = int(unexpected[i])
        outcomes.append(
            whole.model_copy(
                update={
                    "success": bad == 0,
                    "element_count": int(rows[i]),
                    "unexpected_count": bad,
                    "unexpected_percent": 100.0 * bad / counted[i] if counted[i] else None,
                    "unexpected_examples": examples[i],
                }
            )
        )
    return outcomes


class QualityChecker:
    """A GX ephemeral context with the events suite, built once and reused for many slices.

    Building it imports GX and registers the suite (seconds): build one per process, not one per
    partition. :meth:`check_partitions` is the fast path (one GX Checkpoint run over many partitions,
    results split per partition); :meth:`check_partition` / :meth:`check_range` validate one slice.

    Args:
        max_future: tolerated lead of ``timestamp`` over ``received_at``.
        docs_dir: local directory of a GX Data Docs site; when given, every checkpoint run updates it
            (GX's ``UpdateDataDocsAction``). None: no docs.
    """

    def __init__(self, max_future: dt.timedelta = DEFAULT_MAX_FUTURE, docs_dir: str | None = None) -> None:
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
        # GX (1.24) refuses a relative base_directory, and a relative --lake is what users type
        self.docs_dir = docs_dir = os.path.abspath(docs_dir) if docs_dir else None
        actions = []
        if docs_dir:
            self.context.add_data_docs_site(
                DOCS_SITE,
                {
                    "class_name": "SiteBuilder",
                    "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": docs_dir},
                    "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
                },
            )
            actions.append(gx.checkpoint.UpdateDataDocsAction(name="update_data_docs", site_names=[DOCS_SITE]))
        definition = self.context.validation_definitions.add(
            gx.ValidationDefinition(name=f"{self.suite.name}_partitions", data=self.batch_definition, suite=self.suite)
        )
        # COMPLETE: every unexpected row's index, so that one validation splits into per-partition results
        self.checkpoint = self.context.checkpoints.add(
            gx.Checkpoint(
                name=f"{self.suite.name}_checkpoint",
                validation_definitions=[definition],
                actions=actions,
                result_format={"result_format": "COMPLETE", "partial_unexpected_count": EXAMPLES},
            )
        )

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
        """Check one Hive partition ``tenant_id=T/event_date=D`` (one validation; slow for many)."""
        return self.check_range(lake, date, date, tenant)

    def check_partitions(
        self, lake: str, partitions: Sequence[tuple[str, dt.date]], chunk: int = 200, on_chunk=None
    ) -> list[QualityResult]:
        """Check many partitions with one checkpoint run per ``chunk`` partitions; results in the order given.

        The rows of a chunk are read at once (partition columns included) and validated once; each
        row-level expectation's unexpected rows are then attributed to their partition, and table-level
        expectations (columns, dtypes) hold for every partition of the chunk. Uniqueness is checked over
        the whole chunk: a message id repeated in two dates of a tenant fails both partitions (a
        one-partition check cannot see that). A chunk that cannot be read is checked partition by partition,
        so that the unreadable one is named (``partition_readable``). ``on_chunk(n)`` is called after each chunk.
        """
        wanted = list(dict.fromkeys(partitions))
        by_key: dict[tuple[str, dt.date], QualityResult] = {}
        for i in range(0, len(wanted), chunk):
            part = wanted[i : i + chunk]
            tenants = sorted({t for t, _ in part})
            dates = [d for _, d in part]
            try:
                table = _read_chunk(lake, part, min(dates), max(dates), tenants[0] if len(tenants) == 1 else None)
            except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
                for tenant, date in part:
                    by_key[(tenant, date)] = self.check_partition(lake, tenant, date)
            else:
                by_key.update(self.check_table_by_partition(table, part))
            if on_chunk:
                on_chunk(len(part))
        return [by_key[key] for key in wanted]

    def check_files(self, lake: str, files: Sequence[EventFile], chunk: int = 200) -> list[QualityResult]:
        """Check the rows of ``files`` only (one run's writes), not the rest of their partitions; one result per
        partition they are in (``rows`` = the files' rows), in first-seen order.

        As :meth:`check_partitions`, one checkpoint run per ``chunk`` partitions, and uniqueness over the
        chunk's rows; a chunk that cannot be read is read partition by partition (``partition_readable``).
        """
        by_partition: dict[tuple[str, dt.date], list[EventFile]] = {}
        for file in files:
            by_partition.setdefault((file.tenant_id, file.event_date), []).append(file)
        keys = list(by_partition)
        by_key: dict[tuple[str, dt.date], QualityResult] = {}
        for i in range(0, len(keys), chunk):
            part = keys[i : i + chunk]
            try:
                table = _read_files(lake, [f for key in part for f in by_partition[key]])
            except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
                for tenant, date in part:
                    by_key[(tenant, date)] = self._check_files_alone(lake, tenant, date, by_partition[(tenant, date)])
            else:
                by_key.update(self.check_table_by_partition(table, part))
        return [by_key[key] for key in keys]

    def _check_files_alone(self, lake: str, tenant: str, date: dt.date, files: Sequence[EventFile]) -> QualityResult:
        try:
            table = _read_files(lake, files)
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as err:
            outcome = ExpectationOutcome(
                name=READ_CHECK, expectation=READ_CHECK, success=False, error=f"{type(err).__name__}: {err}"
            )
            return self._result(tenant, date, date, 0, [outcome])
        return self.check_table(table, tenant, date, date)

    def check_table_by_partition(
        self, table: pa.Table, partitions: Sequence[tuple[str, dt.date]]
    ) -> dict[tuple[str, dt.date], QualityResult]:
        """One checkpoint run over ``table``'s rows of ``partitions``, split into one result per partition."""
        import numpy as np
        import pyarrow.compute as pc

        keys = list(dict.fromkeys(partitions))
        if table.num_rows:  # keep the rows of the partitions asked for (a date range may hold others)
            pairs = pc.binary_join_element_wise(table["tenant_id"], pc.cast(table["event_date"], pa.string()), "\x1f")
            wanted = pa.array([f"{t}\x1f{d.isoformat()}" for t, d in keys])
            table = table.filter(pc.is_in(pairs, value_set=wanted))
        frame = add_check_columns(events_frame(table)).reset_index(drop=True)
        index = {key: i for i, key in enumerate(keys)}
        dates = frame["event_date"].dt.date if len(frame) else frame["event_date"]
        codes = np.array([index[(t, d)] for t, d in zip(frame["tenant_id"], dates, strict=True)], dtype=np.int64)
        rows = np.bincount(codes, minlength=len(keys))
        run = self.checkpoint.run(batch_parameters={"dataframe": frame})
        (validation,) = run.run_results.values()
        by_name = {r.expectation_config.meta.get("name"): r for r in validation.results}
        per_key: list[list[ExpectationOutcome]] = [[] for _ in keys]
        message_ids = frame[INDEX_COLUMN].to_numpy(dtype=object)
        for spec in self.specs:
            for i, outcome in enumerate(_split_outcome(spec, by_name[spec.name], frame, codes, len(keys), message_ids)):
                per_key[i].append(outcome)
        return {key: self._result(key[0], key[1], key[1], int(rows[i]), per_key[i]) for i, key in enumerate(keys)}


def parse_partition_dir(path: str) -> tuple[str, dt.date]:
    """``.../tenant_id=T/event_date=D`` (from connectors.lake.partition_dirs) -> (T, D)."""
    match = _PARTITION_RE.search(path)
    if not match:
        raise ValueError(f"not an events partition directory: {path!r}")
    return match.group(1), dt.date.fromisoformat(match.group(2))


def rows_by_partition(pattern: str) -> dict[str, int]:
    """``"tenant/day"`` -> rows of the lake files ``pattern`` matches (Parquet footers): what a run published
    per partition, for its run record and :mod:`pipelines.reconcile`'s per-day books."""
    out: dict[str, int] = {}
    for meta in FileSystems.match([pattern])[0].metadata_list:
        tenant, day = parse_partition_dir(posixpath.dirname(meta.path.replace("\\", "/")))
        with FileSystems.open(meta.path, compression_type="uncompressed") as handle:
            rows = pq.read_metadata(handle).num_rows
        out[f"{tenant}/{day}"] = out.get(f"{tenant}/{day}", 0) + rows
    return dict(sorted(out.items()))


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


def docs_dir(lake: str) -> str | None:
    """Where the lake's GX Data Docs site goes: ``LAKE/_quality/docs`` for a local lake; None on object
    stores (GX's filesystem site builder writes local files only)."""
    return None if "://" in lake else table_path(lake, f"{QUALITY_DIR}/docs")


_CHECKERS: dict[tuple[float, str | None], QualityChecker] = {}


def shared_checker(max_future: dt.timedelta = DEFAULT_MAX_FUTURE, docs: str | None = None) -> QualityChecker:
    """One checker per (max_future, docs site) per process: GX's import and context cost seconds, once."""
    key = (max_future.total_seconds(), docs)
    if key not in _CHECKERS:
        _CHECKERS[key] = QualityChecker(max_future, docs_dir=docs)
    return _CHECKERS[key]


def run_document(
    run_id: str,
    pipeline: str,
    checker: QualityChecker,
    results: Sequence[QualityResult],
    files: dict[str, list[str]] | None = None,
) -> dict:
    """The per-run JSON: which partitions one run checked, which failed and why (details in result.json).

    ``files`` (``"tenant/date"`` -> file names): the run checked only these files of each partition (a gate's
    check of its own writes, ``scope`` ``run_files``); None: whole partitions (``scope`` ``partitions``).
    """
    failed = [r for r in results if not r.success]
    document = {
        "run_id": run_id,
        "pipeline": pipeline,
        "checked_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "suite": checker.suite.name,
        "suite_fingerprint": checker.fingerprint,
        "gx_version": checker.gx_version,
        "success": not failed,
        "scope": "partitions" if files is None else "run_files",
        "partitions": len(results),
        "rows": sum(r.rows for r in results),
        "failed_partitions": {f"{r.tenant_id}/{r.start_date}": r.failed for r in failed},
        "data_docs": checker.docs_dir,
    }
    if files is not None:
        document["files"] = files
    return document


def _run_json_path(lake: str, pipeline: str, run_id: str) -> str:
    return table_path(lake, f"{QUALITY_DIR}/runs/{pipeline}-{run_id}.json")


def _write_run_document(lake: str, document: dict) -> None:
    path = _run_json_path(lake, document["pipeline"], document["run_id"])
    body = (json.dumps(document, indent=2, sort_keys=True) + "\n").encode()
    write_bytes_atomically(path, body, table_path(lake, QUALITY_DIR))


def check_and_write(
    lake: str,
    partitions: Sequence[tuple[str, dt.date]],
    pipeline: str,
    run_id: str,
    max_future: dt.timedelta = DEFAULT_MAX_FUTURE,
    on_chunk=None,
) -> list[QualityResult]:
    """Check ``partitions`` (the fast path), write each result.json, the run's JSON and the Data Docs site.

    The run's JSON goes to ``LAKE/_quality/runs/<pipeline>-<run_id>.json``.
    """
    checker = shared_checker(max_future, docs_dir(lake))
    results = checker.check_partitions(lake, partitions, on_chunk=on_chunk)
    for result in results:
        write_result(lake, result)
    _write_run_document(lake, run_document(run_id, pipeline, checker, results))
    return results


def check_files_and_write(
    lake: str,
    files: Sequence[EventFile],
    pipeline: str,
    run_id: str,
    max_future: dt.timedelta = DEFAULT_MAX_FUTURE,
) -> list[QualityResult]:
    """Check the rows of ``files`` (one run's writes; :meth:`QualityChecker.check_files`), write the run's JSON
    (the files checked, and the full result of each failing partition) and the Data Docs site. Cost follows
    the run's rows, not the size of the partitions it wrote into.

    The partitions' own ``result.json`` files are left to whole-partition checks (:func:`check_and_write`):
    a result of one run's rows is not a verdict on the partition, and a file per run and partition would
    grow the lake's ``_quality`` with every run.
    """
    checker = shared_checker(max_future, docs_dir(lake))
    results = checker.check_files(lake, files)
    names: dict[str, list[str]] = {}
    for file in files:
        names.setdefault(f"{file.tenant_id}/{file.event_date}", []).append(posixpath.basename(file.path))
    document = run_document(run_id, pipeline, checker, results, {k: sorted(v) for k, v in names.items()})
    document["failed_results"] = {
        f"{r.tenant_id}/{r.start_date}": r.model_dump(mode="json") for r in results if not r.success
    }
    _write_run_document(lake, document)
    return results


def read_results(lake: str, partitions: Sequence[tuple[str, dt.date]]) -> list[QualityResult]:
    """The stored results of these partitions (tenant, date), in the order given."""
    base = table_path(lake, f"{QUALITY_DIR}/{EVENTS_TABLE}")
    return [
        read_result(f"{base}/tenant_id={tenant}/event_date={date.isoformat()}/result.json")
        for tenant, date in partitions
    ]
