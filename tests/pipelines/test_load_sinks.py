"""Backfill from the lake into DynamoDB and the warehouse: counts match the lake; a re-run changes nothing."""

from __future__ import annotations

import subprocess
import sys

import pytest

from connectors.dynamodb import read_profile
from connectors.lake import read_events
from connectors.synthetic import generate_events
from connectors.warehouse import count_rows
from pipelines import ingest_batch, load_sinks
from tests.portable import worker_pool  # noqa: F401  (fixture)

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_load_sinks_from_lake_is_idempotent(tmp_path, aws):
    source = tmp_path / "events.ndjson"
    source.write_bytes(b"\n".join(generate_events(300, seed=5, days=3)) + b"\n")
    lake = tmp_path / "lake"
    ingest_batch.run(["--input", str(source), "--lake", str(lake), "--tracking-plans", "none"])
    lake_rows = read_events(str(lake)).num_rows
    warehouse = f"duckdb://{tmp_path}/wh.duckdb"
    argv = [
        "--lake", str(lake), "--warehouse", warehouse, "--profiles-table", "prof", "--identity-table", "ident",
        "--create-tables", "--aws-profile", "local", "--aws-endpoint-url", aws.endpoint_url,
    ]  # fmt: skip
    first = load_sinks.run(argv)
    assert first["lake_rows"] == lake_rows
    assert (
        first["profile_rows_applied"] == first["identity_rows_applied"] == first["warehouse_rows_loaded"] == lake_rows
    )
    assert first["sink_failures"] == 0
    assert count_rows(warehouse) == lake_rows
    persons = read_events(str(lake), columns=["tenant_id", "person_id"]).to_pylist()
    sample = {(p["tenant_id"], p["person_id"]) for p in persons[:20]}
    client = aws.client("dynamodb")
    before = {key: read_profile(client, "prof", *key) for key in sample}
    second = load_sinks.run(argv)
    assert second["warehouse_rows_loaded"] == lake_rows and count_rows(warehouse) == lake_rows
    after = {key: read_profile(client, "prof", *key) for key in sample}
    assert after == before  # same versions: a re-run wrote nothing new


def test_help_and_flag_checks():
    out = subprocess.run(
        [sys.executable, "-m", "pipelines.load_sinks", "--help"], capture_output=True, text=True, check=True
    ).stdout
    for flag in (
        "--lake",
        "--warehouse",
        "--warehouse-table",
        "--profiles-table",
        "--identity-table",
        "--create-tables",
        "--dead-letters",
        "--start-date",
        "--tenant",
    ):
        assert flag in out
    with pytest.raises(ValueError, match="nothing to load"):
        load_sinks.run(["--lake", "x"])


@pytest.mark.portable
def test_sinks_on_portable_runner_with_external_sdk_workers(tmp_path, aws, worker_pool):  # noqa: F811
    """The sink DoFns pickle, open their clients in setup() and share nothing in-process."""
    source = tmp_path / "events.ndjson"
    source.write_bytes(b"\n".join(generate_events(120, seed=9, days=2)) + b"\n")
    lake = tmp_path / "lake"
    ingest_batch.run(["--input", str(source), "--lake", str(lake), "--tracking-plans", "none"])
    rows = read_events(str(lake)).to_pylist()
    warehouse = f"duckdb://{tmp_path}/wh.duckdb"
    load_sinks.run(
        [
            "--lake", str(lake), "--warehouse", warehouse, "--profiles-table", "prof", "--identity-table", "ident",
            "--create-tables", "--aws-profile", "local", "--aws-endpoint-url", aws.endpoint_url,
            "--runner=PortableRunner", "--job_endpoint=embed", "--environment_type=EXTERNAL",
            f"--environment_config={worker_pool}",
        ]
    )  # fmt: skip
    assert count_rows(warehouse) == len(rows)
    client = aws.client("dynamodb")
    orders = {}
    for r in rows:
        if r["type"] == "track" and r["event"] == "Order Completed":
            orders.setdefault((r["tenant_id"], r["person_id"]), set()).add(r["order_id"] or r["message_id"])
    for r in rows:
        profile = read_profile(client, "prof", r["tenant_id"], r["person_id"])
        assert profile is not None
        assert profile["order_count"] == len(orders.get((r["tenant_id"], r["person_id"]), ()))
