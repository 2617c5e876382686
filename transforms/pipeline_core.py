"""The event-processing core as plain functions: the same code the Beam composites run.

``parse_records`` takes raw records to lake rows and failures (decode → validate → normalize →
enrich) one event at a time; after it rows travel as Arrow tables (:mod:`transforms.event_tables`),
which get person ids, lose duplicates and get sessions column-wise (``process_in_memory``). The
benchmark's "plain loop" baseline and the Beam pipeline both call these, so the ratio between
them measures Beam's overhead and nothing else.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, Literal

import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, ConfigDict, Field

from schemas.failures import FailedEvent
from schemas.records import SourceRecord
from transforms.decode import RawEvent, decode_record
from transforms.dedupe import dedupe_table
from transforms.enrich import EnrichConfig, Enricher
from transforms.event_tables import (
    WORK_SCHEMA,
    assign_person_ids,
    events_table,
    split_by_lake_file,
)
from transforms.identity import identity_edges, resolve_components
from transforms.normalize import normalize_event
from transforms.rows import to_lake_row
from transforms.sessions import sessionize_table
from transforms.tenancy import TenantAssigner
from transforms.validate import ValidEvent, validate_event
from transforms.webhooks import WebhookConfig


class ProcessConfig(BaseModel):
    """Everything the core needs, as plain values (picklable; no PipelineOptions)."""

    model_config = ConfigDict(frozen=True)

    tracking_plans_dir: str | None = Field(default=None, description="Directory of per-tenant tracking-plan YAML.")
    enrich: EnrichConfig = Field(default_factory=EnrichConfig)
    max_future_seconds: float = Field(default=24 * 3600, description="Tolerated clock lead over receivedAt.")
    session_gap_seconds: float = Field(default=30 * 60, description="Inactivity that ends a session.")
    buckets: int = Field(default=16, ge=1, le=4096, description="Shuffle buckets: parallelism of the per-person steps.")
    files_per_partition: int = Field(
        default=1, ge=1, le=4096, description="Lake files per (tenant, date) partition per run (split by message id)."
    )
    batch_size: int = Field(default=2000, ge=1, description="Records per batch between sources and the core.")
    now: dt.datetime | None = Field(
        default=None, description="Ingest time for events without receivedAt (default: wall clock)."
    )
    default_tenant: str | None = Field(
        default=None, description="Tenant of events that carry no tenantId (backfills of a brand's raw export)."
    )
    write_keys: dict[str, str] = Field(
        default_factory=dict, description="Segment writeKey -> tenant, for events that carry a writeKey."
    )
    input_tags: dict[str, str] = Field(
        default_factory=dict,
        description="Source file path -> content tag: each input file's rows go to lake files named after "
        "its content (idempotent reruns over growing or renamed inputs).",
    )
    webhooks: WebhookConfig = Field(
        default_factory=WebhookConfig,
        description="Webhook secrets (provider:tenant -> secret), shop/account bindings and the replay window.",
    )
    parse_mode: Literal["batch", "per_event"] = Field(
        default="batch",
        description="batch: the batch-at-a-time parse step (transforms.batch_parse); per_event: one event at a "
        "time, the reference it is tested against and the benchmark's baseline. Same rows, same failures.",
    )
    sdk_timestamp_is_original: bool = Field(
        default=True,
        description="Treat an SDK's `timestamp` (sent with `sentAt`) as the device time and skew-correct it, as Segment's API does.",
    )


class EventParser:
    """Holds the per-worker resources (tracking plans, enricher) of :func:`parse_records`."""

    def __init__(self, config: ProcessConfig):
        self.config = config
        self._plans = None
        self._enricher = None
        self._max_future = dt.timedelta(seconds=config.max_future_seconds)
        self._secrets = config.webhooks if config.webhooks.secrets else None
        self._tenants = TenantAssigner(config.default_tenant, config.write_keys) or None

    def _setup(self) -> None:
        if self._enricher is None:
            from schemas.tracking_plan import TrackingPlans

            self._plans = TrackingPlans.load(self.config.tracking_plans_dir) if self.config.tracking_plans_dir else None
            self._enricher = Enricher(self.config.enrich)

    @property
    def plans(self) -> Any:
        """The tenants' tracking plans (None without a plans directory)."""
        if self._enricher is None:
            self._setup()
        return self._plans

    @property
    def tenants(self) -> TenantAssigner | None:
        """Tenant assignment by default tenant / writeKey (None when neither is configured)."""
        return self._tenants

    def resources(self) -> Any:
        """The enricher's per-worker resources (parsers, caches, rates, compiled PII policies)."""
        if self._enricher is None:
            self._setup()
        return self._enricher.resources()

    def parse_table(self, records: Sequence[SourceRecord], now: dt.datetime) -> tuple[pa.Table, list[FailedEvent]]:
        """Records -> (rows in ``WORK_SCHEMA``, failures), a batch at a time (:mod:`transforms.batch_parse`)."""
        from transforms.batch_parse import parse_table

        return parse_table(self, records, now)

    def parse_into(
        self, records: Iterable[SourceRecord], now: dt.datetime, rows: list[dict[str, Any]], failures: list[FailedEvent]
    ) -> None:
        """Source records → lake rows (without person/session) appended to ``rows``, failures to ``failures``.

        One loop over a batch, no generator per record: this is the per-event hot path.
        """
        if self._enricher is None:
            self._setup()
        max_future, secrets, plans, enrich = self._max_future, self._secrets, self._plans, self._enricher.enrich
        tenants = self._tenants
        sdk_original = self.config.sdk_timestamp_is_original
        add_row, add_failure = rows.append, failures.append
        for record in records:
            for raw in decode_record(record.payload, source_ref=record.source_ref, webhook_secrets=secrets):
                if isinstance(raw, FailedEvent):
                    add_failure(raw)
                    continue
                if tenants is not None:
                    raw = tenants.assign(raw)
                    if isinstance(raw, FailedEvent):
                        add_failure(raw)
                        continue
                if record.received_at is not None and "receivedAt" not in raw.data:
                    data = {**raw.data, "receivedAt": record.received_at.isoformat()}
                    raw = RawEvent(raw.payload, data, raw.source_ref)
                valid = validate_event(raw, plans)
                if isinstance(valid, ValidEvent):
                    valid = normalize_event(
                        valid, now=now, max_future=max_future, sdk_timestamp_is_original=sdk_original
                    )
                if not isinstance(valid, ValidEvent):
                    add_failure(valid)
                    continue
                enriched = enrich(valid)
                if isinstance(enriched, FailedEvent):
                    add_failure(enriched)
                else:
                    add_row(to_lake_row(valid, enriched))


def parse_records(
    records: Iterable[SourceRecord], parser: EventParser, now: dt.datetime | None = None
) -> tuple[list[dict[str, Any]], list[FailedEvent]]:
    """Decode → validate → normalize → enrich a batch of records: (lake rows, failures)."""
    rows: list[dict[str, Any]] = []
    failures: list[FailedEvent] = []
    parser.parse_into(records, now or parser.config.now or dt.datetime.now(dt.UTC), rows, failures)
    return rows, failures


def parse_to_table(
    records: Sequence[SourceRecord], parser: EventParser, now: dt.datetime | None = None
) -> tuple[pa.Table, list[FailedEvent]]:
    """Records -> (rows in ``WORK_SCHEMA``, failures) by the configured ``parse_mode``: what the pipeline runs."""
    now = now or parser.config.now or dt.datetime.now(dt.UTC)
    if parser.config.parse_mode == "batch":
        return parser.parse_table(records, now)
    rows, failures = parse_records(records, parser, now)
    return events_table(rows), failures


def edges_of_table(table: pa.Table) -> dict[str, set[tuple[str, str]]]:
    """:func:`edges_of` for a table: only rows that can assert a link are turned into Python values."""
    links = table.select(["tenant_id", "type", "user_id", "anonymous_id", "previous_id"])
    may_link = pc.or_(
        pc.and_(pc.is_valid(links["user_id"]), pc.is_valid(links["anonymous_id"])),
        pc.equal(links["type"], "alias"),
    )
    return edges_of(links.filter(pc.fill_null(may_link, False)).to_pylist())


def edges_of(rows: Iterable[Mapping]) -> dict[str, set[tuple[str, str]]]:
    """Identity edges per tenant (a set: the same link asserted by many events counts once)."""
    edges: dict[str, set[tuple[str, str]]] = defaultdict(set)
    for row in rows:
        found = identity_edges(row)
        if found:
            edges[row["tenant_id"]].update(found)
    return edges


def process_in_memory(
    records: Sequence[SourceRecord], config: ProcessConfig
) -> tuple[pa.Table, list[FailedEvent], list[tuple[str, str]]]:
    """The whole core in one process, no Beam: rows (with person and session), failures, duplicates.

    What :class:`transforms.composites.ProcessEvents` computes, step for step (parsing in batches of
    ``batch_size`` records, then the same table functions); the benchmark's baseline and the
    reference its tests compare the Beam pipeline against.
    """
    parser, now = EventParser(config), config.now or dt.datetime.now(dt.UTC)
    tables, failures, edges = [], [], defaultdict(set)
    for start in range(0, len(records), config.batch_size):
        parsed, failed = parse_to_table(records[start : start + config.batch_size], parser, now)
        failures += failed
        for tenant, found in edges_of_table(parsed).items():
            edges[tenant].update(found)
        tables.append(parsed)
    identity = {tenant: resolve_components(sorted(found)) for tenant, found in edges.items()}
    table = assign_person_ids(pa.concat_tables(tables) if tables else WORK_SCHEMA.empty_table(), identity)
    unique, duplicates = dedupe_table(table)
    return sessionize_table(unique, dt.timedelta(seconds=config.session_gap_seconds)), failures, duplicates


def lake_files(table: pa.Table, config: ProcessConfig) -> Iterator[tuple[tuple[str, str, int | str], pa.Table]]:
    """((tenant_id, event_date ISO, file shard), rows) for every lake file a processed table makes."""
    return split_by_lake_file(table, config.files_per_partition, config.input_tags)
