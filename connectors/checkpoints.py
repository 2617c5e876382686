"""Durable Kinesis checkpoints in DynamoDB, one table per consumer application (like the KCL lease table).

Item per ``(stream, shard_id)``: the last consumed ``sequence_number`` (+ ``sub_sequence`` inside a
KPL aggregate), ``shard_end`` once a closed shard is fully read, ``owner`` and ``updated_at``.
A checkpoint never moves backwards: every write is conditional on the stored position being at or
before the new one (``position`` is a zero-padded sortable string, because Kinesis sequence
numbers have more digits than a DynamoDB number holds).

Checkpoints are committed only after the records up to them are durably written to every sink;
a restart resumes after the last checkpoint (at-least-once, exactly-once in effect with idempotent
sinks).
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import socket
import time
from collections.abc import Iterable
from typing import Any

import apache_beam as beam
from apache_beam.metrics import Metrics
from botocore.exceptions import ClientError

from connectors.aws import AwsSettings
from connectors.kinesis import Checkpoint, ShardProgress

__all__ = [
    "CheckpointStore",
    "CommitCheckpoints",
    "checkpoint_table_name",
    "create_checkpoint_table",
    "default_owner",
    "position_key",
]

log = logging.getLogger(__name__)


def checkpoint_table_name(consumer_app: str) -> str:
    return f"livora-checkpoints-{consumer_app}"


def default_owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def position_key(checkpoint: Checkpoint) -> str:
    """Sortable text: sequence (60 digits) then sub-sequence (20 digits; whole record = largest)."""
    seq, sub = checkpoint.key()
    return f"{seq:060d}.{sub:020d}"


def create_checkpoint_table(aws: AwsSettings, table: str, client=None) -> bool:
    """Create the table if missing (on-demand billing); True when it was created."""
    client = client or aws.client("dynamodb")
    try:
        client.create_table(
            TableName=table,
            AttributeDefinitions=[
                {"AttributeName": "stream", "AttributeType": "S"},
                {"AttributeName": "shard_id", "AttributeType": "S"},
            ],
            KeySchema=[
                {"AttributeName": "stream", "KeyType": "HASH"},
                {"AttributeName": "shard_id", "KeyType": "RANGE"},
            ],
            BillingMode="PAY_PER_REQUEST",
        )
    except ClientError as err:
        if err.response["Error"]["Code"] == "ResourceInUseException":
            return False
        raise
    client.get_waiter("table_exists").wait(TableName=table, WaiterConfig={"Delay": 1, "MaxAttempts": 60})
    return True


def _from_item(item: dict[str, Any]) -> Checkpoint:
    sub = item.get("sub_sequence")
    return Checkpoint(
        sequence=item["sequence_number"]["S"],
        sub_sequence=int(sub["N"]) if sub else None,
        shard_end=bool(item.get("shard_end", {}).get("BOOL", False)),
    )


class CheckpointStore:
    """Reads and conditionally writes the checkpoints of one consumer application."""

    def __init__(self, aws: AwsSettings, table: str, client=None):
        self.aws, self.table = aws, table
        self.client = client or aws.client("dynamodb")

    def check_exists(self) -> None:
        """Fail early, with the fix in the message, when the table is missing."""
        try:
            self.client.describe_table(TableName=self.table)
        except ClientError as err:
            if err.response["Error"]["Code"] == "ResourceNotFoundException":
                raise ValueError(
                    f"checkpoint table {self.table!r} does not exist: create it with "
                    "`python -m infra.resources --profile local|aws --consumer-app NAME`"
                ) from err
            raise

    def load(self, stream: str) -> dict[str, Checkpoint]:
        """Every shard's checkpoint of ``stream`` (strongly consistent)."""
        found: dict[str, Checkpoint] = {}
        kwargs: dict[str, Any] = {
            "TableName": self.table,
            "KeyConditionExpression": "#s = :s",
            "ExpressionAttributeNames": {"#s": "stream"},
            "ExpressionAttributeValues": {":s": {"S": stream}},
            "ConsistentRead": True,
        }
        while True:
            page = self.client.query(**kwargs)
            for item in page.get("Items", []):
                found[item["shard_id"]["S"]] = _from_item(item)
            if "LastEvaluatedKey" not in page:
                return found
            kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    def details(self, stream: str) -> list[dict[str, Any]]:
        """Raw checkpoint items (owner, updated_at ...), for progress output and docs."""
        page = self.client.query(
            TableName=self.table,
            KeyConditionExpression="#s = :s",
            ExpressionAttributeNames={"#s": "stream"},
            ExpressionAttributeValues={":s": {"S": stream}},
            ConsistentRead=True,
        )
        return [{k: next(iter(v.values())) for k, v in item.items()} for item in page.get("Items", [])]

    def _update(self, progress: ShardProgress, owner: str) -> dict[str, Any]:
        """UpdateItem arguments that move one checkpoint forward (never backwards)."""
        checkpoint = progress.end
        values: dict[str, Any] = {
            ":seq": {"S": checkpoint.sequence},
            ":pos": {"S": position_key(checkpoint)},
            ":end": {"BOOL": checkpoint.shard_end},
            ":owner": {"S": owner},
            ":now": {"S": dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")},
        }
        update = "SET sequence_number = :seq, #pos = :pos, shard_end = :end, #owner = :owner, updated_at = :now"
        if checkpoint.sub_sequence is None:
            update += " REMOVE sub_sequence"
        else:
            update = update.replace("updated_at = :now", "updated_at = :now, sub_sequence = :sub")
            values[":sub"] = {"N": str(checkpoint.sub_sequence)}
        return {
            "TableName": self.table,
            "Key": {"stream": {"S": progress.stream}, "shard_id": {"S": progress.shard_id}},
            "UpdateExpression": update,
            "ConditionExpression": "attribute_not_exists(#pos) OR #pos <= :pos",
            "ExpressionAttributeNames": {"#pos": "position", "#owner": "owner"},
            "ExpressionAttributeValues": values,
        }

    def commit(self, stream: str, shard_id: str, checkpoint: Checkpoint, owner: str | None = None) -> bool:
        """Store ``checkpoint`` unless the stored one is already further; False when it was further."""
        progress = ShardProgress(stream, shard_id, None, checkpoint, 0, None)
        try:
            self.client.update_item(**self._update(progress, owner or default_owner()))
        except ClientError as err:
            if err.response["Error"]["Code"] != "ConditionalCheckFailedException":
                raise
            log.warning("checkpoint %s/%s not moved back to %s: a newer one is stored", stream, shard_id, checkpoint)
            return False
        return True

    def commit_progress(self, progress: Iterable[ShardProgress], owner: str | None = None) -> list[ShardProgress]:
        """Commit the end positions of a whole pass in one transaction (all shards move, or none).

        All-or-nothing matters: a pass's lake files are named after its start positions, so a
        half-committed pass would rerun under a new name and write some rows twice. Falls back to
        one conditional write per shard if a stored checkpoint is already further (another owner).
        Returns the progress items whose checkpoint moved.
        """
        items = [p for p in progress if p.end is not None]
        if not items:
            return []
        owner = owner or default_owner()
        if len(items) <= 100:
            try:
                self.client.transact_write_items(TransactItems=[{"Update": self._update(p, owner)} for p in items])
                return items
            except ClientError as err:
                if err.response["Error"]["Code"] != "TransactionCanceledException":
                    raise
                log.warning("checkpoint transaction cancelled (%s): committing shard by shard", err)
        return [p for p in items if self.commit(p.stream, p.shard_id, p.end, owner)]


class _CommitFn(beam.DoFn):
    def __init__(self, aws: AwsSettings, table: str, owner: str | None, hold_seconds_env: str | None):
        self.aws, self.table, self.owner, self.hold_env = aws, table, owner, hold_seconds_env

    def setup(self):
        self.store = CheckpointStore(self.aws, self.table)
        self.committed = Metrics.counter("kinesis", "checkpoints_committed")
        self.refused = Metrics.counter("kinesis", "checkpoints_refused")

    def process(self, element, *sinks_done):
        del sinks_done  # only there to order this step after the sinks
        _stream, progress = element
        progress = list(progress)
        _maybe_hold(self.hold_env)
        moved = self.store.commit_progress(progress, self.owner)
        self.committed.inc(len(moved))
        self.refused.inc(sum(1 for p in progress if p.end is not None) - len(moved))
        yield from moved


def _maybe_hold(env_name: str | None) -> None:
    """Test hook: pause before the commit (the crash test kills the process in this window)."""
    if not env_name:
        return
    seconds = float(os.environ.get(env_name, "0") or 0)
    if seconds > 0:
        marker = os.environ.get(env_name + "_MARKER")
        if marker:
            with open(marker, "w") as handle:
                handle.write("holding\n")
        time.sleep(seconds)


class CommitCheckpoints(beam.PTransform):
    """Commit ShardProgress end positions, strictly after ``after`` (the sinks' outputs) are complete.

    Each PCollection in ``after`` is a side input of the commit step, so the runner must finish
    them (in the same window, when streaming) before any checkpoint moves.

    Args:
        aws: where DynamoDB is.
        table: the consumer application's checkpoint table.
        after: sink result PCollections the commit waits for.
        owner: who commits (default host:pid).
    """

    HOLD_ENV = "LIVORA_STREAM_HOLD_BEFORE_COMMIT_S"

    def __init__(self, aws: AwsSettings, table: str, after: Iterable = (), owner: str | None = None):
        super().__init__()
        self.aws, self.table, self.after, self.owner = aws, table, list(after), owner

    def expand(self, progress):
        # a one-number summary of each sink output: enough to order the commit after it, cheap to ship
        side = [
            beam.pvalue.AsList(pc | f"SinkDone{i}" >> beam.combiners.Count.Globally().without_defaults())
            for i, pc in enumerate(self.after)
        ]
        return (
            progress
            | "KeyByStream" >> beam.Map(lambda p: (p.stream, p))
            | "GatherPass" >> beam.GroupByKey()  # one transaction per stream (and window)
            | "CommitCheckpoint" >> beam.ParDo(_CommitFn(self.aws, self.table, self.owner, self.HOLD_ENV), *side)
        )
