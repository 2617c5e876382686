"""The collector's pure parts: body limits, Segment normalisation, PutRecords batching and retries, spool, batcher."""

from __future__ import annotations

import asyncio
import base64
import gzip
import os

import orjson
import pytest
from botocore.exceptions import ClientError, EndpointConnectionError

from connectors.collector.body import BodyError, inflate, read_body
from connectors.collector.delivery import (
    Batcher,
    Delivery,
    KinesisSink,
    NullSink,
    Overloaded,
    SinkError,
    Unavailable,
    kinesis_batches,
)
from connectors.collector.metrics import CollectorMetrics
from connectors.collector.segment import Rejected, basic_auth_user, kind_of, normalise_request, partition_key
from connectors.collector.spool import Spool

RECEIVED = "2026-10-01T10:00:00.000Z"


# --- body -------------------------------------------------------------------------------------------


def test_inflate_gzip_within_and_over_the_cap():
    body = orjson.dumps({"batch": [{"type": "track", "event": "x" * 100}] * 10})
    assert inflate(gzip.compress(body), "gzip", max_inflated=len(body)) == body
    with pytest.raises(BodyError) as err:
        inflate(gzip.compress(body), "gzip", max_inflated=len(body) - 1)
    assert (err.value.reason, err.value.status) == ("gzip_bomb", 400)


def test_gzip_bomb_is_stopped_without_inflating_it():
    bomb = gzip.compress(b"\0" * (200 << 20), compresslevel=9)  # 200 MB of zeros in ~200 KB
    assert len(bomb) < 300_000
    with pytest.raises(BodyError) as err:
        inflate(bomb, "gzip", max_inflated=500 * 1024)
    assert err.value.reason == "gzip_bomb"


@pytest.mark.parametrize(
    ("body", "encoding", "reason"),
    [
        (b"not gzip at all", "gzip", "bad_gzip"),
        (gzip.compress(b'{"a": 1}')[:-6], "gzip", "bad_gzip"),
        (b"{}", "br", "bad_encoding"),
    ],
)
def test_bad_encodings(body, encoding, reason):
    with pytest.raises(BodyError) as err:
        inflate(body, encoding, max_inflated=1000)
    assert err.value.reason == reason


def test_read_body_limits():
    async def chunks(parts, delay=0.0):
        for part in parts:
            await asyncio.sleep(delay)
            yield part

    assert asyncio.run(read_body(chunks([b"ab", b"cd"]), max_bytes=4, timeout_s=1)) == b"abcd"
    with pytest.raises(BodyError, match="over 3 bytes"):
        asyncio.run(read_body(chunks([b"ab", b"cd"]), max_bytes=3, timeout_s=1))
    with pytest.raises(BodyError) as err:
        asyncio.run(read_body(chunks([b"a"], 0.0), max_bytes=3, timeout_s=1, declared_length="10"))
    assert err.value.reason == "oversize"
    with pytest.raises(BodyError) as err:
        asyncio.run(read_body(chunks([b"a"] * 20, 0.05), max_bytes=100, timeout_s=0.3))
    assert (err.value.reason, err.value.status) == ("body_timeout", 408)


# --- Segment ------------------------------------------------------------------------------------------


def test_basic_auth_and_paths():
    header = "Basic " + base64.b64encode(b"wk_live_1:").decode()
    assert basic_auth_user(header) == "wk_live_1"
    assert basic_auth_user("Bearer abc") is None
    assert basic_auth_user("Basic !!!") is None
    assert basic_auth_user(None) is None
    assert kind_of("t") == "track" and kind_of("batch") == "batch" and kind_of("nope") is None


def _decoded(records):
    return [orjson.loads(data) for _, data in records]


def test_single_track_gets_type_tenant_ids_and_times():
    body = {"event": "Order Completed", "userId": "u1", "properties": {"revenue": 10}, "sentAt": "2026-10-01T09:59:59Z"}
    records = normalise_request("track", body, tenant_id="acme-in", received_at=RECEIVED, client_ip="10.0.0.7")
    [event] = _decoded(records)
    assert event["type"] == "track" and event["tenantId"] == "acme-in"
    assert event["messageId"].startswith("livora-") and event["receivedAt"] == RECEIVED
    assert event["sentAt"] == "2026-10-01T09:59:59Z"
    assert event["context"] == {"ip": "10.0.0.7"}
    assert records[0][0] == "u1"


def test_received_at_is_always_the_collectors_own_time():
    """A client-sent receivedAt would steer the skew correction (timestamp = receivedAt - (sentAt - originalTimestamp))."""
    body = {
        "batch": [
            {"type": "track", "event": "x", "userId": "u1", "receivedAt": "1999-01-01T00:00:00Z"},
            {"type": "track", "event": "y", "userId": "u1", "received_at": "1999-01-01T00:00:00Z"},
        ]
    }
    events = _decoded(normalise_request("batch", body, tenant_id="acme-in", received_at=RECEIVED))
    assert [e["receivedAt"] for e in events] == [RECEIVED, RECEIVED]
    assert all("1999" not in orjson.dumps(e).decode() for e in events)


def test_batch_shares_context_and_sent_at_and_keeps_own_values():
    body = {
        "batch": [
            {"type": "identify", "anonymousId": "a1", "messageId": "m1", "context": {"ip": "1.2.3.4"}},
            {"type": "page", "anonymousId": "a2", "messageId": "m2", "sentAt": "own"},
        ],
        "context": {"library": {"name": "analytics-python"}},
        "sentAt": "batch-time",
        "writeKey": "secret-ish",
    }
    records = normalise_request("batch", body, tenant_id="acme-in", received_at=RECEIVED)
    first, second = _decoded(records)
    assert first["messageId"] == "m1" and first["sentAt"] == "batch-time"
    assert first["context"] == {"library": {"name": "analytics-python"}, "ip": "1.2.3.4"}
    assert second["sentAt"] == "own"
    assert [k for k, _ in records] == ["a1", "a2"]
    assert all("writeKey" not in e for e in (first, second))


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ({"batch": [{"type": "track", "tenantId": "other-tenant", "event": "x"}]}, "tenant_mismatch"),
        ({"batch": [{"type": "track", "tenant_id": "other-tenant", "event": "x"}]}, "tenant_mismatch"),
        ({"batch": [{"type": "launch"}]}, "invalid_event"),
        ({"batch": "nope"}, "invalid_event"),
        ({"batch": [1]}, "invalid_event"),
        ({"batch": [{"type": "track", "properties": {"blob": "x" * 40_000}}]}, "oversize"),
    ],
)
def test_batch_rejections(body, reason):
    with pytest.raises(Rejected) as err:
        normalise_request("batch", body, tenant_id="acme-in", received_at=RECEIVED)
    assert (err.value.reason, err.value.status) == (reason, 400)


def test_own_tenant_is_accepted_and_not_duplicated():
    [event] = _decoded(
        normalise_request("track", {"tenant_id": "acme-in", "event": "x"}, tenant_id="acme-in", received_at=RECEIVED)
    )
    assert event["tenantId"] == "acme-in" and "tenant_id" not in event


def test_partition_key_prefers_anonymous_id():
    assert partition_key({"anonymousId": "a", "userId": "u"}) == "a"
    assert partition_key({"userId": 42}) == "42"
    assert partition_key({"messageId": "m"}) == "m"


# --- Kinesis batching and retries --------------------------------------------------------------------------


def test_kinesis_batches_respect_count_and_size_limits():
    small = [("k", b"x" * 10)] * 1201
    assert [len(b) for b in kinesis_batches(small)] == [500, 500, 201]
    big = [("k", b"x" * (900 * 1024))] * 12  # 5 fit in 5 MB (5 * 900 KB + keys)
    assert [len(b) for b in kinesis_batches(big)] == [5, 5, 2]
    with pytest.raises(ValueError, match="1 MB"):
        kinesis_batches([("k", b"x" * (1024 * 1024))])


class FakeKinesis:
    """Fails the first N records of each call ``fail_rounds`` times, or raises the given errors first."""

    def __init__(self, fail_rounds=0, errors=()):
        self.fail_rounds = fail_rounds
        self.errors = list(errors)
        self.accepted: list[bytes] = []
        self.calls = 0

    def put_records(self, StreamName, Records):
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        results = []
        for i, record in enumerate(Records):
            if self.fail_rounds and i % 2 == 0:
                results.append({"ErrorCode": "ProvisionedThroughputExceededException", "ErrorMessage": "slow down"})
            else:
                self.accepted.append(record["Data"])
                results.append({"SequenceNumber": "1", "ShardId": "shardId-0"})
        failed = sum(1 for r in results if "ErrorCode" in r)
        if self.fail_rounds:
            self.fail_rounds -= 1
        return {"FailedRecordCount": failed, "Records": results}


def _throttle():
    return ClientError(
        {"Error": {"Code": "ProvisionedThroughputExceededException"}, "ResponseMetadata": {"HTTPStatusCode": 400}},
        "PutRecords",
    )


def test_sink_retries_only_the_failed_records_and_throttling():
    metrics = CollectorMetrics()
    fake = FakeKinesis(fail_rounds=2, errors=[_throttle(), EndpointConnectionError(endpoint_url="http://x")])
    sink = KinesisSink(fake, "s", metrics, sleep=lambda s: None)
    records = [(f"k{i}", f"r{i}".encode()) for i in range(7)]
    sink.put(records)
    assert sorted(fake.accepted) == sorted(d for _, d in records)  # each exactly once
    assert fake.calls == 5  # throttled, connection error, 2 partial failures, then the rest
    text = metrics.render().decode()
    assert 'livora_collector_kinesis_retries_total{cause="failed_records"} 2.0' in text
    assert 'livora_collector_kinesis_retries_total{cause="throttled"} 1.0' in text


def test_sink_gives_up_after_its_budget_and_on_terminal_errors():
    sink = KinesisSink(FakeKinesis(fail_rounds=10**6), "s", budget_s=0.05, base_s=0.02, cap_s=0.02)
    with pytest.raises(SinkError, match="within"):
        sink.put([("k", b"a"), ("k", b"b")])
    missing = ClientError(
        {"Error": {"Code": "ResourceNotFoundException"}, "ResponseMetadata": {"HTTPStatusCode": 400}}, "PutRecords"
    )
    fake = FakeKinesis(errors=[missing])
    with pytest.raises(SinkError, match="ResourceNotFound"):
        KinesisSink(fake, "s", sleep=lambda s: None).put([("k", b"a")])
    assert fake.calls == 1


# --- spool ----------------------------------------------------------------------------------------------


def test_spool_round_trip_survives_restart_and_ignores_a_torn_tail(tmp_path):
    spool = Spool(str(tmp_path))
    spool.append([("a", b"one"), ("b", b"two")])
    spool.append([("c", b"three")])
    assert spool.closed_segments() == []  # the open segment is not shipped
    spool.rotate()
    [first] = spool.closed_segments()
    spool.append([("d", b"four")])
    # a process killed mid-write leaves half a frame at the end of its open segment
    second = sorted(os.listdir(tmp_path))[-1]
    with open(tmp_path / second, "ab") as handle:
        handle.write(b"\x00\x00\x00\x40garbage")
    restarted = Spool(str(tmp_path))
    assert restarted.pending_records == 4
    numbers = restarted.closed_segments()
    assert len(numbers) == 2
    assert [r for n in numbers for r in restarted.read(n)] == [
        ("a", b"one"),
        ("b", b"two"),
        ("c", b"three"),
        ("d", b"four"),
    ]
    restarted.append([("e", b"five")])  # a new segment after the old ones
    restarted.rotate()
    assert restarted.read(restarted.closed_segments()[-1]) == [("e", b"five")]
    restarted.remove(first, 3)
    assert restarted.pending_records == 2


# --- batcher and delivery ------------------------------------------------------------------------------------


def test_batcher_groups_requests_and_bounds_memory():
    calls = []

    async def scenario():
        batcher = Batcher(lambda recs: calls.append(len(recs)), max_records=500, linger_s=0.01, max_pending=1000)
        batcher.start()
        await asyncio.gather(*(batcher.submit([("k", b"x")] * 100) for _ in range(6)))
        with pytest.raises(Overloaded):
            await asyncio.gather(*(batcher.submit([("k", b"x")] * 400) for _ in range(3)))
        await batcher.stop()

    asyncio.run(scenario())
    assert sum(calls) == 600 + 800  # the third 400 was refused before it was queued
    assert calls[0] == 500 and max(calls) <= 500


class FailingSink:
    def __init__(self):
        self.down = True
        self.records = []

    def put(self, records):
        if self.down:
            raise SinkError("down")
        self.records.extend(records)


def test_direct_mode_answers_unavailable_and_fallback_spools_then_drains(tmp_path):
    async def scenario():
        direct = Delivery(FailingSink(), CollectorMetrics())
        await direct.start()
        with pytest.raises(Unavailable):
            await direct.deliver([("k", b"a")])
        await direct.stop()

        sink = FailingSink()
        delivery = Delivery(
            sink, CollectorMetrics(), spool=Spool(str(tmp_path)), mode="fallback", drain_interval_s=0.05
        )
        await delivery.start()
        await delivery.deliver([("k", b"a"), ("k", b"b")])  # acked: in the spool
        await delivery.deliver([("k", b"c")])
        assert delivery.spool.pending_records == 3 and sink.records == []
        sink.down = False
        for _ in range(100):
            await asyncio.sleep(0.05)
            if delivery.spool.pending_records == 0:
                break
        await delivery.stop()
        return sink.records

    assert [d for _, d in asyncio.run(scenario())] == [b"a", b"b", b"c"]


def test_null_sink_counts():
    sink = NullSink()
    sink.put([("k", b"a")] * 3)
    assert sink.records == 3
