"""Warehouse loader: DuckDB and a real PostgreSQL server; Redshift's SQL and S3 staging (moto)."""

from __future__ import annotations

import datetime as dt
import io
import json
import uuid
from decimal import Decimal
from pathlib import Path

import apache_beam as beam
import psycopg
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.util import assert_that, equal_to

from connectors.warehouse import (
    EVENT_JSON_COLUMNS,
    EVENT_KEY,
    EVENTS_TABLE_OPTIONS,
    LoadToWarehouse,
    Retry,
    _Load,
    connect,
    count_rows,
    create_table_sql,
    dedupe_last,
    load_table,
    merge_sql,
    rows_to_arrow,
)
from schemas.lake import EVENTS_SCHEMA

T0 = dt.datetime(2026, 3, 1, 10, 0, tzinfo=dt.UTC)
FAST = Retry(max_attempts=4, base=0.01, cap=0.05)


def lake_row(i, tenant="acme-in", **extra):
    ts = T0 + dt.timedelta(hours=i)
    row = {
        "tenant_id": tenant,
        "event_date": ts.date(),
        "message_id": f"m{i:04d}",
        "type": "track",
        "event": "Order Completed" if i % 3 == 0 else "Product Viewed",
        "person_id": f"p{i % 5}",
        "timestamp": ts,
        "received_at": ts + dt.timedelta(seconds=2),
        "properties": json.dumps({"sku": f"SKU-{i}", "new_prop_" + str(i): i}),  # new keys each row
        "revenue_inr": Decimal(i * 100) + Decimal("0.5") if i % 3 == 0 else None,
        "order_id": f"o{i}" if i % 3 == 0 else None,
        "ua_browser": "Chrome",
        "is_bot": False,
        "schema_version": "1.0.0",
    }
    row.update(extra)
    return row


ROWS = [lake_row(i) for i in range(40)]


def run_load(url, rows, table, **kwargs):
    with beam.Pipeline(options=PipelineOptions(flags=[], runner="FnApiRunner")) as pipeline:
        result = pipeline | beam.Create(rows) | LoadToWarehouse(url, table, batch_size=16, retry=FAST, **kwargs)
        keys = sorted({(r["tenant_id"], r["message_id"]) for r in rows if r.get("properties") != "{not json"})
        assert_that(result.loaded | beam.Distinct(), equal_to(keys), label="Loaded")
        failures = result.failures | beam.Map(lambda f: (f.stage.value, f.reason.value, f.message_id))
        bad = sorted(("sink", "sink_error", r["message_id"]) for r in rows if r.get("properties") == "{not json")
        assert_that(failures, equal_to(bad), label="Failures")


# --- pure SQL generation -------------------------------------------------------------------------------


def test_events_ddl_types_per_dialect():
    pg = create_table_sql("events", EVENTS_SCHEMA, "postgresql", EVENT_KEY, EVENT_JSON_COLUMNS)
    assert '"revenue_inr" DECIMAL(18,4)' in pg
    assert '"timestamp" TIMESTAMPTZ' in pg and '"event_date" DATE' in pg
    assert '"properties" JSONB' in pg and '"is_bot" BOOLEAN' in pg and '"geo_latitude" DOUBLE PRECISION' in pg
    assert 'PRIMARY KEY ("tenant_id", "message_id")' in pg
    rs = create_table_sql(
        "events",
        EVENTS_SCHEMA,
        "redshift",
        EVENT_KEY,
        EVENT_JSON_COLUMNS,
        table_options=EVENTS_TABLE_OPTIONS["redshift"],
    )
    assert '"properties" SUPER' in rs and '"traits" SUPER' in rs
    assert rs.endswith('DISTKEY("person_id") COMPOUND SORTKEY("tenant_id", "event_date")')
    staging = create_table_sql("s", EVENTS_SCHEMA, "redshift", json_columns=EVENT_JSON_COLUMNS, staging=True)
    assert '"properties" VARCHAR(65535)' in staging and staging.startswith('CREATE TEMPORARY TABLE "s"')
    # every lake column is declared, in the lake schema's order (Redshift Parquet COPY matches by position)
    declared = [line.split()[0].strip('"') for line in staging.splitlines()[1:-1]]
    assert declared == EVENTS_SCHEMA.names
    assert '"properties" JSON' in create_table_sql("events", EVENTS_SCHEMA, "duckdb", EVENT_KEY, EVENT_JSON_COLUMNS)


def test_redshift_merge_parses_json_into_super():
    sql = merge_sql(
        "events", "stage", ["tenant_id", "message_id", "properties", "event"], EVENT_KEY, "redshift", EVENT_JSON_COLUMNS
    )
    assert sql.startswith('MERGE INTO "events" USING "stage" s ON "events"."tenant_id" = s."tenant_id"')
    assert '"properties" = JSON_PARSE(s."properties")' in sql
    assert 'VALUES (s."tenant_id", s."message_id", JSON_PARSE(s."properties"), s."event")' in sql


# --- DuckDB (embedded default) -------------------------------------------------------------------------


def test_duckdb_load_twice_leaves_one_row_per_key(tmp_path):
    import duckdb

    url = f"duckdb://{tmp_path}/wh.duckdb"
    run_load(url, ROWS + ROWS[:7], "events")  # duplicates inside the input
    run_load(url, ROWS, "events")  # and the whole batch again
    assert count_rows(url) == len(ROWS)
    con = duckdb.connect(str(tmp_path / "wh.duckdb"))
    revenue, skus = con.execute(
        "SELECT sum(revenue_inr), count(DISTINCT json_extract_string(properties, '$.sku')) FROM events"
    ).fetchone()
    assert revenue == sum(r["revenue_inr"] for r in ROWS if r["revenue_inr"] is not None)
    assert skus == len(ROWS)


def test_load_table_by_key_and_by_partition_is_idempotent(tmp_path):
    url = f"duckdb://{tmp_path}/wh.duckdb"
    day1 = pa.table({"tenant_id": ["a", "a", "b"], "day": ["d1", "d1", "d1"], "step": [1, 2, 1], "n": [10, 5, 7]})
    assert load_table(url, "funnel_daily", day1, replace_partitions=["tenant_id", "day"]) == 3
    assert load_table(url, "funnel_daily", day1, replace_partitions=["tenant_id", "day"]) == 3
    assert count_rows(url, "funnel_daily") == 3
    redo = pa.table({"tenant_id": ["a"], "day": ["d1"], "step": [1], "n": [11]})  # tenant a's d1 recomputed
    load_table(url, "funnel_daily", redo, replace_partitions=["tenant_id", "day"])
    assert count_rows(url, "funnel_daily") == 2  # a/d1 replaced by one row, b/d1 untouched
    feats = pa.table({"person_id": ["p1", "p2"], "score": [0.5, 0.7], "tags": [["x"], ["y", "z"]]})
    load_table(url, "features", feats, key_columns=["person_id"])
    load_table(
        url,
        "features",
        pa.table({"person_id": ["p2"], "score": [0.9], "tags": [["q"]], "new_col": ["v"]}),
        key_columns=["person_id"],
    )
    import duckdb

    rows = (
        duckdb.connect(str(tmp_path / "wh.duckdb"))
        .execute("SELECT person_id, score, tags::VARCHAR, new_col FROM features ORDER BY 1")
        .fetchall()
    )
    assert rows == [("p1", 0.5, '["x"]', None), ("p2", 0.9, '["q"]', "v")]
    with pytest.raises(ValueError):
        load_table(url, "x", feats)  # neither key nor partitions: not idempotent, refused
    assert count_rows(url, "no_such_table") == 0


# --- PostgreSQL (real server) --------------------------------------------------------------------------


@pytest.fixture
def pg_table():
    return f"events_{uuid.uuid4().hex[:8]}"


@pytest.mark.integration
def test_postgres_load_twice_leaves_one_row_per_key(postgres_url, pg_table):
    run_load(postgres_url, ROWS + ROWS[:5], pg_table)
    run_load(postgres_url, ROWS, pg_table)
    assert count_rows(postgres_url, pg_table) == len(ROWS)
    with psycopg.connect(postgres_url) as conn:
        revenue, sku, typ = conn.execute(
            f"SELECT revenue_inr, properties->>'sku', pg_typeof(properties)::text FROM {pg_table} WHERE message_id = 'm0003'"
        ).fetchone()
    assert (revenue, sku, typ) == (Decimal("300.5"), "SKU-3", "jsonb")


class KillBackendOnce:
    """Fault hook: at ``step`` of the first load, terminate the loading session from outside (a real
    dropped connection mid-transaction). A marker file makes it fire once across DoFn copies."""

    def __init__(self, url: str, step: str, marker: Path):
        self.url, self.step, self.marker = url, step, str(marker)

    def __call__(self, step: str) -> None:
        if step != self.step or Path(self.marker).exists():
            return
        Path(self.marker).write_text("fired")
        with psycopg.connect(self.url, autocommit=True) as admin:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid() AND state <> 'idle'"
            )


@pytest.mark.integration
@pytest.mark.parametrize("step", ["staged", "merged"])
def test_postgres_killed_transaction_is_rolled_back_and_retried(postgres_url, pg_table, tmp_path, step):
    run_load(postgres_url, ROWS[:10], pg_table)  # some rows already there
    hook = KillBackendOnce(postgres_url, step, tmp_path / "fired")
    run_load(postgres_url, ROWS, pg_table, fault_hook=hook)
    assert (tmp_path / "fired").exists()  # the fault did happen
    assert count_rows(postgres_url, pg_table) == len(ROWS)
    with psycopg.connect(postgres_url) as conn:
        dupes = conn.execute(
            f"SELECT count(*) FROM (SELECT 1 FROM {pg_table} GROUP BY tenant_id, message_id HAVING count(*) > 1) d"
        ).fetchone()[0]
    assert dupes == 0


@pytest.mark.integration
def test_postgres_refused_row_is_a_sink_failure_and_the_rest_loads(postgres_url, pg_table):
    rows = [*ROWS[:9], lake_row(99, properties="{not json")]
    run_load(postgres_url, rows, pg_table)
    assert count_rows(postgres_url, pg_table) == 9


@pytest.mark.integration
def test_postgres_load_table_replaces_partitions_atomically(postgres_url):
    table = f"retention_{uuid.uuid4().hex[:8]}"
    data = pa.table(
        {"tenant_id": ["a"] * 3, "cohort": [dt.date(2026, 1, 1)] * 3, "period": [0, 1, 2], "users": [9, 4, 2]}
    )
    load_table(postgres_url, table, data, replace_partitions=["tenant_id", "cohort"])
    load_table(postgres_url, table, data, replace_partitions=["tenant_id", "cohort"])
    assert count_rows(postgres_url, table) == 3


# --- Redshift: SQL and S3 staging (no Redshift here) -----------------------------------------------------


class RecordingConnection:
    """Stands in for a psycopg connection to Redshift: records statements and the transaction outcome."""

    def __init__(self, log, fail_on=None, columns=()):
        self.log, self.fail_on, self.columns = log, fail_on, list(columns)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        self.log.append("ROLLBACK" if exc_type else "COMMIT")

    def cursor(self):
        return RecordingCursor(self)


class RecordingCursor:
    def __init__(self, conn):
        self.conn = conn

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def execute(self, statement, params=None):
        if self.conn.fail_on and statement.startswith(self.conn.fail_on):
            raise psycopg.OperationalError("server closed the connection unexpectedly")
        self.conn.log.append(statement)

    def fetchall(self):  # the information_schema lookup of the target's columns
        return [(c,) for c in self.conn.columns]


@pytest.mark.integration
def test_redshift_stages_parquet_with_manifest_and_runs_one_transaction(aws):
    s3 = aws.client("s3")
    s3.create_bucket(Bucket="stage", CreateBucketConfiguration={"LocationConstraint": aws.region})
    log: list[str] = []
    # the target exists without the newest contract column: the load adds it in the same transaction
    existing = [c for c in EVENTS_SCHEMA.names if c != "pipeline_version"]
    attempts = iter(
        [RecordingConnection(log, fail_on="MERGE", columns=existing), RecordingConnection(log, columns=existing)]
    )
    url = "redshift://loader:secret@example.redshift.amazonaws.com:5439/dev?iam_role=arn:aws:iam::123:role/copy&s3_staging=s3://stage/batches"
    warehouse = connect(url, aws=aws, connect=lambda: next(attempts))
    data = rows_to_arrow(ROWS)
    job = _Load("events", data, EVENT_KEY, None, EVENT_JSON_COLUMNS, EVENTS_TABLE_OPTIONS["redshift"])
    assert FAST.run(warehouse, job) == len(ROWS)
    # first attempt: failed at MERGE and rolled back; second: the whole transaction again, committed
    assert log.count("ROLLBACK") == 1 and log[-1] == "COMMIT"
    second = log[log.index("ROLLBACK") + 1 :]
    kinds = ["SELECT", "CREATE", "LOCK", "ALTER", "DROP", "CREATE", "COPY", "MERGE", "DROP", "COMMIT"]
    assert [s.split()[0] for s in second] == kinds
    assert 'ALTER TABLE "events" ADD COLUMN "pipeline_version" VARCHAR(65535)' in second
    copy = next(s for s in second if s.startswith("COPY"))
    assert copy.endswith("IAM_ROLE 'arn:aws:iam::123:role/copy' FORMAT AS PARQUET MANIFEST")
    # after commit (and after the rollback) the staged Parquet and manifest are deleted
    assert s3.list_objects_v2(Bucket="stage").get("KeyCount") == 0

    manifest_url = warehouse.stage(data, "batch-1")
    assert manifest_url == "s3://stage/batches/batch-1/manifest.json"
    manifest = json.loads(s3.get_object(Bucket="stage", Key="batches/batch-1/manifest.json")["Body"].read())
    (entry,) = manifest["entries"]
    assert entry["url"] == "s3://stage/batches/batch-1/part-00000.parquet" and entry["mandatory"] is True
    body = s3.get_object(Bucket="stage", Key="batches/batch-1/part-00000.parquet")["Body"].read()
    assert entry["meta"]["content_length"] == len(body)
    staged = pq.read_table(io.BytesIO(body))
    assert staged.schema.names == EVENTS_SCHEMA.names and staged.num_rows == len(ROWS)


def _load_concurrently(url: str, table: str, batches: list[list[dict]]) -> list[BaseException]:
    import threading

    errors: list[BaseException] = []

    def load(batch):
        try:
            job = _Load(table, dedupe_last(rows_to_arrow(batch), EVENT_KEY), EVENT_KEY, None, EVENT_JSON_COLUMNS, "")
            Retry(max_attempts=20, base=0.01, cap=0.2).run(connect(url), job)
        except BaseException as err:
            errors.append(err)

    threads = [threading.Thread(target=load, args=(batch,)) for batch in batches]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return errors


def overlapping_batches():
    import random

    rnd = random.Random(1)
    return [rnd.sample(ROWS, 25) for _ in range(6)]


@pytest.mark.integration
def test_postgres_concurrent_loads_into_a_new_table(postgres_url, pg_table):
    batches = overlapping_batches()
    assert _load_concurrently(postgres_url, pg_table, batches) == []
    assert count_rows(postgres_url, pg_table) == len({r["message_id"] for b in batches for r in b})


def test_duckdb_concurrent_loads_into_a_new_table(tmp_path):
    url = f"duckdb://{tmp_path}/wh.duckdb"
    batches = overlapping_batches()
    assert _load_concurrently(url, "events", batches) == []
    assert count_rows(url) == len({r["message_id"] for b in batches for r in b})


def test_duckdb_bad_row_is_dead_lettered_but_a_broken_target_fails_loudly(tmp_path):
    import duckdb

    url = f"duckdb://{tmp_path}/wh.duckdb"
    run_load(url, [*ROWS[:5], lake_row(98, properties="{not json")], "events")  # asserts the one failure
    assert count_rows(url) == 5
    con = duckdb.connect(str(tmp_path / "wh.duckdb"))
    con.execute("CREATE VIEW broken AS SELECT 1 AS x")
    con.close()
    options = PipelineOptions(flags=[], runner="FnApiRunner")
    # a configuration error, not bad rows: the run fails instead of dead-lettering every row
    with pytest.raises(Exception, match=r"(?i)view|catalog"), beam.Pipeline(options=options) as pipeline:
        _ = pipeline | beam.Create(ROWS[:3]) | LoadToWarehouse(url, "broken", retry=FAST)


def test_redshift_partition_replace_sql():
    from connectors.warehouse import replace_partitions_sql

    delete, insert = replace_partitions_sql(
        "daily", "stage", ["tenant_id", "day", "n"], ["tenant_id", "day"], "redshift"
    )
    assert delete == (
        'DELETE FROM "daily" USING (SELECT DISTINCT "tenant_id", "day" FROM "stage") s '
        'WHERE "daily"."tenant_id" = s."tenant_id" AND "daily"."day" = s."day"'
    )
    assert insert == 'INSERT INTO "daily" ("tenant_id", "day", "n") SELECT "tenant_id", "day", "n" FROM "stage"'
