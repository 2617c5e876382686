"""The events table's key index: which message ids each tenant's lake files hold, without reading them.

``LAKE/_keys/tenant_id=<tenant>/*.parquet``, columns ``message_id``, ``file`` (the lake file, relative to
the tenant's directory: ``event_date=D/part-….parquet``), ``file_size`` and ``file_mtime`` (the lake file
as it was when its keys were written). Every lake writer adds one key file per lake file it writes,
named after it (a rerun rewrites it); ``compact_lake`` merges a tenant's key files into one.

The index is a hint; the lake is the truth. It is built so that a crash, an erasure, a compaction or a
copy of the lake can make it slower but never wrong:

- an entry counts only while its lake file is listed with the same path, size and modification time
  (a file rewritten in place, removed or never written leaves entries that count for nothing);
- a lake file no counting entry describes (no key file yet: a writer killed between the two writes, a
  lake older than the index, a compacted or erased file not re-indexed yet) has its ``message_id``
  column read directly;
- a row is dropped as a duplicate only after its id was found in the lake file itself
  (:func:`confirmed_ids`), so an index entry alone never drops an event.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems

from connectors import paths
from connectors.aws import S3Encryption
from schemas.lake import EVENTS_TABLE

__all__ = [
    "KEYS_DIR",
    "KEY_FILE_SCHEMA",
    "TenantKeys",
    "key_file_name",
    "refresh_key_index",
    "tenant_keys",
    "write_key_file",
]

KEYS_DIR = "_keys"
KEY_FILE_SCHEMA = pa.schema(
    [
        pa.field("message_id", pa.string(), nullable=False),
        pa.field("file", pa.string(), nullable=False),
        pa.field("file_size", pa.int64(), nullable=False),
        pa.field("file_mtime", pa.float64(), nullable=False),
    ]
)
_FILE_DICT = pa.dictionary(pa.int32(), pa.string())
_IN_MEMORY_SCHEMA = KEY_FILE_SCHEMA.set(1, pa.field("file", _FILE_DICT, nullable=False))
_MERGED_PREFIX = "keys-merged-"


def _root(lake: str) -> str:
    return f"{lake.rstrip('/')}/{KEYS_DIR}"


def tenant_keys_dir(lake: str, tenant: str) -> str:
    return paths.partition_path(_root(lake), {"tenant_id": tenant})


def tenant_events_dir(lake: str, tenant: str, table: str = EVENTS_TABLE) -> str:
    return paths.partition_path(f"{lake.rstrip('/')}/{table}", {"tenant_id": tenant})


def key_file_name(event_date: str, lake_file: str) -> str:
    """``keys-<date>-<lake file name>``: one name per lake file, so a rerun rewrites its key file."""
    return f"keys-{event_date}-{lake_file}"


def _parquet_bytes(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd")
    return sink.getvalue().to_pybytes()


def _read_column(path: str, columns: Sequence[str]) -> pa.Table:
    from connectors.analytics_io import read_parquet

    return read_parquet(path, columns=list(columns))


def _read_key_file(path: str) -> pa.Table:
    """A key file with ``file`` as a dictionary: one string per lake file in memory, not one per row."""
    if "://" in path:
        with FileSystems.open(path) as handle:
            source = pa.BufferReader(handle.read())
    else:
        source = os.path.abspath(path)
    table = pq.read_table(source, columns=KEY_FILE_SCHEMA.names, read_dictionary=["file"])
    return table.cast(_IN_MEMORY_SCHEMA)


def write_key_file(
    lake: str,
    tenant: str,
    event_date: str,
    lake_file_path: str,
    message_ids: pa.Array | pa.ChunkedArray | Sequence[str],
    encryption: S3Encryption | None = None,
) -> str:
    """Record the message ids of a lake file just written (after it: a crash in between leaves a file
    that is read directly, never an entry for rows that are not there)."""
    meta = FileSystems.match([lake_file_path])[0].metadata_list[0]
    ids = pa.chunked_array([message_ids]) if isinstance(message_ids, pa.Array) else message_ids
    ids = ids if isinstance(ids, pa.ChunkedArray) else pa.chunked_array([pa.array(list(ids), pa.string())])
    rows = len(ids)
    relative = f"event_date={event_date}/{os.path.basename(meta.path)}"
    table = pa.table(
        {
            "message_id": ids.cast(pa.string()),
            "file": pa.array([relative] * rows, pa.string()),
            "file_size": pa.array([meta.size_in_bytes] * rows, pa.int64()),
            "file_mtime": pa.array([float(meta.last_updated_in_seconds)] * rows, pa.float64()),
        },
        schema=KEY_FILE_SCHEMA,
    )
    root = _root(lake)
    path = paths.join_under(tenant_keys_dir(lake, tenant), key_file_name(event_date, os.path.basename(meta.path)))
    return paths.write_bytes_atomically(path, _parquet_bytes(table), root, encryption)


def _lake_files(lake: str, tenant: str, table: str) -> dict[str, tuple[str, int, float]]:
    """``event_date=D/name`` -> (path, size, mtime) of the tenant's lake files, from one listing."""
    found = FileSystems.match([f"{tenant_events_dir(lake, tenant, table)}/event_date=*/*.parquet"])[0]
    out = {}
    for meta in found.metadata_list:
        directory, name = os.path.split(meta.path)
        out[f"{os.path.basename(directory)}/{name}"] = (meta.path, meta.size_in_bytes, meta.last_updated_in_seconds)
    return out


def _key_files(lake: str, tenant: str) -> list[str]:
    return sorted(m.path for m in FileSystems.match([f"{tenant_keys_dir(lake, tenant)}/*.parquet"])[0].metadata_list)


def _read_entries(key_files: Iterable[str]) -> pa.Table:
    tables = [_read_key_file(path) for path in key_files]
    return pa.concat_tables(tables).combine_chunks() if tables else _IN_MEMORY_SCHEMA.empty_table()


def _file_column(rel: str, rows: int) -> pa.ChunkedArray:
    return pa.chunked_array([pa.DictionaryArray.from_arrays(pa.array([0] * rows, pa.int32()), [rel])], _FILE_DICT)


def _files_of(entries: pa.Table) -> set[str]:
    """The lake files a table of entries names (its dictionary values that rows use)."""
    found: set[str] = set()
    for chunk in entries["file"].chunks:
        used = pc.unique(chunk.indices)
        found.update(pc.take(chunk.dictionary, used).to_pylist())
    return found


def _valid_entries(entries: pa.Table, files: Mapping[str, tuple[str, int, float]]) -> pa.Table:
    """The entries whose lake file is listed now with the size and mtime they recorded."""
    if not entries.num_rows or not files:
        return entries.slice(0, 0)
    names = pa.array(list(files), pa.string())
    sizes = pa.array([v[1] for v in files.values()], pa.int64())
    mtimes = pa.array([float(v[2]) for v in files.values()], pa.float64())
    masks = []
    offset = 0
    for chunk in entries["file"].chunks:  # per lake file named in the dictionary, then per row
        at = pc.index_in(chunk.dictionary, value_set=names)
        size = pc.take(pc.take(sizes, at), chunk.indices)
        mtime = pc.take(pc.take(mtimes, at), chunk.indices)
        rows = entries.slice(offset, len(chunk))
        offset += len(chunk)
        same = pc.and_(pc.equal(rows["file_size"], size), pc.equal(rows["file_mtime"], mtime))
        masks.append(pc.fill_null(same, False))
    return entries.filter(pa.chunked_array(masks, pa.bool_()))


@dataclass
class TenantKeys:
    """A tenant's message ids in the lake outside a run's own files, and where each one is."""

    ids: pa.Array  # message ids, one per (id, file)
    files: pa.Array  # the lake file of each id (relative to the tenant)
    paths: dict[str, str]  # relative -> full path of the lake files counted
    read_directly: dict[str, pa.Array] = field(default_factory=dict)  # files read whole: their ids
    indexed_files: int = 0


def tenant_keys(lake: str, tenant: str, own_prefixes: Sequence[str] = (), table: str = EVENTS_TABLE) -> TenantKeys:
    """The tenant's known keys: index entries of unchanged lake files + ids read from the files without."""
    own = tuple(own_prefixes)
    files = {rel: v for rel, v in _lake_files(lake, tenant, table).items() if not rel.split("/")[-1].startswith(own)}
    entries = _valid_entries(_read_entries(_key_files(lake, tenant)), files)
    covered = _files_of(entries)
    read_directly = {}
    ids, where = [entries["message_id"]], [entries["file"]]
    for rel in sorted(set(files) - covered):
        column = _read_column(files[rel][0], ["message_id"]).column(0).cast(pa.string())
        read_directly[rel] = column.combine_chunks()
        ids.append(column)
        where.append(_file_column(rel, len(column)))
    return TenantKeys(
        ids=_concat(ids, pa.string()),
        files=_concat(where, _FILE_DICT),
        paths={rel: v[0] for rel, v in files.items()},
        read_directly=read_directly,
        indexed_files=len(covered),
    )


def _concat(columns: Sequence[pa.ChunkedArray], type_: pa.DataType) -> pa.Array:
    return pa.chunked_array([chunk for column in columns for chunk in column.chunks], type_).combine_chunks()


def confirmed_ids(keys: TenantKeys, candidates: pa.Array, cache: dict[str, pa.Array]) -> pa.Array:
    """The candidate ids that are really in a lake file: the index says where, the file says whether.

    ``cache``: relative file -> its message ids, filled as files are read (shared across calls)."""
    hits = pc.is_in(keys.ids, value_set=candidates)
    if not pc.any(hits).as_py():
        return pa.array([], pa.string())
    found = []
    for rel in pc.unique(keys.files.filter(hits)).dictionary_decode().to_pylist():
        if rel not in cache:
            cache[rel] = keys.read_directly.get(rel)
            if cache[rel] is None:
                cache[rel] = _read_column(keys.paths[rel], ["message_id"]).column(0).cast(pa.string()).combine_chunks()
        found.append(candidates.filter(pc.is_in(candidates, value_set=cache[rel])))
    return pc.unique(pa.concat_arrays(found)) if found else pa.array([], pa.string())


def refresh_key_index(
    lake: str, tenant: str, table: str = EVENTS_TABLE, encryption: S3Encryption | None = None
) -> dict[str, int]:
    """Rebuild a tenant's index as one file: valid entries kept, unindexed lake files read, stale dropped.

    Crash-safe and idempotent: the merged file (named after what it describes) is written before the key
    files it replaces are deleted; a crash in between leaves entries twice, which is harmless. Key files
    that writers add meanwhile are not deleted (only those read here are)."""
    files = _lake_files(lake, tenant, table)
    key_files = _key_files(lake, tenant)
    entries = _valid_entries(_read_entries(key_files), files)
    covered = _files_of(entries)
    parts = [entries.cast(KEY_FILE_SCHEMA)]
    for rel in sorted(set(files) - covered):
        path, size, mtime = files[rel]
        column = _read_column(path, ["message_id"]).column(0).cast(pa.string())
        n = len(column)
        parts.append(
            pa.table(
                {
                    "message_id": column,
                    "file": pa.array([rel] * n, pa.string()),
                    "file_size": pa.array([size] * n, pa.int64()),
                    "file_mtime": pa.array([float(mtime)] * n, pa.float64()),
                },
                schema=KEY_FILE_SCHEMA,
            )
        )
    merged = pa.concat_tables(parts).sort_by([("file", "ascending"), ("message_id", "ascending")])
    merged = merged.combine_chunks()
    described = sorted({(rel, size, mtime) for rel, (_, size, mtime) in files.items()})
    name = _MERGED_PREFIX + hashlib.sha1(repr(described).encode()).hexdigest()[:16] + ".parquet"
    target = paths.join_under(tenant_keys_dir(lake, tenant), name)
    if not files:
        stale = key_files
    else:
        if _norm(target) not in {_norm(k) for k in key_files}:
            paths.write_bytes_atomically(target, _parquet_bytes(merged), _root(lake), encryption)
        stale = [k for k in key_files if _norm(k) != _norm(target)]
    if stale:
        FileSystems.delete(stale)
    return {"key_files_merged": len(stale), "lake_files_indexed": len(files), "keys": merged.num_rows}


def _norm(path: str) -> str:
    return path if "://" in path else os.path.abspath(path)
