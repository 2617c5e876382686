"""Decode raw records (bytes) into JSON events or failed events.

A record is whatever a source hands over: a file line, a Kinesis record, a webhook body. It may hold
one JSON object (the common case, on a fast path), a JSON array of objects, NDJSON, a gzip member,
a Segment ``/v1/batch`` envelope, or a ``{"_webhook": ...}`` wrapper carrying a signed webhook.

Nothing escapes as an exception and nothing vanishes: every non-empty record yields at least one
output, each a :class:`RawEvent` or a :class:`~schemas.failures.FailedEvent` that keeps the
offending bytes for replay. JSON is parsed with ``orjson`` (several times faster than ``json``
and it rejects lone surrogates, NaN and Infinity, which would break the Parquet and Avro writers).
orjson reads an integer outside the 64-bit range as a float (a 300-digit id would become ``1e+299``):
such an event is failed with ``invalid_value`` and the path of the integer instead of losing digits.
"""

from __future__ import annotations

import json
import re
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

from schemas.failures import FailedEvent, Reason, Stage

if TYPE_CHECKING:
    from transforms.webhooks import WebhookConfig

    WebhookSettings = Mapping[str, str] | WebhookConfig | None

__all__ = [
    "MAX_DEPTH",
    "MAX_EVENT_BYTES",
    "MAX_RECORD_BYTES",
    "WEBHOOK_KEY",
    "RawEvent",
    "decode_record",
    "json_depth_exceeds",
    "plain_event",
]

MAX_EVENT_BYTES = 32 * 1024
"""Per event: Segment's own limit for one event."""
MAX_DEPTH = 32
"""JSON nesting depth of one event (the event object itself is depth 1)."""
MAX_RECORD_BYTES = 16 * 1024 * 1024
"""Per record after gunzip: a bound on what one record may expand to (zip bombs)."""

WEBHOOK_KEY = "_webhook"
"""Key of the file/Kinesis wrapper of a webhook request (see :mod:`transforms.webhooks`)."""

_BOM = b"\xef\xbb\xbf"
_UTF16_32_BOMS = (b"\xff\xfe", b"\xfe\xff")  # UTF-32 LE/BE BOMs start with these or with NUL bytes
_GZIP_MAGIC = b"\x1f\x8b"
_WHITESPACE = b" \t\r\n"
# Keys copied from a Segment /v1/batch envelope into each event that lacks them.
_BATCH_INHERITED = ("sentAt", "receivedAt", "tenantId", "tenant_id", "source", "integrations")
_ID_PATTERNS = {
    "tenant_id": re.compile(rb'"(?:tenantId|tenant_id)"\s*:\s*"([^"\\]{1,256})"'),
    "message_id": re.compile(rb'"(?:messageId|message_id)"\s*:\s*"([^"\\]{1,256})"'),
}


@dataclass(frozen=True, slots=True)
class RawEvent:
    """One decoded JSON object and its own bytes.

    ``payload`` is the original record when it was one object, the original line for NDJSON, and a
    compact re-serialisation when the event came out of an array or a batch envelope: it is what a
    dead letter keeps, so a replay sees this event alone.
    """

    payload: bytes
    data: dict
    source_ref: str | None


def _fail(
    payload: bytes,
    reason: Reason,
    message: str,
    source_ref: str | None,
    data: Any = None,
    field_path: str | None = None,
    stage: Stage = Stage.DECODE,
) -> FailedEvent:
    tenant_id = message_id = None
    if isinstance(data, dict):
        tenant_id = _id_of(data, "tenantId", "tenant_id")
        message_id = _id_of(data, "messageId", "message_id")
    elif data is None and payload and len(payload) <= MAX_RECORD_BYTES and reason is not Reason.BAD_GZIP:
        # Unparsed bytes: read the ids when they are plainly there, to help whoever replays it.
        found = {k: p.search(payload) for k, p in _ID_PATTERNS.items()}
        tenant_id = _text(found["tenant_id"])
        message_id = _text(found["message_id"])
    return FailedEvent(
        payload=payload,
        stage=stage,
        reason=reason,
        field_path=field_path,
        message=message,
        tenant_id=tenant_id,
        message_id=message_id,
        source_ref=source_ref,
    )


def _text(match: re.Match | None) -> str | None:
    if match is None:
        return None
    try:
        return match.group(1).decode("utf-8")
    except UnicodeDecodeError:
        return None


def _id_of(data: dict, *keys: str) -> str | None:
    for key in keys:
        value = data.get(key)
        if isinstance(value, str) and 0 < len(value) <= 256:
            return value
    return None


def json_depth_exceeds(value: Any, max_depth: int) -> bool:
    """True when containers nest deeper than ``max_depth`` (iterative: no recursion limit)."""
    stack = [(value, 1)] if isinstance(value, dict | list) else []
    while stack:
        node, depth = stack.pop()
        if depth > max_depth:
            return True
        if isinstance(node, dict):
            children = node.values()
        elif isinstance(node, list):
            children = node
        else:
            continue
        for child in children:
            if isinstance(child, dict | list):
                stack.append((child, depth + 1))
    return False


_INT_MIN, _INT_MAX = -(2**63), 2**64 - 1
"""The integers orjson keeps exact; beyond them it returns a float."""
_LONG_DIGITS = b"0" * 19
_DIGITS_TO_ZERO = bytes.maketrans(b"123456789", b"000000000")


def _may_hold_big_int(body: bytes) -> bool:
    """Cheap pre-check: an integer beyond 64 bits needs a run of 19+ digits (found in C, ~1 µs per event)."""
    return _LONG_DIGITS in body.translate(_DIGITS_TO_ZERO)


def _exact(body: bytes) -> Any:
    """``body`` parsed again by the standard library, whose integers are exact (only for bodies orjson took)."""
    try:
        return json.loads(body)
    except (ValueError, RecursionError):  # not expected after orjson accepted it; then nothing can be checked
        return None


def _big_int_path(value: Any, path: str = "") -> tuple[str, int] | None:
    """(dotted path, value) of the first integer outside orjson's 64-bit range, in the validator's path style."""
    stack = [(value, path)]
    while stack:
        node, where = stack.pop()
        if isinstance(node, dict):
            items = [(child, f"{where}.{key}" if where else str(key)) for key, child in node.items()]
        elif isinstance(node, list):
            items = [(child, f"{where}[{i}]") for i, child in enumerate(node)]
        else:
            if type(node) is int and not _INT_MIN <= node <= _INT_MAX:
                return where, node
            continue
        stack.extend(reversed(items))  # depth first, in document order
    return None


def _big_int_failure(payload: bytes, found: tuple[str, int], source_ref: str | None, data: Any) -> FailedEvent:
    path, number = found
    digits = len(str(abs(number)))
    return _fail(
        payload,
        Reason.INVALID_VALUE,
        f"{path or 'value'}: integer of {digits} digits is outside the 64-bit range and would lose precision "
        "(send it as a string)",
        source_ref,
        data,
        field_path=path or None,
    )


def _may_be_deep(body: bytes, max_depth: int) -> bool:
    """Cheap pre-check: nesting deeper than N needs more than N brackets (counted in C)."""
    return body.count(b"{") + body.count(b"[") > max_depth


_loads = orjson.loads


def _dumps(value: Any) -> bytes:
    return orjson.dumps(value)


def _gunzip(record: bytes, limit: int) -> bytes | str | None:
    """The decompressed bytes, None when over ``limit``, or an error text. Handles multi-member gzip."""
    out: list[bytes] = []
    total = 0
    data = record
    try:
        while data:
            inflater = zlib.decompressobj(wbits=31)
            chunk = inflater.decompress(data, limit - total + 1)
            total += len(chunk)
            if total > limit:
                return None
            out.append(chunk)
            if inflater.unconsumed_tail:
                return None  # stopped at max_length: more output pending
            if not inflater.eof:
                return "truncated gzip stream"
            data = inflater.unused_data
            if data and not data.startswith(_GZIP_MAGIC):
                if data.strip(b"\x00"):
                    return "trailing garbage after gzip stream"
                break
    except zlib.error as exc:
        return f"gzip: {exc}"
    return b"".join(out)


def _parse(body: bytes) -> tuple[Any, Reason | None, str]:
    """(value, None, '') or (None, reason, message)."""
    try:
        return orjson.loads(body), None, ""
    except orjson.JSONDecodeError as exc:
        text = str(exc)
        if "depth limit" in text:
            return None, Reason.TOO_DEEP, f"JSON nesting deeper than the parser allows ({text})"
        if body[:2] in _UTF16_32_BOMS or b"\x00" in body[:4]:
            # RFC 8259 §8.1 / RFC 4627 §3: JSON text starts with ASCII, so NUL bytes among the first four (or
            # a UTF-16/32 byte-order mark) mean UTF-16 or UTF-32, which is valid UTF-8 byte by byte when ASCII
            return None, Reason.NOT_UTF8, "UTF-16 or UTF-32 text (byte-order mark or NUL bytes): send UTF-8"
        if "UTF-8" in text:
            try:
                body.decode("utf-8")
            except UnicodeDecodeError as uexc:
                return None, Reason.NOT_UTF8, f"not valid UTF-8: {uexc}"
        return None, Reason.MALFORMED_JSON, f"malformed JSON: {text}"
    except RecursionError:  # only if a fallback parser recursed; orjson reports depth itself
        return None, Reason.TOO_DEEP, "JSON nesting too deep"


def plain_event(record: Any, max_event_bytes: int = MAX_EVENT_BYTES, max_depth: int = MAX_DEPTH) -> dict | None:
    """The object of a record that is one plain JSON event, as almost every file line and SDK request is; else None.

    The fast path of :func:`decode_record` (and of the batch parser): anything else (batches, webhook
    wrappers, arrays, gzip, integers beyond 64 bits, deep nesting, bytes orjson refuses) is None and
    takes :func:`decode_record`'s full path, which names what is wrong.
    """
    if type(record) is bytes and record[:1] == b"{" and record[-1:] == b"}" and len(record) <= max_event_bytes:
        try:
            value = _loads(record)
        except orjson.JSONDecodeError:
            return None
        if type(value) is dict and "batch" not in value and WEBHOOK_KEY not in value and not _may_hold_big_int(record):
            if _may_be_deep(record, max_depth) and json_depth_exceeds(value, max_depth):
                return None
            return value
    return None


def decode_record(
    record: bytes,
    *,
    source_ref: str | None = None,
    max_event_bytes: int = MAX_EVENT_BYTES,
    max_depth: int = MAX_DEPTH,
    webhook_secrets: WebhookSettings = None,
    max_record_bytes: int = MAX_RECORD_BYTES,
) -> list[RawEvent | FailedEvent]:
    """Split one raw record into events; every problem becomes a FailedEvent (stage ``decode``).

    Args:
        record: the raw bytes (``str``, ``bytearray`` and ``memoryview`` are accepted too).
        source_ref: where the record came from (``file:PATH:LINE``, ``kinesis:...``), copied to every output.
        max_event_bytes: a larger event is failed with ``oversize``.
        max_depth: deeper JSON nesting is failed with ``too_deep``.
        webhook_secrets: a :class:`~transforms.webhooks.WebhookConfig` (secrets, tenant bindings, replay
            window) or just the secrets mapping, for ``{"_webhook": ...}`` wrappers (see
            :func:`transforms.webhooks.verify_and_convert`); without them a wrapper fails with ``bad_signature``.
        max_record_bytes: bound on a record's (decompressed) size.
    """
    value = plain_event(record, max_event_bytes, max_depth)
    if value is not None:
        return [RawEvent(record, value, source_ref)]
    if not isinstance(record, bytes):
        if isinstance(record, str):
            record = record.encode("utf-8", "surrogatepass")
        elif isinstance(record, bytearray | memoryview):
            record = bytes(record)
        elif record is None:
            record = b""
        else:
            return [_fail(repr(record).encode(), Reason.NOT_AN_OBJECT, "record is not bytes", source_ref)]
    body = record
    if body[:2] == _GZIP_MAGIC:
        inflated = _gunzip(body, max_record_bytes)
        if inflated is None:
            return [_fail(record, Reason.OVERSIZE, f"gzip expands beyond {max_record_bytes} bytes", source_ref)]
        if isinstance(inflated, str):
            return [_fail(record, Reason.BAD_GZIP, inflated, source_ref)]
        body = inflated
    elif len(body) > max_record_bytes:
        return [_fail(record, Reason.OVERSIZE, f"record of {len(body)} bytes > {max_record_bytes}", source_ref)]
    if body[:3] == _BOM:
        body = body[3:]
    stripped = body.strip(_WHITESPACE)
    if not stripped:
        return [_fail(record, Reason.EMPTY, "empty record", source_ref)]
    if b"\n" in stripped:
        lines = _ndjson_lines(body)  # unstripped: line numbers count from the record's first line
        if lines is not None:
            return _decode_lines(lines, source_ref, max_event_bytes, max_depth, webhook_secrets)
    value, reason, message = _parse(stripped)
    return _decode_value(stripped, value, reason, message, source_ref, max_event_bytes, max_depth, webhook_secrets)


def _ndjson_lines(body: bytes) -> list[tuple[int, bytes]] | None:
    """The lines of an NDJSON body, or None when it is one multi-line (pretty-printed) JSON value.

    Called only when the whole body is not one JSON document. NDJSON is recognised by its first
    line being a complete JSON value on its own, which the first line of a pretty-printed document
    never is (it ends with '{', '[' or ',').
    """
    stripped = (line.strip(_WHITESPACE) for line in body.split(b"\n"))
    lines = [(number, line) for number, line in enumerate(stripped, 1) if line]
    if len(lines) > 1:
        _, reason, _ = _parse(lines[0][1])
        if reason is None:
            return lines
    return None


def _decode_lines(
    lines: list[tuple[int, bytes]],
    source_ref: str | None,
    max_event_bytes: int,
    max_depth: int,
    webhook_secrets: WebhookSettings,
) -> list[RawEvent | FailedEvent]:
    out: list[RawEvent | FailedEvent] = []
    for number, line in lines:
        ref = f"{source_ref}#{number}" if source_ref else f"#{number}"
        value, reason, message = _parse(line)
        out.extend(_decode_value(line, value, reason, message, ref, max_event_bytes, max_depth, webhook_secrets))
    return out


def _decode_value(
    body: bytes,
    value: Any,
    reason: Reason | None,
    message: str,
    source_ref: str | None,
    max_event_bytes: int,
    max_depth: int,
    webhook_secrets: WebhookSettings,
) -> list[RawEvent | FailedEvent]:
    """A parsed JSON document (or its parse failure) → events and failures."""
    if reason is not None:
        return [_fail(body, reason, message, source_ref)]
    exact = _exact(body) if _may_hold_big_int(body) else None
    if isinstance(value, list):
        return _decode_items(value, {}, source_ref, max_event_bytes, max_depth, "array", exact)
    if not isinstance(value, dict):
        return [_fail(body, Reason.NOT_AN_OBJECT, f"JSON {type(value).__name__} is not an event object", source_ref)]
    if WEBHOOK_KEY in value:
        return _decode_webhook(body, value, source_ref, webhook_secrets)
    batch = value.get("batch")
    if isinstance(batch, list):
        return _decode_items(batch, value, source_ref, max_event_bytes, max_depth, "batch", exact)
    if len(body) > max_event_bytes:
        return [_fail(body, Reason.OVERSIZE, f"event of {len(body)} bytes > {max_event_bytes}", source_ref, value)]
    if _may_be_deep(body, max_depth) and json_depth_exceeds(value, max_depth):
        return [_fail(body, Reason.TOO_DEEP, f"JSON nested deeper than {max_depth}", source_ref, value)]
    found = _big_int_path(exact) if exact is not None else None
    if found is not None:
        return [_big_int_failure(body, found, source_ref, value)]
    return [RawEvent(body, value, source_ref)]


def _merged(item: dict, inherited: dict, batch_context: Any) -> dict:
    """A batch item with the envelope fields it lacks (Segment's rules: the item's own keys win)."""
    if not inherited and not isinstance(batch_context, dict):
        return item
    merged = {**inherited, **item}
    if isinstance(batch_context, dict):
        own = item.get("context")
        merged["context"] = {**batch_context, **own} if isinstance(own, dict) else dict(batch_context)
    return merged


def _decode_items(
    items: list,
    envelope: dict,
    source_ref: str | None,
    max_event_bytes: int,
    max_depth: int,
    kind: str,
    exact: Any = None,
) -> list[RawEvent | FailedEvent]:
    """Items of a JSON array or a Segment batch; envelope fields are merged the way Segment does.

    ``exact`` is the whole document again with exact integers (the array, or the batch envelope), None
    when the record holds no run of digits long enough to be beyond 64 bits.
    """
    if not items:
        body = _dumps(envelope) if envelope else b"[]"
        return [_fail(body, Reason.EMPTY, f"empty {kind}", source_ref, envelope or None)]
    inherited = {k: envelope[k] for k in _BATCH_INHERITED if k in envelope}
    batch_context = envelope.get("context")
    exact_items = exact.get("batch") if isinstance(exact, dict) else exact
    if not isinstance(exact_items, list) or len(exact_items) != len(items):
        exact_items = None
    out: list[RawEvent | FailedEvent] = []
    for index, item in enumerate(items):
        ref = f"{source_ref}[{index}]" if source_ref else f"[{index}]"
        if not isinstance(item, dict):
            out.append(_fail(_dumps(item), Reason.NOT_AN_OBJECT, f"{kind} item {index} is not an object", ref))
            continue
        item = _merged(item, inherited, batch_context)
        if exact_items is not None and isinstance(exact_items[index], dict):
            exact_item = _merged(
                exact_items[index],
                {k: exact[k] for k in _BATCH_INHERITED if k in exact} if kind == "batch" else {},
                exact.get("context") if kind == "batch" else None,
            )
            found = _big_int_path(exact_item)
            if found is not None:
                # the dead letter keeps the item with its digits (orjson's copy holds the float)
                payload = json.dumps(exact_item, ensure_ascii=False, separators=(",", ":")).encode()
                out.append(_big_int_failure(payload, found, ref, item))
                continue
        payload = _dumps(item)
        if len(payload) > max_event_bytes:
            out.append(_fail(payload, Reason.OVERSIZE, f"event of {len(payload)} bytes > {max_event_bytes}", ref, item))
        elif _may_be_deep(payload, max_depth) and json_depth_exceeds(item, max_depth):
            out.append(_fail(payload, Reason.TOO_DEEP, f"JSON nested deeper than {max_depth}", ref, item))
        else:
            out.append(RawEvent(payload, item, ref))
    return out


def _decode_webhook(
    body: bytes, value: dict, source_ref: str | None, webhook_secrets: WebhookSettings
) -> list[RawEvent | FailedEvent]:
    from transforms.webhooks import verify_and_convert, webhook_request_from_wrapper

    request = webhook_request_from_wrapper(value)
    if isinstance(request, str):
        return [_fail(body, Reason.MALFORMED_JSON, request, source_ref, stage=Stage.WEBHOOK, field_path=WEBHOOK_KEY)]
    if not webhook_secrets:
        return [
            FailedEvent(
                payload=request.body,
                stage=Stage.WEBHOOK,
                reason=Reason.BAD_SIGNATURE,
                message=f"no secret configured for {request.provider} webhooks of {request.tenant_id}",
                tenant_id=request.tenant_id,
                source_ref=source_ref,
            )
        ]
    return verify_and_convert(request, webhook_secrets, source_ref=source_ref)
