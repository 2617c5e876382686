"""Kinesis reader: KPL de-aggregation, lineage, positions, throttling, resharding (moto over HTTP)."""

from __future__ import annotations

import collections
import datetime as dt
import hashlib
import pathlib
import time

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.util import assert_that, equal_to
from botocore.exceptions import ClientError

from connectors.checkpoints import CheckpointStore, create_checkpoint_table
from connectors.kinesis import (
    KPL_MAGIC,
    Backoff,
    Checkpoint,
    ReadConfig,
    ReadKinesisShards,
    ShardInfo,
    ShardReader,
    ShardTask,
    StartPosition,
    aggregate,
    deaggregate,
    default_kinesis_client,
    is_finished,
    list_shards,
    readable_shards,
)
from tests.connectors.kinesis_helpers import faithful_kinesis_server, make_stream, put

FAST = Backoff(base_s=0.001, cap_s=0.01, max_attempts=8)


# --------------------------------------------------------------------------- pure: KPL format


def test_deaggregate_reads_records_packed_by_the_aws_aggregator():
    """Independent producer: AWS's own aws-kinesis-agg packs, our decoder unpacks."""
    from aws_kinesis_agg.aggregator import RecordAggregator

    agg = RecordAggregator()
    users = [(f"pk-{i % 3}", f'{{"n":{i}}}'.encode()) for i in range(7)]
    for key, data in users:
        assert agg.add_user_record(key, data) is None  # small: everything fits one aggregate
    key, _ehk, blob = agg.clear_and_get().get_contents()
    assert blob.startswith(KPL_MAGIC)
    assert deaggregate(blob) == users


def test_deaggregate_plain_and_corrupt_records_pass_through():
    assert deaggregate(b'{"type":"track"}') is None
    blob = aggregate([("a", b"1"), ("b", b"2")])
    assert deaggregate(blob) == [("a", b"1"), ("b", b"2")]
    corrupt = blob[:-1] + bytes([blob[-1] ^ 0xFF])  # checksum no longer matches
    assert deaggregate(corrupt) is None
    body = b"\x00garbage-not-protobuf\xff"
    assert deaggregate(KPL_MAGIC + body + hashlib.md5(body).digest()) is None


# --------------------------------------------------------------------------- pure: positions, lineage


def test_checkpoint_order_and_iterator_arguments():
    whole = Checkpoint("10")
    inside = Checkpoint("10", 2)
    assert inside.covers(Checkpoint("10", 1)) and inside.covers(Checkpoint("9"))
    assert not inside.covers(Checkpoint("10", 3)) and not inside.covers(whole)
    assert whole.covers(Checkpoint("10", 99)) and not whole.covers(Checkpoint("11"))
    assert Checkpoint(str(2**127)).covers(Checkpoint(str(2**126)))  # bigger than any float/int64
    assert whole.iterator_args()["ShardIteratorType"] == "AFTER_SEQUENCE_NUMBER"
    assert inside.iterator_args() == {"ShardIteratorType": "AT_SEQUENCE_NUMBER", "StartingSequenceNumber": "10"}


PARENT = ShardInfo("s0", ending_sequence="50")
LEFT = ShardInfo("s1", parent_shard_id="s0")
RIGHT = ShardInfo("s2", parent_shard_id="s0")
OTHER = ShardInfo("s3", ending_sequence="70")
MERGED = ShardInfo("s4", parent_shard_id="s2", adjacent_parent_shard_id="s3")


@pytest.mark.parametrize(
    ("checkpoints", "expected"),
    [
        ({}, ["s0", "s3"]),  # children wait for their parents
        ({"s0": Checkpoint("50")}, ["s0", "s3"]),  # at the end but not marked ended: still open work
        ({"s0": Checkpoint("50", shard_end=True)}, ["s1", "s2", "s3"]),
        ({"s0": Checkpoint("50", shard_end=True), "s3": Checkpoint("70", shard_end=True)}, ["s1", "s2"]),
        # s4 needs both s2 (open) and s3: still waits
        (
            {"s0": Checkpoint("50", shard_end=True), "s3": Checkpoint("70", shard_end=True), "s2": Checkpoint("9")},
            ["s1", "s2"],
        ),
    ],
)
def test_readable_shards_follow_lineage(checkpoints, expected):
    got = readable_shards([PARENT, LEFT, RIGHT, OTHER, MERGED], checkpoints)
    assert [s.shard_id for s in got] == expected


def test_a_parent_gone_past_retention_counts_as_finished():
    assert [s.shard_id for s in readable_shards([LEFT], {})] == ["s1"]


def test_a_closed_shard_that_grew_after_the_end_mark_is_not_finished():
    # moto appends to a "closed" parent after a split; real Kinesis never does. Either way: read on.
    assert is_finished(ShardInfo("s0", ending_sequence="50"), Checkpoint("50", shard_end=True))
    assert not is_finished(ShardInfo("s0", ending_sequence="60"), Checkpoint("50", shard_end=True))


# --------------------------------------------------------------------------- against the moto server


_put, _stream = put, make_stream


def _drain(reader: ShardReader) -> list:
    out = []
    while True:
        got = reader.poll()
        out += got
        if reader.millis_behind == 0 and not got:
            return out


@pytest.mark.integration
def test_reader_reads_everything_in_order_and_resumes_after_a_checkpoint(aws):
    client = _stream(aws, "orders", 2)
    records = [(f"pk-{i % 5}", f"r{i}".encode()) for i in range(40)]
    _put(client, "orders", records)
    got = []
    for shard in list_shards(client, "orders"):
        reader = ShardReader(client, "orders", shard.shard_id, batch_limit=7, min_call_interval=0)
        reader.open(None, StartPosition.TRIM_HORIZON)
        first = _drain(reader)
        assert [int(r.sequence) for r in first] == sorted(int(r.sequence) for r in first)
        got += first
        # resume after the 3rd record: exactly the rest comes back
        again = ShardReader(client, "orders", shard.shard_id, min_call_interval=0)
        again.open(first[2].position)
        assert [r.data for r in _drain(again)] == [r.data for r in first[3:]]
    assert sorted(r.data for r in got) == sorted(d for _, d in records)
    assert all(r.source_ref == f"kinesis:orders/{r.shard_id}/{r.sequence}" for r in got)
    assert all(r.arrival.tzinfo is not None for r in got)


@pytest.mark.integration
def test_reader_splits_kpl_aggregates_and_resumes_inside_one(aws):
    client = _stream(aws, "kpl", 1)
    users = [(f"pk-{i}", f"u{i}".encode()) for i in range(5)]
    _put(client, "kpl", [("x", b"before"), ("agg", aggregate(users)), ("y", b"after")])
    reader = ShardReader(client, "kpl", "shardId-000000000000", min_call_interval=0)
    reader.open(None)
    got = _drain(reader)
    assert [r.data for r in got] == [b"before"] + [d for _, d in users] + [b"after"]
    assert [r.sub_sequence for r in got] == [None, 0, 1, 2, 3, 4, None]
    assert got[3].source_ref.endswith(f"/{got[3].sequence}/2")
    assert [r.partition_key for r in got[1:6]] == [k for k, _ in users]
    # a checkpoint at sub-record 2 resumes with sub-records 3 and 4, then the next record
    resumed = ShardReader(client, "kpl", "shardId-000000000000", min_call_interval=0)
    resumed.open(got[3].position)
    assert [r.data for r in _drain(resumed)] == [b"u3", b"u4", b"after"]


@pytest.mark.integration
def test_start_positions_latest_and_at_timestamp(aws):
    client = _stream(aws, "pos", 1)
    _put(client, "pos", [("k", b"old-1"), ("k", b"old-2")])
    time.sleep(1.1)
    cut = dt.datetime.now(dt.UTC)
    time.sleep(0.1)
    latest = ShardReader(client, "pos", "shardId-000000000000", min_call_interval=0)
    latest.open(None, StartPosition.LATEST)
    _put(client, "pos", [("k", b"new-1"), ("k", b"new-2")])
    assert [r.data for r in _drain(latest)] == [b"new-1", b"new-2"]
    at = ShardReader(client, "pos", "shardId-000000000000", min_call_interval=0)
    at.open(None, StartPosition.AT_TIMESTAMP, cut)
    assert [r.data for r in _drain(at)] == [b"new-1", b"new-2"]
    horizon = ShardReader(client, "pos", "shardId-000000000000", min_call_interval=0)
    horizon.open(None, StartPosition.TRIM_HORIZON)
    assert len(_drain(horizon)) == 4


class FlakyKinesis:
    """Wraps a real client: throttles GetRecords (every other call, up to a budget) and expires iterators."""

    def __init__(self, client, throttles: int = 0, expire_once: bool = False, every: int = 2):
        self.client, self.throttles, self.expire_once, self.every = client, throttles, expire_once, every
        self.calls = 0

    def get_records(self, **kwargs):
        self.calls += 1
        if self.throttles and self.calls % self.every == 1 % self.every:
            self.throttles -= 1
            raise ClientError(
                {"Error": {"Code": "ProvisionedThroughputExceededException", "Message": "Rate exceeded for shard"}},
                "GetRecords",
            )
        if self.expire_once and self.calls == 2:
            self.expire_once = False
            raise ClientError({"Error": {"Code": "ExpiredIteratorException", "Message": "expired"}}, "GetRecords")
        return self.client.get_records(**kwargs)

    def __getattr__(self, name):
        return getattr(self.client, name)


@pytest.mark.integration
def test_throttling_is_retried_with_backoff_and_nothing_is_lost(aws):
    client = _stream(aws, "hot", 1)
    records = [("k", f"r{i}".encode()) for i in range(60)]
    _put(client, "hot", records)
    flaky = FlakyKinesis(client, throttles=5)
    sleeps: list[float] = []
    reader = ShardReader(flaky, "hot", "shardId-000000000000", batch_limit=10, backoff=FAST, sleep=sleeps.append)
    reader.open(None)
    got = _drain(reader)
    assert [r.data for r in got] == [d for _, d in records]
    assert reader.throttled == 5
    assert all(0 <= s <= FAST.cap_s or s <= 0.2 for s in sleeps)


@pytest.mark.integration
def test_throttling_that_never_ends_surfaces_as_a_transient_error(aws):
    from connectors.kinesis import KinesisReadError

    client = _stream(aws, "stuck", 1)
    _put(client, "stuck", [("k", b"x")])
    reader = ShardReader(
        FlakyKinesis(client, throttles=10**6, every=1),
        "stuck",
        "shardId-000000000000",
        backoff=FAST,
        sleep=lambda s: None,
    )
    reader.open(None)
    with pytest.raises(KinesisReadError):
        while True:
            reader.poll()


@pytest.mark.integration
def test_an_expired_iterator_is_rebuilt_from_the_last_position(aws):
    client = _stream(aws, "exp", 1)
    records = [("k", f"r{i}".encode()) for i in range(25)]
    _put(client, "exp", records)
    reader = ShardReader(FlakyKinesis(client, expire_once=True), "exp", "shardId-000000000000", batch_limit=10)
    reader.open(None)
    assert [r.data for r in _drain(reader)] == [d for _, d in records]
    assert reader.expired == 1


class ThrottlingFactory:
    """client_factory for the Beam reader: every worker's client throttles its first calls."""

    def __init__(self, throttles: int):
        self.throttles = throttles

    def __call__(self, aws):
        return FlakyKinesis(default_kinesis_client(aws), throttles=self.throttles)


@pytest.mark.integration
def test_beam_reader_bounded_runs_resume_from_progress_under_throttling(aws):
    client = _stream(aws, "beam", 3)
    records = [(f"pk-{i % 11}", f"r{i:04d}".encode()) for i in range(450)]
    _put(client, "beam", records)
    config = ReadConfig(max_records=100, min_call_interval=0.0, batch_limit=40, backoff=FAST)
    checkpoints: dict[str, Checkpoint] = {}
    seen: list[bytes] = []
    for _round in range(6):
        tasks = [ShardTask("beam", s.shard_id, checkpoints.get(s.shard_id)) for s in list_shards(client, "beam")]
        payloads, progress = _run_reader(aws, tasks, config, ThrottlingFactory(throttles=2))
        seen += payloads
        for item in progress:
            if item.end is not None:
                checkpoints[item.shard_id] = item.end
            assert item.records <= 100
        if not payloads:
            break
    assert sorted(seen) == sorted(d for _, d in records)  # all of them, none twice


def _run_reader(aws, tasks, config, factory):
    import tempfile

    out_dir = tempfile.mkdtemp()
    with beam.Pipeline(options=PipelineOptions(runner="FnApiRunner")) as p:
        out = p | beam.Create(tasks) | ReadKinesisShards(aws, config, client_factory=factory)
        (
            out.records
            | "Payloads" >> beam.Map(lambda r: r.payload.hex())
            | "W1" >> beam.io.WriteToText(f"{out_dir}/payloads")
        )
        out.progress | "Prog" >> beam.Map(repr) | "W2" >> beam.io.WriteToText(f"{out_dir}/progress")
    import glob

    from connectors.kinesis import ShardProgress

    payloads, progress = [], []
    for path in glob.glob(f"{out_dir}/payloads*"):
        payloads += [bytes.fromhex(line) for line in pathlib.Path(path).read_text().split()]
    namespace = {"ShardProgress": ShardProgress, "Checkpoint": Checkpoint}
    for path in glob.glob(f"{out_dir}/progress*"):
        progress += [eval(line, namespace) for line in pathlib.Path(path).read_text().splitlines() if line]
    return payloads, progress


@pytest.mark.integration
def test_beam_reader_emits_source_records_with_refs(aws):
    client = _stream(aws, "refs", 1)
    _put(client, "refs", [("k", b"a"), ("k", b"b")])
    with beam.Pipeline(options=PipelineOptions(runner="FnApiRunner")) as p:
        out = (
            p
            | beam.Create([ShardTask("refs", "shardId-000000000000")])
            | ReadKinesisShards(aws, ReadConfig(min_call_interval=0.0))
        )
        assert_that(
            out.records | beam.Map(lambda r: (r.payload, r.source_ref, r.received_at is not None)),
            equal_to(
                [
                    (b"a", "kinesis:refs/shardId-000000000000/1", True),
                    (b"b", "kinesis:refs/shardId-000000000000/2", True),
                ]
            ),
        )


# --------------------------------------------------------------------------- resharding


@pytest.fixture
def faithful_kinesis():
    with faithful_kinesis_server() as aws:
        yield aws


@pytest.mark.integration
def test_split_mid_stream_keeps_order_per_key_and_reads_nothing_twice(faithful_kinesis):
    aws = faithful_kinesis
    client = _stream(aws, "split", 2)
    create_checkpoint_table(aws, "cp-split")
    store = CheckpointStore(aws, "cp-split")
    keys = [f"customer-{i}" for i in range(12)]
    counter = collections.Counter()

    def put_round(n):
        batch = []
        for i in range(n):
            key = keys[i % len(keys)]
            counter[key] += 1
            batch.append((key, f"{key}:{counter[key]}".encode()))
        _put(client, "split", batch)

    def read_round(log: list) -> int:
        """One incremental run: readable shards from their checkpoints to the tip, then commit."""
        shards = list_shards(client, "split")
        checkpoints = store.load("split")
        n = 0
        for shard in readable_shards(shards, checkpoints):
            reader = ShardReader(client, "split", shard.shard_id, batch_limit=25, min_call_interval=0)
            reader.open(checkpoints.get(shard.shard_id))
            got = _drain(reader)
            log += [(shard.shard_id, r.data.decode()) for r in got]
            n += len(got)
            end = reader.position
            if shard.closed and (end is None or int(end.sequence) >= int(shard.ending_sequence)):
                end = Checkpoint(shard.ending_sequence, None, shard_end=True)
            if end is not None:
                store.commit("split", shard.shard_id, end)
        return n

    log: list[tuple[str, str]] = []
    put_round(60)
    parent = list_shards(client, "split")[0]
    lo, hi = int(parent.starting_hash_key), int(parent.ending_hash_key)
    client.split_shard(StreamName="split", ShardToSplit=parent.shard_id, NewStartingHashKey=str((lo + hi) // 2))
    put_round(90)
    rounds = 0
    while read_round(log) or rounds < 2:
        rounds += 1
        assert rounds < 10
    put_round(30)  # after the split is fully consumed, new data flows through the children only
    read_round(log)

    shards = {s.shard_id: s for s in list_shards(client, "split")}
    children = {sid for sid, s in shards.items() if s.parent_shard_id == parent.shard_id}
    assert len(children) == 2 and any(sid in children for sid, _ in log)
    values = [v for _, v in log]
    assert len(values) == len(set(values)) == sum(counter.values())  # nothing read twice, nothing lost
    per_key = collections.defaultdict(list)
    for value in values:
        key, n = value.rsplit(":", 1)
        per_key[key].append(int(n))
    assert all(seq == sorted(seq) for seq in per_key.values()), per_key  # order per partition key kept
    # the parent was read to its end before any child record
    first_child = min(i for i, (sid, _) in enumerate(log) if sid in children)
    last_parent = max(i for i, (sid, _) in enumerate(log) if sid == parent.shard_id)
    assert last_parent < first_child
    assert store.load("split")[parent.shard_id].shard_end


def test_restriction_tracker_self_checkpoints_and_finishes():
    from connectors.kinesis import _END, ShardRange, ShardRangeTracker

    pinned = dt.datetime(2026, 11, 25, tzinfo=dt.UTC)
    tracker = ShardRangeTracker(ShardRange(None, created_at=pinned))
    assert not tracker.is_bounded()
    with pytest.raises(ValueError):
        tracker.check_done()  # neither finished nor checkpointed
    assert tracker.try_claim(Checkpoint("1")) and tracker.try_claim(Checkpoint("2", 0))
    assert tracker.try_split(0.5) is None  # no dynamic splitting inside a shard
    primary, residual = tracker.try_split(0)
    assert primary == ShardRange(None, Checkpoint("2", 0), done=True, created_at=pinned)
    assert residual == ShardRange(Checkpoint("2", 0), None, created_at=pinned)  # resumes inside the aggregate
    assert not tracker.try_claim(Checkpoint("3"))  # after the split the rest belongs to the residual
    tracker.check_done()

    resumed = ShardRangeTracker(residual)
    assert resumed.try_claim(Checkpoint("2", 1))
    assert not resumed.try_claim(_END)  # the end of a bounded read
    assert resumed.current_restriction() == ShardRange(
        Checkpoint("2", 0), Checkpoint("2", 1), done=True, created_at=pinned
    )
    resumed.check_done()
    assert resumed.is_bounded()
    bounded = ShardRangeTracker(ShardRange(Checkpoint("5"), stop=Checkpoint("7")))
    assert bounded.try_claim(Checkpoint("7")) and not bounded.try_claim(Checkpoint("8"))


@pytest.mark.integration
def test_unbounded_reader_self_checkpoints_until_a_closed_shard_ends(faithful_kinesis):
    """The streaming path of the SDF (defer_remainder after every poll) on the in-process runner.

    An open shard would be read forever; a closed one ends, so the run terminates and we can check
    that the resumed residuals read every record exactly once.
    """
    from tests.connectors.kinesis_helpers import split_first_shard

    aws = faithful_kinesis
    client = make_stream(aws, "unbounded", 1)
    records = [(f"k{i % 7}", f"r{i:03d}".encode()) for i in range(95)]
    put(client, "unbounded", records)
    parent = split_first_shard(client, "unbounded")
    ending = next(s.ending_sequence for s in list_shards(client, "unbounded") if s.shard_id == parent)
    config = ReadConfig(bounded=False, batch_limit=10, min_call_interval=0, poll_seconds=0, idle_resume_seconds=0)
    payloads, progress = _run_reader(
        aws, [ShardTask("unbounded", parent, None, ending)], config, default_kinesis_client
    )
    assert sorted(payloads) == sorted(d for _, d in records)
    assert len(progress) >= 10  # one per self-checkpointed chunk
    assert sum(p.records for p in progress) == 95
    last = max(progress, key=lambda p: (p.end.key() if p.end else (-1, -1), p.end.shard_end if p.end else False))
    assert last.end.shard_end and int(last.end.sequence) >= int(ending)
