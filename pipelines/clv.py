"""Customer lifetime value: BG/NBD + Gamma-Gamma fitted on the lake's orders, predictions per person.

    python -m pipelines.clv --lake ./lake --calibration-end 2026-09-30 --output ./clv
        [--period-days 7] [--horizon-periods 52] [--discount-rate 0.01] [--tenant T]
        [--money-column revenue_inr|revenue] [--holdout-end YYYY-MM-DD]

Reads the Order Completed events of the lake up to the calibration end (or the holdout end),
summarises each person (same-day orders are one transaction), fits both models once per tenant
and writes ``OUT/clv_model.json`` and ``OUT/clv_predictions.parquet``. See docs/clv.md.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import zoneinfo

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.io.parquetio import WriteToParquetBatched

from connectors.analytics_io import ReadLakeBatches, lake_file_patterns
from connectors.run_records import note_input, note_outputs
from pipelines.errors import InputError
from pipelines.options import (
    AwsOptions,
    DateRangeOptions,
    iso_date,
    main_entry,
    parse_options,
    require_lake,
    run_pipeline,
    with_s3_options,
)
from transforms.clv import (
    DEFAULT_BUCKETS,
    MONEY_COLUMNS,
    ORDER_COLUMNS,
    PREDICTIONS_SCHEMA,
    FitClvModels,
    HoldoutComparison,
    OrdersFromLakeBatches,
    PredictClv,
    SummariseCustomers,
    period_discount_rate,
)

log = logging.getLogger("livora.clv")
MODEL_FILE = "clv_model.json"
PREDICTIONS_FILE = "clv_predictions.parquet"


class ClvOptions(DateRangeOptions, AwsOptions):
    """What to fit on and what to predict."""

    @classmethod
    def _add_argparse_args(cls, parser):
        parser.add_argument("--lake", required=True, help="Lake root, local directory or s3://bucket/prefix.")
        parser.add_argument(
            "--calibration-end",
            dest="calibration_end",
            type=iso_date,
            required=True,
            help="Last day (UTC, inclusive) of the calibration period the models are fitted on; "
            "T is measured up to it and predictions start after it.",
        )
        parser.add_argument(
            "--period-days",
            dest="period_days",
            type=float,
            default=7.0,
            help="Days per period: the time unit of recency, T, alpha and the horizon (default 7 = weeks). "
            "It does not change what a transaction is (one per person per day).",
        )
        parser.add_argument(
            "--horizon-periods",
            dest="horizon_periods",
            type=int,
            default=52,
            help="Horizon of expected_purchases and clv, in periods (default 52).",
        )
        parser.add_argument(
            "--discount-rate",
            dest="discount_rate",
            type=float,
            default=0.01,
            help="MONTHLY discount rate for the CLV (default 0.01); compounded to the period length.",
        )
        parser.add_argument(
            "--money-column",
            dest="money_column",
            choices=MONEY_COLUMNS,
            default="revenue_inr",
            help="Order value column: revenue_inr (INR at the event date's rate, default) or revenue "
            "(the amount in the currency it was sent in; must be a single currency per tenant).",
        )
        parser.add_argument(
            "--timezone",
            default="UTC",
            help="IANA time zone whose calendar days are transaction days and in which the dates of "
            "this pipeline's flags are read (default UTC; e.g. Asia/Kolkata).",
        )
        parser.add_argument(
            "--holdout-end",
            dest="holdout_end",
            type=iso_date,
            default=None,
            help="Optional: last day of a holdout period after the calibration end; adds actual vs "
            "predicted holdout transactions per person and per tenant.",
        )
        parser.add_argument(
            "--buckets",
            type=int,
            default=DEFAULT_BUCKETS,
            help=f"Person buckets per tenant: the unit of parallel summarising and predicting "
            f"(default {DEFAULT_BUCKETS}). Results do not depend on it.",
        )
        parser.add_argument(
            "--output",
            required=True,
            help="Output directory (local or s3://) for clv_model.json and clv_predictions.parquet.",
        )


def _read_end(opts: ClvOptions) -> dt.date:
    return opts.holdout_end or opts.calibration_end


def check_options(opts: ClvOptions) -> None:
    """Cross-flag rules, before the graph is built."""
    if opts.end_date is not None:
        raise ValueError(
            "--end-date is not used by the CLV pipeline: the read ends at --holdout-end or --calibration-end"
        )
    if opts.period_days <= 0:
        raise ValueError("--period-days must be positive")
    if opts.horizon_periods < 0:
        raise ValueError("--horizon-periods must be >= 0")
    if opts.buckets < 1:
        raise ValueError("--buckets must be >= 1")
    if opts.discount_rate < 0:
        raise ValueError("--discount-rate must be >= 0")
    if opts.holdout_end is not None and opts.holdout_end <= opts.calibration_end:
        raise ValueError("--holdout-end must be after --calibration-end")
    try:
        zoneinfo.ZoneInfo(opts.timezone)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError) as err:
        raise ValueError(f"--timezone {opts.timezone!r} is not an IANA time zone") from err
    if opts.start_date is not None and opts.start_date > opts.calibration_end:
        raise ValueError("--start-date is after --calibration-end")


def read_patterns(opts: ClvOptions) -> list[str]:
    """The event partitions to read (pruned by tenant and date), as file patterns.

    Partitions are UTC dates; a local day can straddle two of them, so one day of margin is read
    on each side and the exact local-day filter happens per order.
    """
    one_day = dt.timedelta(days=1)
    start = opts.start_date - one_day if opts.start_date else None
    return lake_file_patterns(opts.lake, start, _read_end(opts) + one_day, opts.tenant)


def run_settings(opts: ClvOptions) -> dict:
    """The run's settings as plain values: what the model document records and the graph needs."""
    holdout_periods = (
        (opts.holdout_end - opts.calibration_end).days / opts.period_days if opts.holdout_end is not None else None
    )
    return {
        "calibration_end": opts.calibration_end.isoformat(),
        "holdout_end": opts.holdout_end.isoformat() if opts.holdout_end else None,
        "holdout_periods": holdout_periods,
        "start_date": opts.start_date.isoformat() if opts.start_date else None,
        "period_days": opts.period_days,
        "horizon_periods": opts.horizon_periods,
        "discount_rate_monthly": opts.discount_rate,
        "discount_rate_per_period": period_discount_rate(opts.discount_rate, opts.period_days),
        "money_column": opts.money_column,
        "timezone": opts.timezone,
        "tenant_filter": opts.tenant,
    }


def model_document(settings: dict, models: list[tuple[str, dict]], holdout: dict[str, dict]) -> str:
    """``clv_model.json``: the run's settings and one fitted model per tenant."""
    tenants = []
    for tenant, model in sorted(models, key=lambda kv: kv[0]):
        entry = {"tenant_id": tenant, **model}
        if settings["holdout_periods"] is not None:
            entry["holdout"] = {"periods": settings["holdout_periods"], **holdout.get(tenant, {})}
        tenants.append(entry)
    return json.dumps({**settings, "models": tenants}, indent=2)


def build(pipeline: beam.Pipeline, opts: ClvOptions, patterns: list[str]) -> None:
    settings = run_settings(opts)
    output = opts.output.rstrip("/")
    orders = (
        pipeline
        | "ReadLake" >> ReadLakeBatches(patterns, list(ORDER_COLUMNS))
        | "Orders" >> OrdersFromLakeBatches(opts.money_column, opts.timezone, opts.start_date, opts.buckets)
    )
    summaries = orders | "Summarise" >> SummariseCustomers(opts.calibration_end, opts.period_days, opts.holdout_end)
    models = summaries | "Fit" >> FitClvModels()
    predictions = summaries | "Predict" >> PredictClv(
        models, opts.horizon_periods, settings["discount_rate_per_period"], settings["holdout_periods"]
    )
    _ = predictions | "WritePredictions" >> WriteToParquetBatched(
        f"{output}/{PREDICTIONS_FILE}", schema=PREDICTIONS_SCHEMA, num_shards=1, shard_name_template=""
    )
    if settings["holdout_periods"] is not None:
        holdout = predictions | "Holdout" >> HoldoutComparison()
    else:
        holdout = pipeline | "NoHoldout" >> beam.Create([])
    _ = (
        pipeline
        | "ModelTrigger" >> beam.Create([None])
        | "ModelDocument"
        >> beam.Map(
            lambda _, models, holdout: model_document(settings, models, holdout),
            models=beam.pvalue.AsList(models),
            holdout=beam.pvalue.AsDict(holdout),
        )
        | "WriteModel" >> beam.io.WriteToText(f"{output}/{MODEL_FILE}", num_shards=1, shard_name_template="")
    )


def run(argv: list[str] | None = None) -> dict:
    """Parse, validate, run; returns the written model document (parsed)."""
    options = parse_options(list(argv or []), ClvOptions, __doc__)
    opts = options.view_as(ClvOptions)
    check_options(opts)
    options = with_s3_options(list(argv or []), options, opts.lake, opts.output)
    opts = options.view_as(ClvOptions)
    require_lake(opts.lake)
    patterns = read_patterns(opts)
    if not patterns:
        raise InputError(
            f"no event partitions in {opts.lake} up to {_read_end(opts)}"
            + (f" for tenant {opts.tenant}" if opts.tenant else "")
        )
    log.info("CLV on %d partitions of %s, calibration end %s", len(patterns), opts.lake, opts.calibration_end)
    note_input(opts.lake, patterns)
    run_pipeline(lambda p: build(p, opts, patterns), options)
    note_outputs(*(f"{opts.output.rstrip('/')}/{name}" for name in (PREDICTIONS_FILE, MODEL_FILE)))
    with FileSystems.open(f"{opts.output.rstrip('/')}/{MODEL_FILE}") as handle:
        return json.loads(handle.read())


def main(argv: list[str] | None = None) -> None:
    main_entry("clv", _main, argv)


def _main(argv: list[str]) -> dict:
    document = run(argv)
    for model in document["models"]:
        log.info(
            "%s: %d customers (%d repeat); r=%.4g alpha=%.4g a=%.4g b=%.4g LL=%.2f; p=%s q=%s v=%s",
            model["tenant_id"],
            model["n_customers"],
            model["n_repeat_customers"],
            model["r"],
            model["alpha"],
            model["a"],
            model["b"],
            model["bgnbd_log_likelihood"],
            model["p"],
            model["q"],
            model["v"],
        )
    print(json.dumps(document, indent=2))
    return {"tenants": len(document["models"]), "customers": sum(m["n_customers"] for m in document["models"])}


if __name__ == "__main__":
    main()
