"""Benchmark: CPU per event of batch ingest, per-event (before) vs batch-at-a-time (after), in one run.

    make bench            # or: pytest tests/benchmarks/bench_ingest.py -m benchmark -s
    LIVORA_BENCH_EVENTS=200000 pytest ... for a quicker look
    LIVORA_BENCH_BEAM_ARGS='--direct_num_workers=2 --direct_running_mode=multi_processing' to try a runner mode

On one generated file of >= 1M events, each measured in its own child process (so that its peak RSS is
its own), with CPU time (user + system, every thread) of the measured work only, imports excluded:

- **parse step**: records -> lake rows and failures (decode, validate, normalize, enrich), no tables after;
- **plain loop**: the whole core without Beam (``process_in_memory``: parse, person ids, dedupe,
  sessions) plus the Parquet lake files;
- **Beam**: ``pipelines.ingest_batch`` on the in-process runner;
- **DuckDB floor**: DuckDB's own NDJSON -> Parquet of the same file (no validation, no enrichment).

Each of the first three runs twice, ``--parse-mode per-event`` (the reference path) and ``batch``.
Figures are µs of CPU per event and events per CPU-second (the machine is shared: CPU time moves less
than wall time with other jobs), ratios against the same run's baseline, and a profile of the batch
parse step (where the remaining time goes). Targets (issue 15): Beam <= 16 µs/event, plain loop <= 10,
parse <= 6.
"""

from __future__ import annotations

import contextlib
import cProfile
import datetime as dt
import io
import json
import os
import pstats
import resource
import shlex
import subprocess
import sys
import time

import pytest

EVENTS = int(os.environ.get("LIVORA_BENCH_EVENTS", "1000000"))
BEAM_ARGS = shlex.split(os.environ.get("LIVORA_BENCH_BEAM_ARGS", ""))
SALT = "be" * 32
TARGETS = {"parse": 6.0, "loop": 10.0, "beam": 16.0}


def _cpu() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    return own.ru_utime + own.ru_stime


def _config(mode: str):
    from transforms.enrich import EnrichConfig
    from transforms.pipeline_core import ProcessConfig

    return ProcessConfig(enrich=EnrichConfig(pii_secret=SALT), parse_mode=mode.replace("-", "_"))


def _records(path: str):
    from connectors.files import read_file_records

    return list(read_file_records(path))


def _measure_parse(path: str, mode: str) -> tuple[int, float]:
    from transforms.pipeline_core import EventParser, parse_to_table

    records, config = _records(path), _config(mode)
    parser, now, events = EventParser(config), dt.datetime.now(dt.UTC), 0
    parse_to_table(records[:200], parser, now)  # open the parsers and rate table outside the timing
    start = _cpu()
    for first in range(0, len(records), config.batch_size):
        table, failures = parse_to_table(records[first : first + config.batch_size], parser, now)
        events += table.num_rows + len(failures)
    return events, _cpu() - start


def _measure_floors(path: str) -> dict[str, float]:
    """µs of CPU per event of the two costs no Python parse step avoids: JSON decoding, and JSON decoding plus
    pydantic-core's check of the contract (into plain dicts, the batch path's way), per record."""
    import orjson

    from schemas.dict_validators import dict_validator
    from schemas.events import Event

    payloads = [record.payload for record in _records(path)]
    validate = dict_validator(Event).validate_python
    start = _cpu()
    for payload in payloads:
        with contextlib.suppress(orjson.JSONDecodeError):
            orjson.loads(payload)
    decode = _cpu() - start
    start = _cpu()
    for payload in payloads:
        with contextlib.suppress(Exception):  # a refused record costs what it costs
            validate(orjson.loads(payload))
    both = _cpu() - start
    return {"json": decode / len(payloads) * 1e6, "json+contract": both / len(payloads) * 1e6}


def _measure_loop(path: str, mode: str, lake: str) -> tuple[int, float]:
    from connectors.lake import write_partition_file
    from transforms.event_tables import file_table
    from transforms.pipeline_core import lake_files, process_in_memory

    records, config = _records(path), _config(mode)
    start = _cpu()
    table, failures, duplicates = process_in_memory(records, config)
    for (tenant, date, shard), part in lake_files(table, config):
        write_partition_file(
            lake,
            "events",
            {"tenant_id": tenant, "event_date": date},
            file_table(part),
            f"part-loop-{shard:04d}.parquet",
        )
    return table.num_rows + len(failures) + len(duplicates), _cpu() - start


def _measure_beam(path: str, mode: str, lake: str) -> tuple[int, float]:
    from pipelines.ingest_batch import run

    start = _cpu()
    summary = run(
        ["--input", path, "--lake", lake, "--pii-salt", SALT, "--parse-mode", mode, "--quality-gate", "off", *BEAM_ARGS]
    )
    return summary.events_in, _cpu() - start


def _measure_duckdb(path: str, out: str) -> tuple[int, float]:
    import duckdb

    con = duckdb.connect()
    start = _cpu()
    con.execute(
        f"COPY (SELECT * FROM read_json('{path}', format='newline_delimited', ignore_errors=true)) "
        f"TO '{out}' (FORMAT parquet)"
    )
    rows = con.execute(f"SELECT count(*) FROM read_parquet('{out}')").fetchall()[0][0]
    return rows, _cpu() - start


def _profile_batch(path: str) -> str:
    from transforms.pipeline_core import EventParser, parse_to_table

    records, config = _records(path)[:100_000], _config("batch")
    parser, now = EventParser(config), dt.datetime.now(dt.UTC)
    parse_to_table(records[:200], parser, now)
    profile = cProfile.Profile()
    profile.enable()
    for first in range(0, len(records), config.batch_size):
        parse_to_table(records[first : first + config.batch_size], parser, now)
    profile.disable()
    text = io.StringIO()
    pstats.Stats(profile, stream=text).sort_stats("tottime").print_stats(14)
    return text.getvalue()


def child(kind: str, path: str, mode: str, out: str) -> None:
    """One measurement in this (child) process; the result as JSON on the last line of stdout."""
    if kind == "profile":
        print(json.dumps({"profile": _profile_batch(path)}))
        return
    if kind == "floors":
        print(json.dumps(_measure_floors(path)))
        return
    measured = {
        "parse": lambda: _measure_parse(path, mode),
        "loop": lambda: _measure_loop(path, mode, out),
        "beam": lambda: _measure_beam(path, mode, out),
        "duckdb": lambda: _measure_duckdb(path, out),
    }[kind]
    events, cpu = measured()
    print(json.dumps({"events": events, "cpu": cpu}))


def _run_child(kind: str, path: str, mode: str, out: str) -> dict:
    """Run :func:`child` in a new interpreter; its result plus its peak RSS (from the kernel, via wait4)."""
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    proc = subprocess.Popen(
        [sys.executable, __file__, kind, path, mode, out], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env
    )
    started = time.perf_counter()
    stdout = proc.stdout.read()  # small: one JSON line (and whatever the pipeline prints)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    assert proc.returncode == 0, f"{kind} {mode} failed ({proc.returncode})"
    result = json.loads(stdout.decode().strip().splitlines()[-1])
    return {**result, "wall": time.perf_counter() - started, "rss_mib": usage.ru_maxrss / 1024}


def _input_file(tmp_path_factory) -> str:
    from connectors.synthetic import generate_events

    path = tmp_path_factory.mktemp("bench") / "events.ndjson"
    with open(path, "wb") as handle:
        for record in generate_events(EVENTS, seed=42):
            handle.write(record.replace(b"\n", b" ") + b"\n")
    return str(path)


@pytest.mark.benchmark
def test_ingest_cpu_per_event_per_event_vs_batch(tmp_path_factory, tmp_path):
    path = _input_file(tmp_path_factory)
    results: dict[tuple[str, str], dict] = {}
    for kind in ("parse", "loop", "beam"):
        for mode in ("per-event", "batch"):
            out = str(tmp_path / f"{kind}-{mode}")
            results[kind, mode] = _run_child(kind, path, mode, out)
            print(f"[bench_ingest] {kind:5s} {mode:9s} done: {results[kind, mode]}", flush=True)
    floor = _run_child("duckdb", path, "-", str(tmp_path / "duckdb.parquet"))
    profile = _run_child("profile", path, "batch", "-")["profile"]
    floors = _run_child("floors", path, "-", "-")

    def us(r: dict) -> float:
        return r["cpu"] / r["events"] * 1e6

    lines = [
        f"\n[bench_ingest] {EVENTS:,} events, {os.cpu_count()} cores, load avg {os.getloadavg()[0]:.1f}, "
        f"Beam: {' '.join(BEAM_ARGS) or 'in-process FnApiRunner, 1 worker'}",
        f"  {'step':28s} {'µs CPU/event':>13s} {'events/CPU-s':>13s} {'peak RSS MiB':>13s} {'wall s':>7s}",
    ]
    for kind, label in (("parse", "parse step"), ("loop", "plain loop + lake files"), ("beam", "Beam ingest_batch")):
        for mode in ("per-event", "batch"):
            r = results[kind, mode]
            lines.append(
                f"  {label + ' (' + mode + ')':28s} {us(r):13.1f} {1e6 / us(r):13,.0f} {r['rss_mib']:13.0f} {r['wall']:7.1f}"
            )
        before, after = us(results[kind, "per-event"]), us(results[kind, "batch"])
        met = "met" if after <= TARGETS[kind] else "NOT met"
        lines.append(
            f"  {'':28s} batch/per-event CPU {after / before:.2f} ({before / after:.2f}x cheaper); "
            f"target <= {TARGETS[kind]:.0f} µs: {met}"
        )
    lines.append(
        f"  {'DuckDB NDJSON -> Parquet':28s} {us(floor):13.1f} {1e6 / us(floor):13,.0f} {floor['rss_mib']:13.0f} "
        f"{floor['wall']:7.1f}   (floor: no validation, no enrichment)"
    )
    lines.append(
        f"  Beam (batch) / DuckDB floor: {us(results['beam', 'batch']) / us(floor):.1f}x the CPU per event; "
        f"Beam overhead over the plain loop (batch): {us(results['beam', 'batch']) / us(results['loop', 'batch']):.2f}x"
    )
    lines.append(
        f"  parse floors per record: orjson.loads {floors['json']:.1f} µs; orjson.loads + the contract checked "
        f"by pydantic-core into dicts {floors['json+contract']:.1f} µs (the batch parse step is "
        f"{us(results['parse', 'batch']) / floors['json+contract']:.1f}x that)"
    )
    lines.append("  profile of the batch parse step (100k events, cProfile, by own time):")
    lines += ["    " + line for line in profile.splitlines() if line.strip()][:24]
    print("\n".join(lines))

    # every event accounted for on every path, and both parse modes agree on the counts
    for kind in ("parse", "loop", "beam"):
        assert results[kind, "per-event"]["events"] == results[kind, "batch"]["events"] == EVENTS
    assert results["beam", "batch"]["rss_mib"] <= results["beam", "per-event"]["rss_mib"] * 1.1


if __name__ == "__main__":
    child(*sys.argv[1:5])
