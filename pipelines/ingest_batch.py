"""Batch ingest: event files → decode → validate → normalize → enrich → dedupe → the lake.

    python -m pipelines.ingest_batch --input 'data/*.ndjson.gz' --lake ./lake [--dead-letters DIR]

Every input event ends in exactly one place: a lake row, a dead letter (with a reason code) or
a counted duplicate. Lake files are named after the input, so rerunning the same input
replaces its files instead of duplicating rows; a different input never overwrites another's.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

from connectors.files import ReadRecordBatches
from connectors.lake import (
    DEAD_LETTERS_DIR,
    PruneRunFiles,
    WriteDeadLetters,
    WriteLakePartitions,
    input_fingerprint,
    run_files_pattern,
    table_path,
)
from connectors.run_summary import WriteRunSummary, read_run_summary, run_summary_path, total
from pipelines.errors import UnbalancedError
from pipelines.options import (
    AwsOptions,
    ProcessingOptions,
    check_tracking_plans,
    main_entry,
    parse_options,
    require_matches,
    run_pipeline,
    with_s3_options,
)
from schemas.lake import EVENTS_TABLE
from transforms.composites import ProcessEvents

log = logging.getLogger("livora.ingest_batch")


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
    events_parsed: int
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


def build(pipeline: beam.Pipeline, opts: IngestBatchOptions, tag: str, summary_path: str) -> None:
    batches = pipeline | "ReadInput" >> ReadRecordBatches(opts.inputs, opts.batch_size)
    processed = batches | "ProcessEvents" >> ProcessEvents(opts.process_config(opts.lake), batched=True)
    written = processed.lake_files | "WriteLake" >> WriteLakePartitions(opts.lake, tag)
    dead = processed.failures | "WriteDeadLetters" >> WriteDeadLetters(opts.dead_letters, tag)
    events_dir = table_path(opts.lake, EVENTS_TABLE)
    _ = written | "PruneStaleLakeFiles" >> PruneRunFiles(run_files_pattern(events_dir, tag, ".parquet", 2), "lake")
    _ = dead | "PruneStaleDeadLetters" >> PruneRunFiles(run_files_pattern(opts.dead_letters, tag, ".jsonl"), "dead")

    _ = pipeline | "RunSummary" >> WriteRunSummary(
        summary_path,
        {
            "lake_rows": total(written, "LakeRows", lambda path_rows: path_rows[1]),
            "lake_files": total(written, "LakeFiles"),
            "dead_letters": total(dead, "DeadLetters", lambda path_lines: path_lines[1]),
            "duplicates": total(processed.duplicates, "Duplicates"),
            "events_parsed": total(processed.events_parsed, "EventsParsed", lambda n: n),
        },
    )


def run(argv: list[str] | None = None) -> IngestSummary:
    argv = list(argv or [])
    options = parse_options(argv, IngestBatchOptions, __doc__)
    opts = options.view_as(IngestBatchOptions)
    opts.dead_letters = opts.dead_letters or table_path(opts.lake, DEAD_LETTERS_DIR)
    options = with_s3_options(argv, options, *opts.inputs, opts.lake, opts.dead_letters)
    opts = options.view_as(IngestBatchOptions)
    opts.dead_letters = opts.dead_letters or table_path(opts.lake, DEAD_LETTERS_DIR)
    require_matches("--input", opts.inputs)  # an empty glob is a failed run, not an empty one
    check_tracking_plans(opts.tracking_plans)
    if opts.geoip_db and not FileSystems.exists(opts.geoip_db):
        raise ValueError(f"--geoip-db {opts.geoip_db!r} does not exist")
    tag = input_fingerprint(opts.inputs)
    summary_path = run_summary_path(opts.lake, f"ingest-{tag}")
    log.info("ingesting %s (input tag %s) into %s", ", ".join(opts.inputs), tag, opts.lake)
    started = time.monotonic()
    run_pipeline(lambda p: build(p, opts, tag, summary_path), options)
    totals = read_run_summary(summary_path)
    summary = IngestSummary(
        input_tag=tag,
        seconds=round(time.monotonic() - started, 2),
        lake=opts.lake,
        dead_letters_path=opts.dead_letters,
        **totals,
    )
    log.info("done: %s", summary)
    if summary.events_in != summary.events_parsed:
        # Something between parsing and the sinks dropped or doubled events: fail loudly, never silently.
        raise UnbalancedError(
            f"ingest totals do not balance: {summary.events_parsed} events parsed but lake {summary.lake_rows} + "
            f"dead letters {summary.dead_letters} + duplicates {summary.duplicates} = {summary.events_in} "
            f"(run summary {summary_path})"
        )
    return summary


def main(argv: list[str] | None = None) -> None:
    main_entry("ingest_batch", _main, argv)


def _main(argv: list[str]) -> None:
    summary = run(argv)
    print(json.dumps({**asdict(summary), "events_in": summary.events_in}, indent=2))


if __name__ == "__main__":
    main()
