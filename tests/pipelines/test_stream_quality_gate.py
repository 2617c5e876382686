"""--quality-gate on stream passes, through the moto server's Kinesis: a pass with negative revenue is blocked
(quarantined, warehouse not loaded, checkpoints not moved, exit 7), then a re-run publishes it."""

from __future__ import annotations

import glob
import json
import os

import duckdb
import pytest

from connectors.checkpoints import CheckpointStore
from connectors.lake import read_events
from connectors.synthetic import generate_events
from pipelines import stream_events
from pipelines.demo_stream import put_records
from pipelines.errors import EXIT_QUALITY
from tests.pipelines.test_stream_events import _argv, _resources
from tests.quality_lake import _books_negative_amount

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _records() -> tuple[list[bytes], str]:
    """Clean traffic plus one corrupted order (revenue -499): returns the records and its tenant."""
    records = [r for r in generate_events(300, seed=21, bad_fraction=0.0, duplicate_fraction=0.0)]
    records = [r for r in records if not _books_negative_amount(r)]
    for i, record in enumerate(records):
        event = json.loads(record)
        if event.get("event") == "Order Completed":
            event["properties"]["revenue"] = -499
            records[i] = json.dumps(event).encode()
            return records, event["tenantId"]
    raise AssertionError("the generator made no order")


def _warehouse_keys(url: str) -> set[tuple[str, str]]:
    path = url.removeprefix("duckdb:///")
    if not os.path.exists(path):
        return set()
    with duckdb.connect(path, read_only=True) as con:
        if not con.execute("select count(*) from information_schema.tables where table_name = 'events'").fetchone()[0]:
            return set()
        return set(con.execute("select tenant_id, message_id from events").fetchall())


def _lake_keys(lake: str) -> set[tuple[str, str]]:
    if not os.path.isdir(os.path.join(lake, "events")):
        return set()
    table = read_events(lake, columns=["tenant_id", "message_id"])
    return set(zip(table.column("tenant_id").to_pylist(), table.column("message_id").to_pylist(), strict=True))


def _last_record(lake: str) -> dict:
    paths = sorted(glob.glob(f"{lake}/_runs/records/*/*-stream_events-*.json"))
    with open(paths[-1]) as handle:
        return json.load(handle)


def test_a_corrupted_pass_is_blocked_then_published_by_a_rerun(aws, tmp_path, capsys):
    res = _resources(aws, shards=2, sinks=False)
    lake, warehouse = str(tmp_path / "lake"), f"duckdb:///{tmp_path}/wh.duckdb"
    records, tenant = _records()
    assert put_records(aws.client("kinesis"), res.stream, records) == len(records)
    argv = _argv(aws, res, lake, warehouse)
    store = CheckpointStore(aws, res.checkpoint_table)

    with pytest.raises(SystemExit) as exit_info:
        stream_events.main([*argv, "--quality-gate", "block"])
    assert exit_info.value.code == EXIT_QUALITY
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("stream_events: ")]
    assert len(err) == 1 and "non_negative:revenue_inr" in err[0] and "checkpoints not committed" in err[0]
    quarantined = glob.glob(f"{lake}/_quarantine/events/**/*.parquet", recursive=True)
    partitions = {os.path.dirname(p) for p in quarantined}
    assert len(partitions) == 1 and f"/tenant_id={tenant}/" in quarantined[0]  # the corrupted order's partition
    day = quarantined[0].split("event_date=")[1][:10]
    assert not glob.glob(f"{lake}/events/tenant_id={tenant}/event_date={day}/*.parquet")
    assert _warehouse_keys(warehouse) == set()  # nothing of the pass reached the warehouse
    assert store.load(res.stream) == {}  # the records stay in the stream
    record = _last_record(lake)
    assert record["exit_code"] == EXIT_QUALITY and record["error"].startswith("quality gate:")
    assert record["counts"]["quality_gate"] == "block"
    assert f"{tenant}/{day}" in record["counts"]["quality_failed"]
    assert record["counts"]["quality_files_quarantined"] == len(quarantined)

    # the same pass again under block: still blocked, nothing doubled in the quarantine
    with pytest.raises(SystemExit):
        stream_events.main([*argv, "--quality-gate", "block"])
    again = glob.glob(f"{lake}/_quarantine/events/**/*.parquet", recursive=True)
    assert len(again) == len(quarantined)

    # the fix: the owner accepts the data (warn publishes and records the failure); the pass is read again
    summary = stream_events.run([*argv, "--quality-gate", "warn"])
    assert summary.total("records_read") == len(records)
    assert not glob.glob(f"{lake}/_quarantine/events/**/*.parquet", recursive=True)
    keys = _lake_keys(lake)
    assert len(keys) == len(records)  # every record once: no bad or duplicate records were sent
    assert _warehouse_keys(warehouse) == keys
    assert set(store.load(res.stream)) == {"shardId-000000000000", "shardId-000000000001"}
    assert f"{tenant}/{day}" in summary.passes[0].quality["failed"]

    # a clean pass under block is published as usual
    clean = [r for r in generate_events(60, seed=22, bad_fraction=0.0, duplicate_fraction=0.0)]
    clean = [r for r in clean if not _books_negative_amount(r)]
    put_records(aws.client("kinesis"), res.stream, clean)
    later = stream_events.run([*argv, "--quality-gate", "block"])
    assert later.total("records_read") == len(clean) and later.passes[0].quality["failed"] == {}
    assert _warehouse_keys(warehouse) == _lake_keys(lake) and len(_lake_keys(lake)) > len(keys)


def test_streaming_mode_refuses_block():
    with pytest.raises(SystemExit) as exit_info:
        stream_events.main(["--stream", "s", "--lake", "/nonexistent", "--streaming", "--quality-gate", "block"])
    assert exit_info.value.code == 2
