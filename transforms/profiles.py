"""Person profiles folded from lake rows, as a state that merges like a set union.

A profile is not a running total that each event increments: it is a *join-semilattice* state
whose merge is commutative, associative and idempotent, so that

- applying the same event twice changes nothing (``merge(s, s) == s``);
- events may arrive in any order, in any batching, on any worker (``merge`` commutes and associates);
- an older event never overwrites newer state (every "latest" value is chosen by its event
  ``(timestamp, message_id)`` stamp, not by arrival order).

The pieces of the state:

- ``first_seen`` / ``last_seen``: min / max of the event timestamps;
- ``traits``: per trait key, the value of the identify with the greatest ``(timestamp, message_id)``;
- ``orders``: one contribution per order (``order_id``, or the message id when an Order Completed has
  none) with its INR amount, stamped, so that the SDK event and the Shopify webhook of the same
  order count once; ``refunds`` (keyed by message id: partial refunds are distinct events) and
  ``cancellations`` (keyed by order) likewise. Counts and sums are *derived* from these maps
  (:func:`summarize`), never stored as counters that a replay could double;
- ``device`` / ``geo``: the ua_* / geo_* fields of the latest event that carried them;
- ``anonymous_ids`` / ``user_ids``: the identity links seen for the person (set union).

States are plain JSON-able dicts so that they can be stored as-is (the DynamoDB profile item keeps
one; see ``docs/sinks.md``). No IO here: :mod:`connectors.dynamodb` reads, merges and writes them.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable, Mapping
from decimal import Decimal
from typing import Any

__all__ = [
    "DEVICE_FIELDS",
    "GEO_FIELDS",
    "ORDER_CANCELLED",
    "ORDER_COMPLETED",
    "ORDER_REFUNDED",
    "contribution",
    "empty_state",
    "fold",
    "merge",
    "profile_key",
    "summarize",
]

ORDER_COMPLETED = "Order Completed"
ORDER_REFUNDED = "Order Refunded"
ORDER_CANCELLED = "Order Cancelled"
DEVICE_FIELDS = ("user_agent", "ua_browser", "ua_browser_version", "ua_os", "ua_os_version", "ua_device")
GEO_FIELDS = ("geo_country", "geo_region", "geo_city", "geo_latitude", "geo_longitude")
_MAPS = ("traits", "orders", "refunds", "cancellations")
_AMOUNT_PLACES = Decimal("0.0001")

State = dict[str, Any]


def profile_key(row: Mapping) -> tuple[str, str]:
    return row["tenant_id"], row["person_id"]


def _stamp_of(value: Any) -> str:
    """A UTC timestamp as fixed-width ISO text: string order equals time order."""
    if isinstance(value, str):
        value = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    return value.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _amount(value: Any) -> str:
    if value is None or value == "":
        return "0.0000"
    return str(Decimal(str(value)).quantize(_AMOUNT_PLACES))


def empty_state(tenant_id: str, person_id: str) -> State:
    return {
        "tenant_id": tenant_id,
        "person_id": person_id,
        "first_seen": None,
        "last_seen": None,
        "traits": {},
        "orders": {},
        "refunds": {},
        "cancellations": {},
        "device": None,
        "geo": None,
        "anonymous_ids": [],
        "user_ids": [],
    }


def _newer(a: Mapping | None, b: Mapping | None) -> Mapping | None:
    """The stamped entry with the greater (ts, mid): the latest event wins, whatever the arrival order."""
    if a is None:
        return b
    if b is None:
        return a
    ka, kb = (a["ts"], a["mid"]), (b["ts"], b["mid"])
    if ka == kb:  # the same event: compare content too so that the choice never depends on argument order
        ka, kb = (json.dumps(a, sort_keys=True, default=str),), (json.dumps(b, sort_keys=True, default=str),)
    return a if ka >= kb else b


def contribution(row: Mapping) -> State:
    """What one lake row says about its person (a state of its own, merged by :func:`merge`)."""
    state = empty_state(*profile_key(row))
    ts, mid = _stamp_of(row["timestamp"]), row["message_id"]
    state["first_seen"] = state["last_seen"] = ts
    stamp = {"ts": ts, "mid": mid}
    if row.get("type") == "identify" and row.get("traits"):
        try:
            traits = json.loads(row["traits"])
        except (TypeError, ValueError):
            traits = None  # the lake holds validated JSON; a bad value is not a profile's business
        if isinstance(traits, dict):
            state["traits"] = {key: {**stamp, "v": value} for key, value in traits.items()}
    event = row.get("event") if row.get("type") == "track" else None
    if event == ORDER_COMPLETED:
        state["orders"] = {row.get("order_id") or f"msg:{mid}": {**stamp, "inr": _amount(row.get("revenue_inr"))}}
    elif event == ORDER_REFUNDED:
        state["refunds"] = {mid: {**stamp, "inr": _amount(row.get("revenue_inr")), "order": row.get("order_id")}}
    elif event == ORDER_CANCELLED:
        state["cancellations"] = {row.get("order_id") or f"msg:{mid}": {**stamp}}
    if any(row.get(f) is not None for f in DEVICE_FIELDS):
        state["device"] = {**stamp, **{f: row.get(f) for f in DEVICE_FIELDS}}
    if row.get("geo_country") is not None:
        state["geo"] = {**stamp, **{f: row.get(f) for f in GEO_FIELDS}}
    if row.get("anonymous_id"):
        state["anonymous_ids"] = [row["anonymous_id"]]
    if row.get("user_id"):
        state["user_ids"] = [row["user_id"]]
    return state


def merge(a: State, b: State) -> State:
    """Join of two states of the same person: commutative, associative, idempotent."""
    if (a["tenant_id"], a["person_id"]) != (b["tenant_id"], b["person_id"]):
        raise ValueError(f"cannot merge profiles of different persons: {a['person_id']} / {b['person_id']}")
    seen_first = [s for s in (a["first_seen"], b["first_seen"]) if s is not None]
    seen_last = [s for s in (a["last_seen"], b["last_seen"]) if s is not None]
    out = empty_state(a["tenant_id"], a["person_id"])
    out["first_seen"] = min(seen_first) if seen_first else None
    out["last_seen"] = max(seen_last) if seen_last else None
    for name in _MAPS:
        left, right = a[name], b[name]
        out[name] = {key: _newer(left.get(key), right.get(key)) for key in sorted(left.keys() | right.keys())}
    out["device"] = _newer(a["device"], b["device"])
    out["geo"] = _newer(a["geo"], b["geo"])
    out["anonymous_ids"] = sorted(set(a["anonymous_ids"]) | set(b["anonymous_ids"]))
    out["user_ids"] = sorted(set(a["user_ids"]) | set(b["user_ids"]))
    return out


def fold(rows: Iterable[Mapping], into: Mapping[tuple[str, str], State] | None = None) -> dict[tuple[str, str], State]:
    """Profiles of all persons in ``rows`` (merged into ``into`` if given), keyed by (tenant_id, person_id)."""
    states: dict[tuple[str, str], State] = dict(into or {})
    for row in rows:
        key = profile_key(row)
        piece = contribution(row)
        states[key] = merge(states[key], piece) if key in states else piece
    return states


def summarize(state: State) -> dict[str, Any]:
    """The readable profile: counts and INR sums derived from the contribution maps."""
    device = state["device"] or {}
    geo = state["geo"] or {}
    return {
        "tenant_id": state["tenant_id"],
        "person_id": state["person_id"],
        "first_seen": state["first_seen"],
        "last_seen": state["last_seen"],
        "traits": {key: entry["v"] for key, entry in state["traits"].items()},
        "order_count": len(state["orders"]),
        "revenue_inr": sum((Decimal(o["inr"]) for o in state["orders"].values()), Decimal("0.0000")),
        "refund_count": len(state["refunds"]),
        "refunded_inr": sum((Decimal(r["inr"]) for r in state["refunds"].values()), Decimal("0.0000")),
        "cancellation_count": len(state["cancellations"]),
        **{field: device.get(field) for field in DEVICE_FIELDS},
        **{field: geo.get(field) for field in GEO_FIELDS},
        "anonymous_ids": list(state["anonymous_ids"]),
        "user_ids": list(state["user_ids"]),
    }
