"""Data-quality check of the lake's events table: the GX suite on every partition (tenant, date).

    python -m pipelines.check_lake --lake ./lake [--start-date D --end-date D] [--tenant T] [--fail-on-error]

One GX context and suite per process; the partitions are validated in chunks of 200 by one GX
Checkpoint run each (results split per partition), which also updates the Data Docs site
LAKE/_quality/docs (local lakes) and writes the run's JSON to LAKE/_quality/runs/. Each
partition's result is written to LAKE/_quality/events/tenant_id=T/event_date=D/result.json
(a rerun replaces it); a summary table is printed. With --fail-on-error the command exits 1
when any expectation failed on any partition (for schedulers and CI). See docs/quality.md.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import uuid
from collections import Counter
from dataclasses import dataclass, field

from connectors.lake import partition_dirs, table_path
from connectors.quality import QUALITY_DIR, QualityResult, check_and_write, parse_partition_dir
from connectors.run_records import current as current_run
from connectors.run_records import note_counts, note_input, note_outputs
from pipelines.errors import UsageError
from pipelines.logs import Progress
from pipelines.options import (
    AwsOptions,
    DateRangeOptions,
    main_entry,
    parse_options,
    require_lake,
    with_s3_options,
)

log = logging.getLogger("livora.check_lake")


class CheckLakeOptions(DateRangeOptions, AwsOptions):
    """Which lake and partitions to check, and what counts as a failure."""

    @classmethod
    def _add_argparse_args(cls, parser):
        parser.add_argument("--lake", required=True, help="Lake root: local directory or s3://bucket/prefix.")
        parser.add_argument(
            "--fail-on-error",
            dest="fail_on_error",
            action="store_true",
            default=False,
            help="Exit with status 1 when any expectation fails on any partition (default: report only, exit 0).",
        )
        parser.add_argument(
            "--max-future-hours",
            dest="max_future_hours",
            type=float,
            default=24.0,
            help="How far timestamp may lie after received_at (default 24, the ingest's --max-future-hours).",
        )


@dataclass
class CheckSummary:
    """What a run found, read back from the result files it wrote."""

    partitions: int = 0
    partitions_failed: int = 0
    rows: int = 0
    failed_by_name: dict[str, dict[str, int]] = field(default_factory=dict)
    """expectation name -> {"partitions": n, "unexpected_rows": n}"""
    failed_partitions: list[str] = field(default_factory=list)
    fail_on_error: bool = False

    @property
    def exit_code(self) -> int:
        """1 when --fail-on-error was given and an expectation failed, else 0."""
        return 1 if self.fail_on_error and not self.success else 0

    @property
    def success(self) -> bool:
        return self.partitions_failed == 0

    @classmethod
    def of(cls, results: list[QualityResult]) -> CheckSummary:
        partitions, unexpected = Counter(), Counter()
        summary = cls(partitions=len(results), rows=sum(r.rows for r in results))
        for result in results:
            if result.success:
                continue
            summary.partitions_failed += 1
            summary.failed_partitions.append(f"{result.tenant_id}/{result.start_date}")
            for outcome in result.expectations:
                if not outcome.success:
                    partitions[outcome.name] += 1
                    unexpected[outcome.name] += outcome.unexpected_count or 0
        summary.failed_by_name = {
            name: {"partitions": partitions[name], "unexpected_rows": unexpected[name]} for name in sorted(partitions)
        }
        return summary

    def table(self) -> str:
        lines = [
            f"partitions checked: {self.partitions}   failed: {self.partitions_failed}   rows: {self.rows}",
        ]
        if self.failed_by_name:
            width = max(len(name) for name in self.failed_by_name)
            lines.append(f"{'expectation failed'.ljust(width)}  partitions  unexpected rows")
            for name, counts in self.failed_by_name.items():
                lines.append(f"{name.ljust(width)}  {counts['partitions']:>10}  {counts['unexpected_rows']:>15}")
        else:
            lines.append("every expectation passed")
        return "\n".join(lines)


def run(argv: list[str] | None = None) -> CheckSummary:
    """Check the selected partitions; returns the summary of what the written results say."""
    argv = list(argv or [])
    options = parse_options(argv, CheckLakeOptions, __doc__)
    opts = options.view_as(CheckLakeOptions)
    opts.check_range()
    options = with_s3_options(argv, options, opts.lake)  # Beam's S3 filesystem (result files) needs endpoint, region
    opts = options.view_as(CheckLakeOptions)
    if opts.max_future_hours < 0:
        raise UsageError("--max-future-hours must not be negative")
    require_lake(opts.lake)
    dirs = partition_dirs(opts.lake, opts.start_date, opts.end_date, opts.tenant)
    note_input(opts.lake, [f"{d}/*.parquet" for d in dirs])
    selected = sorted((tenant, date.isoformat()) for tenant, date in map(parse_partition_dir, dirs))
    log.info("checking %d partitions of %s", len(selected), opts.lake)
    progress = Progress(log, "partitions checked", len(selected))
    record = current_run()
    run_id = record.run_id if record is not None else uuid.uuid4().hex[:12]
    results = check_and_write(
        opts.lake,
        [(tenant, dt.date.fromisoformat(date)) for tenant, date in selected],
        "check_lake",
        run_id,
        dt.timedelta(hours=opts.max_future_hours),
        on_chunk=progress.add,
    )
    progress.finish()
    summary = CheckSummary.of(results)
    summary.fail_on_error = opts.fail_on_error
    note_outputs(table_path(opts.lake, f"{QUALITY_DIR}/runs/check_lake-{run_id}.json"))
    note_counts(summary)  # before _main's exit code: a run that exits 1 keeps its numbers
    return summary


def main(argv: list[str] | None = None) -> None:
    main_entry("check_lake", _main, argv)


def _main(argv: list[str]) -> None:
    summary = run(argv)
    print(summary.table())
    print(json.dumps({"success": summary.success, "failed_partitions": summary.failed_partitions}))
    if summary.exit_code:
        raise SystemExit(summary.exit_code)


if __name__ == "__main__":
    main()
