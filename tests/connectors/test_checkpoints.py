"""DynamoDB checkpoints: per stream and shard, never backwards, resumable (moto over HTTP)."""

from __future__ import annotations

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions

from connectors.checkpoints import (
    CheckpointStore,
    CommitCheckpoints,
    checkpoint_table_name,
    create_checkpoint_table,
    position_key,
)
from connectors.kinesis import Checkpoint, ShardProgress

pytestmark = pytest.mark.integration


def test_position_key_sorts_like_the_positions():
    positions = [
        Checkpoint("9"),
        Checkpoint("10", 0),
        Checkpoint("10", 7),
        Checkpoint("10"),
        Checkpoint(str(2**100)),
        Checkpoint(str(2**100 + 1), 3),
    ]
    keys = [position_key(p) for p in positions]
    assert keys == sorted(keys)
    assert [p.key() for p in positions] == sorted(p.key() for p in positions)


def test_commit_load_and_never_move_backwards(aws):
    table = checkpoint_table_name("analytics")
    assert create_checkpoint_table(aws, table) is True
    assert create_checkpoint_table(aws, table) is False  # idempotent
    store = CheckpointStore(aws, table)
    assert store.load("events") == {}
    assert store.commit("events", "shardId-000000000000", Checkpoint("100"), owner="w1")
    assert store.commit("events", "shardId-000000000001", Checkpoint("7", 3), owner="w1")
    assert store.commit("other-stream", "shardId-000000000000", Checkpoint("5"), owner="w1")
    # backwards: refused, stored value unchanged
    assert not store.commit("events", "shardId-000000000000", Checkpoint("99"), owner="w2")
    assert not store.commit("events", "shardId-000000000001", Checkpoint("7", 2), owner="w2")
    # same position again (a rerun committing the same batch): allowed, no change
    assert store.commit("events", "shardId-000000000000", Checkpoint("100"), owner="w1")
    # forward, incl. from inside an aggregate to the whole record, and the shard end mark
    assert store.commit("events", "shardId-000000000001", Checkpoint("7"), owner="w2")
    assert store.commit("events", "shardId-000000000000", Checkpoint("120", shard_end=True), owner="w2")
    loaded = store.load("events")
    assert loaded == {
        "shardId-000000000000": Checkpoint("120", None, shard_end=True),
        "shardId-000000000001": Checkpoint("7", None),
    }
    details = {d["shard_id"]: d for d in store.details("events")}
    assert details["shardId-000000000000"]["owner"] == "w2"
    assert details["shardId-000000000000"]["updated_at"].endswith("+00:00")
    assert "sub_sequence" not in details["shardId-000000000001"]


def test_huge_sequence_numbers_compare_as_numbers_not_text(aws):
    create_checkpoint_table(aws, "cp-huge")
    store = CheckpointStore(aws, "cp-huge")
    big = "49590338271490256608559692538361571095921575989136588898"  # a real-looking Kinesis number
    assert store.commit("s", "shard", Checkpoint(big))
    assert not store.commit("s", "shard", Checkpoint("9" * 20))  # shorter text, smaller number
    assert store.commit("s", "shard", Checkpoint(str(int(big) + 1)))
    assert store.load("s")["shard"].sequence == str(int(big) + 1)


def test_commit_step_runs_after_the_sinks_and_commits_progress(aws):
    create_checkpoint_table(aws, "cp-beam")
    progress = [
        ShardProgress("s", "shard-a", None, Checkpoint("12"), 12, 0),
        ShardProgress("s", "shard-b", None, None, 0, 0),  # nothing read: nothing to commit
        ShardProgress("s", "shard-c", Checkpoint("3"), Checkpoint("9", shard_end=True), 6, 0),
    ]
    with beam.Pipeline(options=PipelineOptions(runner="FnApiRunner")) as p:
        sink = p | "Sink" >> beam.Create(["file-1", "file-2"])
        _ = p | "Progress" >> beam.Create(progress) | CommitCheckpoints(aws, "cp-beam", after=[sink], owner="test")
    assert CheckpointStore(aws, "cp-beam").load("s") == {
        "shard-a": Checkpoint("12"),
        "shard-c": Checkpoint("9", shard_end=True),
    }


def test_one_lease_holder_per_stream_and_a_fenced_commit(aws):
    """A second consumer cannot take a live lease; it takes an expired one; the old holder can then
    neither commit nor free the new holder's lease."""
    import time

    from connectors.checkpoints import ConsumerLease, LeaseHeldError, LeaseLostError

    table = checkpoint_table_name("leases")
    create_checkpoint_table(aws, table)
    store = CheckpointStore(aws, table)
    a = ConsumerLease(store, "events", owner="A", seconds=60)
    b = ConsumerLease(store, "events", owner="B", seconds=60)
    assert a.try_acquire() and not b.try_acquire()
    with pytest.raises(LeaseHeldError, match="consumed by A"):
        b.acquire(wait_seconds=0.3, poll_seconds=0.1)
    assert ConsumerLease(store, "other-stream", owner="B").try_acquire()  # leases are per stream
    assert store.load("events") == {}  # the lease row is not a shard checkpoint

    progress = [ShardProgress("events", "shardId-000000000000", None, Checkpoint("100"), 1, None)]
    assert store.commit_progress(progress, "A", a.fence()) == progress

    a_short = ConsumerLease(store, "events", owner="A", seconds=0.2)  # A again, with a short lease
    assert a_short.try_acquire()
    time.sleep(0.4)  # ... which expires without heartbeats
    assert b.try_acquire() and b.holder()["owner"] == "B"
    later = [ShardProgress("events", "shardId-000000000000", None, Checkpoint("200"), 1, None)]
    with pytest.raises(LeaseLostError, match="held by B"):
        store.commit_progress(later, "A", a_short.fence())
    assert store.load("events")["shardId-000000000000"] == Checkpoint("100")
    with pytest.raises(LeaseLostError):
        a_short.ensure()
    a_short.release()  # releasing a lease that is no longer ours leaves the new holder alone
    assert b.holder()["owner"] == "B" and not a.try_acquire()
    assert store.commit_progress(later, "B", b.fence()) == later
    b.release()
    assert a.try_acquire()  # released: the next consumer starts at once


def test_heartbeats_keep_a_lease_past_its_length(aws):
    import time

    from connectors.checkpoints import ConsumerLease

    table = checkpoint_table_name("beats")
    create_checkpoint_table(aws, table)
    store = CheckpointStore(aws, table)
    a = ConsumerLease(store, "events", owner="A", seconds=0.9)
    a.acquire(wait_seconds=0)
    try:
        time.sleep(2.0)  # more than twice the lease length
        assert not ConsumerLease(store, "events", owner="B", seconds=1).try_acquire()
        a.ensure()
    finally:
        a.release()
