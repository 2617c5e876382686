"""Retention cohorts over the events lake, as a Beam batch job.

    python -m pipelines.retention --lake ./lake --start-event "Signed Up" --return-event "Order Completed" \\
        --period day|week|month --periods 8 [--kind first_time|recurring] [--mode on|on_or_after] \\
        [--timezone Asia/Kolkata] [--start-date YYYY-MM-DD --end-date YYYY-MM-DD] [--tenant T] \\
        --output ./out [--warehouse duckdb:///wh.duckdb]

Cohorts and periods are on the tenant's local calendar (--timezone). Reads only the start and return
events, groups them by (tenant, person bucket), counts per bucket on Arrow/numpy, sums the counts and
writes OUT/retention.parquet (+ .csv) by temp file + rename. See docs/analytics-funnels-retention.md.
"""

from __future__ import annotations

import datetime as dt
import logging

import apache_beam as beam
import pyarrow as pa

from connectors.analytics_io import (
    ReadLakeBatches,
    event_files,
    lake_file_patterns,
    load_tables,
    read_parquet,
    write_tables,
)
from connectors.aws import S3Encryption
from connectors.run_records import note_input, note_outputs
from pipelines.errors import UsageError
from pipelines.options import (
    AwsOptions,
    DateRangeOptions,
    add_allow_empty,
    main_entry,
    parse_options,
    require_events,
    require_lake,
    run_pipeline,
    with_s3_options,
)
from pipelines.quality_gate import QualityGateOptions, gate_inputs
from transforms.retention import RETENTION_SCHEMA, ComputeRetention, RetentionDefinition

log = logging.getLogger("livora.retention")
RETENTION_TABLE = "retention"


class RetentionOptions(DateRangeOptions, AwsOptions, QualityGateOptions):
    """Which cohorts, over which part of the lake, and where the table goes."""

    @classmethod
    def _add_argparse_args(cls, parser):
        parser.add_argument("--lake", required=True, help="Lake root, local directory or s3://bucket/prefix.")
        parser.add_argument(
            "--start-event", dest="start_event", required=True, help="Event that puts a person in a cohort."
        )
        parser.add_argument(
            "--return-event", dest="return_event", required=True, help="Event that counts as coming back."
        )
        parser.add_argument(
            "--period",
            choices=("day", "week", "month"),
            default="day",
            help="Cohort and return period: day, week (ISO, starting Monday) or calendar month (default day).",
        )
        parser.add_argument("--periods", type=int, default=8, help="Number of periods 0..N-1 to report (default 8).")
        parser.add_argument(
            "--kind",
            choices=("first_time", "recurring"),
            default="first_time",
            help="first_time (default): cohort = period of the person's first-ever start event (history before "
            "--start-date is read to know who is new); recurring: every period with a start event is a cohort.",
        )
        parser.add_argument(
            "--mode",
            choices=("on", "on_or_after"),
            default="on",
            help="on (default): returned in exactly period k; on_or_after: returned in period k or later.",
        )
        parser.add_argument(
            "--timezone",
            default="Asia/Kolkata",
            help="IANA timezone whose calendar defines days, weeks and months (default Asia/Kolkata).",
        )
        parser.add_argument(
            "--buckets", type=int, default=64, help="Person buckets per tenant (parallelism, default 64)."
        )
        parser.add_argument("--output", required=True, help="Output directory (local or s3://).")
        add_allow_empty(parser)
        parser.add_argument(
            "--warehouse",
            default=None,
            help="Optional warehouse URL: also load the table there, replacing the (tenant, cohort_start) rows.",
        )


def definition_from_options(opts: RetentionOptions) -> RetentionDefinition:
    if opts.buckets < 1:
        raise UsageError("--buckets must be >= 1")
    return RetentionDefinition(
        start_event=opts.start_event,
        return_event=opts.return_event,
        period=opts.period,
        periods=opts.periods,
        kind=opts.kind,
        mode=opts.mode,
        timezone=opts.timezone,
    )


def resolve_range(opts: RetentionOptions) -> tuple[dt.date, dt.date] | None:
    """Local start/end dates: the flags, or the lake's first/last UTC partition dates."""
    if opts.start_date and opts.end_date:
        return opts.start_date, opts.end_date
    dates = sorted({f.event_date for f in event_files(opts.lake, tenant=opts.tenant)})
    if not dates:
        return None
    return opts.start_date or dates[0], opts.end_date or dates[-1]


def build(
    pipeline: beam.Pipeline,
    patterns: list[str],
    definition: RetentionDefinition,
    start: dt.date,
    end: dt.date,
    output: str,
    buckets: int = 64,
    warehouse: str | None = None,
    encryption: S3Encryption | None = None,
) -> None:
    def write(table: pa.Table) -> int:
        write_tables(output, {RETENTION_TABLE: table}, encryption=encryption)
        if warehouse:
            load_tables(warehouse, {RETENTION_TABLE: (table, ("tenant_id", "cohort_start"))})
        return table.num_rows

    _ = (
        pipeline
        | "ReadLake" >> ReadLakeBatches(patterns, ["person_id", "event", "timestamp", "message_id"])
        | "Retention" >> ComputeRetention(definition, start, end, buckets)
        | "Write" >> beam.Map(write)
    )


def run(argv: list[str] | None = None) -> pa.Table:
    """Parse, validate, run; returns the written table (read back)."""
    argv = list(argv or [])
    options = parse_options(argv, RetentionOptions, __doc__)
    opts = options.view_as(RetentionOptions)
    opts.check_range()
    definition = definition_from_options(opts)
    options = with_s3_options(argv, options, opts.lake, opts.output)
    opts = options.view_as(RetentionOptions)
    require_lake(opts.lake)
    span = resolve_range(opts)
    patterns, in_range = [], []
    if span:
        start, end = span
        # local dates [start, end] live in UTC partitions [start - 1, end + 1]; first_time also needs history
        first, last = start - dt.timedelta(days=1), end + dt.timedelta(days=1)
        in_range = lake_file_patterns(opts.lake, first, last, opts.tenant)
        patterns = (
            lake_file_patterns(opts.lake, None, last, opts.tenant) if definition.kind == "first_time" else in_range
        )
    if not opts.allow_empty:  # history before the range does not count: the cohorts are in the range
        events = [definition.start_event, definition.return_event]
        require_events(in_range, events, f"{opts.lake} {opts.describe_range()}")
    if span:  # the partitions read: the range +-1 day, and all history before it for first_time
        history = None if definition.kind == "first_time" else first
        gate_inputs(opts.lake, history, last, opts.tenant, opts.quality_gate, "retention")  # may raise
    note_input(opts.lake, patterns)
    if patterns:
        log.info("retention %s over %d partitions, %s..%s (%s)", definition.kind, len(patterns), *span, opts.timezone)
        run_pipeline(
            lambda p: build(
                p, patterns, definition, start, end, opts.output, opts.buckets, opts.warehouse, opts.encryption()
            ),
            options,
        )
    else:
        write_tables(opts.output, {RETENTION_TABLE: RETENTION_SCHEMA.empty_table()})
    path = f"{opts.output.rstrip('/')}/{RETENTION_TABLE}.parquet"
    log.info("wrote %s (+ .csv)", path)
    note_outputs(path)
    return read_parquet(path)


def main(argv: list[str] | None = None) -> None:
    main_entry("retention", _main, argv)


def _main(argv: list[str]) -> None:
    table = run(argv)
    for row in table.to_pylist():
        log.info(
            "%s cohort %s period %d: %d/%d (%.3f)",
            row["tenant_id"],
            row["cohort_start"],
            row["period"],
            row["persons"],
            row["cohort_size"],
            row["rate"],
        )


if __name__ == "__main__":
    main()
