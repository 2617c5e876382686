"""Benchmark: a daily batch ingest into a lake that already holds 10M events, against the same run into
an empty lake, same process, same input.

    pytest tests/benchmarks/bench_incremental_ingest.py -m benchmark -s -p no:cacheprovider
    LIVORA_BENCH_LAKE_EVENTS=2000000 LIVORA_BENCH_NEW_EVENTS=20000 ... for a quicker look

The big lake's rows are written directly as Parquet (same schema, same 2 tenants x 30 days as the new
events, so every partition the run writes holds ~1/60 of them); the run must read the message ids of
those partitions to keep (tenant_id, message_id) unique. Target (rerun issue): the run into the big lake
costs at most 2x the run into the empty lake. Prints wall and CPU seconds of both, events/s, the ratio
and the load average (the machine is shared: compare ratios, not absolute times).
"""

from __future__ import annotations

import datetime as dt
import os
import resource
import time

import numpy as np
import pyarrow as pa
import pytest

from connectors.lake import write_partition_file
from connectors.synthetic import generate_events
from pipelines.ingest_batch import run
from schemas.lake import EVENTS_FILE_SCHEMA

LAKE_EVENTS = int(os.environ.get("LIVORA_BENCH_LAKE_EVENTS", "10000000"))
NEW_EVENTS = int(os.environ.get("LIVORA_BENCH_NEW_EVENTS", "100000"))
TENANTS, START, DAYS = ("acme-in", "bloom-in"), dt.date(2026, 10, 1), 30
SALT = ["--pii-salt", "b" * 32]


def cpu_seconds() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def existing_partition(tenant: str, day: int, rows: int) -> pa.Table:
    """``rows`` earlier events of one partition: unique ids, required columns filled, the rest null."""
    base = dt.datetime.combine(START + dt.timedelta(days=day), dt.time(), tzinfo=dt.UTC)
    seconds = np.sort(np.random.default_rng(day).integers(0, 86400, rows))
    stamps = pa.array([base + dt.timedelta(seconds=int(s)) for s in seconds], pa.timestamp("us", tz="UTC"))
    columns = {}
    for field in EVENTS_FILE_SCHEMA:
        if field.name == "message_id":
            columns[field.name] = pa.array([f"old-{tenant}-{day}-{i:08d}" for i in range(rows)])
        elif field.name in ("timestamp", "received_at"):
            columns[field.name] = stamps
        elif field.name == "type":
            columns[field.name] = pa.array(["track"] * rows)
        elif field.name == "person_id":
            columns[field.name] = pa.array([f"p-{i % 5000}" for i in range(rows)])
        elif field.name == "properties":
            columns[field.name] = pa.array(["{}"] * rows)
        elif field.name == "is_bot":
            columns[field.name] = pa.array([False] * rows)
        elif field.name == "schema_version":
            columns[field.name] = pa.array(["1.0.0"] * rows)
        else:
            columns[field.name] = pa.nulls(rows, field.type)
    return pa.table(columns, schema=EVENTS_FILE_SCHEMA)


@pytest.mark.benchmark
def test_incremental_ingest_into_a_big_lake(tmp_path):
    source = tmp_path / "new.ndjson"
    with open(source, "wb") as handle:
        for record in generate_events(NEW_EVENTS, seed=7, tenants=TENANTS, start=START, days=DAYS):
            handle.write(record.replace(b"\n", b" ") + b"\n")

    big = tmp_path / "big"
    started = time.monotonic()
    per_partition = LAKE_EVENTS // (len(TENANTS) * DAYS)
    for tenant in TENANTS:
        for day in range(DAYS):
            table = existing_partition(tenant, day, per_partition)
            date = (START + dt.timedelta(days=day)).isoformat()
            write_partition_file(
                str(big), "events", {"tenant_id": tenant, "event_date": date}, table, "part-old.parquet"
            )
    print(f"\nbig lake: {per_partition * len(TENANTS) * DAYS:,} events written in {time.monotonic() - started:.0f}s")

    figures = {}
    for name, lake in (("empty lake", tmp_path / "empty"), ("10M lake", big), ("empty lake, again", tmp_path / "e2")):
        wall, cpu = time.monotonic(), cpu_seconds()
        summary = run(["--input", str(source), "--lake", str(lake), *SALT])
        wall, cpu = time.monotonic() - wall, cpu_seconds() - cpu
        figures[name] = (wall, cpu, summary)
        print(
            f"{name:>18}: {wall:6.1f}s wall, {cpu:6.1f}s CPU, {NEW_EVENTS / wall:8.0f} events/s wall, "
            f"lake rows {summary.lake_rows}, lake duplicates {summary.lake_duplicates}"
        )
    empty_wall = min(figures["empty lake"][0], figures["empty lake, again"][0])
    empty_cpu = min(figures["empty lake"][1], figures["empty lake, again"][1])
    big_wall, big_cpu, big_summary = figures["10M lake"]
    print(
        f"ratio 10M lake / empty lake: {big_wall / empty_wall:.2f} by wall clock, {big_cpu / empty_cpu:.2f} by CPU "
        f"(target <= 2); load average {os.getloadavg()[0]:.1f}"
    )
    assert big_summary.lake_rows == figures["empty lake"][2].lake_rows  # no old id collides with a new one
    assert big_summary.events_in == big_summary.events_parsed
