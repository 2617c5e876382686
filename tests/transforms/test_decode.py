"""decode_record: every record shape, every bad-input kind, and properties over arbitrary bytes."""

from __future__ import annotations

import gzip
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas.failures import FailedEvent, Reason, Stage
from transforms.decode import MAX_DEPTH, MAX_EVENT_BYTES, RawEvent, decode_record, json_depth_exceeds


def event(i: int = 1, **extra) -> dict:
    return {
        "type": "track",
        "event": "Product Viewed",
        "messageId": f"m-{i}",
        "tenantId": "acme-in",
        "anonymousId": f"anon-{i}",
        "properties": {"product_id": "ACM-101", "price": 1899},
        **extra,
    }


def compact(value) -> bytes:
    """Independent compact JSON (what a re-serialised array item must equal)."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def nested(depth: int) -> dict:
    """An event whose deepest container is at ``depth`` (the event object itself is depth 1)."""
    inner: dict = {}
    for _ in range(depth - 2):
        inner = {"x": inner}
    return event(properties=inner)


def only_failure(outputs) -> FailedEvent:
    assert len(outputs) == 1 and isinstance(outputs[0], FailedEvent), outputs
    return outputs[0]


# --- good shapes ---------------------------------------------------------------------------------


def test_single_object_keeps_original_bytes():
    body = b'{"type": "page", "messageId": "m-1",  "tenantId": "acme-in", "anonymousId": "a"}'
    [out] = decode_record(body, source_ref="file:x:1")
    assert isinstance(out, RawEvent)
    assert out.payload is body or out.payload == body
    assert out.data == json.loads(body)
    assert out.source_ref == "file:x:1"


def test_json_array_items_become_events_with_compact_payloads():
    items = [event(1), event(2, properties={"name": "Kurta — सेट"})]
    outs = decode_record(json.dumps(items, indent=2).encode(), source_ref="s")
    assert [o.data for o in outs] == items
    assert [o.payload for o in outs] == [compact(i) for i in items]
    assert [o.source_ref for o in outs] == ["s[0]", "s[1]"]


def test_ndjson_lines_are_separate_events_and_blank_lines_are_skipped():
    lines = [json.dumps(event(i)) for i in range(3)]
    body = ("\n".join([lines[0], "", lines[1], "   ", lines[2]]) + "\n").encode()
    outs = decode_record(body, source_ref="k")
    assert [o.data["messageId"] for o in outs] == ["m-0", "m-1", "m-2"]
    assert [o.payload for o in outs] == [line.encode() for line in lines]
    assert all(isinstance(o, RawEvent) for o in outs)


def test_crlf_ndjson():
    body = (json.dumps(event(1)) + "\r\n" + json.dumps(event(2)) + "\r\n").encode()
    assert [o.data["messageId"] for o in decode_record(body)] == ["m-1", "m-2"]


def test_ndjson_bad_line_fails_alone():
    body = (
        json.dumps(event(1)) + "\n" + '{"type": "track", "messageId": "m-2", "tenant' + "\n" + json.dumps(event(3))
    ).encode()
    outs = decode_record(body, source_ref="f")
    assert [type(o) for o in outs] == [RawEvent, FailedEvent, RawEvent]
    assert outs[1].reason is Reason.MALFORMED_JSON
    assert outs[1].message_id == "m-2"  # read from the broken bytes
    assert outs[1].source_ref == "f#2"


def test_pretty_printed_object_is_one_event():
    outs = decode_record(json.dumps(event(7), indent=2).encode())
    assert len(outs) == 1 and isinstance(outs[0], RawEvent) and outs[0].data == event(7)


def test_gzip_single_and_multi_member():
    one = gzip.compress(json.dumps(event(1)).encode())
    assert decode_record(one)[0].data == event(1)
    two = gzip.compress((json.dumps(event(1)) + "\n").encode()) + gzip.compress(json.dumps(event(2)).encode())
    assert [o.data for o in decode_record(two)] == [event(1), event(2)]


def test_utf8_bom_is_ignored():
    [out] = decode_record(b"\xef\xbb\xbf" + json.dumps(event(1)).encode())
    assert out.data == event(1)


def test_segment_batch_envelope_merges_shared_fields():
    envelope = {
        "batch": [
            event(1, context={"ip": "1.2.3.4"}),
            event(2, sentAt="2024-05-01T10:00:05Z"),
            {**event(3), "type": "identify", "traits": {"email": "a@b.in"}},
        ],
        "sentAt": "2024-05-01T10:00:00Z",
        "context": {"library": {"name": "analytics-python", "version": "2.3"}, "ip": "9.9.9.9"},
        "writeKey": "secret",
    }
    outs = decode_record(json.dumps(envelope).encode(), source_ref="api")
    assert all(isinstance(o, RawEvent) for o in outs) and len(outs) == 3
    first, second, third = (o.data for o in outs)
    # the event's own context keys win; the batch context fills the rest
    assert first["context"] == {"library": {"name": "analytics-python", "version": "2.3"}, "ip": "1.2.3.4"}
    assert first["sentAt"] == "2024-05-01T10:00:00Z"
    assert second["sentAt"] == "2024-05-01T10:00:05Z"  # own sentAt kept
    assert third["traits"] == {"email": "a@b.in"} and third["context"]["ip"] == "9.9.9.9"
    assert "writeKey" not in first  # credentials are not copied into events
    assert outs[0].payload == compact(first)


def test_array_of_exactly_max_event_bytes_items():
    pad = "x" * (MAX_EVENT_BYTES - len(compact(event(1, properties={"p": ""}))))
    item = event(1, properties={"p": pad})
    assert len(compact(item)) == MAX_EVENT_BYTES
    assert isinstance(decode_record(json.dumps([item]).encode())[0], RawEvent)
    item["properties"]["p"] += "y"
    assert only_failure(decode_record(json.dumps([item]).encode())).reason is Reason.OVERSIZE


def test_depth_limit_is_inclusive():
    ok = json.dumps(nested(MAX_DEPTH)).encode()
    assert isinstance(decode_record(ok)[0], RawEvent)
    deep = json.dumps(nested(MAX_DEPTH + 1)).encode()
    failure = only_failure(decode_record(deep))
    assert failure.reason is Reason.TOO_DEEP
    assert failure.message_id == "m-1" and failure.tenant_id == "acme-in"


def test_json_depth_exceeds_counts_lists_and_objects():
    # object (1) > list (2) > object (3) > list (4)
    assert not json_depth_exceeds({"a": [1, {"b": []}]}, 4)
    assert json_depth_exceeds({"a": [1, {"b": []}]}, 3)
    assert not json_depth_exceeds({"a": 1, "b": "x"}, 1)
    assert not json_depth_exceeds(5, 0)


# --- bad inputs ----------------------------------------------------------------------------------

GOOD = json.dumps(event(1)).encode()
BOMB = gzip.compress(b"[" + b" " * (20 * 1024 * 1024) + b"]")


@pytest.mark.parametrize(
    ("record", "reason"),
    [
        pytest.param(b"", Reason.EMPTY, id="empty"),
        pytest.param(b" \r\n\t ", Reason.EMPTY, id="whitespace"),
        pytest.param(b"\xef\xbb\xbf", Reason.EMPTY, id="bom-only"),
        pytest.param(gzip.compress(b""), Reason.EMPTY, id="gzip-of-nothing"),
        pytest.param(b"[]", Reason.EMPTY, id="empty-array"),
        pytest.param(b'{"batch": [], "sentAt": "2024-01-01T00:00:00Z"}', Reason.EMPTY, id="empty-batch"),
        pytest.param(b"\xff\xfe{}", Reason.NOT_UTF8, id="latin1-bytes"),
        pytest.param(
            GOOD.replace(b'"context"', b"x").replace(b"acme", b"ac\xe9me"), Reason.NOT_UTF8, id="latin1-inside"
        ),
        pytest.param(b'{"a": "\xed\xa0\x80"}', Reason.NOT_UTF8, id="utf8-encoded-surrogate"),
        pytest.param('{"a": 1}'.encode("utf-16-le"), Reason.NOT_UTF8, id="utf16-le"),
        pytest.param('{"a": 1}'.encode("utf-16-be"), Reason.NOT_UTF8, id="utf16-be"),
        pytest.param('{"a": 1}'.encode("utf-16"), Reason.NOT_UTF8, id="utf16-bom"),
        pytest.param('{"a": 1}'.encode("utf-32"), Reason.NOT_UTF8, id="utf32-bom"),
        pytest.param(GOOD.decode().encode("utf-16-le"), Reason.NOT_UTF8, id="utf16-event"),
        pytest.param('{"a": 1}\n{"b": 2}\n'.encode("utf-16-le"), Reason.NOT_UTF8, id="utf16-ndjson"),
        pytest.param(gzip.compress('{"a": 1}'.encode("utf-16")), Reason.NOT_UTF8, id="gzip-of-utf16"),
        pytest.param(GOOD[:-7], Reason.MALFORMED_JSON, id="truncated"),
        pytest.param(b'{"a": 1}\x00', Reason.MALFORMED_JSON, id="trailing-nul-is-not-utf16"),
        pytest.param(b'{"a": 1,}', Reason.MALFORMED_JSON, id="trailing-comma"),
        pytest.param(b'{"a": NaN}', Reason.MALFORMED_JSON, id="nan"),
        pytest.param(b'{"a": "\\ud800"}', Reason.MALFORMED_JSON, id="lone-surrogate-escape"),
        pytest.param(b"{'a': 1}", Reason.MALFORMED_JSON, id="python-repr"),
        pytest.param(b"42", Reason.NOT_AN_OBJECT, id="number"),
        pytest.param(b'"event"', Reason.NOT_AN_OBJECT, id="string"),
        pytest.param(b"null", Reason.NOT_AN_OBJECT, id="null"),
        pytest.param(b"[1]", Reason.NOT_AN_OBJECT, id="array-of-number"),
        pytest.param(b'{"batch": ["x"]}', Reason.NOT_AN_OBJECT, id="batch-of-string"),
        pytest.param(
            json.dumps(event(1, properties={"blob": "x" * MAX_EVENT_BYTES})).encode(), Reason.OVERSIZE, id="oversize"
        ),
        pytest.param(json.dumps(nested(MAX_DEPTH + 1)).encode(), Reason.TOO_DEEP, id="too-deep"),
        pytest.param(b"[" * 5000 + b"]" * 5000, Reason.TOO_DEEP, id="parser-depth-limit"),
        pytest.param(b'{"a":' * 3000 + b"1" + b"}" * 3000, Reason.TOO_DEEP, id="deep-objects"),
        pytest.param(b"\x1f\x8bnot gzip at all", Reason.BAD_GZIP, id="bad-gzip"),
        pytest.param(gzip.compress(GOOD)[:-12], Reason.BAD_GZIP, id="truncated-gzip"),
        pytest.param(gzip.compress(GOOD) + b"garbage", Reason.BAD_GZIP, id="gzip-trailing-garbage"),
        pytest.param(BOMB, Reason.OVERSIZE, id="gzip-bomb"),
    ],
)
def test_bad_input_kinds(record: bytes, reason: Reason):
    failure = only_failure(decode_record(record, source_ref="file:bad:1"))
    assert failure.reason is reason
    assert failure.stage is Stage.DECODE
    assert failure.source_ref in ("file:bad:1", "file:bad:1[0]")
    assert failure.message
    assert isinstance(failure.payload, bytes)
    # the dead letter survives its own serialisation
    assert FailedEvent.from_json_line(failure.to_json_line()).payload == failure.payload


BIG = "1" + "0" * 299  # a 300-digit integer: orjson alone reads it as the float 1e+299


@pytest.mark.parametrize(
    ("record", "path"),
    [
        pytest.param(f'{{"type":"track","properties":{{"n":{BIG}}}}}'.encode(), "properties.n", id="fast-path-object"),
        pytest.param(f'{{"properties": {{"n": -{BIG}}}}}\n'.encode(), "properties.n", id="negative-slow-path"),
        pytest.param(f'{{"p":{{"items":[1,{{"q":{BIG}}}]}}}}'.encode(), "p.items[1].q", id="inside-a-list"),
        pytest.param(b'{"n":18446744073709551616}', "n", id="2**64"),
        pytest.param(b'{"n":-9223372036854775809}', "n", id="-2**63-1"),
        pytest.param(gzip.compress(f'{{"n":{BIG}}}'.encode()), "n", id="gzip"),
        pytest.param(b"\xef\xbb\xbf" + f'{{"n":{BIG}}}'.encode(), "n", id="utf8-bom"),
    ],
)
def test_integer_beyond_64_bits_is_invalid_value_not_a_float(record: bytes, path: str):
    failure = only_failure(decode_record(record, source_ref="file:big:1"))
    assert (failure.reason, failure.field_path, failure.stage) == (Reason.INVALID_VALUE, path, Stage.DECODE)
    assert "outside the 64-bit range" in failure.message


def test_integer_beyond_64_bits_fails_its_own_item_only_with_its_digits_kept():
    array = f'[{{"a":1}},{{"b":{{"n":{BIG}}}}},{{"c":3}}]'.encode()
    outs = decode_record(array, source_ref="arr")
    assert [type(o) for o in outs] == [RawEvent, FailedEvent, RawEvent]
    assert (outs[1].field_path, outs[1].source_ref) == ("b.n", "arr[1]")
    assert json.loads(outs[1].payload) == {"b": {"n": 10**299}}  # exact digits for the replay, not 1e+299
    ndjson = f'{{"a":1}}\n{{"n":{BIG}}}\n'.encode()
    outs = decode_record(ndjson, source_ref="nd")
    assert [type(o) for o in outs] == [RawEvent, FailedEvent]
    assert outs[1].payload == f'{{"n":{BIG}}}'.encode() and outs[1].source_ref == "nd#2"


def test_integer_beyond_64_bits_in_a_batch_envelope_fails_every_item():
    batch = f'{{"batch":[{{"a":1}},{{"b":2,"context":{{"ip":"1.2.3.4"}}}}],"context":{{"n":{BIG}}}}}'.encode()
    outs = decode_record(batch)
    assert [(type(o), o.field_path) for o in outs] == [(FailedEvent, "context.n"), (FailedEvent, "context.n")]
    assert json.loads(outs[1].payload) == {"b": 2, "context": {"n": 10**299, "ip": "1.2.3.4"}}
    item = f'{{"batch":[{{"a":1}},{{"b":{BIG}}}],"sentAt":"2024-01-01T00:00:00Z"}}'.encode()
    outs = decode_record(item)
    assert [type(o) for o in outs] == [RawEvent, FailedEvent] and outs[1].field_path == "b"


@pytest.mark.parametrize("number", [2**64 - 1, -(2**63), 2**63, 9_999_999_999_999_999_999, 0, -1], ids=lambda n: f"{n}")
def test_integers_within_64_bits_stay_exact_integers(number: int):
    outs = decode_record(json.dumps(event(1, properties={"n": number})).encode())
    assert isinstance(outs[0], RawEvent)
    value = outs[0].data["properties"]["n"]
    assert type(value) is int and value == number


def test_long_digit_runs_in_strings_and_floats_are_kept():
    digits = "1" * 40
    data = event(1, properties={"id": digits, "x": float("1" * 30), "ratio": 0.12345678901234567890})
    outs = decode_record(json.dumps(data).encode())
    assert isinstance(outs[0], RawEvent) and outs[0].data == data


def test_ids_are_read_from_undecodable_bytes():
    body = json.dumps(event(4)).encode().replace(b'"Product Viewed"', b'"Produkt \xe9"')
    failure = only_failure(decode_record(body))
    assert failure.reason is Reason.NOT_UTF8
    assert (failure.tenant_id, failure.message_id) == ("acme-in", "m-4")


def test_failure_keeps_the_offending_bytes_and_ids():
    body = json.dumps(event(9, properties={"blob": "x" * 40_000})).encode()
    failure = only_failure(decode_record(body))
    assert failure.payload == body
    assert (failure.tenant_id, failure.message_id) == ("acme-in", "m-9")


def test_array_keeps_good_items_next_to_bad_ones():
    outs = decode_record(json.dumps([event(1), 7, event(2), None]).encode(), source_ref="a")
    assert [type(o) for o in outs] == [RawEvent, FailedEvent, RawEvent, FailedEvent]
    assert outs[1].payload == b"7" and outs[1].source_ref == "a[1]"
    assert outs[3].payload == b"null"


def test_limits_are_configurable():
    body = json.dumps(event(1)).encode()
    assert only_failure(decode_record(body, max_event_bytes=50)).reason is Reason.OVERSIZE
    assert only_failure(decode_record(body, max_depth=1)).reason is Reason.TOO_DEEP
    assert only_failure(decode_record(gzip.compress(body), max_record_bytes=20)).reason is Reason.OVERSIZE


def test_bytes_like_inputs():
    assert decode_record(bytearray(GOOD))[0].data == event(1)
    assert decode_record(memoryview(GOOD))[0].data == event(1)
    assert decode_record(GOOD.decode())[0].data == event(1)


# --- properties ----------------------------------------------------------------------------------

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**53), 2**53)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5),
    max_leaves=30,
)


def _check_outputs(record: bytes, outs: list) -> None:
    assert isinstance(outs, list)
    assert all(isinstance(o, RawEvent | FailedEvent) for o in outs)
    if record:
        assert len(outs) >= 1  # nothing silently vanishes
    for o in outs:
        if isinstance(o, RawEvent):
            assert isinstance(o.data, dict) and isinstance(o.payload, bytes)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=2000))
def test_never_raises_on_arbitrary_bytes(record: bytes):
    _check_outputs(record, decode_record(record))


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=500))
def test_never_raises_on_arbitrary_gzip(data: bytes):
    record = gzip.compress(data)
    _check_outputs(record, decode_record(record))


@settings(max_examples=200, deadline=None)
@given(json_values, st.sampled_from(["compact", "indent", "ndjson", "gzip", "bom"]))
def test_json_documents_decode_to_their_objects(value, shape: str):
    text = json.dumps(value, indent=2 if shape == "indent" else None, ensure_ascii=shape == "bom")
    record = text.encode()
    if shape == "gzip":
        record = gzip.compress(record)
    elif shape == "bom":
        record = b"\xef\xbb\xbf" + record
    elif shape == "ndjson":
        record = f"{text}\n{text}\n".encode()
    outs = decode_record(record)
    _check_outputs(record, outs)
    copies = 2 if shape == "ndjson" else 1
    if isinstance(value, dict) and not value.get("batch") and "_webhook" not in value:
        assert [o.data for o in outs] == [value] * copies
    elif isinstance(value, list) and value:
        assert len(outs) == len(value) * copies
        for item, out in zip(value * copies, outs, strict=True):
            assert isinstance(out, RawEvent) == isinstance(item, dict)
            if isinstance(item, dict):
                assert out.data == item
    elif not isinstance(value, dict | list):
        assert all(isinstance(o, FailedEvent) and o.reason is Reason.NOT_AN_OBJECT for o in outs)


json_tokens = st.sampled_from(
    [
        b"{",
        b"}",
        b"[",
        b"]",
        b'"',
        b"\n",
        b"\r\n",
        b",",
        b":",
        b"1",
        b"-0.5e3",
        b"\\",
        b"\\u0000",
        b"\xff",
        b" ",
        b'{"a":1}',
        b'"batch"',
        b'"_webhook"',
        b"\xef\xbb\xbf",
        b"null",
        b"\x1f\x8b",
    ]
)


@settings(max_examples=200, deadline=None)
@given(st.lists(json_tokens, max_size=40).map(b"".join))
def test_never_raises_on_json_like_token_soup(record: bytes):
    """Arbitrary bytes rarely look like JSON; token soup reaches the fast path, NDJSON and batch branches."""
    _check_outputs(record, decode_record(record))
