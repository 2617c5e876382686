"""IO for the batch analytics pipelines: list and read lake event files, write result tables, load them.

Reads go through Beam's ``FileSystems`` so that the same code reads a local lake and ``s3://`` (with
the Beam S3 flags from :meth:`connectors.aws.AwsSettings.beam_s3_options`). A file is read whole with
only the needed columns; the Hive partition values (tenant_id, event_date) come from its path.
Writes are atomic (temp file + rename locally, one PUT on S3) so a reader never sees half a table, and a
rerun replaces a table instead of adding to it.

Arrow's readers are never handed a Python object (``io.BytesIO``, or ``pa.BufferReader`` over ``bytes``):
their worker threads may drop the last reference to it while the interpreter finalizes, which aborts the
process at exit ("terminate called without an active exception", code 134; apache/arrow#33975, #34314),
in about 1 run in 10 here. Local files are read by path through pyarrow's own filesystem; remote files
are read whole through Beam's ``FileSystems`` and copied into Arrow-owned memory (:func:`arrow_input`).
"""

from __future__ import annotations

import datetime as dt
import io
import os
import re
import zlib
from collections.abc import Callable, Mapping, Sequence
from typing import NamedTuple

import apache_beam as beam
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics

from connectors import paths
from connectors.aws import S3Encryption
from connectors.warehouse import load_table
from schemas.lake import EVENTS_TABLE, PARTITION_COLUMNS

__all__ = [
    "EventFile",
    "ReadEventBuckets",
    "arrow_input",
    "event_files",
    "lake_file_patterns",
    "load_tables",
    "person_bucket",
    "person_buckets",
    "read_event_file",
    "read_parquet",
    "read_table",
    "to_arrow",
    "write_bytes_atomically",
    "write_table",
    "write_tables",
]

_PARTITION = re.compile(r"/tenant_id=([^/]+)/event_date=(\d{4}-\d{2}-\d{2})/[^/]+\.parquet$")


class EventFile(NamedTuple):
    path: str
    tenant_id: str
    event_date: dt.date


def event_files(
    lake: str, start: dt.date | None = None, end: dt.date | None = None, tenant: str | None = None
) -> list[EventFile]:
    """The events table's Parquet files with partition values in ``[start, end]`` (inclusive), sorted."""
    pattern = f"{lake.rstrip('/')}/{EVENTS_TABLE}/tenant_id=*/event_date=*/*.parquet"
    found: list[EventFile] = []
    for meta in FileSystems.match([pattern])[0].metadata_list:
        m = _PARTITION.search(meta.path.replace(os.sep, "/"))
        if not m or os.path.basename(meta.path).startswith("."):
            continue
        day = dt.date.fromisoformat(m.group(2))
        if (tenant and m.group(1) != tenant) or (start and day < start) or (end and day > end):
            continue
        found.append(EventFile(meta.path, m.group(1), day))
    return sorted(found)


def lake_file_patterns(
    lake: str, start: dt.date | None = None, end: dt.date | None = None, tenant: str | None = None
) -> list[str]:
    """One ``DIR/*.parquet`` pattern per partition directory of :func:`event_files` (for ``ReadAllFromParquet``).

    Local directories are made absolute so that SDK workers in other processes find them too.
    """
    dirs = {os.path.dirname(f.path) for f in event_files(lake, start, end, tenant)}
    return sorted(f"{d if '://' in d else os.path.abspath(d)}/*.parquet" for d in dirs)


def read_event_file(
    file: EventFile, columns: Sequence[str], events: Sequence[str] | None = None, before: dt.datetime | None = None
) -> pa.Table:
    """One partition file with ``columns`` (partition columns filled from the path).

    ``events`` keeps only track rows with those event names; ``before`` only rows with ``timestamp < before``.
    """
    file_cols = [c for c in columns if c not in PARTITION_COLUMNS]
    table = read_parquet(file.path, file_cols)
    if events is not None:
        table = table.filter(pc.is_in(table["event"], pa.array(list(events), pa.string())))
    if before is not None:
        table = table.filter(pc.less(table["timestamp"], pa.scalar(before, table.schema.field("timestamp").type)))
    n = table.num_rows
    if "tenant_id" in columns:
        table = table.append_column("tenant_id", pa.array([file.tenant_id] * n, pa.string()))
    if "event_date" in columns:
        table = table.append_column("event_date", pa.array([file.event_date] * n, pa.date32()))
    return table.select(list(columns))


def person_bucket(person_id: str | None, buckets: int) -> int:
    """A stable bucket for one person id: CRC-32 of its UTF-8 bytes (same in every process and run)."""
    return zlib.crc32((person_id or "").encode("utf-8")) % buckets


def person_buckets(person_ids: pa.ChunkedArray | pa.Array, buckets: int) -> np.ndarray:
    """:func:`person_bucket` of every id of a column (about 0.2 µs an id)."""
    crc = zlib.crc32
    return np.fromiter(
        (crc((p or "").encode("utf-8")) % buckets for p in person_ids.to_pylist()),
        dtype="int64",
        count=len(person_ids),
    )


class _ReadBucketsFn(beam.DoFn):
    def __init__(self, columns, events, before, buckets):
        self.columns, self.events, self.before, self.buckets = list(columns), events, before, buckets
        self.rows_read = Metrics.counter("livora.analytics", "rows_read")
        self.files_read = Metrics.counter("livora.analytics", "files_read")

    def process(self, file: EventFile):
        table = read_event_file(EventFile(*file), self.columns, self.events, self.before)
        self.files_read.inc()
        self.rows_read.inc(table.num_rows)
        if not table.num_rows:
            return
        bucket = person_buckets(table["person_id"], self.buckets)
        for b in np.unique(bucket):
            yield int(b), table.filter(pa.array(bucket == b))


class ReadEventBuckets(beam.PTransform):
    """PCollection[EventFile] → ``(person bucket, pa.Table)`` pieces: a person's rows share a bucket.

    Args:
        columns: lake columns to read (partition columns allowed).
        events: keep only these track event names (None: all rows).
        before: keep only rows with ``timestamp < before`` (as-of cut-offs).
        buckets: number of person buckets (parallelism of the per-person work).
    """

    def __init__(
        self,
        columns: Sequence[str],
        events: Sequence[str] | None = None,
        before: dt.datetime | None = None,
        buckets: int = 16,
    ):
        super().__init__()
        if buckets < 1:
            raise ValueError("buckets must be >= 1")
        if "person_id" not in columns:
            raise ValueError("ReadEventBuckets needs the person_id column")
        self.columns, self.events, self.before, self.buckets = list(columns), events, before, buckets

    def expand(self, files):
        return files | "ReadFileBuckets" >> beam.ParDo(
            _ReadBucketsFn(self.columns, self.events, self.before, self.buckets)
        )


def write_bytes_atomically(
    path: str, data: bytes, root: str | None = None, encryption: S3Encryption | None = None
) -> str:
    """:func:`connectors.paths.write_bytes_atomically`; ``root`` defaults to the file's own directory."""
    return paths.write_bytes_atomically(path, data, root or _parent(path), encryption)


def _parent(path: str) -> str:
    return path.rsplit("/", 1)[0] if "://" in path else os.path.dirname(os.path.abspath(path))


def to_arrow(df: pd.DataFrame, schema: pa.Schema | None = None) -> pa.Table:
    """A result DataFrame as Arrow with plain ``string`` columns and no pandas metadata."""
    table = pa.Table.from_pandas(df, schema=schema, preserve_index=False)
    # pandas' pyarrow-backed strings come back as large_string: store plain strings; and an all-null text
    # column (no channel known on a day, say) must stay a string column, not Arrow's null type
    fields = [
        pa.field(f.name, pa.string()) if pa.types.is_large_string(f.type) or pa.types.is_null(f.type) else f
        for f in table.schema
    ]
    return table.cast(pa.schema(fields)).replace_schema_metadata(None)


def write_table(
    path: str,
    data: pd.DataFrame | pa.Table,
    csv: bool = True,
    schema: pa.Schema | None = None,
    root: str | None = None,
    encryption: S3Encryption | None = None,
) -> str:
    """Write ``data`` to ``path`` (``.parquet``) atomically, and the same rows to the ``.csv`` beside it.

    A DataFrame goes through :func:`to_arrow` (with ``schema``) and its CSV is pandas'; an Arrow table is
    written as it is, its CSV by Arrow's writer. Both files must stay under ``root`` (default: the
    file's own directory); ``encryption``: SSE-KMS on S3 (``--kms-key-id``, carried by the calling DoFn).
    """
    table = data if isinstance(data, pa.Table) else to_arrow(data, schema)
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd")
    write_bytes_atomically(path, sink.getvalue().to_pybytes(), root, encryption)
    if csv:
        if isinstance(data, pa.Table):
            text = io.BytesIO()
            pacsv.write_csv(table, text)
            body = text.getvalue()
        else:
            body = data.to_csv(index=False).encode("utf-8")
        write_bytes_atomically(path.removesuffix(".parquet") + ".csv", body, root, encryption)
    return path


def write_tables(
    output: str,
    tables: Mapping[str, pd.DataFrame | pa.Table],
    csv: bool = True,
    encryption: S3Encryption | None = None,
) -> None:
    """``OUTPUT/NAME.parquet`` (and ``NAME.csv``) per table, each by :func:`write_table`: a rerun replaces them."""
    output = output.rstrip("/")
    for name, data in tables.items():
        write_table(paths.join_under(output, f"{name}.parquet"), data, csv=csv, root=output, encryption=encryption)


def load_tables(url: str, tables: Mapping[str, tuple[pd.DataFrame | pa.Table, Sequence[str]]]) -> int:
    """Load result tables into the warehouse, each ``{name: (rows, partition columns)}`` replacing the
    partitions its rows hold (:func:`connectors.warehouse.load_table`). An empty table holds no partition
    and is skipped. Returns the rows loaded."""
    loaded = 0
    for name, (data, partitions) in tables.items():
        table = data if isinstance(data, pa.Table) else to_arrow(data)
        if table.num_rows:
            loaded += load_table(url, name, table, replace_partitions=list(partitions))
    return loaded


def arrow_input(data: bytes) -> pa.BufferReader:
    """``data`` as an Arrow input file whose memory Arrow owns (a copy): no Python object for Arrow's threads
    to release at interpreter exit. Give Arrow's readers this, never ``io.BytesIO`` or bytes."""
    stream = pa.BufferOutputStream()
    stream.write(data)
    return pa.BufferReader(stream.getvalue())


def read_parquet(path: str, columns: Sequence[str] | None = None) -> pa.Table:
    """One Parquet file, local (by path, through pyarrow's filesystem) or remote such as ``s3://`` (read whole
    through Beam's ``FileSystems``, which has the pipeline's S3 settings, into Arrow-owned memory).

    The one Parquet reader of the analytics pipelines and the offline store: see the module docstring for why
    no Python file object is handed to Arrow.
    """
    cols = None if columns is None else list(columns)
    if "://" not in path:
        return pq.read_table(os.path.abspath(path), columns=cols, filesystem=pafs.LocalFileSystem())
    with FileSystems.open(path) as handle:
        data = handle.read()
    return pq.read_table(arrow_input(data), columns=cols)


def events_present(
    patterns: Sequence[str], names: Sequence[str], on_file: Callable[[], None] | None = None
) -> set[str]:
    """Which of the event ``names`` occur in the lake files of ``patterns`` (``DIR/*.parquet``).

    Reads only the ``event`` column and stops at the first file after which every name has been seen, so a
    check that passes usually costs a few files; only a name that never occurs costs a scan of the column.
    ``on_file`` is called after each file read (progress).
    """
    wanted, seen = set(names), set()
    for match in FileSystems.match(list(patterns)) if patterns else ():
        for meta in sorted(match.metadata_list, key=lambda m: m.path):
            column = read_parquet(meta.path, ["event"]).column("event")
            seen |= wanted & set(pc.unique(column).to_pylist())
            if on_file:
                on_file()
            if seen == wanted:
                return seen
    return seen


def read_table(path: str) -> pd.DataFrame | None:
    """A table written by :func:`write_table`, or None when it does not exist."""
    if not FileSystems.exists(path):
        return None
    return read_parquet(path).to_pandas()
