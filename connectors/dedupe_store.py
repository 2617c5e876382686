"""Cross-batch de-duplication in DynamoDB (Segment drops repeats of a messageId within about 24 h).

Within one run the pipeline core de-duplicates by ``(tenant_id, message_id)``; across runs and
streaming windows this store remembers the first copy: a conditional put of
``tenant_id#message_id -> first source_ref`` with a TTL. A later record with the same key and a
DIFFERENT source_ref is a counted duplicate. The SAME source_ref is a replay of the same Kinesis
record after a crash (its checkpoint was never committed): it is processed again, and the
idempotent sinks make that harmless.
"""

from __future__ import annotations

import datetime as dt
import random
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import apache_beam as beam
from apache_beam.metrics import Metrics
from botocore.exceptions import ClientError

from connectors.aws import AwsSettings
from connectors.kinesis import Backoff

__all__ = ["DedupeStore", "DropSeenDuplicates", "create_dedupe_table", "dedupe_key"]

DEFAULT_TTL = dt.timedelta(hours=24)
_BATCH_GET_MAX = 100
_DEFAULT_BACKOFF = Backoff()


def dedupe_key(tenant_id: str, message_id: str) -> str:
    return f"{tenant_id}#{message_id}"


def create_dedupe_table(aws: AwsSettings, table: str, client=None) -> bool:
    """Create the table (on-demand, TTL on ``expires_at``) if missing; True when created."""
    client = client or aws.client("dynamodb")
    try:
        client.create_table(
            TableName=table,
            AttributeDefinitions=[{"AttributeName": "dedupe_key", "AttributeType": "S"}],
            KeySchema=[{"AttributeName": "dedupe_key", "KeyType": "HASH"}],
            BillingMode="PAY_PER_REQUEST",
        )
    except ClientError as err:
        if err.response["Error"]["Code"] == "ResourceInUseException":
            return False
        raise
    client.get_waiter("table_exists").wait(TableName=table, WaiterConfig={"Delay": 1, "MaxAttempts": 60})
    client.update_time_to_live(
        TableName=table, TimeToLiveSpecification={"Enabled": True, "AttributeName": "expires_at"}
    )
    return True


class DedupeStore:
    """Claims ``(key, source_ref)`` pairs; tells which are duplicates of an earlier, different record.

    Args:
        aws: where DynamoDB is.
        table: the dedupe table (see :func:`create_dedupe_table`).
        ttl: how long a message id is remembered (DynamoDB TTL deletes lazily, so expiry is also
            checked on read).
        client: an injected DynamoDB client (tests), else one from ``aws``.
        workers: parallel conditional puts.
    """

    def __init__(
        self,
        aws: AwsSettings,
        table: str,
        ttl: dt.timedelta = DEFAULT_TTL,
        client=None,
        workers: int = 8,
        backoff: Backoff = _DEFAULT_BACKOFF,
        now: Callable[[], float] = time.time,
    ):
        self.table, self.ttl, self.workers, self.backoff, self.now = table, ttl, workers, backoff, now
        self.client = client or aws.client("dynamodb", max_pool_connections=max(10, workers))
        self.rng = random.Random()
        self._pool: ThreadPoolExecutor | None = None  # one per store: a bundle calls claim() many times

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None

    def _batch_get(self, keys: Sequence[str]) -> dict[str, str]:
        """Live (unexpired) key -> first source_ref, retrying UnprocessedKeys with backoff."""
        found: dict[str, str] = {}
        now = self.now()
        for start in range(0, len(keys), _BATCH_GET_MAX):
            request: dict[str, Any] = {
                self.table: {
                    "Keys": [{"dedupe_key": {"S": k}} for k in keys[start : start + _BATCH_GET_MAX]],
                    "ConsistentRead": True,
                }
            }
            attempt = 0
            while request:
                response = self.client.batch_get_item(RequestItems=request)
                for item in response.get("Responses", {}).get(self.table, []):
                    if float(item.get("expires_at", {}).get("N", "inf")) > now:
                        found[item["dedupe_key"]["S"]] = item["source_ref"]["S"]
                request = response.get("UnprocessedKeys") or {}
                if request:
                    if attempt >= self.backoff.max_attempts:
                        raise RuntimeError(f"BatchGetItem on {self.table}: keys still unprocessed")
                    time.sleep(self.backoff.delay(attempt, self.rng))
                    attempt += 1
        return found

    def _put_first(self, key: str, source_ref: str) -> str:
        """Conditionally claim ``key`` for ``source_ref``; returns the source_ref that owns it."""
        now = self.now()
        try:
            self.client.put_item(
                TableName=self.table,
                Item=self._item(key, source_ref, now),
                ConditionExpression="attribute_not_exists(dedupe_key) OR expires_at < :now",
                ExpressionAttributeValues={":now": {"N": str(int(now))}},
                ReturnValuesOnConditionCheckFailure="ALL_OLD",
            )
            return source_ref
        except ClientError as err:
            if err.response["Error"]["Code"] != "ConditionalCheckFailedException":
                raise
            holder = err.response.get("Item", {}).get("source_ref", {}).get("S")
        if holder is not None:  # someone claimed it between our read and our put: the failed put says who
            return holder
        owner = self._batch_get([key]).get(key)
        return owner if owner is not None else self._put_first(key, source_ref)

    def claim(self, items: Sequence[tuple[str, str]]) -> list[bool]:
        """For each ``(key, source_ref)``: True when it repeats a key first seen with another source_ref."""
        unique = list(dict.fromkeys(key for key, _ in items))
        owners = self._batch_get(unique)
        first_ref: dict[str, str] = {}
        for key, ref in items:  # the first unseen occurrence in this batch is the one to claim
            if key not in owners and key not in first_ref:
                first_ref[key] = ref
        if first_ref:
            # one conditional put per new key, in parallel: TransactWriteItems would cost twice the
            # write units, and moto copies the whole table per transaction (quadratic in tests)
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="dedupe-claim")
            owners.update(self._pool.map(lambda kv: (kv[0], self._put_first(*kv)), first_ref.items()))
        return [owners[key] != ref for key, ref in items]

    def _item(self, key: str, source_ref: str, now: float) -> dict[str, Any]:
        return {
            "dedupe_key": {"S": key},
            "source_ref": {"S": source_ref},
            "first_seen": {"N": f"{now:.3f}"},
            "expires_at": {"N": str(int(now + self.ttl.total_seconds()))},
        }


class _DropSeenFn(beam.DoFn):
    def __init__(self, aws: AwsSettings, table: str, ttl: dt.timedelta, ref_field: str):
        self.aws, self.table, self.ttl, self.ref_field = aws, table, ttl, ref_field

    def setup(self):
        self.store = DedupeStore(self.aws, self.table, self.ttl)
        self.dropped = Metrics.counter("livora", "duplicates_cross_batch")

    def teardown(self):
        if getattr(self, "store", None) is not None:
            self.store.close()

    def process(self, rows: list[Mapping]) -> Iterable:
        keys = [(dedupe_key(r["tenant_id"], r["message_id"]), r.get(self.ref_field) or "") for r in rows]
        for row, duplicate in zip(rows, self.store.claim(keys), strict=True):
            if duplicate:
                self.dropped.inc()
                yield beam.pvalue.TaggedOutput("duplicates", (row["tenant_id"], row["message_id"]))
            else:
                yield row


class _DropSeenInBatchesFn(_DropSeenFn):
    """Same, over ``(key, [row, ...])`` batches (the pipeline core's lake-file batches keep their shape)."""

    def process(self, element) -> Iterable:
        key, rows = element
        kept = []
        for out in super().process(rows):
            if isinstance(out, beam.pvalue.TaggedOutput):
                yield out
            else:
                kept.append(out)
        if kept:
            yield key, kept


class DropSeenDuplicates(beam.PTransform):
    """Rows -> ``.rows`` (first copies and replays) and ``.duplicates`` ((tenant_id, message_id)).

    Args:
        aws: where DynamoDB is.
        table: the dedupe table.
        ttl: dedup horizon (24 h like Segment).
        ref_field: row key holding the record's source_ref.
        batches: the input holds ``(key, [row, ...])`` batches; ``.rows`` keeps that shape.
    """

    def __init__(
        self,
        aws: AwsSettings,
        table: str,
        ttl: dt.timedelta = DEFAULT_TTL,
        ref_field: str = "_source_ref",
        batches: bool = False,
    ):
        super().__init__()
        if not table:
            raise ValueError("DropSeenDuplicates needs a table name")
        self.aws, self.table, self.ttl, self.ref_field, self.batches = aws, table, ttl, ref_field, batches

    def expand(self, rows):
        if self.batches:
            fn = _DropSeenInBatchesFn(self.aws, self.table, self.ttl, self.ref_field)
            return rows | "ClaimMessageIds" >> beam.ParDo(fn).with_outputs("duplicates", main="rows")
        return (
            rows
            | "BatchForDedupe" >> beam.BatchElements(min_batch_size=50, max_batch_size=500)
            | "ClaimMessageIds"
            >> beam.ParDo(_DropSeenFn(self.aws, self.table, self.ttl, self.ref_field)).with_outputs(
                "duplicates", main="rows"
            )
        )
