"""DynamoDB operational store: person profiles and the identity graph.

Two write paths, chosen by what the data is:

- **Identity graph** items are pure functions of their key (``T#a:<anon>`` → ``P#<person>`` and so on:
  nothing in an item can be newer or older than another copy of it), so they are written with
  ``BatchWriteItem`` in batches of 25 (8 calls in flight) through :func:`batch_write_with_retry`. A put of the same link
  twice is a no-op by construction.
- **Profiles** carry "latest wins" and "count once" state, which a blind put cannot protect (a put of an
  older state would overwrite a newer one: the Feast online-store pitfall). Each bundle folds its rows per
  person (:mod:`transforms.profiles`), reads the stored states with ``BatchGetItem`` (100 keys a call),
  merges (a semilattice join: idempotent, commutative) and writes back with a conditional ``PutItem`` on
  the item's ``version`` (optimistic concurrency). A lost race re-reads and re-merges; an unchanged state
  is not written at all.

:func:`batch_write_with_retry` is the shared low-level writer (the online feature store reuses it):
deduplicated keys, 25 requests a call, ``UnprocessedItems`` re-sent with exponential backoff and full
jitter (boto3's ``batch_writer`` re-sends with no backoff), terminal errors isolated to the offending
items by bisection. Transient errors that outlast the retries raise :class:`TransientSinkError` so that
the runner retries the bundle (safe: every write here is idempotent). Item layouts: ``docs/sinks.md``.
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, NamedTuple

import apache_beam as beam
from apache_beam.utils.windowed_value import WindowedValue
from boto3.dynamodb.types import TypeDeserializer, TypeSerializer
from botocore.exceptions import BotoCoreError, ClientError, ConnectionError, ReadTimeoutError

from connectors.aws import AwsSettings
from schemas.failures import FailedEvent, Reason, Stage
from transforms import profiles
from transforms.identity import identity_edges, node_of_anonymous, node_of_user

__all__ = [
    "BATCH_SIZE",
    "PROFILE_SORT_KEY",
    "TransientSinkError",
    "WriteFailure",
    "WriteIdentityGraph",
    "WriteProfiles",
    "WriteReport",
    "batch_write_with_retry",
    "create_tables",
    "identity_items",
    "nodes_of",
    "persons_of",
    "profile_item",
    "read_profile",
    "read_stitched_profile",
    "write_profile_states",
]

log = logging.getLogger(__name__)

BATCH_SIZE = 25  # BatchWriteItem's limit
GET_BATCH_SIZE = 100  # BatchGetItem's limit
_WRITE_WORKERS = 8  # BatchWriteItem calls in flight per identity flush
PROFILE_SORT_KEY = "PROFILE"
TRANSIENT_CODES = frozenset(
    {
        "ProvisionedThroughputExceededException",
        "ThrottlingException",
        "RequestLimitExceeded",
        "InternalServerError",
        "InternalFailure",
        "ServiceUnavailable",
        "ServiceUnavailableException",
        "TransactionConflictException",
        "LimitExceededException",
    }
)
ITEM_ERROR_CODES = frozenset({"ValidationException", "ItemCollectionSizeLimitExceededException"})
_serializer = TypeSerializer()
_deserializer = TypeDeserializer()


class TransientSinkError(RuntimeError):
    """Throttling / 5xx / timeouts that outlasted our retries: let the runner retry the bundle."""


class WriteFailure(NamedTuple):
    """A request the service refused for good (bad item, too large, ...): dead-letter its rows."""

    index: int
    code: str
    message: str


@dataclass
class WriteReport:
    failures: list[WriteFailure] = field(default_factory=list)
    retries: int = 0
    calls: int = 0


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff with full jitter (AWS architecture blog): delay = U(0, min(cap, base * 2**n))."""

    base: float = 0.05
    cap: float = 5.0
    max_attempts: int = 12
    sleep: Callable[[float], None] = time.sleep
    rng: Callable[[], float] = random.random

    def wait(self, attempt: int) -> None:
        self.sleep(self.rng() * min(self.cap, self.base * 2**attempt))


def _error_code(err: Exception) -> str | None:
    """The transient error code of ``err``, or None when it is terminal."""
    if isinstance(err, ClientError):
        code = err.response.get("Error", {}).get("Code", "")
        status = err.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        return code if code in TRANSIENT_CODES or status >= 500 else None
    if isinstance(err, (ConnectionError, ReadTimeoutError)):
        return type(err).__name__
    return None


def _is_item_error(err: Exception) -> bool:
    """A refusal of the item itself (bad attribute, too large, key mismatch): dead-letter the rows.

    Any other non-transient error (missing table, access denied, bad credentials) is a configuration
    problem: it is raised, failing the bundle loudly, instead of dead-lettering every row.
    """
    return isinstance(err, ClientError) and err.response.get("Error", {}).get("Code") in ITEM_ERROR_CODES


def _describe(err: Exception) -> tuple[str, str]:
    if isinstance(err, ClientError):
        error = err.response.get("Error", {})
        return error.get("Code", "ClientError"), error.get("Message", str(err))
    return type(err).__name__, str(err)


def create_tables(aws: AwsSettings, profiles_table: str, identity_table: str) -> None:
    """Create both tables (pk/sk strings, on-demand) if missing and wait until they are active."""
    client = aws.client("dynamodb")
    for name in (profiles_table, identity_table):
        try:
            client.create_table(
                TableName=name,
                AttributeDefinitions=[
                    {"AttributeName": "pk", "AttributeType": "S"},
                    {"AttributeName": "sk", "AttributeType": "S"},
                ],
                KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}, {"AttributeName": "sk", "KeyType": "RANGE"}],
                BillingMode="PAY_PER_REQUEST",
            )
        except ClientError as err:
            if err.response["Error"]["Code"] != "ResourceInUseException":
                raise
        client.get_waiter("table_exists").wait(TableName=name, WaiterConfig={"Delay": 1, "MaxAttempts": 60})


# --- the shared batch writer ---------------------------------------------------------------------------


def _request_key(request: Mapping, key_attributes: Sequence[str]) -> tuple:
    body = request.get("PutRequest", {}).get("Item") or request.get("DeleteRequest", {}).get("Key") or {}
    return tuple(json.dumps(body.get(name), sort_keys=True) for name in key_attributes)


def batch_write_with_retry(
    client,
    table: str,
    requests: Sequence[Mapping[str, Any]],
    *,
    key_attributes: Sequence[str] = ("pk", "sk"),
    backoff: Backoff | None = None,
    max_workers: int = 1,
) -> WriteReport:
    """Write low-level ``PutRequest``/``DeleteRequest`` dicts to ``table`` with BatchWriteItem.

    Requests with the same key are sent once (BatchWriteItem rejects a batch with duplicate keys; the
    first wins, and a failure of it is reported for every duplicate). ``UnprocessedItems`` and transient
    errors are retried with exponential backoff and full jitter; after ``backoff.max_attempts`` without a
    complete write :class:`TransientSinkError` is raised. A terminal error (e.g. ValidationException) is
    narrowed down by bisection to the items that cause it, which come back in ``report.failures``.

    Args:
        client: a low-level boto3 DynamoDB client (or anything with ``batch_write_item``).
        table: the table name.
        requests: items in DynamoDB wire format, e.g. ``{"PutRequest": {"Item": {"pk": {"S": "..."}}}}``.
        key_attributes: the table's key attribute names, for de-duplication and matching unprocessed items.
        backoff: retry policy (tests inject a fake sleep).
        max_workers: calls of 25 in flight at once (boto3 clients are thread-safe; a call is latency-bound).
            An exception of any chunk (configuration error, retries exhausted) is raised after the others end.
    """
    backoff = backoff or Backoff()
    report = WriteReport()
    first_of: dict[tuple, int] = {}
    duplicates: dict[int, list[int]] = {}
    for index, request in enumerate(requests):
        key = _request_key(request, key_attributes)
        if key in first_of:
            duplicates.setdefault(first_of[key], []).append(index)
        else:
            first_of[key] = index
    unique = list(first_of.values())
    chunks = [unique[start : start + BATCH_SIZE] for start in range(0, len(unique), BATCH_SIZE)]
    if max_workers <= 1 or len(chunks) <= 1:
        for chunk in chunks:
            _write_chunk(client, table, requests, chunk, key_attributes, backoff, report)
    else:  # one report per chunk (no shared counters between threads), merged in chunk order

        def write(chunk: list[int]) -> WriteReport:
            own = WriteReport()
            _write_chunk(client, table, requests, chunk, key_attributes, backoff, own)
            return own

        with ThreadPoolExecutor(max_workers=min(max_workers, len(chunks))) as pool:
            for own in pool.map(write, chunks):
                report.failures += own.failures
                report.retries += own.retries
                report.calls += own.calls
    for failure in list(report.failures):
        report.failures.extend(failure._replace(index=dup) for dup in duplicates.get(failure.index, ()))
    return report


def _write_chunk(client, table, requests, indices, key_attributes, backoff: Backoff, report: WriteReport) -> None:
    pending = list(indices)
    attempt = 0
    while pending:
        report.calls += 1
        try:
            response = client.batch_write_item(RequestItems={table: [requests[i] for i in pending]})
        except (ClientError, BotoCoreError) as err:
            if _error_code(err) is None:
                if not _is_item_error(err):
                    raise
                if len(pending) == 1:
                    report.failures.append(WriteFailure(pending[0], *_describe(err)))
                else:  # find the bad item(s): the rest of the batch is fine and must be written
                    half = len(pending) // 2
                    _write_chunk(client, table, requests, pending[:half], key_attributes, backoff, report)
                    _write_chunk(client, table, requests, pending[half:], key_attributes, backoff, report)
                return
            attempt += 1
            if attempt >= backoff.max_attempts:
                raise TransientSinkError(
                    f"BatchWriteItem on {table}: {_describe(err)} after {attempt} attempts"
                ) from err
            report.retries += 1
            backoff.wait(attempt)
            continue
        unprocessed = response.get("UnprocessedItems", {}).get(table, [])
        if not unprocessed:
            return
        by_key = {_request_key(requests[i], key_attributes): i for i in pending}
        pending = [by_key[_request_key(request, key_attributes)] for request in unprocessed]
        attempt += 1
        if attempt >= backoff.max_attempts:
            raise TransientSinkError(f"BatchWriteItem on {table}: {len(pending)} items still unprocessed")
        report.retries += 1
        backoff.wait(attempt)


def _batch_get(client, table: str, keys: Sequence[Mapping], backoff: Backoff) -> list[dict]:
    """BatchGetItem (consistent reads) with UnprocessedKeys retried with backoff."""
    items: list[dict] = []
    for start in range(0, len(keys), GET_BATCH_SIZE):
        request = {table: {"Keys": list(keys[start : start + GET_BATCH_SIZE]), "ConsistentRead": True}}
        attempt = 0
        while request:
            try:
                response = client.batch_get_item(RequestItems=request)
            except (ClientError, BotoCoreError) as err:
                attempt += 1
                if _error_code(err) is None:
                    raise
                if attempt >= backoff.max_attempts:
                    raise TransientSinkError(f"BatchGetItem on {table}: {_describe(err)}") from err
                backoff.wait(attempt)
                continue
            items.extend(response.get("Responses", {}).get(table, []))
            request = response.get("UnprocessedKeys") or None
            if request:
                attempt += 1
                if attempt >= backoff.max_attempts:
                    raise TransientSinkError(f"BatchGetItem on {table}: keys still unprocessed")
                backoff.wait(attempt)
    return items


# --- profiles ------------------------------------------------------------------------------------------


def _profile_pk(tenant_id: str, person_id: str) -> str:
    return f"{tenant_id}#{person_id}"


def _dynamo_value(value: Any) -> Any:
    """JSON values as DynamoDB accepts them (numbers as Decimal)."""
    return json.loads(json.dumps(value), parse_float=Decimal, parse_int=Decimal)


def profile_item(state: profiles.State, version: int) -> dict[str, Any]:
    """The profile item (Python values; serialise with TypeSerializer): readable summary + the mergeable state."""
    summary = profiles.summarize(state)
    item: dict[str, Any] = {
        "pk": _profile_pk(state["tenant_id"], state["person_id"]),
        "sk": PROFILE_SORT_KEY,
        "version": version,
        "state": json.dumps(state, sort_keys=True, separators=(",", ":")),
        "traits": _dynamo_value(summary["traits"]),
    }
    for name, value in summary.items():
        if name in item or value is None or value == []:
            continue
        if name in ("anonymous_ids", "user_ids"):
            item[name] = set(value)
        elif isinstance(value, float):
            item[name] = Decimal(str(value))
        else:
            item[name] = value
    return item


def _state_of(item: Mapping[str, Any] | None) -> tuple[profiles.State | None, int]:
    if not item:
        return None, 0
    plain = {name: _deserializer.deserialize(value) for name, value in item.items()}
    return json.loads(plain["state"]), int(plain["version"])


def write_profile_states(
    client,
    table: str,
    states: Mapping[tuple[str, str], profiles.State],
    *,
    backoff: Backoff | None = None,
    max_races: int = 20,
    max_workers: int = 8,
) -> dict[tuple[str, str], tuple[str, str] | None]:
    """Merge ``states`` into the stored profiles; returns per key None (applied) or (error code, message).

    Read (BatchGetItem) -> merge -> conditional PutItem on ``version``; unchanged profiles are not written.
    The puts of different persons run on ``max_workers`` threads (boto3 clients are thread-safe): one
    conditional put per person is latency-bound, not throughput-bound.
    """
    backoff = backoff or Backoff()
    keys = list(states)
    stored = _batch_get(
        client,
        table,
        [{"pk": {"S": _profile_pk(t, p)}, "sk": {"S": PROFILE_SORT_KEY}} for t, p in keys],
        backoff,
    )
    current = {item["pk"]["S"]: item for item in stored}

    def apply(key: tuple[str, str]) -> tuple[str, str] | None:
        return _apply_profile(client, table, key, states[key], current.get(_profile_pk(*key)), backoff, max_races)

    if max_workers <= 1 or len(keys) <= 1:
        return {key: apply(key) for key in keys}
    with ThreadPoolExecutor(max_workers=min(max_workers, len(keys))) as pool:
        return dict(zip(keys, pool.map(apply, keys), strict=True))


def _apply_profile(client, table, key, partial, stored_item, backoff: Backoff, max_races: int):
    """One person's read-merge-conditional-put loop; None when applied, else (code, message)."""
    pk = _profile_pk(*key)
    old, version = _state_of(stored_item)
    attempt = races = 0
    while True:
        merged = profiles.merge(old, partial) if old else partial
        if merged == old:
            return None  # a replay: nothing new, nothing written
        item = {name: _serializer.serialize(value) for name, value in profile_item(merged, version + 1).items()}
        condition = (
            {"ConditionExpression": "attribute_not_exists(pk)"}
            if old is None
            else {"ConditionExpression": "version = :v", "ExpressionAttributeValues": {":v": {"N": str(version)}}}
        )
        try:
            client.put_item(TableName=table, Item=item, **condition)
            return None
        except (ClientError, BotoCoreError) as err:
            code, message = _describe(err)
            if code == "ConditionalCheckFailedException" and races < max_races:
                races += 1  # another writer got there first: re-read, re-merge
                response = client.get_item(
                    TableName=table, Key={"pk": {"S": pk}, "sk": {"S": PROFILE_SORT_KEY}}, ConsistentRead=True
                )
                old, version = _state_of(response.get("Item"))
                continue
            if _error_code(err) is None:
                if not _is_item_error(err):
                    raise
                return code, message
            attempt += 1
            if attempt >= backoff.max_attempts:
                raise TransientSinkError(f"PutItem on {table}: {code} after {attempt} attempts") from err
            backoff.wait(attempt)


def read_profile(client, table: str, tenant_id: str, person_id: str) -> dict[str, Any] | None:
    """The readable profile of a person (summary fields, Python values), or None."""
    response = client.get_item(
        TableName=table,
        Key={"pk": {"S": _profile_pk(tenant_id, person_id)}, "sk": {"S": PROFILE_SORT_KEY}},
        ConsistentRead=True,
    )
    if "Item" not in response:
        return None
    return {name: _deserializer.deserialize(value) for name, value in response["Item"].items()}


# --- identity graph ------------------------------------------------------------------------------------


def _own_nodes(row: Mapping) -> list[str]:
    nodes = []
    if row.get("anonymous_id"):
        nodes.append(node_of_anonymous(row["anonymous_id"]))
    if row.get("user_id"):
        nodes.append(node_of_user(row["user_id"]))
    return nodes


def identity_items(row: Mapping) -> list[dict[str, str]]:
    """Graph items a row asserts, each a pure function of its key (so a re-put changes nothing).

    node -> person (``pk=T#<node>, sk=P#<person>``), person -> node (``pk=T#P#<person>, sk=<node>``) and
    node <-> node edges from :func:`transforms.identity.identity_edges` (``pk=T#<node>, sk=<node>``).
    """
    tenant, person = row["tenant_id"], row["person_id"]
    items = []
    for node in _own_nodes(row):
        items.append({"pk": f"{tenant}#{node}", "sk": f"P#{person}", "tenant_id": tenant, "kind": "person"})
        items.append({"pk": f"{tenant}#P#{person}", "sk": node, "tenant_id": tenant, "kind": "node"})
    for a, b in identity_edges(row):
        items.append({"pk": f"{tenant}#{a}", "sk": b, "tenant_id": tenant, "kind": "edge"})
        items.append({"pk": f"{tenant}#{b}", "sk": a, "tenant_id": tenant, "kind": "edge"})
    return items


def _query_sort_keys(client, table: str, pk: str, prefix: str | None = None) -> list[str]:
    condition = "pk = :pk" + (" AND begins_with(sk, :prefix)" if prefix else "")
    values = {":pk": {"S": pk}, **({":prefix": {"S": prefix}} if prefix else {})}
    found, start = [], None
    while True:
        extra = {"ExclusiveStartKey": start} if start else {}
        response = client.query(
            TableName=table, KeyConditionExpression=condition, ExpressionAttributeValues=values, **extra
        )
        found += [item["sk"]["S"] for item in response.get("Items", [])]
        start = response.get("LastEvaluatedKey")
        if not start:
            return found


def persons_of(client, table: str, tenant_id: str, node: str) -> list[str]:
    """Person ids linked to a node (``u:<user>`` / ``a:<anon>``); an anonymous id seen before and after
    sign-up is linked to both its anonymous person and the identified one (the one with a ``u:`` node)."""
    return [sk.removeprefix("P#") for sk in _query_sort_keys(client, table, f"{tenant_id}#{node}", "P#")]


def nodes_of(client, table: str, tenant_id: str, person_id: str) -> list[str]:
    """The anonymous and user nodes linked to a person."""
    return _query_sort_keys(client, table, f"{tenant_id}#P#{person_id}")


def read_stitched_profile(
    client, profiles_table: str, identity_table: str, tenant_id: str, node: str, max_persons: int = 100
) -> dict[str, Any] | None:
    """The profile of everyone the identity graph links to ``node`` (``u:<user>`` or ``a:<anon>``), merged.

    Stored profiles are per lake ``person_id``; a visitor's anonymous activity processed before their
    sign-up may sit under another person id than their later activity. This walks the graph (node ->
    persons -> their nodes -> ...) and merges the states at read time: the merge is the same semilattice
    join, so the result does not depend on which person ids exist or in which order they are found.
    The merged profile's ``person_id`` is the one linked to a user node (else the smallest);
    ``person_ids`` lists all merged ones.
    """
    persons: set[str] = set()
    seen_nodes: set[str] = set()
    frontier = [node]
    while frontier and len(persons) < max_persons:
        current = frontier.pop()
        if current in seen_nodes:
            continue
        seen_nodes.add(current)
        for person in persons_of(client, identity_table, tenant_id, current):
            if person not in persons:
                persons.add(person)
                frontier += [n for n in nodes_of(client, identity_table, tenant_id, person) if n not in seen_nodes]
    if not persons:
        profile = read_profile(client, profiles_table, tenant_id, node)  # not a node: maybe a person id
        return profile and {**profile, "person_ids": [node]}
    keys = [{"pk": {"S": _profile_pk(tenant_id, p)}, "sk": {"S": PROFILE_SORT_KEY}} for p in sorted(persons)]
    states = [_state_of(item)[0] for item in _batch_get(client, profiles_table, keys, Backoff())]
    if not states:
        return None
    identified = sorted(s["person_id"] for s in states if s["user_ids"])
    canonical = identified[0] if identified else min(s["person_id"] for s in states)
    merged = None
    for state in states:
        rekeyed = {**state, "person_id": canonical}
        merged = rekeyed if merged is None else profiles.merge(merged, rekeyed)
    return {**profiles.summarize(merged), "person_ids": sorted(s["person_id"] for s in states)}


# --- Beam transforms -----------------------------------------------------------------------------------


def _default_client(aws: AwsSettings):
    return aws.client("dynamodb")


def sink_failure(row: Mapping, target: str, code: str, message: str) -> FailedEvent:
    """A dead letter for a lake row a sink refused (payload = the row as JSON, to re-apply after a fix)."""
    return FailedEvent(
        payload=json.dumps(dict(row), default=str, sort_keys=True).encode("utf-8"),
        stage=Stage.SINK,
        reason=Reason.SINK_ERROR,
        message=f"{target}: {code}: {message}"[:2000],
        tenant_id=row.get("tenant_id"),
        message_id=row.get("message_id"),
        source_ref=target,
    )


class _BufferedSinkFn(beam.DoFn):
    """Buffers rows (with their window and timestamp) and flushes per ``max_buffer`` rows and per bundle.

    Outputs, in each row's own window: ``(tenant_id, message_id)`` for every applied row on the main
    output, a :class:`FailedEvent` on ``failures`` for every refused row.
    """

    FAILURES = "failures"

    def __init__(self, aws: AwsSettings, table: str, max_buffer: int, client_factory: Callable | None):
        self._aws, self._table, self._max_buffer = aws, table, max_buffer
        self._client_factory = client_factory or _default_client
        self._applied = beam.metrics.Metrics.counter(type(self).__name__, "rows_applied")
        self._failed = beam.metrics.Metrics.counter(type(self).__name__, "rows_failed")

    def setup(self):
        self._client = self._client_factory(self._aws)

    def start_bundle(self):
        self._buffer: list[tuple[dict, Any, Any]] = []

    def process(self, row, timestamp=beam.DoFn.TimestampParam, window=beam.DoFn.WindowParam):
        self._buffer.append((row, timestamp, window))
        if len(self._buffer) >= self._max_buffer:
            yield from self._flush()

    def finish_bundle(self):
        yield from self._flush()

    def _flush(self) -> Iterable:
        buffered, self._buffer = self._buffer, []
        if not buffered:
            return
        refused = self._write([row for row, _, _ in buffered])
        for index, (row, timestamp, window) in enumerate(buffered):
            if index in refused:
                self._failed.inc()
                failure = sink_failure(row, f"dynamodb:{self._table}", *refused[index])
                yield beam.pvalue.TaggedOutput(self.FAILURES, WindowedValue(failure, timestamp, [window]))
            else:
                self._applied.inc()
                yield WindowedValue((row["tenant_id"], row["message_id"]), timestamp, [window])

    def _write(self, rows: list[dict]) -> dict[int, tuple[str, str]]:
        raise NotImplementedError


class _WriteProfilesFn(_BufferedSinkFn):
    def _write(self, rows):
        states = profiles.fold(rows)
        outcome = write_profile_states(self._client, self._table, states)
        return {
            i: outcome[profiles.profile_key(row)] for i, row in enumerate(rows) if outcome[profiles.profile_key(row)]
        }


class _WriteIdentityFn(_BufferedSinkFn):
    def __init__(self, *args):
        super().__init__(*args)
        self._items = beam.metrics.Metrics.counter("dynamodb", "identity_items_requested")
        self._retries = beam.metrics.Metrics.counter("dynamodb", "batch_write_retries")

    def _write(self, rows):
        requests, owner = [], []
        for index, row in enumerate(rows):
            for item in identity_items(row):
                requests.append({"PutRequest": {"Item": {k: {"S": v} for k, v in item.items()}}})
                owner.append(index)
        report = batch_write_with_retry(self._client, self._table, requests, max_workers=_WRITE_WORKERS)
        self._items.inc(len(requests))
        self._retries.inc(report.retries)
        return {owner[f.index]: (f.code, f.message) for f in report.failures}


class WriteProfiles(beam.PTransform):
    """Fold lake rows into DynamoDB person profiles (idempotent, order-independent).

    Returns a tuple-like result: ``.applied`` ((tenant_id, message_id) per applied row) and ``.failures``
    (FailedEvent, stage=sink, reason=sink_error).

    Args:
        aws: where DynamoDB is.
        table: the profiles table (see :func:`create_tables`).
        max_buffer: rows folded per read-merge-write round (bigger: fewer writes per person).
        client_factory: ``aws -> client`` (tests wrap the client to inject throttling).
    """

    def __init__(self, aws: AwsSettings, table: str, max_buffer: int = 500, client_factory: Callable | None = None):
        super().__init__()
        if not table:
            raise ValueError("WriteProfiles needs a table name")
        self._fn = _WriteProfilesFn(aws, table, max_buffer, client_factory)

    def expand(self, rows):
        return rows | "WriteProfileItems" >> beam.ParDo(self._fn).with_outputs(_BufferedSinkFn.FAILURES, main="applied")


class WriteIdentityGraph(beam.PTransform):
    """Write the identity links of lake rows to DynamoDB with BatchWriteItem (idempotent puts).

    Returns ``.applied`` and ``.failures`` like :class:`WriteProfiles`.
    """

    def __init__(self, aws: AwsSettings, table: str, max_buffer: int = 500, client_factory: Callable | None = None):
        super().__init__()
        if not table:
            raise ValueError("WriteIdentityGraph needs a table name")
        self._fn = _WriteIdentityFn(aws, table, max_buffer, client_factory)

    def expand(self, rows):
        return rows | "WriteIdentityItems" >> beam.ParDo(self._fn).with_outputs(
            _BufferedSinkFn.FAILURES, main="applied"
        )


def profile_order_counts(aws: AwsSettings, table: str, client=None) -> dict[str, int]:
    """Tenant -> sum of ``order_count`` over its profile items (a full scan: for reconciliation, not serving)."""
    client = client or _default_client(aws)
    totals: dict[str, int] = {}
    for page in client.get_paginator("scan").paginate(TableName=table, ProjectionExpression="pk, sk, order_count"):
        for item in page.get("Items", []):
            if item.get("sk", {}).get("S") != PROFILE_SORT_KEY:
                continue
            tenant = item["pk"]["S"].split("#", 1)[0]
            totals[tenant] = totals.get(tenant, 0) + int(item.get("order_count", {}).get("N", "0"))
    return totals
