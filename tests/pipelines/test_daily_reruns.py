"""What a scheduler does to batch ingest: the same command every day over a landing folder that grows,
renamed copies, a run killed half way, and the same events again through the stream.

The reference is a single clean ingest of the distinct events (the path the batch library was checked
on); after each step the scenario's lake must hold exactly its keys, each once, and product analytics
must count the same.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import signal
import subprocess
import sys
import time

import duckdb
import pyarrow.parquet as pq
import pytest

from connectors.synthetic import generate_events
from pipelines import product_analytics
from pipelines.ingest_batch import run
from tests.stream_runs import run_stream_pass

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def write_lines(path, records):
    with open(path, "wb") as handle:
        for record in records:
            handle.write(record + b"\n")


def keys(lake) -> list[tuple[str, str]]:
    return duckdb.sql(
        f"select tenant_id, message_id from read_parquet('{lake}/events/**/*.parquet', hive_partitioning=true)"
    ).fetchall()


def product_counts(lake, out) -> dict[str, list]:
    product_analytics.run(["--lake", str(lake), "--output", str(out), "--buckets", "2"])
    tables = {}
    for name in sorted(os.listdir(out)):
        if name.endswith(".parquet"):
            table = pq.read_table(out / name)
            tables[name] = sorted(map(str, table.to_pylist()))
    return tables


@pytest.fixture(scope="module")
def days():
    day1 = list(generate_events(1500, seed=101, start=dt.date(2026, 10, 1), days=6))
    day2 = list(generate_events(1500, seed=102, start=dt.date(2026, 10, 5), days=6)) + day1[:150]  # re-sent
    return day1, day2


@pytest.fixture(scope="module")
def reference(tmp_path_factory, days):
    """One clean ingest of every record once: the keys and counts every schedule must end with."""
    tmp = tmp_path_factory.mktemp("reference")
    day1, day2 = days
    write_lines(tmp / "all.ndjson", list(dict.fromkeys(day1 + day2)))
    run(["--input", str(tmp / "all.ndjson"), "--lake", str(tmp / "lake"), "--pii-salt", "s" * 32])
    return sorted(keys(tmp / "lake")), product_counts(tmp / "lake", tmp / "out")


@pytest.mark.slow
def test_daily_reruns_renamed_copies_and_a_growing_folder_keep_every_key_once(tmp_path, days, reference):
    day1, day2 = days
    landing, lake = tmp_path / "landing", tmp_path / "lake"
    landing.mkdir()
    argv = ["--input", str(landing / "*.ndjson"), "--lake", str(lake), "--pii-salt", "s" * 32]

    write_lines(landing / "day1.ndjson", day1)
    first = run(argv)
    assert first.files_ingested == 1

    write_lines(landing / "day2.ndjson", day2)  # day 1 is still in the folder
    second = run(argv)
    assert (second.files_ingested, second.files_skipped) == (1, 1)
    assert second.lake_duplicates >= 100  # day 1's re-sent events are already in the lake

    shutil.copy(landing / "day1.ndjson", landing / "day1-renamed.ndjson")
    third = run(argv)
    assert (third.files_ingested, third.files_skipped, third.lake_rows) == (0, 3, 0)

    got = keys(lake)
    assert len(got) == len(set(got)), "a (tenant_id, message_id) twice in the lake"
    want_keys, want_counts = reference
    assert sorted(got) == want_keys
    assert product_counts(lake, tmp_path / "out") == want_counts


@pytest.mark.integration
@pytest.mark.slow
def test_the_same_events_through_the_stream_add_nothing(aws, tmp_path, days, reference):
    from infra.resources import StreamingResources, create_streaming_resources
    from pipelines.demo_stream import put_records

    day1, day2 = days
    landing, lake = tmp_path / "landing", tmp_path / "lake"
    landing.mkdir()
    write_lines(landing / "day1.ndjson", day1)
    write_lines(landing / "day2.ndjson", day2)
    run(["--input", str(landing / "*.ndjson"), "--lake", str(lake), "--pii-salt", "s" * 32])
    res = create_streaming_resources(aws, StreamingResources(stream="events", shards=2, bucket=None))
    put_records(aws.client("kinesis"), res.stream, day1[:600])
    summary = run_stream_pass(aws, res, str(lake), "--pii-salt=" + "s" * 32, dedupe_table="none")
    assert summary.total("records_read") == 600 and summary.total("lake_rows") == 0
    got = keys(lake)
    want_keys, want_counts = reference
    assert len(got) == len(set(got)) and sorted(got) == want_keys
    assert product_counts(lake, tmp_path / "out") == want_counts


@pytest.mark.slow
def test_a_killed_run_then_a_rerun_over_more_files_doubles_nothing(tmp_path, days, reference):
    """kill -9 part-way through writing, add the next day's file, rerun: the crashed run's files are
    replaced or removed, never left beside the rerun's (they once doubled 72,379 rows)."""
    day1, day2 = days
    landing, lake = tmp_path / "landing", tmp_path / "lake"
    landing.mkdir()
    write_lines(landing / "day1.ndjson", day1)
    argv = ["--input", str(landing / "*.ndjson"), "--lake", str(lake), "--pii-salt", "s" * 32]
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipelines.ingest_batch", *argv, "--files-per-partition", "3"],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": ROOT},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    events = lake / "events"
    deadline = time.monotonic() + 300
    while proc.poll() is None and time.monotonic() < deadline:
        if events.is_dir() and sum(1 for _ in events.rglob("*.parquet")) >= 12:
            os.killpg(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.02)
    proc.wait(timeout=60)
    killed = proc.returncode == -signal.SIGKILL
    assert killed, "the run finished before it could be killed: raise the event count"
    # a writer killed between its temp file and the rename leaves this behind (an hour old)
    stale = events / "tenant_id=acme-in" / "event_date=2026-10-02" / ".tmp-killed.part"
    stale.parent.mkdir(parents=True, exist_ok=True)
    stale.write_bytes(b"")
    os.utime(stale, (time.time() - 7200, time.time() - 7200))

    write_lines(landing / "day2.ndjson", day2)
    rerun = run(argv)  # one file per partition now: the killed run's 3-way split must not survive
    assert rerun.files_ingested == 2  # the killed run recorded nothing in the manifest
    assert not stale.exists()
    got = keys(lake)
    assert len(got) == len(set(got)), "a row doubled after the crash"
    assert sorted(got) == reference[0]
    assert not [p for p in events.rglob("*.parquet") if p.name.endswith(("-0001.parquet", "-0002.parquet"))]
