"""Benchmarks of incremental ingest: (1) a daily batch ingest into a lake that already holds 10M
events, against the same run into an empty lake, same process, same input; (2) the streaming job's
local incremental mode catching up a Kinesis backlog with the DynamoDB dedupe store, its conditional
claims against its batched claims, with the moto server's own ceilings measured in the same run.

    pytest tests/benchmarks/bench_incremental_ingest.py -m benchmark -s -p no:cacheprovider
    LIVORA_BENCH_LAKE_EVENTS=2000000 LIVORA_BENCH_NEW_EVENTS=20000 ... for a quicker look at (1)
    LIVORA_BENCH_QUALITY_GATE=off ... (1) without the quality gate (default: the pipeline's own default)
    LIVORA_BENCH_KEY_INDEX=0 ... (1) without the key index: the big lake's files are read directly
    LIVORA_BENCH_DEDUPE_EVENTS=5000 ... for a quicker look at (2) (default 20000)

The big lake's rows are written directly as Parquet (same schema, same 2 tenants x 30 days as the new
events, so every partition the run writes holds ~1/60 of them), then indexed as compact_lake leaves it
(LAKE/_keys); the run checks its new ids against every key of their tenants to keep (tenant_id, message_id)
unique. Target (rerun issue): the run into the big lake
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
from connectors.lake_keys import refresh_key_index
from connectors.synthetic import generate_events
from pipelines.ingest_batch import run
from schemas.lake import EVENTS_FILE_SCHEMA

LAKE_EVENTS = int(os.environ.get("LIVORA_BENCH_LAKE_EVENTS", "10000000"))
NEW_EVENTS = int(os.environ.get("LIVORA_BENCH_NEW_EVENTS", "100000"))
INDEXED = os.environ.get("LIVORA_BENCH_KEY_INDEX", "1") != "0"  # 0: no key index, every lake file read directly
TENANTS, START, DAYS = ("acme-in", "bloom-in"), dt.date(2026, 10, 1), 30
SALT = ["--pii-salt", "b" * 32]
GATE = (
    [f"--quality-gate={os.environ['LIVORA_BENCH_QUALITY_GATE']}"] if "LIVORA_BENCH_QUALITY_GATE" in os.environ else []
)


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
    if INDEXED:  # the lake as compact_lake leaves it: one key file per tenant (LAKE/_keys, docs/lake.md)
        started = time.monotonic()
        for tenant in TENANTS:
            refresh_key_index(str(big), tenant)
        print(f"key index of the big lake built in {time.monotonic() - started:.1f}s")

    figures = {}
    for name, lake in (("empty lake", tmp_path / "empty"), ("big lake", big), ("empty lake, again", tmp_path / "e2")):
        wall, cpu = time.monotonic(), cpu_seconds()
        summary = run(["--input", str(source), "--lake", str(lake), *SALT, *GATE])
        wall, cpu = time.monotonic() - wall, cpu_seconds() - cpu
        figures[name] = (wall, cpu, summary)
        print(
            f"{name:>18}: {wall:6.1f}s wall, {cpu:6.1f}s CPU, {NEW_EVENTS / wall:8.0f} events/s wall, "
            f"lake rows {summary.lake_rows}, lake duplicates {summary.lake_duplicates}"
        )
    empty_wall = min(figures["empty lake"][0], figures["empty lake, again"][0])
    empty_cpu = min(figures["empty lake"][1], figures["empty lake, again"][1])
    big_wall, big_cpu, big_summary = figures["big lake"]
    print(
        f"ratio big lake ({LAKE_EVENTS:,} events) / empty lake: {big_wall / empty_wall:.2f} by wall clock, {big_cpu / empty_cpu:.2f} by CPU "
        f"(target <= 2); load average {os.getloadavg()[0]:.1f}"
    )
    assert big_summary.lake_rows == figures["empty lake"][2].lake_rows  # no old id collides with a new one
    assert big_summary.events_in == big_summary.events_parsed


# --------------------------------------------------------------------------- (2) stream catch-up, dedupe store

DEDUPE_EVENTS = int(os.environ.get("LIVORA_BENCH_DEDUPE_EVENTS", "20000"))
POOL = 8  # threads for the emulator's ceilings (the dedupe store's own pool size)


def _rate(n: int, fn) -> float:
    started = time.perf_counter()
    fn()
    return n / (time.perf_counter() - started)


def _dynamodb_ceilings(aws, n: int) -> dict[str, float]:
    """The moto server's own rates for the dedupe store's calls, from POOL threads, same item shape."""
    from concurrent.futures import ThreadPoolExecutor

    from connectors.dedupe_store import create_dedupe_table

    dynamo = aws.client("dynamodb", max_pool_connections=POOL * 2)
    keys = [f"acme-in#{i:08d}-0000-4000-8000-000000000000" for i in range(n)]
    ref = "kinesis:bench/shardId-000000000003/49650000000000000000000000000000000000000000000000000001"
    for name in ("ceil-put", "ceil-batch"):
        create_dedupe_table(aws, name)

    def item(key):
        return {
            "dedupe_key": {"S": key},
            "source_ref": {"S": ref},
            "first_seen": {"N": "1.0"},
            "expires_at": {"N": "9999999999"},
        }

    def put(key):
        dynamo.put_item(
            TableName="ceil-put",
            Item=item(key),
            ConditionExpression="attribute_not_exists(dedupe_key) OR expires_at < :now",
            ExpressionAttributeValues={":now": {"N": "1"}},
        )

    def chunks(size):
        return [keys[i : i + size] for i in range(0, n, size)]

    def write(chunk):
        requests = [{"PutRequest": {"Item": item(k)}} for k in chunk]
        assert not dynamo.batch_write_item(RequestItems={"ceil-batch": requests}).get("UnprocessedItems")

    def get(table):
        def page(chunk):
            request = {table: {"Keys": [{"dedupe_key": {"S": k}} for k in chunk], "ConsistentRead": True}}
            return len(dynamo.batch_get_item(RequestItems=request)["Responses"][table])

        return page

    out = {}
    with ThreadPoolExecutor(POOL) as pool:
        out["BatchGetItem, unknown keys (100/call)"] = _rate(n, lambda: sum(pool.map(get("ceil-batch"), chunks(100))))
        out["conditional PutItem (1/call)"] = _rate(n, lambda: list(pool.map(put, keys)))
        out["BatchWriteItem (25/call)"] = _rate(n, lambda: list(pool.map(write, chunks(25))))
        out["BatchGetItem, known keys (100/call)"] = _rate(
            n, lambda: sum(pool.map(get("ceil-batch"), chunks(100))) == n or pytest.fail("keys missing")
        )
    return out


@pytest.mark.benchmark
def test_stream_catch_up_with_the_dedupe_store(aws, tmp_path):
    """A backlog of DEDUPE_EVENTS records on 4 shards caught up by ``stream_events`` (local incremental
    mode, all passes and their start-up included), then a second backlog of a quarter as many, half of
    them re-sends of the first (the dedupe store's known keys). Each configuration starts from fresh
    checkpoints, lake and tables; the two claim paths must give the same lake and the same counts."""
    import io

    from connectors.checkpoints import checkpoint_table_name, create_checkpoint_table
    from connectors.dedupe_store import create_dedupe_table
    from connectors.dynamodb import create_tables
    from infra.resources import StreamingResources, create_streaming_resources
    from pipelines import stream_events
    from pipelines.demo_stream import put_records

    first = list(generate_events(DEDUPE_EVENTS, seed=7))
    resent = first[::8][: DEDUPE_EVENTS // 8]  # re-sends: same message ids, new Kinesis records
    second = resent + list(generate_events(DEDUPE_EVENTS // 8, seed=8))
    res = create_streaming_resources(
        aws, StreamingResources(stream="catchup", shards=4, bucket=None, profiles_table=None, identity_table=None)
    )
    kinesis = aws.client("kinesis")
    put_records(kinesis, res.stream, first)
    ceilings = _dynamodb_ceilings(aws, DEDUPE_EVENTS)

    configs = {
        "lake only": ["--dedupe-table=none"],
        "+ dedupe, conditional claims": ["--dedupe-claims=conditional"],
        "+ dedupe, batched claims": ["--dedupe-claims=batched"],
        "every sink, batched claims": ["--dedupe-claims=batched", "profiles", "warehouse"],
        "every sink, conditional claims": ["--dedupe-claims=conditional", "profiles", "warehouse"],
    }
    runs: dict[str, dict] = {}
    for i, (label, extra) in enumerate(configs.items()):
        app = f"catchup-{i}"
        create_checkpoint_table(aws, checkpoint_table_name(app))
        args = [a for a in extra if a.startswith("--")]
        if "--dedupe-table=none" not in args:
            create_dedupe_table(aws, f"{app}-dedupe")
            args.append(f"--dedupe-table={app}-dedupe")
        if "profiles" in extra:
            create_tables(aws, f"{app}-profiles", f"{app}-identity")
            args += [f"--profiles-table={app}-profiles", f"--identity-table={app}-identity"]
        if "warehouse" in extra:
            args.append(f"--warehouse=duckdb:///{tmp_path}/{app}.duckdb")
        argv = [
            f"--stream={res.stream}",
            f"--lake={tmp_path / app}",
            f"--aws-endpoint-url={aws.endpoint_url}",
            f"--consumer-app={app}",
            "--buckets=2",
            "--min-call-interval=0.05",
            *args,
        ]
        runs[label] = {"argv": argv}
    # phase 1 for every configuration, then the re-sends, then phase 2 for every configuration
    for phase, records in (("backlog", first), ("re-sends", second)):
        if phase == "re-sends":
            put_records(kinesis, res.stream, second)
        for run_ in runs.values():
            wall, cpu = time.perf_counter(), cpu_seconds()
            summary = stream_events.run(run_["argv"], out=io.StringIO())
            wall, cpu = time.perf_counter() - wall, cpu_seconds() - cpu
            counts = {k: summary.total(k) for k in ("records_read", "lake_rows", "dead_letters", "duplicates")}
            assert counts["records_read"] == len(records)
            assert counts["lake_rows"] + counts["dead_letters"] + counts["duplicates"] == len(records)
            run_[phase] = (len(records) / wall, wall, cpu, len(summary.passes), counts)

    lines = [f"\n[stream catch-up] {DEDUPE_EVENTS:,} records on 4 shards, then {len(second):,} (half re-sends)"]
    lines.append(f"  {'configuration':<32} {'backlog':>24} {'re-sends':>24}")
    for label, run_ in runs.items():
        cells = [f"{r:>7,.0f} ev/s ({w:5.1f} s, {p} passes)" for r, w, _, p, _ in (run_["backlog"], run_["re-sends"])]
        lines.append(f"  {label:<32} {cells[0]:>24} {cells[1]:>24}")
    for slow, fast in (
        ("+ dedupe, conditional claims", "+ dedupe, batched claims"),
        ("every sink, conditional claims", "every sink, batched claims"),
    ):
        lines.append(
            f"  {fast} / {slow}: {runs[fast]['backlog'][0] / runs[slow]['backlog'][0]:.1f}x on the backlog, "
            f"{runs[fast]['re-sends'][0] / runs[slow]['re-sends'][0]:.1f}x on the re-sends"
        )
    lake = runs["lake only"]["backlog"][0]
    lines.append(
        f"  batched dedupe / lake only: {runs['+ dedupe, batched claims']['backlog'][0] / lake:.2f}x on the backlog"
    )
    lines.append(f"  moto server ceilings, same run, {DEDUPE_EVENTS:,} keys, {POOL} threads:")
    lines += [f"    {label:<40} {rate:>8,.0f} items/s" for label, rate in ceilings.items()]
    n = DEDUPE_EVENTS
    conditional_s = n / ceilings["BatchGetItem, unknown keys (100/call)"] + n / ceilings["conditional PutItem (1/call)"]
    batched_s = n / ceilings["BatchGetItem, unknown keys (100/call)"] + n / ceilings["BatchWriteItem (25/call)"]
    lines.append(
        f"  emulator time of the backlog's claims: conditional {conditional_s:.1f} s (caps the catch-up at "
        f"{n / conditional_s:,.0f} events/s), batched {batched_s:.1f} s ({n / batched_s:,.0f} events/s); "
        f"load average {os.getloadavg()[0]:.1f}"
    )
    print("\n".join(lines))
    # both claim paths decide alike: same lake rows, same duplicates, in both phases
    for phase in ("backlog", "re-sends"):
        for a, b in (
            ("+ dedupe, conditional claims", "+ dedupe, batched claims"),
            ("every sink, conditional claims", "every sink, batched claims"),
        ):
            assert runs[a][phase][4] == runs[b][phase][4], phase
    assert runs["+ dedupe, batched claims"]["re-sends"][4]["duplicates"] >= len(resent) * 0.9
