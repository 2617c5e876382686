"""Point-in-time correctness: neither a future event nor a late-arriving (backfilled) one leaks; TTL nulls."""

from __future__ import annotations

import datetime as dt
import json

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.features import FEATURE_NAMES, GROUPS, features_of
from schemas.lake import EVENTS_SCHEMA
from transforms.features import apply_ttl, build_training_set, features_as_of

UTC = dt.UTC
LABEL = dt.datetime(2026, 10, 10, 12, 0, tzinfo=UTC)


def ev(event, ts, received=None, person="a", typ="track", session="s1", **kw):
    return {
        "tenant_id": "acme-in",
        "event_date": ts.date(),
        "message_id": f"{event}-{ts.isoformat()}-{received}",
        "type": typ,
        "event": event,
        "person_id": person,
        "session_id": session,
        "timestamp": ts,
        "received_at": received or ts,
        "properties": json.dumps(kw.pop("props", {})),
        "schema_version": "1.0.0",
        **kw,
    }


def events(*rows) -> pa.Table:
    return pa.Table.from_pylist(list(rows), schema=EVENTS_SCHEMA)


def spine(*labels, person="a") -> pa.Table:
    return pa.Table.from_pylist(
        [{"tenant_id": "acme-in", "person_id": person, "label_timestamp": t, "label": i} for i, t in enumerate(labels)]
    )


def test_late_arriving_event_is_excluded_before_it_arrived():
    """timestamp <= T but received_at > T: a backfill after the label time must not leak (Feast #6615)."""
    base = ev("Order Completed", LABEL - dt.timedelta(days=3), revenue_inr=100)
    backfilled = ev(
        "Order Completed", LABEL - dt.timedelta(days=1), received=LABEL + dt.timedelta(hours=1), revenue_inr=5000
    )
    table = events(base, backfilled)
    before, after = build_training_set(spine(LABEL, LABEL + dt.timedelta(hours=2)), table, ttl=None).to_pylist()
    assert before["orders_lifetime"] == 1 and before["revenue_inr_lifetime"] == 100.0
    assert before["orders_event_ts"] == LABEL - dt.timedelta(days=3)
    assert before["days_since_last_order"] == pytest.approx(3.0)
    # once it has arrived, it counts with its own event time
    assert after["orders_lifetime"] == 2 and after["revenue_inr_lifetime"] == 5100.0
    assert after["orders_event_ts"] == LABEL - dt.timedelta(days=1)


def test_event_after_the_label_time_is_excluded_even_if_received_earlier():
    """timestamp > T: a future-dated event (clock skew) received before T must not leak either."""
    future = ev("Order Completed", LABEL + dt.timedelta(minutes=5), received=LABEL - dt.timedelta(hours=1))
    past = ev("Product Viewed", LABEL - dt.timedelta(hours=2))
    (row,) = build_training_set(spine(LABEL), events(future, past), ttl=None).to_pylist()
    assert row["orders_lifetime"] == 0 and row["orders_event_ts"] is None
    assert row["product_views_7d"] == 1


def test_boundaries_are_inclusive_at_t():
    at_t = ev("Order Completed", LABEL, received=LABEL, revenue_inr=7)
    one_after = ev("Order Completed", LABEL, received=LABEL + dt.timedelta(microseconds=1), revenue_inr=9)
    (row,) = build_training_set(spine(LABEL), events(at_t, one_after), ttl=None).to_pylist()
    assert row["orders_lifetime"] == 1 and row["revenue_inr_lifetime"] == 7.0


def test_snapshot_excludes_late_events_too():
    day = dt.date(2026, 10, 10)
    late = ev(
        "Order Completed", dt.datetime(2026, 10, 9, tzinfo=UTC), received=dt.datetime(2026, 10, 11, 1, tzinfo=UTC)
    )
    seen = ev("Product Viewed", dt.datetime(2026, 10, 9, tzinfo=UTC))
    (row,) = features_as_of(events(late, seen), [day]).to_pylist()
    assert row["orders_lifetime"] == 0
    (row,) = features_as_of(events(late, seen), [dt.date(2026, 10, 11)]).to_pylist()
    assert row["orders_lifetime"] == 1


def test_ttl_nulls_a_group_whose_latest_event_is_older_than_the_ttl():
    table = events(
        ev("Order Completed", LABEL - dt.timedelta(days=100), revenue_inr=100),
        ev("Product Viewed", LABEL - dt.timedelta(days=2)),
    )
    (row,) = build_training_set(spine(LABEL), table, ttl=dt.timedelta(days=90)).to_pylist()
    for feat in features_of("orders"):
        assert row[feat.name] is None, feat.name
    assert row["lt_frequency"] is None  # lifetimes group: same order clock
    assert row["product_views_7d"] == 1 and row["sessions_7d"] == 1  # engagement is fresh
    assert row["preferences_event_ts"] == LABEL - dt.timedelta(days=2)
    # the same row without a TTL keeps the values: the TTL is the only thing nulling them
    (row,) = build_training_set(spine(LABEL), table, ttl=None).to_pylist()
    assert row["orders_lifetime"] == 1 and row["days_since_last_order"] == pytest.approx(100.0)
    (row,) = build_training_set(spine(LABEL), table, ttl=dt.timedelta(days=100)).to_pylist()
    assert row["orders_lifetime"] == 1  # exactly at the TTL: still fresh


def test_ttl_nulls_every_group_without_a_qualifying_event():
    (row,) = build_training_set(
        spine(LABEL, person="nobody"), events(ev("Product Viewed", LABEL)), ttl=dt.timedelta(days=1)
    ).to_pylist()
    assert all(row[name] is None for name in FEATURE_NAMES)


@settings(max_examples=40, deadline=None)
@given(
    offsets=st.lists(st.tuples(st.integers(-30 * 24, 30 * 24), st.integers(0, 30 * 24)), min_size=1, max_size=12),
    ttl_hours=st.one_of(st.none(), st.integers(1, 40 * 24)),
)
def test_no_leak_property(offsets, ttl_hours):
    """For any events: the row equals the row computed from only the events visible at T."""
    rows = [
        ev(
            "Order Completed",
            LABEL + dt.timedelta(hours=t),
            received=LABEL + dt.timedelta(hours=t + delay),
            revenue_inr=10 + i,
            session=f"s{i % 3}",
        )
        for i, (t, delay) in enumerate(offsets)
    ]
    visible = [r for r in rows if r["timestamp"] <= LABEL and r["received_at"] <= LABEL]
    ttl = None if ttl_hours is None else dt.timedelta(hours=ttl_hours)
    (full,) = build_training_set(spine(LABEL), events(*rows), ttl=ttl).to_pylist()
    (only,) = build_training_set(spine(LABEL), events(*visible, ev("x", LABEL, person="z")), ttl=ttl).to_pylist()
    assert full == only
    expected = sum(1 for r in visible)
    if ttl is None or (visible and LABEL - max(r["timestamp"] for r in visible) <= ttl):
        assert full["orders_lifetime"] == expected
    else:
        assert full["orders_lifetime"] is None


def test_apply_ttl_only_touches_its_group_columns():
    table = events(
        ev("Order Completed", LABEL - dt.timedelta(days=10)),
        ev("Product Viewed", LABEL - dt.timedelta(days=1)),
    )
    feats = features_as_of(table, [LABEL])
    fresh = apply_ttl(feats, dt.timedelta(days=5))
    for group in GROUPS:
        assert fresh.column(group.event_ts_column).equals(feats.column(group.event_ts_column))
        nulled = group.name in ("orders", "lifetimes")
        for feat in features_of(group.name):
            if nulled:
                assert fresh.column(feat.name).null_count == fresh.num_rows, feat.name
            else:
                assert fresh.column(feat.name).equals(feats.column(feat.name)), feat.name
