"""Streaming ingest end to end through the moto server over HTTP: accounting, crash/restart, resharding."""

from __future__ import annotations

import collections
import io
import json
import os
import signal
import subprocess
import sys
import time

import duckdb
import pytest

from connectors.checkpoints import CheckpointStore, CommitCheckpoints
from connectors.lake import read_dead_letters, read_events
from connectors.synthetic import generate_events
from infra.resources import StreamingResources, create_streaming_resources
from pipelines import stream_events
from pipelines.demo_stream import put_records
from tests.connectors.kinesis_helpers import faithful_kinesis_server, split_first_shard
from tests.run_records import read_run_records
from tests.stream_runs import stream_argv

pytestmark = [pytest.mark.integration, pytest.mark.slow]
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _resources(aws, shards: int = 3, sinks: bool = True) -> StreamingResources:
    res = StreamingResources(stream="events", shards=shards, bucket=None)
    if not sinks:
        res.profiles_table = res.identity_table = None
    return create_streaming_resources(aws, res)


def _argv(aws, res: StreamingResources, lake: str, warehouse: str | None = None, *extra: str) -> list[str]:
    argv = stream_argv(aws, res, lake)
    if warehouse:
        argv.append(f"--warehouse={warehouse}")
    if res.profiles_table:
        argv += [f"--profiles-table={res.profiles_table}", f"--identity-table={res.identity_table}"]
    return argv + list(extra)


def _lake_keys(lake: str) -> list[tuple[str, str]]:
    table = read_events(lake, columns=["tenant_id", "message_id"])
    return list(zip(table.column("tenant_id").to_pylist(), table.column("message_id").to_pylist(), strict=True))


def _warehouse_keys(url: str) -> list[tuple[str, str]]:
    with duckdb.connect(url.removeprefix("duckdb:///"), read_only=True) as con:
        return con.execute("select tenant_id, message_id from events").fetchall()


def _key_of(record: bytes) -> tuple[str, str] | None:
    try:
        event = json.loads(record)
        return event["tenantId"], event["messageId"]
    except (ValueError, KeyError, TypeError):
        return None


def test_every_event_lands_exactly_once_across_shards_and_passes(aws, tmp_path):
    res = _resources(aws)
    lake, warehouse = str(tmp_path / "lake"), f"duckdb:///{tmp_path}/wh.duckdb"
    records = list(generate_events(900, seed=11, bad_fraction=0.05, duplicate_fraction=0.05))
    kinesis = aws.client("kinesis")
    assert put_records(kinesis, res.stream, records) == 900
    out = io.StringIO()
    summary = stream_events.run(_argv(aws, res, lake, warehouse), out=out)

    distinct = len(set(records))  # the generator's duplicates are byte-identical re-sends
    keys = _lake_keys(lake)
    dead = read_dead_letters(summary.dead_letters_path)
    assert len(keys) == len(set(keys))  # no (tenant_id, message_id) twice
    assert summary.total("duplicates") == 900 - distinct
    assert len(keys) + len(dead) == distinct
    assert len(keys) + len(dead) + summary.total("duplicates") == 900
    assert {d.source_ref.split("/")[1] for d in dead} <= {
        "shardId-000000000000",
        "shardId-000000000001",
        "shardId-000000000002",
    }
    assert sorted(_warehouse_keys(warehouse)) == sorted(keys)
    assert summary.total("profile_rows_applied") == len(keys)
    _assert_profiles_match_lake(aws, res, lake)
    first = summary.passes[0]
    assert sum(s["records"] for s in first.shards) == 900 and len(first.shards) == 3
    assert "read 900" in out.getvalue()
    checkpoints = CheckpointStore(aws, res.checkpoint_table).load(res.stream)
    assert len(checkpoints) == 3

    # later: 40 exact re-sends of already-ingested records and 60 new ones → cross-pass duplicates
    more = list(generate_events(60, seed=12))
    resent = records[:40]
    put_records(kinesis, res.stream, resent + more)
    again = stream_events.run(_argv(aws, res, lake, warehouse), out=io.StringIO())
    keys_after = _lake_keys(lake)
    dead_after = read_dead_letters(summary.dead_letters_path)
    assert len(keys_after) == len(set(keys_after))
    assert again.total("records_read") == 100
    # every record of the pass is a new lake row, a new dead letter or a counted duplicate
    assert (len(keys_after) - len(keys)) + (len(dead_after) - len(dead)) + again.total("duplicates") == 100
    # re-sends of ingested events are duplicates: only `more` may add lake rows
    resent_in_lake = [k for k in map(_key_of, resent) if k in set(keys)]
    assert resent_in_lake and again.total("duplicates") >= len(resent_in_lake)
    assert set(keys_after) - set(keys) <= {_key_of(r) for r in more}
    assert sorted(_warehouse_keys(warehouse)) == sorted(keys_after)


def test_rerun_when_caught_up_changes_nothing(aws, tmp_path):
    res = _resources(aws, shards=2, sinks=False)
    lake = str(tmp_path / "lake")
    put_records(aws.client("kinesis"), res.stream, list(generate_events(200, seed=3)))
    stream_events.run(_argv(aws, res, lake), out=io.StringIO())
    files = sorted(p for p in (tmp_path / "lake").rglob("*.parquet"))
    stamps = [p.stat().st_mtime_ns for p in files]
    out = io.StringIO()
    again = stream_events.run(_argv(aws, res, lake), out=out)
    assert again.total("records_read") == 0 and "caught up" in out.getvalue()
    assert sorted(p for p in (tmp_path / "lake").rglob("*.parquet")) == files
    assert [p.stat().st_mtime_ns for p in files] == stamps
    # --follow keeps polling (bounded here by --max-passes); an idle pass starts no pipeline
    out = io.StringIO()
    started = time.monotonic()
    followed = stream_events.run(
        _argv(aws, res, lake, None, "--follow", "--follow-interval=0.1", "--max-passes=3"), out=out
    )
    assert len(followed.passes) == 3 and out.getvalue().count("caught up") == 3
    assert time.monotonic() - started < 10


def test_kill_before_checkpoint_commit_then_restart_loses_and_doubles_nothing(aws, tmp_path):
    res = _resources(aws, shards=2)
    lake, warehouse = str(tmp_path / "lake"), f"duckdb:///{tmp_path}/wh.duckdb"
    kinesis = aws.client("kinesis")
    first = list(generate_events(500, seed=21, bad_fraction=0.04, duplicate_fraction=0.04))
    put_records(kinesis, res.stream, first)
    marker = tmp_path / "holding"
    env = {
        **os.environ,
        CommitCheckpoints.HOLD_ENV: "120",
        CommitCheckpoints.HOLD_ENV + "_MARKER": str(marker),
        "PYTHONPATH": ROOT,
    }
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pipelines.stream_events",
            *_argv(aws, res, lake, warehouse, "--once", "--lease-seconds=4"),
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 180
        while not marker.exists():
            assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
            assert time.monotonic() < deadline, "pipeline never reached the checkpoint commit"
            time.sleep(0.2)
        # the sinks are done, the commit is not: the harshest moment to die
        crashed_keys = _lake_keys(lake)
        assert crashed_keys, "the crashed attempt should have written lake files"
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        proc.stderr.close()
    assert CheckpointStore(aws, res.checkpoint_table).load(res.stream) == {}  # nothing was committed

    # more traffic arrives before the restart: the rerun reads a longer range than the crashed attempt
    second = list(generate_events(150, seed=22, bad_fraction=0.04, duplicate_fraction=0.0))
    put_records(kinesis, res.stream, second)
    # ... and the operator restarts with another bucket count: rows land in other files than before,
    # so the crashed attempt's files must go (not merely be overwritten)
    # (the killed consumer's lease expires after 4 s: the restart waits for it, then takes over)
    summary = stream_events.run(_argv(aws, res, lake, warehouse, "--buckets=3"), out=io.StringIO())

    records = first + second
    distinct = len(set(records))
    keys = _lake_keys(lake)
    dead = read_dead_letters(summary.dead_letters_path)
    assert len(keys) == len(set(keys)), "a row was written twice"
    assert set(crashed_keys) <= set(keys)
    assert len(keys) + len(dead) == distinct, "a record was lost"
    assert len({d.source_ref for d in dead}) == len(dead)
    assert len(keys) + len(dead) + summary.total("duplicates") == len(records)
    wh = _warehouse_keys(warehouse)
    assert len(wh) == len(set(wh)) and sorted(wh) == sorted(keys)
    _assert_profiles_match_lake(aws, res, lake)


def _consumer(aws, res, lake, warehouse, env, *extra) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "pipelines.stream_events", *_argv(aws, res, lake, warehouse, *extra)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": ROOT, **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )


def _lake_files(tmp_path) -> dict[str, int]:
    """The data files (events, dead letters) with their modification times; run records are appended."""
    lake = tmp_path / "lake"
    return {
        str(p): p.stat().st_mtime_ns for d in ("events", "dead_letters") for p in (lake / d).rglob("*") if p.is_file()
    }


def test_two_consumers_at_once_lose_and_double_nothing(aws, tmp_path):
    """Consumer A has written a pass and not committed. B starts: it must neither delete A's files nor
    read A's records again; with new records arriving meanwhile, B reads only those, after A."""
    res = _resources(aws, shards=2)
    lake, warehouse = str(tmp_path / "lake"), f"duckdb:///{tmp_path}/wh.duckdb"
    kinesis = aws.client("kinesis")
    first = list(generate_events(400, seed=31, bad_fraction=0.04, duplicate_fraction=0.03))
    put_records(kinesis, res.stream, first)
    marker = tmp_path / "holding"
    hold = {CommitCheckpoints.HOLD_ENV: "8", CommitCheckpoints.HOLD_ENV + "_MARKER": str(marker)}
    a = _consumer(aws, res, lake, warehouse, hold, "--once", "--lease-seconds=3")
    b = c = None
    try:
        deadline = time.monotonic() + 180
        while not marker.exists():
            assert a.poll() is None, a.stderr.read().decode()[-3000:]
            assert time.monotonic() < deadline, "A never reached its checkpoint commit"
            time.sleep(0.2)
        a_files = _lake_files(tmp_path)
        assert any(f.endswith(".parquet") for f in a_files)

        # B with little patience: gives up with exit 3, one line, and touches nothing
        b = _consumer(aws, res, lake, warehouse, {}, "--once", "--lease-wait=1")
        assert b.wait(timeout=120) == 3
        assert "being consumed by" in b.stderr.read().decode()
        assert _lake_files(tmp_path) == a_files

        # new records arrive while A still holds its pass; C waits for A, then reads only what is new
        second = list(generate_events(150, seed=32, bad_fraction=0.04, duplicate_fraction=0.0))
        put_records(kinesis, res.stream, second)
        c = _consumer(aws, res, lake, warehouse, {}, "--lease-wait=120")
        assert a.wait(timeout=180) == 0, a.stderr.read().decode()[-3000:]
        assert c.wait(timeout=240) == 0, c.stderr.read().decode()[-3000:]
    finally:
        for proc in (a, b, c):
            if proc is not None:
                if proc.poll() is None:
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=30)
                proc.stderr.close()

    records = first + second
    keys = _lake_keys(lake)
    dead = read_dead_letters(str(tmp_path / "lake" / "dead_letters"))
    assert len(keys) == len(set(keys)), "a row was written twice"
    assert len(keys) + len(dead) == len(set(records)), "a record was lost"
    assert len({d.source_ref for d in dead}) == len(dead)
    wh = _warehouse_keys(warehouse)
    assert len(wh) == len(set(wh)) and sorted(wh) == sorted(keys)
    ends = CheckpointStore(aws, res.checkpoint_table).load(res.stream)
    assert len(ends) == 2


def test_hostile_tenant_on_kinesis_is_a_dead_letter_and_the_stream_moves_on(aws, tmp_path):
    """One record whose tenant id once crashed every pass (a NUL byte, 256 characters, a path)."""
    res = _resources(aws, shards=1, sinks=False)
    lake = str(tmp_path / "lake")
    good = list(generate_events(30, seed=41))
    hostile = [
        json.dumps({**json.loads(good[0]), "tenantId": tenant, "messageId": f"evil-{i}"}).encode()
        for i, tenant in enumerate(["acme\u0000in", "a" * 256, "x/../../ESCAPED", "acme-in/evil", "\ud83d" * 3])
    ]
    put_records(aws.client("kinesis"), res.stream, good[:10] + hostile + good[10:])
    summary = stream_events.run(_argv(aws, res, lake), out=io.StringIO())
    dead = read_dead_letters(summary.dead_letters_path)
    assert collections.Counter(d.reason.value for d in dead)["invalid_tenant"] >= 4
    assert {d.message_id for d in dead if d.reason.value == "invalid_tenant"} >= {"evil-0", "evil-1", "evil-2"}
    assert len(_lake_keys(lake)) + len(dead) + summary.total("duplicates") == len(good) + len(hostile)
    assert not list(tmp_path.rglob("ESCAPED"))
    # the stream moved on: checkpoint at the last record, the next pass reads nothing again
    again = stream_events.run(_argv(aws, res, lake), out=io.StringIO())
    assert again.total("records_read") == 0


def _assert_profiles_match_lake(aws, res: StreamingResources, lake: str) -> None:
    """DynamoDB profiles equal the profiles folded independently from the lake rows (pure transforms)."""
    from connectors.dynamodb import read_profile
    from transforms.profiles import fold, summarize

    expected = {key: summarize(state) for key, state in fold(read_events(lake).to_pylist()).items()}
    client = aws.client("dynamodb")
    for (tenant, person), want in expected.items():
        got = read_profile(client, res.profiles_table, tenant, person)
        assert got is not None, (tenant, person)
        for name in ("order_count", "revenue_inr", "refund_count", "cancellation_count"):
            assert got.get(name, 0) == want[name], (tenant, person, name)


def test_split_mid_stream_reads_parent_then_children_without_duplicates(tmp_path):
    with faithful_kinesis_server() as aws:
        res = _resources(aws, shards=2, sinks=False)
        lake = str(tmp_path / "lake")
        kinesis = aws.client("kinesis")
        before = list(generate_events(300, seed=31, bad_fraction=0.0, duplicate_fraction=0.0))
        after = list(generate_events(300, seed=32, bad_fraction=0.0, duplicate_fraction=0.0))
        put_records(kinesis, res.stream, before)
        first = stream_events.run(_argv(aws, res, lake, None, "--max-records=60", "--once"), out=io.StringIO())
        assert first.total("records_read") == 120  # mid-stream: the parent is only partly read
        parent = split_first_shard(kinesis, res.stream)
        put_records(kinesis, res.stream, after)
        out = io.StringIO()
        summary = stream_events.run(_argv(aws, res, lake), out=out)
        keys = _lake_keys(lake)
        assert len(keys) == len(set(keys))
        assert len(keys) + first.total("duplicates") + summary.total("duplicates") == 600
        shard_order = [s["shard_id"] for p in summary.passes for s in p.shards if s["records"]]
        children = [s for s in shard_order if s not in (parent, "shardId-000000000001")]
        assert children, "new records should have gone to the children"
        # the parent's last records were read in an earlier pass than any child's first
        pass_of = {}
        for i, p in enumerate(summary.passes):
            for s in p.shards:
                if s["records"]:
                    pass_of.setdefault(s["shard_id"], []).append(i)
        assert max(pass_of[parent]) < min(min(pass_of[c]) for c in children)
        assert CheckpointStore(aws, res.checkpoint_table).load(res.stream)[parent].shard_end
        # order per partition key: each person's events were put in time order; the lake keeps one
        # row per event, so check nothing of a person is missing and nothing doubled
        per_person = collections.Counter(json.loads(r)["anonymousId"] for r in before + after)
        table = read_events(lake, columns=["anonymous_id"])
        assert collections.Counter(table.column("anonymous_id").to_pylist()) == per_person


def test_help_and_flag_checks():
    done = subprocess.run(
        [sys.executable, "-m", "pipelines.stream_events", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0
    for flag in (
        "--stream",
        "--lake",
        "--warehouse",
        "--start-position",
        "--follow",
        "--max-records",
        "--checkpoint-table",
    ):
        assert flag in done.stdout
    with pytest.raises(ValueError, match="AT_TIMESTAMP needs --at-timestamp"):
        stream_events.run(["--stream=s", "--lake=/tmp/x", "--start-position=AT_TIMESTAMP"])
    with pytest.raises(ValueError, match="exclude each other"):
        stream_events.run(["--stream=s", "--lake=/tmp/x", "--follow", "--once"])


def test_streaming_graph_builds_with_an_unbounded_reader(aws):
    """The graph of --streaming (it runs whole on Prism in test_stream_prism.py): unbounded reader and commits."""
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions
    from apache_beam.portability.api import beam_runner_api_pb2

    options = PipelineOptions(["--stream=s", "--lake=/tmp/lake", "--streaming", "--warehouse=duckdb:///tmp/x.duckdb"])
    opts = options.view_as(stream_events.StreamEventsOptions)
    pipeline = beam.Pipeline(options=options)
    stream_events.build_streaming(pipeline, opts, aws)
    proto = pipeline.to_runner_api()
    names = {t.unique_name for t in proto.components.transforms.values()}
    for step in (
        "DiscoverShards",
        "ReadKinesis/ReadShard",
        "Window",
        "ProcessEvents",
        "WriteLake",
        "WriteDeadLetters",
        "LoadWarehouse",
        "CommitCheckpoints/CommitWindow",
    ):
        assert any(n == step or n.startswith(step + "/") for n in names), step
    unbounded = {
        t.unique_name
        for t in proto.components.transforms.values()
        for out in t.outputs.values()
        if proto.components.pcollections[out].is_bounded == beam_runner_api_pb2.IsBounded.UNBOUNDED
    }
    assert "ReadKinesis/ReadShard" in unbounded and "CommitCheckpoints/CommitWindow" in unbounded


def test_streaming_windows_write_one_file_set_per_window(tmp_path):
    """The windowed half of --streaming on TestStream: records of two windows → files named per window."""
    import datetime as dt

    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
    from apache_beam.testing.test_stream import TestStream
    from apache_beam.transforms import window

    from schemas.records import SourceRecord
    from transforms.composites import ProcessConfig, ProcessEvents
    from transforms.enrich import EnrichConfig

    records = list(generate_events(40, seed=41, bad_fraction=0.0, duplicate_fraction=0.0))
    base = dt.datetime(2026, 11, 25, 10, 0, tzinfo=dt.UTC)
    stream = TestStream()
    for i, payload in enumerate(records):
        arrival = base + dt.timedelta(seconds=i * 3)  # 120 s of traffic: two 60 s windows
        ts = arrival.timestamp()
        stream = stream.add_elements(
            [window.TimestampedValue(SourceRecord(payload, f"kinesis:s/shardId-0/{i + 1}", arrival), ts)]
        )
    stream = stream.advance_watermark_to_infinity()
    options = PipelineOptions(runner="BundleBasedDirectRunner")
    options.view_as(StandardOptions).streaming = True
    lake = str(tmp_path / "lake")
    with beam.Pipeline(options=options) as p:
        processed = (
            p
            | stream
            | "Window" >> beam.WindowInto(window.FixedWindows(60))
            | "ProcessEvents"
            >> ProcessEvents(
                ProcessConfig(buckets=1, tracking_plans_dir=None, enrich=EnrichConfig(pii_secret="c0" * 32))
            )
        )
        _ = processed.row_batches | "WriteLake" >> stream_events._WindowedLake(lake)
    files = sorted(str(p.name) for p in (tmp_path / "lake").rglob("*.parquet"))
    windows = {name.split("-")[1] for name in files}
    assert windows == {"w20261125T100000", "w20261125T100100"}
    keys = _lake_keys(lake)
    assert len(keys) == len(set(keys)) == 40


def test_kpl_aggregated_records_become_one_row_per_user_record(aws, tmp_path):
    from connectors.kinesis import aggregate

    res = _resources(aws, shards=2, sinks=False)
    lake = str(tmp_path / "lake")
    events = list(generate_events(50, seed=51, bad_fraction=0.0, duplicate_fraction=0.0))
    kinesis = aws.client("kinesis")
    entries = [
        {"PartitionKey": f"kpl-{i}", "Data": aggregate([("p", e) for e in events[i : i + 10]])} for i in (0, 10, 20)
    ]
    entries += [{"PartitionKey": f"plain-{i}", "Data": e} for i, e in enumerate(events[30:])]
    assert kinesis.put_records(StreamName=res.stream, Records=entries)["FailedRecordCount"] == 0
    summary = stream_events.run(_argv(aws, res, lake), out=io.StringIO())
    assert summary.total("records_read") == 50
    assert sorted(_lake_keys(lake)) == sorted(_key_of(e) for e in events)


def test_pass_tag_names_a_pass_by_its_start_positions(tmp_path):
    from connectors.kinesis import Checkpoint, ReadConfig, ShardTask

    config = ReadConfig()
    a = [ShardTask("s", "shard-0", Checkpoint("10")), ShardTask("s", "shard-1", None)]
    assert stream_events.pass_tag("s", a, config) == stream_events.pass_tag("s", list(reversed(a)), config)
    moved = [ShardTask("s", "shard-0", Checkpoint("11")), a[1]]
    inside = [ShardTask("s", "shard-0", Checkpoint("10", 3)), a[1]]
    tags = {stream_events.pass_tag("s", t, config) for t in (a, moved, inside)}
    tags.add(stream_events.pass_tag("other", a, config))
    assert len(tags) == 4

    lake, dead = tmp_path / "lake", tmp_path / "lake" / "dead_letters"
    mine = lake / "events/tenant_id=t/event_date=2026-11-25/part-kabc-0001.parquet"
    other = lake / "events/tenant_id=t/event_date=2026-11-25/part-kdef-0001.parquet"
    mine_dead, other_dead = dead / "part-kabc-0000.jsonl", dead / "part-kdef-0000.jsonl"
    for path in (mine, other, mine_dead, other_dead):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
    assert stream_events.remove_attempt_leftovers(str(lake), str(dead), "kabc") == 2
    assert not mine.exists() and not mine_dead.exists() and other.exists() and other_dead.exists()


def test_lake_on_s3(aws, monkeypatch):
    from infra.resources import create_bucket

    res = _resources(aws, shards=2, sinks=False)
    create_bucket(aws, "lake-bucket")
    records = list(generate_events(200, seed=61))
    put_records(aws.client("kinesis"), res.stream, records)
    summary = stream_events.run(_argv(aws, res, "s3://lake-bucket/lake"), out=io.StringIO())
    monkeypatch.setenv("LIVORA_AWS_ENDPOINT", aws.endpoint_url)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    keys = _lake_keys("s3://lake-bucket/lake")
    assert len(keys) == len(set(keys)) == summary.total("lake_rows")
    assert len(keys) + summary.total("dead_letters") + summary.total("duplicates") == 200
    objects = aws.client("s3").list_objects_v2(Bucket="lake-bucket", Prefix="lake/")["Contents"]
    assert any(o["Key"].startswith("lake/_runs/stream-events-") for o in objects)


def test_a_pass_that_does_not_balance_fails_before_its_checkpoints_move():
    assert stream_events.require_balance("k1", parsed=10, lake_rows=7, failed=2, duplicates=1) == 10
    with pytest.raises(RuntimeError, match=r"pass k1 does not balance: 10 events parsed .* = 9; checkpoints not"):
        stream_events.require_balance("k1", parsed=10, lake_rows=7, failed=1, duplicates=1)


def test_a_window_commits_each_shard_once_at_its_furthest_position():
    """Several reader calls of one shard in one window: one transaction may touch an item only once."""
    from connectors.kinesis import Checkpoint, ShardProgress
    from pipelines.stream_events import furthest_per_shard

    def p(shard, seq, end=False):
        return ShardProgress("s", shard, None, Checkpoint(str(seq), None, end), 1, 0)

    items = [p("a", 5), p("b", 3), p("a", 9), p("a", 7), p("b", 3, end=True), ShardProgress("s", "c", None, None, 0, 0)]
    assert [(x.shard_id, x.end.sequence, x.end.shard_end) for x in furthest_per_shard(items)] == [
        ("a", "9", False),
        ("b", "3", True),
    ]


def test_a_new_streaming_run_removes_only_the_files_of_uncommitted_windows(tmp_path):
    """Owners name (run, window) of each commit; files of later windows or later runs were never committed."""
    from pipelines.stream_events import remove_uncommitted_windows

    lake = tmp_path / "lake"
    part = lake / "events" / "tenant_id=acme-in" / "event_date=2026-10-01"
    dead = lake / "dead_letters"
    part.mkdir(parents=True)
    dead.mkdir()
    names = {
        "part-w20261202T100000-r0000000000100-aaaa-0000.parquet": True,  # older run: kept
        "part-w20261202T100100-r0000000000200-bbbb-0000.parquet": True,  # latest run, committed window
        "part-w20261202T100105-r0000000000200-cccc-0001.parquet": True,  # latest run, its last committed window
        "part-w20261202T100110-r0000000000200-dddd-0000.parquet": False,  # latest run, after its last commit
        "part-w20261202T100200-r0000000000300-eeee-0000.parquet": False,  # a later run that never committed
        "part-k0123456789a-0000.parquet": True,  # incremental-mode file: not ours to judge
    }
    for name in names:
        (part / name).write_bytes(b"x")
    (dead / "part-w20261202T100110-r0000000000200-ffff.jsonl").write_text("{}\n")
    (dead / "part-w20261202T100100-r0000000000200-9999.jsonl").write_text("{}\n")
    details = [
        {"shard_id": "shardId-0", "owner": "host:1|r0000000000200|w20261202T100105"},
        {"shard_id": "shardId-1", "owner": "host:1|r0000000000200|w20261202T100100"},
        {"shard_id": "shardId-2", "owner": "host:1"},  # an incremental-mode commit
    ]
    removed = remove_uncommitted_windows(str(lake), str(dead), details)
    assert {os.path.basename(p) for p in removed} == {n for n, keep in names.items() if not keep} | {
        "part-w20261202T100110-r0000000000200-ffff.jsonl"
    }
    assert sorted(p.name for p in part.iterdir()) == sorted(n for n, keep in names.items() if keep)
    assert [p.name for p in dead.iterdir()] == ["part-w20261202T100100-r0000000000200-9999.jsonl"]
    # no streaming commit at all: every named-run window file is uncommitted
    assert {os.path.basename(p) for p in remove_uncommitted_windows(str(lake), str(dead), [])} == {
        n for n, keep in names.items() if keep and "-r0" in n
    } | {"part-w20261202T100100-r0000000000200-9999.jsonl"}

    # an incremental-mode commit after those runs (owner without a run): their files are kept from now on
    (part / "part-w20261202T100300-r0000000000400-ffff-0000.parquet").write_bytes(b"x")
    (part / "part-w20261202T100200-r0000000000300-gggg-0000.parquet").write_bytes(b"x")  # before it: kept
    later = [{"shard_id": "shardId-0", "owner": "host:2", "updated_at": "1970-01-01T00:00:00.350+00:00"}]
    assert [os.path.basename(p) for p in remove_uncommitted_windows(str(lake), str(dead), later)] == [
        "part-w20261202T100300-r0000000000400-ffff-0000.parquet"
    ]
    assert (part / "part-w20261202T100200-r0000000000300-gggg-0000.parquet").exists()


def _reasons_on_disk(lake: str) -> dict[str, int]:
    return dict(collections.Counter(d.reason.value for d in read_dead_letters(f"{lake}/dead_letters")))


def test_the_run_record_sums_its_passes_with_dead_letters_by_reason(aws, tmp_path, monkeypatch):
    monkeypatch.setattr("pipelines.options.configure_logging", lambda level, fmt: None)
    res = _resources(aws, shards=1, sinks=False)
    lake = str(tmp_path / "lake")
    records = list(generate_events(240, seed=21, bad_fraction=0.1))
    put_records(aws.client("kinesis"), res.stream, records)
    stream_events.main(_argv(aws, res, lake, None, "--max-records=100"))  # 3 passes with records, 1 caught up
    stream_events.main(_argv(aws, res, lake, None))  # caught up: a second record, nothing read
    first, second = read_run_records(lake)
    counts = first["counts"]
    assert first["status"] == "succeeded" and counts["passes"] >= 3
    assert counts["records_read"] == len(records)
    assert counts["lake_rows"] == len(_lake_keys(lake))
    assert counts["dead_letters_by_reason"] == _reasons_on_disk(lake) and sum(_reasons_on_disk(lake).values()) > 0
    assert counts["dead_letters"] == sum(counts["dead_letters_by_reason"].values())
    reads = first["inputs"]
    assert len(reads) == 3 and sum(i["records"] for i in reads) == len(records)
    assert len({i["fingerprint"] for i in reads}) == 3 and all(i["path"] == f"kinesis:{res.stream}" for i in reads)
    assert first["outputs"] == [f"{lake}/events", f"{lake}/dead_letters"]
    assert second["counts"]["records_read"] == 0 and second["inputs"] == []


def test_a_follow_run_stopped_by_sigterm_still_appends_its_record(aws, tmp_path):
    res = _resources(aws, shards=1, sinks=False)
    lake = str(tmp_path / "lake")
    records = list(generate_events(120, seed=22, bad_fraction=0.1))
    put_records(aws.client("kinesis"), res.stream, records)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pipelines.stream_events",
            *_argv(aws, res, lake, None, "--follow", "--follow-interval=0.2"),
        ],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": ROOT},
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    try:
        for line in proc.stdout:  # the first pass reads everything, then the run polls until stopped
            if "caught up" in line:
                break
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 143
    finally:
        if proc.poll() is None:
            proc.kill()
    (record,) = read_run_records(lake)
    assert (record["status"], record["exit_code"], record["error"]) == ("terminated", 143, "terminated by SIGTERM")
    assert record["counts"]["records_read"] == len(records)
    assert record["counts"]["lake_rows"] == len(_lake_keys(lake))
    assert record["counts"]["dead_letters_by_reason"] == _reasons_on_disk(lake)
