"""Streaming ingest: Kinesis → decode … enrich → dedupe → lake, dead letters, DynamoDB, warehouse.

    python -m pipelines.stream_events --stream events --lake ./lake [--warehouse duckdb:///wh.duckdb]
        [--start-position TRIM_HORIZON|LATEST|AT_TIMESTAMP] [--follow] [--max-records N] [beam options]

Two ways to run, same transforms:

* **local incremental mode** (default): each *pass* lists the shards, reads every readable shard
  from its checkpoint to its current tip (bounded), runs the pipeline core and the sinks, and
  only then commits the checkpoints (one DynamoDB transaction, gated on every sink's output).
  Passes repeat until caught up (``--once``: one pass; ``--follow``: forever). Lake and
  dead-letter file names derive from the pass's start positions, so a crashed pass that is
  rerun replaces its own files; leftovers of the crashed attempt are removed first.
* ``--streaming`` for runners that stream (runs whole on Prism; Flink, Dataflow): shard discovery
  (a splittable DoFn), the unbounded splittable reader, fixed read-time windows, per-window lake
  files named after the run, the window and the content, checkpoints committed per window after
  the sinks; ``--max-run-seconds`` drains and ends the job; a new run first removes the files of
  windows that never committed (docs/streaming.md, "Streaming on Prism").
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import re
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.io.iobase import RestrictionProgress, RestrictionTracker
from apache_beam.io.watermark_estimators import ManualWatermarkEstimator
from apache_beam.metrics import Metrics
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.runners.runner import PipelineState
from apache_beam.transforms import window as beam_window
from apache_beam.transforms.core import RestrictionProvider
from apache_beam.utils.timestamp import Duration, Timestamp

from connectors.aws import S3Encryption
from connectors.checkpoints import (
    CheckpointStore,
    CommitCheckpoints,
    ConsumerLease,
    LeaseHeldError,
    LeaseLostError,
    _maybe_hold,
    checkpoint_table_name,
    default_owner,
)
from connectors.dedupe_store import DropSeenDuplicates
from connectors.erasure import DropTombstoned, read_tombstones
from connectors.kinesis import (
    ReadConfig,
    ReadKinesisShards,
    ShardProgress,
    ShardReader,
    ShardTask,
    StartPosition,
    default_kinesis_client,
    list_shards,
    readable_shards,
    sdf_progress,
)
from connectors.lake import (
    DEAD_LETTERS_DIR,
    DropLakeDuplicates,
    WriteDeadLetters,
    WriteLakePartitions,
    dead_letter_reasons,
    event_sort_key,
    table_path,
    write_partition_file,
)
from connectors.paths import use_encryption, write_bytes_atomically
from connectors.run_records import current as current_run
from connectors.run_records import note_counts, note_input, note_outputs
from connectors.run_summary import read_run_summary, run_summary_path, total
from infra.runners import RunnerUnavailable, portable_options, resolve_runner
from pipelines.errors import EXIT_LEASE_HELD, EXIT_LEASE_LOST, PipelineError, UsageError
from pipelines.logs import drop_import_noise
from pipelines.options import (
    AwsOptions,
    ProcessingOptions,
    check_tracking_plans,
    main_entry,
    parse_options,
    run_pipeline,
    with_default_runner,
)
from pipelines.quality_gate import GateWrittenFiles, HeldByGate, QualityGateOptions, gate_pass, remove_quarantined
from schemas.lake import EVENTS_TABLE
from transforms.composites import ProcessEvents

log = logging.getLogger("livora.stream_events")


class StreamEventsOptions(ProcessingOptions, AwsOptions, QualityGateOptions):
    """Which stream, where it goes, and how far to read."""

    @classmethod
    def _add_argparse_args(cls, parser):
        parser.add_argument("--stream", required=True, help="Kinesis stream name.")
        parser.add_argument("--lake", required=True, help="Lake root, local directory or s3://bucket/prefix.")
        parser.add_argument(
            "--dead-letters",
            dest="dead_letters",
            default=None,
            help="Dead-letter directory (default LAKE/dead_letters).",
        )
        parser.add_argument(
            "--warehouse",
            default=None,
            help="Also MERGE rows into this warehouse: duckdb:///abs/path.duckdb | postgresql://... (default: none).",
        )
        parser.add_argument(
            "--start-position",
            dest="start_position",
            choices=[p.value for p in StartPosition],
            default=StartPosition.TRIM_HORIZON.value,
            help="Where a shard without a checkpoint starts (a checkpoint always wins). Default TRIM_HORIZON.",
        )
        parser.add_argument(
            "--at-timestamp",
            dest="at_timestamp",
            default=None,
            help="ISO-8601 time for --start-position AT_TIMESTAMP (e.g. 2026-11-25T10:00:00Z).",
        )
        parser.add_argument(
            "--follow", action="store_true", default=False, help="Keep polling: a pass every --follow-interval."
        )
        parser.add_argument(
            "--follow-interval",
            dest="follow_interval",
            type=float,
            default=5.0,
            help="Seconds between passes with --follow (default 5).",
        )
        parser.add_argument(
            "--once", action="store_true", default=False, help="Exactly one pass (default: passes until caught up)."
        )
        parser.add_argument(
            "--max-passes", dest="max_passes", type=int, default=None, help="Stop after this many passes."
        )
        parser.add_argument(
            "--max-records",
            dest="max_records",
            type=int,
            default=100_000,
            help="Read at most N records per shard in one pass (default 100000: bounds a pass's memory; "
            "passes repeat until every shard's tip is reached).",
        )
        parser.add_argument(
            "--max-seconds",
            dest="max_seconds",
            type=float,
            default=None,
            help="Stop reading a shard after this many seconds in one pass.",
        )
        parser.add_argument(
            "--consumer-app",
            dest="consumer_app",
            default="livora-stream",
            help="Consumer application name: checkpoints are kept per application (default livora-stream).",
        )
        parser.add_argument(
            "--checkpoint-table",
            dest="checkpoint_table",
            default=None,
            help="DynamoDB checkpoint table (default livora-checkpoints-<consumer-app>).",
        )
        parser.add_argument(
            "--lease-seconds",
            dest="lease_seconds",
            type=float,
            default=30.0,
            help="Consumer lease length: one consumer per (application, stream) holds it, renewed every third "
            "of it; a crashed consumer's lease is taken over after it expires (default 30).",
        )
        parser.add_argument(
            "--lease-wait",
            dest="lease_wait",
            type=float,
            default=None,
            help="How long to wait for another consumer of the same application to finish or expire before "
            "giving up with exit code 3 (default: twice --lease-seconds; with --follow, forever).",
        )
        parser.add_argument(
            "--dedupe-table",
            dest="dedupe_table",
            default="livora-dedupe",
            help="DynamoDB table remembering message ids for 24 h across passes; 'none' disables (default livora-dedupe).",
        )
        parser.add_argument(
            "--dedupe-claims",
            dest="dedupe_claims",
            choices=["batched", "conditional"],
            default="batched",
            help="Local incremental mode: 'batched' reads and writes the dedupe table in batches, which is correct "
            "while this consumer application is the table's only writer; 'conditional' (one conditional put per new "
            "id) when several applications share the table. --streaming always uses conditional puts.",
        )
        parser.add_argument(
            "--profiles-table",
            dest="profiles_table",
            default=None,
            help="DynamoDB person-profiles table to update (default: none).",
        )
        parser.add_argument(
            "--identity-table",
            dest="identity_table",
            default=None,
            help="DynamoDB identity-graph table to update (default: none).",
        )
        parser.add_argument(
            "--window-seconds",
            dest="window_seconds",
            type=int,
            default=60,
            help="--streaming: fixed window length for lake files and checkpoint commits (default 60).",
        )
        parser.add_argument(
            "--discover-seconds",
            dest="discover_seconds",
            type=float,
            default=30.0,
            help="--streaming: how often to look for new (resharded) shards (default 30).",
        )
        parser.add_argument(
            "--max-run-seconds",
            dest="max_run_seconds",
            type=float,
            default=None,
            help="--streaming: stop reading after N seconds, let the open windows fire and commit, end the job "
            "(default: run until cancelled).",
        )
        parser.add_argument(
            "--min-call-interval",
            dest="min_call_interval",
            type=float,
            default=0.2,
            help="Seconds between GetRecords calls on one shard (Kinesis allows 5/s; default 0.2).",
        )

    # cross-flag checks, before any graph is built
    def validate(self) -> None:
        if self.start_position == StartPosition.AT_TIMESTAMP and not self.at_timestamp:
            raise ValueError("--start-position AT_TIMESTAMP needs --at-timestamp")
        if self.at_timestamp and self.start_position != StartPosition.AT_TIMESTAMP:
            raise ValueError("--at-timestamp only goes with --start-position AT_TIMESTAMP")
        if self.follow and self.once:
            raise ValueError("--follow and --once exclude each other")
        for name in ("max_records", "max_passes"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be at least 1")
        if self.window_seconds < 1:
            raise ValueError("--window-seconds must be at least 1")

    def checkpoint_table_name(self) -> str:
        return self.checkpoint_table or checkpoint_table_name(self.consumer_app)

    def dead_letters_path(self) -> str:
        return self.dead_letters or table_path(self.lake, DEAD_LETTERS_DIR)

    def read_config(self, bounded: bool) -> ReadConfig:
        at = dt.datetime.fromisoformat(self.at_timestamp.replace("Z", "+00:00")) if self.at_timestamp else None
        return ReadConfig(
            start_position=StartPosition(self.start_position),
            at_timestamp=at,
            bounded=bounded,
            max_records=self.max_records,
            max_seconds=self.max_seconds,
            min_call_interval=self.min_call_interval,
        )


# --------------------------------------------------------------------------- sinks (both modes)


@dataclass
class Sinks:
    written: object  # (path, rows) per lake file
    dead: object  # (path, lines) per dead-letter file
    duplicates: object  # (tenant_id, message_id)
    suppressed: object  # (tenant_id, message_id) of erased persons' events (docs/erasure.md)
    done: list = field(default_factory=list)  # every sink output the checkpoint commit waits for
    counts: dict = field(default_factory=dict)  # label -> PCollection of ints to sum for the summary
    verdict: object = None  # the quality gate's one GateOutcome dict (None: --quality-gate off)


def write_sinks(
    processed,
    opts: StreamEventsOptions,
    aws,
    lake_writer,
    dead_writer,
    own_tag: str | None = None,
    gate: GateWrittenFiles | None = None,
) -> Sinks:
    """Cross-pass dedupe, then lake, DynamoDB, warehouse; every failure into the dead letters.

    ``own_tag``: in local incremental mode, the pass whose files (any attempt) are being rewritten;
    rows whose key is in the lake's other files of their partition are then counted duplicates.
    ``gate``: checks the lake files written; under ``block`` DynamoDB and the warehouse get rows only
    if they pass (pipelines/quality_gate.py)."""
    # Erasure hook (docs/erasure.md, "streaming"): an erased person's events never reach a sink.
    kept = processed.row_batches | "DropErased" >> DropTombstoned(read_tombstones(opts.lake))
    batches, duplicates = kept.rows, [processed.duplicates]
    if (opts.dedupe_table or "none") != "none":
        batched = own_tag is not None and opts.dedupe_claims == "batched"  # one pass at a time, under the lease
        pass_id = f"{opts.consumer_app}/{own_tag}" if batched else None
        seen = batches | "DropSeenDuplicates" >> DropSeenDuplicates(
            aws, opts.dedupe_table, batches=True, pass_id=pass_id
        )
        batches, duplicates = seen.rows, [*duplicates, seen.duplicates]
    if own_tag is not None:  # a pass: events already in the lake (from any source) are duplicates
        known = batches | "DropLakeDuplicates" >> DropLakeDuplicates(opts.lake, [own_tag])
        batches, duplicates = known.rows, [*duplicates, known.duplicates]
    written = batches | "WriteLake" >> lake_writer
    rows = batches | "LakeRows" >> beam.FlatMap(lambda kv: kv[1])
    verdict = None
    if gate is not None:
        verdict = written | "QualityGate" >> gate
        if gate.mode == "block":
            rows = rows | "HeldByQualityGate" >> HeldByGate(verdict)
    failures = [processed.failures]
    done = [written]
    counts = {}
    if opts.profiles_table or opts.identity_table:
        from connectors.dynamodb import WriteIdentityGraph, WriteProfiles

        if opts.profiles_table:
            profiles = rows | "WriteProfiles" >> WriteProfiles(aws, opts.profiles_table)
            failures.append(profiles.failures)
            done.append(profiles.applied)
            counts["profile_rows_applied"] = profiles.applied
        if opts.identity_table:
            identity = rows | "WriteIdentityGraph" >> WriteIdentityGraph(aws, opts.identity_table)
            failures.append(identity.failures)
            done.append(identity.applied)
    if opts.warehouse:
        from connectors.warehouse import LoadToWarehouse

        loaded = rows | "LoadWarehouse" >> LoadToWarehouse(opts.warehouse)
        failures.append(loaded.failures)
        done.append(loaded.loaded)
        counts["warehouse_rows_merged"] = loaded.loaded
    all_failures = failures | "AllFailures" >> beam.Flatten()
    dead = all_failures | "WriteDeadLetters" >> dead_writer
    all_duplicates = duplicates | "AllDuplicates" >> beam.Flatten()
    done += [dead, all_duplicates]
    return Sinks(written, dead, all_duplicates, kept.suppressed, done, counts, verdict)


# --------------------------------------------------------------------------- local incremental mode


def pass_tag(stream: str, tasks: list[ShardTask], config: ReadConfig) -> str:
    """Names a pass by where it starts: a rerun after a crash gets the same name (and replaces files)."""
    digest = hashlib.sha1(stream.encode())
    for task in sorted(tasks, key=lambda t: t.shard_id):
        start = task.checkpoint.key() if task.checkpoint else (config.start_position.value, str(config.at_timestamp))
        digest.update(f"\n{task.shard_id}={start}".encode())
    return "k" + digest.hexdigest()[:11]


def remove_attempt_leftovers(lake: str, dead_letters: str, tag: str) -> int:
    """Delete files an earlier, uncommitted attempt of this pass wrote (it is about to redo them).

    Needed because a rerun may put a row in another bucket file than the crashed attempt did
    (identity stitching sees more data), and an unreplaced stale file would double that row.
    """
    patterns = [
        f"{table_path(lake, EVENTS_TABLE)}/**/part-{tag}-*.parquet",
        f"{dead_letters.rstrip('/')}/part-{tag}-*.jsonl",
    ]
    stale = [m.path for result in FileSystems.match(patterns) for m in result.metadata_list]
    if stale:
        log.warning("removing %d file(s) of an uncommitted earlier attempt of pass %s", len(stale), tag)
        FileSystems.delete(stale)
    return len(stale)


class _WriteSummaryFn(beam.DoFn):
    """Writes the pass's totals from what was actually written, after the checkpoint commit.

    Like :class:`connectors.run_summary.WriteRunSummary`, plus the per-shard progress (a list, not a total)."""

    def __init__(self, path: str, labels: list[str], encryption: S3Encryption | None = None):
        self.path, self.labels, self.encryption = path, labels, encryption

    def process(self, _, progress, committed, *totals):
        body = {
            **dict(zip(self.labels, totals, strict=True)),
            "shards": [
                {
                    "shard_id": p.shard_id,
                    "records": p.records,
                    "millis_behind_latest": p.millis_behind,
                    "start": p.start.sequence if p.start else None,
                    "end": p.end.sequence if p.end else None,
                    "shard_end": bool(p.end and p.end.shard_end),
                }
                for p in sorted(progress, key=lambda p: p.shard_id)
            ],
            "checkpoints_committed": len(committed),
        }
        write_bytes_atomically(self.path, json.dumps(body).encode(), self.path.rsplit("/", 1)[0], self.encryption)
        yield body


def require_balance(tag: str, parsed: int, lake_rows: int, failed: int, duplicates: int, suppressed: int = 0) -> int:
    """Every parsed event ends in exactly one place, or the pass fails before its checkpoints move
    (so a restart reads it again): lake rows + processing failures + duplicates + suppressed = events parsed."""
    placed = lake_rows + failed + duplicates + suppressed
    if placed != parsed:
        raise RuntimeError(
            f"pass {tag} does not balance: {parsed} events parsed but lake {lake_rows} + failed {failed} "
            f"+ duplicates {duplicates} + suppressed {suppressed} = {placed}; checkpoints not committed"
        )
    return placed


def build_pass(
    pipeline,
    opts: StreamEventsOptions,
    aws,
    tasks: list[ShardTask],
    tag: str,
    summary_path: str,
    config: ReadConfig,
    lease: ConsumerLease | None = None,
) -> None:
    """One pass. Files are named ``part-<tag>-<lease token>-…``: a rerun of the pass by a later lease
    holder writes other names and first removes the leftovers (:func:`remove_attempt_leftovers`)."""
    file_tag = f"{tag}-{lease.token[:8]}" if lease is not None and lease.token else tag
    read = pipeline | "ShardTasks" >> beam.Create(tasks) | "ReadKinesis" >> ReadKinesisShards(aws, config)
    processed = read.records | "ProcessEvents" >> ProcessEvents(opts.process_config(opts.lake))
    gate = None
    if opts.quality_gate != "off":
        record = current_run()
        run_id = record.run_id if record is not None else None
        gate = GateWrittenFiles(opts.lake, opts.quality_gate, "stream_events", opts.max_future_hours, run_id)
    sinks = write_sinks(
        processed,
        opts,
        aws,
        WriteLakePartitions(opts.lake, file_tag, encryption=opts.encryption()),
        WriteDeadLetters(opts.dead_letters_path(), file_tag, encryption=opts.encryption()),
        own_tag=tag,
        gate=gate,
    )
    totals = {
        "records_read": total(read.records, "Records"),
        "events_parsed": total(processed.events_parsed, "EventsParsed", lambda n: n),
        "failed_processing": total(processed.failures, "FailedProcessing"),
        "lake_rows": total(sinks.written, "LakeRows", lambda pn: pn[1]),
        "lake_files": total(sinks.written, "LakeFiles"),
        "dead_letters": total(sinks.dead, "DeadLetters", lambda pn: pn[1]),
        "duplicates": total(sinks.duplicates, "Duplicates"),
        "suppressed": total(sinks.suppressed, "Suppressed"),
        **{label: total(pc, label.title().replace("_", "")) for label, pc in sinks.counts.items()},
    }
    progress = read.progress
    if sinks.verdict is not None:
        totals["quality"] = beam.pvalue.AsSingleton(sinks.verdict)
        if opts.quality_gate == "block":  # a failing pass commits nothing: its records stay in the stream
            progress = progress | "CommitIfPassed" >> HeldByGate(sinks.verdict)
    balanced = (
        pipeline
        | "BalanceTrigger" >> beam.Create([None])
        | "CheckBalance"
        >> beam.Map(
            lambda _, parsed, lake, failed, dups, erased: require_balance(tag, parsed, lake, failed, dups, erased),
            *(totals[name] for name in ("events_parsed", "lake_rows", "failed_processing", "duplicates", "suppressed")),
        )
    )
    committed = progress | "CommitCheckpoints" >> CommitCheckpoints(
        aws,
        opts.checkpoint_table_name(),
        after=[*sinks.done, balanced],
        owner=lease.owner if lease is not None else None,
        fence=lease.fence() if lease is not None else None,
    )
    (
        pipeline
        | "SummaryTrigger" >> beam.Create([None])
        | "WriteSummary"
        >> beam.ParDo(
            _WriteSummaryFn(summary_path, list(totals), opts.encryption()),
            beam.pvalue.AsList(read.progress),
            beam.pvalue.AsList(committed),
            *totals.values(),
        )
    )


@dataclass
class PassSummary:
    tag: str
    records_read: int = 0
    events_parsed: int = 0
    """Events (and undecodable records) out of parsing: lake rows + failed_processing + duplicates + suppressed."""
    failed_processing: int = 0
    """Dead letters of decode/validate/normalize/enrich (``dead_letters`` adds the sinks' failures)."""
    lake_rows: int = 0
    lake_files: int = 0
    dead_letters: int = 0
    duplicates: int = 0
    suppressed: int = 0
    """Events of persons erased earlier (LAKE/_tombstones; docs/erasure.md): counted, not written."""
    profile_rows_applied: int = 0
    warehouse_rows_merged: int = 0
    checkpoints_committed: int = 0
    seconds: float = 0.0
    shards: list = field(default_factory=list)
    quality: dict | None = None
    """The quality gate's verdict on the pass's lake files (None: --quality-gate off)."""
    dead_letters_by_reason: dict[str, int] = field(default_factory=dict)
    """Reason code -> dead letters of this pass, read back from its dead-letter files."""


@dataclass
class StreamSummary:
    stream: str
    lake: str
    dead_letters_path: str
    passes: list[PassSummary] = field(default_factory=list)

    def total(self, name: str) -> int:
        return sum(getattr(p, name) for p in self.passes)

    def as_dict(self) -> dict:
        """The run's totals: every pass's counts summed (what the run record's ``counts`` hold)."""
        names = ("records_read", "lake_rows", "lake_files", "dead_letters", "duplicates", "suppressed")
        names += ("profile_rows_applied", "warehouse_rows_merged")
        reasons: Counter[str] = Counter()
        for p in self.passes:
            reasons.update(p.dead_letters_by_reason)
        return {
            "stream": self.stream,
            "lake": self.lake,
            "dead_letters_path": self.dead_letters_path,
            "passes": len(self.passes),
            **{name: self.total(name) for name in names},
            "dead_letters_by_reason": dict(sorted(reasons.items())),
        }


def plan_pass(opts: StreamEventsOptions, client, store: CheckpointStore) -> list[ShardTask]:
    shards = list_shards(client, opts.stream)
    checkpoints = store.load(opts.stream)
    return [
        ShardTask(opts.stream, s.shard_id, checkpoints.get(s.shard_id), s.ending_sequence)
        for s in readable_shards(shards, checkpoints)
    ]


def has_work(client, tasks: list[ShardTask], config: ReadConfig) -> bool:
    """Cheap look before starting a pipeline: any new record, or a closed shard to mark as ended?"""
    for task in tasks:
        if task.ending_sequence is not None:
            return True
        reader = ShardReader(client, task.stream, task.shard_id, batch_limit=1, min_call_interval=0)
        reader.open(task.checkpoint, config.start_position, config.at_timestamp)
        if reader.poll():
            return True
    return False


def _progress_line(summary: PassSummary) -> str:
    if not summary.shards:
        return f"pass {summary.tag}: caught up, nothing new on any shard"
    shards = ", ".join(
        f"{s['shard_id'].removeprefix('shardId-')}: {s['records']}"
        + (" (ended)" if s["shard_end"] else f" lag {s['millis_behind_latest']} ms")
        for s in summary.shards
    )
    return (
        f"pass {summary.tag}: read {summary.records_read} → lake {summary.lake_rows} rows/{summary.lake_files} files, "
        f"dead {summary.dead_letters}, duplicates {summary.duplicates} in {summary.seconds:.1f}s [{shards}]"
    )


def _one_pass(
    options, opts: StreamEventsOptions, aws, client, store, config: ReadConfig, lease: ConsumerLease
) -> PassSummary:
    lease.ensure()  # plan and clean up only while this consumer owns the stream
    tasks = plan_pass(opts, client, store)
    tag = pass_tag(opts.stream, tasks, config)
    started = time.monotonic()
    this = PassSummary(tag)
    if tasks and has_work(client, tasks, config):
        lease.ensure()
        remove_attempt_leftovers(opts.lake, opts.dead_letters_path(), tag)
        remove_quarantined(opts.lake, [tag])  # a blocked earlier attempt of this pass: redone now
        summary_path = run_summary_path(opts.lake, f"stream-{opts.stream}-{tag}")
        run_pipeline(lambda p: build_pass(p, opts, aws, tasks, tag, summary_path, config, lease), options)
        this = PassSummary(tag, **read_run_summary(summary_path))
        this.dead_letters_by_reason = dead_letter_reasons(opts.dead_letters_path(), [tag])
        note_input(f"kinesis:{opts.stream}", (), fingerprint=tag, records=this.records_read)
        if this.quality is not None:  # block + failed: quarantine, QualityError (nothing else was published)
            gate_pass(opts.lake, [tag], this.quality)
    this.seconds = round(time.monotonic() - started, 2)
    return this


def run_incremental(options: PipelineOptions, opts: StreamEventsOptions, out=sys.stdout) -> StreamSummary:
    aws = opts.settings()
    client = default_kinesis_client(aws)
    store = CheckpointStore(aws, opts.checkpoint_table_name())
    store.check_exists()
    summary = StreamSummary(opts.stream, opts.lake, opts.dead_letters_path())
    config = opts.read_config(bounded=True)
    if config.start_position == StartPosition.LATEST:
        # pin "latest" to when this run started, or every pass would skip what arrived since the last one
        config = config._replace(start_position=StartPosition.AT_TIMESTAMP, at_timestamp=dt.datetime.now(dt.UTC))
    lease = ConsumerLease(store, opts.stream, seconds=opts.lease_seconds)
    wait = opts.lease_wait if opts.lease_wait is not None else (float("inf") if opts.follow else 2 * opts.lease_seconds)
    lease.acquire(wait, say=lambda fmt, *args: print(fmt % args, file=out, flush=True))
    note_outputs(table_path(opts.lake, EVENTS_TABLE), opts.dead_letters_path())
    try:
        while True:
            this = _one_pass(options, opts, aws, client, store, config, lease)
            summary.passes.append(this)
            note_counts(summary.as_dict())  # after every pass: a run stopped by SIGTERM keeps its passes' counts
            print(_progress_line(this), file=out, flush=True)
            caught_up = this.records_read == 0 and not any(s["shard_end"] for s in this.shards)
            if opts.once or (opts.max_passes and len(summary.passes) >= opts.max_passes):
                break
            if opts.follow:
                time.sleep(opts.follow_interval if caught_up else 0)
            elif caught_up:
                break
    except KeyboardInterrupt:  # --follow is stopped with Ctrl-C; an interrupted pass is redone on restart
        print("stopped; a pass that did not commit is read again on the next start", file=out, flush=True)
    finally:
        lease.release()
    return summary


# --------------------------------------------------------------------------- streaming mode

WINDOW_FORMAT = "%Y%m%dT%H%M%S"
_OWNER_MARK = re.compile(r"\|(r\d+)\|w(\d{8}T\d{6})$")


def new_run_id() -> str:
    """A streaming run's name: ``r`` + start time in epoch milliseconds (sortable, unique per driver)."""
    return f"r{int(time.time() * 1000):013d}"


def _window_start(win) -> str:
    return win.start.to_utc_datetime().strftime(WINDOW_FORMAT) if hasattr(win, "start") else "global"


@dataclass(frozen=True)
class _Handed:
    """Discovery restriction: the shard ids already handed to the reader in this run."""

    shard_ids: frozenset = frozenset()
    done: bool = False


class _HandedTracker(RestrictionTracker):
    """Claims shard ids (each once); ``None`` claims the end (drain). Self-checkpoints only."""

    def __init__(self, restriction: _Handed):
        self._r = restriction

    def current_restriction(self) -> _Handed:
        return self._r

    def try_claim(self, shard_id) -> bool:
        if self._r.done:
            return False
        if shard_id is None:
            self._r = _Handed(self._r.shard_ids, done=True)
            return False
        self._r = _Handed(self._r.shard_ids | {shard_id})
        return True

    def try_split(self, fraction_of_remainder):
        if self._r.done or fraction_of_remainder != 0:
            return None
        primary, residual = _Handed(self._r.shard_ids, done=True), _Handed(self._r.shard_ids)
        self._r = primary
        return primary, residual

    def check_done(self) -> None:
        if not self._r.done:
            raise ValueError("shard discovery returned without finishing or checkpointing")

    def current_progress(self) -> RestrictionProgress:
        return sdf_progress(len(self._r.shard_ids), self._r.done)  # explicit fraction: see its docstring

    def is_bounded(self) -> bool:
        return self._r.done


class _HandedProvider(RestrictionProvider):
    def initial_restriction(self, element) -> _Handed:
        return _Handed()

    def create_tracker(self, restriction: _Handed) -> _HandedTracker:
        return _HandedTracker(restriction)

    def restriction_size(self, element, restriction) -> int:
        return 0 if restriction.done else 1

    def split(self, element, restriction):
        yield restriction


_HANDED_PARAM = beam.DoFn.RestrictionParam(_HandedProvider())
_DISCOVERY_WATERMARK = beam.DoFn.WatermarkEstimatorParam(ManualWatermarkEstimator.default_provider())


class _DiscoverShardsFn(beam.DoFn):
    """A splittable DoFn on one impulse: every ``interval`` s, the shards that may be read now (lineage rule
    against the committed checkpoints), each handed out once per run (the restriction remembers them).

    Replaces ``PeriodicImpulse`` → stateful start-once → ``Reshuffle``, which Prism leaves stuck
    (apache/beam#33815). The watermark is "now" at every poll, so it never holds the job at 1970
    (apache/beam#39446: a source that starts empty and only resumes)."""

    def __init__(self, aws, stream: str, checkpoint_table: str, interval: float, stop_at: float | None):
        self.aws, self.stream, self.table, self.interval, self.stop_at = (
            aws,
            stream,
            checkpoint_table,
            interval,
            stop_at,
        )

    def setup(self):
        self.client = default_kinesis_client(self.aws)
        self.store = CheckpointStore(self.aws, self.table)

    @beam.DoFn.unbounded_per_element()  # everything downstream is an unbounded PCollection
    def process(
        self,
        _impulse,
        tracker=_HANDED_PARAM,
        watermark=_DISCOVERY_WATERMARK,
    ):
        now = Timestamp.now()
        current = watermark.current_watermark()
        watermark.set_watermark(now if current is None or now > current else current)
        if self.stop_at is not None and time.time() >= self.stop_at:
            tracker.try_claim(None)
            return
        checkpoints = self.store.load(self.stream)
        handed = tracker.current_restriction().shard_ids
        for shard in readable_shards(list_shards(self.client, self.stream), checkpoints):
            if shard.shard_id in handed:
                continue
            if not tracker.try_claim(shard.shard_id):
                return
            task = ShardTask(self.stream, shard.shard_id, checkpoints.get(shard.shard_id), shard.ending_sequence)
            yield beam.window.TimestampedValue(task, now)
        tracker.defer_remainder(Duration(seconds=self.interval))


class _WriteWindowFn(beam.DoFn):
    """Streaming lake writer: one file per (partition, bucket, window); the name is derived from the
    run, the window and the rows' message ids, so a retried bundle rewrites the same file."""

    def __init__(self, lake: str, run_id: str, encryption: S3Encryption | None = None):
        self.lake, self.run_id, self.encryption = lake, run_id, encryption

    def process(self, element, win=beam.DoFn.WindowParam):
        (tenant, date, bucket), rows = element
        rows = sorted(rows, key=event_sort_key)
        digest = hashlib.sha1("\n".join(r["message_id"] for r in rows).encode()).hexdigest()[:10]
        name = f"part-w{_window_start(win)}-{self.run_id}-{digest}-{bucket:04d}.parquet"
        partition = {"tenant_id": tenant, "event_date": date}
        path = write_partition_file(self.lake, EVENTS_TABLE, partition, rows, name, encryption=self.encryption)
        yield path, len(rows)


class _WriteWindowDeadLettersFn(beam.DoFn):
    def __init__(self, path: str, run_id: str, encryption: S3Encryption | None = None):
        self.path, self.run_id, self.encryption = path, run_id, encryption

    def process(self, element, win=beam.DoFn.WindowParam):
        lines = sorted(f.to_json_line() for f in element[1])
        digest = hashlib.sha1("\n".join(lines).encode()).hexdigest()[:10]
        target = f"{self.path.rstrip('/')}/part-w{_window_start(win)}-{self.run_id}-{digest}.jsonl"
        body = "".join(line + "\n" for line in lines).encode()
        write_bytes_atomically(target, body, self.path, self.encryption)  # S3: one PUT
        yield target, len(lines)


class _WindowedDeadLetters(beam.PTransform):
    def __init__(self, path: str, run_id: str = "r0", encryption: S3Encryption | None = None):
        super().__init__()
        self.path, self.run_id, self.encryption = path, run_id, encryption

    def expand(self, failures):
        return (
            failures
            | "KeyDeadLetters" >> beam.Map(lambda f: (0, f))
            | "GroupDeadLetters" >> beam.GroupByKey()
            | "WriteDeadLetterFiles" >> beam.ParDo(_WriteWindowDeadLettersFn(self.path, self.run_id, self.encryption))
        )


class _WindowedLake(beam.PTransform):
    def __init__(self, lake: str, run_id: str = "r0", encryption: S3Encryption | None = None):
        super().__init__()
        self.lake, self.run_id, self.encryption = lake, run_id, encryption

    def expand(self, batches):
        return batches | "WriteWindowFiles" >> beam.ParDo(_WriteWindowFn(self.lake, self.run_id, self.encryption))


class _CommitWindowFn(beam.DoFn):
    """Commits one window's progress (one transaction per stream and window) under an owner that names
    the run and the window: the mark :func:`remove_uncommitted_windows` reads after a crash."""

    def __init__(self, aws, table: str, owner: str, run_id: str, fence: dict | None):
        self.aws, self.table, self.owner, self.run_id, self.fence = aws, table, owner, run_id, fence

    def setup(self):
        self.store = CheckpointStore(self.aws, self.table)
        self.committed = Metrics.counter("kinesis", "checkpoints_committed")
        self.refused = Metrics.counter("kinesis", "checkpoints_refused")

    def process(self, element, sinks_done, win=beam.DoFn.WindowParam):
        del sinks_done  # only there to order this step after the window's sinks
        progress = furthest_per_shard(element[1])
        _maybe_hold(CommitCheckpoints.HOLD_ENV)
        owner = f"{self.owner}|{self.run_id}|w{_window_start(win)}"
        moved = self.store.commit_progress(progress, owner, self.fence)
        self.committed.inc(len(moved))
        self.refused.inc(sum(1 for p in progress if p.end is not None) - len(moved))
        yield from moved


def furthest_per_shard(progress) -> list[ShardProgress]:
    """One item per shard: the furthest end position of the window's calls (a transaction may touch an item once)."""
    best: dict[str, ShardProgress] = {}
    for p in progress:
        if p.end is None:
            continue
        seen = best.get(p.shard_id)
        if seen is None or (p.end.key(), p.end.shard_end) > (seen.end.key(), seen.end.shard_end):
            best[p.shard_id] = p
    return [best[k] for k in sorted(best)]


class CommitWindows(beam.PTransform):
    """Per window: commit the ShardProgress end positions after the window's sink outputs are complete."""

    def __init__(self, aws, table: str, run_id: str, after=(), owner: str | None = None, fence: dict | None = None):
        super().__init__()
        self.aws, self.table, self.run_id, self.after = aws, table, run_id, list(after)
        self.owner, self.fence = owner or default_owner(), fence

    def expand(self, progress):
        counts = [
            pc | f"SinkDone{i}" >> beam.combiners.Count.Globally().without_defaults() for i, pc in enumerate(self.after)
        ]
        # one side input (ready once every sink's output watermark passed the window): a keyword-only
        # WindowParam after *side_inputs is not recognised by Beam
        done = beam.pvalue.AsList(counts | "AllSinksDone" >> beam.Flatten())
        fn = _CommitWindowFn(self.aws, self.table, self.owner, self.run_id, self.fence)
        return (
            progress
            | "KeyByStream" >> beam.Map(lambda p: (p.stream, p))
            | "GatherWindow" >> beam.GroupByKey()
            | "CommitWindow" >> beam.ParDo(fn, done)
        )


def committed_windows(details: list[dict]) -> dict[str, str]:
    """Run id -> the latest window it committed, from the checkpoint items' owners."""
    out: dict[str, str] = {}
    for item in details:
        match = _OWNER_MARK.search(str(item.get("owner", "")))
        if match:
            run, window = match.groups()
            out[run] = max(out.get(run, window), window)
    return out


def remove_uncommitted_windows(lake: str, dead_letters: str, details: list[dict]) -> list[str]:
    """Delete the streaming files whose window never committed (a crashed run's last windows).

    A new run reads those records again from the checkpoints and writes them under its own name;
    without this, a row of an uncommitted window would be in the lake twice. Every run cleans up at
    start, so only the latest committing run (and later runs that committed nothing) can leave such
    files: a file of an older run is kept; of the latest run, kept if its window is at or before that
    run's last committed window; of a later run, removed."""
    committed = committed_windows(details)
    latest = max(committed) if committed else None
    # an incremental-mode commit (owner names no run) came after the streaming runs that started before it:
    # that pass's lake-wide key check (DropLakeDuplicates) kept their leftover rows once, so they stay
    adopted = max(
        (
            f"r{int(dt.datetime.fromisoformat(item['updated_at']).timestamp() * 1000):013d}"
            for item in details
            if item.get("updated_at") and not _OWNER_MARK.search(str(item.get("owner", "")))
        ),
        default=None,
    )
    patterns = [f"{table_path(lake, EVENTS_TABLE)}/**/part-w*.parquet", f"{dead_letters.rstrip('/')}/part-w*.jsonl"]
    stale = []
    for result in FileSystems.match(patterns):
        for meta in result.metadata_list:
            parts = meta.path.rsplit("/", 1)[-1].split("-")
            if len(parts) < 4 or not parts[2].startswith("r"):
                continue  # not a streaming window file of a named run
            window, run = parts[1].removeprefix("w"), parts[2]
            if adopted is not None and run < adopted:
                continue
            if latest is None or run > latest or (run == latest and window > committed[latest]):
                stale.append(meta.path)
    if stale:
        log.warning("removing %d file(s) of uncommitted streaming windows", len(stale))
        FileSystems.delete(stale)
    return stale


def build_streaming(
    pipeline,
    opts: StreamEventsOptions,
    aws,
    run_id: str = "r0",
    stop_at: float | None = None,
    lease: ConsumerLease | None = None,
) -> None:
    """The unbounded form: discovery SDF → reader SDF → fixed windows → sinks → per-window commits.

    ``stop_at`` (epoch s): discovery and every shard's read end then (drain), so the last windows fire,
    commit and the job finishes."""
    tasks = (
        pipeline
        | "Start" >> beam.Impulse()
        | "DiscoverShards"
        >> beam.ParDo(_DiscoverShardsFn(aws, opts.stream, opts.checkpoint_table_name(), opts.discover_seconds, stop_at))
    )
    config = opts.read_config(bounded=False)._replace(stop_at=stop_at)
    read = tasks | "ReadKinesis" >> ReadKinesisShards(aws, config)
    windowing = beam_window.FixedWindows(opts.window_seconds)
    records = read.records | "Window" >> beam.WindowInto(windowing)
    processed = records | "ProcessEvents" >> ProcessEvents(opts.process_config(opts.lake))
    lake_writer = _WindowedLake(opts.lake, run_id, opts.encryption())
    dead_writer = _WindowedDeadLetters(opts.dead_letters_path(), run_id, opts.encryption())
    sinks = write_sinks(processed, opts, aws, lake_writer, dead_writer)
    progress = read.progress | "WindowProgress" >> beam.WindowInto(windowing)
    progress | "CommitCheckpoints" >> CommitWindows(
        aws,
        opts.checkpoint_table_name(),
        run_id,
        after=sinks.done,
        owner=lease.owner if lease is not None else None,
        fence=lease.fence() if lease is not None else None,
    )


def run_streaming(options: PipelineOptions, opts: StreamEventsOptions, out=sys.stdout) -> str:
    """Hold the consumer lease, clean up uncommitted windows, run the job until ``--max-run-seconds``
    (then drain; cancelled if it has not finished 2 windows later). Returns the run id."""
    aws = opts.settings()
    store = CheckpointStore(aws, opts.checkpoint_table_name())
    store.check_exists()
    lease = ConsumerLease(store, opts.stream, seconds=opts.lease_seconds)
    wait = opts.lease_wait if opts.lease_wait is not None else 2 * opts.lease_seconds
    lease.acquire(wait, say=lambda fmt, *args: print(fmt % args, file=out, flush=True))
    run_id = new_run_id()
    try:
        lease.ensure()
        remove_uncommitted_windows(opts.lake, opts.dead_letters_path(), store.details(opts.stream))
        stop_at = time.time() + opts.max_run_seconds if opts.max_run_seconds else None
        print(f"streaming run {run_id} started", file=out, flush=True)
        timeout = opts.max_run_seconds + 2 * opts.window_seconds + 60 if opts.max_run_seconds else None
        state = _run_job(lambda p: build_streaming(p, opts, aws, run_id, stop_at, lease), options, timeout)
        print(f"streaming run {run_id} ended: {state}", file=out, flush=True)
    finally:
        lease.release()
        note_streaming_counts(opts, run_id)
    return run_id


def note_streaming_counts(opts: StreamEventsOptions, run_id: str) -> None:
    """The run record of a ``--streaming`` run: its lake files and dead letters, found by the run id in
    their names (the rows from the Parquet footers, dead letters by reason), also after SIGTERM."""
    note_outputs(f"{table_path(opts.lake, EVENTS_TABLE)}/*/*/part-w*-{run_id}-*.parquet", opts.dead_letters_path())
    note_counts(
        {"run_id": run_id, "dead_letters_by_reason": dead_letter_reasons(opts.dead_letters_path(), [f"w*-{run_id}"])}
    )


def _run_job(build, options: PipelineOptions, timeout: float | None) -> str:
    """Like :func:`pipelines.options.run_pipeline`, with a bound on the wait: a streaming job that has not
    finished by then is cancelled (its uncommitted windows are read again by the next run)."""
    with_default_runner(options)
    try:
        resolve_runner(options)
    except RunnerUnavailable as err:
        raise UsageError(str(err)) from None
    runner = options.view_as(StandardOptions).runner
    in_process = runner in ("FnApiRunner", "BundleBasedDirectRunner")
    pipeline = beam.Pipeline(options=options if in_process else portable_options(options))
    build(pipeline)
    result = pipeline.run()
    state = result.wait_until_finish(duration=int(timeout * 1000) if timeout else None)
    if not PipelineState.is_terminal(state):
        log.warning("streaming job still %s after %.0f s: cancelling", state, timeout)
        result.cancel()
        state = result.wait_until_finish()
    if state != PipelineState.DONE:
        raise PipelineError(f"streaming job ended {state}")
    return state


# --------------------------------------------------------------------------- entry points


def run(argv: list[str] | None = None, out=sys.stdout) -> StreamSummary | None:
    argv = list(argv or [])
    options = parse_options(argv, StreamEventsOptions, __doc__)
    opts = options.view_as(StreamEventsOptions)
    opts.validate()
    check_tracking_plans(opts.tracking_plans)
    aws = opts.settings()
    if any(path.startswith("s3://") for path in (opts.lake, opts.dead_letters or "")):
        # Beam's S3 filesystem gets the same AWS as the rest (the local endpoint, test credentials)
        given = {arg.split("=", 1)[0] for arg in argv}
        extra = [flag for flag in aws.beam_s3_options() if flag.split("=", 1)[0] not in given]
        if extra:
            options = parse_options(argv + extra, StreamEventsOptions, __doc__)
            opts = options.view_as(StreamEventsOptions)
    FileSystems.set_options(options)  # the driver lists and deletes files itself (leftovers, summaries)
    use_encryption(opts.encryption())  # --kms-key-id: the driver's own writes; the writers carry it themselves
    if options.view_as(StandardOptions).streaming:
        if opts.quality_gate == "block":
            raise UsageError(
                f"{opts.describe_gate()} needs the incremental mode: --streaming commits per window; "
                "pass --quality-gate warn or off to run --streaming (docs/quality.md)"
            )
        if opts.quality_gate == "warn":
            log.warning("--streaming runs without the quality gate (docs/quality.md); check_lake checks its files")
        run_streaming(options, opts, out)
        return None
    summary = run_incremental(options, opts, out)
    log.info("done: %s", summary.as_dict())
    return summary


def quiet_option_warnings() -> None:
    """Beam's get_all_options only knows direct PipelineOptions subclasses, so it calls every flag of a
    composed option class "unparseable". Harmless once :func:`pipelines.options.parse_options` has checked
    every flag (a misspelled one fails there, exit 2); :mod:`pipelines.logs` drops exactly those messages."""
    drop_import_noise()


def main(argv: list[str] | None = None) -> None:
    main_entry("stream_events", _main, argv)


def _main(argv: list[str]) -> None:
    try:
        summary = run(argv)
    except LeaseHeldError as err:  # a scheduler may simply try again later
        raise PipelineError(str(err), EXIT_LEASE_HELD) from None
    except LeaseLostError as err:
        message = f"{err}; nothing was committed, the next holder reads the pass again"
        raise PipelineError(message, EXIT_LEASE_LOST) from None
    if summary is not None:
        last = asdict(summary.passes[-1]) if summary.passes else None
        print(json.dumps({**summary.as_dict(), "last_pass": last}, indent=2, default=str))


if __name__ == "__main__":
    main()
