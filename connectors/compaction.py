"""Lake compaction: rewrite a partition's many small Parquet files into a few large ones, safely.

What a reader globbing ``LAKE/events/**/*.parquet`` sees, by strategy:

- ``exchange`` (local filesystems on Linux; the default there): the compacted files are written into a
  staging directory outside the table (``LAKE/_compaction/<table>/<partition>/<id>/``), then swapped
  with the partition directory in ONE atomic ``renameat2(RENAME_EXCHANGE)``. A reader lists either
  all the old files or all the new ones, never both, never neither. A reader that listed the old
  names before the swap and opens them after gets FileNotFoundError (a loud failure, never wrong
  rows). Files a writer added to the partition while we compacted land on the old side of the swap
  and are moved back right after it: they are invisible for that moment (run compaction on closed
  partitions: ``min_age_seconds``).
- ``copy`` (S3, or where the exchange is unavailable): object stores have no atomic multi-file swap.
  The compacted files are PUT into the partition (each whole), then the old files are deleted; in
  between, a plain glob reader sees rows twice. Every row carries its ``(tenant_id, message_id)``
  key, so readers that de-duplicate on it (the warehouse MERGE does) are unaffected.

Crash safety (both strategies): a marker ``LAKE/_compaction/<table>/<partition>/<id>.json`` names the
inputs and outputs before anything visible changes; a re-run first finishes or undoes what a marker
describes, so a crash at any point is repaired by running again. Output names are deterministic
(``part-c<id>-NNNNN.parquet``, id = hash of the input names and sizes) and a partition that is already
compact is skipped, so re-running is a no-op. Compaction also removes duplicate rows with the same
``message_id`` in a partition (e.g. a re-ingest after an earlier compaction), restoring the lake's
one-row-per-event contract; it never drops a column (a file with an unknown column is refused).

With an :class:`connectors.aws.S3Encryption` (``--kms-key-id``), every object compaction writes to S3 (outputs
and markers) is PUT by :func:`connectors.paths.write_bytes_atomically` with the SSE-KMS headers: pyarrow's S3
filesystem cannot send them.
"""

from __future__ import annotations

import contextlib
import ctypes
import datetime as dt
import fcntl
import hashlib
import json
import logging
import math
import os
import re
import sys
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from connectors.aws import AwsSettings, S3Encryption
from connectors.lake import _filesystem
from connectors.paths import write_bytes_atomically
from schemas.lake import EVENTS_FILE_SCHEMA

__all__ = ["CompactionResult", "arrow_s3_filesystem", "compact_partition", "exchange_supported", "list_partitions"]

log = logging.getLogger(__name__)
STATE_DIR = "_compaction"
_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


@dataclass(frozen=True)
class CompactionResult:
    partition: str
    status: str  # compacted | skipped_compact | skipped_open | skipped_empty | skipped_busy | skipped_unknown_columns
    files_in: int = 0
    files_out: int = 0
    rows_in: int = 0
    rows_out: int = 0
    duplicates_removed: int = 0
    strays_moved: int = 0
    recovered: int = 0

    def as_dict(self) -> dict:
        return asdict(self)


def _libc_renameat2():
    if not sys.platform.startswith("linux"):
        return None
    try:
        return getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    except OSError:
        return None


def exchange_supported() -> bool:
    return _libc_renameat2() is not None


def _exchange(a: str, b: str) -> None:
    """Atomically swap two paths (Linux renameat2 RENAME_EXCHANGE)."""
    fn = _libc_renameat2()
    if fn is None:
        raise OSError("renameat2 is not available")
    if fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"renameat2({a}, {b}, RENAME_EXCHANGE): {os.strerror(err)}")


def _data_files(fs: pafs.FileSystem, directory: str) -> dict[str, pafs.FileInfo]:
    """Visible Parquet files of a directory by name (hidden / temp / underscore files are not data)."""
    try:
        infos = fs.get_file_info(pafs.FileSelector(directory, allow_not_found=True))
    except FileNotFoundError:
        return {}
    return {
        info.base_name: info
        for info in infos
        if info.type == pafs.FileType.File
        and info.base_name.endswith(".parquet")
        and not info.base_name.startswith((".", "_"))
    }


def arrow_s3_filesystem(settings: AwsSettings) -> pafs.S3FileSystem:
    """pyarrow's S3 filesystem on the same AWS as the ``--aws-*`` flags (endpoint, region, keys), so that
    compaction reads, lists and deletes where its boto3 writes land."""
    return pafs.S3FileSystem(
        endpoint_override=settings.endpoint_url,
        region=settings.region,
        access_key=settings.access_key_id,
        secret_key=settings.secret_access_key,
    )


def _write_atomically(fs: pafs.FileSystem, path: str, data: bytes, encryption: S3Encryption | None = None) -> None:
    if encryption is not None and isinstance(fs, pafs.S3FileSystem):
        # with the key (pyarrow cannot send it); root: the file's own directory, the names are ours
        url = f"s3://{path}"
        write_bytes_atomically(url, data, url.rsplit("/", 1)[0], encryption)
    elif isinstance(fs, pafs.LocalFileSystem):
        tmp = f"{os.path.dirname(path)}/.tmp-{uuid.uuid4().hex}"
        with fs.open_output_stream(tmp) as out:
            out.write(data)
        fs.move(tmp, path)
    else:  # one PUT: the object is visible whole or not at all
        with fs.open_output_stream(path) as out:
            out.write(data)


def _read_marker(fs, path: str) -> dict | None:
    try:
        with fs.open_input_stream(path) as handle:
            return json.loads(handle.read())
    except (FileNotFoundError, OSError, ValueError):
        return None


def _delete_file(fs, path: str, encryption: S3Encryption | None = None) -> None:
    if encryption is not None and isinstance(fs, pafs.S3FileSystem):
        # boto3: pyarrow's delete leaves an empty marker object for the parent "directory", written without the key
        bucket, _, key = path.partition("/")
        encryption.s3_client().delete_object(Bucket=bucket, Key=key)
        return
    with contextlib.suppress(FileNotFoundError):
        fs.delete_file(path)


def list_partitions(
    lake: str,
    table: str,
    start: dt.date | None = None,
    end: dt.date | None = None,
    tenant: str | None = None,
    filesystem: pafs.FileSystem | None = None,
) -> list[dict[str, str]]:
    """Hive partitions (``{'tenant_id': T, 'event_date': D}``) of ``table`` that hold data files, in range."""
    fs, root = _filesystem(lake, filesystem)
    base = f"{root.rstrip('/')}/{table}"
    infos = fs.get_file_info(pafs.FileSelector(base, recursive=True, allow_not_found=True))
    found = set()
    for info in infos:
        if info.type != pafs.FileType.File or not info.base_name.endswith(".parquet"):
            continue
        parts = info.path[len(base) + 1 :].split("/")[:-1]
        if not parts or any(p.startswith((".", "_")) or "=" not in p for p in parts):
            continue
        found.add(tuple(tuple(p.split("=", 1)) for p in parts))
    out = []
    for parts in sorted(found):
        partition = dict(parts)
        day = partition.get("event_date")
        if tenant and partition.get("tenant_id") != tenant:
            continue
        if day and start and dt.date.fromisoformat(day) < start:
            continue
        if day and end and dt.date.fromisoformat(day) > end:
            continue
        out.append(partition)
    return out


class UnknownColumnsError(ValueError):
    """A file holds columns the table schema lacks: compacting it would drop data, so it is refused."""


def _combine(fs, directory: str, names: Sequence[str], schema: pa.Schema) -> pa.Table:
    partition = dict(seg.split("=", 1) for seg in directory.split("/") if "=" in seg)
    tables = []
    for name in names:
        with fs.open_input_file(f"{directory}/{name}") as handle:
            piece = pq.read_table(handle)
        for column in set(piece.schema.names) - set(schema.names):
            # a writer that also stored the Hive partition columns: redundant when they equal the path's
            values = set(piece.column(column).cast(pa.string()).to_pylist()) if column in partition else None
            if values != {partition.get(column)}:
                raise UnknownColumnsError(
                    f"{directory}/{name} has column {column!r} not in the table schema: refusing to drop data"
                )
            piece = piece.drop_columns([column])
        for field in schema:
            if field.name not in piece.schema.names:
                piece = piece.append_column(field.name, pa.nulls(piece.num_rows, field.type))
        tables.append(piece.select(schema.names).cast(schema))
    return pa.concat_tables(tables)


def _dedupe_sorted(table: pa.Table) -> pa.Table:
    """Sort by (timestamp, message_id, received_at) and keep the first row of each message_id."""
    if "message_id" not in table.schema.names:
        return table
    keys = [(c, "ascending") for c in ("timestamp", "message_id", "received_at") if c in table.schema.names]
    table = table.sort_by(keys)
    ids = table.column("message_id").to_pylist()
    seen: set = set()
    keep = []
    for i, mid in enumerate(ids):
        if mid not in seen:
            seen.add(mid)
            keep.append(i)
    return table if len(keep) == table.num_rows else table.take(pa.array(keep, pa.int64()))


def _output_names(cid: str, count: int) -> list[str]:
    return [f"part-c{cid}-{i:05d}.parquet" for i in range(count)]


_COMPACTED_NAME = re.compile(r"part-c[0-9a-f]{12}-[0-9]{5}\.parquet")


def is_compacted_file(name: str) -> bool:
    """True for a file compaction wrote (``part-c<12 hex>-<5 digits>``): an ingest file whose content tag
    happens to start with ``c`` (``part-c<15 hex>-<4 digits>``) is not one."""
    return _COMPACTED_NAME.fullmatch(name) is not None


def _write_outputs(
    fs, directory: str, table: pa.Table, names: Sequence[str], encryption: S3Encryption | None = None
) -> None:
    per_file = math.ceil(table.num_rows / len(names)) if table.num_rows else 0
    for i, name in enumerate(names):
        chunk = table.slice(i * per_file, per_file)
        sink = pa.BufferOutputStream()
        pq.write_table(chunk, sink, compression="zstd", row_group_size=max(1, min(per_file, 1_000_000)))
        _write_atomically(fs, f"{directory}/{name}", sink.getvalue().to_pybytes(), encryption)


def _move_strays(fs, old_dir: str, partition_dir: str, inputs: Mapping[str, int]) -> int:
    """Files that appeared in the partition while we compacted (now on the old side): move them back."""
    moved = 0
    for name, info in _data_files(fs, old_dir).items():
        if inputs.get(name) == info.size:
            continue
        target = f"{partition_dir}/{name}"
        if fs.get_file_info(target).type != pafs.FileType.NotFound:
            target = f"{partition_dir}/{name.removesuffix('.parquet')}-{uuid.uuid4().hex[:8]}.parquet"
        fs.move(f"{old_dir}/{name}", target)
        moved += 1
    return moved


def _recover(fs, partition_dir: str, state_dir: str, encryption: S3Encryption | None = None) -> int:
    """Finish (or undo) what earlier interrupted runs' markers describe; returns how many were handled."""
    try:
        markers = [
            i
            for i in fs.get_file_info(pafs.FileSelector(state_dir, allow_not_found=True))
            if i.base_name.endswith(".json")
        ]
    except FileNotFoundError:
        return 0
    for info in markers:
        marker = _read_marker(fs, info.path)
        if marker is None:
            _delete_file(fs, info.path, encryption)
            continue
        inputs, outputs = marker["inputs"], marker["outputs"]
        staging = f"{state_dir}/{marker['id']}"
        current = _data_files(fs, partition_dir)
        if marker["strategy"] == "exchange":
            staged = _data_files(fs, staging)
            if set(outputs) <= set(staged) and all(current.get(n) and current[n].size == s for n, s in inputs.items()):
                _exchange(staging, partition_dir)  # crashed before the swap: do it now
                _move_strays(fs, staging, partition_dir, inputs)
            elif set(outputs) <= set(current):
                _move_strays(fs, staging, partition_dir, inputs)  # crashed after the swap: finish
            # else: the partition changed under an unfinished run: drop the staging, redo from scratch
            with contextlib.suppress(FileNotFoundError):
                fs.delete_dir(staging)
        else:  # copy
            if all(n in current for n in inputs):
                # every input still there: outputs may be partial; rewrite them all, then delete inputs
                table = _dedupe_sorted(_combine(fs, partition_dir, sorted(inputs), EVENTS_FILE_SCHEMA))
                _write_outputs(fs, partition_dir, table, outputs, encryption)
            for name in inputs:  # an input is deleted only after all outputs exist
                _delete_file(fs, f"{partition_dir}/{name}", encryption)
        _delete_file(fs, info.path, encryption)
    return len(markers)


def compact_partition(
    lake: str,
    table: str,
    partition: Mapping[str, str],
    target_file_mb: float = 128,
    min_age_seconds: float = 0,
    strategy: str = "auto",
    schema: pa.Schema = EVENTS_FILE_SCHEMA,
    now: dt.datetime | None = None,
    filesystem: pafs.FileSystem | None = None,
    encryption: S3Encryption | None = None,
    _crash_at: str | None = None,
) -> CompactionResult:
    """Compact one partition (see the module docstring for what readers see and what a crash leaves).

    Args:
        lake: lake root (local directory or s3://bucket/prefix).
        table: table directory (``events``).
        partition: ordered Hive partition values, e.g. ``{"tenant_id": "acme-in", "event_date": "2026-03-01"}``.
        target_file_mb: size of the output files (by the inputs' compressed bytes per row).
        min_age_seconds: skip a partition whose newest file is younger (still being written).
        strategy: ``auto`` (exchange where supported, else copy), ``exchange`` or ``copy``.
        filesystem: pyarrow filesystem of an ``s3://`` lake (default: from the environment, connectors.lake).
        encryption: SSE-KMS for the objects written to S3 (``--kms-key-id``); ignored on a local lake.
        _crash_at: test seam: raise at "staged" (outputs + marker written) or "swapped" (visible change done).
    """
    fs, root = _filesystem(lake, filesystem)
    rel = "/".join(f"{k}={v}" for k, v in partition.items())
    partition_dir = f"{root.rstrip('/')}/{table}/{rel}"
    state_dir = f"{root.rstrip('/')}/{STATE_DIR}/{table}/{rel}"
    local = isinstance(fs, pafs.LocalFileSystem)
    if strategy == "auto":
        strategy = "exchange" if local and exchange_supported() else "copy"
    if strategy == "exchange" and not local:
        raise ValueError("the exchange strategy needs a local filesystem")
    if not local:  # no locks on S3; the copy strategy's steps are idempotent, so an overlap converges
        return _compact(
            fs, rel, partition_dir, state_dir, strategy, target_file_mb, min_age_seconds, schema, now, _crash_at,
            encryption,
        )  # fmt: skip
    fs.create_dir(state_dir, recursive=True)
    with open(f"{state_dir}/.lock", "a") as lock:
        try:  # one compaction of a partition at a time: two exchanges of the same dir would undo each other
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return CompactionResult(rel, "skipped_busy")
        try:
            return _compact(
                fs, rel, partition_dir, state_dir, strategy, target_file_mb, min_age_seconds, schema, now, _crash_at
            )
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _compact(
    fs,
    rel,
    partition_dir,
    state_dir,
    strategy,
    target_file_mb,
    min_age_seconds,
    schema,
    now,
    _crash_at,
    encryption=None,
):
    recovered = _recover(fs, partition_dir, state_dir, encryption)
    files = _data_files(fs, partition_dir)
    if not files:
        return CompactionResult(rel, "skipped_empty", recovered=recovered)
    now = now or dt.datetime.now(dt.UTC)
    newest = max(info.mtime for info in files.values())
    if min_age_seconds and newest is not None and (now - newest).total_seconds() < min_age_seconds:
        return CompactionResult(rel, "skipped_open", files_in=len(files), recovered=recovered)
    total = sum(info.size for info in files.values())
    needed = max(1, math.ceil(total / (target_file_mb * 1024 * 1024)))
    if len(files) <= needed:
        return CompactionResult(rel, "skipped_compact", files_in=len(files), recovered=recovered)

    inputs = {name: files[name].size for name in sorted(files)}
    cid = hashlib.sha1(json.dumps(sorted(inputs.items())).encode()).hexdigest()[:12]
    try:
        combined = _combine(fs, partition_dir, list(inputs), schema)
    except UnknownColumnsError as err:
        log.warning("not compacting %s: %s", rel, err)
        return CompactionResult(rel, "skipped_unknown_columns", files_in=len(files), recovered=recovered)
    compacted = _dedupe_sorted(combined)
    outputs = _output_names(cid, min(needed, max(1, compacted.num_rows)))
    marker_path = f"{state_dir}/{cid}.json"
    marker = {"id": cid, "strategy": strategy, "inputs": inputs, "outputs": outputs, "rows": compacted.num_rows}
    if isinstance(fs, pafs.LocalFileSystem):  # on S3 a directory is an empty marker object, not needed
        fs.create_dir(state_dir, recursive=True)
    strays = 0
    if strategy == "exchange":
        staging = f"{state_dir}/{cid}"
        with contextlib.suppress(FileNotFoundError):
            fs.delete_dir(staging)
        fs.create_dir(staging, recursive=True)
        _write_outputs(fs, staging, compacted, outputs)
        _write_atomically(fs, marker_path, json.dumps(marker).encode())
        if _crash_at == "staged":
            raise RuntimeError("injected crash after staging")
        _exchange(staging, partition_dir)
        if _crash_at == "swapped":
            raise RuntimeError("injected crash after the swap")
        strays = _move_strays(fs, staging, partition_dir, inputs)
        fs.delete_dir(staging)
    else:
        _write_atomically(fs, marker_path, json.dumps(marker).encode(), encryption)
        _write_outputs(fs, partition_dir, compacted, outputs, encryption)
        if _crash_at == "staged":
            raise RuntimeError("injected crash after writing outputs")
        for name in inputs:
            _delete_file(fs, f"{partition_dir}/{name}", encryption)
            if _crash_at == "swapped":
                raise RuntimeError("injected crash while deleting inputs")
    _delete_file(fs, marker_path, encryption)
    return CompactionResult(
        rel,
        "compacted",
        files_in=len(inputs),
        files_out=len(outputs),
        rows_in=combined.num_rows,
        rows_out=compacted.num_rows,
        duplicates_removed=combined.num_rows - compacted.num_rows,
        strays_moved=strays,
        recovered=recovered,
    )
