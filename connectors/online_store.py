"""DynamoDB online feature store: the latest values per (tenant, person, feature group).

Item layout (one item per person and group; ``docs/features.md``):

``entity`` (S, hash key) ``tenant_id#person_id`` · ``feature_group`` (S, range key) · ``feature_ts`` (N, the
snapshot's as-of time in epoch microseconds: the *version* of the values) · ``event_ts`` (N, epoch
microseconds of the group's latest source event, absent when none: the TTL clock) · ``features`` (M,
feature name -> value, NULL for a null) · ``tenant_id``, ``person_id``, ``as_of`` (ISO text) for humans.

Writes never go back in time: each item is a conditional ``PutItem`` with
``attribute_not_exists(feature_ts) OR feature_ts <= :new_ts``. An older snapshot (a re-materialised
old window, a slow retry) is refused by DynamoDB itself and counted as ``skipped_older``; an equal
``feature_ts`` overwrites (a rerun of the same snapshot is idempotent). This beats Feast's DynamoDB
store, which writes plain puts so re-materialising an old window overwrites newer values.

Why conditional ``PutItem`` in a thread pool rather than the alternatives: ``BatchWriteItem`` (and the
sinks helper's :func:`connectors.dynamodb.batch_write_with_retry` built on it) cannot carry a condition;
``TransactWriteItems`` can, but a single stale item cancels its whole transaction (every other item must
then be re-sent), it costs twice the write capacity and concurrent writers get
``TransactionConflictException``. Independent conditional puts give a per-item outcome at the same
throughput once they run in parallel (the client is thread-safe). Throttling and 5xx are retried per item
with exponential backoff and full jitter (:class:`connectors.dynamodb.Backoff`); what outlasts the retries
raises :class:`connectors.dynamodb.TransientSinkError` so the runner retries the bundle (safe: the
conditions make every write idempotent and monotonic).

Reads apply the TTL (Feast #1802 served expired values): a group whose ``event_ts`` is missing or older
than the TTL at read time reads as missing; DynamoDB's own TTL deletion is lazy (up to days), so it is
never relied on for correctness.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import apache_beam as beam
import pyarrow as pa
from apache_beam.metrics import Metrics
from boto3.dynamodb.types import TypeDeserializer, TypeSerializer
from botocore.exceptions import BotoCoreError, ClientError

from connectors.aws import AwsSettings
from connectors.dynamodb import Backoff, TransientSinkError, WriteFailure, _batch_get, _describe, _error_code
from connectors.dynamodb import sink_failure as _sink_failure
from schemas.features import GROUPS, features_of

__all__ = [
    "OnlineWriteReport",
    "WriteOnlineFeatures",
    "create_online_table",
    "online_items",
    "read_online_features",
    "write_online_items",
]

HASH_KEY, RANGE_KEY = "entity", "feature_group"
CONDITION = "attribute_not_exists(feature_ts) OR feature_ts <= :new_ts"
_serializer = TypeSerializer()
_deserializer = TypeDeserializer()
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_MICROSECOND = dt.timedelta(microseconds=1)


def create_online_table(aws: AwsSettings, table: str) -> None:
    """Create the online table (on-demand) if missing and wait until it is active."""
    client = aws.client("dynamodb")
    try:
        client.create_table(
            TableName=table,
            AttributeDefinitions=[
                {"AttributeName": HASH_KEY, "AttributeType": "S"},
                {"AttributeName": RANGE_KEY, "AttributeType": "S"},
            ],
            KeySchema=[
                {"AttributeName": HASH_KEY, "KeyType": "HASH"},
                {"AttributeName": RANGE_KEY, "KeyType": "RANGE"},
            ],
            BillingMode="PAY_PER_REQUEST",
        )
    except ClientError as err:
        if err.response["Error"]["Code"] != "ResourceInUseException":
            raise
    client.get_waiter("table_exists").wait(TableName=table, WaiterConfig={"Delay": 1, "MaxAttempts": 60})


def entity_key(tenant_id: str, person_id: str) -> str:
    return f"{tenant_id}#{person_id}"


def _micros(value: dt.datetime) -> int:
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    delta = value - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def _from_micros(value: int) -> dt.datetime:
    return _EPOCH + dt.timedelta(microseconds=int(value))


def _attr(value: Any) -> Any:
    """A Python feature value as a DynamoDB attribute value (floats as exact decimals; NaN/inf -> NULL)."""
    if isinstance(value, float):
        return None if math.isnan(value) or math.isinf(value) else Decimal(repr(value))
    return value


def _value(value: Any, dtype: str) -> Any:
    """A stored attribute back as the feature's declared dtype (DynamoDB numbers come back as Decimal)."""
    if value is None:
        return None
    if dtype == "int64":
        return int(value)
    if dtype == "float64":
        return float(value)
    return value


def online_items(features: pa.Table) -> list[dict[str, Any]]:
    """Offline feature rows (``schemas.features.OFFLINE_SCHEMA``) -> online items (plain Python values)."""
    rows = features.to_pylist()
    items = []
    for row in rows:
        for group in GROUPS:
            event_ts = row.get(group.event_ts_column)
            item: dict[str, Any] = {
                HASH_KEY: entity_key(row["tenant_id"], row["person_id"]),
                RANGE_KEY: group.name,
                "tenant_id": row["tenant_id"],
                "person_id": row["person_id"],
                "feature_ts": _micros(row["as_of"]),
                "as_of": row["as_of"].isoformat(),
                "features": {feat.name: _attr(row.get(feat.name)) for feat in features_of(group.name)},
            }
            if event_ts is not None:
                item["event_ts"] = _micros(event_ts)
            items.append(item)
    return items


@dataclass
class OnlineWriteReport:
    written: int = 0
    skipped_older: int = 0
    """Refused by the condition: the table already holds a newer snapshot of that item."""
    retries: int = 0
    failures: list[WriteFailure] = field(default_factory=list)

    def merge(self, other: OnlineWriteReport) -> None:
        self.written += other.written
        self.skipped_older += other.skipped_older
        self.retries += other.retries
        self.failures.extend(other.failures)


def _put_one(client, table: str, index: int, item: Mapping[str, Any], backoff: Backoff) -> OnlineWriteReport:
    report = OnlineWriteReport()
    wire = {k: _serializer.serialize(v) for k, v in item.items()}
    attempt = 0
    while True:
        try:
            client.put_item(
                TableName=table,
                Item=wire,
                ConditionExpression=CONDITION,
                ExpressionAttributeValues={":new_ts": {"N": str(item["feature_ts"])}},
            )
            report.written += 1
            return report
        except (ClientError, BotoCoreError) as err:
            code = err.response.get("Error", {}).get("Code") if isinstance(err, ClientError) else None
            if code == "ConditionalCheckFailedException":
                report.skipped_older += 1
                return report
            if _error_code(err) is None:
                report.failures.append(WriteFailure(index, *_describe(err)))
                return report
            attempt += 1
            if attempt >= backoff.max_attempts:
                raise TransientSinkError(f"PutItem on {table}: {_describe(err)} after {attempt} attempts") from err
            report.retries += 1
            backoff.wait(attempt)


def write_online_items(
    client,
    table: str,
    items: Sequence[Mapping[str, Any]],
    *,
    max_workers: int = 8,
    backoff: Backoff | None = None,
) -> OnlineWriteReport:
    """Conditionally put ``items`` (see :func:`online_items`), in parallel, never replacing a newer snapshot.

    Items with the same key in one call are reduced to the newest first (a smaller request count and
    no race between two threads on one key).

    Args:
        client: a low-level boto3 DynamoDB client (thread-safe), or a stand-in with ``put_item``.
        table: the online table.
        items: plain-Python items with ``entity``, ``feature_group``, ``feature_ts`` ...
        max_workers: parallel PutItem calls.
        backoff: retry policy for throttling / 5xx (tests inject a fake sleep).
    """
    backoff = backoff or Backoff()
    newest: dict[tuple[str, str], int] = {}
    report = OnlineWriteReport()
    for index, item in enumerate(items):
        key = (item[HASH_KEY], item[RANGE_KEY])
        if key not in newest or items[newest[key]]["feature_ts"] <= item["feature_ts"]:
            if key in newest:
                report.skipped_older += 1
            newest[key] = index
        else:
            report.skipped_older += 1
    indices = list(newest.values())
    if max_workers <= 1 or len(indices) <= 1:
        for i in indices:
            report.merge(_put_one(client, table, i, items[i], backoff))
        return report
    with ThreadPoolExecutor(max_workers=max_workers) as pool:
        for part in pool.map(lambda i: _put_one(client, table, i, items[i], backoff), indices):
            report.merge(part)
    return report


def read_online_features(
    client,
    table: str,
    tenant_id: str,
    person_ids: Iterable[str],
    *,
    ttl: dt.timedelta | Mapping[str, dt.timedelta] | None,
    groups: Sequence[str] | None = None,
    now: dt.datetime | None = None,
    backoff: Backoff | None = None,
) -> dict[str, dict[str, Any]]:
    """Latest features per person, with the TTL applied at read time.

    Returns ``{person_id: {feature: value, ..., "<group>_feature_ts": datetime, "<group>_event_ts": datetime}}``
    with every feature of every requested group present: ``None`` when the group is missing or expired
    (its latest source event is older than ``ttl`` at ``now``, or it has none). ``ttl`` may be one
    duration for all groups or a mapping per group; ``None`` disables it.
    """
    groups = list(groups or [g.name for g in GROUPS])
    now_us = _micros(now or dt.datetime.now(dt.UTC))
    persons = list(dict.fromkeys(person_ids))
    keys = [{HASH_KEY: {"S": entity_key(tenant_id, p)}, RANGE_KEY: {"S": g}} for p in persons for g in groups]
    raw = _batch_get(client, table, keys, backoff or Backoff()) if keys else []
    stored: dict[tuple[str, str], dict] = {}
    for item in raw:
        plain = {k: _deserializer.deserialize(v) for k, v in item.items()}
        stored[(plain["person_id"], plain[RANGE_KEY])] = plain
    out: dict[str, dict[str, Any]] = {}
    for person in persons:
        values: dict[str, Any] = {}
        for group in groups:
            item = stored.get((person, group))
            limit = ttl.get(group) if isinstance(ttl, Mapping) else ttl
            event_ts = item.get("event_ts") if item else None
            fresh = item is not None and (
                limit is None or (event_ts is not None and now_us - int(event_ts) <= limit // _MICROSECOND)
            )
            feats = item["features"] if fresh else {}
            for feat in features_of(group):
                values[feat.name] = _value(feats.get(feat.name), feat.dtype)
            values[f"{group}_feature_ts"] = _from_micros(item["feature_ts"]) if fresh else None
            values[f"{group}_event_ts"] = _from_micros(event_ts) if fresh and event_ts is not None else None
        out[person] = values
    return out


# --- Beam ----------------------------------------------------------------------------------------


class _WriteOnlineFn(beam.DoFn):
    def __init__(self, aws: AwsSettings, table: str, max_workers: int, client_factory: Callable | None):
        self._aws, self._table, self._max_workers = aws, table, max_workers
        self._client_factory = client_factory
        self.written = Metrics.counter("livora", "online_items_written")
        self.skipped = Metrics.counter("livora", "online_items_skipped_older")
        self.retries = Metrics.counter("livora", "online_write_retries")
        self.failed = Metrics.counter("livora", "online_items_failed")

    def setup(self):
        self._client = self._client_factory(self._aws) if self._client_factory else self._aws.client("dynamodb")

    def process(self, element):
        _, features = element
        items = online_items(features)
        report = write_online_items(self._client, self._table, items, max_workers=self._max_workers)
        self.written.inc(report.written)
        self.skipped.inc(report.skipped_older)
        self.retries.inc(report.retries)
        self.failed.inc(len(report.failures))
        for failure in report.failures:
            item = items[failure.index]
            row = {"tenant_id": item["tenant_id"], "message_id": f"{item[HASH_KEY]}/{item[RANGE_KEY]}", **item}
            yield beam.pvalue.TaggedOutput(
                WriteOnlineFeatures.FAILURES, _sink_failure(row, self._table, failure.code, failure.message)
            )
        yield report.written


class WriteOnlineFeatures(beam.PTransform):
    """``(key, feature table)`` elements -> conditional writes to the online table.

    Returns a tagged result: main output = items written per element; ``failures`` = FailedEvent
    for items DynamoDB refused for good (throttling is retried, then the bundle fails and is retried).
    """

    FAILURES = "failures"

    def __init__(self, aws: AwsSettings, table: str, max_workers: int = 8, client_factory: Callable | None = None):
        super().__init__()
        if not table:
            raise ValueError("WriteOnlineFeatures needs a table name")
        self.aws, self.table, self.max_workers, self.client_factory = aws, table, max_workers, client_factory

    def expand(self, tables):
        return tables | "PutOnlineItems" >> beam.ParDo(
            _WriteOnlineFn(self.aws, self.table, self.max_workers, self.client_factory)
        ).with_outputs(self.FAILURES, main="written")
