"""Cross-batch dedup store: first source_ref wins, replays are not duplicates, TTL expiry (moto over HTTP)."""

from __future__ import annotations

import datetime as dt

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.util import assert_that, equal_to

from connectors.dedupe_store import DedupeStore, DropSeenDuplicates, create_dedupe_table, dedupe_key

pytestmark = pytest.mark.integration


def test_first_source_ref_wins_and_replays_pass(aws):
    assert create_dedupe_table(aws, "dedupe") is True
    assert create_dedupe_table(aws, "dedupe") is False
    store = DedupeStore(aws, "dedupe")
    a, b = dedupe_key("acme-in", "m-1"), dedupe_key("acme-in", "m-2")
    assert store.claim([(a, "kinesis:s/0/1"), (b, "kinesis:s/0/2")]) == [False, False]
    # next batch: a re-send of m-1 (new record), a replay of the very same m-2 record, a new id
    c = dedupe_key("bloom-in", "m-1")  # same message id, other tenant: not a duplicate
    assert store.claim([(a, "kinesis:s/1/7"), (b, "kinesis:s/0/2"), (c, "kinesis:s/1/8")]) == [True, False, False]
    # within one call: the first occurrence claims, a different later one is a duplicate
    d = dedupe_key("acme-in", "m-3")
    assert store.claim([(d, "r1"), (d, "r2"), (d, "r1")]) == [False, True, False]


def test_many_keys_use_batched_reads(aws):
    create_dedupe_table(aws, "dedupe-many")
    store = DedupeStore(aws, "dedupe-many")
    items = [(dedupe_key("t", f"m-{i}"), f"ref-{i}") for i in range(250)]  # > 100: several BatchGetItem pages
    assert store.claim(items) == [False] * 250
    resent = [(k, ref + "-again") for k, ref in items[::5]]
    assert store.claim(resent) == [True] * 50
    assert store.claim(items) == [False] * 250


def test_expired_entries_are_forgotten(aws):
    create_dedupe_table(aws, "dedupe-ttl")
    clock = [1_000_000.0]
    store = DedupeStore(aws, "dedupe-ttl", ttl=dt.timedelta(hours=24), now=lambda: clock[0])
    key = dedupe_key("t", "m")
    assert store.claim([(key, "first")]) == [False]
    clock[0] += 23 * 3600
    assert store.claim([(key, "second")]) == [True]
    clock[0] += 2 * 3600  # past 24 h: DynamoDB's TTL sweep may lag; the store checks expiry itself
    assert store.claim([(key, "third")]) == [False]
    assert store.claim([(key, "fourth")]) == [True]


def test_beam_transform_splits_rows_and_duplicates(aws):
    create_dedupe_table(aws, "dedupe-beam")
    DedupeStore(aws, "dedupe-beam").claim([(dedupe_key("t", "old"), "kinesis:s/0/1")])
    rows = [
        {"tenant_id": "t", "message_id": "old", "_source_ref": "kinesis:s/0/9"},  # seen before: duplicate
        {"tenant_id": "t", "message_id": "old2", "_source_ref": "kinesis:s/0/10"},
        {"tenant_id": "t", "message_id": "new", "_source_ref": "kinesis:s/0/11"},
    ]
    with beam.Pipeline(options=PipelineOptions(runner="FnApiRunner")) as p:
        out = p | beam.Create(rows) | DropSeenDuplicates(aws, "dedupe-beam")
        assert_that(out.rows | beam.Map(lambda r: r["message_id"]), equal_to(["old2", "new"]), label="Rows")
        assert_that(out.duplicates, equal_to([("t", "old")]), label="Duplicates")


def test_a_key_claimed_concurrently_keeps_its_first_owner(aws):
    """Another worker claims a key between our read and our conditional put: theirs stays first."""
    create_dedupe_table(aws, "dedupe-race")
    ours, theirs = DedupeStore(aws, "dedupe-race"), DedupeStore(aws, "dedupe-race")
    taken, free = dedupe_key("t", "raced"), dedupe_key("t", "free")
    assert theirs.claim([(taken, "kinesis:s/1/5")]) == [False]
    assert ours._put_first(taken, "kinesis:s/0/9") == "kinesis:s/1/5"
    assert ours._put_first(free, "kinesis:s/0/10") == "kinesis:s/0/10"
    assert ours.claim([(taken, "kinesis:s/0/9"), (free, "kinesis:s/0/10")]) == [True, False]
