"""Person features declared once: the offline Parquet schema, the online items and the docs come from here.

Each :class:`FeatureDef` names its entity (always ``person`` for now), feature group, window,
aggregation, Arrow dtype and meaning. :mod:`transforms.features` computes exactly these columns,
:mod:`connectors.online_store` stores one item per (tenant, person, group), and
``python -m schemas.features --markdown`` prints the table in ``docs/features.md``.

Time semantics (shared by every feature): a snapshot *as of* ``T`` sees an event only if its
``timestamp <= T`` **and** its ``received_at <= T``; a window of N days is ``(T - N days, T]`` on
``timestamp``. An as-of *date* D means ``T = D 23:59:59.999999 UTC``.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass

import pyarrow as pa

ENTITY = "person"
FEATURES_TABLE = "features"
KEY_COLUMNS = ("tenant_id", "person_id")

ORDERS, ENGAGEMENT, PREFERENCES, LIFETIMES = "orders", "engagement", "preferences", "lifetimes"

DTYPES: dict[str, pa.DataType] = {"int64": pa.int64(), "float64": pa.float64(), "string": pa.string()}


@dataclass(frozen=True)
class FeatureGroup:
    """Features that share a freshness timestamp: the latest qualifying event of ``source``.

    The TTL is applied per group (as a Feast feature view): when the group's latest event is older
    than the TTL at the read or label time, every feature of the group is null.
    """

    name: str
    source: str
    description: str

    @property
    def event_ts_column(self) -> str:
        return f"{self.name}_event_ts"


GROUPS: tuple[FeatureGroup, ...] = (
    FeatureGroup(
        ORDERS,
        "Order Completed, Order Refunded, Order Cancelled, Payment Failed, Payment Captured",
        "Purchases, money and payments (RFM).",
    ),
    FeatureGroup(ENGAGEMENT, "any event with a session_id", "Sessions, product views and carts."),
    FeatureGroup(PREFERENCES, "any event", "What the person prefers: category, channel, device, OS."),
    FeatureGroup(LIFETIMES, "Order Completed", "The `lifetimes` RFM summary used by the CLV models."),
)
GROUPS_BY_NAME = {g.name: g for g in GROUPS}


@dataclass(frozen=True)
class FeatureDef:
    name: str
    group: str
    dtype: str
    aggregation: str
    description: str
    window_days: int | None = None
    """None: all history up to the as-of time."""
    entity: str = ENTITY

    @property
    def arrow_type(self) -> pa.DataType:
        return DTYPES[self.dtype]

    @property
    def window(self) -> str:
        return f"{self.window_days}d" if self.window_days else "all history"


ORDER_WINDOWS = (7, 30, 90, 365)
ACTIVITY_WINDOWS = (7, 30, 90)
MIX_WINDOW = 365
"""Refunds, payment failure rate and COD share look back one year."""
PREFERENCE_WINDOW = 90


def _define() -> tuple[FeatureDef, ...]:
    f: list[FeatureDef] = [
        FeatureDef("orders_lifetime", ORDERS, "int64", "count", "Order Completed events (RFM frequency).", None),
        FeatureDef(
            "revenue_inr_lifetime",
            ORDERS,
            "float64",
            "sum",
            "Sum of revenue_inr of Order Completed events (RFM monetary, INR; orders without revenue add 0).",
        ),
        FeatureDef(
            "avg_order_value_inr",
            ORDERS,
            "float64",
            "mean",
            "revenue_inr_lifetime / orders_lifetime; null without orders.",
        ),
        FeatureDef(
            "days_since_last_order",
            ORDERS,
            "float64",
            "recency",
            "(T - timestamp of the latest Order Completed) in days, fractional (RFM recency); null without orders.",
        ),
    ]
    f += [
        FeatureDef(f"orders_{w}d", ORDERS, "int64", "count", f"Order Completed events in the last {w} days.", w)
        for w in ORDER_WINDOWS
    ]
    f += [
        FeatureDef(
            f"revenue_inr_{w}d", ORDERS, "float64", "sum", f"Sum of revenue_inr of orders in the last {w} days.", w
        )
        for w in ORDER_WINDOWS
    ]
    f += [
        FeatureDef("refunds_365d", ORDERS, "int64", "count", "Order Refunded events in the last 365 days.", MIX_WINDOW),
        FeatureDef(
            "payment_failure_rate_365d",
            ORDERS,
            "float64",
            "ratio",
            'Razorpay "Payment Failed" / ("Payment Failed" + "Payment Captured") events in the last 365 days; '
            "null when there are neither.",
            MIX_WINDOW,
        ),
        FeatureDef(
            "cod_share_365d",
            ORDERS,
            "float64",
            "ratio",
            "Orders whose properties.payment_method is 'cod' (case-insensitive) / orders, last 365 days; "
            "null without orders.",
            MIX_WINDOW,
        ),
        FeatureDef(
            "days_since_last_session",
            ENGAGEMENT,
            "float64",
            "recency",
            "(T - timestamp of the latest event that has a session_id) in days, fractional.",
        ),
    ]
    f += [
        FeatureDef(
            f"sessions_{w}d",
            ENGAGEMENT,
            "int64",
            "count distinct",
            f"Distinct session_id with at least one event in the last {w} days.",
            w,
        )
        for w in ACTIVITY_WINDOWS
    ]
    f += [
        FeatureDef(
            f"product_views_{w}d", ENGAGEMENT, "int64", "count", f"Product Viewed events in the last {w} days.", w
        )
        for w in ACTIVITY_WINDOWS
    ]
    f += [
        FeatureDef(
            "cart_abandonments_90d",
            ENGAGEMENT,
            "int64",
            "count distinct",
            "Sessions with an event in the last 90 days that contain a Product Added event but no Order Completed "
            "event (among the events visible at T).",
            PREFERENCE_WINDOW,
        ),
        FeatureDef(
            "top_category_90d",
            PREFERENCES,
            "string",
            "mode",
            "Most frequent properties.category of Product Viewed and Product Added events in the last 90 days "
            "(ties: alphabetically first).",
            PREFERENCE_WINDOW,
        ),
        FeatureDef(
            "preferred_channel_90d",
            PREFERENCES,
            "string",
            "mode",
            "Most frequent non-null channel over all events in the last 90 days (ties: alphabetically first).",
            PREFERENCE_WINDOW,
        ),
        FeatureDef(
            "preferred_device_90d",
            PREFERENCES,
            "string",
            "mode",
            "Most frequent non-null ua_device over all events in the last 90 days (ties: alphabetically first).",
            PREFERENCE_WINDOW,
        ),
        FeatureDef(
            "preferred_os_90d",
            PREFERENCES,
            "string",
            "mode",
            "Most frequent non-null ua_os over all events in the last 90 days (ties: alphabetically first).",
            PREFERENCE_WINDOW,
        ),
        FeatureDef(
            "lt_frequency",
            LIFETIMES,
            "float64",
            "lifetimes summary",
            "Repeat purchase periods: distinct purchase days - 1 (transforms.clv.summarise_orders, period = 1 day).",
        ),
        FeatureDef(
            "lt_recency_days",
            LIFETIMES,
            "float64",
            "lifetimes summary",
            "Age at last purchase: days between the first and the last purchase day (transforms.clv.summarise_orders).",
        ),
        FeatureDef(
            "lt_T_days",
            LIFETIMES,
            "float64",
            "lifetimes summary",
            "Age at the as-of date: days between the first purchase day and the date of T (transforms.clv.summarise_orders).",
        ),
    ]
    return tuple(f)


FEATURES: tuple[FeatureDef, ...] = _define()
FEATURES_BY_NAME = {feat.name: feat for feat in FEATURES}
FEATURE_NAMES = tuple(FEATURES_BY_NAME)


def features_of(group: str) -> tuple[FeatureDef, ...]:
    return tuple(feat for feat in FEATURES if feat.group == group)


def _check() -> None:
    assert len(FEATURES_BY_NAME) == len(FEATURES), "duplicate feature names"
    for feat in FEATURES:
        assert feat.group in GROUPS_BY_NAME, feat
        assert feat.dtype in DTYPES, feat


_check()

TS = pa.timestamp("us", tz="UTC")


def offline_schema(with_tenant: bool = True) -> pa.Schema:
    """Arrow schema of a feature snapshot row (``with_tenant=False``: the Parquet file, tenant is in the path)."""
    fields = [pa.field("tenant_id", pa.string(), nullable=False)] if with_tenant else []
    fields += [
        pa.field("person_id", pa.string(), nullable=False, metadata={"description": "Person key (identity stitched)."}),
        pa.field("as_of", TS, nullable=False, metadata={"description": "T: the snapshot time."}),
    ]
    fields += [
        pa.field(
            g.event_ts_column,
            TS,
            metadata={"description": f"Timestamp of the latest visible {g.name} source event ({g.source})."},
        )
        for g in GROUPS
    ]
    fields += [
        pa.field(feat.name, feat.arrow_type, metadata={"description": feat.description, "group": feat.group})
        for feat in FEATURES
    ]
    return pa.schema(fields, metadata={"entity": ENTITY})


OFFLINE_SCHEMA = offline_schema()
OFFLINE_FILE_SCHEMA = offline_schema(with_tenant=False)


def markdown_table() -> str:
    """The feature reference table for docs/features.md."""
    lines = [
        "| feature | group | entity | window | aggregation | dtype | description |",
        "|---|---|---|---|---|---|---|",
    ]
    for feat in FEATURES:
        desc = feat.description.replace("|", "\\|")
        lines.append(
            f"| `{feat.name}` | {feat.group} | {feat.entity} | {feat.window} | {feat.aggregation} | "
            f"{feat.dtype} | {desc} |"
        )
    lines += ["", "| group | freshness timestamp column | source events (TTL clock) | contents |", "|---|---|---|---|"]
    lines += [f"| {g.name} | `{g.event_ts_column}` | {g.source} | {g.description} |" for g in GROUPS]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Print the person feature definitions.")
    parser.add_argument("--markdown", action="store_true", help="Markdown table (the one in docs/features.md).")
    args = parser.parse_args(argv)
    if args.markdown:
        sys.stdout.write(markdown_table())
    else:
        for feat in FEATURES:
            print(f"{feat.name}\t{feat.group}\t{feat.window}\t{feat.aggregation}\t{feat.dtype}")


if __name__ == "__main__":
    main()
