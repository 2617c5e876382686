"""Benchmark: local Kinesis → lake, latency from put to visible and catch-up throughput.

    pytest tests/benchmarks/bench_stream.py -m benchmark -s
    LIVORA_BENCH_STREAM_EVENTS=20000 LIVORA_BENCH_STREAM_RATE=300 pytest ... for other sizes

(a) latency: a producer thread puts events at a steady rate for a while; the pipeline runs
    incremental passes back to back; a watcher polls the lake for new Parquet files and notes
    when each event's row first becomes visible. Prints p50/p95/max of (visible - put).
(b) throughput: a backlog on 4 shards, read in one catch-up run (lake only, then with the
    DynamoDB dedupe store); the baseline in the same run is the batch ingest of the same records
    from an NDJSON file (``pipelines.ingest_batch``). Prints events/s and the ratios.
(c) Prism (``--streaming``): a backlog then steady traffic, lake only; and sustained load with every sink
    but the dedupe store (``-k sustained``: 2,000 events/s for 180 s by default, put→visible per event,
    steady throughput, accounting, moto's ceilings and its Kinesis cost against the stream's size).
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


def _moto_ceilings(aws, stream: str, n: int, keys_n: int | None = None) -> dict[str, float]:
    """The emulator's own rates for the calls the sinks make, from a pool of POOL threads (same run).

    ``n`` records are on ``stream``; ``keys_n`` (default ``n``) keys go through the DynamoDB calls."""
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

    n = keys_n or n
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


# --------------------------------------------------------------------------- Prism, sustained load (issue 11)
# One streaming job on Prism with every sink but the dedupe store (lake, DynamoDB profiles + identity graph,
# DuckDB warehouse) while a producer puts at a fixed rate for SUSTAIN_SECONDS; put → visible latency per event,
# events landed per second over the steady part, the accounting, and the moto server's own ceilings and CPU
# in the same run (it is one Python process: when it is the limit, its CPU share shows it).
#   LIVORA_BENCH_SUSTAIN_RATE (default 2000/s), LIVORA_BENCH_SUSTAIN_SECONDS (default 180; 30 with
#   LIVORA_BENCH_SHORT=1), LIVORA_BENCH_SUSTAIN_WINDOW (default 10 s), LIVORA_BENCH_SUSTAIN_SHARDS (default 4).

SUSTAIN_RATE = float(os.environ.get("LIVORA_BENCH_SUSTAIN_RATE", "2000"))
SUSTAIN_SECONDS = float(
    os.environ.get("LIVORA_BENCH_SUSTAIN_SECONDS", "30" if os.environ.get("LIVORA_BENCH_SHORT") else "180")
)
SUSTAIN_WINDOW = int(os.environ.get("LIVORA_BENCH_SUSTAIN_WINDOW", "10"))
SUSTAIN_SHARDS = int(os.environ.get("LIVORA_BENCH_SUSTAIN_SHARDS", "4"))
SUSTAIN_TAIL = float(os.environ.get("LIVORA_BENCH_SUSTAIN_TAIL", "30"))  # job reads this long after the last put


class PacedProducer(threading.Thread):
    """Puts ``records`` at ``rate``/s, one PutRecords call of ``rate * tick`` records every ``tick`` s.

    The put time of a message id is the moment its call was *sent* (so its latency includes the call).
    It stops after ``seconds``: when the calls take longer than their ticks it falls behind, puts fewer
    records than planned and says so (``achieved``, ``sent``)."""

    def __init__(self, client, stream: str, records: list[bytes], ids: list[str | None], rate: float, seconds: float):
        super().__init__(daemon=True)
        self.client, self.stream, self.records, self.ids, self.rate = client, stream, records, ids, rate
        self.seconds, tick = seconds, 0.25
        self.per_call = max(1, min(500, round(rate * tick)))
        self.put_at: dict[str, float] = {}
        self.calls: list[tuple[float, float, int]] = []  # (sent, acknowledged, records)
        self.started = self.finished = 0.0
        self.sent = 0

    def run(self):
        self.started = time.time()
        for i in range(0, len(self.records), self.per_call):
            if time.time() >= self.started + self.seconds:
                break
            wait = self.started + i / self.rate - time.time()
            if wait > 0:
                time.sleep(wait)
            sent = time.time()
            put_records(self.client, self.stream, self.records[i : i + self.per_call])
            self.calls.append((sent, time.time(), len(self.records[i : i + self.per_call])))
            self.sent = i + len(self.records[i : i + self.per_call])
            for mid in self.ids[i : i + self.per_call]:
                if mid is not None:
                    self.put_at.setdefault(mid, sent)  # a re-send keeps its first put
        self.finished = time.time()

    @property
    def achieved(self) -> float:
        return self.sent / max(self.finished - self.started, 1e-9)


class FileWatcher(threading.Thread):
    """Notes when each lake file is first seen, and its inode change time (cheap: a walk and a stat).

    A lake file is written to a temp name, fsync'd and renamed (``connectors.paths.write_bytes_atomically``);
    the rename sets the inode's ctime (ext4), so ctime is the moment the file became visible under its
    name. The poll time (every 0.2 s) is an upper bound kept as a check of it."""

    def __init__(self, root: str):
        super().__init__(daemon=True)
        self.root, self.files = root, {}
        self.stop = threading.Event()

    def scan(self):
        now = time.time()
        for directory, _, names in os.walk(self.root):
            for name in names:
                path = os.path.join(directory, name)
                if name.startswith("part-w") and name.endswith(".parquet") and path not in self.files:
                    self.files[path] = (now, os.stat(path).st_ctime)

    def run(self):
        while not self.stop.is_set():
            self.scan()
            time.sleep(0.2)


class CpuSampler(threading.Thread):
    """Samples CPU seconds (utime + stime) and RSS of the named processes every second from /proc."""

    def __init__(self, pids: dict[str, int]):
        super().__init__(daemon=True)
        self.pids, self.samples = pids, []  # (time, {name: cpu s}, {name: rss MiB})
        self.stop = threading.Event()

    @staticmethod
    def read(pid: int) -> tuple[float, float]:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{pid}/statm") as f:
                rss = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
        except OSError:
            return float("nan"), float("nan")
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK"), rss

    def run(self):
        while not self.stop.is_set():
            now, cpu, rss = time.time(), {}, {}
            for name, pid in list(self.pids.items()):
                cpu[name], rss[name] = self.read(pid)
            self.samples.append((now, cpu, rss))
            time.sleep(1.0)

    def share(self, name: str, t0: float, t1: float) -> float:
        """CPU seconds per second (1.0 = one core) of ``name`` between the samples nearest t0 and t1."""
        inside = [s for s in self.samples if t0 <= s[0] <= t1 and name in s[1]]
        if len(inside) < 2:
            return float("nan")
        (a, ca, _), (b, cb, _) = inside[0], inside[-1]
        return (cb[name] - ca[name]) / (b - a)

    def peak_rss(self, name: str) -> float:
        return max((s[2].get(name, 0.0) for s in self.samples), default=0.0)


def _pid_of(marker: list[str]) -> int | None:
    """The process whose command line holds every string of ``marker`` (the moto server of this session)."""
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    args = f.read().decode(errors="replace").split("\0")
            except OSError:
                continue
            if all(m in args for m in marker):
                return int(entry)
    return None


def _children(pid: int) -> list[int]:
    out = []
    for task in glob.glob(f"/proc/{pid}/task/*/children"):
        with open(task) as f:
            out += [int(c) for c in f.read().split()]
    return out + [g for c in out for g in _children(c)]


def _left_in_stream(aws, stream: str, checkpoints: dict) -> list[bytes]:
    """The records after each shard's committed checkpoint: not read by the run, left for the next one."""
    from connectors.kinesis import list_shards

    client = aws.client("kinesis")
    left = []
    for shard in list_shards(client, stream):
        done = checkpoints.get(shard.shard_id)
        start = {"ShardIteratorType": "TRIM_HORIZON"}
        if done is not None:
            start = {"ShardIteratorType": "AFTER_SEQUENCE_NUMBER", "StartingSequenceNumber": done.sequence}
        it = client.get_shard_iterator(StreamName=stream, ShardId=shard.shard_id, **start)["ShardIterator"]
        while it:
            resp = client.get_records(ShardIterator=it, Limit=10_000)
            left += [r["Data"] for r in resp["Records"]]
            if not resp["Records"] and resp.get("MillisBehindLatest", 0) == 0:
                break
            it = resp.get("NextShardIterator")
    return left


def _moto_kinesis_at_size(aws, stream: str, seed: int) -> tuple[int, float, float]:
    """(records on the stream, PutRecords records/s for 2,000 more, ms per caught-up GetRecords).

    moto's Kinesis stores a shard's records in a dict and copies its keys to find the last sequence
    number for every record put, and scans the shard from its first record for every GetRecords: both
    costs grow with the stream. Measured on the stream itself, with nothing else calling moto."""
    from connectors.kinesis import list_shards

    client = aws.client("kinesis")
    shards = list_shards(client, stream)
    size = 0
    for shard in shards:
        it = client.get_shard_iterator(StreamName=stream, ShardId=shard.shard_id, ShardIteratorType="TRIM_HORIZON")
        it = it["ShardIterator"]
        while it:
            resp = client.get_records(ShardIterator=it, Limit=10_000)
            size += len(resp["Records"])
            if not resp["Records"]:
                break
            it = resp.get("NextShardIterator")
    extra = list(generate_events(2_000, seed=seed, bad_fraction=0.0, duplicate_fraction=0.0))
    put_rate = _rate(len(extra), lambda: put_records(client, stream, extra))
    latest = [
        client.get_shard_iterator(StreamName=stream, ShardId=s.shard_id, ShardIteratorType="LATEST")["ShardIterator"]
        for s in shards
    ]
    started, calls = time.perf_counter(), 0
    for _ in range(5):
        for it in latest:
            client.get_records(ShardIterator=it, Limit=10_000)
            calls += 1
    return size, put_rate, (time.perf_counter() - started) / calls * 1000


def _quantiles(values: list[float]) -> tuple[float, float, float]:
    q = statistics.quantiles(values, n=100) if len(values) > 1 else values * 99
    return q[49], q[94], max(values)


@pytest.mark.benchmark
@pytest.mark.timeout(SUSTAIN_SECONDS + SUSTAIN_TAIL + 900)
def test_stream_prism_sustained_load_every_sink(aws, tmp_path):
    import json
    import subprocess
    import sys
    from urllib.parse import urlparse

    import duckdb

    from infra.runners import pipeline_args, prism_path

    if not prism_path().is_file():
        pytest.skip(f"Prism binary missing at {prism_path()}: run `make runners`")
    load_before = os.getloadavg()

    # the moto server's own ceilings, same run, before the job (an idle server: its best case)
    ceil = create_streaming_resources(
        aws,
        StreamingResources(
            stream="ceil",
            shards=SUSTAIN_SHARDS,
            bucket=None,
            consumer_app="ceil",
            profiles_table=None,
            identity_table=None,
        ),
    )
    ceil_records = list(generate_events(20_000, seed=9, bad_fraction=0.0, duplicate_fraction=0.0))
    ceilings = {
        "PutRecords (500/call, one thread)": _rate(
            20_000, lambda: put_records(aws.client("kinesis"), ceil.stream, ceil_records)
        )
    }
    ceilings.update(_moto_ceilings(aws, ceil.stream, 20_000, keys_n=4_000))
    at_size = [_moto_kinesis_at_size(aws, ceil.stream, seed=12)]

    name = "sustain"
    res = create_streaming_resources(
        aws, StreamingResources(stream=name, shards=SUSTAIN_SHARDS, bucket=None, consumer_app=name)
    )
    lake, warehouse = str(tmp_path / "lake"), f"duckdb:///{tmp_path}/wh.duckdb"
    os.makedirs(lake)
    n = int(SUSTAIN_RATE * SUSTAIN_SECONDS)
    warmup = list(generate_events(200, seed=10, bad_fraction=0.0, duplicate_fraction=0.0))
    records = list(generate_events(n, seed=11, bad_fraction=0.01, duplicate_fraction=0.01))

    def message_id(record: bytes) -> str | None:
        try:
            return json.loads(record)["messageId"]
        except (ValueError, KeyError, TypeError):
            return None

    ids = [message_id(r) for r in records]
    kinesis = aws.client("kinesis")
    put_records(kinesis, res.stream, warmup)  # the job is reading once these are visible

    run_seconds = 60 + SUSTAIN_SECONDS + SUSTAIN_TAIL
    cmd = [sys.executable, "-m", "pipelines.stream_events", "--streaming", *pipeline_args("prism")]
    cmd += [
        f"--stream={res.stream}",
        f"--lake={lake}",
        f"--aws-endpoint-url={aws.endpoint_url}",
        f"--consumer-app={res.consumer_app}",
        "--dedupe-table=none",
        f"--profiles-table={res.profiles_table}",
        f"--identity-table={res.identity_table}",
        f"--warehouse={warehouse}",
        f"--window-seconds={SUSTAIN_WINDOW}",
        "--discover-seconds=30",
        f"--max-run-seconds={run_seconds}",
    ]
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    log = open(tmp_path / "job.out", "w")  # noqa: SIM115 - closed below
    launched = time.time()
    proc = subprocess.Popen(cmd, cwd=root, env={**os.environ, "PYTHONPATH": root}, stdout=log, stderr=subprocess.STDOUT)
    watcher = FileWatcher(f"{lake}/events")
    watcher.start()
    warm = {message_id(r) for r in warmup}
    sampler = None
    try:
        while not watcher.files:
            assert proc.poll() is None and time.time() - launched < 60, (tmp_path / "job.out").read_text()[-3000:]
            time.sleep(0.2)
        first_file = time.time() - launched
        port = str(urlparse(aws.endpoint_url).port)
        pids = {"moto server": _pid_of(["moto.server", port]), "driver + SDK worker": proc.pid}
        for child in _children(proc.pid):
            with open(f"/proc/{child}/cmdline", "rb") as f:
                if b"prism" in f.read():
                    pids["prism"] = child
        pids["bench (producer)"] = os.getpid()
        sampler = CpuSampler({k: v for k, v in pids.items() if v})
        sampler.start()
        producer = PacedProducer(kinesis, res.stream, records, ids, SUSTAIN_RATE, SUSTAIN_SECONDS)
        producer.start()
        producer.join()
        load_during = os.getloadavg()
        assert time.time() < launched + run_seconds - 10, "the producer ended after the job's drain"
        rc = proc.wait(timeout=run_seconds + 2 * SUSTAIN_WINDOW + 120)
    finally:
        if proc.poll() is None:
            proc.kill()
        watcher.stop.set()
        watcher.join()
        if sampler is not None:
            sampler.stop.set()
        log.close()
    assert rc == 0, (tmp_path / "job.out").read_text()[-3000:]
    watcher.scan()  # files renamed after the last poll

    # visible time per message id: the ctime of the first file holding it (see FileWatcher)
    visible: dict[str, float] = {}
    lake_rows, poll_lag = 0, []
    for path, (seen, ctime) in watcher.files.items():
        poll_lag.append(seen - ctime)
        mids = pq.read_table(path, columns=["message_id"], use_threads=False).column("message_id").to_pylist()
        lake_rows += len(mids)
        for mid in mids:
            visible[mid] = min(visible.get(mid, ctime), ctime)
    dead = 0
    for path in glob.glob(f"{lake}/dead_letters/*.jsonl"):
        with open(path) as f:
            dead += sum(1 for _ in f)
    with duckdb.connect(warehouse.removeprefix("duckdb:///"), read_only=True) as con:
        warehouse_rows, warehouse_keys = con.execute(
            "select count(*), count(distinct (tenant_id, message_id)) from events"
        ).fetchone()
    profiles = aws.client("dynamodb").scan(TableName=res.profiles_table, Select="COUNT")["Count"]

    # accounting over what the run read: records read = put - left after the committed checkpoints
    from collections import Counter

    from connectors.checkpoints import CheckpointStore

    left = _left_in_stream(aws, res.stream, CheckpointStore(aws, res.checkpoint_table).load(res.stream))
    read = Counter(warmup) + Counter(records[: producer.sent])
    read.subtract(Counter(left))
    read_total, distinct_read = sum(read.values()), sum(1 for c in read.values() if c > 0)
    duplicates = read_total - distinct_read  # the generator's duplicates are byte-identical re-sends
    lake_keys = len(visible)
    doubled = lake_rows - lake_keys
    balance = lake_keys + dead + duplicates - read_total  # 0: every record read is in exactly one place

    at_size.append(_moto_kinesis_at_size(aws, res.stream, seed=13))  # after the accounting: it puts records
    lat = sorted(visible[m] - t for m, t in producer.put_at.items() if m in visible and m not in warm)
    p50, p95, worst = _quantiles(lat) if lat else (float("nan"),) * 3
    # steady part: from one window after the producer's start to its end (start-up and the drain left out)
    t0, t1 = producer.started + SUSTAIN_WINDOW, producer.finished
    landed = sum(1 for m, t in visible.items() if t0 <= t < t1 and m not in warm)
    sustained = landed / max(t1 - t0, 1e-9)
    last_visible = max(visible.values())
    call_s = sorted(b - a for a, b, _ in producer.calls)

    lines = [
        f"\n[bench_stream prism sustained] {SUSTAIN_SHARDS} shards, {SUSTAIN_WINDOW}s windows, target "
        f"{SUSTAIN_RATE:,.0f} events/s for {SUSTAIN_SECONDS:.0f}s; sinks: lake + DynamoDB profiles/identity + "
        f"DuckDB warehouse (no dedupe store); load average before {load_before[0]:.1f}, at the end of the "
        f"producer {load_during[0]:.1f}/{load_during[1]:.1f}/{load_during[2]:.1f} (1/5/15 min), 2 cores",
        f"  job start-up: first lake file {first_file:.1f}s after launching the driver",
        f"  producer: {producer.sent:,} of {len(records):,} planned records in {producer.finished - producer.started:.1f}s = "
        f"{producer.achieved:,.0f}/s ({producer.achieved / SUSTAIN_RATE:.2f}x target); PutRecords call "
        f"p50 {call_s[len(call_s) // 2] * 1000:.0f} ms, max {call_s[-1] * 1000:.0f} ms",
        f"  landed in the lake over the steady part ({t1 - t0:.0f}s): {sustained:,.0f} events/s "
        f"({sustained / SUSTAIN_RATE:.2f}x target, {sustained / producer.achieved:.2f}x the put rate)",
        f"  last row visible {last_visible - producer.finished:.1f}s after the last put",
        f"  put → visible in the lake: p50 {p50:.2f}s  p95 {p95:.2f}s  max {worst:.2f}s "
        f"over the {len(lat):,} of {len(producer.put_at):,} put ids that became visible "
        f"(target p95 <= {SUSTAIN_WINDOW + 5}s: {p95 / (SUSTAIN_WINDOW + 5):.2f}x); "
        f"watcher poll - ctime p95 {_quantiles(poll_lag)[1]:.2f}s",
    ]
    # latency over time: a growing p95 means the job falls behind
    step = max(SUSTAIN_SECONDS / 6, SUSTAIN_WINDOW)
    for k in range(int(SUSTAIN_SECONDS // step) + 1):
        a = producer.started + k * step
        part = sorted(visible[m] - t for m, t in producer.put_at.items() if a <= t < a + step and m in visible)
        if part:
            calls = [(b - s_) for s_, b, _ in producer.calls if a <= s_ < a + step]
            put_n = sum(c for s_, _, c in producer.calls if a <= s_ < a + step)
            lines.append(
                f"    put at +{k * step:>4.0f}..{(k + 1) * step:.0f}s: {put_n:>7,} put ({put_n / step:,.0f}/s, "
                f"PutRecords call p50 {sorted(calls)[len(calls) // 2] * 1000:.0f} ms), put→lake p50 "
                f"{_quantiles(part)[0]:.2f}s p95 {_quantiles(part)[1]:.2f}s"
            )
    lines += [
        f"  accounting: put {len(warmup) + producer.sent:,}; left in the stream after the committed checkpoints "
        f"{len(left):,}; read {read_total:,} = lake {lake_keys:,} distinct keys + dead letters {dead:,} + "
        f"duplicates {duplicates:,} → balance {balance:+,}; rows doubled in the lake {doubled:,} (a re-send in "
        f"a later window: no dedupe store in this run)",
        f"  warehouse rows {warehouse_rows:,} ({warehouse_keys:,} distinct keys); DynamoDB profiles {profiles:,}",
        "  CPU over the steady part (1.0 = one core of 2), peak RSS:",
    ]
    for label in sampler.pids:
        lines.append(f"    {label:<22} {sampler.share(label, t0, t1):.2f}  {sampler.peak_rss(label):,.0f} MiB")
    lines.append("  moto server ceilings, same run, idle server (records or keys per second):")
    lines += [f"    {label:<46} {r:>8,.0f}/s  ({r / SUSTAIN_RATE:.2f}x target)" for label, r in ceilings.items()]
    lines.append("  moto Kinesis against the stream's size (nothing else calling moto):")
    lines += [
        f"    {size:>8,} records on {SUSTAIN_SHARDS} shards: PutRecords {rate:,.0f}/s "
        f"({rate / SUSTAIN_RATE:.2f}x target), a caught-up GetRecords {ms:.1f} ms"
        for size, rate, ms in at_size
    ]
    report = "\n".join(lines)
    print(report)
    out = os.environ.get("LIVORA_BENCH_REPORT")
    if out:
        with open(out, "w") as f:
            f.write(report + "\n")
    assert balance == 0, "events lost or doubled: see the accounting line"
