"""Benchmark: product analytics and segments on a generated lake, side by side with DuckDB SQL.

    pytest tests/benchmarks/bench_product_analytics.py -m benchmark -s
    LIVORA_BENCH_PERSONS=50000 pytest ... (default 20000 persons, about 270k events)

Prints rows/s of the vectorised transforms (one process), of the Beam pipelines on the FnApiRunner, and of
DuckDB SQL computing the same numbers on the same lake in the same run, and checks the numbers are equal.
"""

from __future__ import annotations

import datetime as dt
import os
import tempfile
import time

import duckdb
import pandas as pd
import pytest

from connectors.lake import read_events
from pipelines import product_analytics, segments
from tests.analytics_lake import generate_rows, write_lake
from tests.transforms.test_product_analytics import CARTS_SQL, ORDERS_SQL, PRODUCT_SQL, REVENUE_SQL
from tests.transforms.test_segments import CONFIG as SEGMENTS_CONFIG
from tests.transforms.test_segments import SQL as SEGMENTS_SQL
from transforms.product_analytics import analyse
from transforms.segments import as_of_end, load_config, membership

PERSONS = int(os.environ.get("LIVORA_BENCH_PERSONS", "20000"))


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


@pytest.mark.benchmark
def test_product_analytics_and_segments_against_duckdb():
    with tempfile.TemporaryDirectory() as tmp:
        lake, out = os.path.join(tmp, "lake"), os.path.join(tmp, "out")
        write_lake(lake, generate_rows(persons=PERSONS, seed=1, days=90))
        table = read_events(lake)
        n = table.num_rows
        last = max(table.column("event_date").to_pylist())
        end = dt.datetime.combine(last + dt.timedelta(days=1), dt.time(), tzinfo=dt.UTC)

        ours, t_ours = timed(lambda: analyse(read_events(lake), 24, end))
        _, t_beam = timed(lambda: product_analytics.run(["--lake", lake, "--output", out, "--buckets", "4"]))

        def sql():
            con = duckdb.connect()
            con.execute("SET TimeZone = 'UTC'")
            con.execute(
                f"CREATE VIEW rows AS SELECT * FROM read_parquet('{lake}/events/**/*.parquet', hive_partitioning=true)"
            )
            con.execute(ORDERS_SQL)
            return (
                con.execute(PRODUCT_SQL).df(),
                con.execute(REVENUE_SQL).df(),
                con.execute(CARTS_SQL, {"hours": 24, "end": end}).df(),
            )

        (products, revenue, carts), t_sql = timed(sql)
        assert ours["product_funnel"]["views"].tolist() == products["views"].tolist()
        assert ours["product_funnel"]["purchasers"].tolist() == products["purchasers"].tolist()
        assert int(ours["revenue_daily"]["orders"].sum()) == int(revenue["orders"].sum())
        assert int(ours["cart_abandonment"]["carts_abandoned"].sum()) == int(carts["carts_abandoned"].sum())

        config = load_config(SEGMENTS_CONFIG)
        as_of = last - dt.timedelta(days=5)
        members, t_seg = timed(lambda: membership(read_events(lake), config, as_of))
        cfg_path = os.path.join(tmp, "segments.yaml")
        with open(cfg_path, "w") as handle:
            handle.write(SEGMENTS_CONFIG)
        _, t_seg_beam = timed(
            lambda: segments.run(
                ["--lake", lake, "--config", cfg_path, "--as-of", as_of.isoformat(), "--output", out, "--buckets", "4"]
            )
        )

        def seg_sql():
            con = duckdb.connect()
            con.execute("SET TimeZone = 'UTC'")
            con.execute(
                f"CREATE VIEW rows AS SELECT * FROM read_parquet('{lake}/events/**/*.parquet', hive_partitioning=true)"
            )
            return con.execute(SEGMENTS_SQL, {"end": as_of_end(as_of)}).df()

        want, t_seg_sql = timed(seg_sql)
        got = set(zip(members["tenant_id"], members["person_id"], members["segment"], strict=True))
        assert got == set(zip(want["tenant_id"], want["person_id"], want["segment"], strict=True))

    rate = lambda t: f"{n / t:,.0f} rows/s"  # noqa: E731
    print(f"\nproduct analytics over {n:,} lake rows ({PERSONS:,} persons):")
    print(f"  vectorised transforms, 1 process : {t_ours:6.2f} s  {rate(t_ours)}")
    print(f"  Beam pipeline (FnApiRunner)      : {t_beam:6.2f} s  {rate(t_beam)}")
    print(f"  DuckDB SQL, same numbers         : {t_sql:6.2f} s  {rate(t_sql)}")
    print(f"  ratio transforms / DuckDB        : {t_ours / t_sql:6.2f}x   Beam / DuckDB: {t_beam / t_sql:.2f}x")
    print("segments (3 rules incl. RFM quintiles):")
    print(f"  vectorised transforms            : {t_seg:6.2f} s  {rate(t_seg)}")
    print(f"  Beam pipeline (FnApiRunner)      : {t_seg_beam:6.2f} s  {rate(t_seg_beam)}")
    print(f"  DuckDB SQL, same members         : {t_seg_sql:6.2f} s  {rate(t_seg_sql)}")
    print(f"  members: {len(members):,}; ratio transforms / DuckDB {t_seg / t_seg_sql:.2f}x")
    assert len(pd.DataFrame(members)) > 0
