"""Segment HTTP Tracking API requests → one Kinesis record per event (pure functions, no IO).

Same request shapes as ``api.segment.io``: ``/v1/track`` (``identify``, ``page``, ``screen``,
``group``, ``alias``) take one event, ``/v1/batch`` and ``/v1/import`` take ``{"batch": [...]}`` with
optional batch-level ``context``, ``integrations`` and ``sentAt``. The write key arrives as the HTTP
Basic user name or as ``writeKey`` in the body (browsers send ``text/plain`` bodies with the key
inside, avoiding a CORS preflight). Limits are Segment's: 32 KB per event, 500 KB per batch request,
answered ``400`` like Segment does.

What the collector adds to each event: ``tenantId`` (from the write key; an event that names another
tenant refuses the whole request), ``messageId`` when absent, ``receivedAt`` always (the collector's own
clock, as Segment's servers do: a client-sent value would let the sender steer the clock-skew
correction ``receivedAt - (sentAt - originalTimestamp)``, so it is dropped), the batch's
``sentAt``/``context``/``integrations`` where the event has none, ``context.ip`` from the connection
when absent; ``writeKey`` is removed (it must not reach the lake).
"""

from __future__ import annotations

import base64
import binascii
import uuid
from collections.abc import Mapping
from typing import Any

import orjson

__all__ = [
    "BATCH_KINDS",
    "MAX_BATCH_BYTES",
    "MAX_EVENT_BYTES",
    "SEGMENT_TYPES",
    "Rejected",
    "basic_auth_user",
    "kind_of",
    "normalise_request",
    "partition_key",
]

SEGMENT_TYPES = frozenset({"track", "identify", "page", "screen", "group", "alias"})
BATCH_KINDS = frozenset({"batch", "import"})
# analytics.js sends to the one-letter paths
_SHORT = {"t": "track", "i": "identify", "p": "page", "s": "screen", "g": "group", "a": "alias", "b": "batch"}
MAX_EVENT_BYTES = 32 * 1024
MAX_BATCH_BYTES = 500 * 1024
MAX_PARTITION_KEY = 256


class Rejected(Exception):
    """A request refused as a whole: ``reason`` is the metric label, ``status`` the HTTP answer."""

    def __init__(self, reason: str, status: int, message: str):
        super().__init__(message)
        self.reason = reason
        self.status = status


def kind_of(path_kind: str) -> str | None:
    """``track``/``batch``/… for a ``/v1/<kind>`` path segment (short forms too); None when unknown."""
    kind = _SHORT.get(path_kind, path_kind)
    return kind if kind in SEGMENT_TYPES or kind in BATCH_KINDS else None


def basic_auth_user(header: str | None) -> str | None:
    """The user name of an ``Authorization: Basic`` header (Segment's write key), else None."""
    if not header:
        return None
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, ValueError):
        return None
    return decoded.partition(":")[0] or None


def partition_key(event: Mapping[str, Any]) -> str:
    """anonymousId, else userId, else messageId: one person's events stay on one shard, in order."""
    for field in ("anonymousId", "userId", "messageId"):
        value = event.get(field)
        if isinstance(value, str | int) and not isinstance(value, bool) and str(value):
            return str(value)[:MAX_PARTITION_KEY]
    return uuid.uuid4().hex


def _events_of(kind: str, body: dict) -> tuple[list[Any], dict]:
    if kind in BATCH_KINDS:
        batch = body.get("batch")
        if not isinstance(batch, list):
            raise Rejected("invalid_event", 400, '"batch" must be an array of events')
        shared = {k: body[k] for k in ("context", "integrations", "sentAt") if k in body}
        return batch, shared
    return [body], {}


def normalise_request(
    kind: str, body: Any, *, tenant_id: str, received_at: str, client_ip: str | None = None
) -> list[tuple[str, bytes]]:
    """The (partition key, JSON bytes) records of one request, or :class:`Rejected` for the whole request.

    Args:
        kind: the endpoint (``track`` … ``alias``, ``batch``, ``import``).
        body: the parsed JSON body.
        tenant_id: the tenant the write key belongs to.
        received_at: the arrival time (ISO 8601); replaces any ``receivedAt`` the client sent.
        client_ip: the sender's address, for events without ``context.ip``.
    """
    if not isinstance(body, dict):
        raise Rejected("invalid_event", 400, "body must be a JSON object")
    events, shared = _events_of(kind, body)
    shared_context = shared.get("context") if isinstance(shared.get("context"), dict) else None
    records: list[tuple[str, bytes]] = []
    for index, item in enumerate(events):
        where = f"batch[{index}]" if kind in BATCH_KINDS else "event"
        if not isinstance(item, dict):
            raise Rejected("invalid_event", 400, f"{where} is not a JSON object")
        event = dict(item)
        if kind in BATCH_KINDS:
            if event.get("type") not in SEGMENT_TYPES:
                raise Rejected("invalid_event", 400, f"{where}.type must be one of {', '.join(sorted(SEGMENT_TYPES))}")
        else:
            event["type"] = kind
        event.pop("writeKey", None)
        event.pop("write_key", None)
        for field in ("tenantId", "tenant_id"):
            own = event.pop(field, None)
            if own is not None and own != tenant_id:
                raise Rejected("tenant_mismatch", 400, f"{where} names another tenant than its write key's")
        event["tenantId"] = tenant_id
        message_id = event.get("messageId")
        if not (isinstance(message_id, str) and message_id):
            event["messageId"] = f"livora-{uuid.uuid4()}"
        event.pop("received_at", None)  # the schema's other spelling: neither may come from the client
        event["receivedAt"] = received_at
        if "sentAt" in shared:
            event.setdefault("sentAt", shared["sentAt"])
        if "integrations" in shared:
            event.setdefault("integrations", shared["integrations"])
        context = event.get("context")
        if shared_context is not None:
            context = {**shared_context, **context} if isinstance(context, dict) else dict(shared_context)
        if client_ip and (context is None or isinstance(context, dict)) and not (context or {}).get("ip"):
            context = {**(context or {}), "ip": client_ip}
        if context is not None:
            event["context"] = context
        data = orjson.dumps(event)
        if len(data) > MAX_EVENT_BYTES:
            raise Rejected("oversize", 400, f"{where} is {len(data)} bytes, over Segment's {MAX_EVENT_BYTES} per event")
        records.append((partition_key(event), data))
    return records
