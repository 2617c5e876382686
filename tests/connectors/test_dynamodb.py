"""DynamoDB sinks against the real moto server over HTTP; throttling and UnprocessedItems injected."""

from __future__ import annotations

import datetime as dt
import json
import random
from decimal import Decimal

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.util import assert_that, equal_to
from botocore.exceptions import ClientError
from hypothesis import given, settings
from hypothesis import strategies as st

from connectors.dynamodb import (
    Backoff,
    TransientSinkError,
    WriteIdentityGraph,
    WriteProfiles,
    batch_write_with_retry,
    create_tables,
    nodes_of,
    persons_of,
    read_profile,
    write_profile_states,
)
from transforms.profiles import contribution, fold

pytestmark = pytest.mark.integration

PROFILES, IDENTITY = "livora-profiles", "livora-identity"
T0 = dt.datetime(2026, 3, 1, 10, 0, tzinfo=dt.UTC)


def lake_row(mid, minutes, person="p1", type_="track", event=None, **extra):
    row = {
        "tenant_id": "acme-in",
        "event_date": (T0 + dt.timedelta(minutes=minutes)).date(),
        "message_id": mid,
        "type": type_,
        "event": event,
        "person_id": person,
        "anonymous_id": None,
        "user_id": None,
        "previous_id": None,
        "timestamp": T0 + dt.timedelta(minutes=minutes),
        "received_at": T0 + dt.timedelta(minutes=minutes, seconds=1),
        "properties": "{}",
        "traits": None,
        "order_id": None,
        "revenue_inr": None,
    }
    row.update(extra)
    return row


def throttle(operation):
    return ClientError({"Error": {"Code": "ProvisionedThroughputExceededException", "Message": "slow down"}}, operation)


class FlakyClient:
    """A real client whose batch writes are throttled first, then only partly processed (UnprocessedItems)."""

    def __init__(self, client, throttles=1, unprocessed_rounds=2):
        self._client, self.throttles, self.unprocessed_rounds = client, throttles, unprocessed_rounds
        self.calls = []

    def __getattr__(self, name):
        return getattr(self._client, name)

    def batch_write_item(self, RequestItems):
        ((table, requests),) = RequestItems.items()
        self.calls.append(len(requests))
        if self.throttles:
            self.throttles -= 1
            raise throttle("BatchWriteItem")
        if self.unprocessed_rounds and len(requests) > 1:
            self.unprocessed_rounds -= 1
            keep, rest = requests[: len(requests) // 2], requests[len(requests) // 2 :]
            self._client.batch_write_item(RequestItems={table: keep})
            return {"UnprocessedItems": {table: rest}}
        return self._client.batch_write_item(RequestItems=RequestItems)

    def put_item(self, **kwargs):
        if self.throttles:
            self.throttles -= 1
            raise throttle("PutItem")
        return self._client.put_item(**kwargs)


def no_sleep_backoff(delays):
    return Backoff(base=0.01, cap=1.0, sleep=delays.append, rng=lambda: 1.0)


def scan_all(client, table):
    items, start = [], None
    while True:
        response = client.scan(TableName=table, **({"ExclusiveStartKey": start} if start else {}))
        items += response["Items"]
        start = response.get("LastEvaluatedKey")
        if not start:
            return items


def test_create_tables_is_idempotent(aws):
    create_tables(aws, PROFILES, IDENTITY)
    create_tables(aws, PROFILES, IDENTITY)
    assert {PROFILES, IDENTITY} <= set(aws.client("dynamodb").list_tables()["TableNames"])


def test_batch_write_retries_throttling_and_unprocessed_items_with_backoff(aws):
    create_tables(aws, PROFILES, IDENTITY)
    flaky = FlakyClient(aws.client("dynamodb"), throttles=2, unprocessed_rounds=3)
    requests = [
        {"PutRequest": {"Item": {"pk": {"S": f"k{i}"}, "sk": {"S": "x"}, "n": {"N": str(i)}}}} for i in range(60)
    ]
    requests.append(requests[3])  # a duplicate key in the input: written once, no ValidationException
    delays = []
    report = batch_write_with_retry(flaky, IDENTITY, requests, backoff=no_sleep_backoff(delays))
    assert report.failures == []
    assert max(flaky.calls) <= 25
    stored = {item["pk"]["S"]: int(item["n"]["N"]) for item in scan_all(aws.client("dynamodb"), IDENTITY)}
    assert stored == {f"k{i}": i for i in range(60)}
    # two throttles then three partial rounds: five waits, growing exponentially within a chunk
    assert report.retries == 5 and len(delays) == 5
    assert delays[:2] == [0.02, 0.04]


def test_parallel_batch_writes_isolate_bad_items_and_count_every_call(aws):
    """Chunks written on several threads: the same failures (by input index, duplicates included) as one by one."""
    create_tables(aws, PROFILES, IDENTITY)
    client = aws.client("dynamodb")
    requests = [{"PutRequest": {"Item": {"pk": {"S": f"k{i}"}, "sk": {"S": "x"}}}} for i in range(130)]
    for bad in (6, 57, 128):  # in three different chunks of 25
        requests[bad] = {"PutRequest": {"Item": {"pk": {"S": f"k{bad}"}, "sk": {"N": "1"}}}}
    requests.append(requests[57])  # a duplicate of a bad item is reported too
    report = batch_write_with_retry(client, IDENTITY, requests, backoff=Backoff(sleep=lambda s: None), max_workers=4)
    assert sorted(f.index for f in report.failures) == [6, 57, 128, 130]
    assert {f.code for f in report.failures} == {"ValidationException"}
    assert len(scan_all(client, IDENTITY)) == 127
    assert report.calls >= 6  # six chunks, plus the bisection of the three bad ones


def test_batch_write_gives_up_with_transient_error_after_max_attempts(aws):
    create_tables(aws, PROFILES, IDENTITY)
    flaky = FlakyClient(aws.client("dynamodb"), throttles=100)
    request = [{"PutRequest": {"Item": {"pk": {"S": "k"}, "sk": {"S": "x"}}}}]
    with pytest.raises(TransientSinkError):
        batch_write_with_retry(flaky, IDENTITY, request, backoff=Backoff(max_attempts=3, sleep=lambda s: None))


def test_terminal_error_is_isolated_to_the_bad_item(aws):
    create_tables(aws, PROFILES, IDENTITY)
    client = aws.client("dynamodb")
    requests = [{"PutRequest": {"Item": {"pk": {"S": f"k{i}"}, "sk": {"S": "x"}}}} for i in range(10)]
    requests[6] = {"PutRequest": {"Item": {"pk": {"S": "k6"}, "sk": {"N": "1"}}}}  # wrong key type
    report = batch_write_with_retry(client, IDENTITY, requests, backoff=Backoff(sleep=lambda s: None))
    assert [f.index for f in report.failures] == [6]
    assert report.failures[0].code == "ValidationException"
    assert len(scan_all(client, IDENTITY)) == 9


def test_profile_writes_are_idempotent_and_older_events_do_not_win(aws):
    create_tables(aws, PROFILES, IDENTITY)
    client = aws.client("dynamodb")
    newer = lake_row("m2", 10, type_="identify", user_id="u1", traits=json.dumps({"plan": "gold"}))
    older = lake_row("m1", 0, type_="identify", user_id="u1", traits=json.dumps({"plan": "free", "city": "Pune"}))
    order = lake_row("m3", 5, event="Order Completed", user_id="u1", order_id="o1", revenue_inr=Decimal("999.50"))
    key = ("acme-in", "p1")
    for row in (newer, order, older, order, newer):  # out of order and repeated
        assert write_profile_states(client, PROFILES, {key: contribution(row)}) == {key: None}
    profile = read_profile(client, PROFILES, *key)
    assert profile["traits"] == {"plan": "gold", "city": "Pune"}
    assert profile["order_count"] == 1 and profile["revenue_inr"] == Decimal("999.5")
    assert profile["first_seen"] == "2026-03-01T10:00:00.000000Z"
    assert profile["last_seen"] == "2026-03-01T10:10:00.000000Z"
    # the three distinct events changed the item; the two repeats did not (no write at all)
    assert profile["version"] == 3


def test_profile_write_survives_a_lost_race(aws):
    """Another writer updates the item between our read and our write: we re-read, re-merge, and both count."""
    create_tables(aws, PROFILES, IDENTITY)
    client = aws.client("dynamodb")
    key = ("acme-in", "p1")
    write_profile_states(
        client,
        PROFILES,
        {key: contribution(lake_row("m1", 0, event="Order Completed", order_id="o1", revenue_inr="10"))},
    )

    class RacingClient(FlakyClient):
        def put_item(self, **kwargs):
            if not getattr(self, "raced", False):
                self.raced = True
                rival = contribution(lake_row("m9", 1, event="Order Completed", order_id="o9", revenue_inr="5"))
                write_profile_states(self._client, PROFILES, {key: rival})
            return self._client.put_item(**kwargs)

    racing = RacingClient(client, throttles=0)
    mine = contribution(lake_row("m2", 2, event="Order Completed", order_id="o2", revenue_inr="100"))
    assert write_profile_states(racing, PROFILES, {key: mine}) == {key: None}
    profile = read_profile(client, PROFILES, *key)
    assert profile["order_count"] == 3 and profile["revenue_inr"] == Decimal("115")


def flaky_factory(aws):
    return FlakyClient(aws.client("dynamodb"), throttles=2, unprocessed_rounds=2)


def test_beam_transforms_write_profiles_and_identity_graph_through_throttling(aws):
    create_tables(aws, PROFILES, IDENTITY)
    rnd = random.Random(7)
    rows = []
    for p in range(12):
        person, anon, user = f"p{p}", f"anon-{p}", f"user-{p}" if p % 2 == 0 else None
        rows.append(lake_row(f"m{p}-0", 0, person, type_="page", anonymous_id=anon))
        if user:
            rows.append(
                lake_row(f"m{p}-1", 1, person, type_="identify", anonymous_id=anon, user_id=user, traits='{"tier":"a"}')
            )
        for k in range(rnd.randint(0, 3)):
            rows.append(
                lake_row(
                    f"m{p}-o{k}",
                    2 + k,
                    person,
                    event="Order Completed",
                    anonymous_id=anon,
                    user_id=user,
                    order_id=f"o{p}-{k}",
                    revenue_inr=Decimal(100 * (k + 1)),
                )
            )
    with_repeats = rows + rows[::3]  # at-least-once delivery
    expected_keys = sorted({(r["tenant_id"], r["message_id"]) for r in with_repeats})

    with beam.Pipeline(options=PipelineOptions(flags=[], runner="FnApiRunner")) as pipeline:
        lake = pipeline | beam.Create(with_repeats)
        prof = lake | "Profiles" >> WriteProfiles(aws, PROFILES, max_buffer=7, client_factory=flaky_factory)
        ident = lake | "Identity" >> WriteIdentityGraph(aws, IDENTITY, max_buffer=9, client_factory=flaky_factory)
        assert_that(prof.applied | "DP" >> beam.Distinct(), equal_to(expected_keys), label="ProfilesApplied")
        assert_that(ident.applied | "DI" >> beam.Distinct(), equal_to(expected_keys), label="IdentityApplied")
        assert_that(prof.failures, equal_to([]), label="NoProfileFailures")
        assert_that(ident.failures, equal_to([]), label="NoIdentityFailures")

    client = aws.client("dynamodb")
    for p in range(12):
        person = f"p{p}"
        orders = [r for r in rows if r["person_id"] == person and r["event"] == "Order Completed"]
        profile = read_profile(client, PROFILES, "acme-in", person)
        assert profile["order_count"] == len(orders)
        assert profile["revenue_inr"] == sum((r["revenue_inr"] for r in orders), Decimal(0))
        assert persons_of(client, IDENTITY, "acme-in", f"a:anon-{p}") == [person]
        expected_nodes = {f"a:anon-{p}"} | ({f"u:user-{p}"} if p % 2 == 0 else set())
        assert set(nodes_of(client, IDENTITY, "acme-in", person)) == expected_nodes
        if p % 2 == 0:
            assert persons_of(client, IDENTITY, "acme-in", f"u:user-{p}") == [person]


def test_refused_rows_become_sink_failures(aws):
    create_tables(aws, PROFILES, IDENTITY)
    bad = lake_row("m-bad", 0, "p1", type_="page", anonymous_id="x" * 2000)  # key longer than 1024 bytes
    good = lake_row("m-good", 0, "p2", type_="page", anonymous_id="fine")
    with beam.Pipeline(options=PipelineOptions(flags=[], runner="FnApiRunner")) as pipeline:
        result = pipeline | beam.Create([bad, good]) | WriteIdentityGraph(aws, IDENTITY)
        assert_that(result.applied, equal_to([("acme-in", "m-good")]), label="Applied")
        assert_that(
            result.failures
            | beam.Map(lambda f: (f.stage.value, f.reason.value, f.message_id, json.loads(f.payload)["person_id"])),
            equal_to([("sink", "sink_error", "m-bad", "p1")]),
            label="Failed",
        )


def test_outputs_keep_each_rows_window_and_timestamp(aws):
    """Flushes happen per bundle or per max_buffer rows; every output still sits in its own row's window."""
    from apache_beam.testing.util import TestWindowedValue
    from apache_beam.transforms.window import FixedWindows, IntervalWindow, TimestampedValue

    create_tables(aws, PROFILES, IDENTITY)
    rows = [lake_row(f"m{i}", i, f"p{i}", type_="page", anonymous_id=f"a{i}") for i in range(4)]
    rows.append(lake_row("m-bad", 9, "p9", type_="page", anonymous_id="x" * 2000))
    with beam.Pipeline(options=PipelineOptions(flags=[], runner="FnApiRunner")) as pipeline:
        stamped = (
            pipeline
            | beam.Create([(r, 60.0 * i) for i, r in enumerate(rows)])
            | beam.Map(lambda rt: TimestampedValue(rt[0], rt[1]))
            | beam.WindowInto(FixedWindows(60))
        )
        result = stamped | WriteIdentityGraph(aws, IDENTITY, max_buffer=2)  # flushes inside process() too
        expected = [
            TestWindowedValue(("acme-in", f"m{i}"), 60.0 * i, [IntervalWindow(60 * i, 60 * (i + 1))]) for i in range(4)
        ]
        assert_that(result.applied, equal_to(expected), reify_windows=True, label="AppliedWindows")
        assert_that(
            result.failures | beam.Map(lambda f: f.message_id),
            equal_to([TestWindowedValue("m-bad", 240.0, [IntervalWindow(240, 300)])]),
            reify_windows=True,
            label="FailureWindows",
        )


def test_concurrent_writers_on_the_same_persons_lose_nothing(aws):
    """Four threads write overlapping, shuffled slices of the same persons' events: every order counts once."""
    import threading

    from transforms.profiles import fold, summarize

    create_tables(aws, PROFILES, IDENTITY)
    rnd = random.Random(3)
    rows = [
        lake_row(f"m{i}", i, f"p{i % 3}", event="Order Completed", order_id=f"o{i}", revenue_inr=Decimal(i + 1))
        for i in range(60)
    ]
    slices = [rnd.sample(rows, 30) for _ in range(4)]  # overlapping: many events applied twice
    errors, races = [], []

    class CountingClient(FlakyClient):
        def get_item(self, **kwargs):  # only called after a lost race (ConditionalCheckFailed)
            races.append(1)
            return self._client.get_item(**kwargs)

    def writer(part):
        client = CountingClient(aws.client("dynamodb"), throttles=0)
        try:
            for start in range(0, len(part), 5):
                outcome = write_profile_states(client, PROFILES, fold(part[start : start + 5]), max_workers=1)
                assert all(v is None for v in outcome.values())
        except Exception as err:  # surfaced below
            errors.append(err)

    threads = [threading.Thread(target=writer, args=(part,)) for part in slices]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    print(f"lost races re-merged: {len(races)}")
    applied = {r["message_id"]: r for part in slices for r in part}.values()
    expected = {key: summarize(state) for key, state in fold(applied).items()}
    client = aws.client("dynamodb")
    for (tenant, person), profile in expected.items():
        stored = read_profile(client, PROFILES, tenant, person)
        assert stored["order_count"] == profile["order_count"]
        assert stored["revenue_inr"] == profile["revenue_inr"]
        assert stored["revenue_inr"] == sum(
            Decimal(int(r["message_id"][1:]) + 1) for r in applied if r["person_id"] == person
        )


class ChaosClient:
    """In-memory BatchWriteItem with scripted chaos: throttles, random partial processing, 5xx."""

    def __init__(self, script):
        self.store, self.script, self.calls = {}, list(script), 0

    def batch_write_item(self, RequestItems):
        ((table, requests),) = RequestItems.items()
        self.calls += 1
        assert len(requests) <= 25
        keys = [json.dumps(r["PutRequest"]["Item"]["pk"]) for r in requests]
        assert len(set(keys)) == len(keys), "duplicate keys in one batch"
        action, keep = self.script.pop(0) if self.script else ("ok", 1.0)
        if action == "throttle":
            raise throttle("BatchWriteItem")
        if action == "5xx":
            raise ClientError(
                {"Error": {"Code": "InternalServerError"}, "ResponseMetadata": {"HTTPStatusCode": 500}},
                "BatchWriteItem",
            )
        cut = int(len(requests) * keep)
        for request in requests[:cut]:
            item = request["PutRequest"]["Item"]
            self.store[item["pk"]["S"]] = item["v"]["N"]
        return {"UnprocessedItems": {table: requests[cut:]}} if cut < len(requests) else {}


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 80),
    dup=st.integers(0, 10),
    script=st.lists(st.tuples(st.sampled_from(["ok", "throttle", "5xx", "partial"]), st.floats(0.0, 1.0)), max_size=15),
    workers=st.sampled_from([1, 4]),
)
def test_batch_writer_delivers_every_item_exactly_once_under_chaos(n, dup, script, workers):
    requests = [{"PutRequest": {"Item": {"pk": {"S": f"k{i}"}, "v": {"N": str(i)}}}} for i in range(n)]
    requests += requests[:dup]
    client = ChaosClient([(a, k if a == "partial" else 1.0) for a, k in script])
    report = batch_write_with_retry(
        client,
        "t",
        requests,
        key_attributes=("pk",),
        backoff=Backoff(max_attempts=50, sleep=lambda s: None),
        max_workers=workers,
    )
    assert report.failures == []
    assert client.store == {f"k{i}": str(i) for i in range(n)}


def test_a_missing_table_fails_loudly_instead_of_dead_lettering_everything(aws):
    client = aws.client("dynamodb")
    request = [{"PutRequest": {"Item": {"pk": {"S": "k"}, "sk": {"S": "x"}}}}]
    with pytest.raises(ClientError, match="ResourceNotFoundException"):
        batch_write_with_retry(client, "no-such-table", request, backoff=Backoff(sleep=lambda s: None))
    with pytest.raises(ClientError, match="ResourceNotFoundException"):
        write_profile_states(client, "no-such-table", {("acme-in", "p1"): contribution(lake_row("m1", 0))})


def test_stitched_profile_merges_the_anonymous_past_at_read_time(aws):
    """Anonymous browsing and an order processed before sign-up (person q), the identify and a later order
    after it (person p, stitched to the user): reading by user or by the old anonymous id sees all of it."""
    from connectors.dynamodb import identity_items, read_stitched_profile

    create_tables(aws, PROFILES, IDENTITY)
    client = aws.client("dynamodb")
    before = [
        lake_row("m1", 0, "q", type_="page", anonymous_id="anon-1"),
        lake_row("m2", 5, "q", event="Order Completed", anonymous_id="anon-1", order_id="o1", revenue_inr="100"),
    ]
    after = [
        lake_row("m3", 60, "p", type_="identify", anonymous_id="anon-1", user_id="u-1", traits='{"name":"Asha"}'),
        lake_row("m4", 70, "p", event="Order Completed", user_id="u-1", order_id="o2", revenue_inr="250"),
    ]
    for batch in (before, after):
        write_profile_states(client, PROFILES, fold(batch))
        requests = [
            {"PutRequest": {"Item": {k: {"S": v} for k, v in i.items()}}} for r in batch for i in identity_items(r)
        ]
        batch_write_with_retry(client, IDENTITY, requests)
    assert read_profile(client, PROFILES, "acme-in", "p")["order_count"] == 1  # stored per lake person id
    for node in ("u:u-1", "a:anon-1"):
        merged = read_stitched_profile(client, PROFILES, IDENTITY, "acme-in", node)
        assert merged["person_id"] == "p" and merged["person_ids"] == ["p", "q"]
        assert (merged["order_count"], merged["revenue_inr"]) == (2, Decimal("350"))
        assert merged["first_seen"] == "2026-03-01T10:00:00.000000Z" and merged["traits"] == {"name": "Asha"}
    assert read_stitched_profile(client, PROFILES, IDENTITY, "acme-in", "u:nobody") is None
