"""schemas.ddl / schemas.export: the catalog definitions of every published table against files the pipelines wrote.

A small lake is written with the lake writer (``connectors.lake.write_partition_file``) and every analytics
pipeline runs over it; then for each table of ``schemas.tables.PUBLISHED_TABLES`` the generated Athena DDL
(parsed by sqlglot), Glue ``CreateTable`` input (validated against botocore's Glue model) and Redshift DDL
(parsed by sqlglot) must name the columns, with the types, of the real Parquet files, and their partition
keys must be the ``k=v`` folders the writers made. sqlglot's types are mapped back to Arrow here, independently
of the generator's mapping.
"""

from __future__ import annotations

import datetime as dt
import decimal
import glob
import json
import os
import subprocess
import sys

import botocore.session
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
import sqlglot
from botocore.validate import ParamValidator
from sqlglot import exp

from connectors import warehouse
from connectors.lake import write_partition_file
from connectors.warehouse import EVENT_JSON_COLUMNS, EVENT_KEY, EVENTS_TABLE_OPTIONS, create_table_sql
from pipelines import clv as clv_pipeline
from pipelines import features as features_pipeline
from pipelines import funnels as funnels_pipeline
from pipelines import product_analytics as product_pipeline
from pipelines import retention as retention_pipeline
from pipelines import segments as segments_pipeline
from schemas import ddl
from schemas.failures import FailedEvent, Reason, Stage
from schemas.tables import PUBLISHED_TABLES, published_table
from tests.analytics_lake import generate_rows

NAMES = [t.name for t in PUBLISHED_TABLES]
SEGMENTS = """
rfm: {method: quintiles, lookback_days: 365}
segments:
  - name: champions
    rule: {rfm: {recency: {min: 4}, frequency: {min: 3}, monetary: {min: 4}}}
  - name: viewers
    rule: {event: {name: Product Viewed, min_count: 1}}
"""


@pytest.fixture(scope="module")
def published(tmp_path_factory) -> ddl.Catalog:
    """A lake and every analytics output, written by the project's own writers; their Catalog."""
    root = tmp_path_factory.mktemp("published")
    lake, analytics = str(root / "lake"), str(root / "analytics")
    groups: dict[tuple[str, dt.date], list[dict]] = {}
    for r in generate_rows(persons=30, seed=8, days=40):
        groups.setdefault((r["tenant_id"], r["event_date"]), []).append(r)
    for (tenant, day), rows in groups.items():
        partition = {"tenant_id": tenant, "event_date": day.isoformat()}
        write_partition_file(lake, "events", partition, rows, "part-00000.parquet")
    failures = [
        FailedEvent(payload=b'{"type": "track"', stage=Stage.DECODE, reason=Reason.MALFORMED_JSON, message="bad json"),
        FailedEvent(payload=b"\xff\xfe", stage=Stage.DECODE, reason=Reason.NOT_UTF8, message="not text"),
    ]
    os.makedirs(f"{lake}/dead_letters")
    with open(f"{lake}/dead_letters/part-test-0000.jsonl", "w", encoding="utf-8") as handle:
        handle.writelines(f.to_json_line() + "\n" for f in failures)

    funnels_pipeline.run(
        [
            *("--lake", lake, "--steps", "Product Viewed,Order Completed", "--breakdown", "channel"),
            *("--output", f"{analytics}/funnels"),
        ]
    )
    retention_pipeline.run(
        [
            *("--lake", lake, "--start-event", "Product Viewed", "--return-event", "Order Completed"),
            *("--output", f"{analytics}/retention"),
        ]
    )
    product_pipeline.run(["--lake", lake, "--output", f"{analytics}/product_analytics", "--buckets", "2"])
    config = root / "segments.yaml"
    config.write_text(SEGMENTS)
    segments_pipeline.run(
        [
            *("--lake", lake, "--config", str(config), "--as-of", "2026-09-05", "--buckets", "2"),
            *("--output", f"{analytics}/segments"),
        ]
    )
    clv_pipeline.run(["--lake", lake, "--calibration-end", "2026-08-25", "--output", f"{analytics}/clv"])
    features_pipeline.run(["--lake", lake, "--output-lake", lake, "--as-of", "2026-09-01", "--buckets", "1"])
    return ddl.Catalog(lake=lake, analytics=analytics)


# --- reading the files and the definitions back --------------------------------------------------------


def data_files(table, catalog: ddl.Catalog) -> list[str]:
    if table.single_file:
        return [catalog.data_url(table)]
    suffix = "jsonl" if table.file_format == "jsonl" else "parquet"
    return sorted(glob.glob(f"{catalog.data_url(table)}/**/*.{suffix}", recursive=True))


def canonical(t: pa.DataType) -> str:
    """Arrow type as compared here: instants are 'timestamp' whatever their unit and zone."""
    return "timestamp" if pa.types.is_timestamp(t) else str(t)


def file_columns(table, path: str) -> list[tuple[str, str]]:
    if table.file_format == "jsonl":
        with open(path, encoding="utf-8") as handle:
            record = json.loads(handle.readline())
        assert all(v is None or isinstance(v, str) for v in record.values()), record  # every field is text
        return sorted((k.lower(), "string") for k in record)
    return [(f.name.lower(), canonical(f.type)) for f in pq.read_schema(path)]


SQLGLOT_TO_ARROW = {
    exp.DataType.Type.TEXT: "string",
    exp.DataType.Type.VARCHAR: "string",
    exp.DataType.Type.BOOLEAN: "bool",
    exp.DataType.Type.TINYINT: "int8",
    exp.DataType.Type.SMALLINT: "int16",
    exp.DataType.Type.INT: "int32",
    exp.DataType.Type.BIGINT: "int64",
    exp.DataType.Type.FLOAT: "float",
    exp.DataType.Type.DOUBLE: "double",
    exp.DataType.Type.DATE: "date32[day]",
    exp.DataType.Type.TIMESTAMP: "timestamp",
    exp.DataType.Type.TIMESTAMPTZ: "timestamp",
    exp.DataType.Type.SUPER: "json",
}


def arrow_of(kind: exp.DataType) -> str:
    if kind.this == exp.DataType.Type.DECIMAL:
        precision, scale = (int(p.name) for p in kind.expressions)
        return str(pa.decimal128(precision, scale))
    return SQLGLOT_TO_ARROW[kind.this]


def column_defs(schema: exp.Schema) -> list[tuple[str, str]]:
    return [(c.name.lower(), arrow_of(c.args["kind"])) for c in schema.expressions if isinstance(c, exp.ColumnDef)]


def parsed_table(sql: str, dialect: str) -> tuple[exp.Create, list[tuple[str, str]], list[tuple[str, str]]]:
    """(statement, data columns, partition columns) of a CREATE TABLE that sqlglot parses in full."""
    statements = sqlglot.parse(sql, dialect=dialect, error_level=sqlglot.ErrorLevel.RAISE)
    assert len([s for s in statements if s is not None]) == 1
    create = statements[0]
    assert isinstance(create, exp.Create), type(create)  # not a Command fallback of unparsed text
    partitioned = create.find(exp.PartitionedByProperty)
    return create, column_defs(create.this), column_defs(partitioned.this) if partitioned else []


def check_partitions(table, catalog: ddl.Catalog, partition_columns: list[tuple[str, str]]) -> None:
    """The declared partition keys are the k=v folders of every file, in order, with values of their type."""
    assert partition_columns == [(p.name, canonical(p.type)) for p in table.partitions]
    for path in data_files(table, catalog):
        folders = os.path.relpath(os.path.dirname(path), catalog.data_url(table)).split(os.sep)
        if not table.partitions:
            assert folders == ["."] or table.single_file, path
            continue
        pairs = [folder.split("=", 1) for folder in folders]
        assert [k for k, _ in pairs] == [name for name, _ in partition_columns], path
        for (_, value), (_, kind) in zip(pairs, partition_columns, strict=True):
            if kind == "date32[day]":
                assert dt.date.fromisoformat(value).isoformat() == value


def expected_columns(table, catalog: ddl.Catalog) -> list[tuple[str, str]]:
    """The columns of the written files (all files of a table agree), partition columns excluded."""
    files = data_files(table, catalog)
    assert files, f"no files written for {table.name}"
    found = {tuple(file_columns(table, f)) for f in files}
    if table.name == "funnel_steps":  # written with breakdown_value only when a funnel has a breakdown
        assert ("breakdown_value", "string") in next(iter(found))
    assert len(found) == 1, found
    columns = list(next(iter(found)))
    return sorted(columns) if table.file_format == "jsonl" else columns


# --- the tests ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_athena_ddl_parses_and_has_the_columns_of_the_written_files(published, name):
    table = published_table(name)
    create, columns, partitions = parsed_table(ddl.athena_ddl(table, published), "athena")
    expected = expected_columns(table, published)
    assert (sorted(columns) if table.file_format == "jsonl" else columns) == expected
    check_partitions(table, published, partitions)
    properties = {p.name: p.text("value") for p in create.find_all(exp.Property) if p.name}
    location = create.find(exp.LocationProperty).this.name
    assert location == published.location(table)
    if table.partitions:
        assert properties["projection.enabled"] == "true"
        template = properties["storage.location.template"]
        for path in data_files(table, published):  # the template, filled in, is each file's folder
            values = dict(folder.split("=", 1) for folder in os.path.dirname(path).split(os.sep) if "=" in folder)
            filled = template
            for key, value in values.items():
                filled = filled.replace(f"${{{key}}}", value)
            assert filled == os.path.dirname(path)
    if table.single_file:  # the symlink manifest names the one file
        assert ddl.symlink_manifest(table, published).strip() == data_files(table, published)[0]


GLUE = botocore.session.get_session().get_service_model("glue")


@pytest.mark.parametrize("name", NAMES)
def test_glue_create_table_input_is_valid_and_has_the_columns_of_the_written_files(published, name):
    table = published_table(name)
    request = ddl.glue_create_table(table, published)
    report = ParamValidator().validate(request, GLUE.operation_model("CreateTable").input_shape)
    assert not report.has_errors(), report.generate_report()
    info = request["TableInput"]
    columns = [
        (c["Name"], arrow_of(exp.DataType.build(c["Type"], dialect="hive")))
        for c in info["StorageDescriptor"]["Columns"]
    ]
    expected = expected_columns(table, published)
    assert (sorted(columns) if table.file_format == "jsonl" else columns) == expected
    partitions = [(c["Name"], arrow_of(exp.DataType.build(c["Type"], dialect="hive"))) for c in info["PartitionKeys"]]
    check_partitions(table, published, partitions)
    assert all(len(c.get("Comment", "")) <= 255 for c in info["StorageDescriptor"]["Columns"])
    athena = {
        p.name: p.text("value")
        for p in sqlglot.parse_one(ddl.athena_ddl(table, published), dialect="athena").find_all(exp.Property)
        if p.name
    }
    for key, value in info["Parameters"].items():  # the same projection as the Athena DDL
        if key != "EXTERNAL":
            assert athena[key] == value, key


@pytest.mark.parametrize("name", NAMES)
def test_spectrum_ddl_parses_and_has_the_columns_of_the_written_files(published, name):
    table = published_table(name)
    _, columns, partitions = parsed_table(ddl.spectrum_ddl(table, published), "redshift")
    expected = expected_columns(table, published)
    assert (sorted(columns) if table.file_format == "jsonl" else columns) == expected
    check_partitions(table, published, partitions)


@pytest.mark.parametrize("name", [t.name for t in PUBLISHED_TABLES if t.warehouse])
def test_native_redshift_ddl_is_the_table_the_loader_creates(published, name):
    table = published_table(name)
    wh = table.warehouse
    if name == "events":
        assert (wh.key_columns, wh.json_columns) == (EVENT_KEY, EVENT_JSON_COLUMNS)
        assert wh.redshift_options == EVENTS_TABLE_OPTIONS["redshift"]
    elif name == "features":
        assert wh.key_columns == features_pipeline.WAREHOUSE_KEY
    else:  # analytics loads replace partitions: no key
        assert wh.key_columns == () and not wh.redshift_options
    loader = create_table_sql(
        wh.name, wh.schema, "redshift", wh.key_columns, wh.json_columns, table_options=wh.redshift_options
    )
    generated = ddl.warehouse_ddl(table)
    assert generated == loader + ";\n"
    _, columns, _ = parsed_table(generated, "redshift")
    # the files' columns plus the partition columns, JSON text as SUPER
    files = dict(expected_columns(table, published))
    loaded = {p.name: canonical(p.type) for p in table.partitions if p.name in wh.schema.names}
    # the one partition column the warehouse does not keep: features' as_of_date, the date of its as_of column
    assert [p.name for p in table.partitions if p.name not in loaded] == (["as_of_date"] if name == "features" else [])
    files |= loaded
    files |= {c: "json" for c in wh.json_columns}
    assert dict(columns) == files


def test_pandas_reads_dates_as_dates_and_output_money_as_float64(published):
    for table in PUBLISHED_TABLES:
        if not table.single_file:
            continue
        df = pd.read_parquet(data_files(table, published)[0])
        for f in table.file_schema:
            if pa.types.is_date32(f.type):
                assert df[f.name].dtype == object, (table.name, f.name)
                assert all(isinstance(v, dt.date) for v in df[f.name].dropna()), (table.name, f.name)
            if f.name.endswith("_inr"):
                assert df[f.name].dtype == "float64", (table.name, f.name)
        typed = pd.read_parquet(data_files(table, published)[0], dtype_backend="pyarrow")
        for f in table.file_schema:
            if pa.types.is_date32(f.type):
                assert typed[f.name].dtype == pd.ArrowDtype(pa.date32())
    daily = pd.read_parquet(f"{published.analytics}/product_analytics/revenue_daily.parquet")
    assert len(daily) > 0 and daily["revenue_inr"].sum() > 0


def test_pandas_reads_the_lake_partitions_typed_with_the_published_partition_schema(published):
    events = published_table("events")
    folder = published.data_url(events)
    plain = pd.read_parquet(folder)
    assert isinstance(plain["event_date"].dtype, pd.CategoricalDtype)  # the trap: Hive folders as dictionary text
    typed = pd.read_parquet(folder, partitioning=ds.partitioning(events.partition_schema, flavor="hive"))
    assert typed["event_date"].dtype == object and isinstance(typed["event_date"].iloc[0], dt.date)
    assert not isinstance(typed["tenant_id"].dtype, pd.CategoricalDtype) and typed["tenant_id"].iloc[0] == "acme-in"
    money = typed["revenue_inr"].dropna()
    assert len(money) and all(isinstance(v, decimal.Decimal) for v in money)  # exact decimal(18, 4) in the lake
    arrow = pd.read_parquet(
        folder, partitioning=ds.partitioning(events.partition_schema, flavor="hive"), dtype_backend="pyarrow"
    )
    assert arrow["revenue_inr"].dtype == pd.ArrowDtype(pa.decimal128(18, 4))
    assert arrow["event_date"].dtype == pd.ArrowDtype(pa.date32())
    segments = published_table("segment_membership")
    members = pd.read_parquet(
        published.data_url(segments), partitioning=ds.partitioning(segments.partition_schema, flavor="hive")
    )
    assert set(members["as_of"]) == {dt.date(2026, 9, 5)}


def test_export_cli_writes_every_definition(tmp_path):
    out = tmp_path / "out"
    args = ["--lake", "s3://bucket/lake/", "--tenants", "acme-in,bloom-in", "--first-date", "2024-01-01"]
    subprocess.run([sys.executable, "-m", "schemas.export", str(out), *args], check=True, capture_output=True)
    for table in PUBLISHED_TABLES:
        glue = json.loads((out / "glue" / f"{table.name}.json").read_text())
        assert glue["DatabaseName"] == "livora"
        assert (out / "athena" / f"{table.name}.sql").is_file()
        assert (out / "redshift" / "spectrum" / f"{table.name}.sql").is_file()
        assert (out / "redshift" / "warehouse" / f"{table.name}.sql").is_file() == (table.warehouse is not None)
        manifest = out / "symlink" / table.name / "symlink.txt"
        assert manifest.is_file() == table.single_file
        params = glue["TableInput"]["Parameters"]
        if "tenant_id" in [p.name for p in table.partitions]:
            assert (params["projection.tenant_id.type"], params["projection.tenant_id.values"]) == (
                "enum",
                "acme-in,bloom-in",
            )
    events = json.loads((out / "glue" / "events.json").read_text())["TableInput"]
    assert events["StorageDescriptor"]["Location"] == "s3://bucket/lake/events/"
    assert events["Parameters"]["projection.event_date.range"] == "2024-01-01,NOW"
    assert (
        events["Parameters"]["storage.location.template"]
        == "s3://bucket/lake/events/tenant_id=${tenant_id}/event_date=${event_date}"
    )
    steps = (out / "symlink" / "funnel_steps" / "symlink.txt").read_text()
    assert steps == "s3://bucket/lake/analytics/funnels/funnel_steps.parquet\n"


def test_one_arrow_to_sql_mapping_serves_the_loader_and_the_generated_ddl():
    """The loader's type mapping is the contract's (it used to be a copy kept equal by a test)."""
    assert warehouse.sql_type is ddl.sql_type


@pytest.mark.parametrize(
    ("arrow", "duckdb", "postgresql", "redshift"),
    [
        (pa.string(), "VARCHAR", "TEXT", "VARCHAR(65535)"),
        (pa.int32(), "INTEGER", "INTEGER", "INTEGER"),
        (pa.uint32(), "BIGINT", "BIGINT", "BIGINT"),
        (pa.float64(), "DOUBLE", "DOUBLE PRECISION", "DOUBLE PRECISION"),
        (pa.decimal128(18, 4), "DECIMAL(18,4)", "DECIMAL(18,4)", "DECIMAL(18,4)"),
        (pa.timestamp("us", tz="UTC"), "TIMESTAMPTZ", "TIMESTAMPTZ", "TIMESTAMPTZ"),
        (pa.date32(), "DATE", "DATE", "DATE"),
        (pa.binary(), "BLOB", "BYTEA", "VARBYTE(1024000)"),
        (pa.list_(pa.string()), "JSON", "JSONB", "SUPER"),
    ],
)
def test_sql_type_per_dialect(arrow, duckdb, postgresql, redshift):
    assert [ddl.sql_type(arrow, d) for d in ("duckdb", "postgresql", "redshift")] == [duckdb, postgresql, redshift]
    assert ddl.redshift_type(arrow) == redshift
    if not pa.types.is_list(arrow):
        spectrum = "TIMESTAMP" if pa.types.is_timestamp(arrow) else redshift
        assert ddl.redshift_type(arrow, external=True) == spectrum
    assert ddl.sql_type(pa.string(), "redshift", json_column=True, staging=True) == "VARCHAR(65535)"
    with pytest.raises(ValueError, match="unknown SQL dialect"):
        ddl.sql_type(arrow, "mysql")
