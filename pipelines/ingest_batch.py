"""Batch ingest: event files → decode → validate → normalize → enrich → dedupe → the lake.

    python -m pipelines.ingest_batch --input 'data/*.ndjson.gz' --lake ./lake [--dead-letters DIR]

Every input event ends in exactly one place: a lake row, a dead letter (with a reason code) or
a counted duplicate. Safe to re-run daily over a folder that grows: each file's rows land in lake
files named after its content, files the lake already holds (LAKE/_ingested) are skipped, and an
event already in the lake (same tenant and messageId, from any earlier file or the stream) is a
counted duplicate, never a second row.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import asdict, dataclass, field

import apache_beam as beam
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems

from connectors.erasure import DropTombstoned, read_tombstones
from connectors.files import ReadRecordBatches
from connectors.lake import (
    DEAD_LETTERS_DIR,
    DropLakeDuplicates,
    PruneRunFiles,
    WriteDeadLetters,
    WriteLakePartitions,
    content_fingerprint,
    dead_letter_reasons,
    run_files_pattern,
    table_path,
)
from connectors.manifest import read_manifest, write_manifest_entry
from connectors.paths import remove_stale_temp_files
from connectors.quality import rows_by_partition
from connectors.read_progress import format_bytes
from connectors.run_records import current as current_run
from connectors.run_summary import WriteRunSummary, read_run_summary, run_summary_path, total
from pipelines.errors import InputError, UnbalancedError
from pipelines.logs import progress_seconds
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
from pipelines.quality_gate import QualityGateOptions, gate_ingest
from schemas import PIPELINE_VERSION
from schemas.lake import EVENTS_TABLE
from transforms.composites import ProcessEvents

log = logging.getLogger("livora.ingest_batch")


class IngestBatchOptions(ProcessingOptions, AwsOptions, QualityGateOptions):
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
        parser.add_argument(
            "--reprocess",
            action="store_true",
            default=False,
            help="Ingest matched files again even if the lake's manifest (LAKE/_ingested) already holds their "
            "content; their lake files are rewritten in place.",
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
    lake_duplicates: int = 0
    """Events already in the lake from an earlier run, input or the stream (counted, not written)."""
    files_matched: int = 0
    files_ingested: int = 0
    files_skipped: int = 0
    """Matched files whose content the lake already holds (or a second copy of a file of this run)."""
    dead_letters_by_reason: dict[str, int] = field(default_factory=dict)
    suppressed: int = 0
    """Events of persons erased earlier (LAKE/_tombstones; docs/erasure.md): counted, not written."""

    @property
    def events_in(self) -> int:
        return self.lake_rows + self.dead_letters + self.duplicates + self.lake_duplicates + self.suppressed


@dataclass(frozen=True)
class InputFile:
    path: str
    size_bytes: int
    fingerprint: str


def match_inputs(patterns: list[str]) -> list[InputFile]:
    """Every file the patterns match, once, with its content fingerprint; a pattern matching nothing fails."""
    found: dict[str, int] = {}
    for pattern, result in zip(patterns, FileSystems.match(patterns), strict=True):
        if not result.metadata_list:
            raise InputError(f"--input {pattern!r} matches no file")
        for meta in result.metadata_list:
            found[meta.path] = meta.size_in_bytes
    files = []
    for i, (path, size) in enumerate(sorted(found.items()), 1):
        files.append(InputFile(path, size, content_fingerprint(path)))
        if i % 100 == 0:
            log.info("fingerprinted %d of %d input files", i, len(found))
    return files


def describe_inputs(files: list[InputFile], limit: int = 10) -> str:
    """``path (size), ...`` of the first ``limit`` files and a count of the rest: what the run reads, for its log."""
    shown = ", ".join(f"{f.path} ({format_bytes(f.size_bytes)})" for f in files[:limit])
    return shown + (f" and {len(files) - limit} more" if len(files) > limit else "")


def select_new(files: list[InputFile], manifest: dict, reprocess: bool) -> tuple[list[InputFile], list[InputFile]]:
    """(files to ingest, files skipped): one file per content, none the lake holds unless ``reprocess``."""
    chosen: dict[str, InputFile] = {}
    skipped = []
    for item in files:
        if item.fingerprint in chosen or (item.fingerprint in manifest and not reprocess):
            skipped.append(item)
        else:
            chosen[item.fingerprint] = item
    return list(chosen.values()), skipped


def build(
    pipeline: beam.Pipeline, opts: IngestBatchOptions, tag: str, files: list[InputFile], summary_path: str
) -> None:
    input_tags = {f.path: f.fingerprint for f in files}
    config = opts.process_config(opts.lake).model_copy(update={"input_tags": input_tags})
    batches = pipeline | "ReadInput" >> ReadRecordBatches(
        [f.path for f in files],
        opts.batch_size,
        total_bytes=sum(f.size_bytes for f in files),
        progress_every=progress_seconds(),
    )
    processed = batches | "ProcessEvents" >> ProcessEvents(config, batched=True)
    own = [tag, *input_tags.values()]
    encryption = opts.view_as(AwsOptions).encryption()  # --kms-key-id: carried by each writer to the workers
    # Erasure hook (docs/erasure.md): rows of persons erased earlier are suppressed before anything else.
    kept = processed.lake_files | "DropErased" >> DropTombstoned(read_tombstones(opts.lake))
    known = kept.rows | "DropLakeDuplicates" >> DropLakeDuplicates(opts.lake, own)
    written = known.rows | "WriteLake" >> WriteLakePartitions(opts.lake, tag, encryption=encryption)
    dead = processed.failures | "WriteDeadLetters" >> WriteDeadLetters(
        opts.dead_letters, tag, input_tags=input_tags, encryption=encryption
    )
    events_dir = table_path(opts.lake, EVENTS_TABLE)
    _ = written | "PruneStaleLakeFiles" >> PruneRunFiles(
        [run_files_pattern(events_dir, t, ".parquet", 2) for t in own], "lake"
    )
    _ = dead | "PruneStaleDeadLetters" >> PruneRunFiles(
        [run_files_pattern(opts.dead_letters, t, ".jsonl") for t in own], "dead"
    )

    _ = pipeline | "RunSummary" >> WriteRunSummary(
        summary_path,
        {
            "lake_rows": total(written, "LakeRows", lambda path_rows: path_rows[1]),
            "lake_files": total(written, "LakeFiles"),
            "dead_letters": total(dead, "DeadLetters", lambda path_lines: path_lines[1]),
            "duplicates": total(processed.duplicates, "Duplicates"),
            "lake_duplicates": total(known.duplicates, "LakeDuplicates"),
            "suppressed": total(kept.suppressed, "Suppressed"),
            "events_parsed": total(processed.events_parsed, "EventsParsed", lambda n: n),
        },
        encryption,
    )


def _rows_of(pattern: str, dead_letters: bool = False) -> int:
    """Rows in the files a glob matches: Parquet footers, or lines of dead-letter files."""
    count = 0
    for meta in FileSystems.match([pattern])[0].metadata_list:
        with FileSystems.open(meta.path, compression_type="uncompressed") as handle:
            count += handle.read().count(b"\n") if dead_letters else pq.read_metadata(handle).num_rows
    return count


def record_ingested(opts: IngestBatchOptions, files: list[InputFile], tag: str) -> None:
    """One manifest entry per ingested file, once the run balanced: what of it is where."""
    events_dir = table_path(opts.lake, EVENTS_TABLE)
    for item in files:
        write_manifest_entry(
            opts.lake,
            {
                "fingerprint": item.fingerprint,
                "path": item.path,
                "size_bytes": item.size_bytes,
                "lake_rows": _rows_of(run_files_pattern(events_dir, item.fingerprint, ".parquet", 2)),
                "dead_letters": _rows_of(run_files_pattern(opts.dead_letters, item.fingerprint, ".jsonl"), True),
                "run_tag": tag,
                "pipeline_version": PIPELINE_VERSION,
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
    started = time.monotonic()
    for root in (table_path(opts.lake, EVENTS_TABLE), opts.dead_letters):
        for stale in remove_stale_temp_files(root):
            log.info("removed %s, left by a writer that was killed", stale)
    matched = match_inputs(opts.inputs)
    files, skipped = select_new(matched, read_manifest(opts.lake), opts.reprocess)
    record = current_run()
    if record is not None:
        for item in matched:
            record.add_input(
                item.path, fingerprint=item.fingerprint, size_bytes=item.size_bytes, skipped=item in skipped
            )
        record.add_output(table_path(opts.lake, EVENTS_TABLE))
        record.add_output(opts.dead_letters)
    tag = input_fingerprint_of(f.fingerprint for f in files)
    counts = {"files_matched": len(matched), "files_ingested": len(files), "files_skipped": len(skipped)}
    if skipped:
        log.info("skipping %d file(s) the lake already holds (--reprocess to ingest them again)", len(skipped))
    if not files:
        log.info("nothing new to ingest: all %d matched file(s) are in %s", len(matched), opts.lake)
        return IngestSummary(
            tag, 0, 0, 0, 0, 0, round(time.monotonic() - started, 2), opts.lake, opts.dead_letters, **counts
        )
    summary_path = run_summary_path(opts.lake, f"ingest-{tag}")
    log.info(
        "ingesting %d file(s), %s (run tag %s) into %s: %s",
        len(files),
        format_bytes(sum(f.size_bytes for f in files)),
        tag,
        opts.lake,
        describe_inputs(files),
    )
    run_pipeline(lambda p: build(p, opts, tag, files, summary_path), options)
    totals = read_run_summary(summary_path)
    summary = IngestSummary(
        input_tag=tag,
        seconds=round(time.monotonic() - started, 2),
        lake=opts.lake,
        dead_letters_path=opts.dead_letters,
        **totals,
        **counts,
    )
    log.info("done: %s", summary)
    if summary.events_in != summary.events_parsed:
        # Something between parsing and the sinks dropped or doubled events: fail loudly, never silently.
        raise UnbalancedError(
            f"ingest totals do not balance: {summary.events_parsed} events parsed but lake {summary.lake_rows} + "
            f"dead letters {summary.dead_letters} + duplicates {summary.duplicates} + already in the lake "
            f"{summary.lake_duplicates} + suppressed {summary.suppressed} = {summary.events_in} (run summary {summary_path})"
        )
    # Quality gate (pipelines/quality_gate.py): block quarantines failing partitions and raises QualityError,
    # before the manifest records the input, so that a re-run after the fix ingests it again.
    gate_ingest(opts.lake, [tag, *(f.fingerprint for f in files)], opts.quality_gate, opts.max_future_hours)
    summary.dead_letters_by_reason = dead_letter_reasons(opts.dead_letters, [tag, *(f.fingerprint for f in files)])
    if record is not None:  # per tenant and day, per file tag: pipelines.reconcile's books against the lake
        events_dir = table_path(opts.lake, EVENTS_TABLE)
        record.add_counts(
            {
                "lake_rows_by_partition": {
                    t: rows
                    for t in [tag, *(f.fingerprint for f in files)]
                    if (rows := rows_by_partition(run_files_pattern(events_dir, t, ".parquet", 2)))
                }
            }
        )
    record_ingested(opts, files, tag)
    return summary


def input_fingerprint_of(fingerprints) -> str:
    """The run's tag: a hash of the contents it ingests (names its summary and untagged files)."""
    digest = hashlib.sha1("\n".join(sorted(fingerprints)).encode())
    return digest.hexdigest()[:12]


def main(argv: list[str] | None = None) -> None:
    main_entry("ingest_batch", _main, argv)


def _main(argv: list[str]) -> IngestSummary:
    summary = run(argv)
    print(json.dumps({**asdict(summary), "events_in": summary.events_in}, indent=2))
    return summary


if __name__ == "__main__":
    main()
