"""The conditional segment writer: retries, error classes, and the as-of guard on a real moto server."""

from __future__ import annotations

import datetime as dt

import pytest
from botocore.exceptions import ClientError

from connectors.segment_store import (
    SegmentStoreError,
    TransientStoreError,
    create_table,
    read_membership,
    write_memberships,
)


def client_error(code: str, status: int = 400) -> ClientError:
    return ClientError(
        {"Error": {"Code": code, "Message": code}, "ResponseMetadata": {"HTTPStatusCode": status}}, "UpdateItem"
    )


class FlakyClient:
    """Fails the first ``failures`` calls with ``error``, then succeeds; records every call."""

    def __init__(self, error: ClientError | None, failures: int):
        self.error, self.failures, self.calls = error, failures, []

    def update_item(self, **kwargs):
        self.calls.append(kwargs)
        if self.error is not None and len(self.calls) <= self.failures:
            raise self.error
        return {}


@pytest.mark.parametrize(
    "error",
    [
        client_error("ProvisionedThroughputExceededException"),
        client_error("ThrottlingException"),
        client_error("InternalServerError", 500),
        client_error("SomethingNew", 503),
    ],
)
def test_transient_errors_are_retried_with_backoff(error):
    client = FlakyClient(error, failures=2)
    stats = write_memberships(client, "t", [("acme", "p1", ["b", "a"])], dt.date(2026, 10, 1), base_delay=0.001)
    assert (stats.written, stats.retries, len(client.calls)) == (1, 2, 3)
    call = client.calls[-1]
    assert call["Key"] == {"pk": {"S": "acme#p1"}, "sk": {"S": "SEGMENTS"}}
    assert call["ExpressionAttributeValues"][":seg"] == {"L": [{"S": "a"}, {"S": "b"}]}  # sorted names


def test_transient_errors_that_outlive_the_retries_raise():
    client = FlakyClient(client_error("ThrottlingException"), failures=100)
    with pytest.raises(TransientStoreError):
        write_memberships(client, "t", [("a", "p", [])], dt.date(2026, 10, 1), max_attempts=3, base_delay=0.001)
    assert len(client.calls) == 3


def test_terminal_errors_raise_at_once():
    client = FlakyClient(client_error("ResourceNotFoundException"), failures=100)
    with pytest.raises(SegmentStoreError):
        write_memberships(client, "t", [("a", "p", [])], dt.date(2026, 10, 1), base_delay=0.001)
    assert len(client.calls) == 1


def test_a_failed_condition_is_counted_not_raised():
    client = FlakyClient(client_error("ConditionalCheckFailedException"), failures=1)
    stats = write_memberships(client, "t", [("a", "p", []), ("a", "q", [])], dt.date(2026, 10, 1), concurrency=1)
    assert (stats.written, stats.stale, stats.retries) == (1, 1, 0)


@pytest.mark.integration
def test_older_as_of_never_overwrites_newer(aws):
    client = aws.client("dynamodb")
    create_table(client, "profiles")
    day = dt.date(2026, 10, 10)
    stats = write_memberships(client, "profiles", [("t", "p1", ["vip"]), ("t", "p2", [])], day)
    assert (stats.written, stats.stale) == (2, 0)
    stats = write_memberships(client, "profiles", [("t", "p1", [])], day - dt.timedelta(days=1))
    assert (stats.written, stats.stale) == (0, 1)
    assert read_membership(client, "profiles", "t", "p1") == (["vip"], day)
    # the same as-of again (a rerun) rewrites; a newer one replaces
    assert write_memberships(client, "profiles", [("t", "p1", ["vip", "a"])], day).written == 1
    assert read_membership(client, "profiles", "t", "p1") == (["a", "vip"], day)
    later = day + dt.timedelta(days=1)
    write_memberships(client, "profiles", [("t", "p1", [])], later)
    assert read_membership(client, "profiles", "t", "p1") == ([], later)
    assert read_membership(client, "profiles", "t", "nobody") is None


@pytest.mark.integration
def test_a_table_with_a_partition_key_only(aws):
    client = aws.client("dynamodb")
    create_table(client, "segments_only", key_attribute="id", sort_key=None)
    write_memberships(client, "segments_only", [("t", "p", ["a"])], dt.date(2026, 1, 1), "id", None)
    assert read_membership(client, "segments_only", "t", "p", "id", None) == (["a"], dt.date(2026, 1, 1))
