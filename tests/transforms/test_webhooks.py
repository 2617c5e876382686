"""Webhooks: signatures (HMACs computed independently, one with openssl), golden Shopify/Razorpay payloads,
idempotent message ids, the file/Kinesis wrapper, and converters that never raise."""

from __future__ import annotations

import base64
import copy
import datetime as dt
import hashlib
import hmac
import json
import shutil
import subprocess
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.failures import FailedEvent, Reason, Stage
from transforms.decode import RawEvent, decode_record
from transforms.normalize import normalize_event
from transforms.validate import ValidEvent, validate_event
from transforms.webhooks import (
    RAZORPAY_EVENTS,
    SHOPIFY_TOPICS,
    WebhookRequest,
    sign,
    verify_and_convert,
    wrap_webhook,
)

CASES = Path(__file__).resolve().parents[1] / "cases" / "webhooks"
GOLDEN = sorted(p.name.removesuffix(".expected.json") for p in CASES.glob("*.expected.json"))
SECRETS = {
    "shopify": "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",
    "razorpay": "rzp_whsec_Xy12Ab34Cd56",
    "generic": "gen-secret",
}
RECEIVED = dt.datetime(2026, 10, 20, 7, 0, 0, tzinfo=dt.UTC)
NOW = dt.datetime(2026, 10, 21, tzinfo=dt.UTC)


def shopify_hmac(secret: str, body: bytes) -> str:
    """Shopify's documented scheme, written out here: base64 of the raw HMAC-SHA256 digest."""
    return base64.b64encode(hmac.new(secret.encode(), body, hashlib.sha256).digest()).decode()


def razorpay_hmac(secret: str, body: bytes) -> str:
    """Razorpay's documented scheme: lower-case hex of HMAC-SHA256."""
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def signed(
    provider: str, body: bytes, headers: dict, tenant: str = "acme-in", secret: str | None = None
) -> WebhookRequest:
    secret = secret or SECRETS[provider]
    headers = dict(headers)
    if provider == "shopify":
        headers["X-Shopify-Hmac-Sha256"] = shopify_hmac(secret, body)
    elif provider == "razorpay":
        headers["X-Razorpay-Signature"] = razorpay_hmac(secret, body)
    else:
        headers["X-Livora-Signature"] = "sha256=" + razorpay_hmac(secret, body)
    return WebhookRequest(provider, tenant, headers, body, RECEIVED)


def load_case(name: str) -> tuple[bytes, dict]:
    return (CASES / f"{name}.json").read_bytes(), json.loads((CASES / f"{name}.expected.json").read_text())


def only(outputs):
    assert len(outputs) == 1, outputs
    return outputs[0]


# --- signatures ----------------------------------------------------------------------------------


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl not installed")
@pytest.mark.parametrize("provider", ["shopify", "razorpay"])
def test_sign_matches_openssl(provider: str):
    body = (CASES / "shopify_orders_create.json").read_bytes()
    secret = SECRETS[provider]
    hex_digest = (
        subprocess.run(
            ["openssl", "dgst", "-sha256", "-hmac", secret, "-r"], input=body, capture_output=True, check=True
        )
        .stdout.split()[0]
        .decode()
    )
    expected = base64.b64encode(bytes.fromhex(hex_digest)).decode() if provider == "shopify" else hex_digest
    assert sign(provider, secret, body) == expected


def test_valid_signatures_are_accepted():
    body, case = load_case("shopify_orders_create")
    assert isinstance(only(verify_and_convert(signed("shopify", body, case["headers"]), SECRETS)), RawEvent)
    body, case = load_case("razorpay_payment_captured_upi")
    assert isinstance(only(verify_and_convert(signed("razorpay", body, case["headers"]), SECRETS)), RawEvent)


def _forgeries():
    body, case = load_case("shopify_orders_create")
    good = signed("shopify", body, case["headers"])
    rz_body, rz_case = load_case("razorpay_payment_captured_upi")
    rz_good = signed("razorpay", rz_body, rz_case["headers"])
    tampered = body.replace(b'"total_price": "3098.00"', b'"total_price": "1.00"')
    assert tampered != body
    no_header = dict(good.headers)
    del no_header["x-shopify-hmac-sha256"]
    return [
        pytest.param(signed("shopify", body, case["headers"], secret="someone-else"), id="shopify-other-secret"),
        pytest.param(WebhookRequest("shopify", "acme-in", good.headers, tampered), id="shopify-altered-body"),
        pytest.param(WebhookRequest("shopify", "acme-in", no_header, body), id="shopify-missing-header"),
        pytest.param(
            WebhookRequest(
                "shopify",
                "acme-in",
                {**no_header, "X-Shopify-Hmac-Sha256": razorpay_hmac(SECRETS["shopify"], body)},
                body,
            ),
            id="shopify-hex-instead-of-base64",
        ),
        pytest.param(
            WebhookRequest("shopify", "acme-in", {**no_header, "X-Shopify-Hmac-Sha256": "ü"}, body),
            id="non-ascii-signature",
        ),
        pytest.param(signed("razorpay", rz_body, rz_case["headers"], secret="wrong"), id="razorpay-other-secret"),
        pytest.param(
            WebhookRequest("razorpay", "acme-in", rz_good.headers, rz_body + b" "), id="razorpay-altered-body"
        ),
        pytest.param(
            WebhookRequest(
                "razorpay", "acme-in", {"X-Razorpay-Signature": shopify_hmac(SECRETS["razorpay"], rz_body)}, rz_body
            ),
            id="razorpay-base64-instead-of-hex",
        ),
        pytest.param(signed("generic", b'{"type":"page"}', {}, secret="nope"), id="generic-other-secret"),
    ]


@pytest.mark.parametrize("req", _forgeries())
def test_forged_or_missing_signatures(req: WebhookRequest):
    failure = only(verify_and_convert(req, SECRETS))
    assert isinstance(failure, FailedEvent)
    assert (failure.stage, failure.reason) == (Stage.WEBHOOK, Reason.BAD_SIGNATURE)
    assert failure.payload == req.body
    assert failure.tenant_id == "acme-in"


def test_no_secret_configured():
    body, case = load_case("shopify_orders_create")
    failure = only(verify_and_convert(signed("shopify", body, case["headers"]), {"razorpay": "x"}))
    assert failure.reason is Reason.BAD_SIGNATURE and "no secret configured" in failure.message


def test_tenant_secret_wins_over_provider_secret():
    body, case = load_case("shopify_orders_create")
    secrets = {"shopify:acme-in": "acme-own-secret", "shopify": "shared-secret"}
    assert isinstance(
        only(verify_and_convert(signed("shopify", body, case["headers"], secret="acme-own-secret"), secrets)), RawEvent
    )
    assert (
        only(verify_and_convert(signed("shopify", body, case["headers"], secret="shared-secret"), secrets)).reason
        is Reason.BAD_SIGNATURE
    )
    bloom = signed("shopify", body, case["headers"], tenant="bloom-in", secret="shared-secret")
    assert isinstance(only(verify_and_convert(bloom, secrets)), RawEvent)


def test_headers_are_case_insensitive():
    req = WebhookRequest("shopify", "acme-in", {"X-Shopify-Topic": "orders/create"}, b"{}")
    assert req.headers["x-shopify-topic"] == req.headers.get("X-SHOPIFY-TOPIC") == "orders/create"
    assert "x-SHOPIFY-topic" in req.headers


# --- golden payloads -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", GOLDEN)
def test_golden_payloads(name: str):
    body, case = load_case(name)
    req = signed(case["provider"], body, case["headers"], tenant=case["tenant_id"])
    outs = verify_and_convert(req, SECRETS)
    assert all(isinstance(o, RawEvent) for o in outs), outs
    assert len(outs) == len(case["events"])
    for out, expected in zip(outs, case["events"], strict=True):
        data = copy.deepcopy(out.data)
        assert data["context"].pop("library") == {"name": "livora-webhooks", "version": "0.1.0"}
        assert data.pop("receivedAt") == RECEIVED.isoformat()
        assert data == expected
        assert json.loads(out.payload) == out.data
        # and the event passes the contract and normalisation like any SDK event
        valid = validate_event(out)
        assert isinstance(valid, ValidEvent), valid
        assert isinstance(normalize_event(valid, now=NOW), ValidEvent)


def test_order_completed_from_shopify_books_revenue_ex_gst():
    body, case = load_case("shopify_orders_create")
    out = only(verify_and_convert(signed("shopify", body, case["headers"]), SECRETS))
    valid = normalize_event(validate_event(out), now=NOW)
    props = valid.event.properties
    # 1299 + 2 x 1049.50 - 300 discount = 3098 incl. 5 % GST (3098 x 5/105 = 147.52): revenue 2950.48
    assert props["revenue"] == "2950.48" and props["total"] == "3098.00"
    assert valid.event.context.traits["email"] == "priya.sharma@example.in"
    assert valid.event.timestamp == dt.datetime(2026, 10, 14, 14, 12, 11, tzinfo=dt.UTC)


def test_razorpay_paise_to_rupees():
    body, case = load_case("razorpay_payment_captured_upi")
    for amount, rupees in [(249950, "2499.50"), (100, "1.00"), (1, "0.01"), (0, "0.00")]:
        doc = json.loads(body)
        doc["payload"]["payment"]["entity"]["amount"] = amount
        raw = json.dumps(doc).encode()
        out = only(verify_and_convert(signed("razorpay", raw, case["headers"]), SECRETS))
        assert out.data["properties"]["amount"] == rupees
    doc = json.loads(body)
    doc["payload"]["payment"]["entity"].update(amount=1500, currency="JPY")
    out = only(verify_and_convert(signed("razorpay", json.dumps(doc).encode(), case["headers"]), SECRETS))
    assert out.data["properties"]["amount"] == "1500"


def test_razorpay_anonymous_fallback_uses_customer_or_contact():
    body, case = load_case("razorpay_payment_captured_upi")
    doc = json.loads(body)
    entity = doc["payload"]["payment"]["entity"]
    entity.update(email=None, contact=None, notes={})
    out = only(verify_and_convert(signed("razorpay", json.dumps(doc).encode(), case["headers"]), SECRETS))
    assert out.data["anonymousId"] == "razorpay:cust_OqWz8Yh3bDf1Gh" and "userId" not in out.data
    entity.update(customer_id=None, contact="+919800000000")
    out = only(verify_and_convert(signed("razorpay", json.dumps(doc).encode(), case["headers"]), SECRETS))
    assert out.data["userId"] == "+919800000000"


# --- idempotency ---------------------------------------------------------------------------------


def test_retries_produce_the_same_message_id_and_bytes():
    body, case = load_case("shopify_orders_create")
    first = only(verify_and_convert(signed("shopify", body, case["headers"]), SECRETS))
    retry = only(verify_and_convert(signed("shopify", body, case["headers"]), SECRETS))
    assert first.data["messageId"] == retry.data["messageId"] == "shopify:b54557e4-bdd9-4b37-8a5f-bf7d70bcd043"
    assert first.payload == retry.payload
    other = {**case["headers"], "X-Shopify-Webhook-Id": "another-delivery"}
    assert (
        only(verify_and_convert(signed("shopify", body, other), SECRETS)).data["messageId"]
        == "shopify:another-delivery"
    )


def test_missing_delivery_id_falls_back_to_a_body_digest():
    body, _ = load_case("razorpay_order_paid")
    a = only(verify_and_convert(signed("razorpay", body, {}), SECRETS))
    b = only(verify_and_convert(signed("razorpay", body, {}), SECRETS))
    assert a.data["messageId"] == b.data["messageId"] == f"razorpay:order.paid:{hashlib.sha256(body).hexdigest()[:32]}"


# --- unknown and unreadable ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("provider", "headers", "body", "reason", "path"),
    [
        ("shopify", {"X-Shopify-Topic": "products/update"}, b'{"id": 1}', Reason.UNKNOWN_WEBHOOK, "X-Shopify-Topic"),
        ("shopify", {}, b'{"id": 1}', Reason.UNKNOWN_WEBHOOK, "X-Shopify-Topic"),
        ("razorpay", {}, b'{"event": "subscription.charged", "payload": {}}', Reason.UNKNOWN_WEBHOOK, "event"),
        ("razorpay", {}, b'{"payload": {}}', Reason.UNKNOWN_WEBHOOK, "event"),
        ("razorpay", {}, b"[1, 2]", Reason.NOT_AN_OBJECT, None),
        ("shopify", {"X-Shopify-Topic": "orders/create"}, b'{"id": 1, "total_price": ', Reason.MALFORMED_JSON, None),
        (
            "shopify",
            {"X-Shopify-Topic": "orders/create"},
            b'{"id": 1, "total_price": "lots"}',
            Reason.INVALID_VALUE,
            None,
        ),
        (
            "razorpay",
            {},
            b'{"event": "payment.captured", "payload": {"payment": {"entity": {"amount": "x"}}}}',
            Reason.INVALID_VALUE,
            None,
        ),
    ],
)
def test_unknown_or_unreadable_deliveries(provider, headers, body, reason, path):
    failure = only(verify_and_convert(signed(provider, body, headers), SECRETS))
    assert isinstance(failure, FailedEvent)
    assert (failure.stage, failure.reason, failure.field_path) == (Stage.WEBHOOK, reason, path)
    assert failure.payload == body


def test_unknown_provider():
    failure = only(verify_and_convert(WebhookRequest("stripe", "acme-in", {}, b"{}"), SECRETS))
    assert failure.reason is Reason.UNKNOWN_WEBHOOK


# --- generic webhooks ----------------------------------------------------------------------------


def test_generic_webhook_forces_the_tenant_and_fills_ids():
    lines = [
        {"type": "track", "event": "Lead Captured", "anonymousId": "a-1", "tenantId": "someone-else"},
        {"type": "identify", "userId": "u-1", "messageId": "own-id", "traits": {"email": "X@Y.IN"}},
    ]
    body = ("\n".join(json.dumps(line) for line in lines)).encode()
    outs = verify_and_convert(signed("generic", body, {"X-Livora-Webhook-Id": "d-1"}), SECRETS)
    assert [o.data["tenantId"] for o in outs] == ["acme-in", "acme-in"]
    assert [o.data["messageId"] for o in outs] == ["webhook:d-1:0", "own-id"]
    assert all(o.data["source"] == "webhook" for o in outs)
    assert all(isinstance(validate_event(o), ValidEvent) for o in outs)


# --- the file/Kinesis wrapper --------------------------------------------------------------------


def test_wrapper_round_trip_through_decode_record():
    body, case = load_case("shopify_orders_create")
    req = signed("shopify", body, case["headers"])
    direct = verify_and_convert(req, SECRETS, source_ref="kinesis:s/1")
    via_decode = decode_record(wrap_webhook(req), source_ref="kinesis:s/1", webhook_secrets=SECRETS)
    assert [o.data for o in via_decode] == [o.data for o in direct]
    assert [o.payload for o in via_decode] == [o.payload for o in direct]
    assert via_decode[0].source_ref == "kinesis:s/1"


def test_wrapper_without_secrets_is_a_bad_signature():
    body, case = load_case("razorpay_payment_captured_upi")
    wrapped = wrap_webhook(signed("razorpay", body, case["headers"]))
    failure = only(decode_record(wrapped, source_ref="file:w:1"))
    assert (failure.stage, failure.reason) == (Stage.WEBHOOK, Reason.BAD_SIGNATURE)
    assert "no secret configured" in failure.message
    assert failure.payload == body and failure.tenant_id == "acme-in"


@pytest.mark.parametrize(
    "inner",
    [
        {"provider": "shopify", "tenant_id": "acme-in", "headers": {}, "body_b64": "not base64!"},
        {"provider": "shopify", "headers": {}, "body_b64": ""},
        {"provider": "shopify", "tenant_id": "acme-in", "headers": {"a": 1}, "body_b64": ""},
        {"provider": "shopify", "tenant_id": "acme-in", "headers": {}, "body_b64": "", "received_at": "soon"},
        "not an object",
    ],
)
def test_broken_wrappers(inner):
    failure = only(decode_record(json.dumps({"_webhook": inner}).encode(), webhook_secrets=SECRETS))
    assert isinstance(failure, FailedEvent) and failure.stage is Stage.WEBHOOK


# --- converters never raise on authentic but odd bodies -------------------------------------------

json_value = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**40), 2**40)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=20,
)
shopify_keys = st.sampled_from(
    [
        "id",
        "email",
        "phone",
        "customer",
        "line_items",
        "total_price",
        "subtotal_price",
        "total_tax",
        "taxes_included",
        "discount_codes",
        "client_details",
        "landing_site",
        "referring_site",
        "transactions",
        "refund_line_items",
        "total_shipping_price_set",
        "payment_gateway_names",
        "created_at",
        "token",
        "cart_token",
        "default_address",
    ]
)


@settings(max_examples=150, deadline=None)
@given(st.sampled_from(sorted(SHOPIFY_TOPICS)), st.dictionaries(shopify_keys, json_value, max_size=8))
def test_shopify_converters_never_raise(topic: str, doc: dict):
    req = signed("shopify", json.dumps(doc).encode(), {"X-Shopify-Topic": topic, "X-Shopify-Webhook-Id": "w"})
    outs = verify_and_convert(req, SECRETS)
    assert len(outs) == 1 and isinstance(outs[0], RawEvent | FailedEvent)


@settings(max_examples=150, deadline=None)
@given(
    st.sampled_from(sorted(RAZORPAY_EVENTS)),
    st.dictionaries(
        st.sampled_from(["payment", "order", "refund"]),
        st.fixed_dictionaries(
            {
                "entity": st.dictionaries(
                    st.sampled_from(
                        [
                            "id",
                            "amount",
                            "currency",
                            "method",
                            "email",
                            "contact",
                            "notes",
                            "customer_id",
                            "card",
                            "amount_paid",
                        ]
                    ),
                    json_value,
                    max_size=6,
                )
            }
        ),
        max_size=3,
    ),
    json_value,
)
def test_razorpay_converters_never_raise(kind: str, payload: dict, created_at):
    body = json.dumps({"event": kind, "payload": payload, "created_at": created_at}).encode()
    outs = verify_and_convert(signed("razorpay", body, {}), SECRETS)
    assert len(outs) == 1 and isinstance(outs[0], RawEvent | FailedEvent)
