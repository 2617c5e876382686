"""Segment membership in the DynamoDB profile store, for real-time use.

One item per person in the profile table, beside the person's profile item: ``pk = <tenant_id>#<person_id>``
(the profile's partition key, see ``docs/sinks.md``) and ``sk = SEGMENTS`` (the profile item is
``sk = PROFILE`` and is rewritten whole by its own writer, so segments live in their own item; a real-time
reader gets both with one ``Query`` on ``pk``). A write sets only the segment attributes (``segments``: the
sorted names, possibly empty; ``segments_as_of``: ISO date; ``tenant_id``, ``person_id``). For a table with a
partition key only, pass ``sort_key=None``. Every write is *conditional*: it applies only when the item has no
``segments_as_of`` yet or an older-or-equal one, so a backfill of an older as-of date can never
overwrite newer membership (an online store that writes plain puts gets this wrong), and a
rerun of the same date rewrites the same values.

Why not ``BatchWriteItem`` (``connectors.dynamodb.batch_write_with_retry``): batch writes are plain
puts; DynamoDB accepts no condition expression in them, and a put would replace the whole profile
item. So each person is one ``UpdateItem``; a small thread pool keeps several in flight.

Errors: throttling and 5xx are *transient* (retried with exponential backoff and jitter, then raised as
:class:`TransientStoreError` so the runner retries the bundle); a failed condition is *not* an error (the
item holds a newer as-of: counted as stale); anything else (missing table, wrong key schema) is a
configuration error raised as :class:`SegmentStoreError`.
"""

from __future__ import annotations

import datetime as dt
import random
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from botocore.exceptions import BotoCoreError, ClientError

__all__ = [
    "DEFAULT_KEY_ATTRIBUTE",
    "DEFAULT_SORT_KEY",
    "SEGMENTS_SORT_VALUE",
    "SegmentStoreError",
    "TransientStoreError",
    "WriteStats",
    "create_table",
    "item_key",
    "read_membership",
    "write_memberships",
]

DEFAULT_KEY_ATTRIBUTE = "pk"
DEFAULT_SORT_KEY = "sk"
SEGMENTS_SORT_VALUE = "SEGMENTS"
TRANSIENT_CODES = frozenset(
    {
        "ProvisionedThroughputExceededException",
        "ThrottlingException",
        "RequestLimitExceeded",
        "InternalServerError",
        "ServiceUnavailable",
        "TransactionConflictException",
    }
)


class SegmentStoreError(RuntimeError):
    """A terminal store error: configuration or schema, retrying cannot help."""


class TransientStoreError(RuntimeError):
    """Throttling or a server error that outlived the retries: let the runner retry the bundle."""


@dataclass
class WriteStats:
    written: int = 0
    stale: int = 0
    retries: int = 0

    def __iadd__(self, other: WriteStats) -> WriteStats:
        self.written += other.written
        self.stale += other.stale
        self.retries += other.retries
        return self


def item_key(tenant_id: str, person_id: str) -> str:
    return f"{tenant_id}#{person_id}"


def _key(key_attribute: str, sort_key: str | None, tenant_id: str, person_id: str) -> dict:
    key = {key_attribute: {"S": item_key(tenant_id, person_id)}}
    if sort_key:
        key[sort_key] = {"S": SEGMENTS_SORT_VALUE}
    return key


def _update_one(
    client,
    table: str,
    key_attribute: str,
    sort_key: str | None,
    tenant_id: str,
    person_id: str,
    segments: Sequence[str],
    as_of: dt.date,
    max_attempts: int,
    base_delay: float,
) -> WriteStats:
    stats = WriteStats()
    for attempt in range(max_attempts):
        try:
            client.update_item(
                TableName=table,
                Key=_key(key_attribute, sort_key, tenant_id, person_id),
                UpdateExpression="SET #seg = :seg, #asof = :asof, #tenant = :tenant, #person = :person",
                ConditionExpression="attribute_not_exists(#asof) OR #asof <= :asof",
                ExpressionAttributeNames={
                    "#seg": "segments",
                    "#asof": "segments_as_of",
                    "#tenant": "tenant_id",
                    "#person": "person_id",
                },
                ExpressionAttributeValues={
                    ":seg": {"L": [{"S": name} for name in sorted(segments)]},
                    ":asof": {"S": as_of.isoformat()},
                    ":tenant": {"S": tenant_id},
                    ":person": {"S": person_id},
                },
            )
            stats.written += 1
            return stats
        except ClientError as err:
            code = err.response.get("Error", {}).get("Code", "")
            status = err.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
            if code == "ConditionalCheckFailedException":
                stats.stale += 1
                return stats
            if code not in TRANSIENT_CODES and status < 500:
                raise SegmentStoreError(f"{table}: {code}: {err}") from err
        except BotoCoreError:  # connection resets, timeouts
            pass
        stats.retries += 1
        if attempt + 1 < max_attempts:
            time.sleep(base_delay * (2**attempt) * (0.5 + random.random()))
    raise TransientStoreError(f"{table}: {item_key(tenant_id, person_id)} still failing after {max_attempts} attempts")


def write_memberships(
    client,
    table: str,
    rows: Iterable[tuple[str, str, Sequence[str]]],
    as_of: dt.date,
    key_attribute: str = DEFAULT_KEY_ATTRIBUTE,
    sort_key: str | None = DEFAULT_SORT_KEY,
    concurrency: int = 8,
    max_attempts: int = 8,
    base_delay: float = 0.05,
) -> WriteStats:
    """Conditionally write ``(tenant_id, person_id, segments)`` rows as of ``as_of``; returns counts."""
    stats = WriteStats()
    rows = list(rows)
    if not rows:
        return stats

    def one(r):
        return _update_one(client, table, key_attribute, sort_key, r[0], r[1], r[2], as_of, max_attempts, base_delay)

    if concurrency <= 1:
        for r in rows:
            stats += one(r)
        return stats
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        for result in pool.map(one, rows):
            stats += result
    return stats


def read_membership(
    client,
    table: str,
    tenant_id: str,
    person_id: str,
    key_attribute: str = DEFAULT_KEY_ATTRIBUTE,
    sort_key: str | None = DEFAULT_SORT_KEY,
):
    """``(segments, as_of)`` stored for a person, or None (real-time readers, tests)."""
    item = client.get_item(
        TableName=table, Key=_key(key_attribute, sort_key, tenant_id, person_id), ConsistentRead=True
    ).get("Item")
    if not item or "segments_as_of" not in item:
        return None
    return [v["S"] for v in item["segments"]["L"]], dt.date.fromisoformat(item["segments_as_of"]["S"])


def create_table(
    client, table: str, key_attribute: str = DEFAULT_KEY_ATTRIBUTE, sort_key: str | None = DEFAULT_SORT_KEY
) -> None:
    """Create the profile table's layout (on-demand) if missing: for local stacks and tests; infra owns AWS."""
    keys = [key_attribute, *([sort_key] if sort_key else [])]
    try:
        client.create_table(
            TableName=table,
            KeySchema=[{"AttributeName": k, "KeyType": t} for k, t in zip(keys, ("HASH", "RANGE"), strict=False)],
            AttributeDefinitions=[{"AttributeName": k, "AttributeType": "S"} for k in keys],
            BillingMode="PAY_PER_REQUEST",
        )
    except ClientError as err:
        if err.response.get("Error", {}).get("Code") != "ResourceInUseException":
            raise
    client.get_waiter("table_exists").wait(TableName=table)
