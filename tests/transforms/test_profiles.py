"""Profiles: the fold must equal a direct recomputation from the events, whatever the order or repetition."""

from __future__ import annotations

import datetime as dt
import json
from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st

from transforms.profiles import contribution, fold, merge, summarize

T0 = dt.datetime(2026, 3, 1, 10, 0, tzinfo=dt.UTC)


def row(mid, ts_minutes, type_="track", event=None, person="p1", tenant="acme-in", **extra):
    base = {
        "tenant_id": tenant,
        "person_id": person,
        "message_id": mid,
        "type": type_,
        "event": event,
        "timestamp": T0 + dt.timedelta(minutes=ts_minutes),
        "anonymous_id": None,
        "user_id": None,
        "traits": None,
        "order_id": None,
        "revenue_inr": None,
    }
    base.update(extra)
    return base


def test_example_profile():
    rows = [
        row(
            "m1", 0, "page", anonymous_id="a1", ua_browser="Chrome", ua_os="Android", geo_country="IN", geo_city="Pune"
        ),
        row("m2", 5, "identify", anonymous_id="a1", user_id="u1", traits=json.dumps({"name": "Asha", "plan": "free"})),
        row("m3", 9, event="Order Completed", user_id="u1", order_id="o1", revenue_inr=Decimal("1499.00")),
        row("m4", 12, "identify", user_id="u1", traits=json.dumps({"plan": "gold"})),
        # older identify arriving last: must not overwrite the newer plan
        row("m0", -30, "identify", user_id="u1", traits=json.dumps({"plan": "trial", "city": "Pune"})),
        row("m5", 20, event="Order Completed", user_id="u1", order_id="o2", revenue_inr="250.5"),
        row("m6", 25, event="Order Refunded", user_id="u1", order_id="o2", revenue_inr="250.5"),
        row("m7", 26, event="Order Cancelled", user_id="u1", order_id="o2"),
        # same order sent again by the Shopify webhook with another message id: one order, not two
        row("m8", 9, event="Order Completed", user_id="u1", order_id="o1", revenue_inr=Decimal("1499.00")),
        row("m9", 30, "page", user_id="u1", ua_browser="Safari", ua_os="iOS"),
    ]
    profile = summarize(fold(rows)[("acme-in", "p1")])
    assert profile["first_seen"] == "2026-03-01T09:30:00.000000Z"
    assert profile["last_seen"] == "2026-03-01T10:30:00.000000Z"
    assert profile["traits"] == {"name": "Asha", "plan": "gold", "city": "Pune"}
    assert profile["order_count"] == 2
    assert profile["revenue_inr"] == Decimal("1749.50")
    assert (profile["refund_count"], profile["refunded_inr"], profile["cancellation_count"]) == (1, Decimal("250.5"), 1)
    assert (profile["ua_browser"], profile["ua_os"]) == ("Safari", "iOS")  # latest device
    assert (profile["geo_country"], profile["geo_city"]) == ("IN", "Pune")  # latest event *with* geo
    assert profile["anonymous_ids"] == ["a1"] and profile["user_ids"] == ["u1"]


def test_same_event_twice_changes_nothing_and_merge_rejects_other_person():
    one = contribution(row("m1", 0, event="Order Completed", order_id="o1", revenue_inr="10"))
    assert merge(one, one) == one
    other = contribution(row("m2", 0, person="p2"))
    try:
        merge(one, other)
    except ValueError:
        pass
    else:
        raise AssertionError("merging two persons must fail")


def test_order_without_order_id_counts_per_message():
    rows = [row(f"m{i}", i, event="Order Completed", revenue_inr="100") for i in range(3)]
    profile = summarize(fold(rows)[("acme-in", "p1")])
    assert profile["order_count"] == 3 and profile["revenue_inr"] == Decimal("300")


# --- property: any order, any repetition, any split == independent recomputation -------------------

_kinds = st.sampled_from(["page", "identify", "Order Completed", "Order Refunded", "Order Cancelled"])


@st.composite
def events(draw):
    n = draw(st.integers(min_value=1, max_value=25))
    out = []
    for i in range(n):
        kind = draw(_kinds)
        extra = {
            "person": draw(st.sampled_from(["p1", "p2"])),
            "anonymous_id": draw(st.sampled_from([None, "a1", "a2"])),
            "user_id": draw(st.sampled_from([None, "u1"])),
        }
        minute = draw(st.integers(min_value=0, max_value=5))  # few distinct times: ties are common
        if kind == "page":
            extra["ua_browser"] = draw(st.sampled_from([None, "Chrome", "Firefox"]))
            extra["geo_country"] = draw(st.sampled_from([None, "IN", "AE"]))
            out.append(row(f"m{i}", minute, "page", **extra))
        elif kind == "identify":
            traits = draw(st.dictionaries(st.sampled_from(["plan", "city", "name"]), st.integers(0, 3), max_size=3))
            out.append(row(f"m{i}", minute, "identify", traits=json.dumps(traits), **extra))
        else:
            extra["order_id"] = draw(st.sampled_from([None, "o1", "o2"]))
            extra["revenue_inr"] = str(draw(st.integers(0, 5000))) + ".25"
            out.append(row(f"m{i}", minute, event=kind, **extra))
    return out


def _latest(rows):
    return max(rows, key=lambda r: (r["timestamp"], r["message_id"]))


def recompute(rows):
    """Profiles straight from the definition, over the distinct events (no merge involved)."""
    distinct = {r["message_id"]: r for r in rows}.values()
    persons = {}
    for r in distinct:
        persons.setdefault(r["person_id"], []).append(r)
    result = {}
    for person, rs in persons.items():
        identifies = [(r, json.loads(r["traits"])) for r in rs if r["type"] == "identify"]
        keys = {k for _, t in identifies for k in t}
        traits = {k: json.loads(_latest([r for r, t in identifies if k in t])["traits"])[k] for k in keys}

        def by_key(event, key_of, rs=rs):
            groups = {}
            for r in rs:
                if r["event"] == event:
                    groups.setdefault(key_of(r), []).append(r)
            return {k: _latest(v) for k, v in groups.items()}

        orders = by_key("Order Completed", lambda r: r["order_id"] or r["message_id"])
        refunds = by_key("Order Refunded", lambda r: r["message_id"])
        cancels = by_key("Order Cancelled", lambda r: r["order_id"] or r["message_id"])
        with_ua = [r for r in rs if r.get("ua_browser")]
        with_geo = [r for r in rs if r.get("geo_country")]
        result[person] = {
            "first_seen": min(r["timestamp"] for r in rs),
            "last_seen": max(r["timestamp"] for r in rs),
            "traits": traits,
            "order_count": len(orders),
            "revenue_inr": sum(Decimal(r["revenue_inr"]) for r in orders.values()),
            "refund_count": len(refunds),
            "refunded_inr": sum(Decimal(r["revenue_inr"]) for r in refunds.values()),
            "cancellation_count": len(cancels),
            "ua_browser": _latest(with_ua)["ua_browser"] if with_ua else None,
            "geo_country": _latest(with_geo)["geo_country"] if with_geo else None,
            "anonymous_ids": sorted({r["anonymous_id"] for r in rs if r["anonymous_id"]}),
            "user_ids": sorted({r["user_id"] for r in rs if r["user_id"]}),
        }
    return result


def comparable(states):
    out = {}
    for (_, person), state in states.items():
        s = summarize(state)
        out[person] = {k: s[k] for k in recompute_keys}
        out[person]["first_seen"] = dt.datetime.strptime(s["first_seen"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(
            tzinfo=dt.UTC
        )
        out[person]["last_seen"] = dt.datetime.strptime(s["last_seen"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=dt.UTC)
    return out


recompute_keys = (
    "traits",
    "order_count",
    "revenue_inr",
    "refund_count",
    "refunded_inr",
    "cancellation_count",
    "ua_browser",
    "geo_country",
    "anonymous_ids",
    "user_ids",
)


@settings(max_examples=150, deadline=None)
@given(rows=events(), data=st.data())
def test_any_order_any_repetition_equals_recomputation(rows, data):
    replayed = data.draw(st.lists(st.sampled_from(rows), max_size=10))  # at-least-once delivery
    shuffled = data.draw(st.permutations(rows + replayed))
    assert comparable(fold(shuffled)) == recompute(rows)


@settings(max_examples=100, deadline=None)
@given(rows=events(), data=st.data())
def test_merging_partial_folds_in_any_split_equals_one_fold(rows, data):
    cut = data.draw(st.integers(0, len(rows)))
    overlap = data.draw(st.integers(0, cut))
    left, right = fold(rows[:cut]), fold(rows[overlap:])  # the overlap is applied twice
    merged = dict(left)
    for key, state in right.items():
        merged[key] = merge(merged[key], state) if key in merged else state
    assert merged == fold(reversed(rows))
