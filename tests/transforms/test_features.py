"""Feature values against an independent computation (DuckDB SQL over the same lake) and hand cases."""

from __future__ import annotations

import datetime as dt
import json
import math

import duckdb
import numpy as np
import pyarrow as pa
import pytest

from schemas.features import FEATURE_NAMES, GROUPS, OFFLINE_SCHEMA
from schemas.lake import EVENTS_SCHEMA
from tests.feature_lake import REFERENCE, generate_rows, rows_table, write_lake
from transforms.features import as_of_time, build_training_set, features_as_of

UTC = dt.UTC

# The reference: written from the definitions in docs/features.md, not from transforms/features.py.
# `q` holds the queries (qid, tenant_id, person_id, t); `ev` the lake rows.
REFERENCE_SQL = """
WITH ev AS (
    SELECT *, json_extract_string(properties, '$.category') AS category,
           lower(trim(json_extract_string(properties, '$.payment_method'))) AS method,
           type = 'track' AND event = 'Order Completed' AS is_order
    FROM lake WHERE NOT coalesce(is_bot, false)
),
vis AS (  -- events visible at each query's T: both clocks <= T
    SELECT q.qid, q.t, ev.* EXCLUDE (tenant_id, person_id)
    FROM q JOIN ev USING (tenant_id, person_id)
    WHERE ev.timestamp <= q.t AND ev.received_at <= q.t
),
agg AS (
    SELECT qid,
        count(*) FILTER (is_order) AS orders_lifetime,
        coalesce(sum(revenue_inr::DOUBLE) FILTER (is_order), 0) AS revenue_inr_lifetime,
        (epoch_us(any_value(t)) - epoch_us(max(timestamp) FILTER (is_order))) / 86400e6 AS days_since_last_order,
        count(*) FILTER (is_order AND timestamp > t - INTERVAL 7 DAY) AS orders_7d,
        count(*) FILTER (is_order AND timestamp > t - INTERVAL 30 DAY) AS orders_30d,
        count(*) FILTER (is_order AND timestamp > t - INTERVAL 90 DAY) AS orders_90d,
        count(*) FILTER (is_order AND timestamp > t - INTERVAL 365 DAY) AS orders_365d,
        coalesce(sum(revenue_inr::DOUBLE) FILTER (is_order AND timestamp > t - INTERVAL 7 DAY), 0) AS revenue_inr_7d,
        coalesce(sum(revenue_inr::DOUBLE) FILTER (is_order AND timestamp > t - INTERVAL 30 DAY), 0) AS revenue_inr_30d,
        coalesce(sum(revenue_inr::DOUBLE) FILTER (is_order AND timestamp > t - INTERVAL 90 DAY), 0) AS revenue_inr_90d,
        coalesce(sum(revenue_inr::DOUBLE) FILTER (is_order AND timestamp > t - INTERVAL 365 DAY), 0)
            AS revenue_inr_365d,
        count(*) FILTER (type = 'track' AND event = 'Order Refunded' AND timestamp > t - INTERVAL 365 DAY)
            AS refunds_365d,
        count(*) FILTER (type = 'track' AND event = 'Payment Failed' AND timestamp > t - INTERVAL 365 DAY) AS failed,
        count(*) FILTER (type = 'track' AND event = 'Payment Captured' AND timestamp > t - INTERVAL 365 DAY)
            AS captured,
        count(*) FILTER (is_order AND method = 'cod' AND timestamp > t - INTERVAL 365 DAY) AS cod,
        (epoch_us(any_value(t)) - epoch_us(max(timestamp) FILTER (session_id IS NOT NULL))) / 86400e6
            AS days_since_last_session,
        count(DISTINCT session_id) FILTER (timestamp > t - INTERVAL 7 DAY) AS sessions_7d,
        count(DISTINCT session_id) FILTER (timestamp > t - INTERVAL 30 DAY) AS sessions_30d,
        count(DISTINCT session_id) FILTER (timestamp > t - INTERVAL 90 DAY) AS sessions_90d,
        count(*) FILTER (type = 'track' AND event = 'Product Viewed' AND timestamp > t - INTERVAL 7 DAY)
            AS product_views_7d,
        count(*) FILTER (type = 'track' AND event = 'Product Viewed' AND timestamp > t - INTERVAL 30 DAY)
            AS product_views_30d,
        count(*) FILTER (type = 'track' AND event = 'Product Viewed' AND timestamp > t - INTERVAL 90 DAY)
            AS product_views_90d,
        max(timestamp) FILTER (type = 'track' AND event IN
            ('Order Completed', 'Order Refunded', 'Order Cancelled', 'Payment Failed', 'Payment Captured'))
            AS orders_event_ts,
        max(timestamp) FILTER (session_id IS NOT NULL) AS engagement_event_ts,
        max(timestamp) AS preferences_event_ts,
        max(timestamp) FILTER (is_order) AS lifetimes_event_ts,
        nullif(count(DISTINCT timestamp::DATE) FILTER (is_order), 0) - 1 AS lt_frequency,
        date_diff('day', min(timestamp::DATE) FILTER (is_order), max(timestamp::DATE) FILTER (is_order))
            AS lt_recency_days,
        date_diff('day', min(timestamp::DATE) FILTER (is_order), any_value(t)::DATE) AS lt_T_days
    FROM vis GROUP BY qid
),
sess AS (
    SELECT qid, any_value(t) AS t, max(timestamp) AS last_ts,
           bool_or(type = 'track' AND event = 'Product Added') AS added, bool_or(is_order) AS ordered
    FROM vis WHERE session_id IS NOT NULL GROUP BY qid, session_id
),
abandon AS (
    SELECT qid, count(*) AS cart_abandonments_90d FROM sess
    WHERE last_ts > t - INTERVAL 90 DAY AND added AND NOT ordered GROUP BY qid
),
prefs AS (
    SELECT qid, kind, value FROM (
        SELECT qid, kind, value, row_number() OVER (PARTITION BY qid, kind ORDER BY n DESC, value ASC) AS rk
        FROM (
            SELECT qid, kind, value, count(*) AS n FROM (
                SELECT qid, 'category' AS kind, category AS value FROM vis
                    WHERE type = 'track' AND event IN ('Product Viewed', 'Product Added')
                    AND timestamp > t - INTERVAL 90 DAY
                UNION ALL SELECT qid, 'channel', channel FROM vis WHERE timestamp > t - INTERVAL 90 DAY
                UNION ALL SELECT qid, 'device', ua_device FROM vis WHERE timestamp > t - INTERVAL 90 DAY
                UNION ALL SELECT qid, 'os', ua_os FROM vis WHERE timestamp > t - INTERVAL 90 DAY
            ) WHERE value IS NOT NULL GROUP BY ALL
        )
    ) WHERE rk = 1
)
SELECT q.qid, q.tenant_id, q.person_id, a.*,
    CASE WHEN a.orders_lifetime > 0 THEN a.revenue_inr_lifetime / a.orders_lifetime END AS avg_order_value_inr,
    CASE WHEN a.failed + a.captured > 0 THEN a.failed / (a.failed + a.captured) END AS payment_failure_rate_365d,
    CASE WHEN a.orders_365d > 0 THEN a.cod / a.orders_365d END AS cod_share_365d,
    coalesce(ab.cart_abandonments_90d, 0) AS cart_abandonments_90d,
    (SELECT value FROM prefs p WHERE p.qid = q.qid AND kind = 'category') AS top_category_90d,
    (SELECT value FROM prefs p WHERE p.qid = q.qid AND kind = 'channel') AS preferred_channel_90d,
    (SELECT value FROM prefs p WHERE p.qid = q.qid AND kind = 'device') AS preferred_device_90d,
    (SELECT value FROM prefs p WHERE p.qid = q.qid AND kind = 'os') AS preferred_os_90d
FROM q LEFT JOIN agg a USING (qid) LEFT JOIN abandon ab USING (qid)
ORDER BY q.qid
"""


def reference_features(lake_glob: str, queries: list[tuple[str, str, dt.datetime]]) -> list[dict]:
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    con.execute(f"CREATE VIEW lake AS SELECT * FROM read_parquet('{lake_glob}', hive_partitioning = true)")
    q = pa.table(
        {
            "qid": list(range(len(queries))),
            "tenant_id": [x[0] for x in queries],
            "person_id": [x[1] for x in queries],
            "t": pa.array([x[2] for x in queries], pa.timestamp("us", tz="UTC")),
        }
    )
    con.register("q", q)
    return con.sql(REFERENCE_SQL).to_arrow_table().to_pylist()


def _ts(value) -> dt.datetime | None:
    return None if value is None else value.astimezone(UTC)


def assert_same(mine: dict, ref: dict, context: str) -> None:
    for name in FEATURE_NAMES:
        a, b = mine[name], ref[name]
        if b is None and name.startswith(("orders_", "revenue_inr_", "refunds", "sessions_", "product_views")):
            b = 0  # the reference has no agg row for a person without visible events
        if isinstance(a, float) or isinstance(b, float):
            if a is None or b is None:
                assert a is None and b is None, f"{context} {name}: {a} vs {b}"
            else:
                assert math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-6), f"{context} {name}: {a} vs {b}"
        else:
            assert a == b, f"{context} {name}: {a!r} vs {b!r}"
    for group in GROUPS:
        assert _ts(mine[group.event_ts_column]) == _ts(ref[group.event_ts_column]), f"{context} {group.name}"


@pytest.fixture(scope="module")
def lake(tmp_path_factory):
    root = tmp_path_factory.mktemp("features_lake")
    table = rows_table(generate_rows(persons=80, seed=11))
    write_lake(str(root), table)
    return str(root), table


@pytest.mark.parametrize("day", [dt.date(2026, 10, 30), dt.date(2026, 6, 15)])
def test_snapshot_matches_duckdb(lake, day):
    root, table = lake
    mine = features_as_of(table, [day]).to_pylist()
    assert mine, "the generated lake must give persons to compare"
    t = as_of_time(day)
    ref = reference_features(f"{root}/events/**/*.parquet", [(r["tenant_id"], r["person_id"], t) for r in mine])
    for m, r in zip(mine, ref, strict=True):
        assert (m["tenant_id"], m["person_id"]) == (r["tenant_id"], r["person_id"])
        assert _ts(m["as_of"]) == t
        assert_same(m, r, f"{m['person_id']}@{day}")
    # sanity: the data exercises the definitions (not all zeros / nulls)
    assert any(m["orders_30d"] for m in mine) and any(m["cart_abandonments_90d"] for m in mine)
    assert any(m["cod_share_365d"] not in (None, 0.0, 1.0) for m in mine) or day.month == 6


def test_snapshot_population_is_persons_with_a_visible_non_bot_event(lake):
    root, table = lake
    day = dt.date(2026, 9, 1)
    t = as_of_time(day)
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    expected = con.execute(
        f"SELECT DISTINCT tenant_id, person_id FROM read_parquet('{root}/events/**/*.parquet', hive_partitioning=true)"
        " WHERE NOT is_bot AND timestamp <= $t AND received_at <= $t ORDER BY ALL",
        {"t": t},
    ).fetchall()
    mine = features_as_of(table, [day])
    assert (
        sorted(zip(mine.column("tenant_id").to_pylist(), mine.column("person_id").to_pylist(), strict=True)) == expected
    )


def test_training_set_matches_duckdb_for_arbitrary_label_times(lake):
    root, table = lake
    rng = np.random.default_rng(3)
    persons = sorted({(r["tenant_id"], r["person_id"]) for r in table.select(["tenant_id", "person_id"]).to_pylist()})
    spine_rows = []
    for _ in range(150):
        tenant, person = persons[rng.integers(len(persons))]
        label = REFERENCE - dt.timedelta(seconds=int(rng.integers(-86_400, 400 * 86_400)))
        spine_rows.append({"tenant_id": tenant, "person_id": person, "label_timestamp": label, "label": 1})
    spine_rows.append({"tenant_id": "acme-in", "person_id": "nobody", "label_timestamp": REFERENCE, "label": 0})
    spine = pa.Table.from_pylist(spine_rows)
    mine = build_training_set(spine, table, ttl=None).to_pylist()
    ref = reference_features(
        f"{root}/events/**/*.parquet", [(r["tenant_id"], r["person_id"], r["label_timestamp"]) for r in spine_rows]
    )
    assert len(mine) == len(spine_rows)
    for m, r, s in zip(mine, ref, spine_rows, strict=True):
        assert m["label"] == s["label"] and m["person_id"] == s["person_id"]
        assert_same(m, r, f"{m['person_id']}@{s['label_timestamp']}")


def test_snapshot_and_training_set_agree(lake):
    _, table = lake
    day = dt.date(2026, 8, 20)
    snap = features_as_of(table, [day])
    spine = pa.table(
        {
            "tenant_id": snap.column("tenant_id"),
            "person_id": snap.column("person_id"),
            "label_timestamp": pa.array([as_of_time(day)] * snap.num_rows, pa.timestamp("us", tz="UTC")),
        }
    )
    train = build_training_set(spine, table, ttl=None)
    for name in FEATURE_NAMES:
        assert train.column(name).to_pylist() == snap.column(name).to_pylist(), name


def test_output_schema_is_the_declared_one(lake):
    _, table = lake
    out = features_as_of(table, [dt.date(2026, 10, 1), dt.date(2026, 10, 2)])
    assert out.schema.equals(OFFLINE_SCHEMA, check_metadata=False)
    assert set(out.column_names) >= set(FEATURE_NAMES)
    # two as-of dates -> two snapshots, each a person at most once
    keys = list(zip(*(out.column(c).to_pylist() for c in ("as_of", "tenant_id", "person_id")), strict=True))
    assert len(keys) == len(set(keys))
    assert len({k[0] for k in keys}) == 2


# --- hand cases: one per definition --------------------------------------------------------------

T0 = dt.datetime(2026, 10, 1, 10, 0, tzinfo=UTC)
DAY = dt.date(2026, 10, 10)  # T = 2026-10-10 23:59:59.999999


def ev(event, ts, *, person="a", typ="track", session="s1", props=None, **kw):
    return {
        "tenant_id": "acme-in",
        "event_date": ts.date(),
        "message_id": f"m-{event}-{ts.isoformat()}-{kw.get('revenue_inr')}",
        "type": typ,
        "event": event,
        "person_id": person,
        "session_id": session,
        "timestamp": ts,
        "received_at": kw.pop("received_at", ts),
        "properties": props if isinstance(props, str) else json.dumps(props or {}),
        "schema_version": "1.0.0",
        **kw,
    }


def one(rows, day=DAY, person="a"):
    out = features_as_of(pa.Table.from_pylist(rows, schema=EVENTS_SCHEMA), [day]).to_pylist()
    return next(r for r in out if r["person_id"] == person)


def test_rfm_and_order_windows():
    rows = [
        ev("Order Completed", T0 - dt.timedelta(days=400), revenue_inr=1000),  # outside every window
        ev("Order Completed", T0 - dt.timedelta(days=100), revenue_inr=300),  # 365d only
        ev("Order Completed", T0, revenue_inr=200),  # 30d (T - T0 = 9.58 days)
        ev("Order Completed", T0 + dt.timedelta(days=8), revenue_inr=None),  # 7d, no revenue: adds 0
    ]
    r = one(rows)
    assert r["orders_lifetime"] == 4 and r["revenue_inr_lifetime"] == 1500.0
    assert r["avg_order_value_inr"] == 375.0
    assert (r["orders_7d"], r["orders_30d"], r["orders_90d"], r["orders_365d"]) == (1, 2, 2, 3)
    assert (r["revenue_inr_7d"], r["revenue_inr_30d"], r["revenue_inr_365d"]) == (0.0, 200.0, 500.0)
    t = as_of_time(DAY)
    assert r["days_since_last_order"] == pytest.approx((t - (T0 + dt.timedelta(days=8))).total_seconds() / 86400)


def test_window_edge_is_exclusive_at_the_start_inclusive_at_t():
    t = as_of_time(DAY)
    rows = [
        ev("Order Completed", t - dt.timedelta(days=7), revenue_inr=1),  # exactly 7 days before: out of 7d
        ev("Order Completed", t - dt.timedelta(days=7) + dt.timedelta(microseconds=1), revenue_inr=2),
        ev("Order Completed", t, revenue_inr=4),  # at T: in
    ]
    r = one(rows)
    assert r["orders_7d"] == 2 and r["revenue_inr_7d"] == 6.0 and r["orders_30d"] == 3


def test_refunds_payment_failure_rate_and_cod_share():
    rows = [
        ev("Order Completed", T0, props={"payment_method": "cod"}, revenue_inr=10),
        ev("Order Completed", T0, props={"payment_method": " COD"}, revenue_inr=10),
        ev("Order Completed", T0, props={"payment_method": "upi"}, revenue_inr=10),
        ev("Order Completed", T0, props={}, revenue_inr=10),
        ev("Order Refunded", T0 + dt.timedelta(days=1), props={"payment_method": "cod"}),
        ev("Payment Failed", T0),
        ev("Payment Failed", T0),
        ev("Payment Captured", T0),
        ev("Payment Failed", T0 - dt.timedelta(days=400)),  # out of the 365-day window
    ]
    r = one(rows)
    assert r["refunds_365d"] == 1
    assert r["payment_failure_rate_365d"] == pytest.approx(2 / 3)
    assert r["cod_share_365d"] == 0.5


def test_ratios_are_null_without_a_denominator():
    r = one([ev(None, T0, typ="page")])
    assert r["payment_failure_rate_365d"] is None and r["cod_share_365d"] is None
    assert r["avg_order_value_inr"] is None and r["days_since_last_order"] is None
    assert r["orders_lifetime"] == 0 and r["revenue_inr_lifetime"] == 0.0
    assert r["orders_event_ts"] is None and r["lt_frequency"] is None


def test_sessions_product_views_and_cart_abandonment():
    rows = [
        # s1: viewed + added + ordered -> not abandoned
        ev("Product Viewed", T0, session="s1"),
        ev("Product Added", T0, session="s1"),
        ev("Order Completed", T0, session="s1", revenue_inr=5),
        # s2: added, no order -> abandoned
        ev("Product Added", T0 + dt.timedelta(days=4), session="s2"),
        # s3: only views, 40 days before -> session in 90d, not abandoned
        ev("Product Viewed", T0 - dt.timedelta(days=40), session="s3"),
        ev("Product Viewed", T0 - dt.timedelta(days=40), session="s3"),
        # s4: added 100 days before -> abandoned but outside 90d
        ev("Product Added", T0 - dt.timedelta(days=100), session="s4"),
        # no session (identify) -> not a session
        ev(None, T0 + dt.timedelta(days=5), typ="identify", session=None),
    ]
    r = one(rows)
    assert (r["sessions_7d"], r["sessions_30d"], r["sessions_90d"]) == (1, 2, 3)
    assert (r["product_views_7d"], r["product_views_30d"], r["product_views_90d"]) == (0, 1, 3)
    assert r["cart_abandonments_90d"] == 1
    t = as_of_time(DAY)
    assert r["days_since_last_session"] == pytest.approx((t - (T0 + dt.timedelta(days=4))).total_seconds() / 86400)


def test_preferences_mode_with_alphabetical_ties_and_nulls_ignored():
    rows = [
        ev("Product Viewed", T0, props={"category": "Shoes"}, channel="email", ua_device="Mobile", ua_os="iOS"),
        ev("Product Added", T0, props={"category": "Bags"}, channel="direct", ua_device="Mobile", ua_os="Android"),
        ev("Product Viewed", T0, props={"category": "Shoes"}, channel=None, ua_device=None, ua_os=None),
        ev("Product Viewed", T0, props={"category": "Bags"}, channel=None, ua_device="Desktop", ua_os=None),
        # order products' categories are not top-level: ignored
        ev("Order Completed", T0, props={"products": [{"category": "Zips"}] * 5}, channel=None),
        # older than 90 days: ignored
        ev("Product Viewed", T0 - dt.timedelta(days=95), props={"category": "Old"}, channel="paid", ua_device="TV"),
        ev("Product Viewed", T0 - dt.timedelta(days=95), props={"category": "Old"}, channel="paid", ua_device="TV"),
        ev("Product Viewed", T0 - dt.timedelta(days=95), props={"category": "Old"}, channel="paid", ua_device="TV"),
    ]
    r = one(rows)
    assert r["top_category_90d"] == "Bags"  # 2 vs 2: alphabetical
    assert r["preferred_channel_90d"] == "direct"  # direct 1, email 1
    assert r["preferred_device_90d"] == "Mobile"
    assert r["preferred_os_90d"] == "Android"


def test_properties_that_the_fast_json_path_rejects_still_parse():
    rows = [
        ev("Product Viewed", T0, props='{"category": 3}'),  # not a string: null
        ev("Product Viewed", T0, props="not json"),
        ev("Product Viewed", T0, props={"category": "Kurta"}),
        ev("Order Completed", T0, props='{"payment_method": "cod", "note": "line\\nbreak"}', revenue_inr=1),
    ]
    r = one(rows)
    assert r["top_category_90d"] == "Kurta" and r["cod_share_365d"] == 1.0 and r["product_views_7d"] == 0


def test_bots_are_ignored():
    rows = [ev("Order Completed", T0, revenue_inr=9, is_bot=True), ev(None, T0, typ="page", person="b")]
    out = features_as_of(pa.Table.from_pylist(rows, schema=EVENTS_SCHEMA), [DAY])
    assert out.column("person_id").to_pylist() == ["b"]


def test_lifetimes_summary_counts_same_day_orders_once():
    rows = [
        ev("Order Completed", dt.datetime(2026, 9, 1, 9, tzinfo=UTC), revenue_inr=10),
        ev("Order Completed", dt.datetime(2026, 9, 1, 18, tzinfo=UTC), revenue_inr=10),
        ev("Order Completed", dt.datetime(2026, 9, 5, 8, tzinfo=UTC), revenue_inr=10),
        ev("Order Completed", dt.datetime(2026, 9, 8, 8, tzinfo=UTC), revenue_inr=10),
    ]
    r = one(rows)
    # distinct purchase days 09-01, 09-05, 09-08 -> 2 repeat periods; age at last purchase 7 days;
    # age at the as-of date 2026-10-10: 39 days
    assert (r["lt_frequency"], r["lt_recency_days"], r["lt_T_days"]) == (2.0, 7.0, 39.0)
    assert r["orders_lifetime"] == 4


def test_docs_table_is_generated_from_the_definitions():
    from pathlib import Path

    from schemas.features import markdown_table

    docs = Path(__file__).resolve().parents[2] / "docs" / "features.md"
    assert markdown_table() in docs.read_text(encoding="utf-8")
