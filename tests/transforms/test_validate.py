"""validate_event: contract, e-commerce properties, reason codes with sender-named field paths, tracking plans."""

from __future__ import annotations

import copy
import json
import logging
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.events import EventType
from schemas.failures import FailedEvent, Reason, Stage
from schemas.identifiers import is_tenant_id
from schemas.tracking_plan import EventRule, TrackingPlan, TrackingPlans
from transforms.decode import RawEvent
from transforms.validate import ValidEvent, validate_event

PLANS_DIR = Path(__file__).resolve().parents[2] / "schemas" / "tracking_plans"


def raw(data: dict, ref: str | None = "file:t:1") -> RawEvent:
    return RawEvent(json.dumps(data).encode(), data, ref)


def track(event: str = "Product Viewed", **fields) -> dict:
    base = {
        "type": "track",
        "messageId": "m-1",
        "tenantId": "acme-in",
        "anonymousId": "anon-1",
        "event": event,
        "properties": {"product_id": "ACM-101", "price": 1899, "currency": "INR"},
    }
    base.update(fields)
    return base


def order(**props) -> dict:
    properties = {
        "order_id": "ord-1",
        "revenue": "2499.50",
        "total": 2599.5,
        "currency": "INR",
        "products": [{"product_id": "ACM-101", "price": 1899, "quantity": 1}],
        "gift_wrap": True,  # a brand's own property
    }
    properties.update(props)
    return track("Order Completed", properties=properties)


def without(data: dict, *keys: str) -> dict:
    return {k: v for k, v in data.items() if k not in keys}


# --- accepted ------------------------------------------------------------------------------------


def test_valid_track_event():
    out = validate_event(raw(track()))
    assert isinstance(out, ValidEvent)
    assert out.event.type is EventType.TRACK and out.event.message_id == "m-1" and out.event.tenant_id == "acme-in"
    assert out.payload == json.dumps(track()).encode()
    assert out.source_ref == "file:t:1" and out.violations == ()


def test_snake_case_names_are_accepted():
    data = {
        "type": "identify",
        "message_id": "m-2",
        "tenant_id": "bloom-in",
        "user_id": "u-1",
        "traits": {"email": "A@B.IN"},
        "received_at": "2024-03-01T10:00:00Z",
    }
    out = validate_event(raw(data))
    assert isinstance(out, ValidEvent)
    assert (out.event.user_id, out.event.traits) == ("u-1", {"email": "A@B.IN"})
    assert out.event.received_at.isoformat() == "2024-03-01T10:00:00+00:00"


def test_ecommerce_properties_are_checked_but_kept_as_sent():
    data = order()
    sent = copy.deepcopy(data["properties"])
    out = validate_event(raw(data))
    assert isinstance(out, ValidEvent)
    assert out.event.properties == sent  # not the coerced model: strings stay strings, own keys stay
    assert out.event.properties["revenue"] == "2499.50"
    assert out.event.properties["gift_wrap"] is True


def test_currency_code_is_upper_cased_on_the_event_only():
    data = order(currency="inr")
    out = validate_event(raw(data))
    assert out.event.properties["currency"] == "INR"
    assert data["properties"]["currency"] == "inr"  # the decoded data (and the payload) keep what was sent
    other = validate_event(raw(track("Custom Thing", properties={"currency": "inr"})))
    assert other.event.properties["currency"] == "inr"  # not an e-commerce event: not checked, not touched


def test_lower_case_currency_passes_a_plan_enum(plans):
    out = validate_event(raw(order(currency="usd")), plans)
    assert isinstance(out, ValidEvent) and out.event.properties["currency"] == "USD"


def test_non_ecommerce_events_accept_any_properties():
    out = validate_event(raw(track("Wishlist Shared", properties={"revenue": "lots", "nested": {"a": [1]}})))
    assert isinstance(out, ValidEvent)


def test_money_as_number_string_and_integer():
    for value in (2499, 2499.5, "2499.5000", "1e3"):
        assert isinstance(validate_event(raw(order(revenue=value))), ValidEvent), value
    assert Decimal("1e3") == 1000


# --- rejected: a table of every reason -----------------------------------------------------------

CASES = [
    ("missing messageId", without(track(), "messageId"), Reason.MISSING_FIELD, "messageId"),
    ("missing tenant", without(track(), "tenantId"), Reason.MISSING_FIELD, "tenantId"),
    ("missing type", without(track(), "type"), Reason.MISSING_FIELD, "type"),
    ("no user or anonymous id", without(track(), "anonymousId"), Reason.MISSING_FIELD, "userId"),
    ("track without event", without(track(), "event"), Reason.MISSING_FIELD, "event"),
    ("alias without previousId", {**without(track(), "event"), "type": "alias"}, Reason.MISSING_FIELD, "previousId"),
    ("group without groupId", {**without(track(), "event"), "type": "group"}, Reason.MISSING_FIELD, "groupId"),
    ("messageId a number", track(messageId=12), Reason.WRONG_TYPE, "messageId"),
    ("message_id a number", {**without(track(), "messageId"), "message_id": 12}, Reason.WRONG_TYPE, "message_id"),
    ("empty anonymousId", track(anonymousId=""), Reason.INVALID_VALUE, "anonymousId"),
    ("unknown type", track(type="trak"), Reason.INVALID_VALUE, "type"),
    ("properties a list", track(properties=[1, 2]), Reason.WRONG_TYPE, "properties"),
    ("context a string", track(context="web"), Reason.WRONG_TYPE, "context"),
    ("page url a number", track(context={"page": {"url": 5}}), Reason.WRONG_TYPE, "context.page.url"),
    ("userAgent a list", track(context={"userAgent": ["x"]}), Reason.WRONG_TYPE, "context.userAgent"),
    ("user_agent a list", track(context={"user_agent": ["x"]}), Reason.WRONG_TYPE, "context.user_agent"),
    ("event name too long", track(event="x" * 300), Reason.INVALID_VALUE, "event"),
    ("timestamp garbage", track(timestamp="yesterday"), Reason.BAD_TIMESTAMP, "timestamp"),
    ("sentAt garbage", track(sentAt="2024-13-45T00:00:00Z"), Reason.BAD_TIMESTAMP, "sentAt"),
    ("revenue not a number", order(revenue="lots"), Reason.WRONG_TYPE, "properties.revenue"),
    ("revenue a bool list", order(revenue=[1]), Reason.WRONG_TYPE, "properties.revenue"),
    ("revenue 5 decimals", order(revenue="10.12345"), Reason.INVALID_VALUE, "properties.revenue"),
    ("currency not 3 letters", order(currency="RUPEES"), Reason.INVALID_VALUE, "properties.currency"),
    ("currency not ISO", order(currency="XYZ"), Reason.UNKNOWN_CURRENCY, "properties.currency"),
    (
        "product price garbage",
        order(products=[{"product_id": "a", "price": 10}, {"product_id": "b", "price": "free"}]),
        Reason.WRONG_TYPE,
        "properties.products[1].price",
    ),
    (
        "negative quantity",
        order(products=[{"product_id": "a", "quantity": -1}]),
        Reason.INVALID_VALUE,
        "properties.products[0].quantity",
    ),
    ("products not a list", order(products={"a": 1}), Reason.WRONG_TYPE, "properties.products"),
    ("product a string", order(products=["ACM-101"]), Reason.WRONG_TYPE, "properties.products[0]"),
    (
        "cart quantity 1.5",
        track("Product Added", properties={"quantity": 1.5}),
        Reason.WRONG_TYPE,
        "properties.quantity",
    ),
]


@pytest.mark.parametrize(("data", "reason", "path"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_rejections(data: dict, reason: Reason, path: str):
    out = validate_event(raw(data))
    assert isinstance(out, FailedEvent)
    assert (out.reason, out.field_path) == (reason, path)
    assert out.stage is Stage.VALIDATE
    assert out.payload == json.dumps(data).encode()
    assert out.source_ref == "file:t:1"
    # the message names the field the sender must fix
    assert path.split(".")[-1].split("[")[0] in out.message


def test_failure_carries_readable_ids():
    out = validate_event(raw(order(revenue="lots")))
    assert (out.tenant_id, out.message_id) == ("acme-in", "m-1")


def test_several_errors_are_all_described():
    out = validate_event(raw(track(messageId=1, context={"page": {"url": 2}})))
    assert out.field_path == "messageId"
    assert "messageId" in out.message and "context.page.url" in out.message


def test_non_dict_data():
    out = validate_event(RawEvent(b"[]", [], None))  # type: ignore[arg-type]
    assert isinstance(out, FailedEvent) and out.reason is Reason.NOT_AN_OBJECT


# --- tracking plans ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def plans() -> TrackingPlans:
    return TrackingPlans.load(PLANS_DIR)


def test_block_mode_dead_letters_violations(plans: TrackingPlans):
    data = order()
    del data["properties"]["order_id"]
    out = validate_event(raw(data), plans)
    assert isinstance(out, FailedEvent)
    assert (out.stage, out.reason, out.field_path) == (
        Stage.TRACKING_PLAN,
        Reason.PLAN_VIOLATION,
        "properties.order_id",
    )
    assert out.tenant_id == "acme-in"


def test_block_mode_unplanned_event(plans: TrackingPlans):
    out = validate_event(raw(track("Spin The Wheel", properties={})), plans)
    assert isinstance(out, FailedEvent) and out.reason is Reason.PLAN_VIOLATION and out.field_path == "event"


def test_block_mode_passes_planned_events(plans: TrackingPlans):
    out = validate_event(raw(order()), plans)
    assert isinstance(out, ValidEvent) and out.violations == ()


def test_warn_mode_records_and_logs_rate_limited(plans: TrackingPlans, caplog):
    data = track("Product Viewed", tenantId="bloom-in", properties={"sku": "BLM-204", "price": 399})
    caplog.set_level(logging.WARNING, logger="schemas.tracking_plan")
    first = validate_event(raw(data), plans)
    second = validate_event(raw({**data, "messageId": "m-2"}), plans)
    for out in (first, second):
        assert isinstance(out, ValidEvent)
        assert out.violations == ("properties.product_id: required by the plan for 'Product Viewed'",)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "bloom-in" in warnings[0].getMessage()


def test_allow_mode_records_without_logging(caplog):
    plans = TrackingPlans(
        [TrackingPlan(tenant_id="acme-in", mode="allow", events={"Product Viewed": EventRule(required=["sku"])})]
    )
    caplog.set_level(logging.WARNING)
    out = validate_event(raw(track()), plans)
    assert isinstance(out, ValidEvent) and out.violations == (
        "properties.sku: required by the plan for 'Product Viewed'",
    )
    assert not caplog.records


def test_tenant_without_plan_is_accepted(plans: TrackingPlans):
    out = validate_event(raw(track("Anything", tenantId="new-brand", properties={})), plans)
    assert isinstance(out, ValidEvent) and out.violations == ()


def test_plan_checks_only_track_events(plans: TrackingPlans):
    page = {**without(track(), "event"), "type": "page", "name": "Home"}
    assert isinstance(validate_event(raw(page), plans), ValidEvent)


# --- never raises ---------------------------------------------------------------------------------

json_leaf = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30)
json_value = st.recursive(
    json_leaf,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=25,
)
envelope_keys = st.sampled_from(
    [
        "type",
        "messageId",
        "message_id",
        "tenantId",
        "userId",
        "anonymousId",
        "previousId",
        "groupId",
        "event",
        "properties",
        "traits",
        "context",
        "timestamp",
        "sentAt",
        "originalTimestamp",
        "receivedAt",
    ]
)
envelope_values = st.one_of(
    json_value,
    st.sampled_from(["track", "identify", "alias", "group", "Order Completed", "Product Added", "Cart Viewed"]),
    st.sampled_from(["2024-01-01T00:00:00Z", "1990-01-01", "0001-01-01T00:00:00", "9999-12-31T23:59:59+14:00"]),
    st.fixed_dictionaries({}, optional={"revenue": json_value, "currency": json_value, "products": json_value}),
)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(envelope_keys, envelope_values, max_size=12))
def test_never_raises_on_envelope_like_dicts(data: dict):
    out = validate_event(raw(data, ref=None))
    assert isinstance(out, ValidEvent | FailedEvent)
    if isinstance(out, FailedEvent):
        assert out.reason and out.message and out.stage in (Stage.VALIDATE, Stage.TRACKING_PLAN)


EXAMPLE_PLANS = TrackingPlans.load(PLANS_DIR)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.text(max_size=12), json_value, max_size=8))
def test_never_raises_on_arbitrary_dicts(data: dict):
    base = track("Order Completed", properties={})
    for candidate in (data, {**base, **data}, {**base, "properties": data}):
        out = validate_event(RawEvent(b"{}", candidate, None), EXAMPLE_PLANS)
        assert isinstance(out, ValidEvent | FailedEvent)


@given(st.text(max_size=100))
@settings(max_examples=300, deadline=None)
def test_any_tenant_id_is_either_valid_or_an_invalid_tenant_dead_letter(tenant):
    data = track(tenantId=tenant)
    out = validate_event(raw(data))
    if is_tenant_id(tenant):
        assert isinstance(out, ValidEvent) and out.event.tenant_id == tenant
    else:
        assert isinstance(out, FailedEvent)
        assert out.reason is Reason.INVALID_TENANT and out.field_path == "tenantId"
        assert out.tenant_id is None


# --- integers beyond 64 bits: decode rejects them before validation, the rest reach the lake exact -----


def test_big_integer_never_reaches_validation_as_a_float():
    from transforms.decode import decode_record
    from transforms.enrich import dumps_json

    body = json.dumps(track(properties={"n": 10**299})).encode()
    (out,) = decode_record(body)
    assert isinstance(out, FailedEvent)
    assert (out.reason, out.field_path) == (Reason.INVALID_VALUE, "properties.n")
    edge = json.dumps(track(properties={"n": 2**64 - 1, "m": -(2**63)})).encode()
    (decoded,) = decode_record(edge)
    valid = validate_event(decoded)
    assert isinstance(valid, ValidEvent)
    # the lake's properties text holds the same digits the sender sent
    assert json.loads(dumps_json(valid.event.properties)) == {"n": 18446744073709551615, "m": -9223372036854775808}
