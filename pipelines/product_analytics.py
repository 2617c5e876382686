"""Product and revenue analytics over the events lake (batch).

    python -m pipelines.product_analytics --lake LAKE [--start-date D] [--end-date D] [--tenant T] --output OUT
        [--aws-endpoint-url URL --aws-region R --kms-key-id KEY]

Writes ``OUT/product_funnel``, ``category_funnel``, ``revenue_daily``, ``ltv_cohorts`` and
``cart_abandonment`` as ``.parquet`` + ``.csv`` (columns in docs/analytics-segments-products.md).

Graph: partition files → read the product events, split by person bucket → orders deduplicated
across the whole tenant by order id (earliest copy) → per bucket, vectorised partial aggregates
(:func:`transforms.product_analytics.partials`; person counts add up because a person lives in one
bucket) → one final merge → atomic writes. ``revenue_daily`` and ``cart_abandonment`` are daily tables:
a rerun replaces only the days (and tenant) of its range and keeps the other days already in OUT; the
range tables (funnels, LTV) are replaced whole.
"""

from __future__ import annotations

import datetime as dt
import logging
from zoneinfo import ZoneInfo

import apache_beam as beam
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from apache_beam.metrics import Metrics

from connectors.analytics_io import (
    ReadEventBuckets,
    event_files,
    load_tables,
    person_bucket,
    read_table,
    to_arrow,
    write_table,
)
from connectors.aws import S3Encryption
from connectors.run_records import note_input, note_outputs
from pipelines.options import (
    AwsOptions,
    DateRangeOptions,
    main_entry,
    parse_options,
    require_lake,
    run_pipeline,
    with_s3_options,
)
from pipelines.quality_gate import QualityGateOptions, gate_inputs
from schemas.lake import EVENTS_SCHEMA
from schemas.outputs import PRODUCT_TABLE_SCHEMAS
from transforms import product_analytics as pa_t

log = logging.getLogger(__name__)

TABLES = ("product_funnel", "category_funnel", "revenue_daily", "ltv_cohorts", "cart_abandonment")
DAILY_TABLES = ("revenue_daily", "cart_abandonment")
WAREHOUSE_PARTITIONS = {  # what a load replaces: the run's days for daily tables, the tenant's rows otherwise
    "product_funnel": ("tenant_id",),
    "category_funnel": ("tenant_id",),
    "revenue_daily": ("tenant_id", "date"),
    "ltv_cohorts": ("tenant_id",),
    "cart_abandonment": ("tenant_id", "date"),
}
ORDER_EVENT = "Order Completed"


class ProductAnalyticsOptions(DateRangeOptions, AwsOptions, QualityGateOptions):
    """Flags of ``pipelines.product_analytics`` (plus --start-date/--end-date/--tenant and Beam's own)."""

    @classmethod
    def _add_argparse_args(cls, parser):
        parser.add_argument("--lake", required=True, help="Lake root (local directory or s3://bucket/prefix).")
        parser.add_argument("--output", required=True, help="Directory for the result tables (.parquet + .csv).")
        parser.add_argument(
            "--cart-hours",
            dest="cart_hours",
            type=float,
            default=24.0,
            help="Abandonment window N: a cart is purchased if an order follows its last activity within N hours.",
        )
        parser.add_argument(
            "--buckets", type=int, default=16, help="Person buckets: the parallelism of the per-person work."
        )
        parser.add_argument(
            "--timezone",
            default="Asia/Kolkata",
            help="Days of revenue_daily / cart_abandonment, LTV months and --start-date/--end-date are calendar "
            "days in this IANA timezone (default Asia/Kolkata, as the retention pipeline).",
        )
        parser.add_argument(
            "--warehouse",
            default=None,
            help="Also load the tables into this warehouse (duckdb:///path.duckdb, postgresql://..., "
            "redshift://...): daily tables replace the (tenant, date) pairs of the run, the others the tenant's rows.",
        )


class _PartialsFn(beam.DoFn):
    """One person bucket's rows (+ its deduplicated orders) → additive partial aggregates."""

    def __init__(
        self,
        cart_hours: float,
        data_end: dt.datetime,
        order_schema: pa.Schema,
        timezone: str = "UTC",
        data_start: dt.datetime | None = None,
    ):
        self.cart_hours, self.data_end, self.order_schema = cart_hours, data_end, order_schema
        self.timezone, self.data_start = timezone, data_start
        self.buckets = Metrics.counter("livora.product_analytics", "buckets")

    def process(self, element):
        _bucket, groups = element
        tables = list(groups["rows"])
        orders = list(groups["orders"])
        if orders:
            tables.append(pa.Table.from_pylist(orders, schema=self.order_schema))
        if not tables:
            return
        table = pa.concat_tables([t.cast(self.order_schema) for t in tables])
        self.buckets.inc()
        yield pa_t.partials(table, self.cart_hours, self.data_end, self.timezone, self.data_start)


class _SplitOrdersFn(beam.DoFn):
    """Order rows leave the bucket pieces: they are deduplicated tenant-wide by order id first."""

    def process(self, element):
        bucket, table = element
        is_order = pc.fill_null(pc.equal(table["event"], ORDER_EVENT), False)
        if pc.any(is_order).as_py():
            for row in table.filter(is_order).to_pylist():
                yield beam.pvalue.TaggedOutput("orders", row)
            table = table.filter(pc.invert(is_order))
        if table.num_rows:
            yield bucket, table


def _order_key(row: dict) -> tuple[str, str]:
    return row["tenant_id"], row["order_id"] or f"msg:{row['message_id']}"


def _earliest(rows):
    return min(rows, key=lambda r: (r["timestamp"], r["message_id"]))


class ProductAnalytics(beam.PTransform):
    """PCollection[EventFile] → one dict of the final tables (see :func:`transforms.product_analytics.finalize`)."""

    def __init__(
        self,
        cart_hours: float,
        data_end: dt.datetime,
        end_date: dt.date,
        buckets: int = 16,
        timezone: str = "UTC",
        data_start: dt.datetime | None = None,
    ):
        super().__init__()
        if cart_hours <= 0:
            raise ValueError("cart_hours must be > 0")
        self.cart_hours, self.data_end, self.end_date, self.buckets = cart_hours, data_end, end_date, buckets
        self.timezone, self.data_start = timezone, data_start

    def expand(self, files):
        columns = list(pa_t.INPUT_COLUMNS)
        schema = pa.schema([pa.field(c, EVENTS_SCHEMA.field(c).type) for c in columns])
        buckets = self.buckets
        split = (
            files
            | "ReadProductEvents" >> ReadEventBuckets(columns, pa_t.PRODUCT_EVENTS, buckets=buckets)
            | "SplitOffOrders" >> beam.ParDo(_SplitOrdersFn()).with_outputs("orders", main="rows")
        )
        orders = (
            split.orders
            | "KeyByOrder" >> beam.Map(lambda r: (_order_key(r), r))
            | "FirstCopyOfOrder" >> beam.CombinePerKey(_earliest)
            | "OrderByPersonBucket" >> beam.Map(lambda kv: (person_bucket(kv[1]["person_id"], buckets), kv[1]))
        )
        rows = split.rows
        end_date = self.end_date
        return (
            {"rows": rows, "orders": orders}
            | "GroupByPersonBucket" >> beam.CoGroupByKey()
            | "BucketPartials"
            >> beam.ParDo(_PartialsFn(self.cart_hours, self.data_end, schema, self.timezone, self.data_start))
            | "AllPartials" >> beam.combiners.ToList()
            | "FinalTables" >> beam.Map(lambda parts: pa_t.finalize(parts, end_date))
        )


class _WriteTablesFn(beam.DoFn):
    def __init__(
        self,
        output: str,
        start: dt.date | None,
        end: dt.date,
        tenant: str | None,
        warehouse: str | None = None,
        encryption: S3Encryption | None = None,
    ):
        self.output, self.start, self.end, self.tenant = output.rstrip("/"), start, end, tenant
        self.warehouse = warehouse
        self.encryption = encryption  # --kms-key-id: carried here so that it reaches a remote worker

    def process(self, tables: dict[str, pd.DataFrame]):
        for name in TABLES:
            schema = PRODUCT_TABLE_SCHEMAS[name]
            df = tables[name]
            if df.empty:  # an empty result may lack the columns its rows would have named (name, category)
                df = df.reindex(columns=schema.names)
            path = f"{self.output}/{name}.parquet"
            if name in DAILY_TABLES:
                merged = pa_t.merge_daily(read_table(path), df, self.start, self.end, self.tenant)
                write_table(path, merged, schema=schema, encryption=self.encryption)
            else:
                write_table(path, df, schema=schema, encryption=self.encryption)
            if self.warehouse:
                load_tables(self.warehouse, {name: (to_arrow(df, schema), WAREHOUSE_PARTITIONS[name])})
            yield name, len(df)


def data_bounds(
    files, start: dt.date | None, end: dt.date | None, timezone: str
) -> tuple[dt.date, dt.datetime | None, dt.datetime]:
    """(last local day, start instant, exclusive end instant) of a run.

    With ``--end-date`` the run covers the local days ``[start, end]``; without, it ends with the last
    partition's UTC day (so the last local day may be partial) and starts at the first row read.
    """
    if end is not None:
        data_start, data_end = pa_t.local_bounds(start, end, timezone)
        return end, data_start, data_end
    last = max(f.event_date for f in files) if files else (start or dt.date.today())
    data_end = dt.datetime.combine(last + dt.timedelta(days=1), dt.time(), tzinfo=dt.UTC)
    data_start = pa_t.local_bounds(start, last, timezone)[0] if start else None
    return (data_end - dt.timedelta(microseconds=1)).astimezone(ZoneInfo(timezone)).date(), data_start, data_end


def build(pipeline: beam.Pipeline, opts: ProductAnalyticsOptions) -> None:
    # local days span two UTC partitions: read one more on each side, then cut on instants
    day = dt.timedelta(days=1)
    first = opts.start_date - day if opts.start_date else None
    last = opts.end_date + day if opts.end_date else None
    files = event_files(opts.lake, first, last, opts.tenant)
    note_input(opts.lake, files)
    end_date, data_start, data_end = data_bounds(files, opts.start_date, opts.end_date, opts.timezone)
    log.info("product analytics over %d partition files, local days up to %s (%s)", len(files), end_date, opts.timezone)
    (
        pipeline
        | "EventFiles" >> beam.Create([tuple(f) for f in files])
        | "ProductAnalytics"
        >> ProductAnalytics(opts.cart_hours, data_end, end_date, opts.buckets, opts.timezone, data_start)
        | "WriteTables"
        >> beam.ParDo(
            _WriteTablesFn(opts.output, opts.start_date, end_date, opts.tenant, opts.warehouse, opts.encryption())
        )
    )


def run(argv: list[str] | None = None) -> ProductAnalyticsOptions:
    argv = list(argv or [])
    opts = parse_options(argv, ProductAnalyticsOptions, __doc__).view_as(ProductAnalyticsOptions)
    opts.check_range()
    if opts.cart_hours <= 0:
        raise ValueError("--cart-hours must be > 0")
    if opts.buckets < 1:
        raise ValueError("--buckets must be >= 1")
    try:
        ZoneInfo(opts.timezone)
    except (KeyError, ValueError) as err:
        raise ValueError(f"--timezone {opts.timezone!r} is not an IANA timezone") from err
    options = with_s3_options(argv, opts, opts.lake, opts.output)  # Beam's S3 from --aws-*; checks --kms-key-id
    opts = options.view_as(ProductAnalyticsOptions)
    require_lake(opts.lake)
    day = dt.timedelta(days=1)  # the partitions build() reads: one more on each side
    first, last = (opts.start_date - day if opts.start_date else None), (opts.end_date + day if opts.end_date else None)
    gate_inputs(opts.lake, first, last, opts.tenant, opts.quality_gate, "product_analytics")  # may raise
    log.info("product analytics on %s %s", opts.lake, opts.describe_range())
    run_pipeline(lambda p: build(p, opts), options)
    log.info("wrote the product tables under %s", opts.output)
    note_outputs(*(f"{opts.output.rstrip('/')}/{name}.parquet" for name in TABLES))
    return opts


def main(argv: list[str] | None = None) -> None:
    main_entry("product_analytics", _main, argv)


def _main(argv: list[str]) -> None:
    run(argv)


if __name__ == "__main__":
    main()
