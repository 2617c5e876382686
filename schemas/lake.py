"""The lake's events table: one row per accepted, de-duplicated event.

Layout: ``LAKE/events/tenant_id=T/event_date=YYYY-MM-DD/part-NNNNN.parquet`` (Hive partitions;
the partition columns live in the path, not in the files). Read it with
``duckdb.read_parquet('LAKE/events/**/*.parquet', hive_partitioning=true)``.
Dead letters: ``LAKE/dead_letters/...`` JSON lines of :class:`schemas.failures.FailedEvent`.
Documented column by column in ``docs/lake.md``.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Annotated

from pydantic import BaseModel, Field

from schemas import SCHEMA_VERSION
from schemas.codegen import arrow_schema

Money = Annotated[Decimal, Field(max_digits=18, decimal_places=4)]

EVENTS_TABLE = "events"
PARTITION_COLUMNS = ("tenant_id", "event_date")


class LakeEvent(BaseModel):
    """A validated, normalised, enriched event as stored in the lake and the warehouse."""

    # routing and identity
    tenant_id: str = Field(description="Livora customer brand (Hive partition column).")
    event_date: dt.date = Field(description="UTC date of `timestamp` (Hive partition column).")
    message_id: str = Field(description="Unique per tenant; the dedup and MERGE key.")
    type: str = Field(description="track, identify, page, screen, group or alias.")
    event: str | None = Field(default=None, description="Track event name.")
    name: str | None = Field(default=None, description="Page or screen name.")
    source: str | None = Field(default=None, description="Where it came from: sdk, shopify, razorpay, webhook.")
    user_id: str | None = None
    anonymous_id: str | None = None
    previous_id: str | None = None
    group_id: str | None = None
    person_id: str = Field(description="Stable person key after identity stitching.")
    session_id: str | None = Field(default=None, description="Session key (30 min inactivity by default).")
    # time (UTC, microseconds)
    timestamp: dt.datetime = Field(description="Event time after clock-skew correction.")
    original_timestamp: dt.datetime | None = None
    sent_at: dt.datetime | None = None
    received_at: dt.datetime = Field(description="When Livora received the event.")
    # payloads (JSON text)
    properties: str = Field(description="Event properties as JSON text (PII-hashed per policy).")
    traits: str | None = Field(default=None, description="Identify/group traits as JSON text (PII-hashed per policy).")
    # enrichment
    ip: str | None = Field(default=None, description="Client IP (hashed when the tenant's policy says so).")
    user_agent: str | None = None
    ua_browser: str | None = None
    ua_browser_version: str | None = None
    ua_os: str | None = None
    ua_os_version: str | None = None
    ua_device: str | None = None
    is_bot: bool = False
    geo_country: str | None = Field(default=None, description="ISO 3166-1 alpha-2.")
    geo_region: str | None = None
    geo_city: str | None = None
    geo_latitude: float | None = None
    geo_longitude: float | None = None
    page_url: str | None = None
    page_path: str | None = None
    referrer: str | None = None
    referrer_host: str | None = None
    utm_source: str | None = None
    utm_medium: str | None = None
    utm_campaign: str | None = None
    utm_term: str | None = None
    utm_content: str | None = None
    channel: str | None = Field(
        default=None, description="direct, organic_search, paid_search, social, email, referral, ..."
    )
    locale: str | None = None
    # money
    order_id: str | None = Field(default=None, description="Promoted from properties for order events.")
    currency: str | None = Field(default=None, description="ISO 4217 currency the amount was sent in.")
    revenue: Money | None = Field(default=None, description="Amount in the original currency.")
    revenue_inr: Money | None = Field(default=None, description="Amount converted to INR at the event date's rate.")
    fx_rate: float | None = Field(default=None, description="INR per unit of `currency` used for revenue_inr.")
    fx_rate_date: dt.date | None = Field(
        default=None, description="Date of the rate used (nearest published on or before)."
    )
    # lineage
    plan_violations: str | None = Field(
        default=None, description="JSON list of tracking-plan violations in allow/warn mode."
    )
    schema_version: str = SCHEMA_VERSION
    pipeline_version: str | None = None


EVENTS_SCHEMA = arrow_schema(LakeEvent, schema_version=SCHEMA_VERSION)
"""Arrow schema of a row including the partition columns."""

EVENTS_FILE_SCHEMA = arrow_schema(LakeEvent, exclude=frozenset(PARTITION_COLUMNS), schema_version=SCHEMA_VERSION)
"""Arrow schema of the Parquet files (partition columns are in the path)."""

LAKE_COLUMNS = tuple(LakeEvent.model_fields)
