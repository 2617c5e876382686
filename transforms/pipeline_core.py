"""The event-processing core as plain functions: the same code the Beam composites run.

``parse_records`` takes raw records to lake rows and failures (decode → validate → normalize →
enrich); ``stitch_and_sessionize`` assigns person and session ids to de-duplicated rows. The
benchmark's "plain loop" baseline and the Beam pipeline both call these, so the ratio between
them measures Beam's overhead and nothing else.
"""

from __future__ import annotations

import datetime as dt
import zlib
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping, MutableMapping, Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from schemas.failures import FailedEvent
from schemas.records import SourceRecord
from transforms.decode import RawEvent, decode_record
from transforms.enrich import EnrichConfig, Enricher
from transforms.identity import identity_edges, own_node, person_id_for
from transforms.normalize import normalize_event
from transforms.rows import to_lake_row
from transforms.sessions import assign_sessions
from transforms.validate import ValidEvent, validate_event


class ProcessConfig(BaseModel):
    """Everything the core needs, as plain values (picklable; no PipelineOptions)."""

    model_config = ConfigDict(frozen=True)

    tracking_plans_dir: str | None = Field(default=None, description="Directory of per-tenant tracking-plan YAML.")
    enrich: EnrichConfig = Field(default_factory=EnrichConfig)
    max_future_seconds: float = Field(default=24 * 3600, description="Tolerated clock lead over receivedAt.")
    session_gap_seconds: float = Field(default=30 * 60, description="Inactivity that ends a session.")
    buckets: int = Field(default=16, ge=1, le=4096, description="Shuffle buckets (also lake files per partition).")
    batch_size: int = Field(default=2000, ge=1, description="Records per batch between sources and the core.")
    now: dt.datetime | None = Field(
        default=None, description="Ingest time for events without receivedAt (default: wall clock)."
    )
    webhook_secrets: dict[str, str] = Field(default_factory=dict, description="provider:tenant -> webhook secret.")
    sdk_timestamp_is_original: bool = Field(
        default=True,
        description="Treat an SDK's `timestamp` (sent with `sentAt`) as the device time and skew-correct it, as Segment's API does.",
    )


def stable_bucket(key: str, buckets: int) -> int:
    """Same key, same bucket, on every worker and every run (unlike Python's salted hash)."""
    return zlib.crc32(key.encode()) % buckets


class EventParser:
    """Holds the per-worker resources (tracking plans, enricher) of :func:`parse_records`."""

    def __init__(self, config: ProcessConfig):
        self.config = config
        self._plans = None
        self._enricher = None
        self._max_future = dt.timedelta(seconds=config.max_future_seconds)
        self._secrets = config.webhook_secrets or None

    def _setup(self) -> None:
        if self._enricher is None:
            from schemas.tracking_plan import TrackingPlans

            self._plans = TrackingPlans.load(self.config.tracking_plans_dir) if self.config.tracking_plans_dir else None
            self._enricher = Enricher(self.config.enrich)

    def parse(self, record: SourceRecord, now: dt.datetime) -> Iterator[dict[str, Any] | FailedEvent]:
        """One source record → lake rows (without person/session) and failures."""
        if self._enricher is None:
            self._setup()
        max_future, secrets = self._max_future, self._secrets
        for raw in decode_record(record.payload, source_ref=record.source_ref, webhook_secrets=secrets):
            if isinstance(raw, FailedEvent):
                yield raw
                continue
            if record.received_at is not None and "receivedAt" not in raw.data:
                raw = RawEvent(raw.payload, {**raw.data, "receivedAt": record.received_at.isoformat()}, raw.source_ref)
            valid = validate_event(raw, self._plans)
            if isinstance(valid, ValidEvent):
                valid = normalize_event(
                    valid,
                    now=now,
                    max_future=max_future,
                    sdk_timestamp_is_original=self.config.sdk_timestamp_is_original,
                )
            if not isinstance(valid, ValidEvent):
                yield valid
                continue
            enriched = self._enricher.enrich(valid)
            yield enriched if isinstance(enriched, FailedEvent) else to_lake_row(valid, enriched)


def parse_records(
    records: Iterable[SourceRecord], parser: EventParser, now: dt.datetime | None = None
) -> tuple[list[dict[str, Any]], list[FailedEvent]]:
    now = now or parser.config.now or dt.datetime.now(dt.UTC)
    rows, failures = [], []
    for record in records:
        for out in parser.parse(record, now):
            (failures if isinstance(out, FailedEvent) else rows).append(out)
    return rows, failures


def edges_of(rows: Iterable[Mapping]) -> dict[str, set[tuple[str, str]]]:
    """Identity edges per tenant (a set: the same link asserted by many events counts once)."""
    edges: dict[str, set[tuple[str, str]]] = defaultdict(set)
    for row in rows:
        found = identity_edges(row)
        if found:
            edges[row["tenant_id"]].update(found)
    return edges


def assign_person(row: MutableMapping, canonical: Mapping[str, str]) -> None:
    node = own_node(row)
    row["person_id"] = person_id_for(row["tenant_id"], canonical.get(node, node))


def sessionize(rows: Sequence[MutableMapping], gap: dt.timedelta) -> None:
    """Sessions per person over rows that hold all of each person's events."""
    by_person: dict[tuple[str, str], list[MutableMapping]] = defaultdict(list)
    for row in rows:
        by_person[(row["tenant_id"], row["person_id"])].append(row)
    for person_rows in by_person.values():
        assign_sessions(person_rows, gap)


def partition_key(row: Mapping) -> tuple[str, str]:
    return (row["tenant_id"], row["event_date"].isoformat())


def process_in_memory(
    records: Iterable[SourceRecord], config: ProcessConfig
) -> tuple[list[dict[str, Any]], list[FailedEvent], list[tuple[str, str]]]:
    """The whole core in one process, no Beam: rows (with person and session), failures, duplicates.

    What :class:`transforms.composites.ProcessEvents` computes, step for step; the benchmark's
    baseline and the reference its tests compare the Beam pipeline against.
    """
    from transforms.dedupe import dedupe_rows
    from transforms.identity import resolve_components

    rows, failures = parse_records(records, EventParser(config))
    identity = {tenant: resolve_components(sorted(edges)) for tenant, edges in edges_of(rows).items()}
    for row in rows:
        assign_person(row, identity.get(row["tenant_id"], {}))
    unique, duplicates = dedupe_rows(rows)
    sessionize(unique, dt.timedelta(seconds=config.session_gap_seconds))
    return unique, failures, duplicates
