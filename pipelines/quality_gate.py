"""``--quality-gate off|warn|block``: the GX suite (docs/quality.md) as a gate in front of published outputs.

- ``off``: no check.
- ``warn`` (the default of ``--profile dev``, which the demo runs in): check, write the results, log one
  warning per failing partition and record it in the run record; outputs are published as before.
- ``block`` (the default of ``--profile staging`` and ``prod``): outputs that fail their suite are not
  published, and the run exits with :class:`pipelines.errors.QualityError` (exit 7, one line):

  * ingest (:func:`gate_ingest`): after the write, the rows the run wrote (its files, per partition; not the earlier
    files of those partitions) are checked; the run's files of a failing partition are moved to
    ``LAKE/_quarantine/events/tenant_id=T/event_date=D/`` (same names), so no reader of ``events/`` (the warehouse
    load, analytics, DuckDB) sees them, and the lake's manifest does not record the input, so a re-run after the fix
    ingests it again. A re-run rewrites the same file names (they derive from the input's content) and removes their
    quarantined copies.
  * stream passes (``pipelines.stream_events``, local incremental mode; :class:`GateWrittenFiles` in the pass,
    :func:`gate_pass` after it): the partitions the pass wrote are checked inside the pass, after the lake write and
    before anything else is published (again only the pass's own files); under ``block`` a failing verdict holds
    back the rows bound for the warehouse and DynamoDB and the checkpoint commit, then the driver quarantines the
    pass's files of the failing partitions (as for ingest) and exits 7. The checkpoints stay where the pass started,
    so the records stay in Kinesis and a re-run of the pass (after the fix, or with ``--quality-gate warn|off``)
    reads them again, removes the quarantined copies and publishes; nothing is lost as long as the fix comes within
    the stream's retention (24 h by default), and the quarantine keeps a copy meanwhile.
  * analytics (:func:`gate_inputs`): the input partitions are checked before computing; a failing one stops
    the run before anything is written.

The checks are the fast path of :mod:`connectors.quality` (one GX checkpoint run per 200 partitions):
:func:`~connectors.quality.check_files_and_write` for a run's own files (results in the run's JSON,
``LAKE/_quality/runs/<pipeline>-<run id>.json``), :func:`~connectors.quality.check_and_write` for the
analytics' whole input partitions (results where ``check_lake`` puts them, ``LAKE/_quality/events/``).
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

from connectors.analytics_io import EventFile, event_files
from connectors.lake import run_files_pattern, table_path
from connectors.paths import move_atomically
from connectors.quality import QualityResult, check_and_write, check_files_and_write, parse_partition_dir
from connectors.run_records import current as current_run
from pipelines.errors import QualityError
from pipelines.options import PROFILES, ProfileOptions, profile_defaults
from schemas.lake import EVENTS_TABLE

__all__ = [
    "GATE_MODES",
    "QUARANTINE_DIR",
    "GateOutcome",
    "GateWrittenFiles",
    "HeldByGate",
    "QualityGateOptions",
    "gate_ingest",
    "gate_inputs",
    "gate_pass",
    "remove_quarantined",
]

GATE_MODES = ("off", "warn", "block")
QUARANTINE_DIR = "_quarantine"
log = logging.getLogger("livora.quality_gate")


class QualityGateOptions(ProfileOptions):
    """What a failing data-quality check does to the run's outputs."""

    @classmethod
    def _add_argparse_args(cls, parser):
        defaults = {p: profile_defaults(p).quality_gate for p in PROFILES}
        parser.add_argument(
            "--quality-gate",
            dest="quality_gate_flag",
            choices=GATE_MODES,
            default=None,
            help="off: no check; warn: check the partitions, log and record failures, publish anyway; block: do not "
            "publish from / into a partition that fails the suite, exit 7 (docs/quality.md). Default from --profile: "
            + ", ".join(
                f"{mode} for {' and '.join(p for p in PROFILES if defaults[p] == mode)}"
                for mode in dict.fromkeys(defaults.values())
            )
            + ".",
        )

    @property
    def quality_gate(self) -> str:
        """The gate mode: ``--quality-gate`` when given, else the profile's default (:func:`profile_defaults`)."""
        return self.quality_gate_flag or profile_defaults(self.profile).quality_gate

    def describe_gate(self) -> str:
        """``--quality-gate block``, or ``--quality-gate block (the default of --profile prod)``, for messages."""
        text = f"--quality-gate {self.quality_gate}"
        return text if self.quality_gate_flag else f"{text} (the default of --profile {self.profile})"


@dataclass
class GateOutcome:
    """What the gate checked and found."""

    mode: str
    partitions: int = 0
    failed: dict[str, list[str]] = field(default_factory=dict)
    """``"tenant/date"`` -> names of the failed expectations."""
    quarantined: list[str] = field(default_factory=list)
    """Files moved to the quarantine (ingest, block)."""

    def counts(self) -> dict:
        return {
            "quality_gate": self.mode,
            "quality_partitions_checked": self.partitions,
            "quality_partitions_failed": len(self.failed),
            "quality_failed": dict(self.failed),
            "quality_files_quarantined": len(self.quarantined),
        }

    def message(self, what: str) -> str:
        first = next(iter(self.failed.items()))
        more = f" (+{len(self.failed) - 1} more)" if len(self.failed) > 1 else ""
        return (
            f"quality gate: {len(self.failed)} of {self.partitions} partition(s) fail the suite, {what}; "
            f"first {first[0]}: {', '.join(first[1])}{more}"
        )


def _run_id(run_id: str | None) -> str:
    record = current_run()
    return run_id or (record.run_id if record is not None else uuid.uuid4().hex[:12])


def _judged(outcome: GateOutcome, results: Sequence[QualityResult]) -> GateOutcome:
    outcome.failed = {f"{r.tenant_id}/{r.start_date}": r.failed for r in results if not r.success}
    for key, names in outcome.failed.items():
        log.warning("quality gate (%s): partition %s fails %s", outcome.mode, key, ", ".join(names))
    return outcome


def _check(
    lake: str,
    partitions: Iterable[tuple[str, dt.date]],
    mode: str,
    pipeline: str,
    max_future_hours: float,
    run_id: str | None = None,
) -> GateOutcome:
    """Whole partitions (analytics inputs): every row a computation is about to read."""
    chosen = sorted(set(partitions))
    outcome = GateOutcome(mode, len(chosen))
    if mode == "off" or not chosen:
        return outcome
    results = check_and_write(lake, chosen, pipeline, _run_id(run_id), dt.timedelta(hours=max_future_hours))
    return _judged(outcome, results)


def _check_written(
    lake: str,
    written: Iterable[str],
    mode: str,
    pipeline: str,
    max_future_hours: float,
    run_id: str | None = None,
) -> GateOutcome:
    """The rows a run wrote (its lake files ``written``), not the earlier files of the partitions they are in:
    the check's cost follows the run, not the lake, and an earlier run's rows cannot fail (or quarantine) this
    one. Every rule of the suite is a property of each row, of each file's columns, or (uniqueness of
    ``(tenant_id, message_id)``) of the keys, which ingest's lake-duplicate step keeps unique against the lake
    before the write; the check adds uniqueness within the run's rows (docs/quality.md)."""
    files = sorted({EventFile(path, *parse_partition_dir(os.path.dirname(path.rstrip("/")))) for path in written})
    outcome = GateOutcome(mode, len({(f.tenant_id, f.event_date) for f in files}))
    if mode == "off" or not files:
        return outcome
    results = check_files_and_write(lake, files, pipeline, _run_id(run_id), dt.timedelta(hours=max_future_hours))
    return _judged(outcome, results)


def _record(outcome: GateOutcome) -> None:
    """Add the outcome to the run record; a run of several gated steps (stream passes) sums them."""
    record = current_run()
    if record is None:
        return
    counts, before = outcome.counts(), record.counts
    if before.get("quality_gate") == outcome.mode:
        for name in ("quality_partitions_checked", "quality_partitions_failed", "quality_files_quarantined"):
            counts[name] += int(before.get(name, 0))
        counts["quality_failed"] = {**before.get("quality_failed", {}), **counts["quality_failed"]}
        counts["quality_partitions_failed"] = len(counts["quality_failed"])
    record.add_counts(counts)


def _tagged(directory: str, tags: Sequence[str]) -> list[str]:
    patterns = [run_files_pattern(directory, t, ".parquet", 2) for t in tags]
    return [m.path for result in FileSystems.match(patterns) for m in result.metadata_list] if patterns else []


def remove_quarantined(lake: str, tags: Sequence[str]) -> int:
    """Delete the quarantined files of these run tags: the run about to (re)write them publishes or
    re-quarantines its own copy."""
    stale = _tagged(table_path(lake, f"{QUARANTINE_DIR}/{EVENTS_TABLE}"), tags)
    if stale:
        FileSystems.delete(stale)
        log.info("removed %d quarantined file(s) of this input: the run rewrites them", len(stale))
    return len(stale)


def _enforce(lake: str, written: Sequence[str], outcome: GateOutcome, consequence: str) -> GateOutcome:
    """Record the outcome; ``block`` with failures: quarantine the failing partitions' ``written`` files and
    raise :class:`QualityError` (``consequence`` says what the run did not do)."""
    if outcome.mode == "block" and outcome.failed:
        quarantine = table_path(lake, f"{QUARANTINE_DIR}/{EVENTS_TABLE}")
        for path in written:
            tenant, date = parse_partition_dir(os.path.dirname(path))
            if f"{tenant}/{date}" in outcome.failed:
                name = path.rstrip("/").rsplit("/", 1)[-1]
                # the run's key (--kms-key-id, the driver's default) on S3: a plain rename would drop it
                move_atomically(path, f"{quarantine.rstrip('/')}/tenant_id={tenant}/event_date={date}/{name}", lake)
                outcome.quarantined.append(path)
        _record(outcome)
        raise QualityError(
            outcome.message(f"{len(outcome.quarantined)} file(s) of this run moved to {quarantine}, {consequence}")
        )
    _record(outcome)
    return outcome


def gate_ingest(lake: str, tags: Sequence[str], mode: str, max_future_hours: float = 24.0) -> GateOutcome:
    """Check the rows of the ingest files tagged ``tags`` (this run's, per partition); ``block``: quarantine a failing
    partition's files of these tags and raise :class:`QualityError`. Quarantined copies of these tags are removed first: the
    run has just rewritten them under ``events/``."""
    remove_quarantined(lake, tags)
    written = _tagged(table_path(lake, EVENTS_TABLE), tags)
    outcome = _check_written(lake, written, mode, "ingest_batch", max_future_hours)
    return _enforce(
        lake,
        written,
        outcome,
        "input not recorded as ingested (re-run after the fix); load nothing downstream",
    )


class _CheckWrittenFn(beam.DoFn):
    def __init__(self, lake: str, mode: str, pipeline: str, max_future_hours: float, run_id: str | None):
        self.lake, self.mode, self.pipeline = lake, mode, pipeline
        self.max_future_hours, self.run_id = max_future_hours, run_id

    def process(self, paths):
        outcome = _check_written(self.lake, paths, self.mode, self.pipeline, self.max_future_hours, self.run_id)
        yield asdict(outcome)


class GateWrittenFiles(beam.PTransform):
    """``(path, rows)`` of the lake files a pipeline wrote -> ONE :class:`GateOutcome` (as a dict) of those files'
    rows, once every file is written: the in-pipeline half of the gate, for pipelines that publish further in the same job.

    Args:
        lake: the lake root (results go to ``LAKE/_quality``).
        mode: ``warn`` or ``block`` (``off`` builds no gate).
        pipeline: named in the results.
        run_id: the driver's run record id (a worker has no run record of its own).
    """

    def __init__(self, lake: str, mode: str, pipeline: str, max_future_hours: float = 24.0, run_id: str | None = None):
        super().__init__()
        if mode not in ("warn", "block"):
            raise ValueError(f"GateWrittenFiles needs mode warn or block, not {mode!r}")
        self.lake, self.mode, self.pipeline, self.max_future_hours, self.run_id = (
            lake,
            mode,
            pipeline,
            max_future_hours,
            run_id,
        )

    def expand(self, written):
        return (
            written
            | "Paths" >> beam.Map(lambda path_rows: path_rows[0])
            | "AllPaths" >> beam.combiners.ToList()
            | "Check"
            >> beam.ParDo(_CheckWrittenFn(self.lake, self.mode, self.pipeline, self.max_future_hours, self.run_id))
        )


class HeldByGate(beam.PTransform):
    """Elements pass once the gate's verdict is in, and only if nothing failed (``block``); the side input makes
    every consumer (warehouse, DynamoDB, checkpoint commit) wait for the check."""

    def __init__(self, verdict):
        super().__init__()
        self.verdict = verdict

    def expand(self, pcoll):
        return pcoll | "IfPassed" >> beam.FlatMap(
            lambda element, verdict: [element] if not verdict["failed"] else [], beam.pvalue.AsSingleton(self.verdict)
        )


def gate_pass(lake: str, tags: Sequence[str], verdict: dict) -> GateOutcome:
    """After a stream pass that ran :class:`GateWrittenFiles`: record the verdict; ``block`` with failures:
    quarantine the pass's files (tags ``tags``) of the failing partitions and raise :class:`QualityError`
    (the pass held back its other sinks and its checkpoints)."""
    outcome = GateOutcome(**verdict)
    written = _tagged(table_path(lake, EVENTS_TABLE), tags)
    return _enforce(
        lake,
        written,
        outcome,
        "warehouse and DynamoDB not loaded, checkpoints not committed (the records stay in the stream; re-run "
        "after the fix, or with --quality-gate warn|off, within the stream's retention)",
    )


def gate_inputs(
    lake: str,
    start: dt.date | None,
    end: dt.date | None,
    tenant: str | None,
    mode: str,
    pipeline: str,
    max_future_hours: float = 24.0,
) -> GateOutcome:
    """Analytics: check the event partitions in ``[start, end]`` (optionally one tenant) before computing from
    them; ``block``: raise :class:`QualityError` when one fails (nothing is computed or written)."""
    if mode == "off":
        outcome = GateOutcome(mode)
    else:
        files = event_files(lake, start, end, tenant)  # Beam's filesystems: the pipelines' own S3 options
        outcome = _check(lake, {(f.tenant_id, f.event_date) for f in files}, mode, pipeline, max_future_hours)
    _record(outcome)
    if mode == "block" and outcome.failed:
        raise QualityError(outcome.message("refusing to compute from them (fix and re-ingest, or --quality-gate warn)"))
    return outcome
