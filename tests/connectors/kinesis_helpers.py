"""Shared by the Kinesis, streaming-pipeline and benchmark tests: put helpers and a split-faithful moto server."""

from __future__ import annotations

import contextlib
import hashlib
from collections import OrderedDict
from collections.abc import Iterator

from connectors.aws import AwsSettings
from connectors.kinesis import default_kinesis_client


def put(client, stream: str, records: list[tuple[str, bytes]]) -> None:
    """PutRecords in batches of 500 (the API limit); every record must be accepted."""
    for start in range(0, len(records), 500):
        chunk = [{"PartitionKey": k, "Data": d} for k, d in records[start : start + 500]]
        response = client.put_records(StreamName=stream, Records=chunk)
        assert response["FailedRecordCount"] == 0


def make_stream(aws: AwsSettings, name: str, shards: int):
    client = default_kinesis_client(aws)
    client.create_stream(StreamName=name, ShardCount=shards)
    client.get_waiter("stream_exists").wait(StreamName=name, WaiterConfig={"Delay": 0.2})
    return client


def split_first_shard(client, stream: str) -> str:
    """Split the stream's first shard in the middle of its hash range; returns the parent's id."""
    from connectors.kinesis import list_shards

    parent = next(s for s in list_shards(client, stream) if not s.closed)
    lo, hi = int(parent.starting_hash_key), int(parent.ending_hash_key)
    client.split_shard(StreamName=stream, ShardToSplit=parent.shard_id, NewStartingHashKey=str((lo + hi) // 2))
    return parent.shard_id


@contextlib.contextmanager
def faithful_kinesis_server() -> Iterator[AwsSettings]:
    """A moto server (over HTTP, in this process) whose split behaves like Kinesis.

    moto 5 keeps routing puts to the closed parent after split_shard (its key lookup ignores
    whether a shard is open) and re-puts the parent's records; real Kinesis leaves the parent's
    records where they are and routes new ones to the children. Patch those two spots only.
    """
    from moto.kinesis import models
    from moto.server import ThreadedMotoServer

    from infra.local_stack import free_port

    original_lookup, original_split = models.Stream.get_shard_for_key, models.Stream.split_shard

    def lookup(self, partition_key, explicit_hash_key):
        key = int(explicit_hash_key) if explicit_hash_key else int(hashlib.md5(partition_key.encode()).hexdigest(), 16)
        for shard in self.shards.values():
            if shard.is_open and shard.starting_hash <= key <= shard.ending_hash:
                return shard
        return original_lookup(self, partition_key, explicit_hash_key)

    def split(self, shard_to_split, new_starting_hash_key):
        parent = self.shards[shard_to_split]
        kept, parent.records = parent.records, OrderedDict()
        original_split(self, shard_to_split, new_starting_hash_key)
        parent.records = kept

    models.Stream.get_shard_for_key, models.Stream.split_shard = lookup, split
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield AwsSettings.local(f"http://127.0.0.1:{port}")
    finally:
        server.stop()
        models.Stream.get_shard_for_key, models.Stream.split_shard = original_lookup, original_split
