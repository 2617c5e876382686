"""Lake compaction: rewrite each partition's many small Parquet files into a few large ones.

    python -m pipelines.compact_lake --lake ./lake --table events [--start-date D --end-date D --tenant T]
        [--target-file-mb 128] [--min-age-minutes 30] [--strategy auto|exchange|copy]
        [--aws-endpoint-url URL --aws-region R --kms-key-id KEY]

An ``s3://`` lake is read, listed and written on the AWS of the ``--aws-*`` flags; with ``--kms-key-id`` every
object compaction writes carries SSE-KMS with that key.

One partition per task, partitions in parallel. Safe to re-run (an already compact partition is
skipped; output names are deterministic) and crash-safe (a re-run finishes or undoes an interrupted
partition first). What readers see while it runs: see connectors/compaction.py and docs/sinks.md.
Compacting the events table also merges each compacted tenant's key index (``LAKE/_keys``,
connectors/lake_keys.py) into one file describing the new lake files.
"""

from __future__ import annotations

import json
import logging

import apache_beam as beam

from connectors.aws import AwsSettings, S3Encryption
from connectors.compaction import arrow_s3_filesystem, compact_partition, exchange_supported, list_partitions
from connectors.lake import partition_file_patterns, table_path
from connectors.lake_keys import refresh_key_index
from connectors.run_records import note_input, note_outputs
from pipelines.logs import Progress
from pipelines.options import (
    AwsOptions,
    DateRangeOptions,
    counter_totals,
    main_entry,
    parse_options,
    printed,
    require_lake,
    run_pipeline,
    with_s3_options,
)
from schemas.lake import EVENTS_TABLE

log = logging.getLogger("livora.compact_lake")
NAMESPACE = "compaction"
COUNTERS = (
    "partitions_compacted",
    "partitions_skipped",
    "files_in",
    "files_out",
    "rows",
    "duplicates_removed",
    "strays_moved",
    "recovered",
    "key_files_merged",
    "tenants_reindexed",
)


class CompactLakeOptions(DateRangeOptions, AwsOptions):
    """Which lake table and partitions to compact, and how."""

    @classmethod
    def _add_argparse_args(cls, parser):
        parser.add_argument("--lake", required=True, help="Lake root: local directory or s3://bucket/prefix.")
        parser.add_argument("--table", default=EVENTS_TABLE, help="Table directory under the lake (default: events).")
        parser.add_argument(
            "--target-file-mb",
            dest="target_file_mb",
            type=float,
            default=128.0,
            help="Target size of a compacted file in MB (default 128); a partition is rewritten only when "
            "that lowers its file count.",
        )
        parser.add_argument(
            "--min-age-minutes",
            dest="min_age_minutes",
            type=float,
            default=30.0,
            help="Skip partitions with a file younger than this (still being written by streaming ingest; "
            "default 30, 0 = compact everything).",
        )
        parser.add_argument(
            "--strategy",
            choices=("auto", "exchange", "copy"),
            default="auto",
            help="exchange: atomic directory swap (local Linux; readers never see duplicates or gaps); copy: "
            "write new files then delete old ones (S3; readers may briefly see rows twice); auto (default): "
            "exchange where possible.",
        )


class _CompactPartitionFn(beam.DoFn):
    def __init__(
        self,
        lake: str,
        table: str,
        target_file_mb: float,
        min_age_seconds: float,
        strategy: str,
        total: int = 0,
        aws: AwsSettings | None = None,
        encryption: S3Encryption | None = None,
    ):
        self._args, self._total, self._aws = (lake, table), total, aws
        self._kwargs = {"target_file_mb": target_file_mb, "min_age_seconds": min_age_seconds, "strategy": strategy}
        self._kwargs["encryption"] = encryption  # --kms-key-id, in the DoFn so that it reaches a remote worker
        self._counters = {name: beam.metrics.Metrics.counter(NAMESPACE, name) for name in COUNTERS}

    def setup(self):
        # per worker: with several workers each reports its own share (the total is the whole run's)
        self._progress = Progress(log, "partitions compacted or skipped", self._total or None)
        s3 = self._aws is not None and self._args[0].startswith("s3://")
        self._filesystem = arrow_s3_filesystem(self._aws) if s3 else None

    def process(self, partition: dict[str, str]):
        result = compact_partition(*self._args, partition, filesystem=self._filesystem, **self._kwargs)
        self._progress.add()
        c = self._counters
        c["partitions_compacted" if result.status == "compacted" else "partitions_skipped"].inc()
        for name, value in (
            ("files_in", result.files_in if result.status == "compacted" else 0),
            ("files_out", result.files_out),
            ("rows", result.rows_out),
            ("duplicates_removed", result.duplicates_removed),
            ("strays_moved", result.strays_moved),
            ("recovered", result.recovered),
        ):
            c[name].inc(value)
        yield json.dumps(result.as_dict())
        if self._args[1] == EVENTS_TABLE:  # the tenant's key index is merged once its partitions are done
            yield beam.pvalue.TaggedOutput("tenants", partition["tenant_id"])


class _RefreshKeyIndexFn(beam.DoFn):
    """One tenant's key index (LAKE/_keys) merged into one file that describes the compacted lake files."""

    def __init__(self, lake: str, table: str, encryption: S3Encryption | None = None):
        self._lake, self._table, self._encryption = lake, table, encryption
        self._merged = beam.metrics.Metrics.counter(NAMESPACE, "key_files_merged")
        self._tenants = beam.metrics.Metrics.counter(NAMESPACE, "tenants_reindexed")

    def process(self, tenant: str):
        done = refresh_key_index(self._lake, tenant, self._table, self._encryption)
        self._merged.inc(done["key_files_merged"])
        self._tenants.inc()
        yield tenant


def build(pipeline: beam.Pipeline, opts: CompactLakeOptions, partitions: list[dict[str, str]]):
    fn = _CompactPartitionFn(
        opts.lake,
        opts.table,
        opts.target_file_mb,
        opts.min_age_minutes * 60,
        opts.strategy,
        len(partitions),
        opts.settings(),
        opts.encryption(),
    )
    compacted = (
        pipeline
        | "Partitions" >> beam.Create(partitions)
        | "SpreadPartitions" >> beam.Reshuffle()
        | "CompactPartitions" >> beam.ParDo(fn).with_outputs("tenants", main="results")
    )
    _ = (
        compacted.tenants
        | "TenantsCompacted" >> beam.Distinct()
        | "RefreshKeyIndex" >> beam.ParDo(_RefreshKeyIndexFn(opts.lake, opts.table, opts.encryption()))
    )
    return compacted.results


def run(argv: list[str] | None = None) -> dict[str, int]:
    """Compact the selected partitions; returns the counters (partitions compacted/skipped, files, rows...)."""
    argv = list(argv or [])
    options = parse_options(argv, CompactLakeOptions, __doc__)
    opts = options.view_as(CompactLakeOptions)
    opts.check_range()
    if opts.target_file_mb <= 0:
        raise ValueError("--target-file-mb must be positive")
    if opts.strategy == "exchange" and (opts.lake.startswith("s3://") or not exchange_supported()):
        raise ValueError("--strategy exchange needs a local lake on Linux (renameat2); use copy or auto")
    options = with_s3_options(argv, options, opts.lake)  # Beam's S3 from --aws-*; checks --kms-key-id
    opts = options.view_as(CompactLakeOptions)
    require_lake(opts.lake, opts.table)
    filesystem = arrow_s3_filesystem(opts.settings()) if opts.lake.startswith("s3://") else None
    partitions = list_partitions(opts.lake, opts.table, opts.start_date, opts.end_date, opts.tenant, filesystem)
    log.info("compacting %d partitions of %s/%s", len(partitions), opts.lake, opts.table)
    note_input(opts.lake, partition_file_patterns(opts.lake, opts.table, partitions))
    totals = dict.fromkeys(COUNTERS, 0)
    if partitions:
        totals = counter_totals(run_pipeline(lambda p: build(p, opts, partitions), options), NAMESPACE, COUNTERS)
    log.info("done: %s", totals)
    note_outputs(table_path(opts.lake, opts.table))
    return totals


def main(argv: list[str] | None = None) -> None:
    main_entry("compact_lake", _main, argv)


def _main(argv: list[str]) -> dict[str, int]:
    return printed(run(argv))


if __name__ == "__main__":
    main()
