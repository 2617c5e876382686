"""Arrow schemas of the batch analytics outputs: the contract their readers (Athena, Glue, Redshift, pandas) see.

They live here, beside the lake's own schema, so that :mod:`schemas.tables` can publish every table without
importing the computations; the transforms and pipelines that write the tables import them from here.

Type rules (``docs/lake.md``, "Types for readers"): calendar days are ``date32`` (Athena/Redshift ``DATE``,
pandas ``datetime.date`` objects, ``date32[pyarrow]`` with ``dtype_backend="pyarrow"``), instants are
``timestamp[us, tz=UTC]``, counts ``int64``, and money in the outputs is ``float64`` INR (sums and ratios of
the lake's exact ``decimal(18, 4)`` amounts, not rounded: round for display). Hive partition columns
(``tenant_id``, ``as_of``) are in the path, not in these file schemas.
"""

from __future__ import annotations

import pyarrow as pa

__all__ = [
    "CART_ABANDONMENT_SCHEMA",
    "CATEGORY_FUNNEL_SCHEMA",
    "CLV_PREDICTIONS_SCHEMA",
    "ENTRY_DAYS_SCHEMA",
    "LTV_COHORTS_SCHEMA",
    "PRODUCT_FUNNEL_SCHEMA",
    "PRODUCT_TABLE_SCHEMAS",
    "RETENTION_SCHEMA",
    "REVENUE_DAILY_SCHEMA",
    "RFM_SCHEMA",
    "SEGMENT_MEMBERS_SCHEMA",
    "SEGMENT_SIZES_SCHEMA",
    "funnel_steps_schema",
]


def funnel_steps_schema(with_breakdown: bool) -> pa.Schema:
    """``funnel_steps``; ``breakdown_value`` only when some funnel of the run has a breakdown."""
    fields = [pa.field("tenant_id", pa.string()), pa.field("funnel", pa.string())]
    if with_breakdown:
        fields.append(pa.field("breakdown_value", pa.string()))
    fields += [
        pa.field("step", pa.int32()),
        pa.field("step_event", pa.string()),
        pa.field("persons", pa.int64()),
        pa.field("conversion_from_previous", pa.float64()),
        pa.field("conversion_overall", pa.float64()),
        pa.field("avg_time_to_convert_s", pa.float64()),
        pa.field("median_time_to_convert_s", pa.float64()),
        pa.field("p90_time_to_convert_s", pa.float64()),
    ]
    return pa.schema(fields)


ENTRY_DAYS_SCHEMA = pa.schema(
    [
        pa.field("tenant_id", pa.string()),
        pa.field("funnel", pa.string()),
        pa.field("entry_date", pa.date32()),
        pa.field("step", pa.int32()),
        pa.field("step_event", pa.string()),
        pa.field("persons", pa.int64()),
    ]
)
"""``funnel_entry_days``."""

RETENTION_SCHEMA = pa.schema(
    [
        pa.field("tenant_id", pa.string()),
        pa.field("cohort_start", pa.date32()),
        pa.field("period", pa.int32()),
        pa.field("persons", pa.int64()),
        pa.field("cohort_size", pa.int64()),
        pa.field("rate", pa.float64()),
    ]
)
"""``retention``."""

_FUNNEL_COUNTS = [
    pa.field("views", pa.int64()),
    pa.field("viewers", pa.int64()),
    pa.field("adds", pa.int64()),
    pa.field("adders", pa.int64()),
    pa.field("units_added", pa.float64()),
    pa.field("checkouts", pa.int64()),
    pa.field("orders", pa.int64()),
    pa.field("purchasers", pa.int64()),
    pa.field("units_sold", pa.float64()),
    pa.field("revenue_inr", pa.float64()),
    pa.field("viewers_who_added", pa.int64()),
    pa.field("adders_who_purchased", pa.int64()),
    pa.field("viewers_who_purchased", pa.int64()),
    pa.field("view_to_add_rate", pa.float64()),
    pa.field("add_to_purchase_rate", pa.float64()),
    pa.field("view_to_purchase_rate", pa.float64()),
    pa.field("carts", pa.int64()),
    pa.field("carts_purchased", pa.int64()),
    pa.field("carts_abandoned", pa.int64()),
    pa.field("carts_pending", pa.int64()),
    pa.field("cart_abandonment_rate", pa.float64()),
]

PRODUCT_FUNNEL_SCHEMA = pa.schema(
    [
        pa.field("tenant_id", pa.string()),
        pa.field("product_id", pa.string()),
        pa.field("name", pa.string()),
        pa.field("category", pa.string()),
        *_FUNNEL_COUNTS,
    ]
)
CATEGORY_FUNNEL_SCHEMA = pa.schema(
    [pa.field("tenant_id", pa.string()), pa.field("category", pa.string()), *_FUNNEL_COUNTS]
)
REVENUE_DAILY_SCHEMA = pa.schema(
    [
        pa.field("tenant_id", pa.string()),
        pa.field("date", pa.date32()),
        pa.field("channel", pa.string()),
        pa.field("geo_country", pa.string()),
        pa.field("geo_region", pa.string()),
        pa.field("orders", pa.int64()),
        pa.field("buyers", pa.int64()),
        pa.field("revenue_inr", pa.float64()),
        pa.field("units", pa.float64()),
        pa.field("refunds", pa.int64()),
        pa.field("refunded_inr", pa.float64()),
        pa.field("net_revenue_inr", pa.float64()),
        pa.field("average_order_value_inr", pa.float64()),
    ]
)
LTV_COHORTS_SCHEMA = pa.schema(
    [
        pa.field("tenant_id", pa.string()),
        pa.field("cohort_month", pa.date32()),
        pa.field("months_since_first_order", pa.int64()),
        pa.field("cohort_size", pa.int64()),
        pa.field("active_persons", pa.int64()),
        pa.field("orders", pa.int64()),
        pa.field("revenue_inr", pa.float64()),
        pa.field("cumulative_revenue_inr", pa.float64()),
        pa.field("cumulative_revenue_per_person_inr", pa.float64()),
        pa.field("is_complete", pa.bool_()),
    ]
)
CART_ABANDONMENT_SCHEMA = pa.schema(
    [
        pa.field("tenant_id", pa.string()),
        pa.field("date", pa.date32()),
        pa.field("carts", pa.int64()),
        pa.field("carts_purchased", pa.int64()),
        pa.field("carts_abandoned", pa.int64()),
        pa.field("carts_pending", pa.int64()),
        pa.field("persons_with_carts", pa.int64()),
        pa.field("persons_abandoning", pa.int64()),
        pa.field("cart_abandonment_rate", pa.float64()),
    ]
)
PRODUCT_TABLE_SCHEMAS = {
    "product_funnel": PRODUCT_FUNNEL_SCHEMA,
    "category_funnel": CATEGORY_FUNNEL_SCHEMA,
    "revenue_daily": REVENUE_DAILY_SCHEMA,
    "ltv_cohorts": LTV_COHORTS_SCHEMA,
    "cart_abandonment": CART_ABANDONMENT_SCHEMA,
}
"""The product-analytics tables, by name (``pipelines.product_analytics`` writes them with these schemas)."""

# segments: as_of and tenant_id are Hive partition columns, in the path and not in the files
SEGMENT_MEMBERS_SCHEMA = pa.schema(
    [
        pa.field("person_id", pa.string()),
        pa.field("segment", pa.string()),
        pa.field("rule_version", pa.string()),
    ]
)
SEGMENT_SIZES_SCHEMA = pa.schema(
    [
        pa.field("segment", pa.string()),
        pa.field("rule_version", pa.string()),
        pa.field("members", pa.int64()),
        pa.field("evaluated_persons", pa.int64()),
    ]
)
RFM_SCHEMA = pa.schema(
    [
        pa.field("person_id", pa.string()),
        pa.field("recency_days", pa.float64()),
        pa.field("orders", pa.int64()),
        pa.field("monetary_inr", pa.float64()),
        pa.field("r_score", pa.int64()),
        pa.field("f_score", pa.int64()),
        pa.field("m_score", pa.int64()),
        pa.field("rfm_cell", pa.string()),
    ]
)

CLV_PREDICTIONS_SCHEMA = pa.schema(
    [
        pa.field("tenant_id", pa.string(), nullable=False),
        pa.field("person_id", pa.string(), nullable=False),
        pa.field("user_id", pa.string()),
        pa.field("currency", pa.string()),
        pa.field("first_purchase", pa.date32(), nullable=False),
        pa.field("last_purchase", pa.date32(), nullable=False),
        pa.field("frequency", pa.int64(), nullable=False),
        pa.field("recency", pa.float64(), nullable=False),
        pa.field("T", pa.float64(), nullable=False),
        pa.field("monetary", pa.float64()),
        pa.field("expected_purchases", pa.float64()),
        pa.field("p_alive", pa.float64()),
        pa.field("expected_aov", pa.float64()),
        pa.field("clv", pa.float64()),
        pa.field("holdout_transactions", pa.int64()),
        pa.field("holdout_value", pa.float64()),
        pa.field("holdout_expected_purchases", pa.float64()),
    ]
)
"""``clv_predictions.parquet``: one row per (tenant, person) with an order up to the calibration end."""
