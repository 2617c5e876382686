"""From accepted requests to Kinesis: batched PutRecords, retries, the spool, and back-pressure.

A request hands its records to :meth:`Delivery.deliver` and is answered 200 only when that returns:
the records are then in Kinesis, or fsynced in the local spool (which a drainer re-sends, also after
a restart). Otherwise it raises :class:`Unavailable` (503: Kinesis did not take them and there is no
spool) or :class:`Overloaded` (429: more records in memory than allowed). Nothing is acknowledged
and then dropped.

Three modes:

* ``direct`` (no spool): ack after Kinesis accepted. Used on Lambda, where the disk does not outlive
  the instance.
* ``fallback`` (``--spool-dir``): ack after Kinesis accepted; when Kinesis fails (after retries) or
  the memory bound is hit, the records are spooled and acked, and the drainer re-sends them.
* ``always`` (``--spool-dir --spool-mode always``): write-ahead; ack after the fsync, ship from disk.
  The lowest and steadiest latency, at the price of a local disk that must survive restarts.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Literal, Protocol

from botocore.exceptions import BotoCoreError, ClientError

from connectors.collector.metrics import CollectorMetrics
from connectors.collector.spool import Spool

__all__ = [
    "Batcher",
    "Delivery",
    "KinesisSink",
    "NullSink",
    "Overloaded",
    "RecordSink",
    "SinkError",
    "Unavailable",
    "kinesis_batches",
]

log = logging.getLogger("livora.collector")

Record = tuple[str, bytes]  # (partition key, data)

MAX_PUT_RECORDS = 500
MAX_PUT_BYTES = 5 * 1024 * 1024
MAX_RECORD_BYTES = 1024 * 1024  # data + partition key
TRANSIENT_CODES = frozenset(
    {
        "ProvisionedThroughputExceededException",
        "ThrottlingException",
        "LimitExceededException",
        "InternalFailure",
        "InternalFailureException",
        "ServiceUnavailable",
        "KMSThrottlingException",
    }
)


class SinkError(RuntimeError):
    """The sink did not accept records (after its retries)."""


class Overloaded(RuntimeError):
    """Too many records waiting in memory: answer 429 with Retry-After."""


class Unavailable(RuntimeError):
    """Kinesis did not take the records and there is nowhere durable to put them: answer 503."""


class RecordSink(Protocol):
    def put(self, records: Sequence[Record]) -> None:
        """Deliver every record or raise SinkError."""


def kinesis_batches(records: Sequence[Record]) -> list[list[Record]]:
    """Split into PutRecords calls: at most 500 records and 5 MB (data + keys) each."""
    batches: list[list[Record]] = []
    current: list[Record] = []
    size = 0
    for key, data in records:
        n = len(data) + len(key.encode("utf-8"))
        if n > MAX_RECORD_BYTES:
            raise ValueError(f"record of {n} bytes is over Kinesis's 1 MB limit")
        if current and (len(current) == MAX_PUT_RECORDS or size + n > MAX_PUT_BYTES):
            batches.append(current)
            current, size = [], 0
        current.append((key, data))
        size += n
    if current:
        batches.append(current)
    return batches


class NullSink:
    """Accepts everything at no cost: the stand-in that measures the collector itself."""

    def __init__(self) -> None:
        self.records = 0

    def put(self, records: Sequence[Record]) -> None:
        self.records += len(records)


class KinesisSink:
    """PutRecords with retries of failed records and throttling (full-jitter backoff) within a time budget."""

    def __init__(
        self,
        client,
        stream: str,
        metrics: CollectorMetrics | None = None,
        *,
        budget_s: float = 5.0,
        base_s: float = 0.05,
        cap_s: float = 1.0,
        path: str = "request",
        sleep: Callable[[float], None] = time.sleep,
    ):
        self.client = client
        self.stream = stream
        self.metrics = metrics or CollectorMetrics()
        self.budget_s = budget_s
        self.base_s = base_s
        self.cap_s = cap_s
        self.path = path
        self._sleep = sleep
        self._rng = random.Random()

    def with_path(self, path: str, budget_s: float | None = None) -> KinesisSink:
        return KinesisSink(
            self.client,
            self.stream,
            self.metrics,
            budget_s=self.budget_s if budget_s is None else budget_s,
            base_s=self.base_s,
            cap_s=self.cap_s,
            path=path,
            sleep=self._sleep,
        )

    def check(self) -> None:
        """SinkError unless the stream exists and is writable (ACTIVE or UPDATING)."""
        try:
            status = self.client.describe_stream_summary(StreamName=self.stream)["StreamDescriptionSummary"][
                "StreamStatus"
            ]
        except (ClientError, BotoCoreError) as err:
            raise SinkError(f"stream {self.stream}: {type(err).__name__}: {err}") from None
        if status not in ("ACTIVE", "UPDATING"):
            raise SinkError(f"stream {self.stream} is {status}")

    def put(self, records: Sequence[Record]) -> None:
        deadline = time.monotonic() + self.budget_s
        for batch in kinesis_batches(records):
            self._put_batch(batch, deadline)

    def _backoff(self, attempt: int, deadline: float, cause: str, detail: str) -> None:
        self.metrics.kinesis_retries.labels(cause).inc()
        delay = self._rng.uniform(0.0, min(self.cap_s, self.base_s * 2**attempt))
        if time.monotonic() + delay > deadline:
            self.metrics.kinesis_failures.inc()
            raise SinkError(f"Kinesis did not accept the records within {self.budget_s:g}s ({detail})")
        self._sleep(delay)

    def _put_batch(self, batch: list[Record], deadline: float) -> None:
        entries = [{"Data": data, "PartitionKey": key} for key, data in batch]
        attempt = 0
        while entries:
            started = time.perf_counter()
            try:
                response = self.client.put_records(StreamName=self.stream, Records=entries)
            except ClientError as err:
                code = err.response.get("Error", {}).get("Code", "")
                status = err.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
                if code not in TRANSIENT_CODES and status < 500:
                    self.metrics.kinesis_failures.inc()
                    raise SinkError(f"PutRecords refused: {code}") from None
                self._backoff(
                    attempt, deadline, "throttled" if "Throughput" in code or "Throttl" in code else "error", code
                )
                attempt += 1
                continue
            except BotoCoreError as err:
                self._backoff(attempt, deadline, "error", type(err).__name__)
                attempt += 1
                continue
            finally:
                self.metrics.kinesis_put_seconds.observe(time.perf_counter() - started)
            failed = response.get("FailedRecordCount") or 0
            self.metrics.kinesis_records.labels(self.path).inc(len(entries) - failed)
            if not failed:
                return
            entries = [e for e, res in zip(entries, response["Records"], strict=True) if res.get("ErrorCode")]
            self._backoff(attempt, deadline, "failed_records", f"{len(entries)} records failed")
            attempt += 1


class Batcher:
    """Gathers records of concurrent requests into calls of ``flush`` run in threads.

    ``submit`` returns when every record of the call has been flushed, or raises what the flush
    raised (or :class:`Overloaded` straight away when ``max_pending`` records are already waiting).
    """

    def __init__(
        self,
        flush: Callable[[list[Record]], object],
        *,
        max_records: int = MAX_PUT_RECORDS,
        max_bytes: int = MAX_PUT_BYTES,
        linger_s: float = 0.002,
        concurrency: int = 4,
        max_pending: int = 50_000,
        on_pending: Callable[[int], None] | None = None,
    ):
        self._flush = flush
        self.max_records = max_records
        self.max_bytes = max_bytes
        self.linger_s = linger_s
        self.concurrency = concurrency
        self.max_pending = max_pending
        self._on_pending = on_pending or (lambda n: None)
        self._queue: deque[tuple[Record, list]] = deque()
        self.pending = 0
        self._wake: asyncio.Event | None = None
        self._workers: list[asyncio.Task] = []
        self._closing = False

    def start(self) -> None:
        self._wake = asyncio.Event()
        self._closing = False
        self._workers = [asyncio.create_task(self._worker()) for _ in range(self.concurrency)]

    async def stop(self) -> None:
        """Flush what is queued, then end the workers."""
        self._closing = True
        if self._wake is not None:
            self._wake.set()
        if self._workers:
            await asyncio.gather(*self._workers, return_exceptions=True)
        self._workers = []

    async def submit(self, records: Sequence[Record]) -> None:
        if not records:
            return
        if self._closing or self._wake is None:
            raise Unavailable("shutting down")
        if self.pending + len(records) > self.max_pending:
            raise Overloaded(f"{self.pending} records waiting")
        future = asyncio.get_running_loop().create_future()
        ticket = [len(records), future]
        self._queue.extend((record, ticket) for record in records)
        self.pending += len(records)
        self._on_pending(self.pending)
        self._wake.set()
        await future

    def _take(self) -> list[tuple[Record, list]]:
        batch, size = [], 0
        while self._queue and len(batch) < self.max_records:
            n = len(self._queue[0][0][1]) + len(self._queue[0][0][0])
            if batch and size + n > self.max_bytes:
                break
            batch.append(self._queue.popleft())
            size += n
        return batch

    async def _worker(self) -> None:
        assert self._wake is not None
        while True:
            if not self._queue:
                if self._closing:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            if self.linger_s and len(self._queue) < self.max_records and not self._closing:
                await asyncio.sleep(self.linger_s)
            batch = self._take()
            if not batch:
                continue
            error: BaseException | None = None
            try:
                await asyncio.to_thread(self._flush, [record for record, _ in batch])
            except Exception as exc:  # handed to every waiting request, which answers 503 or spools
                error = exc
            self.pending -= len(batch)
            self._on_pending(self.pending)
            for _, ticket in batch:
                future = ticket[1]
                if future.done():
                    continue
                if error is not None:
                    future.set_exception(error)
                else:
                    ticket[0] -= 1
                    if ticket[0] == 0:
                        future.set_result(None)


Mode = Literal["direct", "fallback", "always"]


class Delivery:
    """The policy between a request and Kinesis (see the module docstring for the modes)."""

    def __init__(
        self,
        sink: RecordSink,
        metrics: CollectorMetrics,
        *,
        spool: Spool | None = None,
        mode: Mode = "direct",
        max_pending: int = 50_000,
        max_spool_bytes: int = 1 << 30,
        concurrency: int = 4,
        linger_s: float = 0.002,
        drain_interval_s: float = 0.2,
        drain_sink: RecordSink | None = None,
    ):
        if mode != "direct" and spool is None:
            raise ValueError(f"spool mode {mode!r} needs a spool directory")
        self.sink = sink
        self.drain_sink = drain_sink or sink
        self.metrics = metrics
        self.spool = spool
        self.mode: Mode = mode if spool is not None else "direct"
        self.max_spool_bytes = max_spool_bytes
        self.drain_interval_s = drain_interval_s
        self.kinesis_ok = True
        self.last_error: str | None = None
        self._kinesis = Batcher(
            sink.put,
            concurrency=concurrency,
            linger_s=linger_s,
            max_pending=max_pending,
            on_pending=lambda n: metrics.pending_records.set(n),
        )
        self._spool_writer = (
            Batcher(
                self._append,
                max_records=10_000,
                max_bytes=8 << 20,
                linger_s=0,
                concurrency=1,
                max_pending=max_pending,
            )
            if spool is not None
            else None
        )
        self._drainer: asyncio.Task | None = None
        self._stopping = False

    # --- life cycle ---

    async def start(self) -> None:
        self._stopping = False
        self._kinesis.start()
        if self._spool_writer is not None:
            self._spool_writer.start()
            self._update_spool_gauges()
            self._drainer = asyncio.create_task(self._drain_forever())

    async def stop(self, drain_timeout_s: float = 10.0) -> None:
        """Flush what memory holds (to Kinesis, else the spool), then try once more to empty the spool."""
        self._stopping = True
        await self._kinesis.stop()
        if self._spool_writer is not None:
            await self._spool_writer.stop()
        if self._drainer is not None:
            self._drainer.cancel()
            await asyncio.gather(self._drainer, return_exceptions=True)
        if self.spool is not None:
            self.spool.rotate()
            try:
                async with asyncio.timeout(drain_timeout_s):
                    await self._drain_once()
            except (TimeoutError, SinkError) as err:
                log.warning("spool not empty at shutdown (%d records): %s", self.spool.pending_records, err)
            self.spool.close()

    def ready(self) -> bool:
        if self._kinesis.pending >= self._kinesis.max_pending * 0.9:
            return False
        return self.kinesis_ok or self.mode != "direct"

    # --- the request path ---

    async def deliver(self, records: Sequence[Record]) -> None:
        if self.mode == "always":
            await self._to_spool(records)
            return
        if self.mode == "fallback" and not self.kinesis_ok:
            await self._to_spool(records)
            return
        try:
            await self._kinesis.submit(records)
            self.kinesis_ok = True
        except SinkError as err:
            self.kinesis_ok = False
            self.last_error = str(err)
            if self.mode == "direct":
                raise Unavailable(str(err)) from None
            log.warning("Kinesis unavailable, spooling: %s", err)
            await self._to_spool(records)
        except Overloaded:
            if self.mode == "direct":
                raise
            await self._to_spool(records)

    async def _to_spool(self, records: Sequence[Record]) -> None:
        assert self.spool is not None and self._spool_writer is not None
        if self.spool.pending_bytes > self.max_spool_bytes:
            raise Overloaded(f"spool holds {self.spool.pending_bytes} bytes")
        await self._spool_writer.submit(records)
        self.metrics.spooled.inc(len(records))
        self._update_spool_gauges()

    def _append(self, records: list[Record]) -> None:
        assert self.spool is not None
        self.spool.append(records)

    def _update_spool_gauges(self) -> None:
        if self.spool is not None:
            self.metrics.spool_records.set(self.spool.pending_records)
            self.metrics.spool_bytes.set(self.spool.pending_bytes)

    # --- the drainer ---

    async def _drain_once(self) -> int:
        """Ship every closed segment, oldest first; SinkError stops at the first that fails."""
        assert self.spool is not None
        shipped = 0
        for number in self.spool.closed_segments():
            records = await asyncio.to_thread(self.spool.read, number)
            await asyncio.to_thread(self.drain_sink.put, records)
            self.spool.remove(number, len(records))
            shipped += len(records)
            self.kinesis_ok = True
            self._update_spool_gauges()
        return shipped

    async def _drain_forever(self) -> None:
        assert self.spool is not None
        failures = 0
        while not self._stopping:
            await asyncio.sleep(self.drain_interval_s if not failures else min(5.0, 0.2 * 2**failures))
            self.spool.rotate()
            try:
                await self._drain_once()
                failures = 0
            except SinkError as err:
                failures += 1
                self.last_error = str(err)
                log.warning("spool drain failed (%d records waiting): %s", self.spool.pending_records, err)
