"""Catalog definitions of the published tables, generated from their Arrow schemas (no IO).

One Arrow → Hive mapping (:func:`hive_type`) gives the Glue ``TableInput`` columns and the Athena DDL;
one Arrow → SQL mapping (:func:`sql_type`, per dialect) is the warehouse loader's (``connectors.warehouse``
imports it) and, through :func:`redshift_type`, gives the Redshift Spectrum external tables and the native
warehouse tables (the latter identical to what ``connectors.warehouse.create_table_sql`` creates on the
first load, which a test checks). ``python -m schemas.export`` writes them to files.

Partitions: Athena and Glue use *partition projection* (no crawler, no ``MSCK REPAIR``): ``tenant_id`` is
``injected`` (every query names its tenant, ``WHERE tenant_id = 'acme-in'``) or an ``enum`` of known
tenants; date partitions are ``date`` projections (``yyyy-MM-dd``, from a first date to ``NOW``), and
``storage.location.template`` spells the Hive path. Redshift Spectrum ignores projection: its partitions
are added with :func:`spectrum_add_partition_sql`.

Single-file tables (``funnels/funnel_steps.parquet``) are read through a symlink manifest: the table's
location is a folder holding one text file that lists the Parquet file (``SymlinkTextInputFormat``, which
Athena, Glue and Redshift Spectrum read with the Parquet SerDe).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pyarrow as pa

from schemas.tables import PublishedTable

__all__ = [
    "Catalog",
    "athena_ddl",
    "glue_create_table",
    "hive_type",
    "is_nested",
    "projection_parameters",
    "redshift_type",
    "spectrum_add_partition_sql",
    "spectrum_ddl",
    "sql_type",
    "symlink_manifest",
    "table_columns",
    "warehouse_ddl",
]

PARQUET_SERDE = "org.apache.hadoop.hive.ql.io.parquet.serde.ParquetHiveSerDe"
PARQUET_INPUT = "org.apache.hadoop.hive.ql.io.parquet.MapredParquetInputFormat"
PARQUET_OUTPUT = "org.apache.hadoop.hive.ql.io.parquet.MapredParquetOutputFormat"
SYMLINK_INPUT = "org.apache.hadoop.hive.ql.io.SymlinkTextInputFormat"
TEXT_INPUT = "org.apache.hadoop.mapred.TextInputFormat"
TEXT_OUTPUT = "org.apache.hadoop.hive.ql.io.HiveIgnoreKeyTextOutputFormat"
JSON_SERDE = "org.openx.data.jsonserde.JsonSerDe"
SYMLINK_FOLDER = "_symlink"
GLUE_COMMENT_MAX = 255
REDSHIFT_VARCHAR = "VARCHAR(65535)"


@dataclass(frozen=True)
class Catalog:
    """Where the tables live and how they are catalogued (the export's flags).

    Attributes:
        lake: lake root URL (``s3://bucket/prefix``): events, dead letters, feature snapshots.
        analytics: root of the analytics outputs (``funnels/``, ``retention/``, ... beneath it).
        database: Glue / Athena database.
        spectrum_schema: Redshift external schema of the Spectrum tables.
        tenants: known tenant ids: ``enum`` projection; empty: ``injected`` (queries must name the tenant).
        first_date: first date of the date projections (``YYYY-MM-DD``; they end at ``NOW``).
    """

    lake: str
    analytics: str
    database: str = "livora"
    spectrum_schema: str = "spectrum"
    tenants: tuple[str, ...] = field(default=())
    first_date: str = "2020-01-01"

    def root(self, table: PublishedTable) -> str:
        return (self.lake if table.root == "lake" else self.analytics).rstrip("/")

    def data_url(self, table: PublishedTable) -> str:
        """The table's folder, or its one file."""
        return f"{self.root(table)}/{table.path}"

    def location(self, table: PublishedTable) -> str:
        """The catalog LOCATION: the table's folder, or the folder of its symlink manifest."""
        if table.single_file:
            return f"{self.root(table)}/{SYMLINK_FOLDER}/{table.name}/"
        return f"{self.data_url(table)}/"


# --- type mappings ----------------------------------------------------------------------------------------


def _json_text_types(t: pa.DataType) -> bool:
    """Types that JSON lines carry as text (ISO timestamps, base64/UTF-8 payloads)."""
    return pa.types.is_timestamp(t) or pa.types.is_binary(t) or pa.types.is_large_binary(t)


def hive_type(t: pa.DataType) -> str:
    """The Hive/Glue/Athena type of an Arrow type (how Athena reads that Parquet column)."""
    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_dictionary(t):
        return "string"
    if pa.types.is_boolean(t):
        return "boolean"
    if pa.types.is_integer(t):
        if pa.types.is_unsigned_integer(t):
            raise TypeError(f"no Hive type for unsigned {t}: Athena reads it as signed")
        return {8: "tinyint", 16: "smallint", 32: "int", 64: "bigint"}[t.bit_width]
    if pa.types.is_float32(t):
        return "float"
    if pa.types.is_floating(t):
        return "double"
    if pa.types.is_decimal(t):
        return f"decimal({t.precision},{t.scale})"
    if pa.types.is_date32(t):
        return "date"
    if pa.types.is_timestamp(t):
        return "timestamp"
    if pa.types.is_binary(t) or pa.types.is_large_binary(t):
        return "binary"
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        return f"array<{hive_type(t.value_type)}>"
    if pa.types.is_struct(t):
        return (
            "struct<" + ",".join(f"{t.field(i).name}:{hive_type(t.field(i).type)}" for i in range(t.num_fields)) + ">"
        )
    if pa.types.is_map(t):
        return f"map<{hive_type(t.key_type)},{hive_type(t.item_type)}>"
    raise TypeError(f"no Hive type for Arrow {t}")


_JSON_TYPE = {"duckdb": "JSON", "postgresql": "JSONB", "redshift": "SUPER"}
_STRING_TYPE = {"duckdb": "VARCHAR", "postgresql": "TEXT", "redshift": REDSHIFT_VARCHAR}
_BINARY_TYPE = {"duckdb": "BLOB", "postgresql": "BYTEA", "redshift": "VARBYTE(1024000)"}
_DOUBLE_TYPE = {"duckdb": "DOUBLE", "postgresql": "DOUBLE PRECISION", "redshift": "DOUBLE PRECISION"}
SQL_DIALECTS = tuple(_JSON_TYPE)


def is_nested(t: pa.DataType) -> bool:
    """Lists, structs and maps: stored as JSON by every warehouse dialect."""
    return pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_struct(t) or pa.types.is_map(t)


def sql_type(t: pa.DataType, dialect: str, json_column: bool = False, staging: bool = False) -> str:
    """The SQL type of an Arrow type in ``dialect`` (duckdb, postgresql, redshift): the one mapping the
    warehouse loader (``connectors.warehouse``) and the generated DDL share.

    JSON text and nested values are the dialect's JSON type (Redshift SUPER), except in a Redshift
    ``staging`` table, which holds the Parquet text that the MERGE turns into SUPER with ``JSON_PARSE``.
    """
    if dialect not in SQL_DIALECTS:
        raise ValueError(f"unknown SQL dialect {dialect!r} (one of {', '.join(SQL_DIALECTS)})")
    if json_column or is_nested(t):
        return _STRING_TYPE[dialect] if dialect == "redshift" and staging else _JSON_TYPE[dialect]
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return _STRING_TYPE[dialect]
    if pa.types.is_boolean(t):
        return "BOOLEAN"
    if pa.types.is_integer(t):
        return "BIGINT" if t.bit_width == 64 or (pa.types.is_unsigned_integer(t) and t.bit_width >= 32) else "INTEGER"
    if pa.types.is_float32(t):
        return "REAL"
    if pa.types.is_floating(t):
        return _DOUBLE_TYPE[dialect]
    if pa.types.is_decimal(t):
        return f"DECIMAL({t.precision},{t.scale})"
    if pa.types.is_timestamp(t):
        return "TIMESTAMPTZ" if t.tz else "TIMESTAMP"
    if pa.types.is_date(t):
        return "DATE"
    if pa.types.is_binary(t) or pa.types.is_large_binary(t):
        return _BINARY_TYPE[dialect]
    raise TypeError(f"no {dialect} type for Arrow {t}")


def redshift_type(t: pa.DataType, json_column: bool = False, external: bool = False) -> str:
    """The Redshift type of an Arrow type.

    Native tables (``external=False``) are :func:`sql_type` in the redshift dialect, what the loader creates.
    Spectrum external tables read the Parquet file as it is: JSON stays text (``JSON_PARSE`` it in a query),
    instants are TIMESTAMP (UTC values), nested values are not generated.
    """
    if not external:
        return sql_type(t, "redshift", json_column)
    if is_nested(t):
        raise TypeError(f"no Spectrum type generated for nested Arrow {t}")
    if pa.types.is_timestamp(t):
        return "TIMESTAMP"
    return sql_type(t, "redshift")


def table_columns(table: PublishedTable) -> list[pa.Field]:
    """The data columns as readers see them: for JSON lines, timestamps and bytes are text."""
    if table.file_format != "jsonl":
        return list(table.file_schema)
    return [f.with_type(pa.string()) if _json_text_types(f.type) else f for f in table.file_schema]


def _description(f: pa.Field) -> str:
    return (f.metadata or {}).get(b"description", b"").decode("utf-8")


# --- Glue / Athena ----------------------------------------------------------------------------------------


def projection_parameters(table: PublishedTable, catalog: Catalog) -> dict[str, str]:
    """Partition projection table properties (empty for an unpartitioned table)."""
    if not table.partitions:
        return {}
    params = {"projection.enabled": "true"}
    for part in table.partitions:
        key = f"projection.{part.name}"
        if pa.types.is_date32(part.type):
            params |= {
                f"{key}.type": "date",
                f"{key}.format": "yyyy-MM-dd",
                f"{key}.range": f"{catalog.first_date},NOW",
                f"{key}.interval": "1",
                f"{key}.interval.unit": "DAYS",
            }
        elif part.name == "tenant_id" and catalog.tenants:
            params |= {f"{key}.type": "enum", f"{key}.values": ",".join(catalog.tenants)}
        else:
            params[f"{key}.type"] = "injected"
    template = "/".join(f"{p.name}=${{{p.name}}}" for p in table.partitions)
    params["storage.location.template"] = f"{catalog.data_url(table)}/{template}"
    return params


def _formats(table: PublishedTable) -> tuple[str, str, str]:
    """(SerDe, input format, output format)."""
    if table.file_format == "jsonl":
        return JSON_SERDE, TEXT_INPUT, TEXT_OUTPUT
    if table.single_file:
        return PARQUET_SERDE, SYMLINK_INPUT, TEXT_OUTPUT
    return PARQUET_SERDE, PARQUET_INPUT, PARQUET_OUTPUT


def _table_parameters(table: PublishedTable, catalog: Catalog) -> dict[str, str]:
    params = {"EXTERNAL": "TRUE", "classification": "json" if table.file_format == "jsonl" else "parquet"}
    return params | projection_parameters(table, catalog)


def _glue_column(f: pa.Field) -> dict[str, str]:
    column = {"Name": f.name.lower(), "Type": hive_type(f.type)}
    if comment := _description(f):
        column["Comment"] = comment[:GLUE_COMMENT_MAX]
    return column


def glue_create_table(table: PublishedTable, catalog: Catalog) -> dict:
    """The input of Glue's ``CreateTable`` (``aws glue create-table --cli-input-json file://T.json``)."""
    serde, input_format, output_format = _formats(table)
    return {
        "DatabaseName": catalog.database,
        "TableInput": {
            "Name": table.name,
            "Description": table.description,
            "TableType": "EXTERNAL_TABLE",
            "Parameters": _table_parameters(table, catalog),
            "PartitionKeys": [_glue_column(p) for p in table.partitions],
            "StorageDescriptor": {
                "Columns": [_glue_column(f) for f in table_columns(table)],
                "Location": catalog.location(table),
                "InputFormat": input_format,
                "OutputFormat": output_format,
                "Compressed": False,
                "SerdeInfo": {"SerializationLibrary": serde, "Parameters": {"serialization.format": "1"}},
            },
        },
    }


def _sql_text(text: str) -> str:
    """A Hive string literal (backslash escapes)."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def athena_ddl(table: PublishedTable, catalog: Catalog) -> str:
    """Athena ``CREATE EXTERNAL TABLE`` (Hive DDL) with the same columns, location and projection as Glue."""

    def column(f: pa.Field) -> str:
        comment = _description(f)
        return f"  `{f.name.lower()}` {hive_type(f.type)}" + (f" COMMENT {_sql_text(comment)}" if comment else "")

    serde, input_format, output_format = _formats(table)
    lines = [f"CREATE EXTERNAL TABLE IF NOT EXISTS `{catalog.database}`.`{table.name}` ("]
    lines.append(",\n".join(column(f) for f in table_columns(table)))
    lines.append(")")
    lines.append(f"COMMENT {_sql_text(table.description)}")
    if table.partitions:
        lines.append("PARTITIONED BY (" + ", ".join(f"`{p.name}` {hive_type(p.type)}" for p in table.partitions) + ")")
    lines.append(f"ROW FORMAT SERDE {_sql_text(serde)}")
    lines.append(f"STORED AS INPUTFORMAT {_sql_text(input_format)} OUTPUTFORMAT {_sql_text(output_format)}")
    lines.append(f"LOCATION {_sql_text(catalog.location(table))}")
    props = _table_parameters(table, catalog)
    props.pop("EXTERNAL")
    lines.append("TBLPROPERTIES (\n" + ",\n".join(f"  {_sql_text(k)}={_sql_text(v)}" for k, v in props.items()) + "\n)")
    return "\n".join(lines) + ";\n"


def symlink_manifest(table: PublishedTable, catalog: Catalog) -> str | None:
    """The manifest to upload as ``LOCATION/symlink.txt`` for a single-file table (None otherwise)."""
    return f"{catalog.data_url(table)}\n" if table.single_file else None


# --- Redshift ---------------------------------------------------------------------------------------------


def _quote(identifier: str) -> str:
    return ".".join('"' + part.replace('"', '""') + '"' for part in identifier.split("."))


def _redshift_text(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def spectrum_ddl(table: PublishedTable, catalog: Catalog) -> str:
    """Redshift Spectrum ``CREATE EXTERNAL TABLE`` over the same files (in ``catalog.spectrum_schema``)."""
    json_columns = table.warehouse.json_columns if table.warehouse else ()
    cols = ",\n".join(
        f"  {_quote(f.name)} {redshift_type(f.type, f.name in json_columns, external=True)}"
        for f in table_columns(table)
    )
    lines = [f"CREATE EXTERNAL TABLE {_quote(f'{catalog.spectrum_schema}.{table.name}')} (", cols, ")"]
    if table.partitions:
        parts = ", ".join(f"{_quote(p.name)} {redshift_type(p.type, external=True)}" for p in table.partitions)
        lines.append(f"PARTITIONED BY ({parts})")
    serde, input_format, output_format = _formats(table)
    if table.file_format == "parquet" and not table.single_file:
        lines.append("STORED AS PARQUET")
    else:
        lines.append(f"ROW FORMAT SERDE {_redshift_text(serde)}")
        lines.append(
            f"STORED AS INPUTFORMAT {_redshift_text(input_format)} OUTPUTFORMAT {_redshift_text(output_format)}"
        )
    lines.append(f"LOCATION {_redshift_text(catalog.location(table))}")
    return "\n".join(lines) + ";\n"


def spectrum_add_partition_sql(table: PublishedTable, catalog: Catalog, values: dict[str, str]) -> str:
    """``ALTER TABLE ... ADD IF NOT EXISTS PARTITION`` for one partition (Spectrum has no projection)."""
    spec = ", ".join(f"{_quote(p.name)}={_redshift_text(values[p.name])}" for p in table.partitions)
    path = "/".join(f"{p.name}={values[p.name]}" for p in table.partitions)
    return (
        f"ALTER TABLE {_quote(f'{catalog.spectrum_schema}.{table.name}')} ADD IF NOT EXISTS PARTITION ({spec}) "
        f"LOCATION {_redshift_text(f'{catalog.data_url(table)}/{path}/')};\n"
    )


def warehouse_ddl(table: PublishedTable) -> str | None:
    """The native Redshift table the pipelines' loads create (None when no pipeline loads this table)."""
    wh = table.warehouse
    if wh is None:
        return None
    cols = [
        f"  {_quote(f.name)} {redshift_type(f.type, f.name in wh.json_columns)}"
        + (" NOT NULL" if f.name in wh.key_columns else "")
        for f in wh.schema
    ]
    if wh.key_columns:
        cols.append(f"  PRIMARY KEY ({', '.join(_quote(k) for k in wh.key_columns)})")
    options = f" {wh.redshift_options}" if wh.redshift_options else ""
    return f"CREATE TABLE IF NOT EXISTS {_quote(wh.name)} (\n" + ",\n".join(cols) + "\n)" + options + ";\n"
