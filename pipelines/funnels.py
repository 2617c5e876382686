"""Funnels over the events lake (ClickHouse windowFunnel semantics), as a Beam batch job.

    python -m pipelines.funnels --lake ./lake \\
        --steps "Product Viewed,Product Added,Order Completed" --window 86400 \\
        [--mode ordered|strict|strict_increase|unordered] [--breakdown channel --attribution first_touch] \\
        [--start-date YYYY-MM-DD --end-date YYYY-MM-DD] [--tenant T] [--name NAME] \\
        --output ./out [--warehouse duckdb:///wh.duckdb]
    python -m pipelines.funnels --lake ./lake --config funnels.yaml --output ./out

Reads the lake partitions in range (only the columns and, unless a funnel is strict, the events the
funnels need), groups rows by (tenant, person bucket), computes person levels on Arrow/numpy per
bucket and writes OUT/funnel_steps.parquet (+ .csv) and OUT/funnel_entry_days.parquet (+ .csv).
Outputs are written to temporary names and renamed, so a rerun replaces them. See
docs/analytics-funnels-retention.md.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import apache_beam as beam
import pyarrow as pa
import pydantic
import yaml

from connectors.analytics_io import ReadLakeBatches, lake_file_patterns, load_tables, read_parquet, write_tables
from connectors.aws import S3Encryption
from connectors.run_records import note_input, note_outputs
from pipelines.errors import ConfigError, UsageError, describe_validation
from pipelines.options import (
    AwsOptions,
    DateRangeOptions,
    add_allow_empty,
    config_error,
    main_entry,
    parse_options,
    require_events,
    require_lake,
    run_pipeline,
    with_s3_options,
)
from pipelines.quality_gate import QualityGateOptions, gate_inputs
from transforms.funnels import (
    MODES,
    ComputeFunnels,
    FunnelDefinition,
    combine_funnel_outputs,
    funnel_input_columns,
    load_funnels,
)

log = logging.getLogger("livora.funnels")
STEPS_TABLE = "funnel_steps"
ENTRY_DAYS_TABLE = "funnel_entry_days"


class FunnelOptions(DateRangeOptions, AwsOptions, QualityGateOptions):
    """Which funnels, over which part of the lake, and where the tables go."""

    @classmethod
    def _add_argparse_args(cls, parser):
        parser.add_argument("--lake", required=True, help="Lake root, local directory or s3://bucket/prefix.")
        parser.add_argument(
            "--steps",
            default=None,
            help="Ad hoc funnel: comma-separated event names, in order (use --config for property filters).",
        )
        parser.add_argument(
            "--window",
            type=int,
            default=86400,
            help="Conversion window in seconds, measured from the step-1 event, inclusive (default 86400).",
        )
        parser.add_argument(
            "--config", default=None, help="YAML file with one or more funnel definitions (instead of --steps)."
        )
        parser.add_argument(
            "--mode",
            choices=MODES,
            default=None,
            help="ordered (default): other events may occur between steps; strict: ClickHouse strict_order "
            "(after step 1 any other event of the person ends the funnel); strict_increase: step timestamps "
            "strictly increasing; unordered: the steps in any order inside one window. With --config it "
            "overrides every funnel's mode.",
        )
        parser.add_argument("--name", default=None, help="Name of the ad hoc funnel (default: 'adhoc').")
        parser.add_argument(
            "--breakdown",
            default=None,
            help="Ad hoc funnel: break down by a lake column (channel, geo_country, utm_source, ...) or "
            "properties.<key>.",
        )
        parser.add_argument(
            "--attribution",
            default="first_touch",
            help="Breakdown attribution: first_touch (default), last_touch or step_N.",
        )
        parser.add_argument(
            "--timezone",
            default=None,
            help="Timezone of the entry day in funnel_entry_days (default Asia/Kolkata).",
        )
        parser.add_argument(
            "--lookahead",
            action="store_true",
            help="Also read the conversion window after --end-date (needs --end-date): people still enter "
            "only in [--start-date, --end-date], but their chains may complete after it. Without it, rows "
            "after --end-date are not seen and late entries look unconverted.",
        )
        parser.add_argument(
            "--buckets",
            type=int,
            default=64,
            help="Person buckets per tenant: the unit of parallelism of the level computation (default 64).",
        )
        parser.add_argument("--output", required=True, help="Output directory (local or s3://).")
        add_allow_empty(parser)
        parser.add_argument(
            "--warehouse",
            default=None,
            help="Optional warehouse URL (duckdb:///path, postgresql://...): the tables are also loaded "
            "there, replacing the (tenant, funnel) rows of funnel_steps and the (tenant, funnel, "
            "entry_date) rows of funnel_entry_days.",
        )


def definitions_from_options(opts: FunnelOptions) -> list[FunnelDefinition]:
    """The funnels to compute; fails before the graph is built when the flags don't add up."""
    if bool(opts.steps) == bool(opts.config):
        raise UsageError("give exactly one of --steps (ad hoc funnel) or --config (YAML definitions)")
    if opts.buckets < 1:
        raise UsageError("--buckets must be >= 1")
    if opts.lookahead and opts.end_date is None:
        raise UsageError("--lookahead needs --end-date")
    if opts.config:
        definitions = _load_config(opts.config)
        updates = {}
        if opts.mode:
            updates["mode"] = opts.mode
        if opts.timezone:
            updates["timezone"] = opts.timezone
        if updates:
            definitions = [FunnelDefinition.model_validate({**d.model_dump(), **updates}) for d in definitions]
        return definitions
    steps = [s.strip() for s in opts.steps.split(",") if s.strip()]
    spec = {
        "name": opts.name or "adhoc",
        "steps": steps,
        "window_seconds": opts.window,
        "mode": opts.mode or "ordered",
        "breakdown": opts.breakdown,
        "attribution": opts.attribution,
    }
    if opts.timezone:
        spec["timezone"] = opts.timezone
    try:
        return [FunnelDefinition.model_validate(spec)]
    except pydantic.ValidationError as err:
        raise UsageError(f"ad hoc funnel: {describe_validation(err, spec)}") from err


def _load_config(path: str) -> list[FunnelDefinition]:
    """``--config``: the funnels of a YAML file; an invalid one fails in one line naming the file, the funnel
    (its position and name) and the field."""
    if not os.path.isfile(path):
        raise ConfigError(f"--config {path}: no such file")
    try:
        return load_funnels(path)
    except (yaml.YAMLError, ValueError) as err:
        if not isinstance(err, pydantic.ValidationError):
            raise config_error(path, err) from err
        data = yaml.safe_load(Path(path).read_text())
        items = data.get("funnels", data) if isinstance(data, dict) else data
        for i, item in enumerate(items):  # load_funnels validates them in order: find the entry that failed
            try:
                FunnelDefinition.model_validate(item)
            except pydantic.ValidationError as entry_err:
                name = f" ({item.get('name')!r})" if isinstance(item, dict) and item.get("name") else ""
                raise ConfigError(f"{path}: funnel [{i}]{name}, {describe_validation(entry_err, item)}") from err
        raise config_error(path, err) from err


class _WriteFunnelOutputs(beam.DoFn):
    def __init__(
        self,
        output: str,
        definitions: Sequence[FunnelDefinition],
        warehouse: str | None,
        encryption: S3Encryption | None = None,
    ):
        self.output, self.definitions, self.warehouse = output, list(definitions), warehouse
        self.encryption = encryption

    def process(self, results):
        steps, days = combine_funnel_outputs(results, self.definitions)
        write_tables(self.output, {STEPS_TABLE: steps, ENTRY_DAYS_TABLE: days}, encryption=self.encryption)
        if self.warehouse:
            load_tables(
                self.warehouse,
                {
                    STEPS_TABLE: (steps, ("tenant_id", "funnel")),
                    ENTRY_DAYS_TABLE: (days, ("tenant_id", "funnel", "entry_date")),
                },
            )
        yield steps.num_rows


def build(
    pipeline: beam.Pipeline,
    patterns: Sequence[str],
    definitions: Sequence[FunnelDefinition],
    output: str,
    buckets: int = 64,
    warehouse: str | None = None,
    entry_before: dt.datetime | None = None,
    encryption: S3Encryption | None = None,
) -> None:
    columns = [c for c in funnel_input_columns(definitions) if c != "tenant_id"]
    _ = (
        pipeline
        | "ReadLake" >> ReadLakeBatches(patterns, columns)
        | "Funnels" >> ComputeFunnels(definitions, buckets, entry_before)
        | "AllFunnels" >> beam.combiners.ToList()
        | "Write" >> beam.ParDo(_WriteFunnelOutputs(output, definitions, warehouse, encryption))
    )


def run(argv: list[str] | None = None) -> dict[str, pa.Table]:
    """Parse, validate, run; returns the written tables (read back)."""
    argv = list(argv or [])
    options = parse_options(argv, FunnelOptions, __doc__)
    opts = options.view_as(FunnelOptions)
    opts.check_range()
    definitions = definitions_from_options(opts)
    options = with_s3_options(argv, options, opts.lake, opts.output)
    opts = options.view_as(FunnelOptions)
    read_end, entry_before = opts.end_date, None
    if opts.lookahead:
        entry_before = dt.datetime.combine(opts.end_date + dt.timedelta(days=1), dt.time(), tzinfo=dt.UTC)
        read_end = opts.end_date + dt.timedelta(days=-(-max(d.window_seconds for d in definitions) // 86400))
    require_lake(opts.lake)
    patterns = lake_file_patterns(opts.lake, opts.start_date, read_end, opts.tenant)
    note_input(opts.lake, patterns)
    if not opts.allow_empty:
        steps = [step.event for d in definitions for step in d.steps]
        require_events(patterns, steps, f"{opts.lake} {opts.describe_range()}")
    gate_inputs(opts.lake, opts.start_date, read_end, opts.tenant, opts.quality_gate, "funnels")  # may raise
    log.info("%d funnel(s) over %d lake partitions of %s", len(definitions), len(patterns), opts.lake)
    out = opts.output.rstrip("/")
    if patterns:
        run_pipeline(
            lambda p: build(
                p, patterns, definitions, opts.output, opts.buckets, opts.warehouse, entry_before, opts.encryption()
            ),
            options,
        )
    else:  # nothing in range: still replace the outputs, with empty tables
        steps, days = combine_funnel_outputs([], definitions)
        write_tables(opts.output, {STEPS_TABLE: steps, ENTRY_DAYS_TABLE: days})
    log.info("wrote %s/{%s,%s}.parquet (+ .csv)", out, STEPS_TABLE, ENTRY_DAYS_TABLE)
    result = {}
    for name in (STEPS_TABLE, ENTRY_DAYS_TABLE):
        result[name] = read_parquet(f"{out}/{name}.parquet")
        note_outputs(f"{out}/{name}.parquet")
    return result


def main(argv: list[str] | None = None) -> None:
    main_entry("funnels", _main, argv)


def _main(argv: list[str]) -> None:
    tables = run(argv)
    steps = tables[STEPS_TABLE]
    for row in steps.to_pylist():
        log.info(
            "%s %s%s step %d %-24s persons=%d overall=%s",
            row["tenant_id"],
            row["funnel"],
            f" [{row['breakdown_value']}]" if "breakdown_value" in row else "",
            row["step"],
            row["step_event"],
            row["persons"],
            f"{row['conversion_overall']:.3f}" if row["conversion_overall"] is not None else "-",
        )


if __name__ == "__main__":
    main()
