"""Online store against a real moto server over HTTP: monotonic conditional writes, TTL reads, retries."""

from __future__ import annotations

import datetime as dt
import json
import threading

import pyarrow as pa
import pytest
from botocore.exceptions import ClientError

from connectors.dynamodb import Backoff, TransientSinkError
from connectors.online_store import (
    create_online_table,
    online_items,
    read_online_features,
    write_online_items,
)
from schemas.features import FEATURES, GROUPS
from schemas.lake import EVENTS_SCHEMA
from transforms.features import features_as_of

pytestmark = pytest.mark.integration
UTC = dt.UTC
TABLE = "livora-online-features"


def ev(event, ts, person="a", **kw):
    return {
        "tenant_id": "acme-in",
        "event_date": ts.date(),
        "message_id": f"{person}-{event}-{ts.isoformat()}",
        "type": "track",
        "event": event,
        "person_id": person,
        "session_id": f"{person}-s",
        "timestamp": ts,
        "received_at": ts,
        "properties": json.dumps(kw.pop("props", {})),
        "schema_version": "1.0.0",
        **kw,
    }


EVENTS = pa.Table.from_pylist(
    [
        ev(
            "Order Completed", dt.datetime(2026, 10, 1, 9, tzinfo=UTC), revenue_inr=500, props={"payment_method": "cod"}
        ),
        ev("Product Viewed", dt.datetime(2026, 10, 2, 9, tzinfo=UTC), props={"category": "Shoes"}),
        ev("Order Completed", dt.datetime(2026, 10, 5, 9, tzinfo=UTC), revenue_inr=700),
        ev("Product Viewed", dt.datetime(2026, 10, 1, 9, tzinfo=UTC), person="b", channel="email"),
    ],
    schema=EVENTS_SCHEMA,
)
DAY1, DAY2 = dt.date(2026, 10, 3), dt.date(2026, 10, 6)
NOW = dt.datetime(2026, 10, 7, tzinfo=UTC)


def snapshot(day):
    return features_as_of(EVENTS, [day])


def expected(day, person):
    row = next(r for r in snapshot(day).to_pylist() if r["person_id"] == person)
    return {f.name: row[f.name] for f in FEATURES}


@pytest.fixture
def client(aws):
    create_online_table(aws, TABLE)
    return aws.client("dynamodb")


def read(client, persons=("a", "b"), ttl=None, now=NOW):
    return read_online_features(client, TABLE, "acme-in", persons, ttl=ttl, now=now)


def features_only(values):
    return {f.name: values[f.name] for f in FEATURES}


def test_round_trip_keeps_values_and_types(client):
    report = write_online_items(client, TABLE, online_items(snapshot(DAY2)))
    assert report.written == 2 * len(GROUPS) and report.skipped_older == 0 and not report.failures
    got = read(client)
    assert features_only(got["a"]) == expected(DAY2, "a")
    assert features_only(got["b"]) == expected(DAY2, "b")
    assert got["a"]["orders_lifetime"] == 2 and got["a"]["revenue_inr_lifetime"] == 1200.0
    assert isinstance(got["a"]["revenue_inr_lifetime"], float) and isinstance(got["a"]["orders_lifetime"], int)
    assert got["a"]["orders_feature_ts"] == dt.datetime(2026, 10, 6, 23, 59, 59, 999999, tzinfo=UTC)
    assert got["a"]["orders_event_ts"] == dt.datetime(2026, 10, 5, 9, tzinfo=UTC)


def test_older_snapshot_never_overwrites_newer(client):
    write_online_items(client, TABLE, online_items(snapshot(DAY2)))
    report = write_online_items(client, TABLE, online_items(snapshot(DAY1)))  # re-materialise an old window
    assert report.written == 0 and report.skipped_older == 2 * len(GROUPS)
    got = read(client)
    assert features_only(got["a"]) == expected(DAY2, "a")
    assert got["a"]["orders_lifetime"] == 2  # DAY1 had 1


def test_newer_snapshot_replaces_older_and_equal_rewrite_is_idempotent(client):
    write_online_items(client, TABLE, online_items(snapshot(DAY1)))
    assert read(client)["a"]["orders_lifetime"] == 1
    assert write_online_items(client, TABLE, online_items(snapshot(DAY2))).written == 2 * len(GROUPS)
    assert write_online_items(client, TABLE, online_items(snapshot(DAY2))).written == 2 * len(GROUPS)
    assert features_only(read(client)["a"]) == expected(DAY2, "a")


def test_one_call_with_both_snapshots_keeps_the_newest(client):
    items = online_items(snapshot(DAY2)) + online_items(snapshot(DAY1))
    report = write_online_items(client, TABLE, items, max_workers=4)
    assert report.written == 2 * len(GROUPS) and report.skipped_older == 2 * len(GROUPS)
    assert features_only(read(client)["a"]) == expected(DAY2, "a")


def test_ttl_is_applied_on_read(client):
    write_online_items(client, TABLE, online_items(snapshot(DAY2)))
    # a's latest order: 10-05 09:00; b has no order at all
    fresh = read(client, ttl=dt.timedelta(days=3), now=dt.datetime(2026, 10, 8, 9, tzinfo=UTC))
    assert fresh["a"]["orders_lifetime"] == 2
    assert fresh["b"]["orders_lifetime"] is None  # no order event: nothing fresh to serve
    assert fresh["a"]["top_category_90d"] == "Shoes"
    assert fresh["b"]["preferred_channel_90d"] is None  # b's only event is 7 days old
    stale = read(client, ttl=dt.timedelta(days=3), now=dt.datetime(2026, 10, 8, 9, 0, 1, tzinfo=UTC))
    assert all(stale["a"][f.name] is None for f in FEATURES if f.group in ("orders", "lifetimes"))
    assert stale["a"]["orders_feature_ts"] is None
    per_group = read(
        client,
        ttl={"orders": dt.timedelta(days=30), "engagement": dt.timedelta(hours=1)},
        now=dt.datetime(2026, 10, 8, tzinfo=UTC),
    )
    assert per_group["a"]["orders_lifetime"] == 2
    assert per_group["a"]["sessions_7d"] is None
    assert per_group["a"]["top_category_90d"] == "Shoes"  # no TTL given for preferences


def test_missing_person_reads_as_nulls(client):
    got = read(client, persons=("ghost",))
    assert set(got) == {"ghost"} and all(got["ghost"][f.name] is None for f in FEATURES)


class Throttling:
    """A real client whose first ``n`` calls of ``method`` are throttled (moto never throttles)."""

    def __init__(self, client, method, n, code="ProvisionedThroughputExceededException"):
        self._client, self._method, self._left, self._code = client, method, n, code
        self._lock = threading.Lock()
        self.throttled = 0

    def __getattr__(self, name):
        real = getattr(self._client, name)
        if name != self._method:
            return real

        def call(**kwargs):
            with self._lock:
                throttle = self._left > 0
                self._left -= throttle
                self.throttled += throttle
            if throttle:
                raise ClientError({"Error": {"Code": self._code, "Message": "slow down"}}, name)
            return real(**kwargs)

        return call


def test_throttled_puts_are_retried_with_backoff(client):
    waits: list[float] = []
    fake = Throttling(client, "put_item", 5)
    backoff = Backoff(sleep=waits.append, rng=lambda: 1.0)
    report = write_online_items(fake, TABLE, online_items(snapshot(DAY2)), max_workers=3, backoff=backoff)
    assert fake.throttled == 5 and report.retries == 5 and report.written == 2 * len(GROUPS)
    assert waits and all(w > 0 for w in waits)
    assert features_only(read(client)["a"]) == expected(DAY2, "a")


def test_throttling_that_outlasts_the_retries_fails_the_bundle(client):
    fake = Throttling(client, "put_item", 10_000)
    with pytest.raises(TransientSinkError):
        write_online_items(
            fake, TABLE, online_items(snapshot(DAY2))[:1], backoff=Backoff(max_attempts=3, sleep=lambda s: None)
        )


def test_terminal_error_is_reported_not_retried(client):
    fake = Throttling(client, "put_item", 1, code="ValidationException")
    report = write_online_items(fake, TABLE, online_items(snapshot(DAY2))[:2], max_workers=1)
    assert report.retries == 0 and len(report.failures) == 1 and report.written == 1
    assert report.failures[0].code == "ValidationException"


class Unprocessed:
    """batch_get_item answers the first call with half its keys left unprocessed (as DynamoDB may)."""

    def __init__(self, client):
        self._client, self.calls = client, 0

    def __getattr__(self, name):
        return getattr(self._client, name)

    def batch_get_item(self, RequestItems):
        self.calls += 1
        if self.calls == 1:
            ((table, spec),) = RequestItems.items()
            keys = spec["Keys"]
            half = {table: {**spec, "Keys": keys[: len(keys) // 2]}}
            response = self._client.batch_get_item(RequestItems=half)
            response["UnprocessedKeys"] = {table: {**spec, "Keys": keys[len(keys) // 2 :]}}
            return response
        return self._client.batch_get_item(RequestItems=RequestItems)


def test_unprocessed_keys_on_read_are_retried(client):
    write_online_items(client, TABLE, online_items(snapshot(DAY2)))
    fake = Unprocessed(client)
    got = read_online_features(
        fake, TABLE, "acme-in", ["a", "b"], ttl=None, now=NOW, backoff=Backoff(sleep=lambda s: None)
    )
    assert fake.calls == 2
    assert features_only(got["a"]) == expected(DAY2, "a") and features_only(got["b"]) == expected(DAY2, "b")
