"""Beam composites around :mod:`transforms.pipeline_core`: the same code serves batch and streaming.

``ProcessEvents`` turns source records into lake rows, dead letters and counted duplicates:

    records ─ParseEvents─▶ packed rows by node bucket ─┐
                     └─▶ identity edges ─ResolveIdentities─▶ canonical node by node bucket
                     └─▶ failures                           │
                         CoGroupByKey ─AssignPersons─▶ rows by person bucket
                         GroupByKey ─DedupeAndSessionize─▶ (tenant, date, bucket) row batches

Rows travel in batches between steps so that Beam's per-element cost is paid per batch, not per
event, and a batch crosses a shuffle as one pickle (:func:`pack_rows`): Beam's default coder
(FastPrimitivesCoder) would pickle every datetime, date and Decimal value on its own, which cost
~40 µs a row per shuffle here against ~10 µs for the packed batch.

The identity map joins the rows by a shuffle (not a side input), so the same graph works per
window in streaming; the second shuffle, keyed by a stable hash of the person, puts each person's
events (and every copy of a duplicate) on one worker.
"""

from __future__ import annotations

import datetime as dt
import pickle
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

import apache_beam as beam
from apache_beam import pvalue
from apache_beam.metrics import Metrics

from schemas.records import SourceRecord
from transforms.dedupe import dedupe_rows
from transforms.identity import own_node, resolve_components
from transforms.pipeline_core import (
    EventParser,
    ProcessConfig,
    assign_person,
    edges_of,
    parse_records,
    partition_key,
    sessionize,
    stable_bucket,
)

__all__ = ["ProcessConfig", "ProcessEvents", "ProcessedEvents"]

NAMESPACE = "livora"
ROWS, FAILURES, EDGES, IDENTITY = "rows", "failures", "edges", "identity"
PARSED = "parsed"


def pack_rows(rows: list[dict[str, Any]]) -> bytes:
    """A batch of rows as bytes for a shuffle (the same code packs and unpacks, on any runner)."""
    return pickle.dumps(rows, protocol=pickle.HIGHEST_PROTOCOL)


def unpack_rows(packed: bytes) -> list[dict[str, Any]]:
    return pickle.loads(packed)


PACK_ROWS = 1000
"""Rows per packed chunk: pickle's memo makes a larger batch cost more per row (~4 µs at 1000, ~9 at 40 000)."""


def packed_chunks(rows: list[dict[str, Any]], size: int = PACK_ROWS) -> Iterable[bytes]:
    for start in range(0, len(rows), size):
        yield pack_rows(rows[start : start + size])


pack_records = pack_rows
"""A batch of source records as bytes (what :class:`connectors.files.ReadRecordBatches` emits)."""
unpack_records = unpack_rows


class _ParseBatchFn(beam.DoFn):
    """A batch of source records → packed rows by node bucket, identity edges per tenant, failures.

    Rows leave packed from here, not as a list of dicts for a next step to key: Beam estimates the
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
        yield from _rows_by_node_bucket(rows, self.config.buckets)


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


def _rows_by_node_bucket(rows: list[dict[str, Any]], buckets: int):
    by_bucket: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        by_bucket[stable_bucket(own_node(row), buckets)].append(row)
    for bucket, part in by_bucket.items():
        for packed in packed_chunks(part):
            yield bucket, packed


class _AssignPersonsFn(beam.DoFn):
    """Person ids from the identity map, then rows keyed by a stable person bucket."""

    def __init__(self, buckets: int):
        self.buckets = buckets

    def process(self, element):
        _, grouped = element
        canonical: dict[str, dict[str, str]] = defaultdict(dict)
        for tenant, node, root in grouped[IDENTITY]:
            canonical[tenant][node] = root
        by_bucket: dict[int, list[dict[str, Any]]] = defaultdict(list)
        for packed in grouped[ROWS]:
            for row in unpack_rows(packed):
                assign_person(row, canonical.get(row["tenant_id"], {}))
                by_bucket[stable_bucket(row["person_id"], self.buckets)].append(row)
        for bucket, rows in by_bucket.items():
            for packed in packed_chunks(rows):
                yield bucket, packed


class _DedupeAndSessionizeFn(beam.DoFn):
    """All events of the persons in one bucket: drop duplicates, cut sessions, batch by partition."""

    def __init__(self, session_gap: dt.timedelta):
        self.session_gap = session_gap
        self.duplicates = Metrics.counter(NAMESPACE, "duplicates")
        self.lake_rows = Metrics.counter(NAMESPACE, "lake_rows")

    def process(self, element):
        bucket, batches = element
        unique, duplicates = dedupe_rows(row for packed in batches for row in unpack_rows(packed))
        self.duplicates.inc(len(duplicates))
        self.lake_rows.inc(len(unique))
        for key in duplicates:
            yield pvalue.TaggedOutput("duplicates", key)
        sessionize(unique, self.session_gap)
        by_partition: dict[tuple[str, str], list] = defaultdict(list)
        for row in unique:
            by_partition[partition_key(row)].append(row)
        for (tenant, date), rows in sorted(by_partition.items()):
            yield (tenant, date, bucket), rows


class ProcessedEvents:
    """The outputs of :class:`ProcessEvents`."""

    def __init__(self, row_batches, failures, duplicates, events_parsed=None):
        self.events_parsed = events_parsed
        """Events (and undecodable records) out of parsing, one int per batch: what the other three
        outputs must add up to (a run can check its totals against it)."""
        self.row_batches = row_batches
        """((tenant_id, event_date ISO, bucket), [row, ...]): ready for one lake file each."""
        self.failures = failures
        """FailedEvent per rejected record or event."""
        self.duplicates = duplicates
        """(tenant_id, message_id) per dropped duplicate copy."""

    @property
    def rows(self):
        """One lake-row dict per element (for sinks that take rows one by one)."""
        return self.row_batches | "FlattenRowBatches" >> beam.FlatMap(lambda kv: kv[1])


class ProcessEvents(beam.PTransform):
    """Source records → lake rows, dead letters and counted duplicates.

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
        out = grouped | "DedupeAndSessionize" >> beam.ParDo(
            _DedupeAndSessionizeFn(dt.timedelta(seconds=self.config.session_gap_seconds))
        ).with_outputs("duplicates", main="rows")
        return ProcessedEvents(out.rows, parsed[FAILURES], out.duplicates, parsed[PARSED])
