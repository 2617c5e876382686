"""The Parquet lake: where the events table and the analytics tables live.

Read side here; the partitioned writer for Beam pipelines is :class:`WriteLakePartitions`
(below, added with the ingest pipeline). Paths may be local directories or ``s3://`` URLs.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Sequence

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs

from schemas.lake import EVENTS_SCHEMA, EVENTS_TABLE

__all__ = ["events_dataset", "partition_dirs", "read_events", "table_path"]


def table_path(lake: str, table: str) -> str:
    return f"{lake.rstrip('/')}/{table}"


def _filesystem(path: str, filesystem: pafs.FileSystem | None) -> tuple[pafs.FileSystem, str]:
    if filesystem is not None:
        return filesystem, path.removeprefix("s3://")
    if path.startswith("s3://"):
        endpoint = os.environ.get("LIVORA_AWS_ENDPOINT")
        fs = (
            pafs.S3FileSystem(endpoint_override=endpoint, region=os.environ.get("AWS_REGION", "ap-south-1"))
            if endpoint
            else pafs.S3FileSystem()
        )
        return fs, path.removeprefix("s3://")
    return pafs.LocalFileSystem(), os.path.abspath(path)


def events_dataset(lake: str, filesystem: pafs.FileSystem | None = None) -> ds.Dataset:
    """The events table as a pyarrow dataset with typed Hive partitions (tenant_id, event_date)."""
    fs, root = _filesystem(table_path(lake, EVENTS_TABLE), filesystem)
    partitioning = ds.partitioning(
        pa.schema([pa.field("tenant_id", pa.string()), pa.field("event_date", pa.date32())]), flavor="hive"
    )
    return ds.dataset(root, format="parquet", filesystem=fs, partitioning=partitioning, schema=EVENTS_SCHEMA)


def _range_filter(start: dt.date | None, end: dt.date | None, tenant: str | None):
    expr = None
    for part in (
        ds.field("event_date") >= start if start else None,
        ds.field("event_date") <= end if end else None,
        ds.field("tenant_id") == tenant if tenant else None,
    ):
        if part is not None:
            expr = part if expr is None else expr & part
    return expr


def read_events(
    lake: str,
    start: dt.date | None = None,
    end: dt.date | None = None,
    tenant: str | None = None,
    columns: Sequence[str] | None = None,
    filesystem: pafs.FileSystem | None = None,
) -> pa.Table:
    """Events in ``[start, end]`` (UTC event dates, inclusive), optionally one tenant, as one Arrow table."""
    dataset = events_dataset(lake, filesystem)
    return dataset.to_table(columns=list(columns) if columns else None, filter=_range_filter(start, end, tenant))


def partition_dirs(
    lake: str, start: dt.date | None = None, end: dt.date | None = None, tenant: str | None = None
) -> list[str]:
    """The event partition directories in range: what a distributed batch job splits its reads by."""
    dataset = events_dataset(lake)
    expr = _range_filter(start, end, tenant)
    files = [frag.path for frag in dataset.get_fragments(filter=expr)]
    return sorted({os.path.dirname(path) for path in files})
