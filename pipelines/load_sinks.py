"""Backfill the operational store and the warehouse from the lake (batch): rebuild or catch up the sinks.

    python -m pipelines.load_sinks --lake ./lake [--start-date D --end-date D --tenant T] \\
        [--warehouse duckdb:///abs/warehouse.duckdb] [--profiles-table T --identity-table T] [--create-tables]

Reads the lake's event partitions in range and applies them to the DynamoDB profiles and identity graph
and/or the warehouse, through the same transforms as the streaming pipeline. Every sink is idempotent,
so this is safe to run over data the sinks already hold (after a replay, a restore, a new tenant): a
re-run changes nothing. Rows a sink refuses become dead letters (stage ``sink``).
"""

from __future__ import annotations

import hashlib
import json
import logging

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

from connectors.compaction import list_partitions
from connectors.dynamodb import WriteIdentityGraph, WriteProfiles, create_tables
from connectors.lake import WriteDeadLetters, partition_file_patterns, read_events, table_path
from connectors.paths import use_encryption
from connectors.run_records import note_input, note_outputs
from connectors.warehouse import LoadToWarehouse, connect
from pipelines.errors import UsageError
from pipelines.options import (
    AwsOptions,
    DateRangeOptions,
    counter_totals,
    main_entry,
    parse_options,
    printed,
    require_lake,
    run_pipeline,
)
from schemas.lake import EVENTS_TABLE

log = logging.getLogger("livora.load_sinks")
NAMESPACE = "load_sinks"


class LoadSinksOptions(DateRangeOptions, AwsOptions):
    """Which lake partitions to load into which sinks."""

    @classmethod
    def _add_argparse_args(cls, parser):
        parser.add_argument("--lake", required=True, help="Lake root (local directory or s3://bucket/prefix).")
        parser.add_argument(
            "--warehouse",
            default=None,
            help="Warehouse URL: duckdb:///abs/path.duckdb, postgresql://user@host:port/db or "
            "redshift://user:pw@host:5439/db?iam_role=ARN&s3_staging=s3://bucket/prefix (default: no warehouse).",
        )
        parser.add_argument(
            "--warehouse-table", dest="warehouse_table", default=EVENTS_TABLE, help="Target table (default events)."
        )
        parser.add_argument(
            "--profiles-table",
            dest="profiles_table",
            default=None,
            help="DynamoDB profiles table (default: skip profiles).",
        )
        parser.add_argument(
            "--identity-table",
            dest="identity_table",
            default=None,
            help="DynamoDB identity-graph table (default: skip).",
        )
        parser.add_argument(
            "--create-tables",
            dest="create_tables",
            action="store_true",
            help="Create the DynamoDB tables first if missing (needs both table flags).",
        )
        parser.add_argument(
            "--dead-letters",
            dest="dead_letters",
            default=None,
            help="Where rows a sink refuses go (default LAKE/dead_letters/sinks).",
        )


class _ReadPartitionFn(beam.DoFn):
    """One lake partition -> its rows as dicts (partition columns included)."""

    def __init__(self, lake: str):
        self._lake = lake
        self._rows = beam.metrics.Metrics.counter(NAMESPACE, "lake_rows")

    def process(self, partition: dict[str, str]):
        import datetime as dt

        day = dt.date.fromisoformat(partition["event_date"])
        rows = read_events(self._lake, start=day, end=day, tenant=partition["tenant_id"]).to_pylist()
        self._rows.inc(len(rows))
        yield from rows


class _CountFn(beam.DoFn):
    """Counts elements into a Beam counter (the run's summary)."""

    def __init__(self, name: str):
        self._counter = beam.metrics.Metrics.counter(NAMESPACE, name)

    def process(self, _):
        self._counter.inc()
        return ()


def build(pipeline, opts: LoadSinksOptions, partitions: list[dict[str, str]], tag: str) -> None:
    rows = (
        pipeline
        | "Partitions" >> beam.Create(partitions)
        | "SpreadPartitions" >> beam.Reshuffle()
        | "ReadPartitions" >> beam.ParDo(_ReadPartitionFn(opts.lake))
    )
    failures = []
    aws = opts.settings()

    def count(pcoll, name):
        return pcoll | f"Count_{name}" >> beam.ParDo(_CountFn(name))

    if opts.profiles_table:
        result = rows | "WriteProfiles" >> WriteProfiles(aws, opts.profiles_table)
        count(result.applied, "profile_rows_applied")
        failures.append(result.failures)
    if opts.identity_table:
        result = rows | "WriteIdentityGraph" >> WriteIdentityGraph(aws, opts.identity_table)
        count(result.applied, "identity_rows_applied")
        failures.append(result.failures)
    if opts.warehouse:
        result = rows | "LoadToWarehouse" >> LoadToWarehouse(opts.warehouse, opts.warehouse_table)
        count(result.loaded, "warehouse_rows_loaded")
        failures.append(result.failures)
    if failures:
        dead = tuple(failures) | "FlattenSinkFailures" >> beam.Flatten()
        count(dead, "sink_failures")
        dead | "WriteDeadLetters" >> WriteDeadLetters(opts.dead_letters, tag, encryption=opts.encryption())


def run(argv: list[str] | None = None) -> dict[str, int]:
    """Load the selected partitions; returns counters (lake rows read, rows applied per sink, failures)."""
    options = parse_options(list(argv or []), LoadSinksOptions, __doc__)
    opts = options.view_as(LoadSinksOptions)
    opts.check_range()
    if not (opts.warehouse or opts.profiles_table or opts.identity_table):
        raise UsageError("nothing to load: give --warehouse and/or --profiles-table / --identity-table")
    if opts.create_tables and not (opts.profiles_table and opts.identity_table):
        raise UsageError("--create-tables needs --profiles-table and --identity-table")
    FileSystems.set_options(options)
    use_encryption(opts.encryption())  # --kms-key-id for the driver's own writes (the run record)
    require_lake(opts.lake)
    if opts.warehouse:
        connect(opts.warehouse)  # a bad URL fails here, before any work
    if opts.create_tables:
        create_tables(opts.settings(), opts.profiles_table, opts.identity_table)
    opts.dead_letters = opts.dead_letters or f"{table_path(opts.lake, 'dead_letters')}/sinks"
    partitions = list_partitions(opts.lake, EVENTS_TABLE, opts.start_date, opts.end_date, opts.tenant)
    tag = (
        "sinks" + hashlib.sha1(json.dumps([partitions, opts.warehouse, opts.profiles_table]).encode()).hexdigest()[:10]
    )
    names = ("lake_rows", "profile_rows_applied", "identity_rows_applied", "warehouse_rows_loaded", "sink_failures")
    totals = dict.fromkeys(names, 0)
    log.info("loading %d partitions of %s into the sinks", len(partitions), opts.lake)
    note_input(opts.lake, partition_file_patterns(opts.lake, EVENTS_TABLE, partitions))
    if partitions:
        totals = counter_totals(run_pipeline(lambda p: build(p, opts, partitions, tag), options), NAMESPACE, names)
    log.info("done: %s", totals)
    sinks = (opts.warehouse and f"{opts.warehouse}#{opts.warehouse_table}", opts.profiles_table, opts.identity_table)
    note_outputs(*(sink for sink in sinks if sink), *([opts.dead_letters] if totals["sink_failures"] else []))
    return totals


def main(argv: list[str] | None = None) -> None:
    main_entry("load_sinks", _main, argv)


def _main(argv: list[str]) -> dict[str, int]:
    return printed(run(argv))


if __name__ == "__main__":
    main()
