"""Beam composites around :mod:`transforms.pipeline_core`: the same code serves batch and streaming.

``ProcessEvents`` turns source records into lake tables, dead letters and counted duplicates:

    records ─ParseEvents─▶ key columns by node bucket ─┐
               │     └─▶ identity edges ─ResolveIdentities─▶ canonical node by node bucket
               │     └─▶ failures                           │
               │         CoGroupByKey ─AssignPersons─▶ key columns by person bucket
               │         GroupByKey ─DedupeAndSessionize─▶ person and session ids by lake file
               └─▶ full rows by lake file ───────────────────┐│
                         CoGroupByKey ─AttachIds─▶ one table per lake file (survivors only)

Parsing is per event; from there rows travel as Arrow tables (:mod:`transforms.event_tables`) and
cross every shuffle as Arrow IPC bytes: a copy of column buffers instead of Beam's default coder
pickling every datetime, date and Decimal of every row (~40 µs a row per shuffle measured here).

Full rows (~850 bytes each) are shuffled once, straight to their lake file ((tenant, date, hash of
message id): known at parse time). Identity, dedupe and sessions only need a few key columns
(:data:`transforms.event_tables.KEY_COLUMNS`), which take the two shuffles they need: the identity
map joins them by a shuffle (not a side input), so the same graph works per window in streaming;
the second, keyed by a stable hash of the person, puts each person's events (and every copy of a
duplicate) on one worker. Their result, the ids of each surviving row, meets the full rows in
their lake file. Parsing holds a bundle's full rows (up to :data:`HOLD_ROWS`) and splits them by
lake file once: splitting every 2 000-record batch made chunks of a few rows whose per-column
costs dominated.
"""

from __future__ import annotations

import datetime as dt
import pickle
from collections import defaultdict

import apache_beam as beam
import pyarrow as pa
from apache_beam import pvalue
from apache_beam.metrics import Metrics
from apache_beam.utils.windowed_value import WindowedValue

from schemas.records import SourceRecord
from transforms.dedupe import dedupe_table
from transforms.enrich import Enricher
from transforms.event_tables import (
    ATTRIBUTE_COLUMNS,
    KEY_COLUMNS,
    NODE,
    assign_person_ids,
    attach_ids,
    from_ipc,
    node_buckets,
    person_buckets,
    split_by_bucket,
    split_by_lake_file,
    stable_bucket,
    table_rows,
    to_ipc,
)
from transforms.identity import resolve_components
from transforms.pipeline_core import EventParser, ProcessConfig, edges_of_table, parse_to_table
from transforms.sessions import sessionize_table

__all__ = ["ProcessConfig", "ProcessEvents", "ProcessedEvents"]

NAMESPACE = "livora"
ROWS, FAILURES, EDGES, IDENTITY = "rows", "failures", "edges", "identity"
FULL_ROWS, IDS = "full_rows", "ids"
HOLD_ROWS = 100_000
"""Parsed full rows held per bundle before they are split by lake file and sent (~100 MB of Arrow)."""
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

    def start_bundle(self):
        self._held: dict = defaultdict(list)  # window -> full-row tables not yet sent to their lake files
        self._held_rows = 0

    def _release(self):
        """Held full rows, split by lake file once per window (not per batch: small chunks cost per column)."""
        held, self._held, self._held_rows = self._held, defaultdict(list), 0
        for win, tables in held.items():
            for file_key, part in split_by_lake_file(
                pa.concat_tables(tables), self.config.files_per_partition, self.config.input_tags
            ):
                yield pvalue.TaggedOutput(
                    FULL_ROWS, WindowedValue((file_key, to_ipc(part)), win.max_timestamp(), [win])
                )

    def finish_bundle(self):
        yield from self._release()

    def process(self, batch: list[SourceRecord] | bytes, win=beam.DoFn.WindowParam):
        if isinstance(batch, bytes):
            batch = unpack_records(batch)
        table, failures = parse_to_table(batch, self.parser)
        self.records_in.inc(len(batch))
        self.rows_parsed.inc(table.num_rows)
        yield pvalue.TaggedOutput(PARSED, table.num_rows + len(failures))
        for failure in failures:
            Metrics.counter(NAMESPACE, f"dead_letter.{failure.stage}.{failure.reason}").inc()
            yield pvalue.TaggedOutput(FAILURES, failure)
        for tenant, edges in edges_of_table(table).items():
            yield pvalue.TaggedOutput(EDGES, (tenant, sorted(edges)))
        if table.num_rows:
            self._held[win].append(table.drop_columns([NODE]))
            self._held_rows += table.num_rows
            keys = table.select(KEY_COLUMNS)
            for bucket, part in split_by_bucket(keys, node_buckets(keys, self.config.buckets)):
                yield bucket, to_ipc(part)
            if self._held_rows >= HOLD_ROWS:
                yield from self._release()


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
    """The key columns of all events of the persons in one bucket: drop duplicates, cut sessions, and
    send each surviving row's ids to its lake file."""

    def __init__(self, config: ProcessConfig):
        self.session_gap = dt.timedelta(seconds=config.session_gap_seconds)
        self.config = config
        self.duplicates = Metrics.counter(NAMESPACE, "duplicates")
        self.lake_rows = Metrics.counter(NAMESPACE, "lake_rows")

    def process(self, element):
        _, chunks = element
        unique, duplicates = dedupe_table(from_ipc(chunks))
        self.duplicates.inc(len(duplicates))
        self.lake_rows.inc(unique.num_rows)
        for key in duplicates:
            yield pvalue.TaggedOutput("duplicates", key)
        ids = sessionize_table(unique, self.session_gap)
        for file_key, part in split_by_lake_file(ids, self.config.files_per_partition, self.config.input_tags):
            yield file_key, to_ipc(part.select(ATTRIBUTE_COLUMNS))


class _AttachIdsFn(beam.DoFn):
    """One lake file's rows joined with the ids computed for its surviving rows."""

    def process(self, element):
        file_key, grouped = element
        rows = attach_ids(from_ipc(grouped[FULL_ROWS]), from_ipc(grouped[IDS]))
        if rows.num_rows:
            yield file_key, [to_ipc(rows)]


class ProcessedEvents:
    """The outputs of :class:`ProcessEvents`."""

    def __init__(self, lake_files, failures, duplicates, events_parsed=None):
        self.events_parsed = events_parsed
        """Events (and undecodable records) out of parsing, one int per batch: what the other three
        outputs must add up to (a run can check its totals against it)."""
        self.lake_files = lake_files
        """((tenant_id, event_date ISO, file shard), [Arrow IPC bytes, ...]): the surviving rows of one lake
        file, with person and session ids, in :data:`transforms.event_tables.WORK_SCHEMA` less ``_node``.
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
        Enricher(config.enrich, check_files=False)  # fail when the graph is built: no PII secret, a short salt
        self.config = config
        self.batched = batched

    def expand(self, records) -> ProcessedEvents:
        if not self.batched:
            records = records | "BatchRecords" >> beam.BatchElements(
                min_batch_size=1, max_batch_size=self.config.batch_size
            )
        parsed = records | "ParseEvents" >> beam.ParDo(_ParseBatchFn(self.config)).with_outputs(
            FAILURES, EDGES, PARSED, FULL_ROWS, main=ROWS
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
        dedupe = beam.ParDo(_DedupeAndSessionizeFn(self.config)).with_output_types(
            tuple[tuple[str, str, int | str], bytes]
        )
        out = grouped | "DedupeAndSessionize" >> dedupe.with_outputs("duplicates", main="rows")
        lake_files = (
            {FULL_ROWS: parsed[FULL_ROWS], IDS: out.rows}
            | "JoinIdsByLakeFile" >> beam.CoGroupByKey()
            | "AttachIds" >> beam.ParDo(_AttachIdsFn())
        )
        return ProcessedEvents(lake_files, parsed[FAILURES], out.duplicates, parsed[PARSED])
