"""Person features as of a time, computed column-wise and point-in-time correct.

The core is one vectorised computation over *queries* (tenant, person, T): events are sorted by
(person, timestamp) once; each query gets the index range of its person's events (searchsorted),
the (query, event) pairs are expanded with numpy and filtered by visibility, and every feature is
a ``bincount``/run-end reduction over the pairs. A snapshot for an as-of date is the set of
queries "every person, T = end of that day"; a training set is "one query per spine row,
T = label time". No Python loop per person or per query.

Visibility (the point-in-time rule): an event is visible at T iff ``timestamp <= T`` **and**
``received_at <= T``, i.e. ``max(timestamp, received_at) <= T``. A late-arriving or backfilled
event therefore never leaks into a snapshot taken before it arrived (the Feast #6615 leak).
A TTL (per feature group, see :mod:`schemas.features`) nulls a group whose latest visible source
event is older than the TTL at T.
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import apache_beam as beam
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pajson
from apache_beam.metrics import Metrics

from schemas.features import (
    ACTIVITY_WINDOWS,
    ENGAGEMENT,
    FEATURES,
    GROUPS,
    LIFETIMES,
    MIX_WINDOW,
    OFFLINE_SCHEMA,
    ORDER_WINDOWS,
    ORDERS,
    PREFERENCE_WINDOW,
    PREFERENCES,
    features_of,
)
from transforms import clv

__all__ = [
    "INPUT_COLUMNS",
    "ComputeFeatures",
    "apply_ttl",
    "as_of_time",
    "build_training_set",
    "compute_features",
    "features_as_of",
    "normalise_spine",
    "prepare_events",
]

US_PER_DAY = 86_400_000_000
INPUT_COLUMNS = (
    "tenant_id",
    "person_id",
    "type",
    "event",
    "timestamp",
    "received_at",
    "session_id",
    "revenue_inr",
    "channel",
    "ua_device",
    "ua_os",
    "properties",
    "is_bot",
)
"""Lake columns the features read (``is_bot`` is optional: bot events are ignored when present)."""

ORDER_EVENT = "Order Completed"
REFUND_EVENT = "Order Refunded"
CANCEL_EVENT = "Order Cancelled"
PAYMENT_FAILED = "Payment Failed"
PAYMENT_CAPTURED = "Payment Captured"
PRODUCT_VIEWED = "Product Viewed"
PRODUCT_ADDED = "Product Added"
KEY_SEP = "\x1f"
NO_TS = np.iinfo(np.int64).min


def as_of_time(day: dt.date) -> dt.datetime:
    """T for an as-of *date*: the last microsecond of that UTC day."""
    return dt.datetime.combine(day + dt.timedelta(days=1), dt.time(), tzinfo=dt.UTC) - dt.timedelta(microseconds=1)


def _to_us(value: dt.datetime) -> int:
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    delta = value - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def _ts_us(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """Timestamps (any unit, naive = UTC) as int64 microseconds; null -> NO_TS."""
    col = column.cast(pa.timestamp("us", tz="UTC")) if pa.types.is_timestamp(column.type) else column
    if not pa.types.is_timestamp(col.type):
        col = pc.cast(col, pa.timestamp("us", tz="UTC"))
    ints = pc.cast(col.cast(pa.timestamp("us")), pa.int64())
    return np.asarray(pc.fill_null(ints, NO_TS).to_numpy(zero_copy_only=False), dtype=np.int64)


def _bool(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    return np.asarray(pc.fill_null(column, False).to_numpy(zero_copy_only=False), dtype=bool)


def _eq(column: pa.ChunkedArray, value: str) -> np.ndarray:
    return _bool(pc.equal(column, value))


def _codes(column: pa.ChunkedArray | pa.Array, alphabetical: bool = True) -> tuple[np.ndarray, pa.Array]:
    """Dictionary codes whose order is alphabetical (so ``min code`` breaks ties by name); null -> -1."""
    encoded = pc.dictionary_encode(column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column)
    dictionary = encoded.dictionary
    indices = np.asarray(pc.fill_null(encoded.indices, -1).to_numpy(zero_copy_only=False), dtype=np.int64)
    if len(dictionary) == 0:
        return indices, pa.array([], pa.string())
    if not alphabetical:
        return indices, dictionary
    order = np.asarray(pc.array_sort_indices(dictionary).to_numpy(), dtype=np.int64)
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = np.arange(len(order))
    codes = np.where(indices >= 0, rank[np.maximum(indices, 0)], -1)
    return codes, dictionary.take(pa.array(order))


def _json_field(properties: pa.Array, name: str) -> pa.Array:
    """One top-level string property of JSON texts, parsed by Arrow's C++ JSON reader.

    Falls back to ``json.loads`` row by row when a text is not a flat JSON object with a string
    value for ``name`` (the reader is strict about types); non-string values become null.
    """
    if len(properties) == 0:
        return pa.array([], pa.string())
    texts = pc.fill_null(properties, "{}")
    texts = pc.if_else(pc.equal(pc.utf8_trim_whitespace(texts), ""), "{}", texts)
    texts = pc.replace_substring(texts, "\n", " ")
    joined = pc.binary_join(pa.ListArray.from_arrays(pa.array([0, len(texts)], pa.int32()), texts), "\n")
    options = pajson.ParseOptions(explicit_schema=pa.schema([(name, pa.string())]), unexpected_field_behavior="ignore")
    try:
        data = joined[0].as_buffer()
        parsed = pajson.read_json(
            pa.BufferReader(data),
            read_options=pajson.ReadOptions(block_size=max(1 << 20, data.size + 1)),
            parse_options=options,
        )
        if parsed.num_rows == len(texts):
            return parsed.column(name).combine_chunks()
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        pass
    out: list[str | None] = []
    for text in properties.to_pylist():
        try:
            value = json.loads(text).get(name) if text else None
        except (ValueError, AttributeError):
            value = None
        out.append(value if isinstance(value, str) else None)
    return pa.array(out, pa.string())


def _extract(properties: pa.ChunkedArray, mask: np.ndarray, name: str) -> pa.Array:
    """``properties[name]`` for the rows in ``mask`` (others null), aligned with the table."""
    n = len(properties)
    rows = np.flatnonzero(mask)
    values = _json_field(properties.take(pa.array(rows)).combine_chunks(), name)
    idx = np.full(n, -1, dtype=np.int64)
    idx[rows] = np.arange(len(rows))
    return values.take(pa.array(idx, mask=idx < 0))


@dataclass
class PreparedEvents:
    """Events sorted by (person, timestamp) as numpy columns, plus per-person index ranges."""

    person_keys: pa.Array  # combined "tenant\x1fperson" per person code
    tenants: pa.Array
    persons: pa.Array
    starts: np.ndarray
    ends: np.ndarray
    ts: np.ndarray
    visible_from: np.ndarray  # max(timestamp, received_at)
    is_order: np.ndarray
    is_refund: np.ndarray
    is_order_group: np.ndarray
    is_pay_failed: np.ndarray
    is_pay_captured: np.ndarray
    is_cod: np.ndarray
    is_view: np.ndarray
    is_add: np.ndarray
    revenue: np.ndarray
    session: np.ndarray
    category: np.ndarray
    channel: np.ndarray
    device: np.ndarray
    os: np.ndarray
    dictionaries: dict[str, pa.Array]

    @property
    def n_persons(self) -> int:
        return len(self.starts)


def _column(table: pa.Table, name: str, type_: pa.DataType) -> pa.ChunkedArray:
    if name in table.column_names:
        return table.column(name)
    return pa.chunked_array([pa.nulls(table.num_rows, type_)])


def _person_key(tenants, persons) -> pa.Array:
    joined = pc.binary_join_element_wise(tenants, persons, KEY_SEP)
    return joined.combine_chunks() if isinstance(joined, pa.ChunkedArray) else joined


def prepare_events(table: pa.Table) -> PreparedEvents:
    """Columns of lake rows (see :data:`INPUT_COLUMNS`) -> sorted numpy arrays, ready for many queries.

    Every column is reduced to numpy (flags, codes, microseconds) in the table's order first and only
    the numpy arrays are permuted into (person, timestamp) order: a ``take`` of the string columns
    would cost more than the rest together.
    """
    keep = pc.and_(pc.is_valid(table.column("person_id")), pc.is_valid(table.column("timestamp")))
    if "is_bot" in table.column_names:
        keep = pc.and_(keep, pc.invert(pc.fill_null(table.column("is_bot"), False)))
    if pc.sum(pc.invert(keep)).as_py():
        table = table.filter(keep)
    keys = pc.dictionary_encode(_person_key(table.column("tenant_id"), table.column("person_id")))
    pcode = np.asarray(keys.indices.to_numpy(zero_copy_only=False), dtype=np.int64)
    ts = _ts_us(table.column("timestamp"))
    received = _ts_us(_column(table, "received_at", pa.timestamp("us", tz="UTC")))
    received = np.where(received == NO_TS, ts, received)
    order = np.lexsort((ts, pcode))
    track = _eq(_column(table, "type", pa.string()), "track")
    event = _column(table, "event", pa.string())

    def is_(name: str) -> np.ndarray:
        return (track & _eq(event, name))[order]

    is_order_raw = track & _eq(event, ORDER_EVENT)
    is_view_raw = track & _eq(event, PRODUCT_VIEWED)
    is_add_raw = track & _eq(event, PRODUCT_ADDED)
    properties = _column(table, "properties", pa.string())
    method = _extract(properties, is_order_raw, "payment_method")
    is_cod = (_bool(pc.equal(pc.utf8_lower(pc.utf8_trim_whitespace(method)), "cod")) & is_order_raw)[order]
    category_codes, category_dict = _codes(_extract(properties, is_view_raw | is_add_raw, "category"))
    revenue_col = _column(table, "revenue_inr", pa.float64())
    revenue = np.asarray(
        pc.fill_null(pc.cast(revenue_col, pa.float64()), 0.0).to_numpy(zero_copy_only=False), dtype=np.float64
    )
    session_codes, _ = _codes(_column(table, "session_id", pa.string()), alphabetical=False)
    channel_codes, channel_dict = _codes(_column(table, "channel", pa.string()))
    device_codes, device_dict = _codes(_column(table, "ua_device", pa.string()))
    os_codes, os_dict = _codes(_column(table, "ua_os", pa.string()))
    pcode, ts, received = pcode[order], ts[order], received[order]
    n_persons = len(keys.dictionary)
    bounds = np.searchsorted(pcode, np.arange(n_persons + 1))
    is_order, is_refund = is_order_raw[order], is_(REFUND_EVENT)
    is_failed, is_captured = is_(PAYMENT_FAILED), is_(PAYMENT_CAPTURED)
    is_view, is_add = is_view_raw[order], is_add_raw[order]
    split = pc.split_pattern(keys.dictionary, KEY_SEP, max_splits=1)
    return PreparedEvents(
        person_keys=keys.dictionary,
        tenants=pc.list_element(split, 0),
        persons=pc.list_element(split, 1),
        starts=bounds[:-1],
        ends=bounds[1:],
        ts=ts,
        visible_from=np.maximum(ts, received),
        is_order=is_order,
        is_refund=is_refund,
        is_order_group=is_order | is_refund | is_(CANCEL_EVENT) | is_failed | is_captured,
        is_pay_failed=is_failed,
        is_pay_captured=is_captured,
        is_cod=is_cod,
        is_view=is_view,
        is_add=is_add,
        revenue=revenue[order],
        session=session_codes[order],
        category=category_codes[order],
        channel=channel_codes[order],
        device=device_codes[order],
        os=os_codes[order],
        dictionaries={"category": category_dict, "channel": channel_dict, "device": device_dict, "os": os_dict},
    )


# --- reductions over (query, event) pairs ------------------------------------------------------


def _count(q: np.ndarray, mask: np.ndarray, n: int) -> np.ndarray:
    return np.bincount(q[mask], minlength=n).astype(np.int64)


def _sum(q: np.ndarray, mask: np.ndarray, weights: np.ndarray, n: int) -> np.ndarray:
    return np.bincount(q[mask], weights=weights[mask], minlength=n)


def _last(q: np.ndarray, mask: np.ndarray, values: np.ndarray, n: int) -> np.ndarray:
    """Per query, the value at the last selected pair (pairs are sorted by (query, timestamp))."""
    out = np.full(n, NO_TS, dtype=np.int64)
    sq, sv = q[mask], values[mask]
    if len(sq):
        ends = np.flatnonzero(np.r_[sq[1:] != sq[:-1], True])
        out[sq[ends]] = sv[ends]
    return out


def _mode(q: np.ndarray, codes: np.ndarray, mask: np.ndarray, n: int) -> np.ndarray:
    """Per query, the most frequent code (ties: the smallest code = alphabetically first); -1 when none."""
    sel = mask & (codes >= 0)
    out = np.full(n, -1, dtype=np.int64)
    if not sel.any():
        return out
    k = int(codes[sel].max()) + 1
    uniq, counts = np.unique(q[sel] * k + codes[sel], return_counts=True)
    uq, uc = uniq // k, uniq % k
    order = np.lexsort((uc, -counts, uq))
    uq, uc = uq[order], uc[order]
    first = np.r_[True, uq[1:] != uq[:-1]]
    out[uq[first]] = uc[first]
    return out


def _days(now: np.ndarray, last: np.ndarray) -> pa.Array:
    missing = last == NO_TS
    return pa.array(np.where(missing, 0, now - last) / US_PER_DAY, pa.float64(), mask=missing)


def _ratio(num: np.ndarray, den: np.ndarray) -> pa.Array:
    zero = den == 0
    return pa.array(num / np.where(zero, 1, den), pa.float64(), mask=zero)


def _ts_array(values: np.ndarray) -> pa.Array:
    return pa.array(np.where(values == NO_TS, 0, values), pa.int64(), mask=values == NO_TS).cast(
        pa.timestamp("us", tz="UTC")
    )


def _strings(codes: np.ndarray, dictionary: pa.Array) -> pa.Array:
    if len(dictionary) == 0:
        return pa.nulls(len(codes), pa.string())
    return dictionary.take(pa.array(codes, mask=codes < 0)).cast(pa.string())


def _pairs(prep: PreparedEvents, pcode: np.ndarray, t_us: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Expand each query to its person's events and keep only the events visible at its T."""
    known = pcode >= 0
    safe = np.where(known, pcode, 0)
    starts = np.where(known, prep.starts[safe] if prep.n_persons else 0, 0)
    lengths = np.where(known, (prep.ends[safe] - prep.starts[safe]) if prep.n_persons else 0, 0)
    qidx = np.repeat(np.arange(len(pcode), dtype=np.int64), lengths)
    offsets = np.cumsum(lengths) - lengths
    eidx = np.arange(len(qidx), dtype=np.int64) - np.repeat(offsets - starts, lengths)
    keep = prep.visible_from[eidx] <= t_us[qidx]
    return qidx[keep], eidx[keep]


def _lifetimes_columns(q: np.ndarray, is_order: np.ndarray, ts: np.ndarray, revenue: np.ndarray, t_us: np.ndarray):
    """frequency / recency / T from :func:`transforms.clv.summarise_orders` (one day per period).

    The CLV helper owns the definition (same-day orders are one transaction); it is a per-person
    Python function, so it runs once per query *with orders* only.
    """
    n = len(t_us)
    frequency = np.full(n, np.nan)
    recency = np.full(n, np.nan)
    age = np.full(n, np.nan)
    oq, ots, orev = q[is_order], ts[is_order], revenue[is_order]
    if len(oq):
        epoch = dt.date(1970, 1, 1)
        day_numbers = ots // US_PER_DAY
        unique_days, day_index = np.unique(day_numbers, return_inverse=True)
        dates = [epoch + dt.timedelta(days=int(d)) for d in unique_days]
        day_of = [dates[i] for i in day_index.tolist()]
        values = orev.tolist()
        ends_of = (t_us // US_PER_DAY).tolist()
        bounds = np.flatnonzero(np.r_[True, oq[1:] != oq[:-1], True]).tolist()
        queries = oq.tolist()
        for start, end in itertools.pairwise(bounds):
            query = queries[start]
            orders = list(zip(day_of[start:end], values[start:end], strict=True))
            summary = clv.summarise_orders(orders, epoch + dt.timedelta(days=ends_of[query]), period_days=1.0)
            if summary is not None:
                frequency[query], recency[query], age[query] = summary.frequency, summary.recency, summary.T
    return {
        "lt_frequency": pa.array(frequency, mask=np.isnan(frequency)),
        "lt_recency_days": pa.array(recency, mask=np.isnan(recency)),
        "lt_T_days": pa.array(age, mask=np.isnan(age)),
    }


def compute_features(prep: PreparedEvents, tenants: pa.Array, persons: pa.Array, as_of: np.ndarray) -> pa.Table:
    """Feature rows for queries ``(tenants[i], persons[i], as_of[i])`` (as_of in UTC microseconds).

    Persons without a visible event get zero counts and null everything else.
    Returns a table with :data:`schemas.features.OFFLINE_SCHEMA`, one row per query, in query order.
    """
    n = len(as_of)
    t_us = np.asarray(as_of, dtype=np.int64)
    found = pc.index_in(_person_key(tenants, persons), value_set=prep.person_keys)
    pcode = np.asarray(pc.fill_null(found, -1).to_numpy(zero_copy_only=False), dtype=np.int64)
    q, e = _pairs(prep, pcode, t_us)
    ts = prep.ts[e]
    age = t_us[q] - ts
    everything = np.ones(len(q), dtype=bool)
    cols: dict[str, pa.Array] = {}

    is_order = prep.is_order[e]
    revenue = prep.revenue[e]
    orders = _count(q, is_order, n)
    revenue_total = _sum(q, is_order, revenue, n)
    cols["orders_lifetime"] = pa.array(orders)
    cols["revenue_inr_lifetime"] = pa.array(revenue_total)
    cols["avg_order_value_inr"] = _ratio(revenue_total, orders)
    cols["days_since_last_order"] = _days(t_us, _last(q, is_order, ts, n))
    for w in ORDER_WINDOWS:
        in_w = is_order & (age < w * US_PER_DAY)
        cols[f"orders_{w}d"] = pa.array(_count(q, in_w, n))
        cols[f"revenue_inr_{w}d"] = pa.array(_sum(q, in_w, revenue, n))
    in_year = age < MIX_WINDOW * US_PER_DAY
    cols["refunds_365d"] = pa.array(_count(q, prep.is_refund[e] & in_year, n))
    failed = _count(q, prep.is_pay_failed[e] & in_year, n)
    captured = _count(q, prep.is_pay_captured[e] & in_year, n)
    cols["payment_failure_rate_365d"] = _ratio(failed, failed + captured)
    cols["cod_share_365d"] = _ratio(_count(q, prep.is_cod[e] & in_year, n), _count(q, is_order & in_year, n))

    session = prep.session[e]
    has_session = session >= 0
    cols["days_since_last_session"] = _days(t_us, _last(q, has_session, ts, n))
    per_session = (
        pd.DataFrame(
            {
                "q": q[has_session],
                "s": session[has_session],
                "ts": ts[has_session],
                "add": prep.is_add[e][has_session],
                "order": is_order[has_session],
            }
        )
        .groupby(["q", "s"], sort=False)
        .agg(ts=("ts", "max"), add=("add", "max"), order=("order", "max"))
    )
    sq = per_session.index.get_level_values("q").to_numpy(dtype=np.int64)
    s_age = t_us[sq] - per_session["ts"].to_numpy(dtype=np.int64)
    for w in ACTIVITY_WINDOWS:
        cols[f"sessions_{w}d"] = pa.array(np.bincount(sq[s_age < w * US_PER_DAY], minlength=n).astype(np.int64))
    abandoned = (
        (s_age < PREFERENCE_WINDOW * US_PER_DAY)
        & per_session["add"].to_numpy(dtype=bool)
        & ~per_session["order"].to_numpy(dtype=bool)
    )
    cols["cart_abandonments_90d"] = pa.array(np.bincount(sq[abandoned], minlength=n).astype(np.int64))
    is_view = prep.is_view[e]
    for w in ACTIVITY_WINDOWS:
        cols[f"product_views_{w}d"] = pa.array(_count(q, is_view & (age < w * US_PER_DAY), n))

    recent = age < PREFERENCE_WINDOW * US_PER_DAY
    d = prep.dictionaries
    cols["top_category_90d"] = _strings(_mode(q, prep.category[e], recent, n), d["category"])
    cols["preferred_channel_90d"] = _strings(_mode(q, prep.channel[e], recent, n), d["channel"])
    cols["preferred_device_90d"] = _strings(_mode(q, prep.device[e], recent, n), d["device"])
    cols["preferred_os_90d"] = _strings(_mode(q, prep.os[e], recent, n), d["os"])
    cols.update(_lifetimes_columns(q, is_order, ts, revenue, t_us))

    group_ts = {
        ORDERS: _last(q, prep.is_order_group[e], ts, n),
        ENGAGEMENT: _last(q, has_session, ts, n),
        PREFERENCES: _last(q, everything, ts, n),
        LIFETIMES: _last(q, is_order, ts, n),
    }
    arrays = [
        pa.array(tenants, pa.string()) if not isinstance(tenants, pa.ChunkedArray) else tenants.combine_chunks(),
        pa.array(persons, pa.string()) if not isinstance(persons, pa.ChunkedArray) else persons.combine_chunks(),
        _ts_array(t_us),
    ]
    arrays += [_ts_array(group_ts[g.name]) for g in GROUPS]
    arrays += [cols[feat.name].cast(feat.arrow_type) for feat in FEATURES]
    return pa.Table.from_arrays(arrays, schema=OFFLINE_SCHEMA)


def _dedupe_times(as_of: Iterable[dt.datetime | dt.date]) -> list[int]:
    times = []
    for value in as_of:
        times.append(_to_us(value) if isinstance(value, dt.datetime) else _to_us(as_of_time(value)))
    return sorted(set(times))


def features_as_of(
    events: pa.Table | PreparedEvents, as_of: Sequence[dt.datetime | dt.date], tenant: str | None = None
) -> pa.Table:
    """Snapshots: one row per (as_of, person with at least one event visible at that time).

    A ``date`` means the end of that UTC day (:func:`as_of_time`). Rows are ordered by as_of, then by
    person in order of first appearance in ``events``.
    """
    prep = events if isinstance(events, PreparedEvents) else prepare_events(events)
    tables = []
    if prep.n_persons == 0:
        return OFFLINE_SCHEMA.empty_table()
    first_visible = np.minimum.reduceat(prep.visible_from, prep.starts)
    for t in _dedupe_times(as_of):
        who = first_visible <= t
        if tenant is not None:
            who &= _bool(pc.equal(prep.tenants, tenant))
        idx = pa.array(np.flatnonzero(who))
        tables.append(
            compute_features(prep, prep.tenants.take(idx), prep.persons.take(idx), np.full(len(idx), t, np.int64))
        )
    if not tables:
        return OFFLINE_SCHEMA.empty_table()
    return pa.concat_tables(tables)


def apply_ttl(features: pa.Table, ttl: dt.timedelta | None, at_column: str = "as_of") -> pa.Table:
    """Null every feature of a group whose latest source event is missing or older than ``ttl`` at ``at_column``."""
    if ttl is None:
        return features
    at = _ts_us(features.column(at_column))
    limit = int(ttl / dt.timedelta(microseconds=1))
    for group in GROUPS:
        last = _ts_us(features.column(group.event_ts_column))
        stale = pa.array((last == NO_TS) | (at - last > limit))
        for feat in features_of(group.name):
            idx = features.schema.get_field_index(feat.name)
            column = features.column(idx)
            features = features.set_column(
                idx, features.schema.field(idx), pc.if_else(stale, pa.scalar(None, column.type), column)
            )
    return features


def normalise_spine(spine: pa.Table) -> pa.Table:
    """Spine columns as the join expects them: string keys, ``label_timestamp`` as UTC microseconds.

    Accepts timestamps with any unit, naive ones (taken as UTC) and ISO-8601 text with or without an
    offset (CSV spines).
    """
    missing = {"tenant_id", "person_id", "label_timestamp"} - set(spine.column_names)
    if missing:
        raise ValueError(f"spine lacks columns: {sorted(missing)}")
    target = pa.timestamp("us", tz="UTC")
    label = spine.column("label_timestamp")
    if pa.types.is_string(label.type) or pa.types.is_large_string(label.type):
        try:
            label = pc.cast(label, target)
        except pa.ArrowInvalid:  # mixed offsets / naive text: parse each (naive = UTC)
            parsed = [None if v is None else dt.datetime.fromisoformat(v) for v in label.to_pylist()]
            label = pa.array([v if v is None or v.tzinfo else v.replace(tzinfo=dt.UTC) for v in parsed], target)
    elif pa.types.is_timestamp(label.type) and label.type.tz is None:
        label = pc.assume_timezone(label.cast(pa.timestamp("us")), "UTC")
    elif pa.types.is_date(label.type):
        raise ValueError("label_timestamp must be a timestamp, not a date (say which instant the label is known)")
    label = label.cast(target)
    out = spine
    for name, column in (
        ("tenant_id", spine.column("tenant_id").cast(pa.string())),
        ("person_id", spine.column("person_id").cast(pa.string())),
        ("label_timestamp", label),
    ):
        out = out.set_column(out.schema.get_field_index(name), pa.field(name, column.type), column)
    return out


def build_training_set(spine: pa.Table, events: pa.Table | PreparedEvents, ttl: dt.timedelta | None) -> pa.Table:
    """Point-in-time join: features of each spine row computed as of its ``label_timestamp``.

    ``spine`` has ``tenant_id, person_id, label_timestamp`` and optionally ``label`` (any other
    columns are kept too). Only events with ``timestamp <= label_timestamp`` and
    ``received_at <= label_timestamp`` count; groups older than ``ttl`` are null. Row order is kept.
    """
    spine = normalise_spine(spine)
    prep = events if isinstance(events, PreparedEvents) else prepare_events(events)
    label_us = _ts_us(spine.column("label_timestamp"))
    if (label_us == NO_TS).any():
        raise ValueError("spine has rows without a label_timestamp")
    feats = compute_features(
        prep, spine.column("tenant_id").cast(pa.string()), spine.column("person_id").cast(pa.string()), label_us
    )
    feats = apply_ttl(feats, ttl)
    out = spine
    for name in feats.column_names:
        if name in ("tenant_id", "person_id", "as_of"):
            continue
        out = out.append_column(feats.schema.field(name), feats.column(name))
    return out


# --- Beam ----------------------------------------------------------------------------------------


class _ComputeBucketFn(beam.DoFn):
    def __init__(self, as_of: Sequence[dt.date], tenant: str | None):
        self.as_of, self.tenant = list(as_of), tenant
        self.persons = Metrics.counter("livora", "feature_rows")
        self.events = Metrics.counter("livora", "feature_input_events")

    def process(self, element):
        bucket, tables = element
        tables = [t for t in tables if t.num_rows]
        if not tables:
            return
        events = pa.concat_tables(tables, promote_options="permissive")
        self.events.inc(events.num_rows)
        features = features_as_of(events, self.as_of, self.tenant)
        self.persons.inc(features.num_rows)
        if features.num_rows == 0:
            return
        dates = pc.strftime(features.column("as_of"), format="%Y-%m-%d")
        for day in pc.unique(dates).to_pylist():
            on_day = features.filter(pc.equal(dates, day))
            for tenant in pc.unique(on_day.column("tenant_id")).to_pylist():
                yield (day, tenant, bucket), on_day.filter(pc.equal(on_day.column("tenant_id"), tenant))


class ComputeFeatures(beam.PTransform):
    """``(bucket, [event tables])`` after a GroupByKey -> ``((as_of_date, tenant, bucket), feature table)``.

    Args:
        as_of: the as-of dates (each means the end of that UTC day).
        tenant: only this tenant's persons (None: all).
    """

    def __init__(self, as_of: Sequence[dt.date], tenant: str | None = None):
        super().__init__()
        if not as_of:
            raise ValueError("ComputeFeatures needs at least one as-of date")
        self.as_of, self.tenant = list(as_of), tenant

    def expand(self, grouped):
        return grouped | "FeaturesPerBucket" >> beam.ParDo(_ComputeBucketFn(self.as_of, self.tenant))
