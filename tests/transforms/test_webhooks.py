"""Webhooks: signatures (HMACs computed independently, one with openssl), golden Shopify/Razorpay payloads,
message ids from the signed body only, topic/body agreement, the replay window, tenant binding, no clear
contact details as ids, the file/Kinesis wrapper, and converters that never raise."""

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
    WebhookConfig,
    WebhookRequest,
    is_provider_name,
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
ACME_SHOP = "acme-in.myshopify.com"
ACME_SHOP_ID = "60123456789"  # what the cases' signed order_status_url / abandoned_checkout_url name
ACME_RAZORPAY = "acc_BFQ7uQEaa7j2z7"
BINDINGS = {
    "shopify:acme-in": [ACME_SHOP, ACME_SHOP_ID],
    "razorpay:acme-in": [ACME_RAZORPAY],
    "shopify:bloom-in": ["bloom-in.myshopify.com", "60987654321"],
    "razorpay:bloom-in": ["acc_Bl00mIn5dP2kQx"],
}
# The secrets above are provider-wide (one app for all shops), so each tenant is bound to its shop/account.
CONFIG = WebhookConfig(secrets=SECRETS, bindings=BINDINGS)
# Refunds and customers name no shop in their body: under the app-wide secret only the header can bind them.
TRUSTING = CONFIG.model_copy(update={"trust_shop_header": True})
RECEIVED = dt.datetime(2026, 10, 20, 7, 0, 0, tzinfo=dt.UTC)
NOW = dt.datetime(2026, 10, 21, tzinfo=dt.UTC)


def shopify_hmac(secret: str, body: bytes) -> str:
    """Shopify's documented scheme, written out here: base64 of the raw HMAC-SHA256 digest."""
    return base64.b64encode(hmac.new(secret.encode(), body, hashlib.sha256).digest()).decode()


def razorpay_hmac(secret: str, body: bytes) -> str:
    """Razorpay's documented scheme: lower-case hex of HMAC-SHA256."""
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def signed(
    provider: str,
    body: bytes,
    headers: dict,
    tenant: str = "acme-in",
    secret: str | None = None,
    received: dt.datetime | None = RECEIVED,
) -> WebhookRequest:
    secret = secret or SECRETS[provider]
    headers = dict(headers)
    if provider == "shopify":
        headers["X-Shopify-Hmac-Sha256"] = shopify_hmac(secret, body)
    elif provider == "razorpay":
        headers["X-Razorpay-Signature"] = razorpay_hmac(secret, body)
    else:
        headers["X-Livora-Signature"] = "sha256=" + razorpay_hmac(secret, body)
    return WebhookRequest(provider, tenant, headers, body, received)


def case_received(case: dict) -> dt.datetime:
    """When the case's delivery arrived (most cases share RECEIVED; a case may say its own)."""
    value = case.get("received_at")
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00")) if value else RECEIVED


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


def test_sign_matches_shopifys_published_vector():
    """Shopify's PHP library (Shopify/shopify-api-php, tests/Webhooks/RegistryTest.php) publishes one delivery:
    body ``json_encode(['foo' => 'bar'])`` signed with the app secret ``steffi`` (tests/BaseTestCase.php)."""
    body = b'{"foo":"bar"}'
    assert sign("shopify", "steffi", body) == "/Redz4YXHLnSmmSN8grr5/Jl/Ua3d7yX3iWbjb8R8wo="
    delivery = WebhookRequest(
        "shopify", "acme-in", {"X-Shopify-Hmac-Sha256": "/Redz4YXHLnSmmSN8grr5/Jl/Ua3d7yX3iWbjb8R8wo="}, body
    )
    # the signature passes; the delivery then stops at its (absent) topic, which the vector does not carry
    assert only(verify_and_convert(delivery, {"shopify:acme-in": "steffi"})).reason == Reason.UNKNOWN_WEBHOOK
    assert only(verify_and_convert(delivery, {"shopify:acme-in": "steffi2"})).reason == Reason.BAD_SIGNATURE


def test_valid_signatures_are_accepted():
    body, case = load_case("shopify_orders_create")
    assert isinstance(only(verify_and_convert(signed("shopify", body, case["headers"]), CONFIG)), RawEvent)
    body, case = load_case("razorpay_payment_captured_upi")
    assert isinstance(only(verify_and_convert(signed("razorpay", body, case["headers"]), CONFIG)), RawEvent)


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
    failure = only(verify_and_convert(req, CONFIG))
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
    # acme's own secret proves the tenant: no shop binding needed
    assert isinstance(
        only(verify_and_convert(signed("shopify", body, case["headers"], secret="acme-own-secret"), secrets)), RawEvent
    )
    assert (
        only(verify_and_convert(signed("shopify", body, case["headers"], secret="shared-secret"), secrets)).reason
        is Reason.BAD_SIGNATURE
    )
    bloom_body = body.replace(b"www.acme.in/60123456789/", b"bloom-in.myshopify.com/60987654321/")
    assert bloom_body != body
    bloom_headers = {**case["headers"], "X-Shopify-Shop-Domain": "bloom-in.myshopify.com"}
    bloom = signed("shopify", bloom_body, bloom_headers, tenant="bloom-in", secret="shared-secret")
    bound = WebhookConfig(secrets=secrets, bindings={"shopify:bloom-in": ["bloom-in.myshopify.com"]})
    assert isinstance(only(verify_and_convert(bloom, bound)), RawEvent)
    # the shared secret alone does not say which shop signed: without a binding bloom's delivery is refused
    failure = only(verify_and_convert(bloom, secrets))
    assert (failure.reason, failure.field_path) == (Reason.TENANT_MISMATCH, "X-Shopify-Shop-Domain")
    assert "app-wide" in failure.message


def test_headers_are_case_insensitive():
    req = WebhookRequest("shopify", "acme-in", {"X-Shopify-Topic": "orders/create"}, b"{}")
    assert req.headers["x-shopify-topic"] == req.headers.get("X-SHOPIFY-TOPIC") == "orders/create"
    assert "x-SHOPIFY-topic" in req.headers


# --- golden payloads -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", GOLDEN)
def test_golden_payloads(name: str):
    body, case = load_case(name)
    received = case_received(case)
    req = signed(case["provider"], body, case["headers"], tenant=case["tenant_id"], received=received)
    outs = verify_and_convert(req, TRUSTING)
    assert all(isinstance(o, RawEvent) for o in outs), outs
    assert len(outs) == len(case["events"])
    for out, expected in zip(outs, case["events"], strict=True):
        data = copy.deepcopy(out.data)
        assert data["context"].pop("library") == {"name": "livora-webhooks", "version": "0.1.0"}
        assert data.pop("receivedAt") == received.isoformat()
        assert data == expected
        assert json.loads(out.payload) == out.data
        # and the event passes the contract and normalisation like any SDK event
        valid = validate_event(out)
        assert isinstance(valid, ValidEvent), valid
        assert isinstance(normalize_event(valid, now=received + dt.timedelta(days=1)), ValidEvent)


def test_order_completed_from_shopify_books_revenue_ex_gst():
    body, case = load_case("shopify_orders_create")
    out = only(verify_and_convert(signed("shopify", body, case["headers"]), CONFIG))
    valid = normalize_event(validate_event(out), now=NOW)
    props = valid.event.properties
    # 1299 + 2 x 1049.50 - 300 discount = 3098 incl. 5 % GST (3098 x 5/105 = 147.52): revenue 2950.48
    assert props["revenue"] == "2950.48" and props["total"] == "3098.00"
    # the email is a trait (hashed by the default PII policy), the user is Shopify's customer id
    assert valid.event.traits["email"] == "priya.sharma@example.in"
    assert valid.event.user_id == "7012345678901"
    assert valid.event.timestamp == dt.datetime(2026, 10, 14, 14, 12, 11, tzinfo=dt.UTC)


def test_razorpay_paise_to_rupees():
    body, case = load_case("razorpay_payment_captured_upi")
    for amount, rupees in [(249950, "2499.50"), (100, "1.00"), (1, "0.01"), (0, "0.00")]:
        doc = json.loads(body)
        doc["payload"]["payment"]["entity"]["amount"] = amount
        raw = json.dumps(doc).encode()
        out = only(verify_and_convert(signed("razorpay", raw, case["headers"]), CONFIG))
        assert out.data["properties"]["amount"] == rupees
    doc = json.loads(body)
    doc["payload"]["payment"]["entity"].update(amount=1500, currency="JPY")
    out = only(verify_and_convert(signed("razorpay", json.dumps(doc).encode(), case["headers"]), CONFIG))
    assert out.data["properties"]["amount"] == "1500"


def test_razorpay_anonymous_fallback_uses_customer_or_payment_never_contact():
    body, case = load_case("razorpay_payment_captured_upi")
    doc = json.loads(body)
    entity = doc["payload"]["payment"]["entity"]
    entity.update(email=None, contact=None, notes={})
    out = only(verify_and_convert(signed("razorpay", json.dumps(doc).encode(), case["headers"]), CONFIG))
    assert out.data["anonymousId"] == "razorpay:cust_OqWz8Yh3bDf1Gh" and "userId" not in out.data
    entity.update(customer_id=None, contact="+919800000000")
    out = only(verify_and_convert(signed("razorpay", json.dumps(doc).encode(), case["headers"]), CONFIG))
    # the phone is a trait (hashed downstream), not an id in clear
    assert out.data["anonymousId"] == "razorpay:pay_OqX3mPZ1kV9aBc" and "userId" not in out.data
    assert out.data["traits"] == {"phone": "+919800000000"}
    entity.update(notes={"user_id": "acme-user-1"})
    out = only(verify_and_convert(signed("razorpay", json.dumps(doc).encode(), case["headers"]), CONFIG))
    assert out.data["userId"] == "acme-user-1"  # the brand's own id, from the signed notes


# --- idempotency: ids from the signed body only --------------------------------------------------


def test_retries_produce_the_same_message_id_and_bytes():
    body, case = load_case("shopify_orders_create")
    first = only(verify_and_convert(signed("shopify", body, case["headers"]), CONFIG))
    retry = only(verify_and_convert(signed("shopify", body, case["headers"]), CONFIG))
    assert first.data["messageId"] == retry.data["messageId"] == "shopify:order:5678901234567:completed"
    assert first.payload == retry.payload


def test_a_new_header_delivery_id_does_not_make_a_new_shopify_event():
    """Regression: four deliveries of one signed order (new X-Shopify-Webhook-Id each) were 3+ events."""
    body, case = load_case("shopify_orders_create")
    ids = set()
    for delivery in ("b54557e4-bdd9-4b37-8a5f-bf7d70bcd043", "another-delivery", "x-3", None):
        headers = {k: v for k, v in case["headers"].items() if k != "X-Shopify-Webhook-Id"}
        if delivery:
            headers["X-Shopify-Webhook-Id"] = delivery
        out = only(verify_and_convert(signed("shopify", body, headers), CONFIG))
        ids.add(out.data["messageId"])
        # the header id is kept, but only as information
        assert out.data["context"].get("webhook") == ({"delivery_id": delivery} if delivery else None)
    assert ids == {"shopify:order:5678901234567:completed"}


def test_a_later_snapshot_of_the_order_posted_as_orders_create_books_it_once():
    body, case = load_case("shopify_orders_create")
    doc = json.loads(body)
    doc.update(updated_at="2026-10-15T10:00:00+05:30", financial_status="paid")
    later = only(verify_and_convert(signed("shopify", json.dumps(doc).encode(), case["headers"]), CONFIG))
    assert later.data["messageId"] == "shopify:order:5678901234567:completed"


def test_a_new_header_event_id_does_not_make_a_new_razorpay_event():
    body, _ = load_case("razorpay_payment_captured_upi")
    ids = {
        only(verify_and_convert(signed("razorpay", body, headers), CONFIG)).data["messageId"]
        for headers in ({"X-Razorpay-Event-Id": "evt_OqX3nQa2lW0bCd"}, {"X-Razorpay-Event-Id": "evt_forged"}, {})
    }
    assert ids == {"razorpay:payment.captured:pay_OqX3mPZ1kV9aBc"}


@pytest.mark.parametrize(
    ("name", "message_id"),
    [
        ("shopify_orders_cancelled", "shopify:order:5678901239999:cancelled"),
        ("shopify_refunds_create", "shopify:refund:929361462"),
        ("shopify_checkouts_create", "shopify:checkout:b1946ac92492d2347c6235b4d2611184:started"),
        ("shopify_customers_create", "shopify:customer:7012345678901:created"),
        ("razorpay_order_paid", "razorpay:order.paid:order_OqX2kLm9nQ8rSt"),
        ("razorpay_refund_processed", "razorpay:refund.processed:rfnd_OrA1bCdEf2GhIj"),
    ],
)
def test_message_id_ignores_every_header_id(name: str, message_id: str):
    body, case = load_case(name)
    headers = {k: v for k, v in case["headers"].items() if not k.lower().endswith("-id")}
    headers["X-Shopify-Webhook-Id" if case["provider"] == "shopify" else "X-Razorpay-Event-Id"] = "replayed-1"
    req = signed(case["provider"], body, headers, tenant=case["tenant_id"], received=case_received(case))
    assert only(verify_and_convert(req, TRUSTING)).data["messageId"] == message_id


def test_a_body_without_an_id_falls_back_to_a_body_digest():
    body = json.dumps(
        {"event": "order.paid", "account_id": ACME_RAZORPAY, "created_at": 1792479005, "payload": {}}
    ).encode()
    a = only(verify_and_convert(signed("razorpay", body, {"X-Razorpay-Event-Id": "e1"}), CONFIG))
    b = only(verify_and_convert(signed("razorpay", body, {"X-Razorpay-Event-Id": "e2"}), CONFIG))
    assert a.data["messageId"] == b.data["messageId"] == f"razorpay:order.paid:{hashlib.sha256(body).hexdigest()[:32]}"


# --- topic against body --------------------------------------------------------------------------


def _shopify(name: str, topic: str) -> WebhookRequest:
    body, case = load_case(name)
    headers = {k: v for k, v in case["headers"].items() if k.lower() != "x-shopify-topic"}
    return signed("shopify", body, {**headers, "X-Shopify-Topic": topic}, received=case_received(case))


@pytest.mark.parametrize(
    ("name", "topic"),
    [
        ("shopify_orders_create", "orders/cancelled"),  # regression: became an Order Cancelled
        ("shopify_orders_cancelled", "orders/create"),
        ("shopify_orders_create", "refunds/create"),
        ("shopify_orders_create", "customers/create"),
        ("shopify_orders_create", "checkouts/create"),
        ("shopify_refunds_create", "orders/create"),
        ("shopify_checkouts_create", "orders/create"),
        ("shopify_customers_create", "orders/cancelled"),
    ],
)
def test_a_topic_the_signed_body_contradicts_is_dead_lettered(name: str, topic: str):
    failure = only(verify_and_convert(_shopify(name, topic), TRUSTING))
    assert isinstance(failure, FailedEvent)
    assert (failure.stage, failure.reason, failure.field_path) == (
        Stage.WEBHOOK,
        Reason.TOPIC_MISMATCH,
        "X-Shopify-Topic",
    )
    assert failure.payload == load_case(name)[0]


# --- replay window -------------------------------------------------------------------------------


def test_a_two_year_old_delivery_is_refused():
    """Regression: an old signed delivery re-posted today was accepted."""
    body, case = load_case("shopify_orders_create")
    late = signed("shopify", body, case["headers"], received=RECEIVED + dt.timedelta(days=730))
    failure = only(verify_and_convert(late, CONFIG))
    assert (failure.reason, failure.field_path) == (Reason.STALE_DELIVERY, "updated_at")
    rz_body, rz_case = load_case("razorpay_payment_captured_upi")
    rz_late = signed("razorpay", rz_body, rz_case["headers"], received=RECEIVED + dt.timedelta(days=730))
    failure = only(verify_and_convert(rz_late, CONFIG))
    assert (failure.reason, failure.field_path) == (Reason.STALE_DELIVERY, "created_at")


def test_replay_window_bounds_and_backfills():
    body, case = load_case("shopify_orders_create")
    updated = dt.datetime.fromisoformat("2026-10-14T19:42:12+05:30")  # the body's newest time
    week = dt.timedelta(days=7)

    def outcome(received: dt.datetime, config: WebhookConfig = CONFIG):
        out = only(verify_and_convert(signed("shopify", body, case["headers"], received=received), config))
        return out.reason if isinstance(out, FailedEvent) else "ok"

    assert outcome(updated + week) == "ok"  # inclusive bound
    assert outcome(updated + week + dt.timedelta(seconds=1)) is Reason.STALE_DELIVERY
    two_years = updated + dt.timedelta(days=730)
    wide = CONFIG.model_copy(update={"replay_window_seconds": 800 * 86400.0})
    assert outcome(two_years, wide) == "ok"  # a backfill widens the window ...
    assert outcome(two_years, CONFIG.model_copy(update={"replay_window_seconds": None})) == "ok"  # ... or disables it
    # without received_at the arrival is config.now (else the clock)
    at = CONFIG.model_copy(update={"now": two_years})
    assert outcome(None, at) is Reason.STALE_DELIVERY
    assert outcome(None, at.model_copy(update={"now": updated + dt.timedelta(hours=1)})) == "ok"


def test_the_replay_window_uses_the_signed_body_not_the_triggered_at_header():
    body, case = load_case("razorpay_payment_captured_upi")
    doc = json.loads(body)
    doc["created_at"] = 1666000000  # 2022
    headers = {**case["headers"], "X-Shopify-Triggered-At": RECEIVED.isoformat()}
    failure = only(verify_and_convert(signed("razorpay", json.dumps(doc).encode(), headers), CONFIG))
    assert failure.reason is Reason.STALE_DELIVERY
    del doc["created_at"]
    failure = only(verify_and_convert(signed("razorpay", json.dumps(doc).encode(), headers), CONFIG))
    assert (failure.reason, failure.field_path) == (Reason.MISSING_FIELD, "created_at")


# --- tenant binding ------------------------------------------------------------------------------


def test_one_shops_delivery_posted_to_another_tenant_is_refused():
    """With the app-wide secret, acme's signed order posted to bloom's URL must not become bloom's event."""
    body, case = load_case("shopify_orders_create")
    cross = signed("shopify", body, case["headers"], tenant="bloom-in")
    for config in (CONFIG, TRUSTING):  # a signed shop in the body is never overruled by the header
        failure = only(verify_and_convert(cross, config))
        assert (failure.reason, failure.field_path, failure.tenant_id) == (
            Reason.TENANT_MISMATCH,
            "order_status_url",
            "bloom-in",
        )
        assert "60123456789" in failure.message and "acme-in.myshopify.com" in failure.message


def test_a_rewritten_shop_header_does_not_move_a_signed_order_to_another_tenant():
    """Regression: acme's signed order posted to bloom's URL with the unsigned header rewritten to bloom's
    shop domain was accepted as bloom's event; the shop in the signed order_status_url is acme's."""
    body, case = load_case("shopify_orders_create")
    forged = {**case["headers"], "X-Shopify-Shop-Domain": "bloom-in.myshopify.com"}
    for config in (CONFIG, TRUSTING):
        failure = only(verify_and_convert(signed("shopify", body, forged, tenant="bloom-in"), config))
        assert (failure.reason, failure.field_path, failure.tenant_id) == (
            Reason.TENANT_MISMATCH,
            "order_status_url",
            "bloom-in",
        )
        # the message names both the signed shop and what the header claimed
        assert "60123456789" in failure.message and "bloom-in.myshopify.com" in failure.message


def test_a_signed_shop_binds_the_tenant_and_the_header_must_agree():
    body, case = load_case("shopify_orders_create")
    # the body names www.acme.in / 60123456789: either identifier in the binding is enough
    for bound in ([ACME_SHOP_ID], ["www.acme.in"], ["WWW.Acme.IN", ACME_SHOP_ID]):
        config = WebhookConfig(secrets=SECRETS, bindings={"shopify:acme-in": bound})
        headerless = {k: v for k, v in case["headers"].items() if k != "X-Shopify-Shop-Domain"}
        event = only(verify_and_convert(signed("shopify", body, headerless), config))
        assert isinstance(event, RawEvent) and event.data["tenantId"] == "acme-in", bound
    # a binding with only the myshopify domain does not cover a body that names the storefront domain and id
    only_domain = WebhookConfig(secrets=SECRETS, bindings={"shopify:acme-in": [ACME_SHOP]})
    failure = only(verify_and_convert(signed("shopify", body, case["headers"]), only_domain))
    assert (failure.reason, failure.field_path) == (Reason.TENANT_MISMATCH, "order_status_url")
    # a header naming a shop that is not the tenant's disagrees with the signed body: refused, naming both
    other = {**case["headers"], "X-Shopify-Shop-Domain": "bloom-in.myshopify.com"}
    failure = only(verify_and_convert(signed("shopify", body, other), CONFIG))
    assert (failure.reason, failure.field_path) == (Reason.TENANT_MISMATCH, "X-Shopify-Shop-Domain")
    assert "bloom-in.myshopify.com" in failure.message and "60123456789" in failure.message
    # the domain is compared case-insensitively
    upper = {**case["headers"], "X-Shopify-Shop-Domain": "ACME-IN.myshopify.com"}
    assert isinstance(only(verify_and_convert(signed("shopify", body, upper), CONFIG)), RawEvent)
    # a checkout names its shop in the signed abandoned_checkout_url
    body, case = load_case("shopify_checkouts_create")
    assert isinstance(only(verify_and_convert(signed("shopify", body, case["headers"]), CONFIG)), RawEvent)
    failure = only(verify_and_convert(signed("shopify", body, case["headers"], tenant="bloom-in"), CONFIG))
    assert (failure.reason, failure.field_path) == (Reason.TENANT_MISMATCH, "abandoned_checkout_url")


@pytest.mark.parametrize("name", ["shopify_refunds_create", "shopify_customers_create"])
def test_a_body_naming_no_shop_needs_a_tenant_secret_or_the_explicit_header_opt_in(name: str):
    body, case = load_case(name)
    genuine = signed("shopify", body, case["headers"], received=case_received(case))
    # app-wide secret: nothing signed says which shop this is, so it is refused with the way out
    failure = only(verify_and_convert(genuine, CONFIG))
    assert (failure.reason, failure.field_path) == (Reason.TENANT_MISMATCH, "X-Shopify-Shop-Domain")
    assert "names no shop" in failure.message and "own secret" in failure.message
    assert "trust_shop_header" in failure.message
    # opted in: a bound header is accepted, an unbound or absent one is not
    assert isinstance(only(verify_and_convert(genuine, TRUSTING)), RawEvent)
    forged = signed("shopify", body, case["headers"], tenant="bloom-in", received=case_received(case))
    assert only(verify_and_convert(forged, TRUSTING)).reason is Reason.TENANT_MISMATCH
    headerless = {k: v for k, v in case["headers"].items() if k != "X-Shopify-Shop-Domain"}
    missing = signed("shopify", body, headerless, received=case_received(case))
    assert only(verify_and_convert(missing, TRUSTING)).reason is Reason.TENANT_MISMATCH
    # the documented weakness of the opt-in: the same body with the header rewritten passes as bloom's
    rewritten = {**case["headers"], "X-Shopify-Shop-Domain": "bloom-in.myshopify.com"}
    weak = signed("shopify", body, rewritten, tenant="bloom-in", received=case_received(case))
    assert isinstance(only(verify_and_convert(weak, TRUSTING)), RawEvent)
    # a tenant secret of its own proves the tenant by the signature alone, opt-in or not
    own = WebhookConfig(secrets={"shopify:acme-in": "acme-own-secret"})
    mine = signed("shopify", body, headerless, secret="acme-own-secret", received=case_received(case))
    assert isinstance(only(verify_and_convert(mine, own)), RawEvent)


def test_razorpay_binding_checks_the_signed_account_id():
    body, case = load_case("razorpay_payment_captured_upi")
    cross = signed("razorpay", body, case["headers"], tenant="bloom-in")
    failure = only(verify_and_convert(cross, CONFIG))
    assert (failure.reason, failure.field_path) == (Reason.TENANT_MISMATCH, "account_id")
    # app-wide secret without a binding: refused; a tenant secret of its own: accepted without one
    assert only(verify_and_convert(cross, SECRETS)).reason is Reason.TENANT_MISMATCH
    own = signed("razorpay", body, case["headers"], tenant="bloom-in", secret="bloom-own")
    assert isinstance(only(verify_and_convert(own, {"razorpay:bloom-in": "bloom-own"})), RawEvent)


# --- no contact details as ids -------------------------------------------------------------------


def _contact_values(value) -> set[str]:
    """Every email and phone in a fixture body (any key naming one, and any string with an @)."""
    found: set[str] = set()
    stack = [value]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            for key, child in node.items():
                if key in ("email", "contact_email", "phone", "contact") and isinstance(child, str) and child:
                    found.add(child)
                stack.append(child)
        elif isinstance(node, list):
            stack.extend(node)
        elif isinstance(node, str) and "@" in node:
            found.add(node)
    return found


def test_no_email_or_phone_of_the_fixtures_becomes_an_id():
    """Regression: Shopify orders put the clear email in userId, Razorpay the email or the phone."""
    checked = 0
    for name in GOLDEN:
        body, case = load_case(name)
        contacts = {c.strip().lower() for c in _contact_values(json.loads(body))}
        contacts |= {c.replace(" ", "") for c in contacts} | {c.lstrip("+") for c in contacts}
        req = signed(case["provider"], body, case["headers"], tenant=case["tenant_id"], received=case_received(case))
        for out in verify_and_convert(req, TRUSTING):
            valid = normalize_event(validate_event(out), now=case_received(case) + dt.timedelta(days=1))
            for key in ("userId", "anonymousId"):
                value = str(out.data.get(key) or "").lower()
                assert not any(c in value for c in contacts), (name, key, value)
            for value in (valid.event.user_id, valid.event.anonymous_id):
                assert not any(c in (value or "").lower() for c in contacts), (name, value)
            checked += 1
    assert checked == len(GOLDEN)


# --- signature check mechanics -------------------------------------------------------------------


def test_signature_is_compared_in_constant_time_over_the_raw_bytes(monkeypatch):
    import transforms.webhooks as webhooks

    calls = []
    real = hmac.compare_digest

    def spy(a, b):
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(webhooks.hmac, "compare_digest", spy)
    body, case = load_case("shopify_orders_create")
    req = signed("shopify", body, case["headers"])
    assert isinstance(only(verify_and_convert(req, CONFIG)), RawEvent)
    assert calls == [(shopify_hmac(SECRETS["shopify"], body).encode(), shopify_hmac(SECRETS["shopify"], body).encode())]
    # a forged body is refused before it is parsed: not JSON, yet bad_signature (not malformed_json)
    forged = WebhookRequest("shopify", "acme-in", req.headers, b"{not json", RECEIVED)
    assert only(verify_and_convert(forged, CONFIG)).reason is Reason.BAD_SIGNATURE


def test_a_bare_secrets_mapping_is_a_config_with_defaults():
    config = WebhookConfig.of({"shopify": "s"})
    assert config == WebhookConfig(secrets={"shopify": "s"})
    assert config.replay_window_seconds == 7 * 86400 and config.bindings == {}
    assert WebhookConfig.of(CONFIG) is CONFIG


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
            {"X-Shopify-Topic": "orders/create", "X-Shopify-Shop-Domain": ACME_SHOP},
            b'{"id": 1, "total_price": "lots", "created_at": "2026-10-20T12:00:00+05:30"}',
            Reason.INVALID_VALUE,
            None,
        ),
        (
            "razorpay",
            {},
            b'{"event": "payment.captured", "account_id": "acc_BFQ7uQEaa7j2z7", "created_at": 1792479005, '
            b'"payload": {"payment": {"entity": {"amount": "x"}}}}',
            Reason.INVALID_VALUE,
            None,
        ),
    ],
)
def test_unknown_or_unreadable_deliveries(provider, headers, body, reason, path):
    failure = only(verify_and_convert(signed(provider, body, headers), TRUSTING))
    assert isinstance(failure, FailedEvent)
    assert (failure.stage, failure.reason, failure.field_path) == (Stage.WEBHOOK, reason, path)
    assert failure.payload == body


def test_a_provider_without_a_secret_for_the_tenant_is_not_authentic():
    failure = only(verify_and_convert(WebhookRequest("stripe", "acme-in", {}, b"{}"), CONFIG))
    assert failure.reason is Reason.BAD_SIGNATURE and "no secret configured for stripe:acme-in" in failure.message


# --- generic webhooks ----------------------------------------------------------------------------


def test_generic_webhook_forces_the_tenant_and_fills_ids():
    lines = [
        {"type": "track", "event": "Lead Captured", "anonymousId": "a-1", "tenantId": "someone-else"},
        {"type": "identify", "userId": "u-1", "messageId": "own-id", "traits": {"email": "X@Y.IN"}},
    ]
    body = ("\n".join(json.dumps(line) for line in lines)).encode()
    outs = verify_and_convert(signed("generic", body, {"X-Livora-Webhook-Id": "d-1"}), CONFIG)
    assert [o.data["tenantId"] for o in outs] == ["acme-in", "acme-in"]
    digest = hashlib.sha256(body).hexdigest()[:32]
    assert [o.data["messageId"] for o in outs] == [f"webhook:{digest}:0", "own-id"]
    # the unsigned delivery id does not make a re-post of the same body new events
    again = verify_and_convert(signed("generic", body, {"X-Livora-Webhook-Id": "d-2"}), CONFIG)
    assert [o.data["messageId"] for o in again] == [f"webhook:{digest}:0", "own-id"]
    assert all(o.data["source"] == "webhook" for o in outs)
    assert all(isinstance(validate_event(o), ValidEvent) for o in outs)


# --- the file/Kinesis wrapper --------------------------------------------------------------------


def test_wrapper_round_trip_through_decode_record():
    body, case = load_case("shopify_orders_create")
    req = signed("shopify", body, case["headers"])
    direct = verify_and_convert(req, CONFIG, source_ref="kinesis:s/1")
    assert isinstance(only(direct), RawEvent)
    via_decode = decode_record(wrap_webhook(req), source_ref="kinesis:s/1", webhook_secrets=CONFIG)
    assert [o.data for o in via_decode] == [o.data for o in direct]
    assert [o.payload for o in via_decode] == [o.payload for o in direct]
    assert via_decode[0].source_ref == "kinesis:s/1"


def test_wrapper_received_at_dates_the_delivery_and_a_bare_secrets_mapping_needs_no_less():
    body, case = load_case("shopify_orders_create")
    late = wrap_webhook(signed("shopify", body, case["headers"], received=RECEIVED + dt.timedelta(days=30)))
    assert only(decode_record(late, webhook_secrets=CONFIG)).reason is Reason.STALE_DELIVERY
    # the older call form (secrets only) gets the same window, and an app-wide secret needs a binding
    assert only(decode_record(late, webhook_secrets=SECRETS)).reason is Reason.TENANT_MISMATCH
    own = {"shopify:acme-in": SECRETS["shopify"]}
    assert only(decode_record(late, webhook_secrets=own)).reason is Reason.STALE_DELIVERY
    fresh = wrap_webhook(signed("shopify", body, case["headers"]))
    assert isinstance(only(decode_record(fresh, webhook_secrets=own)), RawEvent)


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
    failure = only(decode_record(json.dumps({"_webhook": inner}).encode(), webhook_secrets=CONFIG))
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
# Tenant secrets of their own (no binding needed) and no replay window, so odd bodies reach the converters;
# CONFIG too, so the binding, topic and replay checks see them as well.
FUZZ = WebhookConfig(
    secrets={f"{p}:acme-in": s for p, s in SECRETS.items()}, bindings=BINDINGS, replay_window_seconds=None
)
configs = st.sampled_from([FUZZ, FUZZ.model_copy(update={"bindings": {}}), CONFIG])
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
        "updated_at",
        "cancelled_at",
        "processed_at",
        "order_id",
        "order_number",
        "financial_status",
        "abandoned_checkout_url",
        "orders_count",
    ]
)


@settings(max_examples=150, deadline=None)
@given(st.sampled_from(sorted(SHOPIFY_TOPICS)), st.dictionaries(shopify_keys, json_value, max_size=8), configs)
def test_shopify_converters_never_raise(topic: str, doc: dict, config: WebhookConfig):
    headers = {"X-Shopify-Topic": topic, "X-Shopify-Webhook-Id": "w", "X-Shopify-Shop-Domain": ACME_SHOP}
    req = signed("shopify", json.dumps(doc).encode(), headers)
    outs = verify_and_convert(req, config)
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
    configs,
)
def test_razorpay_converters_never_raise(kind: str, payload: dict, created_at, config: WebhookConfig):
    body = json.dumps({"event": kind, "account_id": ACME_RAZORPAY, "payload": payload, "created_at": created_at})
    outs = verify_and_convert(signed("razorpay", body.encode(), {}), config)
    assert len(outs) == 1 and isinstance(outs[0], RawEvent | FailedEvent)


# --- generic providers by name ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "ok"),
    [
        ("stripe", True),
        ("acme-erp", True),
        ("my_app2", True),
        ("", False),
        ("Stripe", False),
        ("2checkout", False),
        ("a" * 33, False),
        ("../shopify", False),
        ("stripe:acme-in", False),
        (None, False),
    ],
)
def test_provider_names(name, ok):
    assert is_provider_name(name) is ok


def test_a_named_generic_provider_converts_through_the_pipelines_decoder():
    """What the collector puts on Kinesis for /webhooks/stripe/acme-in, read back as the pipeline reads it."""
    body = b'{"type":"track","event":"Charge Succeeded","userId":"cus_1","messageId":"evt_1"}'
    secret = "whsec_acme_stripe"
    request = WebhookRequest("stripe", "acme-in", {"X-Livora-Signature": sign("stripe", secret, body)}, body, RECEIVED)
    record = wrap_webhook(request)
    [event] = decode_record(record, webhook_secrets={"stripe:acme-in": secret})
    assert isinstance(event, RawEvent)
    assert (event.data["tenantId"], event.data["source"], event.data["messageId"]) == ("acme-in", "stripe", "evt_1")
    assert event.data["event"] == "Charge Succeeded"
    # a provider-wide secret does not count for a named provider (nothing binds its sender to a tenant)
    [refused] = decode_record(record, webhook_secrets={"stripe": secret})
    assert refused.reason == Reason.BAD_SIGNATURE
    # another tenant's stripe secret does not verify it either
    [refused] = decode_record(record, webhook_secrets={"stripe:beta-co": secret})
    assert refused.reason == Reason.BAD_SIGNATURE


def test_a_name_that_is_not_a_provider_name_is_refused_before_any_lookup():
    body = b'{"type":"track","event":"x","userId":"u"}'
    request = WebhookRequest("Stripe/../x", "acme-in", {"X-Livora-Signature": sign("x", "s", body)}, body, RECEIVED)
    assert only(verify_and_convert(request, {"Stripe/../x:acme-in": "s"})).reason == Reason.UNKNOWN_WEBHOOK
