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
import threading
import time
import uuid
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
    "ConsumerLease",
    "LeaseHeldError",
    "LeaseLostError",
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
                if item["shard_id"]["S"] != LEASE_ROW:
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
        return [
            {k: next(iter(v.values())) for k, v in item.items()}
            for item in page.get("Items", [])
            if item["shard_id"]["S"] != LEASE_ROW
        ]

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

    def commit(
        self, stream: str, shard_id: str, checkpoint: Checkpoint, owner: str | None = None, fence: dict | None = None
    ) -> bool:
        """Store ``checkpoint`` unless the stored one is already further; False when it was further.

        With ``fence`` (:meth:`ConsumerLease.fence`) the write happens only while that lease is held;
        a lost lease raises :class:`LeaseLostError`.
        """
        progress = ShardProgress(stream, shard_id, None, checkpoint, 0, None)
        update = self._update(progress, owner or default_owner())
        try:
            if fence is None:
                self.client.update_item(**update)
            else:
                self.client.transact_write_items(TransactItems=[{"Update": update}, fence])
        except ClientError as err:
            code = err.response["Error"]["Code"]
            if code == "TransactionCanceledException":
                self._raise_if_fenced(fence)
            elif code != "ConditionalCheckFailedException":
                raise
            log.warning("checkpoint %s/%s not moved back to %s: a newer one is stored", stream, shard_id, checkpoint)
            return False
        return True

    def commit_progress(
        self, progress: Iterable[ShardProgress], owner: str | None = None, fence: dict | None = None
    ) -> list[ShardProgress]:
        """Commit the end positions of a whole pass in one transaction (all shards move, or none).

        All-or-nothing matters: a pass's lake files are named after its start positions, so a
        half-committed pass would rerun under a new name and write some rows twice. Falls back to
        one conditional write per shard if a stored checkpoint is already further (another owner).
        ``fence``: a lease condition that must hold in the same transaction (a consumer whose lease was
        taken over never commits). Returns the progress items whose checkpoint moved.
        """
        items = [p for p in progress if p.end is not None]
        if not items:
            return []
        owner = owner or default_owner()
        if len(items) <= 99:
            try:
                writes = [{"Update": self._update(p, owner)} for p in items]
                self.client.transact_write_items(TransactItems=writes + ([fence] if fence else []))
                return items
            except ClientError as err:
                if err.response["Error"]["Code"] != "TransactionCanceledException":
                    raise
                self._raise_if_fenced(fence)
                log.warning("checkpoint transaction cancelled (%s): committing shard by shard", err)
        return [p for p in items if self.commit(p.stream, p.shard_id, p.end, owner, fence)]

    def _raise_if_fenced(self, fence: dict | None) -> None:
        if fence is None:
            return
        check = fence["ConditionCheck"]
        item = self.client.get_item(TableName=self.table, Key=check["Key"], ConsistentRead=True).get("Item", {})
        if item.get("lease_token", {}).get("S") != check["ExpressionAttributeValues"][":token"]["S"]:
            raise LeaseLostError(
                f"the consumer lease of {check['Key']['stream']['S']} is now held by "
                f"{item.get('owner', {}).get('S', 'nobody')}: this pass does not commit"
            )


LEASE_ROW = "__lease__"
"""The lease item's sort key in the checkpoint table (no shard id starts with an underscore)."""


class LeaseHeldError(RuntimeError):
    """Another live consumer of the same application holds the stream's lease."""


class LeaseLostError(RuntimeError):
    """This consumer's lease expired and was taken over: it must not commit or clean up."""


class ConsumerLease:
    """One owner per (consumer application, stream), as the KCL's lease table does it.

    The lease is an item of the checkpoint table, taken with a conditional write (free, expired, or
    already ours), kept alive by a heartbeat, and checked inside every checkpoint transaction
    (:meth:`fence`). A second consumer therefore waits, or takes over only an expired lease, and a
    consumer that lost its lease can neither commit nor remove files it does not own. Each holding
    gets a fresh ``token``; file names of a pass carry it, so a stalled former owner never overwrites
    the new owner's files.
    """

    def __init__(self, store: CheckpointStore, stream: str, owner: str | None = None, seconds: float = 30.0):
        if seconds <= 0:
            raise ValueError("lease seconds must be > 0")
        self.store, self.stream, self.seconds = store, stream, seconds
        self.owner = owner or default_owner()
        self.token: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.lost = False

    @property
    def _key(self) -> dict[str, Any]:
        return {"stream": {"S": self.stream}, "shard_id": {"S": LEASE_ROW}}

    @staticmethod
    def _now_ms() -> int:
        return int(time.time() * 1000)

    def holder(self) -> dict[str, Any]:
        """The stored lease (owner, token, expiry in epoch ms), {} when none."""
        item = self.store.client.get_item(TableName=self.store.table, Key=self._key, ConsistentRead=True)
        return {k: next(iter(v.values())) for k, v in item.get("Item", {}).items()}

    def try_acquire(self) -> bool:
        """Take the lease if it is free, expired or ours; True when held now."""
        now, token = self._now_ms(), uuid.uuid4().hex
        try:
            self.store.client.put_item(
                TableName=self.store.table,
                Item={
                    **self._key,
                    "owner": {"S": self.owner},
                    "lease_token": {"S": token},
                    "lease_expires_ms": {"N": str(now + int(self.seconds * 1000))},
                    "acquired_at": {"S": dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")},
                },
                ConditionExpression="attribute_not_exists(lease_token) OR lease_expires_ms < :now OR #o = :me",
                ExpressionAttributeNames={"#o": "owner"},
                ExpressionAttributeValues={":now": {"N": str(now)}, ":me": {"S": self.owner}},
            )
        except ClientError as err:
            if err.response["Error"]["Code"] == "ConditionalCheckFailedException":
                return False
            raise
        self.token, self.lost = token, False
        return True

    def acquire(self, wait_seconds: float, poll_seconds: float = 1.0, say=log.info) -> None:
        """Take the lease, waiting up to ``wait_seconds`` for its holder to finish or expire."""
        deadline, told = time.monotonic() + wait_seconds, False
        while not self.try_acquire():
            held = self.holder()
            left = (int(held.get("lease_expires_ms", 0)) - self._now_ms()) / 1000
            if time.monotonic() >= deadline:
                raise LeaseHeldError(
                    f"stream {self.stream} is being consumed by {held.get('owner', '?')} "
                    f"(its lease runs {max(left, 0):.0f}s more); not starting a second consumer"
                )
            if not told:
                say(
                    "waiting for %s to release the lease of %s (expires in %.0fs)", held.get("owner"), self.stream, left
                )
                told = True
            time.sleep(poll_seconds)
        self._start_heartbeat()

    def renew(self) -> bool:
        """Extend the lease if still ours; False (and ``lost``) when it was taken over."""
        try:
            self.store.client.update_item(
                TableName=self.store.table,
                Key=self._key,
                UpdateExpression="SET lease_expires_ms = :exp",
                ConditionExpression="lease_token = :token",
                ExpressionAttributeValues={
                    ":exp": {"N": str(self._now_ms() + int(self.seconds * 1000))},
                    ":token": {"S": self.token or ""},
                },
            )
        except ClientError as err:
            if err.response["Error"]["Code"] != "ConditionalCheckFailedException":
                raise
            self.lost = True
            return False
        return True

    def ensure(self) -> None:
        """Raise :class:`LeaseLostError` unless the lease is still ours (checked against the table)."""
        if self.token is None or self.lost or self.holder().get("lease_token") != self.token:
            self.lost = True
            raise LeaseLostError(f"lost the consumer lease of {self.stream}")

    def fence(self) -> dict[str, Any]:
        """A TransactWriteItems ConditionCheck that holds only while this lease is ours."""
        if self.token is None:
            raise LeaseLostError("no lease held")
        return {
            "ConditionCheck": {
                "TableName": self.store.table,
                "Key": self._key,
                "ConditionExpression": "lease_token = :token",
                "ExpressionAttributeValues": {":token": {"S": self.token}},
            }
        }

    def _start_heartbeat(self) -> None:
        self._stop.clear()

        def beat():
            while not self._stop.wait(self.seconds / 3):
                try:
                    if not self.renew():
                        log.error("consumer lease of %s was taken over: stopping heartbeats", self.stream)
                        return
                except Exception as err:  # transient (DynamoDB unreachable): the next beat retries
                    log.warning("lease heartbeat of %s failed: %s", self.stream, err)

        self._thread = threading.Thread(target=beat, name=f"lease-{self.stream}", daemon=True)
        self._thread.start()

    def release(self) -> None:
        """Stop the heartbeat and free the lease (only if still ours) so a successor starts at once."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self.token is None:
            return
        try:
            self.store.client.update_item(
                TableName=self.store.table,
                Key=self._key,
                UpdateExpression="SET lease_expires_ms = :zero",
                ConditionExpression="lease_token = :token",
                ExpressionAttributeValues={":zero": {"N": "0"}, ":token": {"S": self.token}},
            )
        except ClientError as err:
            if err.response["Error"]["Code"] != "ConditionalCheckFailedException":
                raise
        self.token = None


class _CommitFn(beam.DoFn):
    def __init__(
        self, aws: AwsSettings, table: str, owner: str | None, hold_seconds_env: str | None, fence: dict | None
    ):
        self.aws, self.table, self.owner, self.hold_env, self.fence = aws, table, owner, hold_seconds_env, fence

    def setup(self):
        self.store = CheckpointStore(self.aws, self.table)
        self.committed = Metrics.counter("kinesis", "checkpoints_committed")
        self.refused = Metrics.counter("kinesis", "checkpoints_refused")

    def process(self, element, *sinks_done):
        del sinks_done  # only there to order this step after the sinks
        _stream, progress = element
        progress = list(progress)
        _maybe_hold(self.hold_env)
        moved = self.store.commit_progress(progress, self.owner, self.fence)
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
        fence: :meth:`ConsumerLease.fence` of the lease this pass runs under (None: no lease check).
    """

    HOLD_ENV = "LIVORA_STREAM_HOLD_BEFORE_COMMIT_S"

    def __init__(
        self, aws: AwsSettings, table: str, after: Iterable = (), owner: str | None = None, fence: dict | None = None
    ):
        super().__init__()
        self.aws, self.table, self.after, self.owner, self.fence = aws, table, list(after), owner, fence

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
            | "CommitCheckpoint"
            >> beam.ParDo(_CommitFn(self.aws, self.table, self.owner, self.HOLD_ENV, self.fence), *side)
        )
