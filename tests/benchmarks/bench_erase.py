"""Benchmark: erasing 1,000 persons from a large lake vs one full read of that lake, in the same run.

    pytest tests/benchmarks/bench_erase.py -m benchmark -s
    LIVORA_BENCH_ROWS=10000000 pytest tests/benchmarks/bench_erase.py -m benchmark -s

Writes a lake of ``LIVORA_BENCH_ROWS`` events (default 1,000,000) of one tenant over 30 days, persons with a
user id, an anonymous id and an email hash in their identify traits, straight as Parquet (ingest is not what is
measured). Then times (a) one full read of the events table (every column, ``connectors.lake.read_events``) and
(b) ``pipelines.erase --requests`` of 1,000 persons (by user id), and prints the ratio b / a. Erasure reads
the identity columns of every file and rewrites the files holding a subject: with persons spread over all days
that is most files, so the ratio is about (identity-column read + full read + write) / full read.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import tempfile
import time

import numpy as np
import pyarrow as pa
import pytest

from connectors.lake import read_events, write_partition_file
from pipelines import erase
from schemas.lake import EVENTS_FILE_SCHEMA, EVENTS_TABLE

pytestmark = pytest.mark.benchmark


def _column(field: pa.Field, n: int, rng: np.random.Generator, day: dt.date) -> pa.Array:
    if field.nullable:
        return pa.nulls(n, field.type)
    if pa.types.is_timestamp(field.type):
        base = dt.datetime.combine(day, dt.time(), tzinfo=dt.UTC)
        return pa.array([base + dt.timedelta(seconds=int(s)) for s in np.sort(rng.integers(0, 86400, n))], field.type)
    if pa.types.is_boolean(field.type):
        return pa.array(np.zeros(n, dtype=bool))
    return pa.array(["x"] * n, field.type)


def _lake(root: str, rows: int, persons: int, days: int = 30) -> None:
    rng = np.random.default_rng(7)
    per_day = rows // days
    for d in range(days):
        day = dt.date(2026, 10, 1) + dt.timedelta(days=d)
        who = rng.integers(0, persons, per_day)
        columns = {f.name: _column(f, per_day, rng, day) for f in EVENTS_FILE_SCHEMA}
        columns["message_id"] = pa.array([f"m-{d}-{i}" for i in range(per_day)])
        columns["type"] = pa.array(["track"] * per_day)
        columns["properties"] = pa.array(["{}"] * per_day)
        columns["user_id"] = pa.array([f"user-{w}" for w in who])
        columns["anonymous_id"] = pa.array([f"anon-{w}" for w in who])
        columns["person_id"] = pa.array([f"p_{w:024x}" for w in who])
        columns["traits"] = pa.array([json.dumps({"email": f"{w:064x}"}, separators=(",", ":")) for w in who])
        table = pa.table(columns).cast(EVENTS_FILE_SCHEMA)
        write_partition_file(root, EVENTS_TABLE, {"tenant_id": "acme-in", "event_date": day.isoformat()}, table,
                             "part-bench-0000.parquet")  # fmt: skip


def test_erase_1000_vs_full_read():
    rows = int(os.environ.get("LIVORA_BENCH_ROWS", "1000000"))
    persons = max(rows // 50, 2000)
    with tempfile.TemporaryDirectory() as root:
        _lake(root, rows, persons)
        started = time.perf_counter()
        total = read_events(root).num_rows
        full_read = time.perf_counter() - started
        requests = os.path.join(root, "requests.jsonl")
        with open(requests, "w") as handle:
            for w in range(0, 1000 * (persons // 1000), persons // 1000):
                handle.write(json.dumps({"tenant": "acme-in", "user_id": f"user-{w}", "requested_by": "bench"}) + "\n")
        started = time.perf_counter()
        record = erase.run(["--lake", root, "--requests", requests])
        erasure = time.perf_counter() - started
        removed = record["tenants"][0]["removed"]["lake_events"]
        left = read_events(root).num_rows
        assert left == total - removed["rows"] and removed["rows"] > 0
        print(
            f"\nlake {total:,} rows / {persons:,} persons / 30 files; full read {full_read:.2f} s; erase 1,000 persons "
            f"{erasure:.2f} s ({removed['rows']:,} rows, {removed['files']} files rewritten); ratio {erasure / full_read:.1f}"
        )
