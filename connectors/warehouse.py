"""The warehouse loader: Redshift in production, PostgreSQL for tests, DuckDB as the embedded default.

Every load is the same three steps in ONE transaction, so a crash or a failed COPY leaves the target as
it was and a retry (or a re-run of the same batch) leaves one row per key:

1. stage the batch: Redshift ``COPY ... FORMAT AS PARQUET MANIFEST`` from Parquet staged in S3;
   PostgreSQL ``COPY ... FROM STDIN`` (psycopg 3); DuckDB straight from Arrow;
2. ``MERGE`` the staging table into the target on its key (``(tenant_id, message_id)`` for events):
   matched rows are replaced, new rows inserted (or, for :func:`load_table` with ``replace_partitions``,
   the batch's partitions are deleted and re-inserted);
3. commit.

Table DDL is generated from the Arrow schema (for events: :data:`schemas.lake.EVENTS_SCHEMA`, itself
generated from ``LakeEvent``). ``properties``, ``traits`` and ``plan_violations`` stay JSON (DuckDB
JSON, PostgreSQL JSONB, Redshift SUPER via ``JSON_PARSE``), so a brand's new event property never
breaks a load; the promoted columns are all declared. Column docs: ``docs/sinks.md``.

URLs: ``duckdb:///abs/path.duckdb``, ``postgresql://user@host:port/db``,
``redshift://user:password@host:5439/db?iam_role=arn:...&s3_staging=s3://bucket/prefix``.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import json
import logging
import random
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, unquote, urlparse

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq

from connectors.dynamodb import sink_failure
from schemas.ddl import is_nested, sql_type  # the one Arrow -> SQL type mapping (contracts live in schemas/)
from schemas.failures import FailedEvent
from schemas.lake import EVENTS_SCHEMA, EVENTS_TABLE

__all__ = [
    "EVENT_JSON_COLUMNS",
    "EVENT_KEY",
    "LoadToWarehouse",
    "TransientWarehouseError",
    "connect",
    "count_rows",
    "create_table_sql",
    "load_table",
    "merge_sql",
    "redshift_manifest",
    "rows_to_arrow",
    "sql_type",
]

log = logging.getLogger(__name__)

EVENT_KEY = ("tenant_id", "message_id")
EVENT_JSON_COLUMNS = ("properties", "traits", "plan_violations")
STAGING = "livora_stage"


class TransientWarehouseError(RuntimeError):
    """Lost connection, lock timeout, serialization failure...: retry the whole transaction."""


# --- SQL generation -----------------------------------------------------------------------------------


def quote(identifier: str) -> str:
    """Quote a (possibly schema-qualified) identifier: event columns include reserved words (timestamp, type)."""
    return ".".join('"' + part.replace('"', '""') + '"' for part in identifier.split("."))


def create_table_sql(
    table: str,
    schema: pa.Schema,
    dialect: str,
    key_columns: Sequence[str] = (),
    json_columns: Sequence[str] = (),
    staging: bool = False,
    table_options: str = "",
) -> str:
    """``CREATE TABLE`` for ``schema`` (staging tables: temporary, no key, Redshift JSON as VARCHAR)."""
    cols = []
    for field in schema:
        not_null = " NOT NULL" if field.name in key_columns and not staging else ""
        cols.append(
            f"  {quote(field.name)} {sql_type(field.type, dialect, field.name in json_columns, staging)}{not_null}"
        )
    if key_columns and not staging and dialect != "duckdb":  # DuckDB: no ART index to fight MERGE updates
        cols.append(f"  PRIMARY KEY ({', '.join(quote(k) for k in key_columns)})")
    head = f"CREATE TEMPORARY TABLE {quote(table)}" if staging else f"CREATE TABLE IF NOT EXISTS {quote(table)}"
    return f"{head} (\n" + ",\n".join(cols) + "\n)" + (f" {table_options}" if table_options and not staging else "")


def merge_sql(
    target: str,
    staging: str,
    columns: Sequence[str],
    key_columns: Sequence[str],
    dialect: str,
    json_columns: Sequence[str] = (),
) -> str:
    """``MERGE`` the staging table into the target on the key: replace matched rows, insert new ones."""

    def source(col: str) -> str:
        ref = f"s.{quote(col)}"
        return f"JSON_PARSE({ref})" if dialect == "redshift" and col in json_columns else ref

    on = " AND ".join(f"t.{quote(k)} = s.{quote(k)}" for k in key_columns)
    updates = ", ".join(f"{quote(c)} = {source(c)}" for c in columns if c not in key_columns)
    names = ", ".join(quote(c) for c in columns)
    values = ", ".join(source(c) for c in columns)
    if dialect == "redshift":
        # Redshift's MERGE takes the target name unaliased in the ON clause
        on = " AND ".join(f"{quote(target)}.{quote(k)} = s.{quote(k)}" for k in key_columns)
        head = f"MERGE INTO {quote(target)} USING {quote(staging)} s ON {on}"
    else:
        head = f"MERGE INTO {quote(target)} t USING {quote(staging)} s ON {on}"
    matched = f"WHEN MATCHED THEN UPDATE SET {updates}" if updates else ""
    if not updates and dialect == "redshift":  # Redshift needs a MATCHED clause: a no-op update of the key
        matched = f"WHEN MATCHED THEN UPDATE SET {quote(key_columns[0])} = s.{quote(key_columns[0])}"
    return f"{head}\n{matched}\nWHEN NOT MATCHED THEN INSERT ({names}) VALUES ({values})".replace("\n\n", "\n")


def replace_partitions_sql(
    target: str, staging: str, columns: Sequence[str], partition_columns: Sequence[str], dialect: str = "postgresql"
) -> list[str]:
    """Delete the partitions present in the batch, then insert the batch (partition overwrite)."""
    parts = ", ".join(quote(c) for c in partition_columns)
    names = ", ".join(quote(c) for c in columns)
    batch = f"(SELECT DISTINCT {parts} FROM {quote(staging)}) s"
    if dialect == "redshift":  # Redshift's DELETE takes no alias: DELETE ... USING with the table name
        match = " AND ".join(f"{quote(target)}.{quote(c)} = s.{quote(c)}" for c in partition_columns)
        delete = f"DELETE FROM {quote(target)} USING {batch} WHERE {match}"
    else:
        match = " AND ".join(f"t.{quote(c)} = s.{quote(c)}" for c in partition_columns)
        delete = f"DELETE FROM {quote(target)} t WHERE EXISTS (SELECT 1 FROM {batch} WHERE {match})"
    return [delete, f"INSERT INTO {quote(target)} ({names}) SELECT {names} FROM {quote(staging)}"]


# --- Arrow preparation ---------------------------------------------------------------------------------


def rows_to_arrow(rows: Sequence[Mapping[str, Any]], schema: pa.Schema = EVENTS_SCHEMA) -> pa.Table:
    """Lake row dicts -> Arrow table of ``schema`` (extra keys ignored, missing ones null)."""
    return pa.Table.from_pylist([dict(r) for r in rows], schema=schema)


def _jsonify_nested(table: pa.Table) -> pa.Table:
    """Lists/structs/maps become JSON text: every dialect stores them as JSON."""
    for i, field in enumerate(table.schema):
        if is_nested(field.type):
            values = [None if v is None else json.dumps(v, default=str) for v in table.column(i).to_pylist()]
            table = table.set_column(i, pa.field(field.name, pa.string()), pa.array(values, pa.string()))
    return table


def dedupe_last(table: pa.Table, key_columns: Sequence[str]) -> pa.Table:
    """One row per key (the last one): MERGE may not touch a target row twice."""
    if not key_columns or table.num_rows == 0:
        return table
    keys = list(zip(*(table.column(k).to_pylist() for k in key_columns), strict=True))
    last = {key: i for i, key in enumerate(keys)}
    if len(last) == table.num_rows:
        return table
    return table.take(pa.array(sorted(last.values()), pa.int64()))


# --- connections ---------------------------------------------------------------------------------------


@dataclass
class _Load:
    table: str
    data: pa.Table
    key_columns: Sequence[str]
    replace_partitions: Sequence[str] | None
    json_columns: Sequence[str]
    table_options: str


class _Warehouse:
    dialect = ""

    def __init__(self, url: str, fault_hook: Callable[[str], None] | None = None):
        self.url = url
        self._fault = fault_hook or (lambda step: None)

    def load(self, job: _Load) -> int:
        raise NotImplementedError

    def apply_staged_sql(self, job: _Load, columns: Sequence[str]) -> list[str]:
        """The statements moving the staged rows into the table: replace their partitions, or MERGE by key."""
        if job.replace_partitions:
            return list(replace_partitions_sql(job.table, STAGING, columns, job.replace_partitions))
        return [merge_sql(job.table, STAGING, columns, job.key_columns, self.dialect, job.json_columns)]

    def count(self, table: str) -> int:
        raise NotImplementedError

    @staticmethod
    def is_transient(err: BaseException) -> bool:
        raise NotImplementedError

    @staticmethod
    def is_data_error(err: BaseException) -> bool:
        """The rows are at fault (bad value, bad JSON, constraint): dead-letter them. Anything else that is
        not transient (missing privilege, bad SQL, wrong URL) is a configuration error and is raised."""
        raise NotImplementedError


class DuckDBWarehouse(_Warehouse):
    """Embedded default. One connection per load: the file lock is held only while loading."""

    dialect = "duckdb"

    def __init__(self, url: str, fault_hook=None):
        super().__init__(url, fault_hook)
        self.path = url.removeprefix("duckdb://") or ":memory:"

    def _connect(self):
        import duckdb

        return duckdb.connect(self.path)

    def load(self, job: _Load) -> int:
        # DuckDB's optimistic concurrency does not see two transactions inserting the same new key (there is
        # no unique index), so concurrent MERGEs could both insert it: loads into one file are serialised by
        # an exclusive lock on PATH.lock (threads and processes alike; DuckDB has one writer per file anyway).
        if self.path == ":memory:":
            return self._load(job)
        with open(f"{self.path}.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                return self._load(job)
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _load(self, job: _Load) -> int:
        data = job.data
        con = self._connect()
        try:
            con.execute("BEGIN TRANSACTION")
            _ensure_table(con, self.dialect, job, _duckdb_columns(con, job.table))
            con.register(STAGING, data)
            self._fault("staged")
            columns = data.schema.names
            for statement in self.apply_staged_sql(job, columns):
                con.execute(statement)
            self._fault("merged")
            con.execute("COMMIT")
            return data.num_rows
        except BaseException:
            with contextlib.suppress(Exception):
                con.execute("ROLLBACK")
            raise
        finally:
            con.close()

    def count(self, table: str) -> int:
        con = self._connect()
        try:
            return con.execute(f"SELECT count(*) FROM {quote(table)}").fetchone()[0]
        finally:
            con.close()

    @staticmethod
    def is_transient(err: BaseException) -> bool:
        import duckdb

        return isinstance(err, (duckdb.IOException, duckdb.TransactionException))

    @staticmethod
    def is_data_error(err: BaseException) -> bool:
        import duckdb

        return isinstance(err, (duckdb.DataError, duckdb.ConstraintException))


def _duckdb_columns(con, table: str) -> list[str] | None:
    schema, _, name = table.rpartition(".")
    rows = con.execute(
        "SELECT column_name FROM information_schema.columns WHERE table_name = ? AND (? = '' OR table_schema = ?) "
        "ORDER BY ordinal_position",
        [name, schema, schema],
    ).fetchall()
    return [r[0] for r in rows] or None


def _ensure_table(con, dialect: str, job: _Load, existing: list[str] | None) -> None:
    """Create the target if missing; add columns the batch has and the table lacks (never drop any)."""
    schema = job.data.schema
    if existing is None:
        con.execute(
            create_table_sql(
                job.table, schema, dialect, job.key_columns, job.json_columns, table_options=job.table_options
            )
        )
        return
    for field in schema:
        if field.name not in existing:
            con.execute(
                f"ALTER TABLE {quote(job.table)} ADD COLUMN {quote(field.name)} "
                f"{sql_type(field.type, dialect, field.name in job.json_columns)}"
            )


class PostgresWarehouse(_Warehouse):
    """PostgreSQL 15+: COPY FROM STDIN into a temp staging table, MERGE, one transaction."""

    dialect = "postgresql"

    def _connect(self):
        import psycopg

        return psycopg.connect(self.url, connect_timeout=10)

    def load(self, job: _Load) -> int:
        data = job.data
        columns = data.schema.names
        # the connection block commits on success and rolls back on an exception
        with self._connect() as conn, conn.cursor() as cur:
            # serialise loads of one table: concurrent CREATE/MERGE of the same keys would conflict
            cur.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", [job.table])
            _ensure_table(cur, self.dialect, job, _pg_columns(cur, job.table))
            cur.execute(
                create_table_sql(STAGING, data.schema, self.dialect, json_columns=job.json_columns, staging=True)
                + " ON COMMIT DROP"
            )
            with cur.copy(f"COPY {quote(STAGING)} ({', '.join(quote(c) for c in columns)}) FROM STDIN") as copy:
                for row in _python_rows(data, job.json_columns):
                    copy.write_row(row)
            self._fault("staged")
            for statement in self.apply_staged_sql(job, columns):
                cur.execute(statement)
            self._fault("merged")
        return data.num_rows

    def count(self, table: str) -> int:
        with self._connect() as conn:
            return conn.execute(f"SELECT count(*) FROM {quote(table)}").fetchone()[0]

    @staticmethod
    def is_transient(err: BaseException) -> bool:
        import psycopg
        from psycopg import errors

        transient = (
            psycopg.OperationalError,
            errors.SerializationFailure,
            errors.DeadlockDetected,
            errors.LockNotAvailable,
        )
        return isinstance(err, transient) and not isinstance(err, errors.QueryCanceled)

    @staticmethod
    def is_data_error(err: BaseException) -> bool:
        import psycopg

        return isinstance(err, (psycopg.DataError, psycopg.IntegrityError))


def _pg_columns(cur, table: str) -> list[str] | None:
    schema, _, name = table.rpartition(".")
    cur.execute(
        "SELECT column_name FROM information_schema.columns WHERE table_name = %s "
        "AND table_schema = COALESCE(NULLIF(%s, ''), current_schema()) ORDER BY ordinal_position",
        [name, schema],
    )
    return [r[0] for r in cur.fetchall()] or None


def _python_rows(data: pa.Table, json_columns: Sequence[str]) -> Iterable[tuple]:
    names = data.schema.names
    for record in data.to_pylist():
        yield tuple(record[n] for n in names)


def redshift_manifest(entries: Sequence[tuple[str, int]]) -> dict:
    """A COPY manifest; Parquet COPY needs ``meta.content_length`` (bytes) for every file."""
    return {"entries": [{"url": url, "mandatory": True, "meta": {"content_length": size}} for url, size in entries]}


class RedshiftWarehouse(_Warehouse):
    """Redshift: Parquet staged in S3 + manifest, COPY into a temp table, MERGE, one transaction.

    Query parameters: ``iam_role`` (role Redshift assumes to read the staging prefix), ``s3_staging``
    (``s3://bucket/prefix``), optional ``aws_profile=local|aws`` and ``region`` for the S3 client.
    """

    dialect = "redshift"

    def __init__(self, url: str, fault_hook=None, aws=None, connect: Callable | None = None):
        super().__init__(url, fault_hook)
        parsed = urlparse(url)
        query = {k: v[-1] for k, v in parse_qs(parsed.query).items()}
        self.iam_role = query.get("iam_role")
        self.s3_staging = query.get("s3_staging")
        if not self.iam_role or not self.s3_staging or not self.s3_staging.startswith("s3://"):
            raise ValueError("redshift:// URLs need ?iam_role=...&s3_staging=s3://bucket/prefix")
        if aws is None:
            from connectors.aws import AwsSettings

            aws = AwsSettings.from_profile(query.get("aws_profile", "aws"), region=query.get("region", "ap-south-1"))
        self._aws = aws
        auth = f"{unquote(parsed.username or '')}" + (f":{unquote(parsed.password)}" if parsed.password else "")
        self.dsn = f"postgresql://{auth}@{parsed.hostname}:{parsed.port or 5439}{parsed.path}?sslmode=require"
        self._connect = connect or self._psycopg_connect

    def _psycopg_connect(self):
        import psycopg

        return psycopg.connect(self.dsn, connect_timeout=10)

    def stage(self, data: pa.Table, batch_id: str) -> str:
        """Write the batch as Parquet + manifest under s3_staging/batch_id/; returns the manifest URL."""
        bucket, _, prefix = self.s3_staging.removeprefix("s3://").partition("/")
        prefix = f"{prefix.rstrip('/')}/{batch_id}" if prefix else batch_id
        buffer = io.BytesIO()
        pq.write_table(data, buffer, compression="zstd")
        body = buffer.getvalue()
        s3 = self._aws.client("s3")
        key = f"{prefix}/part-00000.parquet"
        s3.put_object(Bucket=bucket, Key=key, Body=body)
        manifest = redshift_manifest([(f"s3://{bucket}/{key}", len(body))])
        s3.put_object(Bucket=bucket, Key=f"{prefix}/manifest.json", Body=json.dumps(manifest).encode())
        return f"s3://{bucket}/{prefix}/manifest.json"

    def unstage(self, manifest_url: str) -> None:
        """Delete a batch's staged objects (best effort: a leftover is garbage, never data)."""
        bucket, _, manifest_key = manifest_url.removeprefix("s3://").partition("/")
        prefix = manifest_key.rsplit("/", 1)[0]
        try:
            self._aws.client("s3").delete_objects(
                Bucket=bucket,
                Delete={"Objects": [{"Key": f"{prefix}/part-00000.parquet"}, {"Key": manifest_key}], "Quiet": True},
            )
        except Exception as err:  # never fail a load over cleanup; an S3 lifecycle rule on the prefix catches leftovers
            log.warning("could not delete staged batch %s: %s", manifest_url, err)

    def statements(self, job: _Load, manifest_url: str, existing_columns: Sequence[str] = ()) -> list[str]:
        """The SQL of one load, in order (run inside one transaction).

        ``existing_columns``: the target's columns if it exists; batch columns it lacks are added first.
        """
        schema, columns = job.data.schema, job.data.schema.names
        out = [
            create_table_sql(
                job.table, schema, self.dialect, job.key_columns, job.json_columns, table_options=job.table_options
            ),
            f"LOCK {quote(job.table)}",
        ]
        if existing_columns:
            known = {c.lower() for c in existing_columns}
            out += [
                f"ALTER TABLE {quote(job.table)} ADD COLUMN {quote(f.name)} "
                f"{sql_type(f.type, self.dialect, f.name in job.json_columns)}"
                for f in schema
                if f.name.lower() not in known
            ]
        out += [
            f"DROP TABLE IF EXISTS {quote(STAGING)}",
            create_table_sql(STAGING, schema, self.dialect, json_columns=job.json_columns, staging=True),
            f"COPY {quote(STAGING)} FROM '{manifest_url}' IAM_ROLE '{self.iam_role}' FORMAT AS PARQUET MANIFEST",
        ]
        if job.replace_partitions:
            names = ", ".join(quote(c) for c in columns)
            values = ", ".join(f"JSON_PARSE({quote(c)})" if c in job.json_columns else quote(c) for c in columns)
            delete, _ = replace_partitions_sql(job.table, STAGING, columns, job.replace_partitions, self.dialect)
            out += [delete, f"INSERT INTO {quote(job.table)} ({names}) SELECT {values} FROM {quote(STAGING)}"]
        else:
            out.append(merge_sql(job.table, STAGING, columns, job.key_columns, self.dialect, job.json_columns))
        out.append(f"DROP TABLE {quote(STAGING)}")
        return out

    def load(self, job: _Load) -> int:
        manifest_url = self.stage(job.data, uuid.uuid4().hex)
        try:
            self._run_load(job, manifest_url)
        finally:  # committed or rolled back: the staged copy is no longer needed either way
            self.unstage(manifest_url)
        return job.data.num_rows

    def _run_load(self, job: _Load, manifest_url: str) -> None:
        with self._connect() as conn, conn.cursor() as cur:
            schema, _, name = job.table.rpartition(".")
            cur.execute(
                "SELECT column_name FROM information_schema.columns WHERE table_name = %s "
                "AND table_schema = COALESCE(NULLIF(%s, ''), current_schema())",
                [name, schema],
            )
            existing = [row[0] for row in cur.fetchall()]
            for statement in self.statements(job, manifest_url, existing):
                cur.execute(statement)
                if statement.startswith("COPY"):
                    self._fault("staged")
            self._fault("merged")

    def count(self, table: str) -> int:
        with self._connect() as conn:
            return conn.execute(f"SELECT count(*) FROM {quote(table)}").fetchone()[0]

    @staticmethod
    def is_transient(err: BaseException) -> bool:
        from botocore.exceptions import BotoCoreError, ClientError

        if PostgresWarehouse.is_transient(err):
            return True
        if isinstance(err, ClientError):
            return err.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) >= 500
        return isinstance(err, BotoCoreError)

    @staticmethod
    def is_data_error(err: BaseException) -> bool:
        # a rejected value fails the whole COPY with "Load into table ... failed. Check 'stl_load_errors'"
        return PostgresWarehouse.is_data_error(err) or "stl_load_errors" in str(err)


def connect(url: str, **kwargs) -> _Warehouse:
    """The warehouse behind ``url`` (duckdb://, postgresql://, redshift://)."""
    scheme = url.split("://", 1)[0]
    if scheme == "duckdb":
        return DuckDBWarehouse(url, **kwargs)
    if scheme in ("postgresql", "postgres"):
        return PostgresWarehouse(url, **kwargs)
    if scheme == "redshift":
        return RedshiftWarehouse(url, **kwargs)
    raise ValueError(f"unknown warehouse URL scheme {scheme!r}: use duckdb:///path, postgresql://... or redshift://...")


@dataclass(frozen=True)
class Retry:
    max_attempts: int = 8
    base: float = 0.2
    cap: float = 20.0
    sleep: Callable[[float], None] = time.sleep

    def run(self, warehouse: _Warehouse, job: _Load) -> int:
        """Run the load transaction, retrying the whole of it on transient errors (each try is all-or-nothing)."""
        for attempt in range(1, self.max_attempts + 1):
            try:
                return warehouse.load(job)
            except Exception as err:
                if not warehouse.is_transient(err):
                    raise
                if attempt == self.max_attempts:
                    raise TransientWarehouseError(f"load into {job.table} failed {attempt} times: {err}") from err
                log.warning("transient warehouse error (attempt %d): %s", attempt, err)
                self.sleep(random.random() * min(self.cap, self.base * 2**attempt))
        raise AssertionError("unreachable")


def load_table(
    url: str,
    table_name: str,
    arrow_table: pa.Table,
    key_columns: Sequence[str] = (),
    replace_partitions: Sequence[str] | None = None,
    json_columns: Sequence[str] = (),
    retry: Retry | None = None,
    **connect_kwargs,
) -> int:
    """Load any Arrow table idempotently: MERGE on ``key_columns``, or overwrite the batch's partitions.

    Analytics outputs (funnels, retention, features) use this. The table is created from the Arrow schema
    when missing; new columns are added. Returns the number of rows loaded.

    Args:
        url: warehouse URL.
        table_name: target table (``schema.table`` allowed).
        arrow_table: the rows; nested columns are stored as JSON.
        key_columns: the row key: a re-load replaces rows with the same key.
        replace_partitions: instead of a key, columns whose value combinations present in the batch are
            deleted and re-inserted (e.g. ``("tenant_id", "day")`` for a daily report).
        json_columns: string columns holding JSON text, stored as JSON/JSONB/SUPER.
    """
    if not key_columns and not replace_partitions:
        raise ValueError("load_table needs key_columns or replace_partitions: loads must be idempotent")
    missing = [c for c in (*key_columns, *(replace_partitions or ())) if c not in arrow_table.schema.names]
    if missing:
        raise ValueError(f"columns {missing} not in the table being loaded")
    data = _jsonify_nested(arrow_table)
    if not replace_partitions:
        data = dedupe_last(data, key_columns)
    if data.num_rows == 0:
        return 0
    job = _Load(table_name, data, tuple(key_columns), tuple(replace_partitions or ()) or None, tuple(json_columns), "")
    return (retry or Retry()).run(connect(url, **connect_kwargs), job)


def count_rows(url: str, table: str = EVENTS_TABLE, retry: Retry | None = None) -> int:
    """Rows in a warehouse table (0 when the table does not exist yet); retries a locked DuckDB file."""
    warehouse = connect(url)
    retry = retry or Retry()
    for attempt in range(1, retry.max_attempts + 1):
        try:
            return warehouse.count(table)
        except Exception as err:
            if "does not exist" in str(err) or "Catalog Error" in str(err) or "UndefinedTable" in type(err).__name__:
                return 0
            if not warehouse.is_transient(err) or attempt == retry.max_attempts:
                raise
            retry.sleep(random.random() * min(retry.cap, retry.base * 2**attempt))
    raise AssertionError("unreachable")


# --- the Beam transform --------------------------------------------------------------------------------

EVENTS_TABLE_OPTIONS = {"redshift": 'DISTKEY("person_id") COMPOUND SORTKEY("tenant_id", "event_date")'}


def warehouse_failure(row: Mapping, target: str, err: BaseException) -> FailedEvent:
    """A dead letter for a row the warehouse refused: the same shape as every sink's (:func:`sink_failure`)."""
    return sink_failure(row, target, type(err).__name__, str(err))


class _LoadBatchFn(beam.DoFn):
    FAILURES = "failures"

    def __init__(self, url: str, table: str, retry: Retry, fault_hook: Callable | None):
        self._url, self._table, self._retry, self._fault_hook = url, table, retry, fault_hook
        self._loaded = beam.metrics.Metrics.counter("warehouse", "rows_loaded")
        self._failed = beam.metrics.Metrics.counter("warehouse", "rows_failed")
        self._batches = beam.metrics.Metrics.counter("warehouse", "batches_loaded")

    def setup(self):
        self._warehouse = connect(self._url, fault_hook=self._fault_hook)
        self._target = f"{self._url.split('://', 1)[0]}:{self._table}"

    def process(self, rows: list[dict]):
        yield from self._load(rows)

    def _load(self, rows: list[dict]):
        try:
            data = dedupe_last(rows_to_arrow(rows), EVENT_KEY)
            job = _Load(
                self._table,
                data,
                EVENT_KEY,
                None,
                EVENT_JSON_COLUMNS,
                EVENTS_TABLE_OPTIONS.get(self._warehouse.dialect, ""),
            )
            self._retry.run(self._warehouse, job)
        except TransientWarehouseError:
            raise  # the runner retries the bundle; the MERGE makes that safe
        except Exception as err:
            if isinstance(err, pa.ArrowException) or self._warehouse.is_data_error(err):
                if len(rows) == 1:
                    self._failed.inc()
                    yield beam.pvalue.TaggedOutput(self.FAILURES, warehouse_failure(rows[0], self._target, err))
                    return
                half = len(rows) // 2  # find the bad row(s); the others load
                yield from self._load(rows[:half])
                yield from self._load(rows[half:])
                return
            raise
        self._batches.inc()
        self._loaded.inc(len(rows))
        for row in rows:
            yield (row["tenant_id"], row["message_id"])


class LoadToWarehouse(beam.PTransform):
    """Load lake rows into the warehouse ``table`` in micro-batches: stage, MERGE on (tenant_id, message_id).

    Returns ``.loaded`` ((tenant_id, message_id) per loaded row) and ``.failures`` (FailedEvent,
    stage=sink, reason=sink_error, for rows the warehouse refuses for good).

    Args:
        url: ``duckdb:///abs/path.duckdb`` | ``postgresql://...`` | ``redshift://...?iam_role=&s3_staging=``.
        table: target table name.
        batch_size: most rows per transaction.
        retry: retry policy for transient errors (tests use a short one).
        fault_hook: test seam called with "staged" / "merged" inside the transaction.
    """

    def __init__(
        self,
        url: str,
        table: str = EVENTS_TABLE,
        batch_size: int = 5000,
        retry: Retry | None = None,
        fault_hook: Callable[[str], None] | None = None,
    ):
        super().__init__()
        connect(url)  # fail at graph construction on a bad URL, not at 3 a.m.
        self._url, self._table, self._batch_size = url, table, batch_size
        self._fn = _LoadBatchFn(url, table, retry or Retry(), fault_hook)

    def expand(self, rows):
        return (
            rows
            | "BatchRows" >> beam.BatchElements(min_batch_size=1, max_batch_size=self._batch_size)
            | "MergeBatches" >> beam.ParDo(self._fn).with_outputs(_LoadBatchFn.FAILURES, main="loaded")
        )


def rows_per_partition(url: str, table: str = EVENTS_TABLE) -> dict[tuple[str, str], int]:
    """``(tenant_id, event_date as YYYY-MM-DD)`` -> rows of a warehouse table (DuckDB, PostgreSQL); {} when the
    table does not exist yet."""
    warehouse = connect(url)
    if not isinstance(warehouse, (DuckDBWarehouse, PostgresWarehouse)):
        raise ValueError(f"rows per partition: not supported for {warehouse.dialect}")
    sql = f"SELECT tenant_id, CAST(event_date AS VARCHAR), count(*) FROM {quote(table)} GROUP BY 1, 2"
    con = warehouse._connect()
    try:
        rows = con.execute(sql).fetchall()
    except Exception as err:
        if "does not exist" in str(err) or "Catalog Error" in str(err) or "UndefinedTable" in type(err).__name__:
            return {}
        raise
    finally:
        con.close()
    return {(tenant, str(date)[:10]): int(n) for tenant, date, n in rows}
