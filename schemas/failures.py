"""The one failed-event record: every stage's failures, sink failures included, take this shape.

A failure is a value, not an exception: it carries the original payload bytes so that
`pipelines.replay_dead_letters` can re-inject a corrected event through the same path.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field, field_validator

from schemas import PIPELINE_VERSION
from schemas.identifiers import is_tenant_id


class Stage(StrEnum):
    DECODE = "decode"
    WEBHOOK = "webhook"
    VALIDATE = "validate"
    TRACKING_PLAN = "tracking_plan"
    NORMALIZE = "normalize"
    ENRICH = "enrich"
    SINK = "sink"


class Reason(StrEnum):
    """Reason codes: stable strings that dashboards and alerts group by."""

    NOT_UTF8 = "not_utf8"
    MALFORMED_JSON = "malformed_json"
    NOT_AN_OBJECT = "not_an_object"
    OVERSIZE = "oversize"
    TOO_DEEP = "too_deep"
    BAD_GZIP = "bad_gzip"
    EMPTY = "empty"
    BAD_SIGNATURE = "bad_signature"
    UNKNOWN_WEBHOOK = "unknown_webhook"
    TOPIC_MISMATCH = "topic_mismatch"
    STALE_DELIVERY = "stale_delivery"
    TENANT_MISMATCH = "tenant_mismatch"
    MISSING_FIELD = "missing_field"
    WRONG_TYPE = "wrong_type"
    INVALID_VALUE = "invalid_value"
    PLAN_VIOLATION = "plan_violation"
    UNKNOWN_TENANT = "unknown_tenant"
    INVALID_TENANT = "invalid_tenant"
    FUTURE_TIMESTAMP = "future_timestamp"
    BAD_TIMESTAMP = "bad_timestamp"
    UNKNOWN_CURRENCY = "unknown_currency"
    SINK_ERROR = "sink_error"


class FailedEvent(BaseModel):
    """A record that could not become a lake row, with enough context to fix and replay it."""

    model_config = ConfigDict(frozen=True)

    payload: bytes = Field(description="The original bytes as received (one event, or the undecodable record).")
    stage: Stage
    reason: Reason
    field_path: str | None = Field(
        default=None, description="Dotted path of the offending field, e.g. properties.revenue."
    )
    message: str
    tenant_id: str | None = None
    message_id: str | None = None
    source_ref: str | None = Field(
        default=None, description="Where the payload came from: file:line, shard/sequence, webhook id."
    )
    pipeline_version: str = PIPELINE_VERSION
    failed_at: dt.datetime = Field(default_factory=lambda: dt.datetime.now(dt.UTC))

    @field_validator("tenant_id", mode="before")
    @classmethod
    def _safe_tenant(cls, value: object) -> object:
        """Only a valid tenant id is kept as one (it may name a partition); a hostile one stays in the payload."""
        return value if value is None or is_tenant_id(value) else None

    def to_json_line(self) -> str:
        """A dead-letter line: payload as UTF-8 text when it is text, else base64 (flagged)."""
        record = self.model_dump(mode="json", exclude={"payload"})
        try:
            record["payload"] = self.payload.decode("utf-8")
            record["payload_encoding"] = "utf-8"
        except UnicodeDecodeError:
            record["payload"] = base64.b64encode(self.payload).decode("ascii")
            record["payload_encoding"] = "base64"
        return json.dumps(record, ensure_ascii=False, sort_keys=True)

    @classmethod
    def from_json_line(cls, line: str | bytes) -> FailedEvent:
        record = json.loads(line)
        encoding = record.pop("payload_encoding", "utf-8")
        text = record.pop("payload")
        payload = base64.b64decode(text) if encoding == "base64" else text.encode("utf-8")
        return cls(payload=payload, **record)
