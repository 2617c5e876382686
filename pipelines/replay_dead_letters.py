"""Replay dead letters through the same processing path into the lake, optionally with corrected payloads.

    python -m pipelines.replay_dead_letters --dead-letters 'lake/dead_letters/**.jsonl' --lake ./lake \\
        [--only-reason invalid_value] [--corrections fixes.jsonl] [--dead-letters-out DIR]

Each selected dead letter's payload (or its correction) becomes a ``SourceRecord`` with
``source_ref = "replay:<original source_ref>"`` and goes through ``ProcessEvents`` exactly like an
ingested record. Every selected dead letter ends in exactly one place:

- a lake row (written as ``part-replay<tag>-NNNN.parquet``; tag = hash of the dead-letter files and the
  corrections, so a re-run of the same replay targets the same file names);
- a new dead letter in ``--dead-letters-out`` (default ``LAKE/replays/<tag>/dead_letters``; it still
  fails: fix it and replay again);
- a counted duplicate: a second copy within the replay, or ``already_in_lake`` when the lake already
  holds that ``(tenant_id, message_id)`` (the event arrived fine some other way, or this replay ran
  before). That check is what makes replay idempotent: run it twice and the lake is the same.

Not replayed (counted as ``skipped``): dead letters not matching ``--only-reason``, and sink failures
(stage ``sink``): their payload is an already processed lake row for a sink, not a raw event.
Dead-letter files are an append-only log and are never modified. See docs/sinks.md.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass

import apache_beam as beam
import pyarrow.dataset as ds
from apache_beam.io.filesystems import FileSystems

from connectors.lake import WriteDeadLetters, WriteLakePartitions, events_dataset, table_path
from connectors.paths import use_encryption
from connectors.run_records import note_input, note_outputs
from connectors.run_summary import WriteRunSummary, read_run_summary, run_summary_path, total
from pipelines.errors import InputError
from pipelines.options import AwsOptions, ProcessingOptions, main_entry, parse_options, run_pipeline
from schemas.failures import FailedEvent, Reason, Stage
from schemas.lake import EVENTS_TABLE
from schemas.records import SourceRecord
from transforms.composites import ProcessEvents

log = logging.getLogger("livora.replay_dead_letters")
REPLAY_PREFIX = "replay:"


class ReplayOptions(ProcessingOptions, AwsOptions):
    """Which dead letters to replay, with which corrections, into which lake."""

    @classmethod
    def _add_argparse_args(cls, parser):
        parser.add_argument(
            "--dead-letters",
            dest="dead_letters",
            action="append",
            required=True,
            help="Dead-letter JSON-lines file pattern (local or s3://, e.g. 'lake/dead_letters/**.jsonl'); repeatable.",
        )
        parser.add_argument("--lake", required=True, help="Lake root (local directory or s3://bucket/prefix).")
        parser.add_argument(
            "--only-reason",
            dest="only_reasons",
            action="append",
            choices=[r.value for r in Reason],
            default=None,
            help="Replay only dead letters with this reason code; repeatable (default: every reason).",
        )
        parser.add_argument(
            "--corrections",
            default=None,
            help='JSON-lines file of corrected payloads: {"message_id": ID | "source_ref": REF, "payload": '
            "<event object or raw text>} per line; a match replaces the dead letter's payload.",
        )
        parser.add_argument(
            "--dead-letters-out",
            dest="dead_letters_out",
            default=None,
            help="Where replays that fail again go (default LAKE/replays/<tag>/dead_letters: outside LAKE/dead_letters, "
            "so that a glob over the originals does not pick them up again).",
        )


@dataclass
class ReplaySummary:
    dead_letters_read: int
    selected: int
    skipped: int
    corrected: int
    lake_rows: int
    failed_again: int
    duplicates: int
    already_in_lake: int
    tag: str
    dead_letters_out: str

    @property
    def accounted(self) -> int:
        """Where the selected dead letters went; equals ``selected`` (nothing lost)."""
        return self.lake_rows + self.failed_again + self.duplicates + self.already_in_lake


# --- selection and corrections (pure) ------------------------------------------------------------------


def load_corrections(lines: Iterable[str]) -> dict[tuple[str, str], bytes]:
    """Corrections by ("message_id", id) or ("source_ref", ref) -> payload bytes."""
    out: dict[tuple[str, str], bytes] = {}
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        entry = json.loads(line)
        payload = entry.get("payload")
        if payload is None:
            raise ValueError(f"corrections line {number}: no payload")
        body = payload.encode("utf-8") if isinstance(payload, str) else json.dumps(payload).encode("utf-8")
        if entry.get("message_id"):
            out[("message_id", entry["message_id"])] = body
        elif entry.get("source_ref"):
            out[("source_ref", entry["source_ref"])] = body
        else:
            raise ValueError(f"corrections line {number}: needs message_id or source_ref")
    return out


def select(failure: FailedEvent, only_reasons: frozenset[str] | None) -> bool:
    if failure.stage == Stage.SINK:
        return False
    return only_reasons is None or failure.reason.value in only_reasons


def to_source_record(failure: FailedEvent, corrections: Mapping[tuple[str, str], bytes]) -> tuple[SourceRecord, bool]:
    """The record to re-inject (corrected payload if one matches) and whether a correction applied."""
    corrected = corrections.get(("message_id", failure.message_id or "")) or corrections.get(
        ("source_ref", failure.source_ref or "")
    )
    payload = corrected if corrected is not None else failure.payload
    ref = failure.source_ref or f"dead-letter:{failure.message_id or 'unknown'}"
    ref = ref if ref.startswith(REPLAY_PREFIX) else REPLAY_PREFIX + ref  # a replayed replay keeps one prefix
    # the original arrival time: events without receivedAt keep their own day, not the replay's
    return SourceRecord(payload, ref, failure.failed_at), corrected is not None


def existing_keys(lake: str, keys: Iterable[tuple[str, str]]) -> frozenset[tuple[str, str]]:
    """Which (tenant_id, message_id) of ``keys`` the lake already holds (any date of those tenants)."""
    wanted = {k for k in keys if k[0] and k[1]}
    if not wanted:
        return frozenset()
    try:
        dataset = events_dataset(lake)
    except (FileNotFoundError, OSError):
        return frozenset()
    ids = sorted({mid for _, mid in wanted})
    tenants = sorted({tenant for tenant, _ in wanted})
    expr = ds.field("tenant_id").isin(tenants) & ds.field("message_id").isin(ids)
    table = dataset.to_table(columns=["tenant_id", "message_id"], filter=expr)
    found = zip(table.column("tenant_id").to_pylist(), table.column("message_id").to_pylist(), strict=True)
    return frozenset(k for k in found if k in wanted)


# --- pipeline ------------------------------------------------------------------------------------------


class _DropExistingFn(beam.DoFn):
    """Split partition batches into rows new to the lake and (tenant_id, message_id) already there.

    Checked on the processed rows (not the dead letters), so a corrected payload or an event whose
    dead letter had no message id is checked by its real key.
    """

    ALREADY = "already_in_lake"

    def __init__(self, lake: str):
        self._lake = lake
        self._counter = beam.metrics.Metrics.counter("replay", "already_in_lake")

    def process(self, element):
        key, rows = element
        existing = existing_keys(self._lake, ((r["tenant_id"], r["message_id"]) for r in rows))
        keep = []
        for row in rows:
            row_key = (row["tenant_id"], row["message_id"])
            if row_key in existing:
                self._counter.inc()
                yield beam.pvalue.TaggedOutput(self.ALREADY, row_key)
            else:
                keep.append(row)
        if keep:
            yield key, keep


def build(pipeline, opts: ReplayOptions, records: list[SourceRecord], tag: str, summary_path: str) -> None:
    processed = (
        pipeline
        | "DeadLetterRecords" >> beam.Create(records)
        | "ProcessEvents" >> ProcessEvents(opts.process_config(opts.lake))
    )
    split = processed.row_batches | "DropRowsAlreadyInLake" >> beam.ParDo(_DropExistingFn(opts.lake)).with_outputs(
        _DropExistingFn.ALREADY, main="new"
    )
    encryption = opts.encryption()  # --kms-key-id, carried by each writer to the workers
    written = split.new | "WriteLake" >> WriteLakePartitions(opts.lake, tag, encryption=encryption)
    dead = processed.failures | "WriteDeadLetters" >> WriteDeadLetters(
        opts.dead_letters_out, tag, encryption=encryption
    )

    _ = pipeline | "RunSummary" >> WriteRunSummary(
        summary_path,
        {
            "lake_rows": total(written, "LakeRows", lambda pn: pn[1]),
            "failed_again": total(dead, "FailedAgain", lambda pn: pn[1]),
            "duplicates": total(processed.duplicates, "Duplicates"),
            "already_in_lake": total(split[_DropExistingFn.ALREADY], "AlreadyInLake"),
        },
        encryption,
    )


def _read_lines(patterns: Iterable[str]) -> tuple[list[str], list[str]]:
    files = sorted(meta.path for result in FileSystems.match(list(patterns)) for meta in result.metadata_list)
    lines = []
    for path in files:
        with FileSystems.open(path) as handle:
            lines += [line for line in handle.read().decode("utf-8").splitlines() if line.strip()]
    return files, lines


def run(argv: list[str] | None = None) -> ReplaySummary:
    options = parse_options(list(argv or []), ReplayOptions, __doc__)
    opts = options.view_as(ReplayOptions)
    FileSystems.set_options(options)  # s3:// dead letters: the --s3_* flags apply to the reads below too
    use_encryption(opts.encryption())  # --kms-key-id for the driver's own writes
    files, lines = _read_lines(opts.dead_letters)
    if not files:
        raise InputError(f"--dead-letters {', '.join(opts.dead_letters)}: matches no file")
    for pattern in opts.dead_letters:
        note_input(pattern, [pattern])
    corrections_text = ""
    if opts.corrections:
        with FileSystems.open(opts.corrections) as handle:
            corrections_text = handle.read().decode("utf-8")
        note_input(opts.corrections, [opts.corrections])
    corrections = load_corrections(corrections_text.splitlines())
    failures = [FailedEvent.from_json_line(line) for line in lines]
    only = frozenset(opts.only_reasons) if opts.only_reasons else None
    chosen = [f for f in failures if select(f, only)]
    converted = [to_source_record(f, corrections) for f in chosen]
    records = [record for record, _ in converted]
    digest = hashlib.sha1(
        "\n".join(lines).encode() + b"\x00" + corrections_text.encode() + repr(sorted(only or ())).encode()
    )
    tag = "replay" + digest.hexdigest()[:10]
    opts.dead_letters_out = opts.dead_letters_out or f"{table_path(opts.lake, 'replays')}/{tag}/dead_letters"
    summary_path = run_summary_path(opts.lake, tag)
    totals = {"lake_rows": 0, "failed_again": 0, "duplicates": 0, "already_in_lake": 0}
    if records:
        log.info(
            "replaying %d of %d dead letters (%d corrected) as %s",
            len(records),
            len(failures),
            sum(c for _, c in converted),
            tag,
        )
        run_pipeline(lambda p: build(p, opts, records, tag, summary_path), options)
        totals = read_run_summary(summary_path)
    summary = ReplaySummary(
        dead_letters_read=len(failures),
        selected=len(chosen),
        skipped=len(failures) - len(chosen),
        corrected=sum(c for _, c in converted),
        tag=tag,
        dead_letters_out=opts.dead_letters_out,
        **totals,
    )
    log.info("done: %s", summary)
    note_outputs(table_path(opts.lake, EVENTS_TABLE), opts.dead_letters_out)
    return summary


def main(argv: list[str] | None = None) -> None:
    main_entry("replay_dead_letters", _main, argv)


def _main(argv: list[str]) -> ReplaySummary:
    summary = run(argv)
    print(json.dumps({**asdict(summary), "accounted": summary.accounted}, indent=2))
    return summary


if __name__ == "__main__":
    main()
