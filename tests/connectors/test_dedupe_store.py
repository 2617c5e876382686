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


def _reference_claims(owners: dict[str, str], items):
    """The documented semantics, independently: a live key owned by another source_ref is a duplicate;
    an unknown key is claimed by its first occurrence; the same source_ref is a replay (kept)."""
    out = []
    for key, ref in items:
        owners.setdefault(key, ref)
        out.append(owners[key] != ref)
    return out


def test_mixed_batches_match_the_reference_semantics(aws):
    """Rounds of new ids, re-sends (other source_ref), replays (same source_ref) and in-batch repeats."""
    import random

    create_dedupe_table(aws, "dedupe-mixed")
    store, owners, rng = DedupeStore(aws, "dedupe-mixed", workers=4), {}, random.Random(11)
    refs_seen: list[tuple[str, str]] = []
    for round_no in range(4):
        batch = []
        for i in range(120):
            roll = rng.random()
            if refs_seen and roll < 0.25:  # a replay of an earlier record: same key, same source_ref
                batch.append(rng.choice(refs_seen))
            elif refs_seen and roll < 0.45:  # a re-send: earlier key, new record
                batch.append((rng.choice(refs_seen)[0], f"kinesis:s/{round_no}/{i}"))
            else:
                batch.append((dedupe_key("t", f"m-{rng.randrange(400)}"), f"kinesis:s/{round_no}/{i}"))
        if round_no == 2:
            batch += batch[:10]  # the same records twice within one batch
        expected = _reference_claims(owners, batch)
        assert store.claim(batch) == expected
        assert any(expected) and not all(expected)
        refs_seen += batch


class _CountingClient:
    def __init__(self, client):
        self._client, self.batch_gets = client, 0

    def __getattr__(self, name):
        return getattr(self._client, name)

    def batch_get_item(self, **kwargs):
        self.batch_gets += 1
        return self._client.batch_get_item(**kwargs)


def test_a_lost_race_names_the_owner_from_the_failed_put(aws):
    """ReturnValuesOnConditionCheckFailure gives the holder: no extra read after a lost race."""
    create_dedupe_table(aws, "dedupe-race2")
    theirs = DedupeStore(aws, "dedupe-race2")
    counting = _CountingClient(aws.client("dynamodb"))
    ours = DedupeStore(aws, "dedupe-race2", client=counting)
    key = dedupe_key("t", "raced")
    assert theirs.claim([(key, "kinesis:s/1/5")]) == [False]
    assert ours._put_first(key, "kinesis:s/0/9") == "kinesis:s/1/5"
    assert counting.batch_gets == 0
