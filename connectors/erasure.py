"""Erasure IO: find a tenant's persons in the lake and the identity graph, remove them from every store,
keep the tombstones and the audit log.

Every removal rewrites or deletes only what names a subject (:class:`transforms.erasure.Subjects`):

- lake Parquet files (events and the per-person tables: feature snapshots, segments, training sets kept in
  the lake) are read whole, filtered with one ``is_in`` per id column and written back under the same name
  atomically (:func:`connectors.paths.write_bytes_atomically`); a file with nothing to remove is not
  written (its bytes stay as they were);
- dead-letter JSON-lines files likewise, line by line (:func:`transforms.erasure.dead_letter_mentions`);
- DynamoDB items by key (``Query`` on the person's partition keys, then ``BatchWriteItem`` deletes);
- warehouse rows with one ``DELETE`` per table in one transaction.

So a second run finds nothing and writes nothing. Tombstones (``LAKE/_tombstones/tenant_id=T/*.json``) and
audit records (``LAKE/_audit/erasure/*.json``) are new files each run, created exclusively: never
overwritten (``docs/erasure.md``).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import apache_beam as beam
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics

from connectors import paths
from connectors.analytics_io import read_parquet
from connectors.dynamodb import Backoff, batch_write_with_retry
from connectors.lake import DEAD_LETTERS_DIR, table_path
from schemas.lake import EVENTS_TABLE
from transforms.erasure import IDENTITY_COLUMNS, Subjects, dead_letter_mentions, identity_table, row_mask
from transforms.event_tables import from_ipc, to_ipc
from transforms.identity import node_of_anonymous, node_of_user

__all__ = [
    "AUDIT_DIR",
    "TOMBSTONES_DIR",
    "DropTombstoned",
    "Removal",
    "erase_dead_letters",
    "erase_dynamodb_partitions",
    "erase_identity_graph",
    "erase_warehouse",
    "graph_subjects",
    "per_person_files",
    "read_tombstone_groups",
    "read_tombstones",
    "rewrite_parquet",
    "scan_event_identities",
    "write_audit_record",
    "write_tombstone",
]

log = logging.getLogger("livora.erasure")

AUDIT_DIR = "_audit/erasure"
TOMBSTONES_DIR = "_tombstones"
_SKIP_TABLES = {EVENTS_TABLE, DEAD_LETTERS_DIR}


@dataclass
class Removal:
    """What one store lost (or would lose, in a dry run): rows/items/lines and the files rewritten."""

    rows: int = 0
    files: int = 0
    paths: list[str] = field(default_factory=list)

    def add(self, rows: int, path: str | None = None) -> None:
        self.rows += rows
        if path is not None and rows:
            self.files += 1
            self.paths.append(path)

    def summary(self) -> dict[str, int]:
        return {"rows": self.rows, "files": self.files}


def _matches(pattern: str) -> list[str]:
    return sorted(m.path for m in FileSystems.match([pattern])[0].metadata_list)


def _parquet_bytes(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd")
    return sink.getvalue().to_pybytes()


# --- lake Parquet ----------------------------------------------------------------------------------------


def event_files(lake: str, tenant: str) -> list[str]:
    """Every events file of a tenant (all dates)."""
    return _matches(f"{table_path(lake, EVENTS_TABLE)}/tenant_id={tenant}/*/*.parquet")


def scan_event_identities(files: Sequence[str], on_file: Callable[[], None] | None = None) -> dict[str, pa.Table]:
    """path -> :func:`transforms.erasure.identity_table` of that file (identity columns and traits only)."""
    found = {}
    for path in files:
        found[path] = identity_table(read_parquet(path, [*IDENTITY_COLUMNS, "traits"]))
        if on_file:
            on_file()
    return found


def rewrite_parquet(path: str, root: str, subjects: Subjects, dry_run: bool, tenant: str | None = None) -> int:
    """Remove the subjects' rows from one Parquet file, in place and atomically; returns the rows removed.

    A file with none of their rows is left untouched (not rewritten). Row order, schema and compression
    stay as they were (the filter keeps order; the schema is the file's own). With ``tenant``, only that
    tenant's rows are candidates: its ``tenant_id=`` partition, or its rows by a ``tenant_id`` column (an
    opaque user id may mean another person in another brand).
    """
    if tenant is not None:
        segment = next((s for s in path.split("/") if s.startswith("tenant_id=")), None)
        if segment is not None and segment != f"tenant_id={tenant}":
            return 0
    table = read_parquet(path)
    mask = row_mask(table, subjects)
    if tenant is not None and "tenant_id" in table.column_names:
        mask = pc.and_(mask, pc.fill_null(pc.equal(table["tenant_id"], tenant), False))
    removed = pc.sum(mask).as_py() or 0
    if removed and not dry_run:
        kept = table.filter(pc.invert(mask))
        paths.write_bytes_atomically(path, _parquet_bytes(kept), root)
    return removed


def per_person_files(lake: str) -> list[str]:
    """Parquet files of the lake's other tables that hold per-person rows (a ``person_id``/``user_id``/
    ``anonymous_id`` column): feature snapshots, segments, RFM/CLV scores, training sets saved in the lake."""
    root = lake.rstrip("/")
    found = []
    for path in _matches(f"{root}/**.parquet"):
        relative = path[len(root) :].lstrip("/") if path.startswith(root) else os.path.relpath(path, root)
        top = relative.split("/", 1)[0]
        if top in _SKIP_TABLES or top.startswith("_"):
            continue
        names = set(pq.read_schema(path).names) if "://" not in path else set(read_parquet(path).schema.names)
        if names & {"person_id", "user_id", "anonymous_id"}:
            found.append(path)
    return found


# --- dead letters ---------------------------------------------------------------------------------------


def erase_dead_letters(directory: str, tenant: str, subjects: Subjects, salt: str, needles, dry_run: bool) -> Removal:
    """Remove the dead letters that mention a subject (lines of ``tenant``, or of no known tenant)."""
    import base64

    removal = Removal()
    for path in _matches(f"{directory.rstrip('/')}/**.jsonl"):
        with FileSystems.open(path, compression_type="uncompressed") as handle:
            lines = handle.read().decode("utf-8").splitlines(keepends=True)
        kept, removed = [], 0
        for line in lines:
            if not line.strip():
                kept.append(line)
                continue
            record = json.loads(line)
            if record.get("tenant_id") not in (None, tenant):
                kept.append(line)
                continue
            payload = record.get("payload") or ""
            if record.get("payload_encoding") == "base64":
                payload = base64.b64decode(payload).decode("utf-8", "replace")
            if dead_letter_mentions(payload, subjects, salt, needles):
                removed += 1
            else:
                kept.append(line)
        if removed and not dry_run:
            paths.write_bytes_atomically(path, "".join(kept).encode("utf-8"), directory)
        removal.add(removed, path)
    return removal


# --- tombstones and the audit log -------------------------------------------------------------------------


def _tombstone_root(lake: str) -> str:
    return table_path(lake, TOMBSTONES_DIR)


def _tombstone_docs(lake: str, tenant: str | None) -> list[dict]:
    docs = []
    for path in _matches(f"{_tombstone_root(lake)}/tenant_id={tenant or '*'}/*.json"):
        with FileSystems.open(path) as handle:
            docs.append(json.loads(handle.read()))
    return docs


def read_tombstones(lake: str, tenant: str | None = None) -> dict[str, Subjects]:
    """tenant -> every id and person id ever erased there (empty for a lake without erasures)."""
    found: dict[str, Subjects] = {}
    for doc in _tombstone_docs(lake, tenant):
        found.setdefault(doc["tenant_id"], Subjects()).update(Subjects(set(doc["ids"]), set(doc["person_ids"])))
    return found


def read_tombstone_groups(lake: str, tenant: str) -> list[Subjects]:
    """The erased persons of ``tenant`` one request at a time (what a re-run of a request resolves to)."""
    return [
        Subjects(set(group["ids"]), set(group["person_ids"]))
        for doc in _tombstone_docs(lake, tenant)
        for group in doc.get("groups", ())
    ]


def _create_exclusive(path: str, body: bytes, root: str) -> str:
    """Write a new file whole; never replace one (a name clash is an error, not an overwrite)."""
    paths.ensure_under(root, path)
    if "://" in path:
        if FileSystems.exists(path):
            raise FileExistsError(path)
        return paths.write_bytes_atomically(path, body, root)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.{uuid.uuid4().hex}{paths.TEMP_SUFFIX}"
    with open(tmp, "wb") as handle:
        handle.write(body)
        handle.flush()
        os.fsync(handle.fileno())
    try:
        os.link(tmp, path)  # fails when the name exists: append-only
    finally:
        os.unlink(tmp)
    return path


def write_tombstone(lake: str, tenant: str, subjects: Subjects, run_id: str, groups: Sequence[Subjects] = ()) -> str:
    """A new tombstone file of ``tenant``: the subjects' ids (as the lake stores them) and person ids."""
    root = _tombstone_root(lake)
    path = paths.join_under(paths.partition_path(root, {"tenant_id": tenant}), f"erasure-{run_id}.json")
    doc = {
        "tenant_id": tenant,
        "run_id": run_id,
        "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "ids": sorted(subjects.ids),
        "person_ids": sorted(subjects.person_ids),
        "groups": [{"ids": sorted(g.ids), "person_ids": sorted(g.person_ids)} for g in groups],
    }
    return _create_exclusive(path, (json.dumps(doc, sort_keys=True) + "\n").encode(), root)


def write_audit_record(lake: str, record: Mapping[str, Any]) -> str:
    """``LAKE/_audit/erasure/<UTC time>-<run id>.json``: one new file per run, never overwritten."""
    root = table_path(lake, AUDIT_DIR)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S")
    path = paths.join_under(root, f"{stamp}-{record['run_id']}.json")
    body = json.dumps(record, sort_keys=True, indent=1, default=str) + "\n"
    return _create_exclusive(path, body.encode("utf-8"), root)


# --- DynamoDB -----------------------------------------------------------------------------------------------


def _query_items(client, table: str, key_attribute: str, value: str) -> list[dict]:
    items, start = [], None
    while True:
        extra = {"ExclusiveStartKey": start} if start else {}
        response = client.query(
            TableName=table,
            KeyConditionExpression="#k = :v",
            ExpressionAttributeNames={"#k": key_attribute},
            ExpressionAttributeValues={":v": {"S": value}},
            ConsistentRead=True,
            **extra,
        )
        items += response.get("Items", [])
        start = response.get("LastEvaluatedKey")
        if not start:
            return items


def _nodes(ids: Iterable[str]) -> list[str]:
    return sorted({n for i in ids for n in (node_of_user(i), node_of_anonymous(i))})


def graph_subjects(client, table: str, tenant: str, seeds: Subjects, max_rounds: int = 10) -> Subjects:
    """The subjects grown through the identity graph: persons of their nodes, nodes of their persons."""
    found = Subjects(set(seeds.ids), set(seeds.person_ids))
    for _ in range(max_rounds):
        grown = Subjects(set(found.ids), set(found.person_ids))
        for node in _nodes(found.ids):
            for item in _query_items(client, table, "pk", f"{tenant}#{node}"):
                sk = item["sk"]["S"]
                if sk.startswith("P#"):
                    grown.person_ids.add(sk.removeprefix("P#"))
        for person in found.person_ids:
            for item in _query_items(client, table, "pk", f"{tenant}#P#{person}"):
                grown.ids.add(item["sk"]["S"][2:])  # "u:<id>" / "a:<id>"
        if grown.ids == found.ids and grown.person_ids == found.person_ids:
            return found
        found = grown
    return found


def _delete(client, table: str, keys: list[dict], key_attributes: Sequence[str], dry_run: bool) -> int:
    if keys and not dry_run:
        report = batch_write_with_retry(
            client, table, [{"DeleteRequest": {"Key": k}} for k in keys], key_attributes=key_attributes,
            backoff=Backoff(),
        )  # fmt: skip
        if report.failures:
            raise RuntimeError(f"{table}: {len(report.failures)} deletes refused: {report.failures[0]}")
    return len({json.dumps(k, sort_keys=True) for k in keys})


def erase_identity_graph(client, table: str, tenant: str, subjects: Subjects, dry_run: bool) -> int:
    """Delete the subjects' nodes, person links and edges (both directions); returns the items deleted."""
    keys: list[dict] = []
    pks = [f"{tenant}#{n}" for n in _nodes(subjects.ids)] + [f"{tenant}#P#{p}" for p in sorted(subjects.person_ids)]
    for pk in pks:
        for item in _query_items(client, table, "pk", pk):
            keys.append({"pk": item["pk"], "sk": item["sk"]})
            sk = item["sk"]["S"]
            if item.get("kind", {}).get("S") == "edge":  # the reverse edge lives under the other node
                keys.append({"pk": {"S": f"{tenant}#{sk}"}, "sk": {"S": pk.removeprefix(f"{tenant}#")}})
    return _delete(client, table, keys, ("pk", "sk"), dry_run)


def erase_dynamodb_partitions(
    client, table: str, key_attribute: str, sort_key: str | None, partition_keys: Iterable[str], dry_run: bool
) -> int:
    """Delete every item under each partition key (profile + segments items, a person's feature groups)."""
    keys = []
    for value in sorted(set(partition_keys)):
        for item in _query_items(client, table, key_attribute, value):
            keys.append({name: item[name] for name in (key_attribute, sort_key) if name})
    return _delete(client, table, keys, [n for n in (key_attribute, sort_key) if n], dry_run)


# --- warehouse ------------------------------------------------------------------------------------------------


def _warehouse_where(columns: set[str], marker: str) -> str | None:
    """``tenant_id = ? AND (<id column> IN ids OR person_id IN persons ...)`` over the columns a table has."""
    ids = f"(SELECT unnest({marker}))"
    parts = [f"{c} IN {ids}" for c in ("user_id", "anonymous_id", "previous_id") if c in columns]
    if "person_id" in columns:
        parts.insert(0, f"person_id IN {ids}")
    if "tenant_id" not in columns or not parts:
        return None
    return f"tenant_id = {marker.split('::')[0]} AND ({' OR '.join(parts)})"


def erase_warehouse(url: str, tenant: str, subjects: Subjects, dry_run: bool) -> dict[str, int]:
    """Delete the subjects' rows of ``tenant`` from every warehouse table with a ``tenant_id`` and a person
    column (events, features, analytics outputs), in one transaction; returns table -> rows.

    DuckDB and PostgreSQL (Redshift speaks PostgreSQL here; not tested against one). Ids and person ids are
    passed as one array parameter each way, so 1,000 persons are one statement per table.
    """
    from connectors.warehouse import connect, quote

    values = sorted(subjects.ids | subjects.person_ids) or [""]
    warehouse = connect(url)
    counts: dict[str, int] = {}
    if warehouse.dialect == "duckdb":
        import duckdb

        con = duckdb.connect(warehouse.path)
        try:
            found: dict[str, set[str]] = {}
            for table, column in con.execute(
                "SELECT table_name, column_name FROM information_schema.columns WHERE table_schema = 'main'"
            ).fetchall():
                found.setdefault(table, set()).add(column)
            con.execute("BEGIN TRANSACTION")
            for table, columns in sorted(found.items()):
                where = _warehouse_where(columns, "?")
                if where is None:
                    continue
                args = [tenant] + [values] * where.count("unnest")
                count = con.execute(f"SELECT count(*) FROM {quote(table)} WHERE {where}", args).fetchone()[0]
                if count and not dry_run:
                    con.execute(f"DELETE FROM {quote(table)} WHERE {where}", args)
                counts[table] = count
            con.execute("COMMIT")
        finally:
            con.close()
        return counts
    with warehouse._connect() as conn, conn.cursor() as cur:  # one transaction (commits at the end)
        cur.execute(
            "SELECT table_name, column_name FROM information_schema.columns WHERE table_schema = current_schema()"
        )
        found = {}
        for table, column in cur.fetchall():
            found.setdefault(table, set()).add(column)
        for table, columns in sorted(found.items()):
            where = _warehouse_where(columns, "%s::text[]")
            if where is None:
                continue
            where = where.replace("tenant_id = %s", "tenant_id = %s", 1)
            args = [tenant] + [values] * where.count("unnest")
            cur.execute(f"SELECT count(*) FROM {quote(table)} WHERE {where}", args)
            counts[table] = cur.fetchone()[0]
            if counts[table] and not dry_run:
                cur.execute(f"DELETE FROM {quote(table)} WHERE {where}", args)
    return counts


# --- ingest: suppress tombstoned persons ------------------------------------------------------------------


class _DropTombstonedFn(beam.DoFn):
    """Drop rows whose user_id / anonymous_id / previous_id / person_id is tombstoned in their tenant."""

    def __init__(self, tombstones: Mapping[str, tuple[list[str], list[str]]]):
        self.tombstones = dict(tombstones)
        self.suppressed = Metrics.counter("livora", "suppressed_erased")

    def setup(self):
        self._subjects = {t: Subjects(set(ids), set(persons)) for t, (ids, persons) in self.tombstones.items()}

    def process(self, element):
        (tenant, date, shard), rows = element
        subjects = self._subjects.get(tenant)
        if not subjects:
            yield element
            return
        rows = list(rows)
        ipc = bool(rows) and isinstance(rows[0], bytes)
        if ipc:
            table = from_ipc(rows)
        else:  # row dicts: only the columns the check reads
            names = (*IDENTITY_COLUMNS, "message_id")
            table = pa.table({n: pa.array([r.get(n) for r in rows], pa.string()) for n in names})
        mask = row_mask(table, subjects) if table.num_rows else pa.array([], pa.bool_())
        hits = table.filter(mask)["message_id"].to_pylist() if table.num_rows else []
        self.suppressed.inc(len(hits))
        for message_id in hits:
            yield beam.pvalue.TaggedOutput("suppressed", (tenant, message_id))
        if len(hits) == table.num_rows:
            return
        if not hits:
            yield (tenant, date, shard), rows
        elif ipc:
            yield (tenant, date, shard), [to_ipc(table.filter(pc.invert(mask)))]
        else:
            yield (tenant, date, shard), [r for r, hit in zip(rows, mask.to_pylist(), strict=True) if not hit]


class DropTombstoned(beam.PTransform):
    """Ingest's erasure hook: a late event of an erased person never reaches the lake again.

    Input and main output: lake-file batches ``((tenant, date, shard), rows)`` as
    :class:`connectors.lake.DropLakeDuplicates` takes them; output ``suppressed``: ``(tenant_id, message_id)``
    of each row dropped (counted in the run totals, so the balance holds). The tombstones are read once on
    the driver when the graph is built (:func:`read_tombstones`).

    Args:
        tombstones: tenant -> erased subjects.
    """

    def __init__(self, tombstones: Mapping[str, Subjects]):
        super().__init__()
        self.tombstones = {t: (sorted(s.ids), sorted(s.person_ids)) for t, s in tombstones.items() if s}

    def expand(self, batches):
        fn = _DropTombstonedFn(self.tombstones)
        return batches | "DropErased" >> beam.ParDo(fn).with_outputs("suppressed", main="rows")
