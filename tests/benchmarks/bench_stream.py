"""Benchmark: local Kinesis → lake, latency from put to visible and catch-up throughput.

    pytest tests/benchmarks/bench_stream.py -m benchmark -s
    LIVORA_BENCH_STREAM_EVENTS=20000 LIVORA_BENCH_STREAM_RATE=300 pytest ... for other sizes

(a) latency: a producer thread puts events at a steady rate for a while; the pipeline runs
    incremental passes back to back; a watcher polls the lake for new Parquet files and notes
    when each event's row first becomes visible. Prints p50/p95/max of (visible - put).
(b) throughput: a backlog on 4 shards, read in one catch-up run (lake only, then with the
    DynamoDB dedupe store); the baseline in the same run is the batch ingest of the same records
    from an NDJSON file (``pipelines.ingest_batch``). Prints events/s and the ratios.
Everything runs against the moto server over HTTP on this machine (2 cores), so the numbers
are about our overheads (pass start-up, per-call costs), not about AWS.
"""

from __future__ import annotations

import glob
import io
import os
import statistics
import threading
import time

import pyarrow.parquet as pq
import pytest

from connectors.checkpoints import checkpoint_table_name, create_checkpoint_table
from connectors.synthetic import generate_events
from infra.resources import StreamingResources, create_streaming_resources
from pipelines import stream_events
from pipelines.demo_stream import put_records

EVENTS = int(os.environ.get("LIVORA_BENCH_STREAM_EVENTS", "10000"))
RATE = float(os.environ.get("LIVORA_BENCH_STREAM_RATE", "200"))  # events/s in the latency run
DURATION = float(os.environ.get("LIVORA_BENCH_STREAM_SECONDS", "30"))


def _argv(aws, res, lake, *extra):
    return [
        f"--stream={res.stream}",
        f"--lake={lake}",
        f"--aws-endpoint-url={aws.endpoint_url}",
        f"--consumer-app={res.consumer_app}",
        "--buckets=2",
        "--min-call-interval=0.05",
        *extra,
    ]


class LakeWatcher(threading.Thread):
    """Polls the lake; records when each message id's row first becomes visible."""

    def __init__(self, lake: str):
        super().__init__(daemon=True)
        self.lake, self.seen, self.files = lake, {}, set()
        self.stop = threading.Event()

    def run(self):
        while not self.stop.is_set():
            now = time.time()
            for path in glob.glob(f"{self.lake}/events/**/*.parquet", recursive=True):
                if path in self.files:
                    continue
                self.files.add(path)
                try:
                    ids = pq.read_table(path, columns=["message_id"]).column("message_id").to_pylist()
                except OSError:
                    continue
                for mid in ids:
                    self.seen.setdefault(mid, now)
            time.sleep(0.05)


def _latency_run(aws, tmp_path, name: str, sinks: bool) -> None:
    res = create_streaming_resources(
        aws,
        StreamingResources(
            stream=name,
            shards=4,
            bucket=None,
            consumer_app=name,
            profiles_table=f"{name}-profiles" if sinks else None,
            identity_table=f"{name}-identity" if sinks else None,
        ),
    )
    lake = str(tmp_path / name)
    os.makedirs(lake)
    records = list(generate_events(int(RATE * DURATION), seed=5, bad_fraction=0.0, duplicate_fraction=0.0))
    put_at: dict[str, float] = {}
    kinesis = aws.client("kinesis")
    done = threading.Event()

    def produce():
        import json

        step = 50  # put in small batches at the target rate
        started = time.time()
        for i in range(0, len(records), step):
            chunk = records[i : i + step]
            now = time.time()
            put_records(kinesis, res.stream, chunk)
            for r in chunk:
                put_at[json.loads(r)["messageId"]] = now
            wait = started + (i + step) / RATE - time.time()
            if wait > 0:
                time.sleep(wait)
        done.set()

    extra = ["--once", "--dedupe-table=none"]
    if sinks:
        extra += [f"--profiles-table={res.profiles_table}", f"--identity-table={res.identity_table}"]
    watcher = LakeWatcher(lake)
    watcher.start()
    producer = threading.Thread(target=produce, daemon=True)
    producer.start()
    pass_ends: list[float] = []
    while True:
        summary = stream_events.run(_argv(aws, res, lake, *extra), out=io.StringIO())
        pass_ends.append(time.time())  # the pass's DynamoDB writes are done (they precede its commit)
        if done.is_set() and summary.total("records_read") == 0:
            break
    time.sleep(0.5)
    watcher.stop.set()
    watcher.join()
    lake_lat = sorted(watcher.seen[m] - t for m, t in put_at.items() if m in watcher.seen)
    assert len(lake_lat) == len(put_at), f"{len(put_at) - len(lake_lat)} events never became visible"
    q = statistics.quantiles(lake_lat, n=100)
    line = (
        f"\n[bench_stream latency{' +dynamodb' if sinks else ''}] {len(lake_lat)} events at {RATE:.0f}/s over "
        f"{DURATION:.0f}s, 4 shards, {len(pass_ends)} passes: put→lake p50 {q[49]:.2f}s  p95 {q[94]:.2f}s  "
        f"max {lake_lat[-1]:.2f}s"
    )
    if sinks:
        # an event's profile update is visible at the latest when the pass that wrote its lake row ends
        ends = sorted(pass_ends)
        dyn = sorted(next(e for e in ends if e >= watcher.seen[m]) - t for m, t in put_at.items())
        qd = statistics.quantiles(dyn, n=100)
        line += f"; put→DynamoDB (upper bound: end of pass) p50 {qd[49]:.2f}s  p95 {qd[94]:.2f}s"
    print(line)


@pytest.mark.benchmark
def test_stream_latency_put_to_visible(aws, tmp_path):
    _latency_run(aws, tmp_path, "lat-lake", sinks=False)


@pytest.mark.benchmark
def test_stream_latency_with_dynamodb_sinks(aws, tmp_path):
    _latency_run(aws, tmp_path, "lat-sinks", sinks=True)


@pytest.mark.benchmark
def test_stream_catch_up_throughput_vs_batch_ingest(aws, tmp_path):
    from pipelines.ingest_batch import run as ingest_batch

    records = list(generate_events(EVENTS, seed=6))
    res = create_streaming_resources(
        aws, StreamingResources(stream="bench", shards=4, bucket=None, profiles_table=None, identity_table=None)
    )
    started = time.perf_counter()
    put_records(aws.client("kinesis"), res.stream, records)
    put_s = time.perf_counter() - started

    path = tmp_path / "events.ndjson"
    path.write_bytes(b"".join(r.replace(b"\n", b" ") + b"\n" for r in records))
    started = time.perf_counter()
    batch = ingest_batch([f"--input={path}", f"--lake={tmp_path / 'lake_batch'}", "--buckets=2"])
    batch_s = time.perf_counter() - started
    assert batch.events_in == EVENTS

    started = time.perf_counter()
    plain = stream_events.run(_argv(aws, res, str(tmp_path / "lake_a"), "--dedupe-table=none"), out=io.StringIO())
    stream_s = time.perf_counter() - started
    assert plain.total("records_read") == EVENTS

    create_checkpoint_table(aws, checkpoint_table_name("bench-dedupe"))
    started = time.perf_counter()
    deduped = stream_events.run(
        _argv(aws, res, str(tmp_path / "lake_b"), "--consumer-app=bench-dedupe", f"--dedupe-table={res.dedupe_table}"),
        out=io.StringIO(),
    )
    dedupe_s = time.perf_counter() - started
    assert deduped.total("records_read") == EVENTS

    print(
        f"\n[bench_stream throughput] {EVENTS} events, 4 shards: PutRecords {EVENTS / put_s:,.0f}/s; "
        f"batch ingest (baseline) {EVENTS / batch_s:,.0f}/s; "
        f"stream catch-up, lake only {EVENTS / stream_s:,.0f}/s ({batch_s / stream_s:.2f}x baseline); "
        f"with DynamoDB dedupe {EVENTS / dedupe_s:,.0f}/s ({batch_s / dedupe_s:.2f}x baseline)"
    )


# --------------------------------------------------------------------------- sinks and the emulator's ceiling

SINK_EVENTS = int(os.environ.get("LIVORA_BENCH_SINK_EVENTS", "20000"))
POOL = 8  # threads for the raw-call ceilings (the sinks' own pools are of this size)


def _rate(n: int, fn) -> float:
    started = time.perf_counter()
    fn()
    return n / (time.perf_counter() - started)


def _moto_ceilings(aws, stream: str, n: int) -> dict[str, float]:
    """The emulator's own rates for the calls the sinks make, from a pool of POOL threads (same run)."""
    from concurrent.futures import ThreadPoolExecutor

    from connectors.dedupe_store import create_dedupe_table
    from connectors.kinesis import list_shards

    kinesis = aws.client("kinesis", max_pool_connections=POOL * 2)
    dynamo = aws.client("dynamodb", max_pool_connections=POOL * 2)
    out: dict[str, float] = {}

    def read_all():  # one iterator per shard, 10,000 records a call, shards in parallel
        def shard(shard_id):
            it = kinesis.get_shard_iterator(StreamName=stream, ShardId=shard_id, ShardIteratorType="TRIM_HORIZON")
            it, got = it["ShardIterator"], 0
            while it:
                resp = kinesis.get_records(ShardIterator=it, Limit=10_000)
                got += len(resp["Records"])
                if resp.get("MillisBehindLatest", 0) == 0 and not resp["Records"]:
                    break
                it = resp.get("NextShardIterator")
            return got

        with ThreadPoolExecutor(POOL) as pool:
            assert sum(pool.map(shard, [s.shard_id for s in list_shards(kinesis, stream)])) == n

    out["GetRecords (10,000/call, shards in parallel)"] = _rate(n, read_all)

    keys = [f"t#{i:08d}" for i in range(n)]
    for name in ("ceil-put", "ceil-batch"):
        create_dedupe_table(aws, name)

    def put(key):
        dynamo.put_item(
            TableName="ceil-put",
            Item={"dedupe_key": {"S": key}, "source_ref": {"S": "r"}, "expires_at": {"N": "9999999999"}},
            ConditionExpression="attribute_not_exists(dedupe_key) OR expires_at < :now",
            ExpressionAttributeValues={":now": {"N": "1"}},
        )

    def chunks(size):
        return [keys[i : i + size] for i in range(0, n, size)]

    def write(chunk):
        items = [{"PutRequest": {"Item": {"dedupe_key": {"S": k}, "source_ref": {"S": "r"}}}} for k in chunk]
        assert not dynamo.batch_write_item(RequestItems={"ceil-batch": items}).get("UnprocessedItems")

    def get(chunk):
        request = {"ceil-put": {"Keys": [{"dedupe_key": {"S": k}} for k in chunk], "ConsistentRead": True}}
        return len(dynamo.batch_get_item(RequestItems=request)["Responses"]["ceil-put"])

    with ThreadPoolExecutor(POOL) as pool:
        out[f"conditional PutItem ({POOL} threads)"] = _rate(n, lambda: list(pool.map(put, keys)))
        out[f"BatchWriteItem (25/call, {POOL} threads)"] = _rate(n, lambda: list(pool.map(write, chunks(25))))
        out[f"BatchGetItem (100 keys/call, {POOL} threads)"] = _rate(
            n, lambda: sum(pool.map(get, chunks(100))) == n or pytest.fail("keys missing")
        )
    return out


@pytest.mark.benchmark
def test_stream_catch_up_throughput_per_sink(aws, tmp_path):
    """One backlog of SINK_EVENTS records on 4 shards, caught up four times, each run adding a sink
    (fresh checkpoints and tables each time); the emulator's ceilings for the same calls first."""
    records = list(generate_events(SINK_EVENTS, seed=7))
    res = create_streaming_resources(
        aws, StreamingResources(stream="sinks", shards=4, bucket=None, profiles_table=None, identity_table=None)
    )
    put_rate = _rate(SINK_EVENTS, lambda: put_records(aws.client("kinesis"), res.stream, records))
    ceilings = {"PutRecords (500/call, one thread)": put_rate, **_moto_ceilings(aws, res.stream, SINK_EVENTS)}

    from connectors.dedupe_store import create_dedupe_table
    from connectors.dynamodb import create_tables

    stages = [("lake only", [])]
    create_dedupe_table(aws, "sinks-dedupe")
    stages.append(("+ dedupe store", ["--dedupe-table=sinks-dedupe"]))
    create_dedupe_table(aws, "sinks-dedupe2")
    create_tables(aws, "sinks-profiles", "sinks-identity")
    dyn = ["--profiles-table=sinks-profiles", "--identity-table=sinks-identity"]
    stages.append(("+ DynamoDB profiles/identity", ["--dedupe-table=sinks-dedupe2", *dyn]))
    create_dedupe_table(aws, "sinks-dedupe3")
    create_tables(aws, "sinks-profiles3", "sinks-identity3")
    warehouse = f"--warehouse=duckdb:///{tmp_path}/wh.duckdb"
    dyn3 = ["--profiles-table=sinks-profiles3", "--identity-table=sinks-identity3"]
    stages.append(("+ warehouse (DuckDB)", ["--dedupe-table=sinks-dedupe3", *dyn3, warehouse]))

    rates = {}
    for i, (label, extra) in enumerate(stages):
        app = f"sinks-{i}"
        create_checkpoint_table(aws, checkpoint_table_name(app))
        extra = extra if extra and extra[0].startswith("--dedupe") else ["--dedupe-table=none", *extra]
        started = time.perf_counter()
        summary = stream_events.run(
            _argv(aws, res, str(tmp_path / f"lake{i}"), f"--consumer-app={app}", *extra), out=io.StringIO()
        )
        seconds = time.perf_counter() - started
        assert summary.total("records_read") == SINK_EVENTS
        assert summary.total("lake_rows") + summary.total("dead_letters") + summary.total("duplicates") >= SINK_EVENTS
        rates[label] = (SINK_EVENTS / seconds, seconds, len(summary.passes))

    lines = [f"\n[bench_stream sinks] {SINK_EVENTS} events, 4 shards, catch-up (all passes, start-up included):"]
    lines += [f"  {label:<32} {r:>7,.0f} events/s  ({s:.1f} s, {p} passes)" for label, (r, s, p) in rates.items()]
    lines.append(f"  moto server ceilings, same run, same {SINK_EVENTS} keys/records:")
    lines += [f"  {label:<44} {r:>7,.0f} /s" for label, r in ceilings.items()]
    # what the emulator alone costs per new message id, from the ceilings above: the dedupe store reads the
    # batch's keys (BatchGetItem) and claims each new one with a conditional PutItem
    get = ceilings[f"BatchGetItem (100 keys/call, {POOL} threads)"]
    put = ceilings[f"conditional PutItem ({POOL} threads)"]
    batch_write = ceilings[f"BatchWriteItem (25/call, {POOL} threads)"]
    lake_s = rates["lake only"][1]
    claims_s = SINK_EVENTS / get + SINK_EVENTS / put
    blind_s = SINK_EVENTS / get + SINK_EVENTS / batch_write
    lines.append(
        f"  emulator time of the dedupe claims: {claims_s:.1f} s (the '+ dedupe store' run took "
        f"{rates['+ dedupe store'][1]:.1f} s, lake only {lake_s:.1f} s); best case with unconditional "
        f"BatchWriteItem claims instead: lake + {blind_s:.1f} s = {SINK_EVENTS / (lake_s + blind_s):,.0f} events/s"
    )
    print("\n".join(lines))


# --------------------------------------------------------------------------- Prism (--streaming)
# Kept apart from the incremental-mode benchmarks above: one streaming job on Prism, a backlog first
# (sustained throughput), then steady traffic (put → visible in the lake).

PRISM_BACKLOG = int(os.environ.get("LIVORA_BENCH_PRISM_BACKLOG", "4000"))
PRISM_RATE = float(os.environ.get("LIVORA_BENCH_PRISM_RATE", "100"))
PRISM_SECONDS = float(os.environ.get("LIVORA_BENCH_PRISM_SECONDS", "20"))
PRISM_WINDOW = int(os.environ.get("LIVORA_BENCH_PRISM_WINDOW", "2"))


@pytest.mark.benchmark
def test_stream_prism_throughput_and_latency(aws, tmp_path):
    import json
    import subprocess
    import sys

    from infra.runners import pipeline_args, prism_path

    if not prism_path().is_file():
        pytest.skip(f"Prism binary missing at {prism_path()}: run `make runners`")
    name = "prism"
    res = create_streaming_resources(
        aws,
        StreamingResources(
            stream=name, shards=2, bucket=None, consumer_app=name, profiles_table=None, identity_table=None
        ),
    )
    lake = str(tmp_path / name)
    os.makedirs(lake)
    kinesis = aws.client("kinesis")
    backlog = list(generate_events(PRISM_BACKLOG, seed=7, bad_fraction=0.0, duplicate_fraction=0.0))
    steady = list(generate_events(int(PRISM_RATE * PRISM_SECONDS), seed=8, bad_fraction=0.0, duplicate_fraction=0.0))
    put_records(kinesis, res.stream, backlog)
    backlog_ids = {json.loads(r)["messageId"] for r in backlog}
    run_seconds = 40 + PRISM_SECONDS
    cmd = [sys.executable, "-m", "pipelines.stream_events", "--streaming", *pipeline_args("prism")]
    cmd += _argv(aws, res, lake, "--dedupe-table=none", f"--window-seconds={PRISM_WINDOW}")
    cmd += [f"--max-run-seconds={run_seconds}", "--discover-seconds=5"]
    watcher = LakeWatcher(lake)
    watcher.start()
    started = time.time()
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    proc = subprocess.Popen(cmd, cwd=root, env={**os.environ, "PYTHONPATH": root}, stdout=subprocess.DEVNULL)
    try:
        while not backlog_ids <= watcher.seen.keys():
            assert proc.poll() is None and time.time() - started < run_seconds, "backlog not all visible"
            time.sleep(0.1)
        backlog_times = sorted(watcher.seen[m] for m in backlog_ids)
        put_at: dict[str, float] = {}
        step, t0 = max(1, int(PRISM_RATE / 10)), time.time()
        for i in range(0, len(steady), step):
            chunk, now = steady[i : i + step], time.time()
            put_records(kinesis, res.stream, chunk)
            for r in chunk:
                put_at[json.loads(r)["messageId"]] = now
            wait = t0 + (i + step) / PRISM_RATE - time.time()
            if wait > 0:
                time.sleep(wait)
        deadline = time.time() + 30
        while not put_at.keys() <= watcher.seen.keys() and time.time() < deadline:
            time.sleep(0.1)
    finally:
        watcher.stop.set()
        watcher.join()
        proc.wait(timeout=run_seconds + 120)
    lat = sorted(watcher.seen[m] - t for m, t in put_at.items() if m in watcher.seen)
    assert len(lat) == len(put_at), f"{len(put_at) - len(lat)} events never became visible"
    q = statistics.quantiles(lat, n=100)
    first_file = backlog_times[0] - started
    rate = len(backlog_ids) / max(backlog_times[-1] - backlog_times[0], 1e-9)
    print(
        f"\n[bench_stream prism] backlog {len(backlog_ids)} events on 2 shards: first lake rows {first_file:.1f}s after "
        f"start (job start-up included), all in {backlog_times[-1] - started:.1f}s, sustained {rate:.0f} events/s "
        f"(first to last visible); steady {PRISM_RATE:.0f}/s for {PRISM_SECONDS:.0f}s, {PRISM_WINDOW}s windows: "
        f"put→lake p50 {q[49]:.2f}s  p95 {q[94]:.2f}s  max {lat[-1]:.2f}s"
    )
