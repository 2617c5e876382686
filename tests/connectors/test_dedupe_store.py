"""Cross-batch dedup store: first source_ref wins, replays are not duplicates, TTL expiry (moto over HTTP)."""

from __future__ import annotations

import datetime as dt

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.util import assert_that, equal_to
from botocore.exceptions import ClientError

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


# --------------------------------------------------------------------------- single-writer (pass) claims


class _CallCounts:
    """The real client, with a count of each DynamoDB call it makes (and an optional hook per call)."""

    def __init__(self, client, hooks=None):
        self._client, self.calls, self.hooks = client, {}, hooks or {}

    def __getattr__(self, name):
        method = getattr(self._client, name)

        def counted(**kwargs):
            self.calls[name] = self.calls.get(name, 0) + 1
            if name in self.hooks:
                return self.hooks[name](method, **kwargs)
            return method(**kwargs)

        return counted


def test_pass_claims_match_the_reference_semantics(aws):
    """Committed passes one after the other (each its own pass id): same answers as the conditional path."""
    import random

    create_dedupe_table(aws, "dedupe-pass")
    store, owners, rng = DedupeStore(aws, "dedupe-pass", workers=4), {}, random.Random(12)
    refs_seen: list[tuple[str, str]] = []
    for round_no in range(4):
        batch = []
        for i in range(150):
            roll = rng.random()
            if refs_seen and roll < 0.25:
                batch.append(rng.choice(refs_seen))
            elif refs_seen and roll < 0.45:
                batch.append((rng.choice(refs_seen)[0], f"kinesis:s/{round_no}/{i}"))
            else:
                batch.append((dedupe_key("t", f"m-{rng.randrange(500)}"), f"kinesis:s/{round_no}/{i}"))
        if round_no == 2:
            batch += batch[:10]
        expected = _reference_claims(owners, batch)
        # the pass hands its rows over in several batches: a key claimed by an earlier batch of the
        # same attempt (its write maybe still in flight) decides the later ones
        half = len(batch) // 2
        got = store.claim_in_pass(batch[:half], f"app/p{round_no}", "a1")
        got += store.claim_in_pass(batch[half:], f"app/p{round_no}", "a1")
        assert got == expected
        store.flush()
        assert any(expected) and not all(expected)
        refs_seen += batch
    # what was written is what the conditional path (another store) finds
    fresh = DedupeStore(aws, "dedupe-pass")
    keys = sorted(owners)
    assert fresh._batch_get(keys) == owners


def test_pass_claims_read_100_and_write_25_keys_a_call(aws):
    create_dedupe_table(aws, "dedupe-calls")
    counting = _CallCounts(aws.client("dynamodb"))
    store = DedupeStore(aws, "dedupe-calls", client=counting)
    items = [(dedupe_key("t", f"m-{i}"), f"ref-{i}") for i in range(250)]
    assert store.claim_in_pass(items, "app/p1", "a1") == [False] * 250
    store.flush()
    assert counting.calls == {"batch_get_item": 3, "batch_write_item": 10}
    resent = [(key, ref + "-again") for key, ref in items]
    assert DedupeStore(aws, "dedupe-calls").claim(resent) == [True] * 250


def test_a_rerun_takes_over_the_claims_of_its_dead_attempt(aws):
    """Attempt 1 of a pass claims m for record r2 and dies before its commit; the rerun (same pass,
    new attempt) read further and keeps r1 as the survivor: r1 must not be dropped as a duplicate of
    r2, which the rerun dropped within the pass (the event would be lost)."""
    create_dedupe_table(aws, "dedupe-rerun")
    key, other = dedupe_key("t", "m"), dedupe_key("t", "other")
    dead = DedupeStore(aws, "dedupe-rerun")
    assert dead.claim_in_pass([(key, "kinesis:s/1/20"), (other, "kinesis:s/1/21")], "app/p7", "dead") == [False, False]
    dead.flush()

    rerun = DedupeStore(aws, "dedupe-rerun")
    assert rerun.claim_in_pass([(key, "kinesis:s/0/5"), (other, "kinesis:s/1/21")], "app/p7", "again") == [False, False]
    rerun.flush()
    # the rerun committed: its claim is the one that counts from now on, for any later pass
    later = DedupeStore(aws, "dedupe-rerun")
    assert later.claim_in_pass([(key, "kinesis:s/1/20"), (key, "kinesis:s/0/5")], "app/p8", "x") == [True, False]
    # another pass (or another application's pass of the same tag) never takes a claim over
    assert later.claim_in_pass([(other, "kinesis:s/2/1")], "other-app/p7", "again") == [True]
    assert later.claim([(key, "kinesis:s/0/5"), (key, "kinesis:s/1/20")]) == [False, True]


def test_unprocessed_items_are_written_again(aws):
    """DynamoDB may leave part of a BatchWriteItem unprocessed (moto never does): the store sends it again."""
    create_dedupe_table(aws, "dedupe-unprocessed")
    left_over = []

    def write_half(method, RequestItems):
        requests = RequestItems["dedupe-unprocessed"]
        if len(left_over) < 3:  # the first three calls process only their first half
            left_over.append(len(requests))
            half = len(requests) // 2
            method(RequestItems={"dedupe-unprocessed": requests[:half]})
            return {"UnprocessedItems": {"dedupe-unprocessed": requests[half:]}}
        return method(RequestItems=RequestItems)

    from connectors.kinesis import Backoff

    counting = _CallCounts(aws.client("dynamodb"), hooks={"batch_write_item": write_half})
    store = DedupeStore(aws, "dedupe-unprocessed", client=counting, workers=1, backoff=Backoff(base_s=0.001))
    items = [(dedupe_key("t", f"m-{i}"), f"ref-{i}") for i in range(60)]
    assert store.claim_in_pass(items, "app/p1", "a1") == [False] * 60
    store.flush()
    assert counting.calls["batch_write_item"] == 3 + 3  # 3 chunks (25, 25, 10), each sent twice
    assert DedupeStore(aws, "dedupe-unprocessed")._batch_get([k for k, _ in items]) == dict(items)


def test_a_failed_claim_write_fails_the_flush(aws):
    """A write that cannot be made must stop the pass before its commit, not vanish in a thread."""
    create_dedupe_table(aws, "dedupe-fail")
    store = DedupeStore(aws, "dedupe-fail")
    huge = "r" * 500_000  # over DynamoDB's 400 KB item limit: a terminal error
    assert store.claim_in_pass([(dedupe_key("t", "m"), huge)], "app/p1", "a1") == [False]
    with pytest.raises(ClientError):
        store.flush()


def test_beam_transform_with_a_pass_id_writes_its_claims(aws):
    create_dedupe_table(aws, "dedupe-beam-pass")
    DedupeStore(aws, "dedupe-beam-pass").claim([(dedupe_key("t", "old"), "kinesis:s/0/1")])
    rows = [
        {"tenant_id": "t", "message_id": "old", "_source_ref": "kinesis:s/0/9"},
        *({"tenant_id": "t", "message_id": f"new-{i}", "_source_ref": f"kinesis:s/0/{10 + i}"} for i in range(120)),
    ]
    with beam.Pipeline(options=PipelineOptions(runner="FnApiRunner")) as p:
        out = p | beam.Create(rows) | DropSeenDuplicates(aws, "dedupe-beam-pass", pass_id="app/p1")
        assert_that(
            out.rows | beam.Map(lambda r: r["message_id"]), equal_to([f"new-{i}" for i in range(120)]), label="Rows"
        )
        assert_that(out.duplicates, equal_to([("t", "old")]), label="Duplicates")
    # the run's claims are in the table once it is done: a re-send of each new id is now a duplicate
    resent = [(dedupe_key("t", f"new-{i}"), "kinesis:s/9/9") for i in range(120)]
    assert DedupeStore(aws, "dedupe-beam-pass").claim(resent) == [True] * 120


def test_lake_file_batches_keep_their_shape_with_pass_claims(aws):
    """``batches=True`` holds batches until 2,000 rows or the bundle's end: every row still comes out in
    its own batch, and a copy of a message in a later batch of the same pass is a duplicate."""
    create_dedupe_table(aws, "dedupe-beam-batches")
    DedupeStore(aws, "dedupe-beam-batches").claim([(dedupe_key("t", "old"), "kinesis:s/0/1")])

    def row(mid, ref):
        return {"tenant_id": "t", "message_id": mid, "_source_ref": ref}

    batches = [
        (f"file-{b}", [row(f"m-{b}-{i}", f"kinesis:s/{b}/{i}") for i in range(900)]) for b in range(3)
    ]  # 2,700 rows: one release while processing, one at the bundle's end
    batches.append(("file-3", [row("old", "kinesis:s/3/0"), row("m-0-5", "kinesis:s/3/1"), row("x", "kinesis:s/3/2")]))
    with beam.Pipeline(options=PipelineOptions(runner="FnApiRunner")) as p:
        out = p | beam.Create(batches) | DropSeenDuplicates(aws, "dedupe-beam-batches", batches=True, pass_id="a/p1")
        kept = out.rows | beam.FlatMap(lambda kv: [(kv[0], r["message_id"]) for r in kv[1]])
        # which copy of m-0-5 wins depends on the order the batches arrive in; each row stays in its batch
        expected = [(f"file-{b}", f"m-{b}-{i}") for b in range(3) for i in range(900)] + [("file-3", "x")]
        assert_that(
            kept,
            lambda got: (
                (
                    len(got) == len(expected)
                    and set(got) - set(expected) <= {("file-3", "m-0-5")}
                    and [mid for _, mid in got].count("m-0-5") == 1
                    and set(expected) - set(got) <= {("file-0", "m-0-5")}
                )
                or pytest.fail(f"rows: {len(got)}")
            ),
            label="Rows",
        )
        assert_that(out.duplicates, equal_to([("t", "old"), ("t", "m-0-5")]), label="Duplicates")
