"""Benchmark: sink throughput against the local servers, with baselines measured in the same run.

    pytest tests/benchmarks/bench_sinks.py -m benchmark -s

- DynamoDB (moto server over HTTP): ``batch_write_with_retry`` items/s vs boto3's ``batch_writer``
  (the baseline it replaces); ``write_profile_states`` rows/s and persons/s (read-merge-conditional put).
- Warehouse: rows/s of one stage+MERGE transaction in DuckDB and PostgreSQL (COPY FROM STDIN), and of a
  naive PostgreSQL ``executemany`` INSERT ... ON CONFLICT of the same rows as the baseline.

Figures depend on the machine and on moto (a Python server: absolute DynamoDB numbers say more about
moto than about DynamoDB); the ratios measured in one run are the meaningful part.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import time
from decimal import Decimal

import psycopg
import pytest

from connectors.dynamodb import batch_write_with_retry, create_tables, write_profile_states
from connectors.warehouse import (
    EVENT_JSON_COLUMNS,
    EVENT_KEY,
    Retry,
    _Load,
    connect,
    dedupe_last,
    rows_to_arrow,
)
from infra.local_postgres import running_postgres
from transforms.profiles import fold

pytestmark = pytest.mark.benchmark

ROWS = int(os.environ.get("LIVORA_BENCH_SINK_ROWS", "5000"))
T0 = dt.datetime(2026, 3, 1, tzinfo=dt.UTC)


def lake_rows(n: int) -> list[dict]:
    rows = []
    for i in range(n):
        ts = T0 + dt.timedelta(seconds=37 * i)
        order = i % 10 == 0
        rows.append(
            {
                "tenant_id": "acme-in",
                "event_date": ts.date(),
                "message_id": f"m{i:08d}",
                "type": "identify" if i % 25 == 0 else "track",
                "event": "Order Completed" if order else "Product Viewed",
                "person_id": f"p{i % (n // 5):06d}",
                "anonymous_id": f"a{i % (n // 5):06d}",
                "user_id": f"u{i % (n // 5):06d}" if i % 3 == 0 else None,
                "timestamp": ts,
                "received_at": ts,
                "properties": json.dumps({"sku": f"SKU-{i % 97}", "price": 499}),
                "traits": json.dumps({"plan": "gold"}) if i % 25 == 0 else None,
                "order_id": f"o{i}" if order else None,
                "revenue_inr": Decimal("1499.0000") if order else None,
                "ua_browser": "Chrome",
                "geo_country": "IN",
                "is_bot": False,
                "schema_version": "1.0.0",
            }
        )
    return rows


def rate(label: str, count: int, seconds: float, unit: str = "rows") -> float:
    per_second = count / seconds
    print(f"{label:<58} {count:>7} {unit} in {seconds:6.2f}s = {per_second:>9.0f} {unit}/s")
    return per_second


def test_dynamodb_throughput(aws):
    create_tables(aws, "bench-profiles", "bench-identity")
    client = aws.client("dynamodb")
    items = [{"pk": f"k{i}", "sk": "x", "v": str(i)} for i in range(ROWS)]
    requests = [{"PutRequest": {"Item": {k: {"S": v} for k, v in item.items()}}} for item in items]
    start = time.perf_counter()
    batch_write_with_retry(client, "bench-identity", requests)
    ours = rate("batch_write_with_retry (25/call, backoff)", ROWS, time.perf_counter() - start, "items")
    table = aws.resource("dynamodb").Table("bench-identity")
    start = time.perf_counter()
    with table.batch_writer() as writer:
        for item in items:
            writer.put_item(Item={**item, "pk": "b" + item["pk"]})
    baseline = rate("baseline boto3 batch_writer (no backoff)", ROWS, time.perf_counter() - start, "items")
    print(f"ratio ours/baseline: {ours / baseline:.2f}")

    rows = lake_rows(ROWS)
    states = fold(rows)
    start = time.perf_counter()
    write_profile_states(client, "bench-profiles", states)
    elapsed = time.perf_counter() - start
    rate("profiles: fold+BatchGet+conditional Put (new persons)", ROWS, elapsed)
    rate("", len(states), elapsed, "persons")
    start = time.perf_counter()
    write_profile_states(client, "bench-profiles", fold(rows))
    rate("profiles: same rows again (replay: reads only, no writes)", ROWS, time.perf_counter() - start)


@pytest.fixture(scope="module")
def postgres_url():
    with running_postgres() as url:
        yield url


def test_warehouse_throughput(tmp_path, postgres_url):
    rows = lake_rows(ROWS)
    data = dedupe_last(rows_to_arrow(rows), EVENT_KEY)
    for url, label in ((f"duckdb://{tmp_path}/bench.duckdb", "DuckDB"), (postgres_url, "PostgreSQL")):
        warehouse = connect(url)
        job = _Load("bench_events", data, EVENT_KEY, None, EVENT_JSON_COLUMNS, "")
        start = time.perf_counter()
        Retry().run(warehouse, job)
        rate(f"{label}: stage + MERGE (new rows)", ROWS, time.perf_counter() - start)
        start = time.perf_counter()
        Retry().run(warehouse, job)
        rate(f"{label}: stage + MERGE (same rows again: all updates)", ROWS, time.perf_counter() - start)
    columns = data.schema.names
    values = [tuple(r[c] for c in columns) for r in data.to_pylist()]
    placeholders = ", ".join(["%s"] * len(columns))
    names = ", ".join(f'"{c}"' for c in columns)
    with psycopg.connect(postgres_url) as conn:
        conn.execute("CREATE TABLE naive (LIKE bench_events INCLUDING ALL)")
        start = time.perf_counter()
        with conn.cursor() as cur:
            cur.executemany(
                f'INSERT INTO naive ({names}) VALUES ({placeholders}) ON CONFLICT ("tenant_id", "message_id") DO NOTHING',
                values,
            )
    rate("baseline PostgreSQL executemany INSERT ON CONFLICT", ROWS, time.perf_counter() - start)
