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

The two lake read transforms (:class:`ReadLakeBatches`, :class:`ReadEventBuckets`) log the workers' reading
progress against a total known before the read (footers' rows, files' listed sizes): every analytics
pipeline gets it from the transform it reads with (:mod:`connectors.read_progress`).
"""

from __future__ import annotations

import datetime as dt
import io
import os
import re
import struct
import uuid
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
from apache_beam.io.parquetio import ReadAllFromParquetBatched
from apache_beam.metrics import Metrics

from connectors import paths
from connectors.aws import S3Encryption
from connectors.read_progress import progress_seconds, tracker
from connectors.warehouse import load_table
from schemas.lake import EVENTS_TABLE, PARTITION_COLUMNS

__all__ = [
    "EventFile",
    "ReadEventBuckets",
    "ReadLakeBatches",
    "arrow_input",
    "event_files",
    "lake_file_patterns",
    "load_tables",
    "parquet_row_count",
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
    size_bytes: int = 0  # from the listing (free): the total a read's progress counts against


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
        found.append(EventFile(meta.path, m.group(1), day, meta.size_in_bytes))
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
    """Reads whole files into person buckets; logs the read's progress in bytes of ``total_bytes`` (a side
    input: the sum of the files' listed sizes), from the worker (:mod:`connectors.read_progress`)."""

    def __init__(self, columns, events, before, buckets, progress_every: float, progress_key: str):
        self.columns, self.events, self.before, self.buckets = list(columns), events, before, buckets
        self.progress_every, self.progress_key = progress_every, progress_key
        self.rows_read = Metrics.counter("livora.analytics", "rows_read")
        self.files_read = Metrics.counter("livora.analytics", "files_read")

    def process(self, file: EventFile, total_bytes: int = 0):
        file = EventFile(*file)
        # made before the first read, so that the rate counts it
        progress = tracker(self.progress_key, "lake read", total_bytes, self.progress_every) if total_bytes else None
        table = read_event_file(file, self.columns, self.events, self.before)
        self.files_read.inc()
        self.rows_read.inc(table.num_rows)
        if progress is not None:
            progress.add(file.size_bytes, table.num_rows)
        if not table.num_rows:
            return
        bucket = person_buckets(table["person_id"], self.buckets)
        for b in np.unique(bucket):
            yield int(b), table.filter(pa.array(bucket == b))


def _file_bytes(file) -> int:
    return EventFile(*file).size_bytes


class ReadEventBuckets(beam.PTransform):
    """PCollection[EventFile] → ``(person bucket, pa.Table)`` pieces: a person's rows share a bucket.

    The reading workers log their progress (bytes of the files' listed sizes, rows kept, rate, ETA) at most
    every ``progress_every`` seconds (default ``$LIVORA_PROGRESS_SECONDS``, else 10).

    Args:
        columns: lake columns to read (partition columns allowed).
        events: keep only these track event names (None: all rows).
        before: keep only rows with ``timestamp < before`` (as-of cut-offs).
        buckets: number of person buckets (parallelism of the per-person work).
        progress_every: seconds between progress lines (None: :func:`connectors.read_progress.progress_seconds`).
    """

    def __init__(
        self,
        columns: Sequence[str],
        events: Sequence[str] | None = None,
        before: dt.datetime | None = None,
        buckets: int = 16,
        progress_every: float | None = None,
    ):
        super().__init__()
        if buckets < 1:
            raise ValueError("buckets must be >= 1")
        if "person_id" not in columns:
            raise ValueError("ReadEventBuckets needs the person_id column")
        if progress_every is not None and progress_every <= 0:
            raise ValueError("progress_every must be positive")
        self.columns, self.events, self.before, self.buckets = list(columns), events, before, buckets
        self.progress_every = progress_every if progress_every is not None else progress_seconds()
        self.progress_key = uuid.uuid4().hex  # this read's tracker in each worker process

    def expand(self, files):
        # the total is a side input summed from the files themselves, so no caller has to pass it
        total = files | "TotalBytes" >> beam.Map(_file_bytes) | "SumBytes" >> beam.CombineGlobally(sum)
        return files | "ReadFileBuckets" >> beam.ParDo(
            _ReadBucketsFn(
                self.columns, self.events, self.before, self.buckets, self.progress_every, self.progress_key
            ),
            total_bytes=beam.pvalue.AsSingleton(total),
        )


def parquet_row_count(path: str, size_bytes: int | None = None) -> int:
    """Rows of one Parquet file, from its footer only: by path locally, two ranged reads remotely.

    The footer is handed to Arrow as Arrow-owned bytes behind the 4-byte magic (see the module docstring).
    """
    if "://" not in path:
        return pq.read_metadata(os.path.abspath(path), filesystem=pafs.LocalFileSystem()).num_rows
    if size_bytes is None:
        size_bytes = FileSystems.match([path])[0].metadata_list[0].size_in_bytes
    with FileSystems.open(path) as handle:
        handle.seek(size_bytes - 8)
        (footer_len,) = struct.unpack("<I", handle.read(4))
        handle.seek(size_bytes - 8 - footer_len)
        tail = handle.read(footer_len + 8)
    return pq.read_metadata(arrow_input(b"PAR1" + tail)).num_rows


class _CountRowsFn(beam.DoFn):
    """Passes ``(file, table)`` batches through, adding their rows to the read's progress (of ``total_rows``)."""

    def __init__(self, total_rows: int, progress_every: float, progress_key: str):
        self.total_rows, self.progress_every, self.progress_key = total_rows, progress_every, progress_key
        self.progress = None

    def setup(self):
        if self.total_rows:
            self.progress = tracker(self.progress_key, "lake read", self.total_rows, self.progress_every, "rows")

    def process(self, batch):
        if self.progress is not None:
            self.progress.add(batch[1].num_rows)
        yield batch


class ReadLakeBatches(beam.PTransform):
    """Lake file patterns (``DIR/*.parquet``, :func:`lake_file_patterns`) → ``(file path, pa.Table)`` batches,
    Beam's ``ReadAllFromParquetBatched`` with the workers logging their progress in rows.

    The total is read up front, when the graph is built, from the matched files' Parquet footers (one small
    read a file), so the workers need no shared state: any runner. Lines come at most every
    ``progress_every`` seconds (default ``$LIVORA_PROGRESS_SECONDS``, else 10); a short run logs none.

    Args:
        patterns: file patterns to read.
        columns: columns to read (file columns; partition columns come from the file path).
        progress_every: seconds between progress lines (None: :func:`connectors.read_progress.progress_seconds`).
    """

    def __init__(self, patterns: Sequence[str], columns: Sequence[str], progress_every: float | None = None):
        super().__init__()
        if progress_every is not None and progress_every <= 0:
            raise ValueError("progress_every must be positive")
        self.patterns, self.columns = list(patterns), list(columns)
        self.progress_every = progress_every if progress_every is not None else progress_seconds()
        self.progress_key = uuid.uuid4().hex

    def expand(self, pbegin):
        matched = FileSystems.match(self.patterns) if self.patterns else []
        total = sum(parquet_row_count(m.path, m.size_in_bytes) for match in matched for m in match.metadata_list)
        return (
            pbegin
            | "LakeFiles" >> beam.Create(self.patterns)
            | "ReadFiles" >> ReadAllFromParquetBatched(columns=self.columns, with_filename=True)
            | "CountRows" >> beam.ParDo(_CountRowsFn(total, self.progress_every, self.progress_key))
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
