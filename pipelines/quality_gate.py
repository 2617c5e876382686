"""``--quality-gate off|warn|block``: the GX suite (docs/quality.md) as a gate in front of published outputs.

- ``off``: no check.
- ``warn`` (default, the demo profile): check, write the results, log one warning per failing partition and
  record it in the run record; outputs are published as before.
- ``block`` (production runs should pass it): outputs that fail their suite are not published, and the run
  exits with :class:`pipelines.errors.QualityError` (exit 7, one line):

  * ingest (:func:`gate_ingest`): after the write, the partitions the run touched are checked; the run's files
    of a failing partition are moved to ``LAKE/_quarantine/events/tenant_id=T/event_date=D/`` (same names), so
    no reader of ``events/`` (the warehouse load, analytics, DuckDB) sees them, and the lake's manifest does not
    record the input, so a re-run after the fix ingests it again. A re-run rewrites the same file names (they
    derive from the input's content) and removes their quarantined copies.
  * analytics (:func:`gate_inputs`): the input partitions are checked before computing; a failing one stops
    the run before anything is written.

The checks are the fast path of :func:`connectors.quality.check_and_write` (one GX checkpoint run per 200
partitions); results go where ``check_lake`` puts them (``LAKE/_quality``).
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions

from connectors.analytics_io import event_files
from connectors.lake import run_files_pattern, table_path
from connectors.quality import check_and_write, parse_partition_dir
from connectors.run_records import current as current_run
from pipelines.errors import QualityError
from schemas.lake import EVENTS_TABLE

__all__ = ["GATE_MODES", "QUARANTINE_DIR", "GateOutcome", "QualityGateOptions", "gate_ingest", "gate_inputs"]

GATE_MODES = ("off", "warn", "block")
QUARANTINE_DIR = "_quarantine"
log = logging.getLogger("livora.quality_gate")


class QualityGateOptions(PipelineOptions):
    """What a failing data-quality check does to the run's outputs."""

    @classmethod
    def _add_argparse_args(cls, parser):
        parser.add_argument(
            "--quality-gate",
            dest="quality_gate",
            choices=GATE_MODES,
            default="warn",
            help="off: no check; warn (default, demo profile): check the partitions, log and record failures, "
            "publish anyway; block (use in production): do not publish from / into a partition that fails the "
            "suite, exit 7 (docs/quality.md).",
        )


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


def _check(
    lake: str, partitions: Iterable[tuple[str, dt.date]], mode: str, pipeline: str, max_future_hours: float
) -> GateOutcome:
    chosen = sorted(set(partitions))
    outcome = GateOutcome(mode, len(chosen))
    if mode == "off" or not chosen:
        return outcome
    record = current_run()
    run_id = record.run_id if record is not None else uuid.uuid4().hex[:12]
    results = check_and_write(lake, chosen, pipeline, run_id, dt.timedelta(hours=max_future_hours))
    outcome.failed = {f"{r.tenant_id}/{r.start_date}": r.failed for r in results if not r.success}
    for key, names in outcome.failed.items():
        log.warning("quality gate (%s): partition %s fails %s", mode, key, ", ".join(names))
    return outcome


def _record(outcome: GateOutcome) -> None:
    record = current_run()
    if record is not None:
        record.add_counts(outcome.counts())


def _partitions_of(paths: Iterable[str]) -> set[tuple[str, dt.date]]:
    return {parse_partition_dir(os.path.dirname(path.rstrip("/"))) for path in paths}


def _move(source: str, target: str) -> None:
    if "://" not in target:
        os.makedirs(os.path.dirname(target), exist_ok=True)
    FileSystems.rename([source], [target])


def gate_ingest(lake: str, tags: Sequence[str], mode: str, max_future_hours: float = 24.0) -> GateOutcome:
    """Check the partitions that ingest files tagged ``tags`` are in; ``block``: quarantine a failing partition's
    files of these tags and raise :class:`QualityError`. Quarantined copies of these tags are removed first: the
    run has just rewritten them under ``events/``."""
    events = table_path(lake, EVENTS_TABLE)
    quarantine = table_path(lake, f"{QUARANTINE_DIR}/{EVENTS_TABLE}")
    stale = [
        m.path
        for t in tags
        for m in FileSystems.match([run_files_pattern(quarantine, t, ".parquet", 2)])[0].metadata_list
    ]
    if stale:
        FileSystems.delete(stale)
        log.info("removed %d quarantined file(s) of this input: the run rewrote them", len(stale))
    written = [
        m.path for t in tags for m in FileSystems.match([run_files_pattern(events, t, ".parquet", 2)])[0].metadata_list
    ]
    outcome = _check(lake, _partitions_of(written), mode, "ingest_batch", max_future_hours)
    if mode == "block" and outcome.failed:
        for path in written:
            tenant, date = parse_partition_dir(os.path.dirname(path))
            if f"{tenant}/{date}" in outcome.failed:
                name = path.rstrip("/").rsplit("/", 1)[-1]
                _move(path, f"{quarantine.rstrip('/')}/tenant_id={tenant}/event_date={date}/{name}")
                outcome.quarantined.append(path)
        _record(outcome)
        raise QualityError(
            outcome.message(
                f"{len(outcome.quarantined)} file(s) of this run moved to {quarantine}, input not recorded as "
                "ingested (re-run after the fix); load nothing downstream"
            )
        )
    _record(outcome)
    return outcome


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
