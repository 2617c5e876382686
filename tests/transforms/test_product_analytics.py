"""Product and revenue analytics: hand-computed cases and DuckDB SQL computing the same numbers."""

from __future__ import annotations

import datetime as dt
import json
from decimal import Decimal

import duckdb
import numpy as np
import pandas as pd
import pytest

from tests.analytics_lake import generate_rows
from transforms.product_analytics import analyse, carts, dedupe_orders, finalize, frame, merge_daily, partials

END = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)
T0 = dt.datetime(2026, 10, 1, 10, 0, tzinfo=dt.UTC)


def h(hours: float) -> dt.datetime:
    return T0 + dt.timedelta(hours=hours)


def row(person, when, event, props=None, tenant="t1", order_id=None, inr=None, mid=None, **cols):
    row.n = getattr(row, "n", 0) + 1
    return {
        "tenant_id": tenant,
        "person_id": person,
        "message_id": mid or f"m{row.n:06d}",
        "timestamp": when,
        "type": "track",
        "event": event,
        "properties": json.dumps(props or {}),
        "order_id": order_id,
        "currency": cols.pop("currency", "INR"),
        "revenue_inr": None if inr is None else Decimal(str(inr)),
        "fx_rate": cols.pop("fx_rate", None),
        "channel": cols.pop("channel", None),
        "geo_country": cols.pop("geo_country", None),
        "geo_region": cols.pop("geo_region", None),
    }


def add(person, when, pid="A", qty=1, price=100, category="Cat", **kw):
    return row(
        person, when, "Product Added", {"product_id": pid, "quantity": qty, "price": price, "category": category}, **kw
    )


def view(person, when, pid="A", price=100, category="Cat", name=None, **kw):
    props = {"product_id": pid, "price": price, "category": category}
    if name:
        props["name"] = name
    return row(person, when, "Product Viewed", props, **kw)


def order(person, when, items, order_id, inr, **kw):
    products = [{"product_id": p, "quantity": q, "price": pr, "category": c} for p, q, pr, c in items]
    return row(
        person, when, "Order Completed", {"order_id": order_id, "products": products}, order_id=order_id, inr=inr, **kw
    )


def cart_statuses(rows, hours=24, end=END):
    df = dedupe_orders(frame(pd.DataFrame(rows)))
    table, _member = carts(df, hours, end)
    return {p: list(g.sort_values("opened_at")["status"]) for p, g in table.groupby("person_id")}


# --- carts -----------------------------------------------------------------------------------


def test_cart_states_by_hand():
    rows = [
        add("bought", h(0)),
        add("bought", h(1)),
        order("bought", h(2), [("A", 2, 100, "Cat")], "o1", 200),
        add("late_order", h(0)),
        order("late_order", h(25), [("A", 1, 100, "Cat")], "o2", 100),  # more than 24 h after the last add
        add("two_carts", h(0)),
        add("two_carts", h(30)),  # a 30 h gap abandons the first cart
        order("no_cart", h(5), [("A", 1, 100, "Cat")], "o3", 100),
        add("pending", END - dt.timedelta(hours=2)),
        row("after_order", h(0), "Checkout Started", {"products": [{"product_id": "A"}]}),
        order("after_order", h(0.2), [("A", 1, 100, "Cat")], "o4", 100),
        add("after_order", h(1)),  # a new cart after the order, never bought
        add("boundary", h(0)),
        order("boundary", h(24), [("A", 1, 100, "Cat")], "o5", 100),  # exactly N hours: inclusive
    ]
    assert cart_statuses(rows) == {
        "bought": ["purchased"],
        "late_order": ["abandoned"],
        "two_carts": ["abandoned", "abandoned"],
        "pending": ["pending"],
        "after_order": ["purchased", "abandoned"],
        "boundary": ["purchased"],
    }


def test_product_level_cart_status_needs_the_product_in_the_order():
    rows = [
        add("p", h(0), pid="A", category="X"),
        add("p", h(0.5), pid="B", category="Y"),
        order("p", h(1), [("A", 1, 100, "X")], "o1", 100),
    ]
    out = analyse(pd.DataFrame(rows), 24, END)
    prod = out["product_funnel"].set_index("product_id")
    assert prod.loc["A", ["carts_purchased", "carts_abandoned"]].tolist() == [1, 0]
    assert prod.loc["B", ["carts_purchased", "carts_abandoned"]].tolist() == [0, 1]
    assert prod.loc["B", "cart_abandonment_rate"] == 1.0
    cat = out["category_funnel"].set_index("category")
    assert cat.loc["X", "carts_purchased"] == 1 and cat.loc["Y", "carts_abandoned"] == 1
    daily = out["cart_abandonment"]
    assert daily[["carts", "carts_purchased", "carts_abandoned"]].iloc[0].tolist() == [1, 1, 0]


# --- product funnel --------------------------------------------------------------------------


def test_product_funnel_by_hand():
    rows = [
        view("v1", h(0), name="Serum old name"),
        view("v1", h(1), name="Serum"),
        view("v2", h(0)),
        view("v3", h(0)),
        add("v1", h(2), qty=2),
        add("v2", h(2), qty=1),
        add("x", h(2), qty=3),  # added without viewing in range
        order("v1", h(3), [("A", 2, 100, "Cat")], "o1", 150),
        order(
            "v1",
            h(
                3,
            )
            + dt.timedelta(seconds=5),
            [("A", 2, 100, "Cat")],
            "o1",
            150,
            mid="zz-webhook",
        ),  # copy
        order("x", h(4), [("A", 1, 1.5, "Cat")], "o2", 124.875, currency="USD", fx_rate=83.25),
    ]
    prod = analyse(pd.DataFrame(rows), 24, END)["product_funnel"].set_index("product_id").loc["A"]
    assert prod["name"] == "Serum"  # the latest event's value
    assert prod["category"] == "Cat"
    assert (prod["views"], prod["viewers"], prod["adds"], prod["adders"]) == (4, 3, 3, 3)
    assert prod["units_added"] == 6
    assert (prod["orders"], prod["purchasers"], prod["units_sold"]) == (2, 2, 3)
    assert prod["revenue_inr"] == pytest.approx(2 * 100 + 1 * 1.5 * 83.25)  # lines, gross of discounts
    assert (prod["viewers_who_added"], prod["adders_who_purchased"], prod["viewers_who_purchased"]) == (2, 2, 1)
    assert prod["view_to_add_rate"] == pytest.approx(2 / 3)
    assert prod["add_to_purchase_rate"] == pytest.approx(2 / 3)
    assert prod["view_to_purchase_rate"] == pytest.approx(1 / 3)


def test_orders_without_order_id_are_distinct_by_message():
    rows = [
        order("p", h(0), [("A", 1, 10, "C")], None, 10),
        order("p", h(1), [("A", 1, 10, "C")], None, 10),
    ]
    rows[0]["order_id"] = rows[1]["order_id"] = None
    prod = analyse(pd.DataFrame(rows), 24, END)["product_funnel"]
    assert prod["orders"].tolist() == [2]


# --- revenue ---------------------------------------------------------------------------------


def test_revenue_daily_by_hand():
    rows = [
        order("a", h(0), [("A", 1, 100, "C")], "o1", 90, channel="email", geo_country="IN", geo_region="MH"),
        order(
            "b",
            h(1),
            [("A", 2, 100, "C"), ("B", 1, 50, "C")],
            "o2",
            250,
            channel="email",
            geo_country="IN",
            geo_region="MH",
        ),
        order(
            "b",
            h(1.1),
            [("A", 2, 100, "C"), ("B", 1, 50, "C")],
            "o2",
            250,
            channel="email",
            geo_country="IN",
            geo_region="MH",
        ),
        order("c", h(2), [("A", 1, 100, "C")], "o3", 100),  # no channel, no geo
        row(
            "a",
            h(30),
            "Order Refunded",
            {"order_id": "o1"},
            order_id="o1",
            inr=90,
            channel="email",
            geo_country="IN",
            geo_region="MH",
        ),
    ]
    out = analyse(pd.DataFrame(rows), 24, END)["revenue_daily"]
    recs = {(str(r["date"]), r["channel"]): r for r in out.to_dict("records")}
    email = recs[("2026-10-01", "email")]
    assert (email["orders"], email["buyers"], email["units"], email["revenue_inr"]) == (2, 2, 4, 340)
    assert email["average_order_value_inr"] == 170
    assert email["refunds"] == 0
    unknown = recs[("2026-10-01", None)]
    assert unknown["geo_country"] is None and unknown["revenue_inr"] == 100
    refund = recs[("2026-10-02", "email")]
    assert (refund["orders"], refund["refunds"], refund["refunded_inr"], refund["net_revenue_inr"]) == (0, 1, 90, -90)
    assert np.isnan(refund["average_order_value_inr"])


def test_merge_daily_replaces_only_the_run_range():
    existing = pd.DataFrame(
        {
            "tenant_id": ["t1", "t1", "t1", "t2"],
            "date": [dt.date(2026, 10, d) for d in (1, 2, 3, 2)],
            "orders": [1, 2, 3, 4],
        }
    )
    new = pd.DataFrame({"tenant_id": ["t1"], "date": [dt.date(2026, 10, 2)], "orders": [20]})
    out = merge_daily(existing, new, dt.date(2026, 10, 2), dt.date(2026, 10, 2), "t1")
    assert list(zip(out["tenant_id"], out["date"].astype(str), out["orders"], strict=True)) == [
        ("t1", "2026-10-01", 1),
        ("t1", "2026-10-02", 20),
        ("t1", "2026-10-03", 3),
        ("t2", "2026-10-02", 4),
    ]
    # all tenants: t2's day 2 is gone too (the run found nothing there)
    out = merge_daily(existing, new, dt.date(2026, 10, 2), dt.date(2026, 10, 2), None)
    assert len(out) == 3 and out["orders"].tolist() == [1, 20, 3]
    assert merge_daily(None, new, None, dt.date(2026, 10, 2), None).equals(new)


def test_days_and_months_are_local_to_the_timezone():
    late = dt.datetime(2026, 10, 31, 20, 0, tzinfo=dt.UTC)  # 1 Nov 01:30 in India
    rows = [order("a", late, [("A", 1, 100, "C")], "o1", 100), add("a", late - dt.timedelta(hours=1))]
    end = dt.datetime(2026, 11, 2, tzinfo=dt.UTC)
    utc = analyse(pd.DataFrame(rows), 24, end)
    ist = analyse(pd.DataFrame(rows), 24, end, "Asia/Kolkata")
    assert [str(d) for d in utc["revenue_daily"]["date"]] == ["2026-10-31"]
    assert [str(d) for d in ist["revenue_daily"]["date"]] == ["2026-11-01"]
    assert str(utc["ltv_cohorts"]["cohort_month"].iloc[0]) == "2026-10-01"
    assert str(ist["ltv_cohorts"]["cohort_month"].iloc[0]) == "2026-11-01"
    assert [str(d) for d in ist["cart_abandonment"]["date"]] == ["2026-11-01"]  # 19:00 UTC = 00:30 IST
    # an order first sent before the window and re-sent inside it belongs before the window
    copy = dict(rows[0], message_id="zz-copy", timestamp=late + dt.timedelta(hours=2))
    moved = analyse(pd.DataFrame([*rows, copy]), 24, end, "Asia/Kolkata", data_start=late + dt.timedelta(hours=1))
    assert len(moved["revenue_daily"]) == 0
    # a data start cuts rows before it
    cut = analyse(pd.DataFrame(rows), 24, end, "Asia/Kolkata", data_start=late + dt.timedelta(seconds=1))
    assert len(cut["revenue_daily"]) == 0


# --- LTV -------------------------------------------------------------------------------------


def test_ltv_cohorts_by_hand():
    ts = lambda m, d: dt.datetime(2026, m, d, 12, tzinfo=dt.UTC)  # noqa: E731
    rows = [
        order("x", ts(8, 10), [("A", 1, 100, "C")], "o1", 100),
        order("x", ts(9, 5), [("A", 1, 50, "C")], "o2", 50),
        order("y", ts(8, 20), [("A", 1, 200, "C")], "o3", 200),
        order("z", ts(9, 1), [("A", 1, 30, "C")], "o4", 30),
    ]
    out = analyse(pd.DataFrame(rows), 24, dt.datetime(2026, 10, 16, tzinfo=dt.UTC))["ltv_cohorts"]
    got = [
        (
            str(r["cohort_month"]),
            r["months_since_first_order"],
            r["cohort_size"],
            r["active_persons"],
            r["revenue_inr"],
            r["cumulative_revenue_per_person_inr"],
            r["is_complete"],
        )
        for r in out.to_dict("records")
    ]
    assert got == [
        ("2026-08-01", 0, 2, 2, 300.0, 150.0, True),
        ("2026-08-01", 1, 2, 1, 50.0, 175.0, True),
        ("2026-08-01", 2, 2, 0, 0.0, 175.0, False),  # October is not over on 2026-10-15
        ("2026-09-01", 0, 1, 1, 30.0, 30.0, True),
        ("2026-09-01", 1, 1, 0, 0.0, 30.0, False),
    ]


# --- bucketing is exact ----------------------------------------------------------------------


def test_partials_of_person_buckets_add_up_to_the_whole():
    df = pd.DataFrame(generate_rows(persons=120, seed=21))
    whole = analyse(df, 24, END)
    odd = df["person_id"].str[-1].astype(int) % 2 == 1
    parts = [partials(df.loc[odd], 24, END), partials(df.loc[~odd], 24, END)]
    split = finalize(parts, (END - dt.timedelta(days=1)).date())
    for name, table in whole.items():
        pd.testing.assert_frame_equal(split[name], table, check_dtype=False)


# --- against DuckDB SQL ------------------------------------------------------------------------

ORDERS_SQL = """
CREATE TEMP TABLE orders AS
SELECT * EXCLUDE (rn) FROM (
  SELECT *, coalesce(order_id, 'msg:' || message_id) AS order_key,
         row_number() OVER (PARTITION BY tenant_id, coalesce(order_id, 'msg:' || message_id)
                            ORDER BY timestamp, message_id) AS rn
  FROM rows WHERE type = 'track' AND event = 'Order Completed') WHERE rn = 1;
CREATE TEMP TABLE lines AS
SELECT tenant_id, person_id, event, message_id, NULL AS order_key,
       json_extract_string(properties, '$.product_id') AS product_id,
       json_extract_string(properties, '$.category') AS category,
       coalesce(TRY_CAST(json_extract(properties, '$.quantity') AS DOUBLE), 1) AS quantity, NULL::DOUBLE AS line_inr
FROM rows WHERE type = 'track' AND event IN ('Product Viewed', 'Product Added')
UNION ALL
SELECT tenant_id, person_id, event, message_id, order_key,
       json_extract_string(p, '$.product_id'), json_extract_string(p, '$.category'),
       coalesce(TRY_CAST(json_extract(p, '$.quantity') AS DOUBLE), 1),
       TRY_CAST(json_extract(p, '$.price') AS DOUBLE) * coalesce(TRY_CAST(json_extract(p, '$.quantity') AS DOUBLE), 1)
         * coalesce(fx_rate, 1)
FROM (SELECT *, unnest(json_extract(properties, '$.products[*]')) AS p FROM orders);
"""

PRODUCT_SQL = """
WITH v AS (SELECT DISTINCT tenant_id, product_id, person_id FROM lines WHERE event = 'Product Viewed'),
a AS (SELECT DISTINCT tenant_id, product_id, person_id FROM lines WHERE event = 'Product Added'),
o AS (SELECT DISTINCT tenant_id, product_id, person_id FROM lines WHERE event = 'Order Completed')
SELECT l.tenant_id, l.product_id,
  count(*) FILTER (WHERE event = 'Product Viewed') AS views,
  count(*) FILTER (WHERE event = 'Product Added') AS adds,
  coalesce(sum(quantity) FILTER (WHERE event = 'Product Added'), 0) AS units_added,
  count(DISTINCT order_key) FILTER (WHERE event = 'Order Completed') AS orders,
  coalesce(sum(quantity) FILTER (WHERE event = 'Order Completed'), 0) AS units_sold,
  round(coalesce(sum(line_inr), 0), 4) AS revenue_inr,
  (SELECT count(*) FROM v WHERE v.tenant_id = l.tenant_id AND v.product_id = l.product_id) AS viewers,
  (SELECT count(*) FROM a WHERE a.tenant_id = l.tenant_id AND a.product_id = l.product_id) AS adders,
  (SELECT count(*) FROM o WHERE o.tenant_id = l.tenant_id AND o.product_id = l.product_id) AS purchasers,
  (SELECT count(*) FROM v JOIN a USING (tenant_id, product_id, person_id)
     WHERE v.tenant_id = l.tenant_id AND v.product_id = l.product_id) AS viewers_who_added,
  (SELECT count(*) FROM a JOIN o USING (tenant_id, product_id, person_id)
     WHERE a.tenant_id = l.tenant_id AND a.product_id = l.product_id) AS adders_who_purchased
FROM lines l GROUP BY ALL ORDER BY 1, 2
"""

REVENUE_SQL = """
SELECT tenant_id, CAST(timestamp AS DATE) AS date, channel, geo_country, geo_region,
       count(*) FILTER (WHERE event = 'Order Completed') AS orders,
       count(DISTINCT person_id) FILTER (WHERE event = 'Order Completed') AS buyers,
       round(coalesce(sum(CAST(revenue_inr AS DOUBLE)) FILTER (WHERE event = 'Order Completed'), 0), 4) AS revenue_inr,
       count(*) FILTER (WHERE event = 'Order Refunded') AS refunds,
       round(coalesce(sum(CAST(revenue_inr AS DOUBLE)) FILTER (WHERE event = 'Order Refunded'), 0), 4) AS refunded_inr
FROM (SELECT tenant_id, person_id, timestamp, event, revenue_inr, channel, geo_country, geo_region FROM orders
      UNION ALL
      SELECT tenant_id, person_id, timestamp, event, revenue_inr, channel, geo_country, geo_region FROM rows
      WHERE type = 'track' AND event = 'Order Refunded')
GROUP BY ALL ORDER BY ALL
"""

LTV_SQL = """
WITH o AS (
  SELECT tenant_id, person_id, CAST(revenue_inr AS DOUBLE) AS inr,
         year(timestamp) * 12 + month(timestamp) - 1 AS m,
         min(year(timestamp) * 12 + month(timestamp) - 1) OVER (PARTITION BY tenant_id, person_id) AS c
  FROM orders),
sizes AS (SELECT tenant_id, c, count(DISTINCT person_id) AS n FROM o GROUP BY ALL),
rev AS (SELECT tenant_id, c, m - c AS k, sum(inr) AS inr FROM o GROUP BY ALL),
grid AS (SELECT tenant_id, c, n, unnest(range(0, $end_month - c + 1)) AS k FROM sizes)
SELECT tenant_id, c, k, n,
       round(sum(coalesce(rev.inr, 0)) OVER (PARTITION BY tenant_id, c ORDER BY k) / n, 4) AS per_person
FROM grid LEFT JOIN rev USING (tenant_id, c, k) ORDER BY 1, 2, 3
"""

CARTS_SQL = """
WITH ev AS (
  SELECT tenant_id, person_id, timestamp, message_id, event FROM rows
  WHERE type = 'track' AND event IN ('Product Added', 'Checkout Started')
  UNION ALL SELECT tenant_id, person_id, timestamp, message_id, event FROM orders),
s AS (
  SELECT *, lag(timestamp) OVER w AS pts, lag(event) OVER w AS pev
  FROM ev WINDOW w AS (PARTITION BY tenant_id, person_id ORDER BY timestamp, message_id)),
f AS (
  SELECT *,
    event <> 'Order Completed' AND (pts IS NULL OR pev = 'Order Completed' OR timestamp - pts > INTERVAL ($hours) HOUR) AS start,
    event = 'Order Completed' AND pts IS NOT NULL AND pev <> 'Order Completed' AND timestamp - pts <= INTERVAL ($hours) HOUR AS closes
  FROM s),
g AS (
  SELECT *, sum(start::INT) OVER (PARTITION BY tenant_id, person_id ORDER BY timestamp, message_id
                                   ROWS UNBOUNDED PRECEDING) AS cart FROM f),
c AS (
  SELECT tenant_id, person_id, cart,
         min(timestamp) FILTER (WHERE event <> 'Order Completed') AS opened,
         max(timestamp) FILTER (WHERE event <> 'Order Completed') AS last_at,
         bool_or(closes) AS purchased
  FROM g WHERE cart > 0 GROUP BY ALL),
st AS (
  SELECT *, CASE WHEN purchased THEN 'purchased'
                 WHEN last_at > $end - INTERVAL ($hours) HOUR THEN 'pending' ELSE 'abandoned' END AS status FROM c)
SELECT tenant_id, CAST(opened AS DATE) AS date, count(*) AS carts,
       count(*) FILTER (WHERE status = 'purchased') AS carts_purchased,
       count(*) FILTER (WHERE status = 'abandoned') AS carts_abandoned,
       count(*) FILTER (WHERE status = 'pending') AS carts_pending,
       count(DISTINCT person_id) AS persons_with_carts,
       count(DISTINCT person_id) FILTER (WHERE status = 'abandoned') AS persons_abandoning
FROM st GROUP BY ALL ORDER BY 1, 2
"""


@pytest.fixture(scope="module", params=[31, 32])
def generated(request):
    df = pd.DataFrame(generate_rows(persons=300, seed=request.param))
    df = df.loc[df["timestamp"] < END]  # the data read: everything before the end of the range
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    con.register("rows", df)
    con.execute(ORDERS_SQL)
    return df, con, analyse(df, 24, END)


def _records(df: pd.DataFrame, cols) -> list[tuple]:
    out = []
    for rec in df[cols].to_dict("records"):
        out.append(
            tuple(
                None if (isinstance(v, float) and np.isnan(v)) else (round(v, 4) if isinstance(v, float) else v)
                for v in rec.values()
            )
        )
    return out


def test_product_funnel_equals_duckdb(generated):
    _df, con, out = generated
    want = con.execute(PRODUCT_SQL).df()
    cols = [
        "tenant_id", "product_id", "views", "adds", "units_added", "orders", "units_sold", "revenue_inr",
        "viewers", "adders", "purchasers", "viewers_who_added", "adders_who_purchased",
    ]  # fmt: skip
    got = out["product_funnel"]
    assert _records(got, cols) == _records(want, cols)
    assert got["revenue_inr"].sum() > 0


def test_revenue_daily_equals_duckdb(generated):
    _df, con, out = generated
    want = con.execute(REVENUE_SQL).df()
    cols = [
        "tenant_id",
        "date",
        "channel",
        "geo_country",
        "geo_region",
        "orders",
        "buyers",
        "revenue_inr",
        "refunds",
        "refunded_inr",
    ]
    got = out["revenue_daily"].copy()
    want["date"] = pd.to_datetime(want["date"]).dt.date
    key = ["tenant_id", "date", "channel", "geo_country", "geo_region"]
    got = got.sort_values(key, na_position="first").reset_index(drop=True)
    want = want.sort_values(key, na_position="first").reset_index(drop=True)
    for col in ("channel", "geo_country", "geo_region"):
        got[col] = got[col].astype(object).where(got[col].notna(), None)
        want[col] = want[col].astype(object).where(want[col].notna(), None)
    assert _records(got, cols) == _records(want, cols)


def test_ltv_equals_duckdb(generated):
    _df, con, out = generated
    end_month = 2026 * 12 + 10 - 1  # October 2026 (END is the midnight after 2026-10-31)
    want = con.execute(LTV_SQL, {"end_month": end_month}).df()
    got = out["ltv_cohorts"]
    cohort = [d.year * 12 + d.month - 1 for d in got["cohort_month"]]
    keys = list(zip(got["tenant_id"], cohort, got["months_since_first_order"], got["cohort_size"], strict=True))
    assert keys == list(zip(want["tenant_id"], want["c"], want["k"], want["n"], strict=True))
    # both round to 0.0001 INR, at different points: equal within a rounding step
    np.testing.assert_allclose(got["cumulative_revenue_per_person_inr"], want["per_person"], rtol=0, atol=2e-4)


def test_cart_abandonment_equals_duckdb(generated):
    _df, con, out = generated
    want = con.execute(CARTS_SQL, {"hours": 24, "end": END}).df()
    want["date"] = pd.to_datetime(want["date"]).dt.date
    cols = [
        "tenant_id",
        "date",
        "carts",
        "carts_purchased",
        "carts_abandoned",
        "carts_pending",
        "persons_with_carts",
        "persons_abandoning",
    ]
    got = out["cart_abandonment"]
    assert _records(got, cols) == _records(want, cols)
    assert got["carts_abandoned"].sum() > 0 and got["carts_purchased"].sum() > 0


# --- carts: random event sequences against a step-by-step reading of the definition ----------

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_cart_events = st.lists(
    st.tuples(
        st.sampled_from(["p1", "p2", "p3"]),
        st.sampled_from(["Product Added", "Checkout Started", "Order Completed", "Product Viewed"]),
        st.integers(0, 120),  # hours after T0: gaps around the 24 h window are common
        st.sampled_from(["A", "B"]),
    ),
    min_size=1,
    max_size=25,
)


def _naive_carts(events, hours, end):
    """The documented state machine, one event at a time (per person, in (timestamp, message_id) order)."""
    window = dt.timedelta(hours=hours)
    carts_, per_product = [], []
    for person in sorted({e[0] for e in events}):
        seq = sorted((e for e in events if e[0] == person and e[1] != "Product Viewed"), key=lambda e: (e[2], e[4]))
        cart = None
        prev = None
        for _p, event, when, product, _mid in seq:
            if event == "Order Completed":
                if cart is not None:
                    status = (
                        "purchased"
                        if prev is not None and prev[0] != "Order Completed" and when - cart["last"] <= window
                        else "abandoned"
                    )
                    carts_.append(status)
                    per_product += [
                        (pid, "purchased" if status == "purchased" and pid == product else "abandoned")
                        for pid in sorted(cart["items"])
                    ]
                    cart = None
            else:
                if cart is not None and when - cart["last"] > window:
                    carts_.append("abandoned")
                    per_product += [(pid, "abandoned") for pid in sorted(cart["items"])]
                    cart = None
                if cart is None:
                    cart = {"last": when, "items": set()}
                cart["last"] = when
                cart["items"].add(product)
            prev = (event, when)
        if cart is not None:
            status = "pending" if cart["last"] > end - window else "abandoned"
            carts_.append(status)
            per_product += [(pid, status) for pid in sorted(cart["items"])]
    return sorted(carts_), sorted(per_product)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(raw=_cart_events)
def test_random_cart_sequences_match_the_definition(raw):
    end = T0 + dt.timedelta(hours=100)
    events, rows = [], []
    for i, (person, event, hours, product) in enumerate(raw):
        when, mid = h(hours), f"m{i:04d}"
        events.append((person, event, when, product, mid))
        if event == "Order Completed":  # one product an order, each order its own id
            rows.append(order(person, when, [(product, 1, 10, "C")], f"o{i}", 10, mid=mid))
        elif event == "Checkout Started":
            rows.append(row(person, when, event, {"products": [{"product_id": product}]}, mid=mid))
        else:
            rows.append(row(person, when, event, {"product_id": product}, mid=mid))
    rows = [r for r in rows if r["timestamp"] < end]
    events = [e for e in events if e[2] < end]
    want_carts, want_products = _naive_carts(events, 24, end)
    df = dedupe_orders(frame(pd.DataFrame(rows)))
    table, _member = carts(df, 24, end)
    assert sorted(table["status"]) == want_carts
    prod = analyse(pd.DataFrame(rows), 24, end)["product_funnel"]
    got_products = []
    for rec in prod.to_dict("records"):
        for status in ("purchased", "abandoned", "pending"):
            got_products += [(rec["product_id"], status)] * int(rec[f"carts_{status}"])
    assert sorted(got_products) == want_products
