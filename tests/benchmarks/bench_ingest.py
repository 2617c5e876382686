"""Benchmark: batch ingest over >= 1M generated events, plain loop vs the Beam pipeline, same run.

    make bench            # or: pytest tests/benchmarks/bench_ingest.py -m benchmark -s
    LIVORA_BENCH_EVENTS=200000 pytest ... for a quicker look

(a) the pure transform functions in a plain Python loop (decode → … → sessions → Parquet files);
(b) ``pipelines.ingest_batch`` on the in-process FnApiRunner with the same functions.
Prints events/s of both and (b)/(a). Targets (issue 2): (b) >= 100k events/s on this 2-core
machine and (b) >= 50 % of (a).
"""

from __future__ import annotations

import os
import time
from collections import defaultdict

import pytest

from connectors.lake import write_partition_file
from connectors.synthetic import generate_events
from pipelines.ingest_batch import run
from schemas.records import SourceRecord
from transforms.pipeline_core import ProcessConfig, process_in_memory, stable_bucket

EVENTS = int(os.environ.get("LIVORA_BENCH_EVENTS", "1000000"))


def _input_file(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("bench") / "events.ndjson"
    with open(path, "wb") as handle:
        for record in generate_events(EVENTS, seed=42):
            handle.write(record.replace(b"\n", b" ") + b"\n")
    return str(path)


def plain_loop(path: str, lake: str, config: ProcessConfig) -> int:
    with open(path, "rb") as handle:
        records = [SourceRecord(line.rstrip(b"\n"), f"file:{path}:{n}") for n, line in enumerate(handle, 1)]
    rows, failures, duplicates = process_in_memory(records, config)
    files: dict[tuple, list] = defaultdict(list)
    for row in rows:
        files[
            (row["tenant_id"], row["event_date"].isoformat(), stable_bucket(row["person_id"], config.buckets))
        ].append(row)
    for (tenant, date, bucket), part in files.items():
        part.sort(key=lambda r: (r["timestamp"], r["message_id"]))
        write_partition_file(
            lake, "events", {"tenant_id": tenant, "event_date": date}, part, f"part-loop-{bucket:04d}.parquet"
        )
    return len(rows) + len(failures) + len(duplicates)


@pytest.mark.benchmark
def test_ingest_throughput_plain_loop_vs_beam(tmp_path_factory, tmp_path):
    path = _input_file(tmp_path_factory)
    config = ProcessConfig()

    started = time.perf_counter()
    events_a = plain_loop(path, str(tmp_path / "lake_a"), config)
    seconds_a = time.perf_counter() - started

    started = time.perf_counter()
    summary = run(["--input", path, "--lake", str(tmp_path / "lake_b")])
    seconds_b = time.perf_counter() - started

    rate_a, rate_b = events_a / seconds_a, summary.events_in / seconds_b
    print(
        f"\n[bench_ingest] events={EVENTS:,} cores={os.cpu_count()}"
        f"\n  (a) plain loop : {seconds_a:8.1f} s  {rate_a:10,.0f} events/s"
        f"\n  (b) Beam       : {seconds_b:8.1f} s  {rate_b:10,.0f} events/s  (FnApiRunner, 1 worker)"
        f"\n  ratio (b)/(a)  : {rate_b / rate_a:8.2f}   targets: (b) >= 100,000 events/s, ratio >= 0.50"
    )
    assert summary.events_in == events_a == EVENTS  # same numbers from both paths
