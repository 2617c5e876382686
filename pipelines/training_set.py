"""Point-in-time training set: features of each spine row as of its label time, never from the future.

    python -m pipelines.training_set --lake ./lake --spine spine.parquet|spine.csv --output train.parquet|.csv
        [--ttl-days 90 | --no-ttl] [--tenant T] [--buckets 16]

The spine has ``tenant_id, person_id, label_timestamp`` and optionally ``label`` (other columns are
kept). For every row, each feature of ``schemas/features.py`` is computed only from events with
``timestamp <= label_timestamp`` AND ``received_at <= label_timestamp`` (a late-arriving or
backfilled event cannot leak into an earlier label), and a feature group whose latest qualifying
event is older than the TTL is null. Spine and events are keyed by the same person bucket and joined
per bucket (CoGroupByKey), so no worker needs the whole lake. Output rows keep the spine's order.
"""

from __future__ import annotations

import datetime as dt
import logging

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from apache_beam.metrics import Metrics

from connectors.analytics_io import ReadEventBuckets, event_files, person_buckets
from connectors.offline_store import read_spine, write_training_set
from connectors.run_records import note_input, note_outputs
from pipelines.options import (
    AwsOptions,
    DateRangeOptions,
    main_entry,
    parse_options,
    printed,
    require_lake,
    run_pipeline,
    with_s3_options,
)
from transforms.features import INPUT_COLUMNS, build_training_set, normalise_spine

log = logging.getLogger("livora.training_set")
ROW = "_spine_row"


class TrainingSetOptions(DateRangeOptions, AwsOptions):
    """Spine, lake and TTL (--tenant from DateRangeOptions, AWS flags from AwsOptions)."""

    @classmethod
    def _add_argparse_args(cls, parser):
        parser.add_argument("--lake", required=True, help="Lake root to read events from (local or s3://).")
        parser.add_argument(
            "--spine",
            required=True,
            help="Entity spine, .parquet or .csv: tenant_id, person_id, label_timestamp (ISO-8601; naive = UTC), "
            "optional label and any other columns (kept).",
        )
        parser.add_argument(
            "--output", required=True, help="Training set file: .csv for CSV, anything else is written as Parquet."
        )
        parser.add_argument(
            "--ttl-days",
            dest="ttl_days",
            type=float,
            default=90.0,
            help="A feature group whose latest qualifying event is older than this at the label time is null "
            "(default 90).",
        )
        parser.add_argument("--no-ttl", dest="no_ttl", action="store_true", help="Disable the TTL.")
        parser.add_argument(
            "--buckets", type=int, default=16, help="Person buckets: the unit of parallel work (default 16)."
        )


def check_options(opts: TrainingSetOptions, dates: DateRangeOptions) -> None:
    if opts.buckets < 1:
        raise ValueError("--buckets must be >= 1")
    if opts.ttl_days <= 0 and not opts.no_ttl:
        raise ValueError("--ttl-days must be positive (use --no-ttl to disable the TTL)")
    if dates.start_date is not None or dates.end_date is not None:
        raise ValueError("--start-date/--end-date are not used: the read ends at the latest label time")


class _SpineBucketsFn(beam.DoFn):
    """Read the spine inside the pipeline (no graph-embedded data) and split it by person bucket."""

    def __init__(self, buckets: int, tenant: str | None):
        self.buckets, self.tenant = buckets, tenant
        self.rows = Metrics.counter("livora", "spine_rows")

    def process(self, path: str):
        spine = normalise_spine(read_spine(path))
        spine = spine.append_column(ROW, pa.array(np.arange(spine.num_rows, dtype=np.int64)))
        if self.tenant is not None:
            spine = spine.filter(pc.equal(spine.column("tenant_id"), self.tenant))
        self.rows.inc(spine.num_rows)
        if not spine.num_rows:
            return
        bucket = person_buckets(spine.column("person_id"), self.buckets)
        for b in np.unique(bucket):
            yield int(b), spine.filter(pa.array(bucket == b))


class _JoinBucketFn(beam.DoFn):
    def __init__(self, ttl: dt.timedelta | None):
        self.ttl = ttl

    def process(self, element):
        _, grouped = element
        spines = [t for t in grouped["spine"] if t.num_rows]
        if not spines:
            return
        spine = pa.concat_tables(spines)
        tables = [t for t in grouped["events"] if t.num_rows]
        events = (
            pa.concat_tables(tables, promote_options="permissive")
            if tables
            else pa.table({c: pa.array([], pa.string()) for c in ("tenant_id", "person_id")}).append_column(
                "timestamp", pa.array([], pa.timestamp("us", tz="UTC"))
            )
        )
        yield build_training_set(spine, events, self.ttl)


def _write(element, output: str):
    _, tables = element
    tables = list(tables)
    if not tables:
        return 0
    table = pa.concat_tables(tables, promote_options="permissive")
    table = table.sort_by(ROW).drop_columns([ROW])
    write_training_set(output, table)
    return table.num_rows


def build(
    pipeline: beam.Pipeline,
    opts: TrainingSetOptions,
    files: list,
    ttl: dt.timedelta | None,
    tenant: str | None,
) -> None:
    spine = (
        pipeline
        | "SpinePath" >> beam.Create([opts.spine])
        | "SpineBuckets" >> beam.ParDo(_SpineBucketsFn(opts.buckets, tenant))
    )
    events = (
        pipeline
        | "LakeFiles" >> beam.Create(files)
        | "ReadBuckets" >> ReadEventBuckets(list(INPUT_COLUMNS), buckets=opts.buckets)
    )
    _ = (
        {"spine": spine, "events": events}
        | "JoinByBucket" >> beam.CoGroupByKey()
        | "PointInTimeFeatures" >> beam.ParDo(_JoinBucketFn(ttl))
        | "OneWriter" >> beam.Map(lambda t: (None, t))
        | "Collect" >> beam.GroupByKey()
        | "WriteTrainingSet" >> beam.Map(_write, opts.output)
    )


def run(argv: list[str] | None = None) -> dict:
    """Parse, validate, run; returns a summary of the written training set."""
    options = parse_options(list(argv or []), TrainingSetOptions, __doc__)
    opts = options.view_as(TrainingSetOptions)
    dates = options.view_as(DateRangeOptions)
    check_options(opts, dates)
    options = with_s3_options(list(argv or []), options, opts.lake, opts.spine, opts.output)
    opts = options.view_as(TrainingSetOptions)
    require_lake(opts.lake)
    ttl = None if opts.no_ttl else dt.timedelta(days=opts.ttl_days)
    labels = normalise_spine(read_spine(opts.spine, ["tenant_id", "person_id", "label_timestamp"]))
    if labels.num_rows == 0:
        raise ValueError(f"spine {opts.spine} has no rows")
    if labels.column("label_timestamp").null_count:
        raise ValueError("the spine has rows without a label_timestamp")
    last = pc.max(labels.column("label_timestamp")).as_py()
    files = event_files(opts.lake, end=last.date(), tenant=dates.tenant)
    note_input(opts.lake, files)
    note_input(opts.spine, [opts.spine])
    log.info("training set for %d spine rows from %d lake files (ttl %s)", labels.num_rows, len(files), ttl)
    run_pipeline(lambda p: build(p, opts, [tuple(f) for f in files], ttl, dates.tenant), options)
    note_outputs(opts.output)
    return {
        "output": opts.output,
        "spine_rows": labels.num_rows,
        "lake_files": len(files),
        "ttl_days": None if ttl is None else opts.ttl_days,
    }


def main(argv: list[str] | None = None) -> None:
    main_entry("training_set", _main, argv)


def _main(argv: list[str]) -> dict:
    return printed(run(argv))


if __name__ == "__main__":
    main()
