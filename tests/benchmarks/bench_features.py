"""Benchmark: person features for 1M persons (all features of schemas/features.py) with time and memory.

    pytest tests/benchmarks/bench_features.py -m benchmark -s
    LIVORA_BENCH_PERSONS=200000 pytest ... for a quicker look

Generates a lake-shaped Arrow table with numpy (about 8 events per person, 5 % late arrivals), then
times (a) ``prepare_events`` + ``features_as_of`` for one as-of date (the per-bucket work of
``pipelines.features``, here on a single bucket holding every person) and (b) the same for two
as-of dates; (c) a baseline in the same run: DuckDB's multi-threaded SQL engine computing a subset
of the features (order counts/revenue windows, sessions, views) with GROUP BY on the same table.
Memory: peak RSS of the process (``resource.getrusage``) before and after, and the peak of Arrow's
memory pool. Figures are printed.
"""

from __future__ import annotations

import datetime as dt
import os
import resource
import time

import duckdb
import numpy as np
import pyarrow as pa
import pytest

from schemas.features import FEATURES
from transforms.features import US_PER_DAY, as_of_time, features_as_of, prepare_events

PERSONS = int(os.environ.get("LIVORA_BENCH_PERSONS", "1000000"))
EVENTS_PER_PERSON = 8
AS_OF = dt.date(2026, 10, 31)


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def lake_table(persons: int, seed: int = 1) -> pa.Table:
    rng = np.random.default_rng(seed)
    per = rng.poisson(EVENTS_PER_PERSON - 1, persons) + 1
    n = int(per.sum())
    person = np.repeat(np.arange(persons), per)
    end = int((as_of_time(AS_OF) - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)).total_seconds() * 1e6)
    ts = end - rng.integers(0, 400 * US_PER_DAY, n)
    late = rng.random(n) < 0.05
    received = ts + np.where(late, rng.integers(0, 20 * US_PER_DAY, n), rng.integers(0, 5_000_000, n))
    kinds = np.array(
        ["Product Viewed", "Product Added", "Order Completed", "Payment Failed", "Payment Captured", "Order Refunded"]
    )
    kind = rng.choice(len(kinds) + 1, n, p=[0.35, 0.12, 0.1, 0.03, 0.07, 0.01, 0.32])  # last: page view
    event = pa.DictionaryArray.from_arrays(
        pa.array(np.where(kind < len(kinds), kind, 0), mask=kind == len(kinds)), pa.array(kinds)
    ).cast(pa.string())
    typ = pa.array(np.where(kind < len(kinds), "track", "page"))
    props_choices = pa.array(
        [
            '{"category": "Skincare", "price": 899}',
            '{"category": "Makeup", "price": 249}',
            '{"order_id": "o", "payment_method": "cod", "revenue": 999}',
            '{"order_id": "o", "payment_method": "upi", "revenue": 1299}',
            "{}",
        ]
    )
    props_idx = np.select(
        [kind == 0, kind == 1, kind == 2],
        [rng.integers(0, 2, n), rng.integers(0, 2, n), rng.integers(2, 4, n)],
        default=4,
    )
    sessions = person * 4 + rng.integers(0, 4, n)
    revenue = np.where(kind == 2, rng.integers(200, 5000, n).astype(float), np.nan)
    return pa.table(
        {
            "tenant_id": pa.array(np.where(person % 2 == 0, "acme-in", "bloom-in")),
            "person_id": pa.array(np.char.add("p", person.astype(str))),
            "type": typ,
            "event": event,
            "timestamp": pa.array(ts, pa.int64()).cast(pa.timestamp("us", tz="UTC")),
            "received_at": pa.array(received, pa.int64()).cast(pa.timestamp("us", tz="UTC")),
            "session_id": pa.array(np.char.add("s", sessions.astype(str))),
            "revenue_inr": pa.array(revenue, mask=np.isnan(revenue)),
            "channel": pa.array(np.array(["direct", "email", "paid_social", "organic_search"])[rng.integers(0, 4, n)]),
            "ua_device": pa.array(np.array(["Mobile", "Desktop"])[rng.integers(0, 2, n)]),
            "ua_os": pa.array(np.array(["Android", "iOS", "Windows"])[rng.integers(0, 3, n)]),
            "properties": props_choices.take(pa.array(props_idx)),
            "is_bot": pa.array(np.zeros(n, dtype=bool)),
        }
    )


def duckdb_baseline(table: pa.Table) -> float:
    con = duckdb.connect()
    con.register("ev", table)
    t = as_of_time(AS_OF)
    started = time.perf_counter()
    con.execute(
        """
        SELECT tenant_id, person_id,
            count(*) FILTER (event = 'Order Completed') AS orders,
            sum(revenue_inr) FILTER (event = 'Order Completed') AS revenue,
            count(*) FILTER (event = 'Order Completed' AND timestamp > $t - INTERVAL 7 DAY) AS o7,
            count(*) FILTER (event = 'Order Completed' AND timestamp > $t - INTERVAL 30 DAY) AS o30,
            count(*) FILTER (event = 'Order Completed' AND timestamp > $t - INTERVAL 90 DAY) AS o90,
            count(*) FILTER (event = 'Order Completed' AND timestamp > $t - INTERVAL 365 DAY) AS o365,
            sum(revenue_inr) FILTER (event = 'Order Completed' AND timestamp > $t - INTERVAL 30 DAY) AS r30,
            count(DISTINCT session_id) FILTER (timestamp > $t - INTERVAL 30 DAY) AS s30,
            count(*) FILTER (event = 'Product Viewed' AND timestamp > $t - INTERVAL 30 DAY) AS v30,
            max(timestamp) AS last_seen
        FROM ev WHERE timestamp <= $t AND received_at <= $t GROUP BY ALL
        """,
        {"t": t},
    ).fetchall()
    return time.perf_counter() - started


@pytest.mark.benchmark
def test_features_for_a_million_persons():
    started = time.perf_counter()
    table = lake_table(PERSONS)
    gen_s = time.perf_counter() - started
    rss_before = _rss_mb()
    pool = pa.default_memory_pool()

    started = time.perf_counter()
    prep = prepare_events(table)
    prep_s = time.perf_counter() - started
    started = time.perf_counter()
    one = features_as_of(prep, [AS_OF])
    one_s = time.perf_counter() - started
    started = time.perf_counter()
    two = features_as_of(prep, [AS_OF - dt.timedelta(days=30), AS_OF])
    two_s = time.perf_counter() - started
    rss_after = _rss_mb()
    baseline_s = duckdb_baseline(table)

    persons = one.num_rows
    print(
        f"\nfeatures: {PERSONS:,} persons, {table.num_rows:,} events, {len(FEATURES)} features "
        f"(+{len(one.column_names) - len(FEATURES)} key/timestamp columns); generation {gen_s:.1f} s"
    )
    print(f"  prepare_events (sort, flags, JSON fields, codes): {prep_s:.1f} s")
    print(f"  features_as_of, 1 as-of date: {one_s:.1f} s -> {persons / one_s:,.0f} persons/s")
    print(f"  total one snapshot: {prep_s + one_s:.1f} s -> {table.num_rows / (prep_s + one_s):,.0f} events/s")
    print(f"  features_as_of, 2 as-of dates: {two_s:.1f} s ({two.num_rows:,} rows)")
    print(f"  baseline DuckDB GROUP BY (11 simple aggregates, multi-threaded): {baseline_s:.1f} s")
    print(
        f"  ratio ours (all {len(FEATURES)} features, prepare + compute) / DuckDB subset: {(prep_s + one_s) / baseline_s:.1f}x"
    )
    print(f"  peak RSS: {rss_before:,.0f} MB after generation, {rss_after:,.0f} MB after features")
    print(f"  Arrow pool peak: {pool.max_memory() / 2**20:,.0f} MB")
    assert persons > 0.95 * PERSONS
    assert set(one.column_names) >= {f.name for f in FEATURES}
