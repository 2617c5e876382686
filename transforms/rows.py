"""Assemble a lake row (schemas.lake.LakeEvent fields) from a validated event and its enrichment."""

from __future__ import annotations

import datetime as dt
import json
from typing import TYPE_CHECKING, Any

from schemas import PIPELINE_VERSION, SCHEMA_VERSION

if TYPE_CHECKING:
    from transforms.validate import ValidEvent

SOURCE_REF = "_source_ref"
"""Private key carried until the write (dedupe tie-break, lineage); not a lake column."""


def to_lake_row(valid: ValidEvent, enrichment: dict[str, Any]) -> dict[str, Any]:
    """The lake row of one event; identity (person_id) and session_id are filled later."""
    ev = valid.event
    ts = ev.timestamp
    row = {
        "tenant_id": ev.tenant_id,
        "event_date": ts.astimezone(dt.UTC).date(),
        "message_id": ev.message_id,
        "type": ev.type.value,
        "event": ev.event,
        "name": ev.name,
        "source": ev.source,
        "user_id": ev.user_id,
        "anonymous_id": ev.anonymous_id,
        "previous_id": ev.previous_id,
        "group_id": ev.group_id,
        "person_id": None,
        "session_id": None,
        "timestamp": ts,
        "original_timestamp": ev.original_timestamp,
        "sent_at": ev.sent_at,
        "received_at": ev.received_at,
        "plan_violations": json.dumps(list(valid.violations)) if valid.violations else None,
        "schema_version": SCHEMA_VERSION,
        "pipeline_version": PIPELINE_VERSION,
        SOURCE_REF: valid.source_ref,
    }
    row.update(enrichment)
    return row
