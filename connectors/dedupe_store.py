"""Cross-batch de-duplication in DynamoDB (Segment drops repeats of a messageId within about 24 h).

Within one run the pipeline core de-duplicates by ``(tenant_id, message_id)``; across runs and
streaming windows this store remembers the first copy: a conditional put of
``tenant_id#message_id -> first source_ref`` with a TTL. A later record with the same key and a
DIFFERENT source_ref is a counted duplicate. The SAME source_ref is a replay of the same Kinesis
record after a crash (its checkpoint was never committed): it is processed again, and the
idempotent sinks make that harmless.

Two ways to claim. :meth:`DedupeStore.claim` (any number of concurrent claimants, e.g. the
streaming form's windows in flight): one conditional PutItem per new key, first claim wins.
:meth:`DedupeStore.claim_in_pass` (the local incremental mode, whose passes run one at a time
under the consumer lease): the store has one writer, so it reads the keys (BatchGetItem), decides,
and writes the new claims with unconditional BatchWriteItem calls behind the pass's work
(:meth:`DedupeStore.flush` before the bundle ends, so before the checkpoint commit). Each claim
records its pass and attempt: a claim left by a dead attempt of the same pass is taken over by the
rerun, so its survivor is kept even when the rerun, having read further, picks another copy.
"""

from __future__ import annotations

import datetime as dt
import random
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, NamedTuple

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.utils.windowed_value import WindowedValue
from botocore.exceptions import ClientError

from connectors.aws import AwsSettings
from connectors.kinesis import Backoff

__all__ = ["DedupeStore", "DropSeenDuplicates", "create_dedupe_table", "dedupe_key"]

DEFAULT_TTL = dt.timedelta(hours=24)
_BATCH_GET_MAX = 100
_BATCH_WRITE_MAX = 25
_DEFAULT_BACKOFF = Backoff()


def dedupe_key(tenant_id: str, message_id: str) -> str:
    return f"{tenant_id}#{message_id}"


class Claim(NamedTuple):
    source_ref: str
    pass_id: str | None = None  # set by claim_in_pass; None for a conditional put's claim
    attempt: str | None = None


def stale_claim(held: Claim, source_ref: str, pass_id: str, attempt: str) -> bool:
    """A claim made by another attempt of this very pass for another record: the attempt died before
    its commit (a committed pass is never run again), so its choice of survivor does not bind the rerun."""
    return held.source_ref != source_ref and held.pass_id == pass_id and held.attempt != attempt


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
        workers: parallel calls (conditional puts, BatchGetItem pages, BatchWriteItem chunks).
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
        # no client-side validation: the requests are built here, and it costs the pass CPU per attribute
        self.client = client or aws.client(
            "dynamodb", max_pool_connections=max(10, 2 * workers), parameter_validation=False
        )
        self.rng = random.Random()
        self._pool: ThreadPoolExecutor | None = None  # one per store: a bundle calls claim() many times
        self._readers: ThreadPoolExecutor | None = None
        self._writes: list[Future] = []  # claim_in_pass's BatchWriteItem calls in flight
        self._attempt: tuple[str, str] | None = None
        self._mine: dict[str, str] = {}  # key -> source_ref claimed by this store in the current attempt

    def close(self) -> None:
        try:
            self.flush()
        finally:
            for pool in (self._pool, self._readers):
                if pool is not None:
                    pool.shutdown()
            self._pool = self._readers = None

    def _pool_(self) -> ThreadPoolExecutor:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="dedupe-claim")
        return self._pool

    def _read_page(self, keys: Sequence[str]) -> dict[str, Claim]:
        """Live (unexpired) claims of at most 100 keys, retrying UnprocessedKeys with backoff."""
        found: dict[str, Claim] = {}
        now = self.now()
        request: dict[str, Any] = {
            self.table: {"Keys": [{"dedupe_key": {"S": k}} for k in keys], "ConsistentRead": True}
        }
        attempt = 0
        while request:
            response = self.client.batch_get_item(RequestItems=request)
            for item in response.get("Responses", {}).get(self.table, []):
                if float(item.get("expires_at", {}).get("N", "inf")) > now:
                    attempt, _, pass_id = item.get("claimed_by", {}).get("S", "").partition(" ")
                    found[item["dedupe_key"]["S"]] = Claim(item["source_ref"]["S"], pass_id or None, attempt or None)
            request = response.get("UnprocessedKeys") or {}
            if request:
                if attempt >= self.backoff.max_attempts:
                    raise RuntimeError(f"BatchGetItem on {self.table}: keys still unprocessed")
                time.sleep(self.backoff.delay(attempt, self.rng))
                attempt += 1
        return found

    def _read_claims(self, keys: Sequence[str]) -> dict[str, Claim]:
        """Live claims of ``keys``, 100 keys a BatchGetItem, pages in parallel."""
        pages = [keys[i : i + _BATCH_GET_MAX] for i in range(0, len(keys), _BATCH_GET_MAX)]
        if len(pages) <= 1:
            return self._read_page(pages[0]) if pages else {}
        if self._readers is None:  # apart from the writers: reads are on the critical path, writes are not
            self._readers = ThreadPoolExecutor(self.workers, thread_name_prefix="dedupe-read")
        found: dict[str, Claim] = {}
        for page in self._readers.map(self._read_page, pages):
            found.update(page)
        return found

    def _batch_get(self, keys: Sequence[str]) -> dict[str, str]:
        """Live key -> first source_ref."""
        return {key: claim.source_ref for key, claim in self._read_claims(keys).items()}

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
            owners.update(self._pool_().map(lambda kv: (kv[0], self._put_first(*kv)), first_ref.items()))
        return [owners[key] != ref for key, ref in items]

    def claim_in_pass(self, items: Sequence[tuple[str, str]], pass_id: str, attempt: str) -> list[bool]:
        """Same answers as :meth:`claim`, for a single writer: one read per 100 keys, one write per 25 new ones.

        Only correct while this attempt is the table's only claimant (one pass at a time under the
        consumer lease, one consumer application per table); the writes are still in flight on return:
        call :meth:`flush` before anything that relies on them (the checkpoint commit).

        Args:
            items: ``(key, source_ref)`` pairs.
            pass_id: names the pass; the same for every attempt of it (a rerun after a crash).
            attempt: names this attempt; the same for every worker of it (no spaces).
        """
        if not attempt or " " in attempt:
            raise ValueError(f"attempt must be a non-empty word: {attempt!r}")
        if self._attempt != (pass_id, attempt):  # claims made earlier by this attempt, writes maybe in flight
            self._attempt, self._mine = (pass_id, attempt), {}
        unique = [key for key in dict.fromkeys(key for key, _ in items) if key not in self._mine]
        held = self._read_claims(unique)
        owners: dict[str, str] = {}
        new: dict[str, str] = {}
        for key, ref in items:
            if key in owners:
                continue
            if key in self._mine:
                owners[key] = self._mine[key]
            elif key not in held or stale_claim(held[key], ref, pass_id, attempt):
                owners[key] = new[key] = self._mine[key] = ref
            else:
                owners[key] = held[key].source_ref
        if new:
            self._write_behind(
                new, {"claimed_by": {"S": f"{attempt} {pass_id}"}}
            )  # one attribute: moto's cost is per attribute
        return [owners[key] != ref for key, ref in items]

    def _write_behind(self, claims: Mapping[str, str], by: Mapping[str, Any]) -> None:
        now = self.now()
        requests = [{"PutRequest": {"Item": {**self._item(key, ref, now), **by}}} for key, ref in claims.items()]
        for start in range(0, len(requests), _BATCH_WRITE_MAX):
            chunk = requests[start : start + _BATCH_WRITE_MAX]
            self._writes.append(self._pool_().submit(self._batch_write, chunk))

    def _batch_write(self, requests: list[dict]) -> None:
        """One BatchWriteItem, retrying UnprocessedItems with backoff (boto3's batch_writer has none)."""
        pending: dict[str, Any] = {self.table: requests}
        for attempt in range(self.backoff.max_attempts + 1):
            pending = self.client.batch_write_item(RequestItems=pending).get("UnprocessedItems") or {}
            if not pending:
                return
            if attempt < self.backoff.max_attempts:
                time.sleep(self.backoff.delay(attempt, self.rng))
        raise RuntimeError(f"BatchWriteItem on {self.table}: items still unprocessed")

    def flush(self) -> None:
        """Wait for the claims written behind; raises the first failure (the bundle then fails, nothing commits)."""
        writes, self._writes = self._writes, []
        for write in writes:
            write.result()

    def _item(self, key: str, source_ref: str, now: float) -> dict[str, Any]:
        return {
            "dedupe_key": {"S": key},
            "source_ref": {"S": source_ref},
            "first_seen": {"N": f"{now:.3f}"},
            "expires_at": {"N": str(int(now + self.ttl.total_seconds()))},
        }


class _DropSeenFn(beam.DoFn):
    def __init__(
        self, aws: AwsSettings, table: str, ttl: dt.timedelta, ref_field: str, attempt: tuple[str, str] | None = None
    ):
        self.aws, self.table, self.ttl, self.ref_field, self.attempt = aws, table, ttl, ref_field, attempt

    def setup(self):
        self.store = DedupeStore(self.aws, self.table, self.ttl)
        self.dropped = Metrics.counter("livora", "duplicates_cross_batch")

    def finish_bundle(self):
        self.store.flush()  # the claims are durable before the bundle's output counts as done

    def teardown(self):
        if getattr(self, "store", None) is not None:
            self.store.close()

    def process(self, rows: list[Mapping]) -> Iterable:
        keys = [(dedupe_key(r["tenant_id"], r["message_id"]), r.get(self.ref_field) or "") for r in rows]
        claimed = self.store.claim_in_pass(keys, *self.attempt) if self.attempt else self.store.claim(keys)
        for row, duplicate in zip(rows, claimed, strict=True):
            if duplicate:
                self.dropped.inc()
                yield beam.pvalue.TaggedOutput("duplicates", (row["tenant_id"], row["message_id"]))
            else:
                yield row


class _DropSeenInBatchesFn(_DropSeenFn):
    """Same, over ``(key, [row, ...])`` batches (the pipeline core's lake-file batches keep their shape).

    With batched claims, batches are held until ``_HOLD_ROWS`` rows (or the bundle's end) and claimed
    together: a lake-file batch holds a few dozen rows, and one read round trip per batch, waited
    for in turn, cost more than the reads themselves."""

    _HOLD_ROWS = 2000

    def start_bundle(self):
        self._held: list[WindowedValue] = []
        self._held_rows = 0

    def process(self, element, timestamp=beam.DoFn.TimestampParam, window=beam.DoFn.WindowParam) -> Iterable:
        if self.attempt is None:
            yield from self._decide([WindowedValue(element, timestamp, [window])])
            return
        self._held.append(WindowedValue(element, timestamp, [window]))
        self._held_rows += len(element[1])
        if self._held_rows >= self._HOLD_ROWS:
            yield from self._release()

    def finish_bundle(self):
        yield from self._release()
        super().finish_bundle()

    def _release(self) -> Iterable:
        held, self._held, self._held_rows = self._held, [], 0
        return self._decide(held) if held else ()

    def _decide(self, batches: list[WindowedValue]) -> Iterable:
        rows = [row for batch in batches for row in batch.value[1]]
        keys = [(dedupe_key(r["tenant_id"], r["message_id"]), r.get(self.ref_field) or "") for r in rows]
        claimed = iter(self.store.claim_in_pass(keys, *self.attempt) if self.attempt else self.store.claim(keys))
        for batch in batches:
            key, kept = batch.value[0], []
            for row in batch.value[1]:
                if next(claimed):
                    self.dropped.inc()
                    duplicate = batch.with_value((row["tenant_id"], row["message_id"]))
                    yield beam.pvalue.TaggedOutput("duplicates", duplicate)
                else:
                    kept.append(row)
            if kept:
                yield batch.with_value((key, kept))


class DropSeenDuplicates(beam.PTransform):
    """Rows -> ``.rows`` (first copies and replays) and ``.duplicates`` ((tenant_id, message_id)).

    Args:
        aws: where DynamoDB is.
        table: the dedupe table.
        ttl: dedup horizon (24 h like Segment).
        ref_field: row key holding the record's source_ref.
        batches: the input holds ``(key, [row, ...])`` batches; ``.rows`` keeps that shape.
        pass_id: set when this pipeline is one pass of a single writer (the local incremental mode
            under the consumer lease, one consumer application per table): the claims are then read
            and written in batches (:meth:`DedupeStore.claim_in_pass`); None: conditional puts, safe
            for any number of concurrent claimants. Each build of the transform is a new attempt.
    """

    def __init__(
        self,
        aws: AwsSettings,
        table: str,
        ttl: dt.timedelta = DEFAULT_TTL,
        ref_field: str = "_source_ref",
        batches: bool = False,
        pass_id: str | None = None,
    ):
        super().__init__()
        if not table:
            raise ValueError("DropSeenDuplicates needs a table name")
        if pass_id == "":
            raise ValueError("DropSeenDuplicates: pass_id must name the pass (or be None)")
        self.aws, self.table, self.ttl, self.ref_field, self.batches = aws, table, ttl, ref_field, batches
        self.attempt = (pass_id, uuid.uuid4().hex[:12]) if pass_id is not None else None

    def expand(self, rows):
        if self.batches:
            fn = _DropSeenInBatchesFn(self.aws, self.table, self.ttl, self.ref_field, self.attempt)
            return rows | "ClaimMessageIds" >> beam.ParDo(fn).with_outputs("duplicates", main="rows")
        return (
            rows
            | "BatchForDedupe" >> beam.BatchElements(min_batch_size=50, max_batch_size=500)
            | "ClaimMessageIds"
            >> beam.ParDo(_DropSeenFn(self.aws, self.table, self.ttl, self.ref_field, self.attempt)).with_outputs(
                "duplicates", main="rows"
            )
        )
