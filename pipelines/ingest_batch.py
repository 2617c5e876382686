"""Batch ingest: event files → decode → validate → normalize → enrich → dedupe → the lake.

    python -m pipelines.ingest_batch --input 'data/*.ndjson.gz' --lake ./lake [--dead-letters DIR]

Every input event ends in exactly one place: a lake row, a dead letter (with a reason code) or
a counted duplicate. Lake files are named after the input, so rerunning the same input
replaces its files instead of duplicating rows; a different input never overwrites another's.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from dataclasses import asdict, dataclass

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions

from connectors.files import ReadRecordBatches
from connectors.lake import DEAD_LETTERS_DIR, WriteDeadLetters, WriteLakePartitions, input_fingerprint, table_path
from pipelines.options import AwsOptions, parse_options, run_pipeline, setup_logging, with_s3_options
from transforms.composites import ProcessConfig, ProcessEvents
from transforms.enrich import EnrichConfig, PiiPolicy

log = logging.getLogger("livora.ingest_batch")
DEFAULT_PLANS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "schemas", "tracking_plans")


class ProcessingOptions(PipelineOptions):
    """How events are validated and enriched (shared by batch and streaming ingest)."""

    @classmethod
    def _add_argparse_args(cls, parser):
        parser.add_argument(
            "--tracking-plans",
            dest="tracking_plans",
            default=DEFAULT_PLANS if os.path.isdir(DEFAULT_PLANS) else None,
            help="Directory of per-tenant tracking-plan YAML files (default: schemas/tracking_plans). "
            "'none' disables plan checks.",
        )
        parser.add_argument(
            "--geoip-db", dest="geoip_db", default=None, help="MaxMind-format City database (.mmdb) for geo-IP."
        )
        parser.add_argument(
            "--pii-salt",
            dest="pii_salt",
            default=os.environ.get("LIVORA_PII_SALT", ""),
            help="Salt for SHA-256 PII hashing (default $LIVORA_PII_SALT); per-tenant salts go in --pii-config.",
        )
        parser.add_argument(
            "--pii-config",
            dest="pii_config",
            default=None,
            help="JSON file: tenant -> PII policy (salt, hash_fields, drop_fields).",
        )
        parser.add_argument(
            "--max-future-hours",
            dest="max_future_hours",
            type=float,
            default=24.0,
            help="Tolerated lead of event time over receivedAt before an event is dead-lettered as future_timestamp (default 24).",
        )
        parser.add_argument(
            "--session-gap-minutes",
            dest="session_gap_minutes",
            type=float,
            default=30.0,
            help="Inactivity that ends a session (default 30).",
        )
        parser.add_argument(
            "--buckets",
            dest="buckets",
            type=int,
            default=16,
            help="Shuffle buckets by person; also the maximum lake files per partition per input (default 16).",
        )
        parser.add_argument(
            "--batch-size",
            dest="batch_size",
            type=int,
            default=2000,
            help="Records per batch inside the pipeline (default 2000).",
        )

    def process_config(self) -> ProcessConfig:
        pii: dict[str, PiiPolicy] = {}
        if self.pii_config:
            with FileSystems.open(self.pii_config) as handle:
                pii = {tenant: PiiPolicy.model_validate(policy) for tenant, policy in json.loads(handle.read()).items()}
        plans = None if (self.tracking_plans or "none") == "none" else self.tracking_plans
        return ProcessConfig(
            tracking_plans_dir=plans,
            enrich=EnrichConfig(geoip_db=self.geoip_db, pii=pii, default_pii=PiiPolicy(salt=self.pii_salt)),
            max_future_seconds=self.max_future_hours * 3600,
            session_gap_seconds=self.session_gap_minutes * 60,
            buckets=self.buckets,
            batch_size=self.batch_size,
        )


class IngestBatchOptions(ProcessingOptions, AwsOptions):
    """Where to read and write."""

    @classmethod
    def _add_argparse_args(cls, parser):
        parser.add_argument(
            "--input",
            dest="inputs",
            action="append",
            required=True,
            help="File pattern (local or s3://); repeat for several. NDJSON, JSON, .gz.",
        )
        parser.add_argument("--lake", required=True, help="Lake root, local directory or s3://bucket/prefix.")
        parser.add_argument(
            "--dead-letters",
            dest="dead_letters",
            default=None,
            help="Dead-letter directory (default LAKE/dead_letters).",
        )


@dataclass
class IngestSummary:
    input_tag: str
    lake_rows: int
    lake_files: int
    dead_letters: int
    duplicates: int
    seconds: float
    lake: str
    dead_letters_path: str

    @property
    def events_in(self) -> int:
        return self.lake_rows + self.dead_letters + self.duplicates


class _WriteSummaryFn(beam.DoFn):
    """Write the run's totals next to the lake: the numbers come from what was actually written."""

    def __init__(self, path: str):
        self.path = path

    def process(self, _, lake_rows, lake_files, dead, duplicates):
        body = json.dumps(
            {"lake_rows": lake_rows, "lake_files": lake_files, "dead_letters": dead, "duplicates": duplicates}
        )
        with FileSystems.create(self.path) as handle:
            handle.write(body.encode())
        yield body


def build(pipeline: beam.Pipeline, opts: IngestBatchOptions, tag: str, summary_path: str) -> None:
    batches = pipeline | "ReadInput" >> ReadRecordBatches(opts.inputs, opts.batch_size)
    processed = batches | "ProcessEvents" >> ProcessEvents(opts.process_config(), batched=True)
    written = processed.row_batches | "WriteLake" >> WriteLakePartitions(opts.lake, tag)
    dead = processed.failures | "WriteDeadLetters" >> WriteDeadLetters(opts.dead_letters, tag)

    def total(pcoll, label, fn):
        return pvalue_single(pcoll | f"Count{label}" >> beam.Map(fn) | f"Sum{label}" >> beam.CombineGlobally(sum))

    (
        pipeline
        | "SummaryTrigger" >> beam.Create([None])
        | "WriteSummary"
        >> beam.ParDo(
            _WriteSummaryFn(summary_path),
            total(written, "LakeRows", lambda pn: pn[1]),
            total(written, "LakeFiles", lambda _: 1),
            total(dead, "DeadLetters", lambda pn: pn[1]),
            total(processed.duplicates, "Duplicates", lambda _: 1),
        )
    )


def pvalue_single(pcoll):
    return beam.pvalue.AsSingleton(pcoll)


def run(argv: list[str] | None = None) -> IngestSummary:
    argv = list(argv or [])
    options = parse_options(argv, IngestBatchOptions, __doc__)
    opts = options.view_as(IngestBatchOptions)
    opts.dead_letters = opts.dead_letters or table_path(opts.lake, DEAD_LETTERS_DIR)
    options = with_s3_options(argv, options, *opts.inputs, opts.lake, opts.dead_letters)
    opts = options.view_as(IngestBatchOptions)
    opts.dead_letters = opts.dead_letters or table_path(opts.lake, DEAD_LETTERS_DIR)
    if opts.tracking_plans and opts.tracking_plans != "none" and not os.path.isdir(opts.tracking_plans):
        raise ValueError(f"--tracking-plans {opts.tracking_plans!r} is not a directory")
    if opts.geoip_db and not FileSystems.exists(opts.geoip_db):
        raise ValueError(f"--geoip-db {opts.geoip_db!r} does not exist")
    tag = input_fingerprint(opts.inputs)
    summary_path = f"{table_path(opts.lake, '_runs')}/ingest-{tag}.json"
    if "://" not in summary_path:
        os.makedirs(os.path.dirname(summary_path), exist_ok=True)
    log.info("ingesting %s (input tag %s) into %s", ", ".join(opts.inputs), tag, opts.lake)
    started = time.monotonic()
    run_pipeline(lambda p: build(p, opts, tag, summary_path), options)
    with FileSystems.open(summary_path) as handle:
        totals = json.loads(handle.read())
    summary = IngestSummary(
        input_tag=tag,
        seconds=round(time.monotonic() - started, 2),
        lake=opts.lake,
        dead_letters_path=opts.dead_letters,
        **totals,
    )
    log.info("done: %s", summary)
    return summary


def main(argv: list[str] | None = None) -> None:
    setup_logging()
    summary = run(argv if argv is not None else sys.argv[1:])
    print(json.dumps({**asdict(summary), "events_in": summary.events_in}, indent=2))


if __name__ == "__main__":
    main()
