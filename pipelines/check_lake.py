"""Data-quality check of the lake's events table: the GX suite on every partition (tenant, date).

    python -m pipelines.check_lake --lake ./lake [--start-date D --end-date D] [--tenant T] [--fail-on-error]

One partition per task, partitions in parallel; each worker builds the GX context once. Each
partition's result is written to LAKE/_quality/events/tenant_id=T/event_date=D/result.json
(a rerun replaces it); a summary table is printed. With --fail-on-error the command exits 1
when any expectation failed on any partition (for schedulers and CI). See docs/quality.md.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections import Counter
from dataclasses import dataclass, field

import apache_beam as beam
from apache_beam.metrics import Metrics

from connectors.lake import partition_dirs
from connectors.quality import QualityChecker, QualityResult, parse_partition_dir, read_results, write_result
from pipelines.errors import UsageError
from pipelines.logs import Progress
from pipelines.options import (
    AwsOptions,
    DateRangeOptions,
    main_entry,
    parse_options,
    require_lake,
    run_pipeline,
    with_s3_options,
)

log = logging.getLogger("livora.check_lake")
NAMESPACE = "quality"


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


class _CheckPartitionFn(beam.DoFn):
    """Run the suite on one partition and write its result; the GX context is built once per worker."""

    def __init__(self, lake: str, max_future_hours: float, total: int | None = None):
        self.lake, self.max_future_hours, self.total = lake, max_future_hours, total
        self.checked = Metrics.counter(NAMESPACE, "partitions_checked")
        self.failed = Metrics.counter(NAMESPACE, "partitions_failed")
        self.rows = Metrics.counter(NAMESPACE, "rows_checked")
        self.expectations_failed = Metrics.counter(NAMESPACE, "expectations_failed")

    def setup(self):
        self.checker = QualityChecker(max_future=dt.timedelta(hours=self.max_future_hours))
        # per worker: with several workers each reports its own share (the total is the whole run's)
        self.progress = Progress(log, "partitions checked", self.total)

    def process(self, partition: tuple[str, str]):
        tenant, date = partition
        result = self.checker.check_partition(self.lake, tenant, dt.date.fromisoformat(date))
        path = write_result(self.lake, result)
        self.checked.inc()
        self.rows.inc(result.rows)
        if not result.success:
            self.failed.inc()
            self.expectations_failed.inc(len(result.failed))
        self.progress.add()
        yield path


def build(pipeline: beam.Pipeline, opts: CheckLakeOptions, partitions: list[tuple[str, str]]):
    return (
        pipeline
        | "Partitions" >> beam.Create(partitions)
        | "SpreadPartitions" >> beam.Reshuffle()
        | "CheckPartitions" >> beam.ParDo(_CheckPartitionFn(opts.lake, opts.max_future_hours, len(partitions)))
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
    selected = sorted(
        (tenant, date.isoformat())
        for tenant, date in map(
            parse_partition_dir, partition_dirs(opts.lake, opts.start_date, opts.end_date, opts.tenant)
        )
    )
    log.info("checking %d partitions of %s", len(selected), opts.lake)
    if selected:
        run_pipeline(lambda p: build(p, opts, selected), options)
    progress = Progress(log, "partition results read", len(selected))
    results = []
    for tenant, date in selected:  # driver-side: one small file per partition
        results += read_results(opts.lake, [(tenant, dt.date.fromisoformat(date))])
        progress.add()
    progress.finish()
    summary = CheckSummary.of(results)
    summary.fail_on_error = opts.fail_on_error
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
