"""Beam composites around :mod:`transforms.pipeline_core`: the same code serves batch and streaming.

``ProcessEvents`` turns source records into lake tables, dead letters and counted duplicates:

    records ─ParseEvents─▶ row tables by node bucket ─┐
                     └─▶ identity edges ─ResolveIdentities─▶ canonical node by node bucket
                     └─▶ failures                           │
                         CoGroupByKey ─AssignPersons─▶ row tables by person bucket
                         GroupByKey ─DedupeAndSessionize─▶ row tables by (tenant, date, file shard)
                         GroupByKey ─▶ one table per lake file

Parsing is per event; from there rows travel as Arrow tables (:mod:`transforms.event_tables`) and
cross every shuffle as Arrow IPC bytes: a copy of column buffers instead of Beam's default coder
pickling every datetime, date and Decimal of every row (~40 µs a row per shuffle measured here).

The identity map joins the rows by a shuffle (not a side input), so the same graph works per
window in streaming; the second shuffle, keyed by a stable hash of the person, puts each person's
events (and every copy of a duplicate) on one worker; the last one gathers each lake partition's
rows into ``files_per_partition`` files, so a run writes few large files, not one per bucket.
"""

from __future__ import annotations

import datetime as dt
import pickle
from collections import defaultdict

import apache_beam as beam
from apache_beam import pvalue
from apache_beam.metrics import Metrics

from schemas.records import SourceRecord
from transforms.dedupe import dedupe_table
from transforms.event_tables import (
    NODE,
    assign_person_ids,
    events_table,
    from_ipc,
    node_buckets,
    person_buckets,
    split_by_bucket,
    split_by_partition,
    stable_bucket,
    table_rows,
    to_ipc,
)
from transforms.identity import resolve_components
from transforms.pipeline_core import EventParser, ProcessConfig, edges_of, file_shard, parse_records
from transforms.sessions import sessionize_table

__all__ = ["ProcessConfig", "ProcessEvents", "ProcessedEvents"]

NAMESPACE = "livora"
ROWS, FAILURES, EDGES, IDENTITY = "rows", "failures", "edges", "identity"
PARSED = "parsed"


def pack_records(records: list[SourceRecord]) -> bytes:
    """A batch of source records as bytes (what :class:`connectors.files.ReadRecordBatches` emits).

    Three plain lists, not a list of records: pickling a tuple subclass per record costs several
    times more than its bytes and strings.
    """
    columns = ([r.payload for r in records], [r.source_ref for r in records], [r.received_at for r in records])
    return pickle.dumps(columns, protocol=pickle.HIGHEST_PROTOCOL)


def unpack_records(packed: bytes) -> list[SourceRecord]:
    return list(map(SourceRecord, *pickle.loads(packed)))


class _ParseBatchFn(beam.DoFn):
    """A batch of source records → row tables by node bucket, identity edges per tenant, failures.

    Rows leave as IPC bytes, not as a list of dicts for a next step to key: Beam estimates the
    size of a sample of every step's outputs by encoding them, which for row dicts cost a few µs a row.
    """

    def __init__(self, config: ProcessConfig):
        self.config = config
        self.records_in = Metrics.counter(NAMESPACE, "records_in")
        self.rows_parsed = Metrics.counter(NAMESPACE, "rows_parsed")

    def setup(self):
        self.parser = EventParser(self.config)

    def process(self, batch: list[SourceRecord] | bytes):
        if isinstance(batch, bytes):
            batch = unpack_records(batch)
        rows, failures = parse_records(batch, self.parser)
        self.records_in.inc(len(batch))
        self.rows_parsed.inc(len(rows))
        yield pvalue.TaggedOutput(PARSED, len(rows) + len(failures))
        for failure in failures:
            Metrics.counter(NAMESPACE, f"dead_letter.{failure.stage}.{failure.reason}").inc()
            yield pvalue.TaggedOutput(FAILURES, failure)
        for tenant, edges in edges_of(rows).items():
            yield pvalue.TaggedOutput(EDGES, (tenant, sorted(edges)))
        if rows:
            table = events_table(rows)
            for bucket, part in split_by_bucket(table, node_buckets(table, self.config.buckets)):
                yield bucket, to_ipc(part)


class _ResolveTenantFn(beam.DoFn):
    """A tenant's identity graph → (node bucket, (tenant, node, canonical)) for every merged node."""

    def __init__(self, buckets: int):
        self.buckets = buckets

    def process(self, element):
        tenant, edge_lists = element
        edges = {edge for edges in edge_lists for edge in edges}
        for node, root in resolve_components(sorted(edges)).items():
            if node != root:
                yield stable_bucket(node, self.buckets), (tenant, node, root)


class _AssignPersonsFn(beam.DoFn):
    """Person ids from the identity map, then row tables keyed by a stable person bucket."""

    def __init__(self, buckets: int):
        self.buckets = buckets

    def process(self, element):
        _, grouped = element
        canonical: dict[str, dict[str, str]] = defaultdict(dict)
        for tenant, node, root in grouped[IDENTITY]:
            canonical[tenant][node] = root
        table = assign_person_ids(from_ipc(grouped[ROWS]), canonical).drop_columns([NODE])
        for bucket, part in split_by_bucket(table, person_buckets(table, self.buckets)):
            yield bucket, to_ipc(part)


class _DedupeAndSessionizeFn(beam.DoFn):
    """All events of the persons in one bucket: drop duplicates, cut sessions, split by lake file."""

    def __init__(self, config: ProcessConfig):
        self.session_gap = dt.timedelta(seconds=config.session_gap_seconds)
        self.config = config
        self.duplicates = Metrics.counter(NAMESPACE, "duplicates")
        self.lake_rows = Metrics.counter(NAMESPACE, "lake_rows")

    def process(self, element):
        bucket, chunks = element
        unique, duplicates = dedupe_table(from_ipc(chunks))
        self.duplicates.inc(len(duplicates))
        self.lake_rows.inc(unique.num_rows)
        for key in duplicates:
            yield pvalue.TaggedOutput("duplicates", key)
        shard = file_shard(bucket, self.config)
        for (tenant, date), part in split_by_partition(sessionize_table(unique, self.session_gap)):
            yield (tenant, date, shard), to_ipc(part)


class ProcessedEvents:
    """The outputs of :class:`ProcessEvents`."""

    def __init__(self, lake_files, failures, duplicates, events_parsed=None):
        self.events_parsed = events_parsed
        """Events (and undecodable records) out of parsing, one int per batch: what the other three
        outputs must add up to (a run can check its totals against it)."""
        self.lake_files = lake_files
        """((tenant_id, event_date ISO, file shard), [Arrow IPC bytes, ...]): the rows of one lake file in
        :data:`transforms.event_tables.WORK_SCHEMA` less ``_node`` (dropped once persons are assigned).
        :func:`transforms.event_tables.from_ipc` gives the table, :func:`transforms.event_tables.file_table`
        its file columns. Kept as bytes up to the writer: Beam samples step outputs for their size by
        encoding them, and a table would be pickled."""
        self.failures = failures
        """FailedEvent per rejected record or event."""
        self.duplicates = duplicates
        """(tenant_id, message_id) per dropped duplicate copy."""
        self._row_batches = self._rows = None

    @property
    def row_batches(self):
        """((tenant_id, event_date ISO, file shard), [row dict, ...]) for sinks that work on rows."""
        if self._row_batches is None:
            self._row_batches = self.lake_files | "LakeFileRows" >> beam.MapTuple(
                lambda key, chunks: (key, table_rows(from_ipc(chunks)))
            )
        return self._row_batches

    @property
    def rows(self):
        """One lake-row dict per element (for sinks that take rows one by one)."""
        if self._rows is None:
            self._rows = self.row_batches | "FlattenRowBatches" >> beam.FlatMap(lambda kv: kv[1])
        return self._rows


class ProcessEvents(beam.PTransform):
    """Source records → lake tables, dead letters and counted duplicates.

    Args:
        config: a :class:`ProcessConfig`.
        batched: the input already holds batches of records, lists or packed by :func:`pack_records`
            (file sources batch as they read); otherwise records are batched here.
    """

    def __init__(self, config: ProcessConfig, batched: bool = False):
        super().__init__()
        if not isinstance(config, ProcessConfig):
            raise TypeError("ProcessEvents needs a ProcessConfig")
        self.config = config
        self.batched = batched

    def expand(self, records) -> ProcessedEvents:
        if not self.batched:
            records = records | "BatchRecords" >> beam.BatchElements(
                min_batch_size=1, max_batch_size=self.config.batch_size
            )
        parsed = records | "ParseEvents" >> beam.ParDo(_ParseBatchFn(self.config)).with_outputs(
            FAILURES, EDGES, PARSED, main=ROWS
        )
        buckets = self.config.buckets
        identity = (
            parsed[EDGES]
            | "GroupEdgesByTenant" >> beam.GroupByKey()
            | "ResolveIdentities" >> beam.ParDo(_ResolveTenantFn(buckets))
        )
        keyed = (
            {ROWS: parsed[ROWS], IDENTITY: identity}
            | "JoinIdentities" >> beam.CoGroupByKey()
            | "AssignPersons" >> beam.ParDo(_AssignPersonsFn(buckets))
        )
        grouped = keyed | "GroupByPersonBucket" >> beam.GroupByKey()
        dedupe = beam.ParDo(_DedupeAndSessionizeFn(self.config)).with_output_types(tuple[tuple[str, str, int], bytes])
        out = grouped | "DedupeAndSessionize" >> dedupe.with_outputs("duplicates", main="rows")
        lake_files = out.rows | "GroupByLakeFile" >> beam.GroupByKey()
        return ProcessedEvents(lake_files, parsed[FAILURES], out.duplicates, parsed[PARSED])
