"""The Parquet lake: where the events table and the analytics tables live.

Files are written whole and published atomically (temp file + rename locally, a single PUT on
S3): a reader never sees half a file. File names are deterministic (``part-<tag>-<bucket>``, the
tag naming the input), so a rerun over the same input replaces files instead of adding copies.
Paths may be local directories or ``s3://`` URLs.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import zlib
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import apache_beam as beam
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics

from connectors import paths
from connectors.aws import S3Encryption
from connectors.lake_keys import confirmed_ids, tenant_keys, write_key_file
from schemas.failures import FailedEvent
from schemas.lake import EVENTS_FILE_SCHEMA, EVENTS_SCHEMA, EVENTS_TABLE
from transforms.event_tables import file_table, from_ipc, source_path, to_ipc

__all__ = [
    "DropLakeDuplicates",
    "PruneRunFiles",
    "WriteDeadLetters",
    "WriteLakePartitions",
    "content_fingerprint",
    "dead_letter_reasons",
    "events_dataset",
    "input_fingerprint",
    "lake_file_name",
    "partition_dirs",
    "partition_file_patterns",
    "read_events",
    "rows_to_table",
    "run_files_pattern",
    "table_path",
    "write_partition_file",
]

DEAD_LETTERS_DIR = "dead_letters"


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


# --- writing -------------------------------------------------------------------------------


def content_fingerprint(path: str, chunk_bytes: int = 8 << 20) -> str:
    """A file's content tag: the same bytes under any name give the same lake file names."""
    digest = hashlib.sha256()
    with FileSystems.open(path, compression_type="uncompressed") as handle:
        while chunk := handle.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()[:16]


def input_fingerprint(paths: Iterable[str]) -> str:
    """A short tag naming an input: the same files (path, size) give the same lake file names."""
    digest = hashlib.sha1()
    for meta in sorted(FileSystems.match(list(paths))[0].metadata_list if paths else [], key=lambda m: m.path):
        digest.update(f"{meta.path}\x1f{meta.size_in_bytes}\n".encode())
    return digest.hexdigest()[:12]


def rows_to_table(rows: Sequence[Mapping[str, Any]], schema: pa.Schema = EVENTS_FILE_SCHEMA) -> pa.Table:
    """Rows (dicts with at least the schema's columns; extra keys ignored) → an Arrow table."""
    return pa.Table.from_pylist(list(rows), schema=schema)


def partition_path(lake: str, table: str, partition: Mapping[str, str]) -> str:
    """``LAKE/table/k=v/...``, every key and value checked (:func:`connectors.paths.partition_path`)."""
    return paths.partition_path(table_path(lake, table), partition)


def write_partition_file(
    lake: str,
    table: str,
    partition: Mapping[str, str],
    rows_or_table: Sequence[Mapping[str, Any]] | pa.Table,
    file_name: str,
    schema: pa.Schema = EVENTS_FILE_SCHEMA,
    encryption: S3Encryption | None = None,
) -> str:
    """Write one Parquet file at ``LAKE/table/k=v/.../file_name`` atomically (SSE-KMS with ``encryption``)."""
    table_ = rows_or_table if isinstance(rows_or_table, pa.Table) else rows_to_table(rows_or_table, schema)
    sink = pa.BufferOutputStream()
    pq.write_table(table_, sink, compression="zstd")
    root = table_path(lake, table)
    path = paths.join_under(paths.partition_path(root, partition), file_name)
    return paths.write_bytes_atomically(path, sink.getvalue().to_pybytes(), root, encryption)


def event_sort_key(row: Mapping[str, Any]) -> tuple:
    return (row["timestamp"], row["message_id"])


class _WritePartitionBatchFn(beam.DoFn):
    def __init__(self, lake: str, table: str, tag: str, encryption: S3Encryption | None = None):
        self.lake, self.table, self.tag, self.encryption = lake, table, tag, encryption
        self.files = Metrics.counter("livora", "lake_files_written")

    def process(self, element):
        (tenant, date, bucket), rows = element
        rows = list(rows)
        if rows and isinstance(rows[0], bytes):
            rows = from_ipc(rows)
        # sorted: deterministic bytes for the same input
        rows = file_table(rows) if isinstance(rows, pa.Table) else sorted(rows, key=event_sort_key)
        path = write_partition_file(
            self.lake,
            self.table,
            {"tenant_id": tenant, "event_date": date},
            rows,
            lake_file_name(self.tag, bucket),
            encryption=self.encryption,
        )
        if self.table == EVENTS_TABLE:  # after the lake file: a crash in between leaves a file read directly
            ids = rows["message_id"] if isinstance(rows, pa.Table) else [r["message_id"] for r in rows]
            write_key_file(self.lake, tenant, date, path, ids, self.encryption)
        self.files.inc()
        yield path, len(rows)


def lake_file_name(tag: str, shard: int | str) -> str:
    """``part-<tag>-<NNNN>.parquet``; a text shard (``<input tag>-<NNNN>``) names its own input."""
    return f"part-{shard}.parquet" if isinstance(shard, str) else f"part-{tag}-{shard:04d}.parquet"


def _batch_ids(rows) -> list[str]:
    rows = list(rows)
    if rows and isinstance(rows[0], bytes):
        return from_ipc(rows)["message_id"].to_pylist()
    return [r["message_id"] for r in rows]


class _FindInLakeFn(beam.DoFn):
    """All the new ids of one tenant -> those already in one of its other lake files, on any date.

    "Other files": every file of the tenant but those named after this run's own tags (they are being
    rewritten by it). The tenant's ids come from the key index (:mod:`connectors.lake_keys`) plus a
    direct read of the files it does not describe; a hit is confirmed in the lake file itself.
    """

    def __init__(self, lake: str, own_tags: Sequence[str], table: str):
        self.lake, self.own, self.table = lake, tuple(f"part-{t}-" for t in own_tags), table
        self.read_directly = Metrics.counter("livora", "lake_files_read_for_keys")

    def process(self, element):
        tenant, id_lists = element
        new_ids = pa.array([i for ids in id_lists for i in ids], pa.string())
        known = tenant_keys(self.lake, tenant, self.own, self.table)
        self.read_directly.inc(len(known.read_directly))
        present = confirmed_ids(known, new_ids, {}) if len(known.ids) else pa.array([], pa.string())
        if len(present):
            yield tenant, present


class _DropKnownKeysFn(beam.DoFn):
    def __init__(self):
        self.dropped = Metrics.counter("livora", "lake_duplicates")

    def process(self, element, present: Mapping[str, pa.Array]):
        (tenant, date, shard), rows = element
        known = present.get(tenant)
        if known is None:
            yield element
            return
        rows = list(rows)
        if rows and isinstance(rows[0], bytes):
            table = from_ipc(rows)
            seen = pc.is_in(table["message_id"], value_set=known)
            dups = table.filter(seen)["message_id"].to_pylist()
            kept = [to_ipc(table.filter(pc.invert(seen)))] if len(dups) < table.num_rows else []
        else:
            seen = pc.is_in(pa.array([r["message_id"] for r in rows], pa.string()), value_set=known).to_pylist()
            dups = [r["message_id"] for r, hit in zip(rows, seen, strict=True) if hit]
            kept = [r for r, hit in zip(rows, seen, strict=True) if not hit]
        self.dropped.inc(len(dups))
        for message_id in dups:
            yield beam.pvalue.TaggedOutput("duplicates", (tenant, message_id))
        if kept:
            yield (tenant, date, shard), kept


class DropLakeDuplicates(beam.PTransform):
    """Keep ``(tenant_id, message_id)`` unique in the events table across runs, inputs, sources and dates.

    Input and main output: lake-file batches (:attr:`transforms.composites.ProcessedEvents.lake_files`
    or row-dict batches); output ``duplicates``: ``(tenant_id, message_id)`` per row already in the lake.
    The check covers every partition of the tenant, not only the one a row lands in: the same event
    delivered again may get another UTC date (no ``timestamp``, so its time is ``receivedAt``; a
    clock-skew correction that moves it past midnight). It reads the tenant's key index
    (``LAKE/_keys``, :mod:`connectors.lake_keys`), not the lake's history.

    Args:
        lake: lake root.
        own_tags: tags of the files this run (re)writes: their old contents are not "already there".
    """

    def __init__(self, lake: str, own_tags: Sequence[str], table: str = EVENTS_TABLE):
        super().__init__()
        if not own_tags:
            raise ValueError("DropLakeDuplicates needs the run's own file tags")
        self.lake, self.own_tags, self.table = lake, list(own_tags), table

    def expand(self, batches):
        present = (
            batches
            | "NewIds" >> beam.Map(lambda batch: (batch[0][0], _batch_ids(batch[1])))
            | "NewIdsByTenant" >> beam.GroupByKey()
            | "FindInLake" >> beam.ParDo(_FindInLakeFn(self.lake, self.own_tags, self.table))
        )
        drop = _DropKnownKeysFn()
        return batches | "DropKnownKeys" >> beam.ParDo(drop, beam.pvalue.AsDict(present)).with_outputs(
            "duplicates", main="rows"
        )


class WriteLakePartitions(beam.PTransform):
    """Write ``((tenant_id, event_date, bucket), rows)`` batches as one Parquet file each.

    ``rows`` is a list of row dicts, an Arrow table with the lake's columns (extra columns are dropped)
    or Arrow IPC chunks of such tables (:attr:`transforms.composites.ProcessedEvents.lake_files`).

    Args:
        lake: lake root (local directory or ``s3://bucket/prefix``).
        tag: names the input (see :func:`input_fingerprint`); a rerun with the same tag replaces files.
        table: table directory under the lake.
        encryption: SSE-KMS for ``s3://`` files (``--kms-key-id``); None writes without headers.

    Returns a PCollection of ``(path, rows written)``.
    """

    def __init__(self, lake: str, tag: str, table: str = EVENTS_TABLE, encryption: S3Encryption | None = None):
        super().__init__()
        if not lake:
            raise ValueError("WriteLakePartitions needs a lake path")
        if not tag or "/" in tag:
            raise ValueError(f"invalid file tag {tag!r}")
        self.lake, self.tag, self.table, self.encryption = lake, tag, table, encryption

    def expand(self, batches):
        fn = _WritePartitionBatchFn(self.lake, self.table, self.tag, self.encryption)
        return batches | "WritePartitionFiles" >> beam.ParDo(fn)


def _norm(path: str) -> str:
    return path if "://" in path else os.path.abspath(path)


def delete_unlisted(pattern: str, keep: Iterable[str]) -> list[str]:
    """Delete the files matching ``pattern`` that are not in ``keep``; returns the deleted paths."""
    keep_set = {_norm(p) for p in keep}
    matched = FileSystems.match([pattern])[0].metadata_list
    stale = sorted(m.path for m in matched if _norm(m.path) not in keep_set)
    if stale:
        FileSystems.delete(stale)
    return stale


class PruneRunFiles(beam.PTransform):
    """After a run's writes: delete the files of the same run tag(s) that this run did not write.

    A rerun of the same input replaces its files by name; this removes the ones a rerun no longer
    makes (fewer files per partition, events that now go to the dead letters, an emptied dead-letter
    bucket, files of an attempt killed mid-run), so a rerun never leaves stale rows behind.
    Input: ``(path, count)`` per file written. ``pattern``: one glob or several.
    """

    def __init__(self, pattern: str | Sequence[str], label: str = "files"):
        super().__init__()
        self.patterns = [pattern] if isinstance(pattern, str) else list(pattern)
        self.label = label

    def expand(self, written):
        patterns, counter = self.patterns, Metrics.counter("livora", f"stale_{self.label}_deleted")

        def prune(paths):
            deleted = sum(len(delete_unlisted(pattern, paths)) for pattern in patterns)
            counter.inc(deleted)
            return deleted

        return (
            written
            | "Paths" >> beam.Map(lambda path_count: path_count[0])
            | "AllPaths" >> beam.combiners.ToList()
            | "DeleteStale" >> beam.Map(prune)
        )


def run_files_pattern(directory: str, tag: str, suffix: str, depth: int = 0) -> str:
    """Glob of the files a run tagged ``tag`` writes under ``directory`` (``depth`` partition levels)."""
    return f"{directory.rstrip('/')}/{'*/' * depth}part-{tag}-*{suffix}"


class _WriteDeadLetterFileFn(beam.DoFn):
    def __init__(self, path: str, tag: str, encryption: S3Encryption | None = None):
        self.path, self.tag, self.encryption = path, tag, encryption

    def process(self, element):
        (tag, bucket), lines = element
        body = "".join(line + "\n" for line in sorted(lines))
        target = paths.join_under(self.path, f"part-{tag or self.tag}-{bucket:04d}.jsonl")
        paths.write_bytes_atomically(target, body.encode("utf-8"), self.path, self.encryption)
        yield target, len(lines)


class WriteDeadLetters(beam.PTransform):
    """All failures of a run into JSON-lines files ``PATH/part-<tag>-<bucket>.jsonl`` (atomic, rerun-safe).

    With ``input_tags`` (source file path -> content tag), the failures of each input file go to files
    named after that file's tag, as its lake rows do. ``encryption``: SSE-KMS for ``s3://`` files.
    """

    def __init__(
        self,
        path: str,
        tag: str,
        buckets: int = 4,
        input_tags: Mapping[str, str] | None = None,
        encryption: S3Encryption | None = None,
    ):
        super().__init__()
        if not path:
            raise ValueError("WriteDeadLetters needs a path")
        self.path, self.tag, self.buckets, self.input_tags = path, tag, buckets, dict(input_tags or {})
        self.encryption = encryption

    def expand(self, failures):
        buckets, input_tags = self.buckets, self.input_tags

        def key(failure: FailedEvent):
            tag = input_tags.get(source_path(failure.source_ref) or "") if input_tags else None
            return (tag, zlib.crc32((failure.source_ref or failure.message_id or "").encode()) % buckets)

        return (
            failures
            | "DeadLetterLine" >> beam.Map(lambda f: (key(f), f.to_json_line()))
            | "GroupDeadLetters" >> beam.GroupByKey()
            | "WriteDeadLetterFiles" >> beam.ParDo(_WriteDeadLetterFileFn(self.path, self.tag, self.encryption))
        )


def dead_letter_reasons(directory: str, tags: Iterable[str], suffix: str = ".jsonl") -> dict[str, int]:
    """Reason code -> count over the dead-letter files a run tagged ``tags`` wrote under ``directory``:
    the ``dead_letters_by_reason`` of its run record."""
    counts: Counter[str] = Counter()
    for tag in tags:
        for meta in FileSystems.match([run_files_pattern(directory, tag, suffix)])[0].metadata_list:
            with FileSystems.open(meta.path, compression_type="uncompressed") as handle:
                counts.update(json.loads(line)["reason"] for line in handle.read().splitlines() if line.strip())
    return dict(sorted(counts.items()))


def partition_file_patterns(lake: str, table: str, partitions: Iterable[Mapping[str, str]]) -> list[str]:
    """``LAKE/table/k=v/.../*.parquet`` per partition: the files a partition-wise job reads."""
    return [f"{partition_path(lake, table, p)}/*.parquet" for p in partitions]


def read_dead_letters(path: str) -> list[FailedEvent]:
    """Every dead letter under ``path`` (local directory), for summaries, tests and replays."""
    found: list[FailedEvent] = []
    for meta in FileSystems.match([f"{path.rstrip('/')}/**.jsonl"])[0].metadata_list:
        with FileSystems.open(meta.path) as handle:
            found += [FailedEvent.from_json_line(line) for line in handle.read().splitlines() if line.strip()]
    return found
