"""Lake rows as Arrow tables between parsing and the lake: the columnar half of the pipeline core.

Parsing is per event (decode → validate → normalize → enrich give one dict per event); everything
after it works on Arrow tables: person ids, dedupe, sessions, splitting into lake files. A table
crosses a shuffle as Arrow IPC bytes (:func:`to_ipc`), which costs a copy of its buffers instead of
pickling every datetime, Decimal and dict of every row, and the lake writer gets the table it writes.

The working schema is the lake's (:data:`schemas.lake.EVENTS_SCHEMA`, partition columns included)
plus private columns that start with ``_`` and never reach a lake file: ``_source_ref`` (dedupe
tie-break, lineage) and ``_node`` (the identity node the event belongs to before stitching).
"""

from __future__ import annotations

import datetime as dt
import re
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from itertools import repeat
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from schemas.lake import EVENTS_FILE_SCHEMA, EVENTS_SCHEMA
from transforms.identity import own_node, person_id_for
from transforms.rows import SOURCE_REF

__all__ = [
    "ATTRIBUTE_COLUMNS",
    "KEY_COLUMNS",
    "NODE",
    "WORK_SCHEMA",
    "assign_person_ids",
    "attach_ids",
    "events_table",
    "file_shards",
    "file_table",
    "from_ipc",
    "input_tags_of",
    "key_buckets",
    "node_buckets",
    "person_buckets",
    "sort_for_file",
    "source_path",
    "split_by_bucket",
    "split_by_lake_file",
    "split_by_partition",
    "stable_bucket",
    "table_rows",
    "to_ipc",
]

NODE = "_node"
WORK_SCHEMA = pa.schema(
    [field.with_nullable(True) if field.name in ("person_id", "session_id") else field for field in EVENTS_SCHEMA]
    + [pa.field(SOURCE_REF, pa.string()), pa.field(NODE, pa.string(), nullable=False)],
    metadata=EVENTS_SCHEMA.metadata,
)
"""Lake columns (person and session still empty after parsing) + the private ``_`` columns."""

_COLUMNS = [(field.name, field.type) for field in WORK_SCHEMA if field.name != NODE]


def events_table(rows: Sequence[Mapping[str, Any]]) -> pa.Table:
    """Parsed lake rows (dicts from :func:`transforms.rows.to_lake_row`) → a table in :data:`WORK_SCHEMA`.

    Built column by column (``map(dict.get)`` in C): ~30 % cheaper than ``Table.from_pylist`` on these rows.
    """
    get, count = dict.get, len(rows)
    arrays = [pa.array(list(map(get, rows, repeat(name, count))), type=type_) for name, type_ in _COLUMNS]
    arrays.append(pa.array([own_node(row) for row in rows], type=pa.string()))
    return pa.Table.from_arrays(arrays, schema=WORK_SCHEMA)


_IPC_OPTIONS = pa.ipc.IpcWriteOptions(compression=None)
"""Uncompressed: lz4 made the in-process pipeline ~7 % dearer (measured); worth trying where shuffles cross a network."""


def to_ipc(table: pa.Table) -> bytes:
    """A table as Arrow IPC stream bytes: what crosses a shuffle (any runner, any worker)."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema, options=_IPC_OPTIONS) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def from_ipc(chunks: Iterable[bytes]) -> pa.Table:
    """One table from IPC chunks (all in :data:`WORK_SCHEMA`); an empty table when there are none."""
    tables = [pa.ipc.open_stream(chunk).read_all() for chunk in chunks]
    if not tables:
        return WORK_SCHEMA.empty_table()
    return pa.concat_tables(tables) if len(tables) > 1 else tables[0]


def key_buckets(keys: pa.Array | pa.ChunkedArray, bucket_of: Callable[[Any], int]) -> np.ndarray:
    """``bucket_of(key)`` for every row, computed once per distinct key (keys repeat a lot)."""
    encoded = pc.dictionary_encode(keys)
    if isinstance(encoded, pa.ChunkedArray):
        encoded = encoded.combine_chunks()
    per_key = np.fromiter((bucket_of(key) for key in encoded.dictionary.to_pylist()), dtype=np.int64)
    return per_key[encoded.indices.to_numpy(zero_copy_only=False)] if len(per_key) else np.zeros(0, np.int64)


def split_by_bucket(table: pa.Table, buckets: np.ndarray) -> Iterator[tuple[int, pa.Table]]:
    """(bucket, rows of that bucket) for every bucket present, rows kept in their order."""
    if not table.num_rows:
        return
    if (buckets == buckets[0]).all():
        yield int(buckets[0]), table
        return
    table = _contiguous(table)
    order = np.argsort(buckets, kind="stable")
    ordered = buckets[order]
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
    ends = np.r_[starts[1:], len(ordered)]
    for start, end in zip(starts, ends, strict=True):
        yield int(ordered[start]), table.take(order[start:end])


def _contiguous(table: pa.Table) -> pa.Table:
    """One chunk per column: ``take`` on a many-chunk table costs ~3x more (measured)."""
    return table.combine_chunks() if table.num_columns and table.column(0).num_chunks > 1 else table


def stable_bucket(key: str, buckets: int) -> int:
    """Same key, same bucket, on every worker and every run (unlike Python's salted hash)."""
    return zlib.crc32(key.encode()) % buckets


def _crc_bucket(buckets: int) -> Callable[[str], int]:
    return lambda key: stable_bucket(key, buckets)


def assign_person_ids(table: pa.Table, canonical: Mapping[str, Mapping[str, str]]) -> pa.Table:
    """Fill ``person_id`` from each row's node and its tenant's map node → canonical node.

    ``person_id_for`` (a hash) runs once per distinct (tenant, node), not per row.
    """
    keys = pc.binary_join_element_wise(table["tenant_id"], table[NODE], "\x1f")
    encoded = pc.dictionary_encode(keys).combine_chunks() if table.num_rows else None
    if encoded is None:
        return table
    people = []
    for key in encoded.dictionary.to_pylist():
        tenant, node = key.split("\x1f", 1)
        people.append(person_id_for(tenant, canonical.get(tenant, {}).get(node, node)))
    person_ids = pa.array(people, pa.string()).take(encoded.indices)
    return table.set_column(table.schema.get_field_index("person_id"), WORK_SCHEMA.field("person_id"), person_ids)


def node_buckets(table: pa.Table, buckets: int) -> np.ndarray:
    """Shuffle bucket of each row's own node (where the identity map for that node is sent)."""
    return key_buckets(table[NODE], _crc_bucket(buckets))


def person_buckets(table: pa.Table, buckets: int) -> np.ndarray:
    """Shuffle bucket of each row's person: every event (and every copy) of a person on one worker."""
    return key_buckets(table["person_id"], _crc_bucket(buckets))


def split_by_partition(table: pa.Table) -> Iterator[tuple[tuple[str, str], pa.Table]]:
    """((tenant_id, event_date ISO), rows) per lake partition present in the table."""
    if not table.num_rows:
        return
    keys = pc.binary_join_element_wise(table["tenant_id"], pc.cast(table["event_date"], pa.string()), "\x1f")
    encoded = pc.dictionary_encode(keys).combine_chunks()
    names = encoded.dictionary.to_pylist()
    for index, part in split_by_bucket(table, encoded.indices.to_numpy(zero_copy_only=False)):
        tenant, date = names[index].split("\x1f", 1)
        yield (tenant, date), part


KEY_COLUMNS = (
    "tenant_id",
    "event_date",
    "message_id",
    SOURCE_REF,
    "timestamp",
    "received_at",
    "properties",
    "person_id",
    "session_id",
    NODE,
)
"""What identity, dedupe and sessions need of a row (the rest of it waits, keyed by its lake file)."""
ATTRIBUTE_COLUMNS = ("tenant_id", "message_id", SOURCE_REF, "person_id", "session_id")
"""What they give back for each surviving row: its identity (message id + source ref) and its ids."""


def file_shards(table: pa.Table, files_per_partition: int) -> np.ndarray:
    """Which of its partition's files each row goes to: a stable hash of the message id.

    Known at parse time, before persons are: a row and its computed ids meet in the same lake-file group.
    """
    if files_per_partition == 1:
        return np.zeros(table.num_rows, np.int64)
    return key_buckets(table["message_id"], _crc_bucket(files_per_partition))


_REF_SUFFIX = r"(@[0-9]+)?(#[0-9]+|\[[0-9]+\])*$"
"""What a file source ref adds after the path: ``@OFFSET`` of the line, ``#N`` / ``[I]`` inside it."""


def source_path(ref: str | None) -> str | None:
    """The file a ``file:PATH@OFFSET#N`` source ref points into (None for other sources)."""
    if not ref or not ref.startswith("file:"):
        return None
    return re.sub(_REF_SUFFIX, "", ref[len("file:") :])


def input_tags_of(table: pa.Table, input_tags: Mapping[str, str]) -> tuple[list[str | None], np.ndarray]:
    """(tags, index per row): each row's input tag, looked up by the file its source ref points into.

    Computed once per distinct source path (a batch holds a few files, not a path per row).
    """
    refs = table[SOURCE_REF]
    paths = pc.replace_substring_regex(pc.fill_null(refs, ""), _REF_SUFFIX, "")
    encoded = pc.dictionary_encode(paths).combine_chunks()
    tags = [
        input_tags.get(path.removeprefix("file:")) if path.startswith("file:") else None
        for path in encoded.dictionary.to_pylist()
    ]
    return tags, encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64)


def split_by_lake_file(
    table: pa.Table, files_per_partition: int, input_tags: Mapping[str, str] | None = None
) -> Iterator[tuple[tuple[str, str, int | str], pa.Table]]:
    """((tenant_id, event_date ISO, file shard), rows) for every lake file the rows belong to.

    With ``input_tags`` (source file path -> content tag) the rows of each input file go to files of
    their own, and the shard is the text ``"<tag>-<NNNN>"`` that names them: re-reading a file, under
    any name and with any other files beside it, rewrites the same lake files.
    """
    for (tenant, date), part in split_by_partition(table):
        if not input_tags:
            for shard, rows in split_by_bucket(part, file_shards(part, files_per_partition)):
                yield (tenant, date, shard), rows
            continue
        tags, index = input_tags_of(part, input_tags)
        for tag_index, of_input in split_by_bucket(part, index):
            tag = tags[tag_index]
            for shard, rows in split_by_bucket(of_input, file_shards(of_input, files_per_partition)):
                yield (tenant, date, f"{tag}-{shard:04d}" if tag else shard), rows


def _row_keys(table: pa.Table) -> pa.Array:
    keys = pc.binary_join_element_wise(table["message_id"], pc.fill_null(table[SOURCE_REF], ""), "\x1f")
    return keys.combine_chunks() if isinstance(keys, pa.ChunkedArray) else keys


def attach_ids(rows: pa.Table, attributes: pa.Table) -> pa.Table:
    """The rows that survived dedupe, with the person and session ids computed for them.

    ``attributes`` holds one row per surviving copy (:data:`ATTRIBUTE_COLUMNS`); a row is matched by its
    message id and source ref (both sides belong to one tenant's lake file). Rows without attributes were
    dropped as duplicates (and counted where that was decided). When one source record was read twice
    (a file matched by two patterns), its identical copies are kept as often as attributes name them.
    """
    n = rows.num_rows
    if not n or not attributes.num_rows:
        return rows.slice(0, 0)
    encoded = pc.dictionary_encode(pa.concat_arrays([_row_keys(rows), _row_keys(attributes)]))
    ids = encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64)
    row_ids, attribute_ids = ids[:n], ids[n:]
    wanted = np.bincount(attribute_ids, minlength=len(encoded.dictionary))
    first_attribute = np.full(len(encoded.dictionary), -1, np.int64)
    first_attribute[attribute_ids[::-1]] = np.arange(len(attribute_ids))[::-1]
    # rank of each row among the rows with the same identity, in row order
    order = np.argsort(row_ids, kind="stable")
    starts = np.r_[True, row_ids[order][1:] != row_ids[order][:-1]]
    rank = np.empty(n, np.int64)
    rank[order] = np.arange(n) - np.maximum.accumulate(np.where(starts, np.arange(n), 0))
    keep = rank < wanted[row_ids]
    kept = rows.filter(pa.array(keep))
    source = pa.array(first_attribute[row_ids[keep]])
    for name in ("person_id", "session_id"):
        index = kept.schema.get_field_index(name)
        kept = kept.set_column(index, WORK_SCHEMA.field(name), attributes[name].take(source))
    return kept


def sort_for_file(table: pa.Table) -> pa.Table:
    """The order rows are written in: time, then message id (same input → same file bytes)."""
    return _contiguous(table).sort_by([("timestamp", "ascending"), ("message_id", "ascending")])


def file_table(table: pa.Table) -> pa.Table:
    """The columns of a lake file (:data:`schemas.lake.EVENTS_FILE_SCHEMA`), sorted as written."""
    ordered = sort_for_file(table)
    return pa.Table.from_arrays([ordered[name] for name in EVENTS_FILE_SCHEMA.names], schema=EVENTS_FILE_SCHEMA)


def table_rows(table: pa.Table) -> list[dict[str, Any]]:
    """Rows as dicts (lake columns + ``_source_ref``) for sinks that take rows one by one.

    Timestamps come back as ``datetime`` in ``datetime.UTC``, like the rows parsing produced.
    """
    columns = [name for name in table.column_names if name != NODE]
    rows = table.select(columns).to_pylist()
    stamps = [f.name for f in WORK_SCHEMA if pa.types.is_timestamp(f.type) and f.name in columns]
    for row in rows:
        for name in stamps:
            value = row[name]
            if value is not None:
                row[name] = value.astimezone(dt.UTC)
    return rows
