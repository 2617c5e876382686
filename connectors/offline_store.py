"""Offline feature store: Parquet snapshots in the lake, one partition per (as-of date, tenant).

Layout: ``LAKE/features/as_of_date=YYYY-MM-DD/tenant_id=T/part-BBBB.parquet`` (Hive partitions, the
partition values live in the path; columns: :data:`schemas.features.OFFLINE_FILE_SCHEMA`). One file per
person bucket, written atomically (:func:`connectors.lake.write_partition_file`); after a run every file
of a rewritten partition that the run did not write is deleted, so a rerun *replaces* the partition
(a shrinking population or a different bucket count leaves nothing stale behind).
Read it with ``duckdb.read_parquet('LAKE/features/**/*.parquet', hive_partitioning=true)`` or
:func:`read_features`.
"""

from __future__ import annotations

import datetime as dt
import io
import os
from collections.abc import Iterable

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.dataset as ds
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems

from connectors.analytics_io import arrow_input, read_parquet, write_bytes_atomically
from connectors.aws import S3Encryption
from connectors.lake import delete_unlisted, partition_path, write_partition_file
from schemas.features import FEATURES_TABLE, OFFLINE_FILE_SCHEMA, OFFLINE_SCHEMA

__all__ = [
    "feature_partition",
    "prune_partition",
    "read_features",
    "read_spine",
    "write_feature_file",
    "write_training_set",
]


def feature_partition(lake: str, as_of_date: str, tenant_id: str) -> str:
    return partition_path(lake, FEATURES_TABLE, {"as_of_date": as_of_date, "tenant_id": tenant_id})


def write_feature_file(
    lake: str, as_of_date: str, tenant_id: str, bucket: int, features: pa.Table, encryption: S3Encryption | None = None
) -> str:
    """One bucket's rows of one (as-of date, tenant) snapshot; returns the path written (SSE-KMS with ``encryption``)."""
    rows = features.sort_by([("person_id", "ascending")]).select(OFFLINE_FILE_SCHEMA.names)
    return write_partition_file(
        lake,
        FEATURES_TABLE,
        {"as_of_date": as_of_date, "tenant_id": tenant_id},
        rows.cast(OFFLINE_FILE_SCHEMA),
        f"part-{bucket:04d}.parquet",
        schema=OFFLINE_FILE_SCHEMA,
        encryption=encryption,
    )


def prune_partition(directory: str, keep: Iterable[str]) -> list[str]:
    """Delete the Parquet files in ``directory`` that are not in ``keep``; returns the deleted paths."""
    return delete_unlisted(f"{directory.rstrip('/')}/*.parquet", keep)


def read_features(lake: str, as_of_date: dt.date | None = None, tenant: str | None = None) -> pa.Table:
    """Offline rows (with tenant_id, and as_of_date as a string) of one or all snapshots (local lakes)."""
    root = f"{lake.rstrip('/')}/{FEATURES_TABLE}"
    if not os.path.isdir(root):
        return OFFLINE_SCHEMA.empty_table()
    partitioning = ds.partitioning(
        pa.schema([pa.field("as_of_date", pa.string()), pa.field("tenant_id", pa.string())]), flavor="hive"
    )
    schema = pa.schema([*OFFLINE_FILE_SCHEMA, pa.field("as_of_date", pa.string()), pa.field("tenant_id", pa.string())])
    dataset = ds.dataset(root, format="parquet", partitioning=partitioning, schema=schema)
    expr = None
    if as_of_date is not None:
        expr = pc.field("as_of_date") == as_of_date.isoformat()
    if tenant is not None:
        cond = pc.field("tenant_id") == tenant
        expr = cond if expr is None else expr & cond
    return dataset.to_table(filter=expr)


def read_spine(path: str, columns: list[str] | None = None) -> pa.Table:
    """An entity spine from Parquet or CSV (by extension; local or s3:// through Beam's FileSystems).

    Both go through :mod:`connectors.analytics_io`'s readers, which never hand Arrow a Python file object
    (a process abort at exit otherwise).
    """
    if not path.lower().endswith((".csv", ".csv.gz")):
        return read_parquet(path, columns)
    with FileSystems.open(path) as handle:  # decompresses .csv.gz by extension
        data = handle.read()
    options = pacsv.ConvertOptions(
        column_types={"tenant_id": pa.string(), "person_id": pa.string()}, include_columns=columns
    )
    return pacsv.read_csv(arrow_input(data), convert_options=options)


def write_training_set(path: str, table: pa.Table) -> str:
    """The training set as one file, atomically: CSV when ``path`` ends with .csv, else Parquet."""
    sink = io.BytesIO()
    if path.lower().endswith(".csv"):
        pacsv.write_csv(table, sink)
    else:
        pq.write_table(table, sink, compression="zstd")
    write_bytes_atomically(path, sink.getvalue())
    return path
