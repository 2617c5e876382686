"""normalize_event: Segment clock-skew correction (hand-computed cases), time bounds, emails, phones."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.failures import FailedEvent, Reason, Stage
from schemas.tracking_plan import TrackingPlans
from transforms.decode import RawEvent, decode_record
from transforms.normalize import normalize_event
from transforms.validate import ValidEvent, validate_event

UTC = dt.UTC
NOW = dt.datetime(2024, 6, 1, 12, 0, 0, tzinfo=UTC)


def valid(**fields) -> ValidEvent:
    data = {"type": "track", "event": "Product Viewed", "messageId": "m-1", "tenantId": "acme-in", "anonymousId": "a-1"}
    data.update(fields)
    out = validate_event(RawEvent(json.dumps(data).encode(), data, "file:n:1"))
    assert isinstance(out, ValidEvent), out
    return out


def norm(**fields) -> ValidEvent | FailedEvent:
    return normalize_event(valid(**fields), now=NOW)


def t(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text)


# --- clock skew: expected values computed by hand ------------------------------------------------

SKEW_CASES = [
    pytest.param(
        # device clock 2 h behind: recorded 10:00:00 (device), sent 10:00:30 (device), arrived 12:00:45 (server)
        # -> happened 30 s before arrival: 12:00:15
        {
            "originalTimestamp": "2024-05-01T10:00:00Z",
            "sentAt": "2024-05-01T10:00:30Z",
            "receivedAt": "2024-05-01T12:00:45Z",
        },
        "2024-05-01T12:00:15+00:00",
        id="device-clock-behind",
    ),
    pytest.param(
        # offsets: 15:30+05:30 is 10:00Z; sent 10s later (device); arrived 09:55:20Z -> 09:55:10Z
        {
            "originalTimestamp": "2024-05-01T15:30:00+05:30",
            "sentAt": "2024-05-01T10:00:10Z",
            "receivedAt": "2024-05-01T09:55:20Z",
        },
        "2024-05-01T09:55:10+00:00",
        id="device-clock-ahead-with-offsets",
    ),
    pytest.param(
        # queued offline for 3 days on a correct clock: correction keeps the real time
        {
            "originalTimestamp": "2024-05-01T08:00:00.250Z",
            "sentAt": "2024-05-04T08:00:00Z",
            "receivedAt": "2024-05-04T08:00:01Z",
        },
        "2024-05-01T08:00:01.250000+00:00",  # 05-04 08:00:01 - (2 d 23 h 59 m 59.75 s)
        id="offline-queue",
    ),
    pytest.param(
        # an explicit timestamp loses to the correction when originalTimestamp and sentAt are both there
        {
            "timestamp": "2020-01-01T00:00:00Z",
            "originalTimestamp": "2024-05-01T10:00:00Z",
            "sentAt": "2024-05-01T10:00:01Z",
            "receivedAt": "2024-05-01T10:00:03Z",
        },
        "2024-05-01T10:00:02+00:00",
        id="correction-wins",
    ),
    pytest.param(
        {"timestamp": "2024-05-01T10:00:00Z", "sentAt": "2024-05-01T11:00:00Z", "receivedAt": "2024-05-01T12:00:00Z"},
        "2024-05-01T10:00:00+00:00",
        id="timestamp-without-original",
    ),
    pytest.param(
        {"originalTimestamp": "2024-05-01T10:00:00Z", "receivedAt": "2024-05-01T12:00:00Z"},
        "2024-05-01T10:00:00+00:00",
        id="original-without-sentAt",
    ),
    pytest.param(
        {
            "timestamp": "2024-05-01T09:00:00Z",
            "originalTimestamp": "2024-05-01T10:00:00Z",
            "receivedAt": "2024-05-01T12:00:00Z",
        },
        "2024-05-01T09:00:00+00:00",
        id="timestamp-before-original",
    ),
    pytest.param({"receivedAt": "2024-05-01T12:00:00Z"}, "2024-05-01T12:00:00+00:00", id="only-receivedAt"),
    pytest.param({}, "2024-06-01T12:00:00+00:00", id="nothing-uses-now"),
    pytest.param(
        {"timestamp": "2024-05-01T10:00:00", "receivedAt": "2024-05-01T12:00:00"},
        "2024-05-01T10:00:00+00:00",
        id="naive-is-utc",
    ),
    pytest.param(
        {"timestamp": "2024-05-01T10:00:00.123456789Z"}, "2024-05-01T10:00:00.123456+00:00", id="nanoseconds-truncated"
    ),
    pytest.param(
        {"timestamp": 1714557600, "receivedAt": 1714557660000},
        "2024-05-01T10:00:00+00:00",
        id="unix-seconds-and-millis",
    ),
]


@pytest.mark.parametrize(("fields", "expected"), SKEW_CASES)
def test_clock_skew_correction(fields: dict, expected: str):
    out = norm(**fields)
    assert isinstance(out, ValidEvent), out
    assert out.event.timestamp == t(expected)
    assert out.event.timestamp.tzinfo is UTC and out.event.received_at.tzinfo is UTC


def test_offline_queue_case_arithmetic():
    # the third case spelled out: 08:00:01 (05-04) - (05-04 08:00:00 - 05-01 08:00:00.250) = 05-01 08:00:01.250
    received = t("2024-05-04T08:00:01+00:00")
    lag = t("2024-05-04T08:00:00+00:00") - t("2024-05-01T08:00:00.250+00:00")
    assert received - lag == t("2024-05-01T08:00:01.250+00:00")


def test_all_datetimes_become_utc():
    out = norm(
        originalTimestamp="2024-05-01T15:30:00+05:30",
        sentAt="2024-05-01T15:30:05+05:30",
        receivedAt="2024-05-01T10:00:06+00:00",
    )
    ev = out.event
    assert ev.original_timestamp == t("2024-05-01T10:00:00+00:00") and ev.original_timestamp.tzinfo is UTC
    assert ev.sent_at == t("2024-05-01T10:00:05+00:00") and ev.sent_at.tzinfo is UTC
    assert ev.received_at == t("2024-05-01T10:00:06+00:00")
    assert ev.timestamp == t("2024-05-01T10:00:01+00:00")


def test_received_at_defaults_to_now():
    out = norm(timestamp="2024-05-01T10:00:00Z")
    assert out.event.received_at == NOW


# --- bounds ----------------------------------------------------------------------------------


def test_future_bound_is_inclusive_and_configurable():
    received = "2024-05-01T12:00:00Z"
    at_bound = norm(timestamp="2024-05-02T12:00:00Z", receivedAt=received)
    assert isinstance(at_bound, ValidEvent)
    past_bound = norm(timestamp="2024-05-02T12:00:00.000001Z", receivedAt=received)
    assert isinstance(past_bound, FailedEvent)
    assert (past_bound.stage, past_bound.reason, past_bound.field_path) == (
        Stage.NORMALIZE,
        Reason.FUTURE_TIMESTAMP,
        "timestamp",
    )
    assert (past_bound.tenant_id, past_bound.message_id, past_bound.source_ref) == ("acme-in", "m-1", "file:n:1")
    tight = normalize_event(
        valid(timestamp="2024-05-01T12:10:00Z", receivedAt=received), now=NOW, max_future=dt.timedelta(minutes=5)
    )
    assert isinstance(tight, FailedEvent) and tight.reason is Reason.FUTURE_TIMESTAMP


def test_sent_before_recorded_is_a_bad_sent_at_not_a_future_event():
    # recorded 2 days after it was sent: not a clock offset (one clock wrote both) but a wrong value; the
    # correction would put the event 2 days after arrival, which used to be reported as future_timestamp
    out = norm(
        originalTimestamp="2024-05-03T10:00:00Z", sentAt="2024-05-01T10:00:00Z", receivedAt="2024-05-01T10:00:00Z"
    )
    assert isinstance(out, FailedEvent)
    assert (out.reason, out.field_path) == (Reason.BAD_TIMESTAMP, "sentAt")
    # within max_future of each other the pair is accepted (sub-second jitter of a device clock, say)
    ok = norm(
        originalTimestamp="2024-05-01T10:00:01Z", sentAt="2024-05-01T10:00:00Z", receivedAt="2024-05-01T10:00:00Z"
    )
    assert isinstance(ok, ValidEvent) and ok.event.timestamp == t("2024-05-01T10:00:01+00:00")


def test_device_clock_reset_to_epoch_is_still_corrected():
    # a dead RTC battery: the device believes it is 1970, both of its times are off by the same amount
    out = norm(
        originalTimestamp="1970-01-01T00:00:10Z", sentAt="1970-01-01T00:01:10Z", receivedAt="2024-05-01T10:00:00Z"
    )
    assert isinstance(out, ValidEvent) and out.event.timestamp == t("2024-05-01T09:59:00+00:00")


def test_future_without_received_at_is_measured_from_now():
    out = norm(originalTimestamp=(NOW + dt.timedelta(days=30)).isoformat())
    assert isinstance(out, FailedEvent) and out.reason is Reason.FUTURE_TIMESTAMP


@pytest.mark.parametrize("when", ["2019-03-01T08:00:00Z", "1995-07-15T00:00:00+05:30", "1990-01-01T00:00:00Z"])
def test_historical_backfills_are_accepted(when: str):
    out = norm(timestamp=when)
    assert isinstance(out, ValidEvent) and out.event.timestamp == t(when.replace("Z", "+00:00"))


@pytest.mark.parametrize(
    ("fields", "path"),
    [
        ({"timestamp": "1989-12-31T23:59:59Z"}, "timestamp"),
        ({"timestamp": 0}, "timestamp"),
        ({"timestamp": "0001-01-01T00:00:00Z"}, "timestamp"),
        ({"receivedAt": "1970-01-01T00:00:00Z"}, "receivedAt"),
        ({"originalTimestamp": "0001-01-01T00:00:00Z", "sentAt": "9999-12-31T00:00:00Z"}, "timestamp"),
        # a zero-valued sentAt (Go's time.Time{}, .NET's DateTime.MinValue): used to come out as future_timestamp
        pytest.param(
            {"sentAt": "0001-01-01T00:00:00Z", "originalTimestamp": "2024-05-01T10:00:00Z"}, "sentAt", id="year1-sentAt"
        ),
        pytest.param(
            {
                "sentAt": "0001-01-01T00:00:00Z",
                "timestamp": "2024-05-01T10:00:00Z",
                "receivedAt": "2024-05-01T10:00:01Z",
            },
            "sentAt",
            id="year1-sentAt-alone",
        ),
        pytest.param({"sentAt": "1970-01-01T00:00:00Z"}, "sentAt", id="epoch-sentAt-alone"),
        pytest.param(
            {"sentAt": "0001-01-01T00:00:00Z", "originalTimestamp": "9999-12-31T00:00:00Z"},
            "sentAt",
            id="year1-vs-9999",
        ),
    ],
)
def test_bad_timestamps(fields: dict, path: str):
    out = norm(**fields)
    assert isinstance(out, FailedEvent)
    assert (out.reason, out.field_path, out.stage) == (Reason.BAD_TIMESTAMP, path, Stage.NORMALIZE)


# --- contact fields and currency ------------------------------------------------------------------


def test_emails_lower_cased_and_stripped_everywhere():
    out = norm(
        type="identify",
        traits={"email": "  Shopper@Example.IN "},
        properties={"email": "A@B.COM"},
        context={"traits": {"email": " Mixed@Case.In"}},
    )
    ev = out.event
    assert ev.traits["email"] == "shopper@example.in"
    assert ev.properties["email"] == "a@b.com"
    assert ev.context.traits["email"] == "mixed@case.in"


@pytest.mark.parametrize(
    ("phone", "e164"),
    [
        ("09876543210", "+919876543210"),  # trunk prefix 0, region IN
        ("98765 43210", "+919876543210"),
        ("+91-98765-43210", "+919876543210"),
        ("+1 (415) 555-2671", "+14155552671"),
        ("+971 50 123 4567", "+971501234567"),
        (9876543210, "+919876543210"),
    ],
)
def test_phones_to_e164(phone, e164: str):
    out = norm(type="identify", userId="u-1", traits={"phone": phone}, properties={"phone": phone})
    assert out.event.traits["phone"] == e164
    assert out.event.properties["phone"] == e164
    assert out.notes == ()


def test_default_phone_region_is_configurable():
    out = normalize_event(
        valid(type="identify", traits={"phone": "(415) 555-2671"}), now=NOW, default_phone_region="US"
    )
    assert out.event.traits["phone"] == "+14155552671"


@pytest.mark.parametrize("phone", ["12345", "call me", "+91 12345", ""])
def test_unparsable_phone_is_kept_and_noted(phone: str):
    out = norm(type="identify", traits={"phone": phone})
    assert isinstance(out, ValidEvent)
    assert out.event.traits["phone"] == phone
    assert out.notes == ("traits.phone: not a valid phone number, kept as sent",)


def test_sdk_timestamp_can_be_read_as_original_timestamp():
    # analytics.js on the wire: device time in `timestamp`, plus sentAt. Clock 1 h fast:
    # recorded 10:00:00, sent 10:00:02 (device), received 09:00:03 -> 09:00:01
    fields = {
        "timestamp": "2024-05-01T10:00:00Z",
        "sentAt": "2024-05-01T10:00:02Z",
        "receivedAt": "2024-05-01T09:00:03Z",
    }
    corrected = normalize_event(valid(**fields), now=NOW, sdk_timestamp_is_original=True)
    assert corrected.event.timestamp == t("2024-05-01T09:00:01+00:00")
    assert corrected.event.original_timestamp == t("2024-05-01T10:00:00+00:00")
    assert norm(**fields).event.timestamp == t("2024-05-01T10:00:00+00:00")  # default: kept as sent


# --- never raises; invariants hold --------------------------------------------------------------

moments = st.datetimes(
    min_value=dt.datetime(1, 1, 2),
    max_value=dt.datetime(9999, 12, 30),
    timezones=st.sampled_from(
        [None, UTC, dt.timezone(dt.timedelta(hours=5, minutes=30)), dt.timezone(dt.timedelta(hours=-8))]
    ),
)


@settings(max_examples=200, deadline=None)
@given(
    st.fixed_dictionaries({}, optional={k: moments for k in ("timestamp", "originalTimestamp", "sentAt", "receivedAt")})
)
def test_time_invariants(times: dict):
    fields = {k: v.isoformat() for k, v in times.items()}
    out = norm(**fields)
    assert isinstance(out, ValidEvent | FailedEvent)
    if isinstance(out, ValidEvent):
        ev = out.event
        assert ev.timestamp.tzinfo is UTC and ev.received_at.tzinfo is UTC
        assert dt.datetime(1990, 1, 1, tzinfo=UTC) <= ev.timestamp <= ev.received_at + dt.timedelta(hours=24)
    else:
        assert out.reason in (Reason.BAD_TIMESTAMP, Reason.FUTURE_TIMESTAMP)


# --- golden SDK payloads end to end (decode -> validate -> normalize) --------------------------------

CASES = Path(__file__).resolve().parents[1] / "cases" / "events"
GOLDEN = json.loads((CASES / "expected.json").read_text())
PLANS = TrackingPlans.load(Path(__file__).resolve().parents[2] / "schemas" / "tracking_plans")


def _through(name: str, received: dt.datetime, **options) -> list:
    outs = []
    for raw in decode_record((CASES / name).read_bytes(), source_ref="case"):
        assert isinstance(raw, RawEvent), raw
        if "receivedAt" not in raw.data:  # what the pipeline does with the source's arrival time
            raw = RawEvent(raw.payload, {**raw.data, "receivedAt": received.isoformat()}, raw.source_ref)
        valid = validate_event(raw, PLANS)
        assert isinstance(valid, ValidEvent), valid
        outs.append(normalize_event(valid, now=NOW, **options))
    return outs


@pytest.mark.parametrize("name", sorted(k for k in GOLDEN if not k.startswith("_")))
def test_golden_sdk_payloads(name: str):
    case = GOLDEN[name]
    received = t(case["received_at"])
    outs = _through(name, received)
    assert len(outs) == len(case["events"])
    for out, want in zip(outs, case["events"], strict=True):
        assert isinstance(out, ValidEvent), out
        ev = out.event
        assert out.source_ref == want["source_ref"]
        assert (ev.message_id, ev.type.value, ev.event, ev.tenant_id) == (
            want["messageId"],
            want["type"],
            want.get("event"),
            want["tenant_id"],
        )
        assert ev.timestamp == t(want["timestamp"])
        assert ev.received_at == received
        assert list(out.violations) == want["violations"]
        if "traits" in want:
            assert ev.traits == want["traits"]
        if "currency" in want:
            assert ev.properties["currency"] == want["currency"]
        if "context_ip" in want:
            assert ev.context.ip == want["context_ip"]
        if "library" in want:
            assert ev.context.library.name == want["library"]
    with_sdk = [w for w in case["events"] if "timestamp_sdk_as_original" in w]
    if with_sdk:
        outs = _through(name, received, sdk_timestamp_is_original=True)
        assert [o.event.timestamp for o in outs] == [t(w["timestamp_sdk_as_original"]) for w in with_sdk]


def test_batch_events_carry_their_merged_bytes():
    outs = decode_record((CASES / "analytics_python_batch.json").read_bytes())
    first = json.loads(outs[0].payload)
    assert first["sentAt"] == "2026-10-14T08:43:00Z" and first["tenantId"] == "acme-in"
    assert first["context"] == {"library": {"name": "analytics-python", "version": "2.3.2"}, "ip": "10.0.0.5"}
    assert "writeKey" not in first
