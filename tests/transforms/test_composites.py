"""ProcessEvents on Beam: the same composite (and the same enrichment code) in batch and streaming."""

from __future__ import annotations

import datetime as dt
import json

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.test_stream import TestStream
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.transforms import window

from schemas.records import SourceRecord
from tests.pipelines.corpus import dumps, event
from transforms.composites import ProcessConfig, ProcessEvents
from transforms.enrich import EnrichConfig

CONFIG = ProcessConfig(tracking_plans_dir=None, buckets=4, enrich=EnrichConfig(pii_secret="c0" * 32))
ENRICHED = ("ua_browser", "ua_os", "channel", "utm_source", "revenue_inr", "person_id", "session_id", "event_date")


def records():
    out = [SourceRecord(dumps(event(i)), f"test:{i}") for i in range(20)]
    out.append(SourceRecord(dumps(event(3)), "test:dup"))  # duplicate
    out.append(SourceRecord(b"{not json", "test:bad"))
    order = {"order_id": "o1", "revenue": 999, "currency": "INR"}
    out.append(SourceRecord(dumps(event(50, event="Order Completed", userId="u1", properties=order)), "test:order"))
    return out


def comparable(row):
    return (row["message_id"], *(str(row[c]) for c in ENRICHED))


def test_batch_counts_rows_failures_and_duplicates():
    with TestPipeline(options=PipelineOptions(runner="FnApiRunner")) as p:
        out = p | beam.Create(records()) | ProcessEvents(CONFIG)
        assert_that(
            out.rows
            | "Ids" >> beam.Map(lambda r: r["message_id"])
            | "Distinct" >> beam.Distinct()
            | "N" >> beam.combiners.Count.Globally(),
            equal_to([21]),
            label="rows",
        )
        assert_that(
            out.failures | "Reasons" >> beam.Map(lambda f: str(f.reason)), equal_to(["malformed_json"]), label="dead"
        )
        assert_that(out.duplicates, equal_to([("acme-in", "m-00003")]), label="dups")


def _write_json(rows, path):
    with open(path, "w") as handle:
        json.dump(sorted(rows), handle)


def _expected_rows(tmp_path):
    """Rows from the batch run, collected through a file (no shared memory between runs)."""
    path = str(tmp_path / "batch_rows.json")
    with TestPipeline(options=PipelineOptions(runner="FnApiRunner")) as p:
        out = p | beam.Create(records()) | ProcessEvents(CONFIG)
        (
            out.rows
            | beam.Map(lambda r: json.dumps(comparable(r)))
            | beam.combiners.ToList()
            | beam.Map(_write_json, path)
        )
    with open(path) as handle:
        return [tuple(json.loads(r)) for r in json.load(handle)]


def test_streaming_with_teststream_gives_the_same_enriched_rows_as_batch(tmp_path):
    expected = _expected_rows(tmp_path)
    assert len(expected) == 21
    t0 = dt.datetime(2026, 10, 1, tzinfo=dt.UTC).timestamp()
    stream = TestStream().advance_watermark_to(t0)
    for i, record in enumerate(records()):
        stream = stream.add_elements([window.TimestampedValue(record, t0 + i)])
    stream = stream.advance_watermark_to_infinity()
    options = PipelineOptions(runner="BundleBasedDirectRunner")
    options.view_as(StandardOptions).streaming = True
    with TestPipeline(options=options) as p:
        out = p | stream | beam.WindowInto(window.FixedWindows(3600)) | ProcessEvents(CONFIG)
        assert_that(out.rows | beam.Map(comparable), equal_to(expected), label="rows")
        assert_that(out.duplicates, equal_to([("acme-in", "m-00003")]), label="dups")
        assert_that(out.failures | beam.Map(lambda f: str(f.reason)), equal_to(["malformed_json"]), label="dead")
