"""The parse step a batch at a time: raw records -> an Arrow table of lake rows and the failures.

The same contract and the same results as the per-event path (:meth:`EventParser.parse_into`, kept
as the baseline and the reference), at a fraction of its cost:

- events are validated into plain dicts (:mod:`schemas.dict_validators`), not model instances;
- device (IP, user agent -> ua_* / geo_*) and page (URL, referrer, campaign -> UTM / channel) columns are
  looked up once per distinct value in the batch and gathered with Arrow's ``take``;
- each event leaves as one tuple of column values (no dict per row), transposed once per batch into Arrow arrays.

Only the happy path is fast. A record that is not one plain event (batches, webhooks, gzip), that any
rule refuses (contract, shape, e-commerce properties, currency, a blocking tracking plan, times, money)
goes whole through the per-event path, which names the reason and field path exactly as
before: failures are never produced here, so they cannot differ.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import pyarrow as pa

from schemas import PIPELINE_VERSION, SCHEMA_VERSION
from schemas.dict_validators import dict_validator
from schemas.events import ECOMMERCE_PROPERTIES, Event, EventType, shape_error
from schemas.failures import FailedEvent
from schemas.records import SourceRecord
from transforms.attribution import Attribution
from transforms.decode import RawEvent, plain_event
from transforms.enrich import dumps_json, page_from_properties
from transforms.event_tables import WORK_SCHEMA, events_table
from transforms.geoip import GeoInfo
from transforms.identity import ANONYMOUS, USER
from transforms.normalize import corrected_times, normalize_contacts
from transforms.pii import apply_policy
from transforms.useragent import UaInfo
from transforms.validate import ISO_CURRENCIES

if TYPE_CHECKING:
    from transforms.pipeline_core import EventParser

__all__ = ["parse_table"]

_EVENT = dict_validator(Event)
_PROPERTIES = {name: dict_validator(model) for name, model in ECOMMERCE_PROPERTIES.items()}
_PAGE, _IDENTIFY, _GROUP = EventType.PAGE, EventType.IDENTIFY, EventType.GROUP
_DEVICE_COLUMNS = ("ip", "user_agent", *UaInfo._fields, *GeoInfo._fields)
"""What ``_Resources.device`` returns: one lookup per distinct (tenant, IP, user agent) of a batch."""
_PAGE_COLUMNS = Attribution._fields
"""What ``_Resources.attribution`` returns: one lookup per distinct (url, path, referrer, campaign)."""
_TYPES = {field.name: field.type for field in WORK_SCHEMA}
_TYPE_NAMES = {member: member.value for member in EventType}


class _PlanView(NamedTuple):
    """What :meth:`TrackingPlans.violations` and ``log_warning`` read of an event."""

    tenant_id: str
    type: EventType
    event: str | None
    properties: dict[str, Any]
    message_id: str


class _Slow(Exception):
    """This event needs the per-event path (which explains what is wrong with it, if anything)."""


def parse_table(
    parser: EventParser, records: Sequence[SourceRecord], now: dt.datetime
) -> tuple[pa.Table, list[FailedEvent]]:
    """Decode -> validate -> normalize -> enrich ``records``: (rows in ``WORK_SCHEMA``, failures).

    Rows of the fast path come first, then those of records that took the per-event path; failures keep
    the records' order.
    """
    resources = parser.resources()
    config = parser.config
    plans, tenants = parser.plans, parser.tenants
    max_future = dt.timedelta(seconds=config.max_future_seconds)
    sdk_original = config.sdk_timestamp_is_original
    policies: dict[str, Any] = {}

    rows: list[tuple] = []
    devices: dict[tuple, int] = {}
    pages: dict[tuple, int] = {}
    slow: list[SourceRecord] = []
    add = rows.append
    for record in records:
        data = plain_event(record.payload)
        if data is None:
            slow.append(record)
            continue
        try:
            add(_one(record, data, devices, pages, policies, resources, plans, tenants, now, max_future, sdk_original))
        except Exception:  # _Slow, or any input the fast path did not foresee: the per-event path decides
            slow.append(record)

    table = _table(rows, devices, pages, resources, policies)
    failures: list[FailedEvent] = []
    if slow:
        slow_rows: list[dict[str, Any]] = []
        parser.parse_into(slow, now, slow_rows, failures)
        if slow_rows:
            table = pa.concat_tables([table, events_table(slow_rows)])
    return table, failures


_COLUMN_ORDER = (
    "tenant_id",
    "message_id",
    "type",
    "event",
    "name",
    "source",
    "user_id",
    "anonymous_id",
    "previous_id",
    "group_id",
    "timestamp",
    "original_timestamp",
    "sent_at",
    "received_at",
    "properties",
    "traits",
    "locale",
    "order_id",
    "currency",
    "revenue",
    "revenue_inr",
    "fx_rate",
    "fx_rate_date",
    "plan_violations",
    "_source_ref",
)


def _one(
    record: SourceRecord,
    data: dict[str, Any],
    devices: dict[tuple, int],
    pages: dict[tuple, int],
    policies: dict[str, Any],
    resources: Any,
    plans: Any,
    tenants: Any,
    now: dt.datetime,
    max_future: dt.timedelta,
    sdk_original: bool,
) -> tuple:
    """One plain event's column values (a tuple, not a dict); raise :class:`_Slow` at the first doubt."""
    if tenants is not None:
        assigned = tenants.assign(RawEvent(record.payload, data, record.source_ref))
        if isinstance(assigned, FailedEvent):
            raise _Slow
        data = assigned.data
    if record.received_at is not None and "receivedAt" not in data:
        data = {**data, "receivedAt": record.received_at.isoformat()}
    event = _EVENT.validate_python(data)  # a refusal raises: the per-event path names it
    get = event.get
    event_type, tenant = event["type"], event["tenant_id"]
    user_id, anonymous_id, previous_id = get("user_id"), get("anonymous_id"), get("previous_id")
    name = get("event")
    if shape_error(event_type, user_id, anonymous_id, name, previous_id, get("group_id")) is not None:
        raise _Slow
    properties = get("properties") or {}
    props_validator = _PROPERTIES.get(name) if name else None
    if props_validator is not None:
        typed = props_validator.validate_python(properties)
        currency = typed.get("currency", "INR")  # the model's default; models without the field keep extras
        if not isinstance(currency, str) or currency not in ISO_CURRENCIES:
            raise _Slow
        sent = properties.get("currency")
        if isinstance(sent, str) and sent != currency:
            properties["currency"] = currency
    plan = plans.for_tenant(tenant) if plans is not None else None
    violations = None
    if plan is not None:  # checked where validate_event checks it: after the currency fix, before normalisation
        view = _PlanView(tenant, event_type, name, properties, event["message_id"])
        violations = plans.violations(view)
        if violations and plan.mode == "block":
            raise _Slow

    times = corrected_times(
        get("received_at"),
        get("original_timestamp"),
        get("sent_at"),
        get("timestamp"),
        now=now,
        max_future=max_future,
        sdk_timestamp_is_original=sdk_original,
    )
    if type(times[0]) is not dt.datetime:
        raise _Slow
    received, timestamp, original, sent_at = times
    traits = get("traits") or {}
    context = get("context") or {}
    normalize_contacts(traits, properties, context.get("traits"))

    policy = policies.get(tenant)
    if policy is None:
        policy = policies[tenant] = resources.policy(tenant)

    # money first: its refusals send the event down the per-event path before anything is appended
    order_id, currency, revenue, revenue_inr, fx_rate, fx_rate_date = resources.money_columns(
        name, properties, timestamp.date()
    )

    page = context.get("page")
    if page is not None:
        url, path, referrer = page.get("url"), page.get("path"), page.get("referrer")
    else:
        url = path = referrer = None
    if url is None and event_type is _PAGE:
        url, path, referrer = page_from_properties(properties)
    campaign = context.get("campaign")
    if campaign is not None:
        campaign = tuple(map(campaign.get, ("source", "medium", "name", "term", "content")))
    device_key = (tenant, context.get("ip"), context.get("user_agent"))

    has_traits = bool(traits) or event_type is _IDENTIFY or event_type is _GROUP
    plan_violations = None
    if violations:
        if plan.mode == "warn":
            plans.log_warning(view, violations)
        plan_violations = json.dumps([str(v) for v in violations])
    if policy.hash_ids:
        salt, hash_id = policy.salt, resources.hash_id
        user_id, anonymous_id, previous_id = (
            hash_id(salt, user_id),
            hash_id(salt, anonymous_id),
            hash_id(salt, previous_id),
        )
    return (  # in _COLUMN_ORDER, then the device and page keys' indexes
        tenant,
        event["message_id"],
        _TYPE_NAMES[event_type],
        name,
        get("name"),
        get("source"),
        user_id,
        anonymous_id,
        previous_id,
        get("group_id"),
        timestamp,
        original,
        sent_at,
        received,
        dumps_json(apply_policy(properties, "properties", policy)),
        dumps_json(apply_policy(traits, "traits", policy)) if has_traits else None,
        context.get("locale"),
        order_id,
        currency,
        revenue,
        revenue_inr,
        fx_rate,
        fx_rate_date,
        plan_violations,
        record.source_ref,
        devices.setdefault(device_key, len(devices)),
        pages.setdefault((url, path, referrer, campaign), len(pages)),
    )


def _table(
    rows: list[tuple], devices: dict[tuple, int], pages: dict[tuple, int], resources: Any, policies: dict[str, Any]
) -> pa.Table:
    """The fast path's rows as columns, plus device and page columns looked up once per distinct key."""
    count = len(rows)
    if not count:
        return WORK_SCHEMA.empty_table()
    values = dict(zip((*_COLUMN_ORDER, "_device", "_page"), zip(*rows, strict=True), strict=True))
    device_of = resources.device
    device_table = pa.Table.from_pylist(
        [device_of(policies[tenant], ip, ua) for tenant, ip, ua in devices],
        schema=pa.schema([(name, _TYPES[name]) for name in _DEVICE_COLUMNS]),
    ).take(pa.array(values["_device"], pa.int32()))
    attribution = resources.attribution
    page_table = pa.Table.from_pylist(
        [attribution(url, path, referrer, campaign) for url, path, referrer, campaign in pages],
        schema=pa.schema([(name, _TYPES[name]) for name in _PAGE_COLUMNS]),
    ).take(pa.array(values["_page"], pa.int32()))
    timestamps = pa.array(values["timestamp"], _TYPES["timestamp"])
    arrays: dict[str, pa.Array] = {
        "event_date": timestamps.cast(pa.date32()),
        "timestamp": timestamps,
        "person_id": pa.nulls(count, pa.string()),
        "session_id": pa.nulls(count, pa.string()),
        "schema_version": pa.array([SCHEMA_VERSION] * count, pa.string()),
        "pipeline_version": pa.array([PIPELINE_VERSION] * count, pa.string()),
        "_node": pa.array(
            [
                USER + user if user else ANONYMOUS + anonymous
                for user, anonymous in zip(values["user_id"], values["anonymous_id"], strict=True)
            ],
            pa.string(),
        ),
    }
    for name in _COLUMN_ORDER:
        if name not in arrays:
            arrays[name] = pa.array(values[name], _TYPES[name])
    for name in _DEVICE_COLUMNS:
        arrays[name] = device_table.column(name)
    for name in _PAGE_COLUMNS:
        arrays[name] = page_table.column(name)
    return pa.Table.from_arrays([arrays[field.name] for field in WORK_SCHEMA], schema=WORK_SCHEMA)
