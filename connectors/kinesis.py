"""Kinesis Data Streams source in pure Python (boto3): Beam's KinesisIO needs Java, this does not.

Mirrors the Java KinesisIO / KCL design:

* one splittable-DoFn restriction per shard: a start position (checkpoint) and a stop; the runner
  may checkpoint it (``try_split(0)``), which is how Flink/Dataflow run it as an unbounded stream;
* a **bounded** mode for in-process runners: each shard is read up to its tip (``MillisBehindLatest
  == 0``), its end (closed shard), a record limit or a time limit, then the restriction is done;
* shard lineage: a child shard is only handed out once all its parents are fully consumed
  (:func:`readable_shards`); the end of a closed shard comes from ``EndingSequenceNumber`` in
  ListShards (moto keeps returning an iterator for a closed shard, real Kinesis returns none);
* GetRecords with at most 10,000 records a call and at most 5 calls/s per shard, an expired
  iterator rebuilt from the last position read, exponential backoff with full jitter on throttling;
* KPL-aggregated records de-aggregated (:func:`deaggregate`) with sub-sequence numbers, so a
  checkpoint can stop inside an aggregate;
* lag reported as Beam metrics (``kinesis/millis_behind_latest`` distribution, one gauge per shard).

The boto3 client comes from an injectable factory so tests can wrap it (moto never throttles).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import logging
import random
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from enum import StrEnum
from typing import Any, NamedTuple

import apache_beam as beam
from apache_beam.io.iobase import RestrictionProgress, RestrictionTracker
from apache_beam.io.watermark_estimators import ManualWatermarkEstimator
from apache_beam.metrics import Metrics
from apache_beam.transforms.core import RestrictionProvider
from apache_beam.utils.timestamp import Duration, Timestamp
from botocore.exceptions import ClientError
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import DecodeError

from connectors.aws import AwsSettings
from schemas.records import SourceRecord

__all__ = [
    "Backoff",
    "Checkpoint",
    "KinesisReadError",
    "KinesisRecord",
    "ReadConfig",
    "ReadKinesisShards",
    "ShardInfo",
    "ShardProgress",
    "ShardReader",
    "ShardTask",
    "StartPosition",
    "deaggregate",
    "default_kinesis_client",
    "is_finished",
    "list_shards",
    "readable_shards",
    "sdf_progress",
]

log = logging.getLogger(__name__)

MAX_RECORDS_PER_CALL = 10_000
MIN_CALL_INTERVAL_S = 0.2  # 5 GetRecords calls per second per shard
THROTTLING_CODES = frozenset(
    {
        "ProvisionedThroughputExceededException",
        "LimitExceededException",
        "ThrottlingException",
        "Throttling",
        "KMSThrottlingException",
        "RequestLimitExceeded",
    }
)
TRANSIENT_CODES = THROTTLING_CODES | {"InternalFailure", "InternalServerError", "ServiceUnavailable"}
_SUB_MAX = 2**62  # sorts a whole (non-aggregated or fully consumed) record after all its sub-records


class KinesisReadError(RuntimeError):
    """Transient trouble that outlived the retries: let the runner retry the bundle."""


class StartPosition(StrEnum):
    """Where a shard without a checkpoint starts (a checkpoint always wins)."""

    TRIM_HORIZON = "TRIM_HORIZON"
    LATEST = "LATEST"
    AT_TIMESTAMP = "AT_TIMESTAMP"


# --------------------------------------------------------------------------- positions and shards


@dataclasses.dataclass(frozen=True)
class Checkpoint:
    """Position of the last record consumed in a shard.

    ``sub_sequence`` is the last user record consumed inside a KPL aggregate; None means the whole
    Kinesis record was consumed. ``shard_end`` marks a closed shard read to its end.
    """

    sequence: str
    sub_sequence: int | None = None
    shard_end: bool = False

    def key(self) -> tuple[int, int]:
        return (int(self.sequence), _SUB_MAX if self.sub_sequence is None else self.sub_sequence)

    def covers(self, other: Checkpoint) -> bool:
        """True when ``other`` is at or before this position."""
        return other.key() <= self.key()

    def iterator_args(self) -> dict[str, str]:
        """GetShardIterator arguments that resume right after this position."""
        if self.sub_sequence is None:
            return {"ShardIteratorType": "AFTER_SEQUENCE_NUMBER", "StartingSequenceNumber": self.sequence}
        # inside an aggregate: re-read the record and skip the consumed sub-records
        return {"ShardIteratorType": "AT_SEQUENCE_NUMBER", "StartingSequenceNumber": self.sequence}


@dataclasses.dataclass(frozen=True)
class ShardInfo:
    """One shard as ListShards describes it."""

    shard_id: str
    parent_shard_id: str | None = None
    adjacent_parent_shard_id: str | None = None
    starting_sequence: str | None = None
    ending_sequence: str | None = None  # set once the shard is closed (split/merge)
    starting_hash_key: str | None = None
    ending_hash_key: str | None = None

    @property
    def closed(self) -> bool:
        return self.ending_sequence is not None

    @property
    def parents(self) -> tuple[str, ...]:
        return tuple(p for p in (self.parent_shard_id, self.adjacent_parent_shard_id) if p)


def list_shards(client, stream: str) -> list[ShardInfo]:
    """All shards of a stream (open and closed, still within retention), paginated."""
    shards: list[ShardInfo] = []
    kwargs: dict[str, Any] = {"StreamName": stream}
    while True:
        page = _call_with_backoff(lambda kw=kwargs: client.list_shards(**kw), Backoff(), random.Random())
        for shard in page.get("Shards", []):
            seq = shard.get("SequenceNumberRange", {})
            hashes = shard.get("HashKeyRange", {})
            shards.append(
                ShardInfo(
                    shard_id=shard["ShardId"],
                    parent_shard_id=shard.get("ParentShardId"),
                    adjacent_parent_shard_id=shard.get("AdjacentParentShardId"),
                    starting_sequence=seq.get("StartingSequenceNumber"),
                    ending_sequence=seq.get("EndingSequenceNumber"),
                    starting_hash_key=hashes.get("StartingHashKey"),
                    ending_hash_key=hashes.get("EndingHashKey"),
                )
            )
        token = page.get("NextToken")
        if not token:
            return shards
        kwargs = {"NextToken": token}


def is_finished(shard: ShardInfo, checkpoint: Checkpoint | None) -> bool:
    """A closed shard whose every record has been consumed and committed."""
    if not shard.closed or checkpoint is None or not checkpoint.shard_end:
        return False
    # compare too: moto keeps appending to a "closed" shard, real Kinesis never does
    return int(checkpoint.sequence) >= int(shard.ending_sequence)


def readable_shards(shards: Iterable[ShardInfo], checkpoints: dict[str, Checkpoint]) -> list[ShardInfo]:
    """Shards to read now: not finished, and every parent finished (or gone past retention).

    Reading a child only after its parents keeps the order of records per partition key across
    a split or merge (the KCL rule).
    """
    by_id = {s.shard_id: s for s in shards}

    def done(shard_id: str) -> bool:
        parent = by_id.get(shard_id)
        return parent is None or is_finished(parent, checkpoints.get(shard_id))

    return [
        s
        for s in sorted(by_id.values(), key=lambda s: s.shard_id)
        if not is_finished(s, checkpoints.get(s.shard_id)) and all(done(p) for p in s.parents)
    ]


# --------------------------------------------------------------------------- KPL de-aggregation

KPL_MAGIC = b"\xf3\x89\x9a\xc2"
_MD5_LEN = 16


def _aggregated_record_class():
    """The KPL ``AggregatedRecord`` protobuf message, built in a private descriptor pool.

    Schema from amazon-kinesis-producer's aggregation-format.md; a private pool so that another
    copy of ``messages.proto`` in the process (e.g. aws-kinesis-agg) cannot clash with it.
    """
    f = descriptor_pb2.FieldDescriptorProto
    proto = descriptor_pb2.FileDescriptorProto(
        name="livora_kpl_aggregation.proto", package="livora.kpl", syntax="proto2"
    )

    def add(message, name: str, number: int, ftype: int, label: int, type_name: str | None = None) -> None:
        field = message.field.add(name=name, number=number, type=ftype, label=label)
        if type_name:
            field.type_name = type_name

    tag = proto.message_type.add(name="Tag")
    add(tag, "key", 1, f.TYPE_STRING, f.LABEL_REQUIRED)
    add(tag, "value", 2, f.TYPE_STRING, f.LABEL_OPTIONAL)
    record = proto.message_type.add(name="Record")
    add(record, "partition_key_index", 1, f.TYPE_UINT64, f.LABEL_REQUIRED)
    add(record, "explicit_hash_key_index", 2, f.TYPE_UINT64, f.LABEL_OPTIONAL)
    add(record, "data", 3, f.TYPE_BYTES, f.LABEL_REQUIRED)
    add(record, "tags", 4, f.TYPE_MESSAGE, f.LABEL_REPEATED, ".livora.kpl.Tag")
    agg = proto.message_type.add(name="AggregatedRecord")
    add(agg, "partition_key_table", 1, f.TYPE_STRING, f.LABEL_REPEATED)
    add(agg, "explicit_hash_key_table", 2, f.TYPE_STRING, f.LABEL_REPEATED)
    add(agg, "records", 3, f.TYPE_MESSAGE, f.LABEL_REPEATED, ".livora.kpl.Record")
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("livora.kpl.AggregatedRecord"))


_AggregatedRecord = _aggregated_record_class()


def deaggregate(data: bytes) -> list[tuple[str | None, bytes]] | None:
    """User records ``(partition_key, data)`` of a KPL aggregate, or None when ``data`` is not one.

    Format: magic ``F3 89 9A C2`` + protobuf ``AggregatedRecord`` + MD5 of the protobuf. Like the
    KCL, a record whose magic or checksum does not match is treated as a plain record (it then
    reaches the decoder and, if it is garbage, the dead letters; nothing is dropped here).
    """
    if len(data) <= len(KPL_MAGIC) + _MD5_LEN or not data.startswith(KPL_MAGIC):
        return None
    body, digest = data[len(KPL_MAGIC) : -_MD5_LEN], data[-_MD5_LEN:]
    if hashlib.md5(body).digest() != digest:
        return None
    message = _AggregatedRecord()
    try:
        message.ParseFromString(body)
    except DecodeError:
        return None
    keys = list(message.partition_key_table)
    out = []
    for rec in message.records:
        key = keys[rec.partition_key_index] if rec.partition_key_index < len(keys) else None
        out.append((key, bytes(rec.data)))
    return out


def aggregate(records: Iterable[tuple[str, bytes]]) -> bytes:
    """Pack user records into one KPL aggregate (for producers, tests and the benchmark)."""
    message = _AggregatedRecord()
    index: dict[str, int] = {}
    for key, data in records:
        if key not in index:
            index[key] = len(message.partition_key_table)
            message.partition_key_table.append(key)
        message.records.add(partition_key_index=index[key], data=data)
    body = message.SerializeToString()
    return KPL_MAGIC + body + hashlib.md5(body).digest()


# --------------------------------------------------------------------------- reading a shard


class KinesisRecord(NamedTuple):
    """One user record as read (a KPL sub-record carries its sub-sequence number)."""

    stream: str
    shard_id: str
    sequence: str
    sub_sequence: int | None
    partition_key: str | None
    data: bytes
    arrival: dt.datetime

    @property
    def position(self) -> Checkpoint:
        return Checkpoint(self.sequence, self.sub_sequence)

    @property
    def source_ref(self) -> str:
        ref = f"kinesis:{self.stream}/{self.shard_id}/{self.sequence}"
        return ref if self.sub_sequence is None else f"{ref}/{self.sub_sequence}"

    def to_source_record(self) -> SourceRecord:
        return SourceRecord(payload=self.data, source_ref=self.source_ref, received_at=self.arrival)


@dataclasses.dataclass(frozen=True)
class Backoff:
    """Exponential backoff with full jitter: sleep U(0, min(cap, base * 2**attempt))."""

    base_s: float = 0.1
    cap_s: float = 5.0
    max_attempts: int = 12

    def delay(self, attempt: int, rng: random.Random) -> float:
        return rng.uniform(0.0, min(self.cap_s, self.base_s * 2**attempt))


def _error_code(err: ClientError) -> str:
    return err.response.get("Error", {}).get("Code", "")


def _is_transient(err: ClientError) -> bool:
    status = err.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
    return _error_code(err) in TRANSIENT_CODES or status >= 500


def _call_with_backoff(call: Callable[[], Any], backoff: Backoff, rng: random.Random, sleep=time.sleep, on_retry=None):
    for attempt in range(backoff.max_attempts):
        try:
            return call()
        except ClientError as err:
            if not _is_transient(err):
                raise
            if on_retry is not None:
                on_retry(err)
            if attempt == backoff.max_attempts - 1:
                raise KinesisReadError(f"giving up after {backoff.max_attempts} attempts: {err}") from err
            sleep(backoff.delay(attempt, rng))
    raise AssertionError("unreachable")


def _utc(ts: dt.datetime | None) -> dt.datetime:
    if ts is None:
        return dt.datetime.now(dt.UTC)
    return ts.astimezone(dt.UTC) if ts.tzinfo else ts.replace(tzinfo=dt.UTC)


class ShardReader:
    """GetRecords loop over one shard: rate limit, backoff, iterator renewal, de-aggregation.

    Not a Beam object: the splittable DoFn below and the tests drive it.
    """

    def __init__(
        self,
        client,
        stream: str,
        shard_id: str,
        *,
        batch_limit: int = MAX_RECORDS_PER_CALL,
        min_call_interval: float = MIN_CALL_INTERVAL_S,
        backoff: Backoff = Backoff(),
        sleep: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
    ):
        if not 1 <= batch_limit <= MAX_RECORDS_PER_CALL:
            raise ValueError(f"batch_limit must be in 1..{MAX_RECORDS_PER_CALL}")
        self.client, self.stream, self.shard_id = client, stream, shard_id
        self.batch_limit, self.min_call_interval, self.backoff = batch_limit, min_call_interval, backoff
        self.sleep, self.rng = sleep, rng or random.Random()
        self.iterator: str | None = None
        self.position: Checkpoint | None = None  # last record handed out
        self.millis_behind: int | None = None
        self.at_shard_end = False  # Kinesis returned no next iterator: a closed shard, fully read
        self.throttled = self.expired = self.calls = 0
        self._last_call = 0.0
        self._start: tuple[Checkpoint | None, StartPosition, dt.datetime | None] | None = None

    def open(
        self,
        after: Checkpoint | None,
        start: StartPosition = StartPosition.TRIM_HORIZON,
        at_timestamp: dt.datetime | None = None,
    ) -> None:
        """Position the reader right after ``after`` (a checkpoint) or at ``start``."""
        if after is None and start == StartPosition.AT_TIMESTAMP and at_timestamp is None:
            raise ValueError("AT_TIMESTAMP needs at_timestamp")
        self._start = (after, StartPosition(start), at_timestamp)
        self.position = after
        self.iterator = self._new_iterator()

    def _new_iterator(self) -> str:
        assert self._start is not None, "open() first"
        after, start, at_timestamp = self._start
        at = self.position or after
        args: dict[str, Any] = {"StreamName": self.stream, "ShardId": self.shard_id}
        if at is not None:
            args.update(at.iterator_args())
        elif start == StartPosition.AT_TIMESTAMP:
            args.update(ShardIteratorType="AT_TIMESTAMP", Timestamp=at_timestamp)
        else:
            args.update(ShardIteratorType=start.value)
        response = _call_with_backoff(
            lambda: self.client.get_shard_iterator(**args), self.backoff, self.rng, self.sleep
        )
        return response["ShardIterator"]

    def _on_throttle(self, _err) -> None:
        self.throttled += 1
        Metrics.counter("kinesis", "throttled").inc()

    def poll(self) -> list[KinesisRecord]:
        """One GetRecords call (after the per-shard rate limit); returns the new user records."""
        if self.iterator is None:
            return []
        wait = self._last_call + self.min_call_interval - time.monotonic()
        if wait > 0:
            self.sleep(wait)
        response = None
        for _ in range(3):  # expired iterators: rebuild from the last position and retry
            iterator = self.iterator
            try:
                response = _call_with_backoff(
                    lambda it=iterator: self.client.get_records(ShardIterator=it, Limit=self.batch_limit),
                    self.backoff,
                    self.rng,
                    self.sleep,
                    on_retry=self._on_throttle,
                )
                break
            except ClientError as err:
                if _error_code(err) != "ExpiredIteratorException":
                    raise
                self.expired += 1
                Metrics.counter("kinesis", "iterator_expired").inc()
                self.iterator = self._new_iterator()
        if response is None:
            raise KinesisReadError(f"{self.shard_id}: shard iterator kept expiring")
        self._last_call = time.monotonic()
        self.calls += 1
        self.iterator = response.get("NextShardIterator")
        self.at_shard_end = self.iterator is None
        self.millis_behind = response.get("MillisBehindLatest")
        out = []
        for raw in response.get("Records", []):
            for rec in self._user_records(raw):
                if self.position is not None and self.position.covers(rec.position):
                    continue  # already consumed (resume inside an aggregate, rebuilt iterator)
                out.append(rec)
                self.position = rec.position
        return out

    def _user_records(self, raw: dict) -> Iterator[KinesisRecord]:
        arrival = _utc(raw.get("ApproximateArrivalTimestamp"))
        data = raw["Data"]
        parts = deaggregate(data)
        if parts is None:
            yield KinesisRecord(
                self.stream, self.shard_id, raw["SequenceNumber"], None, raw.get("PartitionKey"), data, arrival
            )
            return
        Metrics.counter("kinesis", "kpl_aggregates").inc()
        for sub, (key, payload) in enumerate(parts):
            yield KinesisRecord(self.stream, self.shard_id, raw["SequenceNumber"], sub, key, payload, arrival)


# --------------------------------------------------------------------------- Beam: splittable DoFn


class ShardTask(NamedTuple):
    """What to read: one shard from a checkpoint (or the configured start position)."""

    stream: str
    shard_id: str
    checkpoint: Checkpoint | None = None
    ending_sequence: str | None = None  # closed shard: read up to here


class ShardProgress(NamedTuple):
    """Emitted on the ``progress`` output when a shard's read stops: what to checkpoint."""

    stream: str
    shard_id: str
    start: Checkpoint | None
    end: Checkpoint | None  # last position read; None when nothing was read
    records: int
    millis_behind: int | None


class ReadConfig(NamedTuple):
    """How to read (the same for every shard of a run)."""

    start_position: StartPosition = StartPosition.TRIM_HORIZON
    at_timestamp: dt.datetime | None = None
    bounded: bool = True  # stop at the tip (local runners); False: unbounded, runner checkpoints
    max_records: int | None = None  # per shard and run (bounded mode)
    max_seconds: float | None = None  # per shard and run (bounded mode)
    batch_limit: int = MAX_RECORDS_PER_CALL
    min_call_interval: float = MIN_CALL_INTERVAL_S
    backoff: Backoff = Backoff()
    poll_seconds: float = 0.0  # unbounded mode: read this long, then hand back (0: after every GetRecords)
    idle_resume_seconds: float = 1.0  # unbounded mode: pause before polling a caught-up shard again
    stop_at: float | None = None  # unbounded mode: wall-clock time (epoch s) after which every shard's read ends
    closed_check_seconds: float = 5.0  # unbounded mode: how often a caught-up shard checks whether it was closed
    watermark_lag_seconds: float = 2.0  # unbounded mode: reported watermark this far behind the earliest running call


def default_kinesis_client(aws: AwsSettings):
    """A Kinesis client whose own retries stay short: our backoff does the waiting."""
    return aws.client("kinesis", retries={"max_attempts": 3, "mode": "standard"})


@dataclasses.dataclass(frozen=True)
class ShardRange:
    """Restriction: records after ``start``; ``stop`` None = open-ended, else the last position."""

    start: Checkpoint | None
    stop: Checkpoint | None = None
    done: bool = False
    created_at: dt.datetime | None = None  # pins LATEST for a shard without checkpoint across self-checkpoints


_END = object()  # claimed to say "this shard's read is complete at the last claimed position"


def sdf_progress(claimed: int, done: bool) -> RestrictionProgress:
    """Progress of an open-ended restriction, with an explicit fraction.

    Beam's SDK replaces ``completed`` by the output bytes of the element when a runner asks for a split
    (``SdfProcessSizedElements.current_element_progress``), and those bytes are NaN while the output
    byte sampler holds no sample; ``fraction_completed`` is then NaN and the split fails the bundle
    ("cannot convert float NaN to integer"), which fails the job. Prism asks to split an SDF bundle
    that made no progress between two of its progress ticks (a slow GetRecords, a loaded machine).
    An explicit fraction is what ``fraction_completed`` returns, so the split is computed from it."""
    return RestrictionProgress(
        fraction=1.0 if done else claimed / (claimed + 1), completed=claimed, remaining=0 if done else 1
    )


class ShardRangeTracker(RestrictionTracker):
    """Claims positions in sequence order; supports self-checkpointing splits (``fraction == 0``)."""

    def __init__(self, restriction: ShardRange):
        self._restriction = restriction
        self._last: Checkpoint | None = None
        self._claimed = 0

    def current_restriction(self) -> ShardRange:
        return self._restriction

    def try_claim(self, position) -> bool:
        r = self._restriction
        if r.done:
            return False
        if position is _END:
            self._restriction = ShardRange(r.start, self._last or r.start, done=True, created_at=r.created_at)
            return False
        if r.stop is not None and not r.stop.covers(position):
            return False
        self._last = position
        self._claimed += 1
        return True

    def try_split(self, fraction_of_remainder):
        r = self._restriction
        if r.done or fraction_of_remainder != 0:
            return None  # no dynamic splitting inside a shard: sequence numbers are not dense
        primary = ShardRange(r.start, self._last or r.start, done=True, created_at=r.created_at)
        residual = ShardRange(self._last or r.start, r.stop, created_at=r.created_at)
        self._restriction = primary
        return primary, residual

    def check_done(self) -> None:
        if not self._restriction.done:
            raise ValueError(f"shard restriction {self._restriction} returned without finishing or checkpointing")

    def current_progress(self) -> RestrictionProgress:
        return sdf_progress(self._claimed, self._restriction.done)

    def is_bounded(self) -> bool:
        return self._restriction.done or self._restriction.stop is not None


class _ShardRestrictionProvider(RestrictionProvider):
    def initial_restriction(self, element: ShardTask) -> ShardRange:
        return ShardRange(element.checkpoint, created_at=dt.datetime.now(dt.UTC))

    def create_tracker(self, restriction: ShardRange) -> ShardRangeTracker:
        return ShardRangeTracker(restriction)

    def restriction_size(self, element, restriction) -> int:
        return 0 if restriction.done else 1

    def split(self, element, restriction):
        yield restriction


def _ts(when: dt.datetime) -> Timestamp:
    return Timestamp.from_utc_datetime(_utc(when))


class _CallsInFlight:
    """Per shard, the start time of the unbounded reader's latest call in this process.

    A call stamps its records with its start time; the watermark it reports on return is the
    earliest start registered here, so no record of another shard's call is behind a reported
    watermark even when the runner keeps the last bundle's estimate instead of the minimum over
    shards (Prism). A shard's entry is replaced only when its next call starts: the runner starts
    that call from the residual of the previous bundle, i.e. after it has taken in that bundle's
    outputs (ending the entry at ``finish_bundle`` was too early: a 10,000-record bundle was still
    in transit when another shard's report closed its window). A read that ends keeps its entry
    for ``grace`` seconds. Shared per process: on Prism (LOOPBACK) every bundle runs in the driver.
    """

    def __init__(self):
        self._lock = threading.Lock()
        self._starts: dict[tuple[str, str], tuple[Timestamp, float | None]] = {}

    def begin(self, key: tuple[str, str], at_least: Timestamp | None) -> Timestamp:
        """Register the call of ``key`` starting now (never before ``at_least``); returns its stamp."""
        with self._lock:
            now = Timestamp.now()
            start = now if at_least is None or now > at_least else at_least
            self._starts[key] = (start, None)
            return start

    def finish(self, key: tuple[str, str], grace: float) -> None:
        with self._lock:
            if key in self._starts:
                self._starts[key] = (self._starts[key][0], time.monotonic() + grace)

    def floor(self, start: Timestamp) -> Timestamp:
        with self._lock:
            now = time.monotonic()
            live = [t for t, expires in self._starts.values() if expires is None or expires > now]
            return min([start, *live])


_IN_FLIGHT = _CallsInFlight()
_RESTRICTION_PARAM = beam.DoFn.RestrictionParam(_ShardRestrictionProvider())
_WATERMARK_PARAM = beam.DoFn.WatermarkEstimatorParam(ManualWatermarkEstimator.default_provider())


class _ReadShardFn(beam.DoFn):
    """Reads one shard per element; main output SourceRecord, ``progress`` output ShardProgress."""

    def __init__(self, aws: AwsSettings, config: ReadConfig, client_factory: Callable[[AwsSettings], Any] | None):
        self.aws, self.config = aws, config
        self.client_factory = client_factory or default_kinesis_client

    def setup(self):
        self.client = self.client_factory(self.aws)
        self.lag = Metrics.distribution("kinesis", "millis_behind_latest")
        self._closed_checks: dict[str, tuple[float, str | None]] = {}

    def _ending_sequence(self, task: ShardTask) -> str | None:
        """The shard's ``EndingSequenceNumber`` if it was closed (split/merge) while being read; ListShards at
        most every ``closed_check_seconds`` per shard. Real Kinesis also ends the iterator; moto never does."""
        now = time.monotonic()
        checked = self._closed_checks.get(task.shard_id)
        if checked is not None and now - checked[0] < self.config.closed_check_seconds:
            return checked[1]
        shards = list_shards(self.client, task.stream)
        ending = next((s.ending_sequence for s in shards if s.shard_id == task.shard_id), None)
        self._closed_checks[task.shard_id] = (now, ending)
        return ending

    def process(
        self,
        task: ShardTask,
        tracker=_RESTRICTION_PARAM,
        watermark=_WATERMARK_PARAM,
    ):
        cfg = self.config
        restriction: ShardRange = tracker.current_restriction()
        reader = ShardReader(
            self.client,
            task.stream,
            task.shard_id,
            batch_limit=cfg.batch_limit,
            min_call_interval=cfg.min_call_interval,
            backoff=cfg.backoff,
        )
        start, at = cfg.start_position, cfg.at_timestamp
        if restriction.start is None and start == StartPosition.LATEST and restriction.created_at is not None:
            # "latest" means latest when the read began, not at every resume after a self-checkpoint
            start, at = StartPosition.AT_TIMESTAMP, restriction.created_at
        reader.open(restriction.start, start, at)
        counter = Metrics.counter("kinesis", f"records/{task.shard_id}")
        started = time.monotonic()
        state = {"read": 0, "last": None, "high": None}
        if not cfg.bounded:
            # processing-time timestamps (KinesisIO's processing-time policy): every output of the call carries
            # the call's start time; the watermark reported on return is at most the start of any call still
            # running in this process (Prism keeps the last bundle's estimate, not the minimum over shards)
            key = (task.stream, task.shard_id)
            if cfg.stop_at is not None and time.time() >= cfg.stop_at:
                tracker.try_claim(_END)  # drain: this shard's read ends here, its windows can close
                _IN_FLIGHT.finish(key, grace=10.0)
                return
            state["high"] = _IN_FLIGHT.begin(key, watermark.current_watermark())
        yield from self._read(task, cfg, tracker, watermark, reader, restriction, state, counter, started)
        if not cfg.bounded and tracker.current_restriction().done:
            _IN_FLIGHT.finish((task.stream, task.shard_id), grace=10.0)

    def _read(self, task, cfg, tracker, watermark, reader, restriction, state, counter, started):
        """The poll loop of :meth:`process` (bounded: to the tip or a limit; unbounded: one GetRecords)."""

        def progress(at_end: bool):
            last: Checkpoint | None = state["last"]
            if at_end:  # everything up to the shard's end is consumed: mark it so children may start
                seqs = [int(c.sequence) for c in (last, restriction.start) if c is not None]
                seqs.append(int(state.get("ending") or task.ending_sequence or 0))
                last = Checkpoint(str(max(seqs)), None, shard_end=True)
            info = ShardProgress(
                task.stream, task.shard_id, restriction.start, last, state["read"], reader.millis_behind
            )
            when = state["high"] or Timestamp.now()
            return beam.pvalue.TaggedOutput("progress", beam.window.TimestampedValue(info, when))

        while True:
            records = reader.poll()
            limit_hit = False
            for rec in records:
                if not tracker.try_claim(rec.position):
                    yield progress(at_end=False)  # the runner split the restriction
                    return
                state["read"] += 1
                state["last"] = rec.position
                counter.inc()
                if cfg.bounded:
                    ts = _ts(rec.arrival)
                    if state["high"] is None or ts > state["high"]:
                        state["high"] = ts
                        watermark.set_watermark(ts)
                else:
                    ts = state["high"]
                yield beam.window.TimestampedValue(rec.to_source_record(), ts)
                if cfg.bounded and cfg.max_records is not None and state["read"] >= cfg.max_records:
                    limit_hit = True
                    break
            if reader.millis_behind is not None:
                self.lag.update(reader.millis_behind)
                Metrics.gauge("kinesis", f"millis_behind_latest/{task.shard_id}").set(reader.millis_behind)
            caught_up = reader.millis_behind == 0 and len(records) < cfg.batch_limit
            if not limit_hit:
                ending = task.ending_sequence
                if ending is None and not cfg.bounded and caught_up and not records:
                    ending = state["ending"] = self._ending_sequence(task)  # closed since the task was made?
                ended = reader.at_shard_end or (ending is not None and caught_up and not records)
                if ended:  # (moto never ends a closed shard's iterator: an empty read at the tip does)
                    tracker.try_claim(_END)
                    yield progress(at_end=True)
                    return
            elapsed = time.monotonic() - started
            if cfg.bounded:
                if limit_hit or caught_up or (cfg.max_seconds is not None and elapsed >= cfg.max_seconds):
                    tracker.try_claim(_END)
                    yield progress(at_end=False)
                    return
            elif caught_up or elapsed >= cfg.poll_seconds:
                # self-checkpoint on every return: portable runners never ask an SDF to split (apache/beam#20979)
                if records:
                    yield progress(at_end=False)
                floor = _IN_FLIGHT.floor(state["high"]) - Duration(seconds=cfg.watermark_lag_seconds)
                current = watermark.current_watermark()
                if current is None or floor > current:
                    watermark.set_watermark(floor)
                tracker.defer_remainder(Duration(seconds=cfg.idle_resume_seconds if caught_up and not records else 0))
                return


class ReadKinesisShards(beam.PTransform):
    """PCollection[ShardTask] -> tagged result: main = SourceRecord, ``progress`` = ShardProgress.

    Args:
        aws: where Kinesis is.
        config: start position, bounded/unbounded, limits, backoff.
        client_factory: ``AwsSettings -> kinesis client`` (tests wrap the client to inject throttling).
    """

    def __init__(self, aws: AwsSettings, config: ReadConfig | None = None, client_factory=None):
        super().__init__()
        config = config or ReadConfig()
        if config.start_position == StartPosition.AT_TIMESTAMP and config.at_timestamp is None:
            raise ValueError("start position AT_TIMESTAMP needs at_timestamp")
        self.aws, self.config, self.client_factory = aws, config, client_factory

    def expand(self, tasks):
        return tasks | "ReadShard" >> beam.ParDo(_ReadShardFn(self.aws, self.config, self.client_factory)).with_outputs(
            "progress", main="records"
        )
