"""Product and revenue analytics over lake rows: pure, vectorised with pandas.

Definitions (documented column by column in ``docs/analytics-segments-products.md``):

- **Orders** are ``Order Completed`` track events, one per ``(tenant_id, order_key)`` where ``order_key`` is
  ``order_id`` (or ``msg:<message_id>`` when the event has none); the earliest ``(timestamp, message_id)``
  copy wins, so an order sent by the SDK and by a Shopify webhook counts once (:func:`dedupe_orders`).
  Order revenue is the row's ``revenue_inr`` (the lake's INR amount after discounts).
- **Product lines**: ``Product Viewed`` / ``Product Added`` name one product at the top level of their
  properties; ``Checkout Started`` / ``Order Completed`` carry ``products[]``. A line's INR revenue is
  ``price * quantity * rate`` (rate = the row's ``fx_rate``, or 1 for INR): gross, before order discounts.
- **Carts** (per person, events in ``(timestamp, message_id)`` order): a cart opens at a ``Product Added``
  or ``Checkout Started`` when no cart is open; later cart events join it while each is at most ``N`` hours
  after the previous one (a longer gap abandons the open cart and opens a new one). The cart is
  *purchased* when the person's next event among these is an order placed at most ``N`` hours after the
  cart's last activity; *abandoned* when that order comes later, another gap exceeds ``N`` hours, or
  nothing follows and the last activity is more than ``N`` hours before the end of the data; otherwise
  *pending* (it may still convert: excluded from rates). For a product (category), a cart containing it is
  purchased only if the closing order contains that product (category) too.
- Person counts are distinct ``person_id`` (identity-stitched), so they add up across person buckets:
  the Beam pipeline computes :func:`partials` per bucket and :func:`finalize` once.
"""

from __future__ import annotations

import datetime as dt
import io
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pa_json

try:  # ~5x faster than json on the properties column, same results
    import orjson as _json

    _loads = _json.loads
except ImportError:  # pragma: no cover
    import json as _json

    _loads = _json.loads

__all__ = [
    "CART_EVENTS",
    "INPUT_COLUMNS",
    "PRODUCT_EVENTS",
    "carts",
    "dedupe_orders",
    "finalize",
    "local_bounds",
    "ltv_cohorts",
    "merge_daily",
    "partials",
    "product_lines",
]

VIEWED, ADDED, CHECKOUT, ORDER, REFUND = (
    "Product Viewed",
    "Product Added",
    "Checkout Started",
    "Order Completed",
    "Order Refunded",
)
CART_EVENTS = (ADDED, CHECKOUT)
PRODUCT_EVENTS = (VIEWED, ADDED, CHECKOUT, ORDER, REFUND)
INPUT_COLUMNS = (
    "tenant_id",
    "person_id",
    "message_id",
    "timestamp",
    "type",
    "event",
    "properties",
    "order_id",
    "currency",
    "revenue_inr",
    "fx_rate",
    "channel",
    "geo_country",
    "geo_region",
)
GEO_KEYS = ("channel", "geo_country", "geo_region")
_PERSON = ["tenant_id", "person_id"]


# --- preparation ----------------------------------------------------------------------------


def frame(table: pa.Table | pd.DataFrame) -> pd.DataFrame:
    """The product-relevant track rows as a DataFrame with UTC microsecond timestamps and float INR."""
    df = table.to_pandas() if isinstance(table, pa.Table) else table.copy()
    for col in INPUT_COLUMNS:
        if col not in df.columns:
            df[col] = None
    df = df.loc[(df["type"] == "track") & df["event"].isin(PRODUCT_EVENTS), list(INPUT_COLUMNS)].copy()
    for col in ("tenant_id", "person_id", "message_id", "type", "event", "properties", "order_id", "currency"):
        # plain Python strings: pandas' Arrow-backed strings make every take/sort/factorize several times slower
        df[col] = df[col].astype(object)
    df["timestamp"] = pd.to_datetime(df["timestamp"], utc=True).dt.as_unit("us")
    df["revenue_inr"] = pd.to_numeric(df["revenue_inr"].astype(object), errors="coerce").astype(float)
    df["fx_rate"] = pd.to_numeric(df["fx_rate"].astype(object), errors="coerce").astype(float)
    for col in GEO_KEYS:
        df[col] = df[col].astype(object).where(df[col].notna(), None)
    return df.reset_index(drop=True)


def order_key(df: pd.DataFrame) -> pd.Series:
    return df["order_id"].where(df["order_id"].notna(), "msg:" + df["message_id"].astype(str)).astype(str)


def dedupe_orders(df: pd.DataFrame) -> pd.DataFrame:
    """Keep one ``Order Completed`` per (tenant, order key): the earliest (timestamp, message_id).

    Adds ``order_key`` (null on other events); row order is kept.
    """
    is_order = (df["event"] == ORDER).to_numpy()
    out = df.copy()
    out["order_key"] = None
    if not is_order.any():
        return out
    orders = df.loc[is_order, ["tenant_id", "timestamp", "message_id"]].copy()
    orders["order_key"] = order_key(df.loc[is_order]).to_numpy(dtype=object)
    first = orders.sort_values(["timestamp", "message_id"], kind="stable").drop_duplicates(
        ["tenant_id", "order_key"], keep="first"
    )
    keep = ~is_order
    keep[df.index.get_indexer(first.index)] = True
    out.loc[is_order, "order_key"] = orders["order_key"].to_numpy(dtype=object)
    return out.loc[keep].reset_index(drop=True)


def _num(value: Any, default: float) -> float:
    if value is None or isinstance(value, bool):
        return default
    try:
        out = float(value)
    except (TypeError, ValueError):
        return default
    return out if np.isfinite(out) else default


_ITEM_FIELDS = [
    ("product_id", pa.string()),
    ("sku", pa.string()),
    ("name", pa.string()),
    ("category", pa.string()),
    ("price", pa.float64()),
    ("quantity", pa.float64()),
]
_PROPS_SCHEMA = pa.schema([*_ITEM_FIELDS, ("products", pa.list_(pa.struct(_ITEM_FIELDS)))])
_JSON_OPTIONS = pa_json.ParseOptions(explicit_schema=_PROPS_SCHEMA, unexpected_field_behavior="ignore")


def _items_python(events: list, props: list) -> dict[str, list]:
    """The reference path, item by item: used when the columnar parse refuses the data."""
    out: dict[str, list] = {k: [] for k in ("row", "product_id", "name", "category", "quantity", "price")}
    for i, (event, text) in enumerate(zip(events, props, strict=True)):
        try:
            data = _loads(text) if text else {}
        except ValueError:
            continue  # the lake holds validated JSON; a stray bad value names no product
        if not isinstance(data, dict):
            continue
        if event in (VIEWED, ADDED):
            items = [data]
        elif event in (CHECKOUT, ORDER):
            items = data.get("products") or []
            if not isinstance(items, list):
                continue
        else:
            continue
        for item in items:
            if not isinstance(item, dict):
                continue
            pid = item.get("product_id") or item.get("sku")
            if pid is None:
                continue
            out["row"].append(i)
            out["product_id"].append(str(pid))
            out["name"].append(item.get("name"))
            out["category"].append(item.get("category"))
            out["quantity"].append(_num(item.get("quantity"), 1.0))
            out["price"].append(_num(item.get("price"), np.nan))
    return out


def _items_columnar(events: np.ndarray, props: list) -> dict[str, Any] | None:
    """The same items through Arrow's JSON reader (C++, ~20x faster); None when the data has shapes it
    cannot type (numbers as text, ids as numbers, ...): then the Python path decides."""
    if not props:
        return None
    body = "\n".join(p if isinstance(p, str) and p else "{}" for p in props).encode("utf-8")
    try:
        parsed = pa_json.read_json(io.BytesIO(body), parse_options=_JSON_OPTIONS)
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        return None
    if parsed.num_rows != len(props):  # a raw newline inside a JSON document: let Python parse it
        return None
    kinds = pd.Series(events)
    top_rows = np.flatnonzero(kinds.isin((VIEWED, ADDED)).to_numpy())
    list_rows = np.flatnonzero(kinds.isin((CHECKOUT, ORDER)).to_numpy())
    top = parsed.take(pa.array(top_rows)).select([name for name, _ in _ITEM_FIELDS])
    lists = parsed.column("products").take(pa.array(list_rows))
    lists = (
        pa.chunked_array(lists.chunks, lists.type).combine_chunks() if lists.num_chunks else pa.array([], lists.type)
    )
    flat = pc.list_flatten(lists)
    parent = list_rows[pc.list_parent_indices(lists).to_numpy()] if len(flat) else np.zeros(0, dtype="int64")
    items = pa.concat_tables([top, pa.Table.from_struct_array(flat) if len(flat) else top.schema.empty_table()])
    rows = np.concatenate([top_rows, parent]).astype("int64")
    pid = items.column("product_id")
    pid = pc.if_else(pc.or_kleene(pc.is_null(pid), pc.equal(pid, "")), items.column("sku"), pid)
    keep = pc.is_valid(pid).to_numpy(zero_copy_only=False)
    order = np.argsort(rows[keep], kind="stable")  # row order, items in list order, as the Python path
    take = np.flatnonzero(keep)[order]
    qty = items.column("quantity").to_numpy(zero_copy_only=False).astype(float)
    price = items.column("price").to_numpy(zero_copy_only=False).astype(float)
    return {
        "row": rows[take],
        "product_id": pid.to_numpy(zero_copy_only=False)[take],
        "name": items.column("name").to_numpy(zero_copy_only=False)[take],
        "category": items.column("category").to_numpy(zero_copy_only=False)[take],
        "quantity": np.where(np.isnan(qty), 1.0, qty)[take],
        "price": price[take],
    }


def product_lines(df: pd.DataFrame, columnar: bool = True) -> pd.DataFrame:
    """One row per (event row, product): ``row`` (position in ``df``), product_id, name, category,
    quantity (default 1), price, line_inr (orders only; price * quantity * rate)."""
    events = df["event"].to_numpy(dtype=object)
    props = df["properties"].tolist()
    found = _items_columnar(events, props) if columnar else None
    if found is None:
        found = _items_python(events.tolist(), props)
    lines = pd.DataFrame(
        {
            "row": np.asarray(found["row"], dtype="int64"),
            "product_id": pd.Series(np.asarray(found["product_id"], dtype=object), dtype=object),
            "name": pd.Series(np.asarray(found["name"], dtype=object), dtype=object),
            "category": pd.Series(np.asarray(found["category"], dtype=object), dtype=object),
            "quantity": np.asarray(found["quantity"], dtype=float),
            "price": np.asarray(found["price"], dtype=float),
        }
    )
    pos = lines["row"].to_numpy()
    for col in ("tenant_id", "person_id", "message_id", "event", "order_key"):
        lines[col] = df[col].iloc[pos].to_numpy() if col in df else None
    lines["timestamp"] = df["timestamp"].iloc[pos].reset_index(drop=True)
    rate = df["fx_rate"].iloc[pos].to_numpy(dtype=float)
    currency = df["currency"].iloc[pos].to_numpy(dtype=object)
    inr = np.array([c is None or c == "INR" or c != c for c in currency], dtype=bool)
    rate = np.where(np.isnan(rate) & inr, 1.0, rate)
    lines["line_inr"] = np.where(lines["event"].to_numpy() == ORDER, lines["price"] * lines["quantity"] * rate, np.nan)
    for col in ("name", "category"):
        lines[col] = lines[col].where(lines[col].notna(), None)
    return lines


# --- carts ----------------------------------------------------------------------------------


def carts(df: pd.DataFrame, hours: float, data_end: dt.datetime) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Carts and, per cart row of ``df``, its cart number.

    Args:
        df: rows from :func:`dedupe_orders` (orders already deduplicated), any persons.
        hours: the abandonment window N.
        data_end: exclusive end of the data read; carts idle for less than N hours before it are pending.

    Returns ``(cart_table, membership)``: cart_table has ``cart_no, tenant_id, person_id, opened_at,
    last_activity_at, status, order_key`` (the closing order); membership has ``row, cart_no`` for the
    cart event rows and the closing order rows.
    """
    sel = df["event"].isin((*CART_EVENTS, ORDER)).to_numpy()
    ev = df.loc[sel, ["tenant_id", "person_id", "timestamp", "message_id", "event", "order_key"]]
    ev = ev.sort_values(["tenant_id", "person_id", "timestamp", "message_id"], kind="stable")
    window = pd.Timedelta(hours=hours)
    is_order = (ev["event"] == ORDER).to_numpy()
    tenant = ev["tenant_id"].to_numpy(dtype=object)
    person = ev["person_id"].to_numpy(dtype=object)
    ts = ev["timestamp"].dt.tz_convert("UTC").dt.tz_localize(None).to_numpy()
    same = np.zeros(len(ev), dtype=bool)
    if len(ev) > 1:
        same[1:] = (tenant[1:] == tenant[:-1]) & (person[1:] == person[:-1])
    prev_order = np.zeros(len(ev), dtype=bool)
    prev_order[1:] = is_order[:-1]
    within = np.zeros(len(ev), dtype=bool)
    if len(ev) > 1:
        within[1:] = (ts[1:] - ts[:-1]) <= window.to_timedelta64()
    starts = ~is_order & (~same | prev_order | ~within)
    cart_no = np.cumsum(starts)
    closes = is_order & same & ~prev_order & within
    cart_rows = ~is_order
    member = pd.DataFrame({"row": ev.index[cart_rows | closes].to_numpy(), "cart_no": cart_no[cart_rows | closes]})
    cart_ev = ev.loc[cart_rows]
    table = (
        pd.DataFrame(
            {
                "cart_no": cart_no[cart_rows],
                "tenant_id": cart_ev["tenant_id"].to_numpy(),
                "person_id": cart_ev["person_id"].to_numpy(),
                "timestamp": cart_ev["timestamp"].to_numpy(),
            }
        )
        .groupby("cart_no", sort=True)
        .agg(
            tenant_id=("tenant_id", "first"),
            person_id=("person_id", "first"),
            opened_at=("timestamp", "min"),
            last_activity_at=("timestamp", "max"),
        )
    )
    closing = pd.Series(ev.loc[closes, "order_key"].to_numpy(), index=cart_no[closes])
    table["order_key"] = closing.reindex(table.index)
    end = pd.Timestamp(data_end)
    end = end.tz_localize("UTC") if end.tzinfo is None else end.tz_convert("UTC")
    purchased = table["order_key"].notna()
    pending = ~purchased & (table["last_activity_at"] > end - window)
    table["status"] = np.where(purchased, "purchased", np.where(pending, "pending", "abandoned"))
    return table.reset_index(), member


# --- partial aggregates (additive across person buckets) ------------------------------------


def _cart_item_status(lines: pd.DataFrame, member: pd.DataFrame, cart_table: pd.DataFrame, key: str) -> pd.DataFrame:
    """Per (cart, key value): purchased if the cart's closing order holds that key value too."""
    with_cart = lines.merge(member, on="row", how="inner")
    in_cart = with_cart.loc[with_cart["event"] != ORDER, ["cart_no", "tenant_id", key]].dropna().drop_duplicates()
    in_order = with_cart.loc[with_cart["event"] == ORDER, ["cart_no", key]].dropna().drop_duplicates()
    in_order["in_order"] = True
    items = in_cart.merge(in_order, on=["cart_no", key], how="left").merge(
        cart_table[["cart_no", "status"]], on="cart_no", how="left"
    )
    hit = items["in_order"].fillna(False).astype(bool).to_numpy()
    items["item_status"] = np.where(
        items["status"] == "pending",
        "pending",
        np.where((items["status"] == "purchased") & hit, "purchased", "abandoned"),
    )
    return items


def _entity_partial(lines: pd.DataFrame, items: pd.DataFrame, key: str) -> pd.DataFrame:
    keys = ["tenant_id", key]
    lines = lines.loc[lines[key].notna()]
    by_event = {e: lines.loc[lines["event"] == e] for e in (VIEWED, ADDED, CHECKOUT, ORDER)}
    v, a, c, o = (by_event[e] for e in (VIEWED, ADDED, CHECKOUT, ORDER))
    parts = {
        "views": v.groupby(keys).size(),
        "adds": a.groupby(keys).size(),
        "units_added": a.groupby(keys)["quantity"].sum(),
        "checkouts": c[[*keys, "row"]].drop_duplicates().groupby(keys).size(),
        "orders": o[[*keys, "order_key"]].drop_duplicates().groupby(keys).size(),
        "units_sold": o.groupby(keys)["quantity"].sum(),
        "revenue_inr": o.groupby(keys)["line_inr"].sum(min_count=1),
    }
    vp = v[[*keys, "person_id"]].drop_duplicates()
    ap = a[[*keys, "person_id"]].drop_duplicates()
    op = o[[*keys, "person_id"]].drop_duplicates()
    parts["viewers"] = vp.groupby(keys).size()
    parts["adders"] = ap.groupby(keys).size()
    parts["purchasers"] = op.groupby(keys).size()
    parts["viewers_who_added"] = vp.merge(ap, on=[*keys, "person_id"]).groupby(keys).size()
    parts["adders_who_purchased"] = ap.merge(op, on=[*keys, "person_id"]).groupby(keys).size()
    parts["viewers_who_purchased"] = vp.merge(op, on=[*keys, "person_id"]).groupby(keys).size()
    for status in ("purchased", "abandoned", "pending"):
        parts[f"carts_{status}"] = items.loc[items["item_status"] == status].groupby(keys).size()
    out = pd.DataFrame(parts)
    out.index.names = keys
    out = out.fillna(0)
    # the descriptive attributes of the latest line that carried them (mergeable: keep the max stamp)
    attrs = ["name", "category"] if key == "product_id" else []
    if attrs:
        stamped = lines.loc[:, [*keys, "timestamp", "message_id", *attrs]].sort_values(
            ["timestamp", "message_id"], kind="stable"
        )
        for attr in attrs:
            have = stamped.loc[stamped[attr].notna()]
            latest = have.groupby(keys).tail(1).set_index(keys)
            out[attr] = latest[attr].reindex(out.index)
            out[f"{attr}_stamp"] = (
                latest["timestamp"].dt.strftime("%Y-%m-%dT%H:%M:%S.%f") + "|" + latest["message_id"].astype(str)
            ).reindex(out.index)
    return out.reset_index()


def _local(ts: pd.Series, timezone: str) -> pd.Series:
    return ts.dt.tz_convert(timezone)


def _revenue_partial(df: pd.DataFrame, lines: pd.DataFrame, timezone: str = "UTC") -> pd.DataFrame:
    """Per (tenant, local date, channel, geo_country, geo_region): orders, buyers, revenue, units, refunds."""
    keys = ["tenant_id", "date", *GEO_KEYS]
    money = df.loc[df["event"].isin((ORDER, REFUND))].copy()
    money["date"] = _local(money["timestamp"], timezone).dt.date
    for col in GEO_KEYS:
        money[col] = money[col].fillna("")  # group nulls together; restored to null in finalize
    orders = money.loc[money["event"] == ORDER]
    refunds = money.loc[money["event"] == REFUND]
    units = lines.loc[lines["event"] == ORDER].groupby("row")["quantity"].sum()
    orders = orders.assign(units=units.reindex(orders.index).fillna(0.0).to_numpy())
    g = orders.groupby(keys, dropna=False)
    out = pd.DataFrame(
        {
            "orders": g.size(),
            "buyers": orders[[*keys, "person_id"]].drop_duplicates().groupby(keys, dropna=False).size(),
            "revenue_inr": g["revenue_inr"].sum(),
            "units": g["units"].sum(),
        }
    )
    r = refunds.groupby(keys, dropna=False)
    out = out.join(pd.DataFrame({"refunds": r.size(), "refunded_inr": r["revenue_inr"].sum()}), how="outer")
    return out.fillna(0).reset_index()


def _first_order_months(orders: pd.DataFrame, timezone: str = "UTC") -> pd.DataFrame:
    local = _local(orders["timestamp"], timezone)
    month = local.dt.year * 12 + local.dt.month - 1
    orders = orders.assign(month=month.to_numpy())
    first = orders.groupby(_PERSON)["month"].transform("min")
    return orders.assign(cohort=first.to_numpy(), offset=(orders["month"] - first).to_numpy())


def _ltv_partial(df: pd.DataFrame, timezone: str = "UTC") -> pd.DataFrame:
    orders = _first_order_months(df.loc[df["event"] == ORDER], timezone)
    keys = ["tenant_id", "cohort", "offset"]
    g = orders.groupby(keys)
    out = pd.DataFrame(
        {
            "orders": g.size(),
            "revenue_inr": g["revenue_inr"].sum(),
            "active_persons": orders[[*keys, "person_id"]].drop_duplicates().groupby(keys).size(),
        }
    ).reset_index()
    sizes = orders.loc[orders["offset"] == 0, ["tenant_id", "cohort", "person_id"]].drop_duplicates()
    size = sizes.groupby(["tenant_id", "cohort"]).size().rename("cohort_size").reset_index()
    size["offset"] = -1  # carried in the same frame: one row per cohort with the cohort size
    size["orders"] = 0
    size["revenue_inr"] = 0.0
    size["active_persons"] = 0
    return pd.concat([out.assign(cohort_size=0), size], ignore_index=True)


def _cart_partial(cart_table: pd.DataFrame, timezone: str = "UTC") -> pd.DataFrame:
    if not len(cart_table):
        return pd.DataFrame()
    t = cart_table.assign(date=_local(cart_table["opened_at"], timezone).dt.date)
    keys = ["tenant_id", "date"]
    out = pd.DataFrame(
        {f"carts_{s}": t.loc[t["status"] == s].groupby(keys).size() for s in ("purchased", "abandoned", "pending")}
    )
    out["persons_with_carts"] = t[[*keys, "person_id"]].drop_duplicates().groupby(keys).size()
    ab = t.loc[t["status"] == "abandoned", [*keys, "person_id"]].drop_duplicates()
    out["persons_abandoning"] = ab.groupby(keys).size()
    return out.fillna(0).reset_index() if len(out) else pd.DataFrame(columns=[*keys, *out.columns])


def _instant(value: dt.datetime) -> pd.Timestamp:
    ts = pd.Timestamp(value)
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")


def partials(
    table: pa.Table | pd.DataFrame,
    cart_hours: float,
    data_end: dt.datetime,
    timezone: str = "UTC",
    data_start: dt.datetime | None = None,
) -> dict[str, pd.DataFrame]:
    """Additive aggregates of one person bucket (orders must already be deduplicated across buckets,
    or all rows of a tenant are in ``table``: :func:`dedupe_orders` runs here again, harmlessly).

    Only rows in ``[data_start, data_end)`` count. Days and months are calendar days/months in ``timezone``.
    """
    # deduplicate before cutting the window: an order first sent just before the window and re-sent
    # inside it belongs to the earlier day (and is counted there once), as in the Beam pipeline
    df = dedupe_orders(frame(table))
    keep = df["timestamp"] < _instant(data_end)
    if data_start is not None:
        keep &= df["timestamp"] >= _instant(data_start)
    df = df.loc[keep].reset_index(drop=True)
    # persons are only counted, never output: integer codes make every distinct/merge/group cheap
    df["person_id"] = pd.factorize(df["person_id"])[0].astype("int64")
    lines = product_lines(df)
    cart_table, member = carts(df, cart_hours, data_end)
    return {
        "product": _entity_partial(lines, _cart_item_status(lines, member, cart_table, "product_id"), "product_id"),
        "category": _entity_partial(lines, _cart_item_status(lines, member, cart_table, "category"), "category"),
        "revenue": _revenue_partial(df, lines, timezone),
        "ltv": _ltv_partial(df, timezone),
        "carts": _cart_partial(cart_table, timezone),
    }


# --- final tables ---------------------------------------------------------------------------

_COUNTS = [
    "views",
    "viewers",
    "adds",
    "adders",
    "units_added",
    "checkouts",
    "orders",
    "purchasers",
    "units_sold",
    "revenue_inr",
    "viewers_who_added",
    "adders_who_purchased",
    "viewers_who_purchased",
    "carts_purchased",
    "carts_abandoned",
    "carts_pending",
]
_INT_COUNTS = [c for c in _COUNTS if c not in ("units_added", "units_sold", "revenue_inr")]


def _ratio(num: pd.Series, den: pd.Series) -> pd.Series:
    num, den = num.astype(float), den.astype(float)
    return (num / den.where(den > 0)).astype(float)


def _funnel(parts: list[pd.DataFrame], key: str) -> pd.DataFrame:
    keys = ["tenant_id", key]
    frames = [p for p in parts if len(p)]
    if not frames:
        return pd.DataFrame(columns=[*keys, *_COUNTS])
    allp = pd.concat(frames, ignore_index=True)
    out = allp.groupby(keys, sort=True)[_COUNTS].sum(min_count=0)
    if key == "product_id":
        for attr in ("name", "category"):
            stamped = allp.loc[allp[attr].notna(), [*keys, attr, f"{attr}_stamp"]].sort_values(
                f"{attr}_stamp", kind="stable"
            )
            latest = stamped.groupby(keys).tail(1).set_index(keys)[attr]
            out[attr] = latest.reindex(out.index)
    for col in _INT_COUNTS:
        out[col] = out[col].astype("int64")
    out["revenue_inr"] = out["revenue_inr"].astype(float).round(4)
    out["view_to_add_rate"] = _ratio(out["viewers_who_added"], out["viewers"])
    out["add_to_purchase_rate"] = _ratio(out["adders_who_purchased"], out["adders"])
    out["view_to_purchase_rate"] = _ratio(out["viewers_who_purchased"], out["viewers"])
    out["carts"] = out["carts_purchased"] + out["carts_abandoned"] + out["carts_pending"]
    out["cart_abandonment_rate"] = _ratio(out["carts_abandoned"], out["carts_abandoned"] + out["carts_purchased"])
    lead = [*keys, "name", "category"] if key == "product_id" else keys
    ordered = [*lead] + [c for c in PRODUCT_FUNNEL_ORDER if c not in lead]
    return out.reset_index()[ordered]


PRODUCT_FUNNEL_ORDER = [
    "views",
    "viewers",
    "adds",
    "adders",
    "units_added",
    "checkouts",
    "orders",
    "purchasers",
    "units_sold",
    "revenue_inr",
    "viewers_who_added",
    "adders_who_purchased",
    "viewers_who_purchased",
    "view_to_add_rate",
    "add_to_purchase_rate",
    "view_to_purchase_rate",
    "carts",
    "carts_purchased",
    "carts_abandoned",
    "carts_pending",
    "cart_abandonment_rate",
]


def _revenue_daily(parts: list[pd.DataFrame]) -> pd.DataFrame:
    keys = ["tenant_id", "date", *GEO_KEYS]
    cols = ["orders", "buyers", "revenue_inr", "units", "refunds", "refunded_inr"]
    frames = [p for p in parts if len(p)]
    if not frames:
        return pd.DataFrame(columns=[*keys, *cols, "net_revenue_inr", "average_order_value_inr"])
    out = pd.concat(frames, ignore_index=True).groupby(keys, sort=True, dropna=False)[cols].sum().reset_index()
    for col in ("orders", "buyers", "refunds"):
        out[col] = out[col].astype("int64")
    for col in ("revenue_inr", "refunded_inr", "units"):
        out[col] = out[col].astype(float).round(4)
    out["net_revenue_inr"] = (out["revenue_inr"] - out["refunded_inr"]).round(4)
    out["average_order_value_inr"] = _ratio(out["revenue_inr"], out["orders"]).round(4)
    for col in GEO_KEYS:
        values = out[col].astype(object)
        out[col] = pd.Series([None if v == "" or v is None else v for v in values], index=out.index, dtype=object)
    return out


def ltv_cohorts(parts: list[pd.DataFrame], end_date: dt.date) -> pd.DataFrame:
    """Cumulative INR revenue per person by months since the first order, every offset up to ``end_date``'s month.

    ``is_complete`` says the calendar month ``cohort_month + k`` ended on or before ``end_date``.
    """
    cols = [
        "tenant_id",
        "cohort_month",
        "months_since_first_order",
        "cohort_size",
        "active_persons",
        "orders",
        "revenue_inr",
        "cumulative_revenue_inr",
        "cumulative_revenue_per_person_inr",
        "is_complete",
    ]
    frames = [p for p in parts if len(p)]
    if not frames:
        return pd.DataFrame(columns=cols)
    allp = pd.concat(frames, ignore_index=True)
    sizes = allp.loc[allp["offset"] == -1].groupby(["tenant_id", "cohort"])["cohort_size"].sum()
    body = (
        allp.loc[allp["offset"] >= 0]
        .groupby(["tenant_id", "cohort", "offset"])[["orders", "revenue_inr", "active_persons"]]
        .sum()
    )
    end_month = end_date.year * 12 + end_date.month - 1
    last_complete = end_month if (end_date + dt.timedelta(days=1)).day == 1 else end_month - 1
    grid = [
        (tenant, cohort, k) for (tenant, cohort) in sizes.index for k in range(0, max(end_month - int(cohort), 0) + 1)
    ]
    index = pd.MultiIndex.from_tuples(grid, names=["tenant_id", "cohort", "offset"])
    out = body.reindex(index, fill_value=0).reset_index()
    out["cohort_size"] = sizes.reindex(pd.MultiIndex.from_frame(out[["tenant_id", "cohort"]])).to_numpy()
    out["cumulative_revenue_inr"] = out.groupby(["tenant_id", "cohort"])["revenue_inr"].cumsum().round(4)
    out["cumulative_revenue_per_person_inr"] = _ratio(out["cumulative_revenue_inr"], out["cohort_size"]).round(4)
    out["cohort_month"] = [dt.date(int(c) // 12, int(c) % 12 + 1, 1) for c in out["cohort"]]
    out["months_since_first_order"] = out["offset"].astype("int64")
    out["is_complete"] = (out["cohort"] + out["offset"]) <= last_complete
    for col in ("cohort_size", "active_persons", "orders"):
        out[col] = out[col].astype("int64")
    out["revenue_inr"] = out["revenue_inr"].astype(float).round(4)
    return out[cols]


def _carts_daily(parts: list[pd.DataFrame]) -> pd.DataFrame:
    keys = ["tenant_id", "date"]
    cols = ["carts_purchased", "carts_abandoned", "carts_pending", "persons_with_carts", "persons_abandoning"]
    frames = [p for p in parts if len(p)]
    if not frames:
        return pd.DataFrame(columns=[*keys, "carts", *cols, "cart_abandonment_rate"])
    out = pd.concat(frames, ignore_index=True).groupby(keys, sort=True)[cols].sum().astype("int64").reset_index()
    out.insert(2, "carts", out["carts_purchased"] + out["carts_abandoned"] + out["carts_pending"])
    out["cart_abandonment_rate"] = _ratio(out["carts_abandoned"], out["carts_abandoned"] + out["carts_purchased"])
    return out


def finalize(parts: Iterable[Mapping[str, pd.DataFrame]], end_date: dt.date) -> dict[str, pd.DataFrame]:
    """The output tables from the partials of every bucket.

    Returns ``product_funnel, category_funnel, revenue_daily, ltv_cohorts, cart_abandonment``.
    """
    parts = list(parts)

    def pick(name: str) -> list[pd.DataFrame]:
        return [p[name] for p in parts if name in p]

    return {
        "product_funnel": _funnel(pick("product"), "product_id"),
        "category_funnel": _funnel(pick("category"), "category"),
        "revenue_daily": _revenue_daily(pick("revenue")),
        "ltv_cohorts": ltv_cohorts(pick("ltv"), end_date),
        "cart_abandonment": _carts_daily(pick("carts")),
    }


def analyse(
    table: pa.Table | pd.DataFrame,
    cart_hours: float,
    data_end: dt.datetime,
    timezone: str = "UTC",
    data_start: dt.datetime | None = None,
) -> dict[str, pd.DataFrame]:
    """Everything on one machine (tests, small tenants): ``finalize([partials(table)])``."""
    end_date = (_instant(data_end).tz_convert(timezone) - pd.Timedelta(microseconds=1)).date()
    return finalize([partials(table, cart_hours, data_end, timezone, data_start)], end_date)


def local_bounds(start: dt.date | None, end: dt.date, timezone: str) -> tuple[dt.datetime | None, dt.datetime]:
    """``[start 00:00, end + 1 day 00:00)`` in ``timezone`` as UTC instants (what a run of local days covers)."""
    from zoneinfo import ZoneInfo

    zone = ZoneInfo(timezone)

    def midnight(day: dt.date) -> dt.datetime:
        return dt.datetime.combine(day, dt.time(), tzinfo=zone).astimezone(dt.UTC)

    return (midnight(start) if start else None), midnight(end + dt.timedelta(days=1))


def merge_daily(
    existing: pd.DataFrame | None,
    new: pd.DataFrame,
    start: dt.date | None,
    end: dt.date,
    tenant: str | None,
) -> pd.DataFrame:
    """A daily table where the run's days (``[start, end]``, ``tenant`` or all) are replaced by ``new``.

    Days outside the run's range stay as an earlier run left them: a backfill of one day rewrites
    that day only, and a rerun never duplicates rows.
    """
    if existing is None or not len(existing):
        return new.reset_index(drop=True)
    dates = pd.to_datetime(existing["date"]).dt.date
    scope = dates <= end
    if start is not None:
        scope &= dates >= start
    if tenant is not None:
        scope &= existing["tenant_id"] == tenant
    kept = existing.loc[~scope.to_numpy()]
    out = pd.concat([kept, new], ignore_index=True) if len(new) else kept
    keys = [c for c in ("tenant_id", "date", *GEO_KEYS) if c in out.columns]
    out["date"] = pd.to_datetime(out["date"]).dt.date
    return out.sort_values(keys, kind="stable", na_position="first").reset_index(drop=True)
