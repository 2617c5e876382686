"""Benchmark: batch ingest over >= 1M generated events, plain loop vs the Beam pipeline, same run.

    make bench            # or: pytest tests/benchmarks/bench_ingest.py -m benchmark -s
    LIVORA_BENCH_EVENTS=200000 pytest ... for a quicker look
    LIVORA_BENCH_BEAM_ARGS='--direct_num_workers=2 --direct_running_mode=multi_processing' to try a runner mode

(a) the pure transform functions in a plain Python loop (decode → … → sessions → Parquet files), in
    one process: parsing per batch of records, then the same Arrow-table functions as the pipeline;
(b) ``pipelines.ingest_batch`` on the in-process FnApiRunner with the same functions.
Also (c): the per-event parse step alone on every core (one process per core, each reading its own
byte range; no tables, files or Beam), the ceiling of any pipeline built on these functions here.
Prints events/s of both and (b)/(a), by wall clock and by CPU time (user + system of this process
and of any worker processes the runner started), with the load average: the machine is shared, so
wall-clock rates move with the other jobs while CPU-time rates and their ratio are what a change is
judged by. Targets (issue 2): (b) >= 100k events/s on this 2-core machine and (b) >= 50 % of (a).
"""

from __future__ import annotations

import datetime as dt
import multiprocessing
import os
import resource
import shlex
import time

import pytest

from connectors.files import FileRange, file_ranges, range_records, read_file_records
from connectors.lake import write_partition_file
from connectors.synthetic import generate_events
from pipelines.ingest_batch import run
from transforms.enrich import EnrichConfig
from transforms.event_tables import file_table
from transforms.pipeline_core import EventParser, ProcessConfig, lake_files, parse_records, process_in_memory

EVENTS = int(os.environ.get("LIVORA_BENCH_EVENTS", "1000000"))
BEAM_ARGS = shlex.split(os.environ.get("LIVORA_BENCH_BEAM_ARGS", ""))

CONFIG = ProcessConfig(enrich=EnrichConfig(pii_secret="be" * 32))
"""The plain loop's config: the Beam run keeps its own random PII secret with its lake (same cost)."""


def _input_file(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("bench") / "events.ndjson"
    with open(path, "wb") as handle:
        for record in generate_events(EVENTS, seed=42):
            handle.write(record.replace(b"\n", b" ") + b"\n")
    return str(path)


def plain_loop(path: str, lake: str, config: ProcessConfig) -> tuple[int, int, int]:
    """(lake rows, dead letters, duplicates) of the same input, through the same functions, no Beam."""
    records = list(read_file_records(path))  # the records (and source refs) the pipeline reads
    table, failures, duplicates = process_in_memory(records, config)
    for (tenant, date, shard), part in lake_files(table, config):
        write_partition_file(
            lake,
            "events",
            {"tenant_id": tenant, "event_date": date},
            file_table(part),
            f"part-loop-{shard:04d}.parquet",
        )
    return table.num_rows, len(failures), len(duplicates)


def _parse_range(job: tuple[str, int, int | None]) -> int:
    """Events out of decode → validate → normalize → enrich for one byte range of the file (no tables, no files)."""
    path, start, end = job
    parser, now, events, batch = EventParser(CONFIG), dt.datetime.now(dt.UTC), 0, []
    with open(path, "rb") as handle:
        for record in range_records(handle, FileRange(path, start, end)):
            batch.append(record)
            if len(batch) == 2000:
                rows, failures = parse_records(batch, parser, now)
                events, batch = events + len(rows) + len(failures), []
    rows, failures = parse_records(batch, parser, now)
    return events + len(rows) + len(failures)


def parse_ceiling(path: str, processes: int) -> int:
    """(c): only the per-event parse step, on every core, each process reading its own byte range.

    Not a pipeline: an upper bound for any pipeline built on these per-event functions on this machine.
    """
    size = os.path.getsize(path)
    ranges = file_ranges(path, size, -(-size // processes))
    with multiprocessing.get_context("spawn").Pool(processes) as pool:
        return sum(pool.map(_parse_range, [tuple(r) for r in ranges]))


class Clock:
    """Wall time and CPU time (this process plus finished child processes) of a block."""

    def __enter__(self):
        self.load = os.getloadavg()[0]
        self.wall, self.cpu = time.perf_counter(), self._cpu()
        return self

    def __exit__(self, *exc):
        self.wall, self.cpu = time.perf_counter() - self.wall, self._cpu() - self.cpu
        self.load = max(self.load, os.getloadavg()[0])

    @staticmethod
    def _cpu() -> float:
        own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


@pytest.mark.benchmark
def test_ingest_throughput_plain_loop_vs_beam(tmp_path_factory, tmp_path):
    path = _input_file(tmp_path_factory)
    config = CONFIG

    with Clock() as a:
        lake_a, dead_a, dups_a = plain_loop(path, str(tmp_path / "lake_a"), config)
    with Clock() as b:
        summary = run(["--input", path, "--lake", str(tmp_path / "lake_b"), *BEAM_ARGS])

    with Clock() as c:
        events_c = parse_ceiling(path, os.cpu_count() or 1)

    events_a = lake_a + dead_a + dups_a
    mode = " ".join(BEAM_ARGS) or "default: FnApiRunner, in-process, 1 worker"
    wall_a, wall_b = events_a / a.wall, summary.events_in / b.wall
    cpu_a, cpu_b = events_a / a.cpu, summary.events_in / b.cpu
    print(
        f"\n[bench_ingest] events={EVENTS:,} cores={os.cpu_count()} Beam mode: {mode}"
        f"\n  {'':16s} {'wall s':>8s} {'events/s':>10s} {'CPU s':>8s} {'events/CPU-s':>13s} {'load avg':>9s}"
        f"\n  (a) plain loop : {a.wall:8.1f} {wall_a:10,.0f} {a.cpu:8.1f} {cpu_a:13,.0f} {a.load:9.1f}"
        f"\n  (b) Beam       : {b.wall:8.1f} {wall_b:10,.0f} {b.cpu:8.1f} {cpu_b:13,.0f} {b.load:9.1f}"
        f"\n  ratio (b)/(a)  : wall {wall_b / wall_a:5.2f}   CPU {cpu_b / cpu_a:5.2f}"
        f"   targets: (b) >= 100,000 events/s, ratio >= 0.50"
        f"\n  (c) ceiling    : {c.wall:8.1f} {events_c / c.wall:10,.0f} {c.cpu:8.1f} {events_c / c.cpu:13,.0f} {c.load:9.1f}"
        f"   parse step only (decode..enrich), {os.cpu_count()} processes, no tables/files/Beam"
    )
    assert events_c == EVENTS
    assert summary.events_in == events_a == EVENTS  # every event accounted for, on both paths
    assert (summary.lake_rows, summary.dead_letters, summary.duplicates) == (lake_a, dead_a, dups_a)
