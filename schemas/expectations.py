"""The events table's data-quality suite: derived from the lake contract, plus business rules written once.

The contract half is generated from :data:`schemas.lake.EVENTS_SCHEMA` (non-nullable columns, the
column list and order, the column types), so a contract change changes the suite with it. The
business-rule half says what the contract's types cannot: unique keys, allowed values, and
relations between columns. Each expectation has a stable ``name`` (what summaries, alerts and
the result JSON key on) and a ``why``.

The suite runs on a pandas frame made by :func:`events_frame` (the Arrow-to-pandas conversion
the type expectations assume) with the derived check columns of :func:`add_check_columns`.
Great Expectations is imported only by :func:`build_suite` (it takes seconds to import).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from typing import TYPE_CHECKING, Any, Literal

import pyarrow as pa
import pycountry
from pydantic import BaseModel, ConfigDict

from schemas.lake import EVENTS_SCHEMA, EVENTS_TABLE

if TYPE_CHECKING:
    import great_expectations as gx
    import pandas as pd

__all__ = [
    "CHANNELS",
    "CHECK_COLUMNS",
    "EVENT_TYPES",
    "ExpectationSpec",
    "add_check_columns",
    "build_suite",
    "contract_specs",
    "events_frame",
    "events_specs",
    "pandas_type_name",
    "rule_specs",
    "suite_fingerprint",
]

SUITE_NAME = f"lake_{EVENTS_TABLE}"
EVENT_TYPES = ("track", "identify", "page", "screen", "group", "alias")
CHANNELS = (
    "direct",
    "organic_search",
    "paid_search",
    "paid_social",
    "social",
    "email",
    "referral",
    "affiliate",
    "display",
    "sms",
    "other",
)
"""Every value transforms.attribution.classify_channel returns (documented in docs/enrichment.md)."""

CURRENCY_CODES = tuple(sorted(c.alpha_3 for c in pycountry.currencies))
COUNTRY_CODES = tuple(sorted(c.alpha_2 for c in pycountry.countries))
DEFAULT_MAX_FUTURE = dt.timedelta(hours=24)

# Columns computed by the check itself (never stored in the lake): relations between columns
# are checked as a single column against a bound, which keeps the GX results readable.
UTC_DATE_COLUMN = "check_timestamp_utc_date"
LEAD_COLUMN = "check_timestamp_lead_seconds"
CHECK_COLUMNS = (UTC_DATE_COLUMN, LEAD_COLUMN)


class ExpectationSpec(BaseModel):
    """One expectation, declared without importing GX: a GX class name, its arguments and why."""

    model_config = ConfigDict(frozen=True)

    name: str
    """Stable identifier, unique within the suite."""
    expectation: str
    """Class name in ``great_expectations.expectations``, e.g. ``ExpectColumnValuesToNotBeNull``."""
    kwargs: dict[str, Any]
    why: str
    origin: Literal["contract", "rule"]


def pandas_type_name(arrow_type: pa.DataType) -> str:
    """The ``type_`` GX's pandas engine checks for a column of this Arrow type after :func:`events_frame`.

    GX compares a column's numpy/pandas dtype (or, for object columns, each value) with the named
    type. Decimals stay Python ``Decimal`` objects, for which GX has no type name: ``object`` is
    the most it can say (their range is checked by the revenue rule).
    """
    if pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type):
        return "str"
    if pa.types.is_boolean(arrow_type):
        return "bool"
    if pa.types.is_floating(arrow_type):
        return str(arrow_type.to_pandas_dtype().__name__)  # float64
    if pa.types.is_integer(arrow_type):
        return str(arrow_type.to_pandas_dtype().__name__)
    if pa.types.is_timestamp(arrow_type):
        return "Timestamp" if arrow_type.tz else "datetime64"
    if pa.types.is_date(arrow_type):
        return "datetime64"
    if pa.types.is_decimal(arrow_type):
        return "object"
    raise ValueError(f"no pandas type check for Arrow type {arrow_type}")


def contract_specs(schema: pa.Schema = EVENTS_SCHEMA) -> list[ExpectationSpec]:
    """Expectations generated from the contract: the column list, one type check per column, not-nulls."""
    columns = [*schema.names, *CHECK_COLUMNS]
    specs = [
        ExpectationSpec(
            name="column_set_matches_contract",
            expectation="ExpectTableColumnsToMatchSet",
            kwargs={"column_set": columns, "exact_match": True},
            why="Readers (DuckDB, the warehouse loader, analytics) rely on exactly the contract's columns "
            f"(the last {len(CHECK_COLUMNS)} are computed by the check).",
            origin="contract",
        ),
        ExpectationSpec(
            name="column_order_matches_contract",
            expectation="ExpectTableColumnsToMatchOrderedList",
            kwargs={"column_list": columns},
            why="Positional readers (Redshift COPY from Parquet) need the contract's column order.",
            origin="contract",
        ),
    ]
    for field in schema:
        specs.append(
            ExpectationSpec(
                name=f"type:{field.name}",
                expectation="ExpectColumnValuesToBeOfType",
                kwargs={"column": field.name, "type_": pandas_type_name(field.type)},
                why=f"The contract types {field.name} as {field.type}.",
                origin="contract",
            )
        )
    for field in schema:
        if not field.nullable:
            specs.append(
                ExpectationSpec(
                    name=f"not_null:{field.name}",
                    expectation="ExpectColumnValuesToNotBeNull",
                    kwargs={"column": field.name},
                    why=f"The contract declares {field.name} non-nullable.",
                    origin="contract",
                )
            )
    return specs


def rule_specs(max_future: dt.timedelta = DEFAULT_MAX_FUTURE) -> list[ExpectationSpec]:
    """Business rules the contract's types cannot express."""

    def rule(name: str, expectation: str, why: str, **kwargs: Any) -> ExpectationSpec:
        return ExpectationSpec(name=name, expectation=expectation, kwargs=kwargs, why=why, origin="rule")

    return [
        rule(
            "unique:tenant_id,message_id",
            "ExpectCompoundColumnsToBeUnique",
            "The dedup and MERGE key: a repeat means a duplicate slipped through dedup or a rerun added files.",
            column_list=["tenant_id", "message_id"],
        ),
        rule(
            "in_set:type",
            "ExpectColumnValuesToBeInSet",
            "The Segment spec's six call types; anything else was not validated.",
            column="type",
            value_set=list(EVENT_TYPES),
        ),
        rule(
            "event_date_is_utc_date_of_timestamp",
            "ExpectColumnPairValuesToBeEqual",
            "event_date partitions by the UTC date of timestamp; a row in the wrong partition is "
            "missed by date-range reads.",
            column_A="event_date",
            column_B=UTC_DATE_COLUMN,
        ),
        rule(
            "timestamp_not_after_received_at_plus_max_future",
            "ExpectColumnValuesToBeBetween",
            f"Ingest dead-letters events more than {max_future} ahead of receipt (clock skew); "
            "old timestamps are normal (backfills).",
            column=LEAD_COLUMN,
            max_value=max_future.total_seconds(),
        ),
        rule(
            "non_negative:revenue_inr",
            "ExpectColumnValuesToBeBetween",
            "Amounts are booked as sent and converted, never sign-flipped: orders and refunds "
            "(Order Refunded carries the refunded amount) are both >= 0; net revenue is orders minus refunds.",
            column="revenue_inr",
            min_value=0,
        ),
        rule(
            "iso4217:currency",
            "ExpectColumnValuesToBeInSet",
            "revenue_inr was converted from this currency; it must be an ISO 4217 code (null when no money).",
            column="currency",
            value_set=list(CURRENCY_CODES),
        ),
        rule(
            "iso3166_alpha2:geo_country",
            "ExpectColumnValuesToBeInSet",
            "Geo-IP country as ISO 3166-1 alpha-2, or null when unknown.",
            column="geo_country",
            value_set=list(COUNTRY_CODES),
        ),
        rule(
            "in_set:channel",
            "ExpectColumnValuesToBeInSet",
            "Dashboards group by channel; only the attribution rules' channels are known.",
            column="channel",
            value_set=list(CHANNELS),
        ),
        rule(
            "present:schema_version",
            "ExpectColumnValueLengthsToBeBetween",
            "Every row records the contract version it was written with (migrations key on it).",
            column="schema_version",
            min_value=1,
        ),
        rule(
            "not_null:session_id",
            "ExpectColumnValuesToNotBeNull",
            "Every event belongs to a session after ingest (the contract allows null for other writers).",
            column="session_id",
        ),
    ]


def events_specs(max_future: dt.timedelta = DEFAULT_MAX_FUTURE) -> list[ExpectationSpec]:
    """The whole suite: contract expectations, then business rules (names unique)."""
    specs = contract_specs() + rule_specs(max_future)
    names = [spec.name for spec in specs]
    if len(names) != len(set(names)):
        raise ValueError(f"duplicate expectation names: {sorted({n for n in names if names.count(n) > 1})}")
    return specs


def suite_fingerprint(specs: list[ExpectationSpec]) -> str:
    """A short hash of the suite: results from different suites are not comparable."""
    body = json.dumps([spec.model_dump() for spec in specs], sort_keys=True, default=str)
    return hashlib.sha1(body.encode()).hexdigest()[:12]


def build_suite(specs: list[ExpectationSpec], name: str = SUITE_NAME) -> gx.ExpectationSuite:
    """The GX suite for these specs; each expectation carries its spec's name in ``meta``."""
    import great_expectations as gx
    import great_expectations.expectations as gxe

    suite = gx.ExpectationSuite(name=name)
    for spec in specs:
        cls = getattr(gxe, spec.expectation)
        suite.add_expectation(cls(**spec.kwargs, meta={"name": spec.name, "origin": spec.origin}, notes=spec.why))
    return suite


def events_frame(table: pa.Table) -> pd.DataFrame:
    """Arrow rows -> the pandas frame the suite checks.

    Strings become pandas' python-backed ``string`` dtype (GX's per-expectation row filters copy
    the frame; measured 4x faster than the Arrow-backed default), dates ``datetime64``, decimals
    Python ``Decimal`` objects.
    """
    import pandas as pd

    strings = pd.StringDtype("python")
    return table.to_pandas(
        date_as_object=False,
        types_mapper=lambda t: strings if pa.types.is_string(t) or pa.types.is_large_string(t) else None,
    )


def add_check_columns(frame: pd.DataFrame) -> pd.DataFrame:
    """Append the derived columns the cross-column rules check (a copy; the input is not changed)."""
    out = frame.copy()
    timestamp = out["timestamp"]
    out[UTC_DATE_COLUMN] = timestamp.dt.tz_convert("UTC").dt.tz_localize(None).dt.floor("D")
    out[LEAD_COLUMN] = (timestamp - out["received_at"]).dt.total_seconds()
    return out
