"""The sinks on real lake rows (synthetic traffic -> batch ingest -> lake), checked against SQL over the lake."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import apache_beam as beam
import duckdb
import pytest
from apache_beam.options.pipeline_options import PipelineOptions

from connectors.dynamodb import WriteIdentityGraph, WriteProfiles, create_tables, persons_of, read_profile
from connectors.lake import read_events
from connectors.synthetic import generate_events
from connectors.warehouse import LoadToWarehouse, count_rows
from pipelines import ingest_batch

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PROFILES, IDENTITY = "profiles", "identity"


@pytest.fixture(scope="module")
def lake(tmp_path_factory):
    root = tmp_path_factory.mktemp("sinks")
    source = root / "events.ndjson"
    source.write_bytes(b"\n".join(generate_events(400, seed=11, days=5)) + b"\n")
    ingest_batch.run(["--input", str(source), "--lake", str(root / "lake"), "--tracking-plans", "none"])
    return root / "lake"


def expected_profiles(lake) -> dict:
    """Per person, straight from the lake with SQL (no code shared with transforms.profiles)."""
    sql = f"""
    WITH ev AS (SELECT * FROM read_parquet('{lake}/events/**/*.parquet', hive_partitioning=true)),
    orders AS (
        SELECT tenant_id, person_id, revenue_inr,
               row_number() OVER (PARTITION BY tenant_id, person_id, coalesce(order_id, 'msg:' || message_id)
                                  ORDER BY timestamp DESC, message_id DESC) AS rn
        FROM ev WHERE type = 'track' AND event = 'Order Completed')
    SELECT e.tenant_id, e.person_id, min(e.timestamp), max(e.timestamp),
           (SELECT count(*) FROM orders o WHERE o.tenant_id = e.tenant_id AND o.person_id = e.person_id AND rn = 1),
           (SELECT coalesce(sum(coalesce(revenue_inr, 0)), 0) FROM orders o
             WHERE o.tenant_id = e.tenant_id AND o.person_id = e.person_id AND rn = 1),
           (SELECT count(*) FROM ev r WHERE r.tenant_id = e.tenant_id AND r.person_id = e.person_id
             AND r.type = 'track' AND r.event = 'Order Refunded')
    FROM ev e GROUP BY e.tenant_id, e.person_id
    """
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    return {(t, p): rest for t, p, *rest in con.execute(sql).fetchall()}


def iso(ts: dt.datetime) -> str:
    return ts.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def test_profiles_identity_and_warehouse_from_lake_rows(lake, aws, postgres_url, tmp_path):
    rows = read_events(str(lake)).to_pylist()
    assert len(rows) > 250
    create_tables(aws, PROFILES, IDENTITY)
    duck = f"duckdb://{tmp_path}/wh.duckdb"
    with beam.Pipeline(options=PipelineOptions(flags=[], runner="FnApiRunner")) as pipeline:
        lake_rows = pipeline | beam.Create(rows + rows[:50])  # some rows delivered twice
        lake_rows | "Profiles" >> WriteProfiles(aws, PROFILES)
        lake_rows | "Identity" >> WriteIdentityGraph(aws, IDENTITY)
        lake_rows | "DuckDB" >> LoadToWarehouse(duck)
        lake_rows | "Postgres" >> LoadToWarehouse(postgres_url, "events_e2e")

    assert count_rows(duck) == len(rows) and count_rows(postgres_url, "events_e2e") == len(rows)
    client = aws.client("dynamodb")
    expected = expected_profiles(lake)
    assert sum(1 for v in expected.values() if v[2] > 0) > 5, "the sample should contain buyers"
    for (tenant, person), (first, last, orders, revenue, refunds) in expected.items():
        profile = read_profile(client, PROFILES, tenant, person)
        assert profile is not None, (tenant, person)
        assert (profile["first_seen"], profile["last_seen"]) == (iso(first), iso(last))
        assert profile["order_count"] == orders
        assert Decimal(profile["revenue_inr"]) == Decimal(revenue)
        assert profile["refund_count"] == refunds
    for row in rows[:80]:
        if row["anonymous_id"]:
            assert row["person_id"] in persons_of(client, IDENTITY, row["tenant_id"], f"a:{row['anonymous_id']}")
        if row["user_id"]:
            assert row["person_id"] in persons_of(client, IDENTITY, row["tenant_id"], f"u:{row['user_id']}")
