"""Streaming ingest consults the erasure tombstones: a person erased with ``pipelines.erase`` stays erased when
new events of theirs arrive on Kinesis (moto server); they are counted as suppressed and the pass balances."""

from __future__ import annotations

import io
import json

import pytest

from connectors.lake import read_dead_letters, read_events
from infra.resources import StreamingResources, create_streaming_resources
from pipelines import erase, stream_events
from pipelines.demo_stream import put_records

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _event(mid: str, kind: str, minute: int, *, user=None, anon=None, **extra) -> bytes:
    ts = f"2026-10-01T10:{minute:02d}:00.000Z"
    event = {"type": kind, "messageId": mid, "tenantId": "acme-in", "originalTimestamp": ts, "sentAt": ts}
    event["receivedAt"] = ts
    if user:
        event["userId"] = user
    if anon:
        event["anonymousId"] = anon
    event.update(extra)
    return json.dumps(event).encode()


def _argv(aws, res: StreamingResources, lake: str) -> list[str]:
    return [
        f"--stream={res.stream}",
        f"--lake={lake}",
        f"--aws-endpoint-url={aws.endpoint_url}",
        f"--consumer-app={res.consumer_app}",
        f"--dedupe-table={res.dedupe_table}",
        "--tracking-plans=none",
        "--buckets=2",
        "--min-call-interval=0.02",
    ]


def _message_ids(lake: str) -> set[str]:
    return set(read_events(lake, columns=["message_id"]).column("message_id").to_pylist())


def test_events_of_an_erased_person_arriving_later_are_suppressed(aws, tmp_path):
    res = StreamingResources(stream="events", shards=2, bucket=None)
    res.profiles_table = res.identity_table = None
    res = create_streaming_resources(aws, res)
    lake = str(tmp_path / "lake")
    kinesis = aws.client("kinesis")
    first = [
        _event("a-1", "page", 1, anon="anon-a1", name="Home"),
        _event("a-2", "identify", 2, user="user-a", anon="anon-a1", traits={"email": "alice@example.in"}),
        _event("d-1", "identify", 3, user="user-d", anon="anon-d", traits={"email": "dave@example.in"}),
    ]
    put_records(kinesis, res.stream, first)
    stream_events.run(_argv(aws, res, lake), out=io.StringIO())
    assert _message_ids(lake) == {"a-1", "a-2", "d-1"}

    record = erase.run(["--lake", lake, "--tenant", "acme-in", "--user-id", "user-a", "--requested-by", "t-1"])
    assert record["tenants"][0]["removed"]["lake_events"]["rows"] == 2
    assert _message_ids(lake) == {"d-1"}

    # later on the stream: Alice by user id, Alice by the anonymous id stitched to her, and Dave
    late = [
        _event("a-late-user", "track", 10, user="user-a", event="Product Viewed"),
        _event("a-late-anon", "page", 11, anon="anon-a1", name="Cart"),
        _event("d-late", "track", 12, user="user-d", event="Product Viewed"),
    ]
    put_records(kinesis, res.stream, late)
    summary = stream_events.run(_argv(aws, res, lake), out=io.StringIO())

    assert _message_ids(lake) == {"d-1", "d-late"}
    assert summary.total("suppressed") == 2
    assert summary.total("lake_rows") == 1
    assert not read_dead_letters(summary.dead_letters_path)  # suppressed, not dead-lettered
    # the pass balances with the suppressed events: lake + failed + duplicates + suppressed = parsed
    (work,) = [p for p in summary.passes if p.records_read]
    assert work.events_parsed == 3
    assert work.lake_rows + work.failed_processing + work.duplicates + work.suppressed == work.events_parsed
    assert summary.as_dict()["suppressed"] == 2


def test_streaming_mode_drops_erased_persons_in_its_windows(tmp_path):
    """The --streaming sinks (windowed writers, TestStream): the same DropErased step, outputs counted."""
    import datetime as dt

    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
    from apache_beam.testing.test_stream import TestStream
    from apache_beam.testing.util import assert_that, equal_to
    from apache_beam.transforms import window

    from connectors.erasure import write_tombstone
    from schemas.records import SourceRecord
    from transforms.composites import ProcessConfig, ProcessEvents
    from transforms.enrich import EnrichConfig
    from transforms.erasure import Subjects

    lake = str(tmp_path / "lake")
    write_tombstone(lake, "acme-in", Subjects(ids={"user-a", "anon-a1"}), "r1")
    payloads = [
        _event("a-late-user", "track", 10, user="user-a", event="Product Viewed"),
        _event("a-late-anon", "page", 11, anon="anon-a1", name="Cart"),
        _event("d-late", "track", 12, user="user-d", event="Product Viewed"),
        _event("e-late", "track", 13, user="user-e", event="Product Viewed"),
    ]
    base = dt.datetime(2026, 11, 25, 10, 0, tzinfo=dt.UTC)
    stream = TestStream()
    for i, payload in enumerate(payloads):
        arrival = base + dt.timedelta(seconds=i * 40)  # two 60 s windows
        record = SourceRecord(payload, f"kinesis:s/shardId-0/{i + 1}", arrival)
        stream = stream.add_elements([window.TimestampedValue(record, arrival.timestamp())])
    stream = stream.advance_watermark_to_infinity()
    options = PipelineOptions(runner="BundleBasedDirectRunner")
    options.view_as(StandardOptions).streaming = True
    argv = ["--stream=s", f"--lake={lake}", "--dedupe-table=none"]
    opts = PipelineOptions(argv).view_as(stream_events.StreamEventsOptions)
    with beam.Pipeline(options=options) as p:
        processed = (
            p
            | stream
            | "Window" >> beam.WindowInto(window.FixedWindows(60))
            | "ProcessEvents"
            >> ProcessEvents(
                ProcessConfig(buckets=1, tracking_plans_dir=None, enrich=EnrichConfig(pii_secret="c0" * 32))
            )
        )
        lake_writer = stream_events._WindowedLake(lake)
        dead_writer = stream_events._WindowedDeadLetters(str(tmp_path / "dead"))
        sinks = stream_events.write_sinks(processed, opts, None, lake_writer, dead_writer)
        suppressed = sinks.suppressed | beam.WindowInto(window.GlobalWindows())
        assert_that(suppressed, equal_to([("acme-in", "a-late-user"), ("acme-in", "a-late-anon")]))
    assert _message_ids(lake) == {"d-late", "e-late"}
