"""Person features as of one or more dates: the offline store in the lake, optionally the online store.

    python -m pipelines.features --lake ./lake --as-of 2026-10-31 [--as-of 2026-10-30 ...] [--tenant T]
        [--output-lake LAKE] [--online-table T --aws-profile local|aws] [--warehouse URL] [--buckets 16]

Reads the lake's events up to the last as-of date, keys them by person bucket, computes every feature
of ``schemas/features.py`` per bucket in one vectorised pass (point-in-time: an event counts only if
its timestamp and its received_at are <= the end of the as-of day), and writes
``OUTPUT_LAKE/features/as_of_date=D/tenant_id=T/part-BBBB.parquet``; a rerun replaces those partitions.
With ``--online-table`` the newest as-of snapshot is written to DynamoDB with conditional puts (never
older over newer); with ``--warehouse`` the rows are merged into the warehouse table ``features``
on (tenant_id, person_id, as_of). See docs/features.md.
"""

from __future__ import annotations

import datetime as dt
import logging

import apache_beam as beam
import pyarrow as pa
from apache_beam.metrics import Metrics

from connectors.analytics_io import ReadEventBuckets, event_files
from connectors.aws import AwsSettings, S3Encryption
from connectors.offline_store import feature_partition, prune_partition, write_feature_file
from connectors.online_store import WriteOnlineFeatures, create_online_table
from connectors.run_records import note_input, note_outputs
from connectors.warehouse import load_table
from pipelines.options import (
    AwsOptions,
    DateRangeOptions,
    iso_date,
    main_entry,
    parse_options,
    printed,
    require_lake,
    run_pipeline,
    with_s3_options,
)
from schemas.features import FEATURES_TABLE
from transforms.features import INPUT_COLUMNS, ComputeFeatures

log = logging.getLogger("livora.features")
WAREHOUSE_KEY = ("tenant_id", "person_id", "as_of")


class FeaturesOptions(DateRangeOptions, AwsOptions):
    """What to compute and where to put it (--tenant from DateRangeOptions, AWS flags from AwsOptions)."""

    @classmethod
    def _add_argparse_args(cls, parser):
        parser.add_argument("--lake", required=True, help="Lake root to read events from (local or s3://).")
        parser.add_argument(
            "--as-of",
            dest="as_of",
            action="append",
            type=iso_date,
            required=True,
            help="As-of date YYYY-MM-DD (UTC); features use events with timestamp and received_at up to the end of "
            "that day. Repeat for a backfill of several snapshots.",
        )
        parser.add_argument(
            "--output-lake",
            dest="output_lake",
            default=None,
            help="Lake root for the offline store LAKE/features/... (default: --lake).",
        )
        parser.add_argument(
            "--online-table",
            dest="online_table",
            default=None,
            help="DynamoDB table of the online store; created if missing. The newest --as-of snapshot is written.",
        )
        parser.add_argument(
            "--warehouse",
            default=None,
            help="Also merge the rows into warehouse table 'features' (duckdb:///abs/path.duckdb, "
            "postgresql://..., redshift://...).",
        )
        parser.add_argument(
            "--buckets",
            type=int,
            default=16,
            help="Person buckets: the unit of parallel work and the files per partition (default 16).",
        )
        parser.add_argument(
            "--online-workers",
            dest="online_workers",
            type=int,
            default=8,
            help="Parallel conditional PutItem calls per worker (default 8).",
        )


def check_options(opts: FeaturesOptions, dates: DateRangeOptions) -> None:
    if dates.start_date is not None or dates.end_date is not None:
        raise ValueError(
            "--start-date/--end-date are not used: features read all history up to the last --as-of date "
            "(lifetime features need it)"
        )
    if opts.buckets < 1:
        raise ValueError("--buckets must be >= 1")
    if opts.online_workers < 1:
        raise ValueError("--online-workers must be >= 1")
    if opts.warehouse and "://" not in opts.warehouse:
        raise ValueError("--warehouse must be a URL such as duckdb:///abs/path.duckdb")


class _WriteOfflineFn(beam.DoFn):
    def __init__(self, lake: str, encryption: S3Encryption | None = None):
        self.lake, self.encryption = lake, encryption
        self.files = Metrics.counter("livora", "feature_files_written")

    def process(self, element):
        (day, tenant, bucket), features = element
        path = write_feature_file(self.lake, day, tenant, bucket, features, self.encryption)
        self.files.inc()
        yield day, tenant, path


class _PruneFn(beam.DoFn):
    """Runs after every write (side input): drop files of rewritten partitions this run did not write."""

    def __init__(self, lake: str):
        self.lake = lake
        self.deleted = Metrics.counter("livora", "feature_files_pruned")

    def process(self, partition, written):
        day, tenant = partition
        keep = [path for d, t, path in written if (d, t) == (day, tenant)]
        deleted = prune_partition(feature_partition(self.lake, day, tenant), keep)
        self.deleted.inc(len(deleted))
        yield day, tenant, len(keep), len(deleted)


class _LoadWarehouseFn(beam.DoFn):
    def __init__(self, url: str):
        self.url = url

    def process(self, element):
        _, tables = element
        loaded = 0
        for table in tables:  # one key, so one worker, sequential: an embedded DuckDB file takes one writer
            loaded += load_table(self.url, FEATURES_TABLE, table, key_columns=WAREHOUSE_KEY)
        yield loaded


def build(
    pipeline: beam.Pipeline,
    opts: FeaturesOptions,
    files: list,
    partitions: list[tuple[str, str]],
    aws: AwsSettings | None = None,
    tenant: str | None = None,
) -> None:
    output = opts.output_lake or opts.lake
    features = (
        pipeline
        | "LakeFiles" >> beam.Create(files)
        | "ReadBuckets" >> ReadEventBuckets(list(INPUT_COLUMNS), buckets=opts.buckets)
        | "GroupBuckets" >> beam.GroupByKey()
        | "ComputeFeatures" >> ComputeFeatures(opts.as_of, tenant)
    )
    written = features | "WriteOffline" >> beam.ParDo(_WriteOfflineFn(output, opts.encryption()))
    _ = (
        pipeline
        | "Partitions" >> beam.Create(partitions)
        | "PrunePartitions" >> beam.ParDo(_PruneFn(output), written=beam.pvalue.AsList(written))
    )
    if opts.online_table:
        newest = max(opts.as_of).isoformat()
        _ = (
            features
            | "NewestSnapshot" >> beam.Filter(lambda kv: kv[0][0] == newest)
            | "WriteOnline" >> WriteOnlineFeatures(aws or AwsSettings.local(), opts.online_table, opts.online_workers)
        )
    if opts.warehouse:
        _ = (
            features
            | "OneLoader"
            >> beam.Map(lambda kv: (None, kv[1].append_column("as_of_date", pa.array([kv[0][0]] * kv[1].num_rows))))
            | "GroupLoads" >> beam.GroupByKey()
            | "LoadWarehouse" >> beam.ParDo(_LoadWarehouseFn(opts.warehouse))
        )


def run(argv: list[str] | None = None) -> dict:
    """Parse, validate, run; returns a summary (rows per as-of date and tenant, from the written files)."""
    options = parse_options(list(argv or []), FeaturesOptions, __doc__)
    opts = options.view_as(FeaturesOptions)
    check_options(opts, options.view_as(DateRangeOptions))
    tenant = options.view_as(DateRangeOptions).tenant
    as_of = sorted(set(opts.as_of))
    opts.as_of = as_of
    options = with_s3_options(list(argv or []), options, opts.lake, opts.output_lake)
    opts = options.view_as(FeaturesOptions)
    opts.as_of = as_of
    require_lake(opts.lake)
    files = event_files(opts.lake, end=max(as_of), tenant=tenant)
    note_input(opts.lake, files)
    tenants = sorted({f.tenant_id for f in files})
    partitions = [(d.isoformat(), t) for d in as_of for t in tenants]
    if opts.online_table:
        create_online_table(options.view_as(AwsOptions).settings(), opts.online_table)
    log.info(
        "features as of %s for %d tenants from %d lake files", [d.isoformat() for d in as_of], len(tenants), len(files)
    )
    aws = options.view_as(AwsOptions).settings()
    run_pipeline(lambda p: build(p, opts, [tuple(f) for f in files], partitions, aws, tenant), options)
    out = opts.output_lake or opts.lake
    note_outputs(*(f"{feature_partition(out, day, t)}/*.parquet" for day, t in partitions))
    return summarise(out, partitions)


def summarise(lake: str, partitions: list[tuple[str, str]]) -> dict:
    from connectors.offline_store import read_features

    out: dict = {"lake": lake, "snapshots": []}
    if "://" in lake:
        return out
    for day, tenant in partitions:
        rows = read_features(lake, dt.date.fromisoformat(day), tenant).num_rows
        out["snapshots"].append({"as_of_date": day, "tenant_id": tenant, "persons": rows})
    return out


def main(argv: list[str] | None = None) -> None:
    main_entry("features", _main, argv)


def _main(argv: list[str]) -> dict:
    return printed(run(argv))


if __name__ == "__main__":
    main()
