"""The collector over real HTTP on the moto server's Kinesis: the official Segment library as client, webhooks
cross-checked with the Razorpay SDK, hostile requests, Kinesis outages, CORS, and the Lambda (Mangum) entry."""

from __future__ import annotations

import base64
import datetime as dt
import gzip
import json
import socket
import threading
import time
import uuid
from pathlib import Path

import httpx
import orjson
import pytest

from connectors.collector import CollectorConfig, Delivery, build_app
from connectors.collector.metrics import CollectorMetrics
from connectors.collector.spool import Spool
from pipelines.collect import build_collector
from tests.connectors.collector_helpers import metric, read_stream, serving, stream_events
from tests.connectors.kinesis_helpers import make_stream
from transforms.decode import RawEvent, decode_record
from transforms.webhooks import WebhookConfig, sign, verify_and_convert, webhook_request_from_wrapper

pytestmark = pytest.mark.integration

WRITE_KEYS = {"wk_acme_live": "acme-in", "wk_beta_live": "beta-co"}
SECRETS = {
    "razorpay:acme-in": "rzp_whsec_acme_123",
    "razorpay:beta-co": "rzp_whsec_beta_456",
    "generic:beta-co": "gen_secret_beta",
    "stripe:beta-co": "whsec_beta_stripe",
    "shopify:acme-in": "shpss_acme_789",
}
BINDINGS = {"shopify:acme-in": ["acme-in.myshopify.com"]}
SHOPIFY_ORDER = Path(__file__).resolve().parents[1] / "cases" / "webhooks" / "shopify_orders_create.json"


def _shopify_order(days_old: int) -> bytes:
    """The case's signed-as-sent order body with its dates moved to ``days_old`` days ago (the replay window is 7)."""
    raw = SHOPIFY_ORDER.read_bytes()
    when = (dt.datetime.now(dt.UTC) - dt.timedelta(days=days_old)).date().isoformat().encode()
    return raw.replace(b"2026-10-14", when)


def _shopify_headers(body: bytes, **overrides: str) -> dict:
    headers = {
        "X-Shopify-Topic": "orders/create",
        "X-Shopify-Hmac-Sha256": sign("shopify", SECRETS["shopify:acme-in"], body),
        "X-Shopify-Shop-Domain": "acme-in.myshopify.com",
        "X-Shopify-Webhook-Id": "b54557e4-0001",
    }
    return {**headers, **overrides}


def _auth(key: str) -> dict:
    return {"Authorization": "Basic " + base64.b64encode(f"{key}:".encode()).decode()}


def _razorpay_body(payment_id: str = "pay_Q1", account: str | None = None) -> bytes:
    body = {
        "entity": "event",
        "event": "payment.captured",
        "created_at": int(time.time()),
        "payload": {
            "payment": {
                "entity": {
                    "id": payment_id,
                    "amount": 49900,
                    "currency": "INR",
                    "status": "captured",
                    "method": "upi",
                    "email": "a@example.com",
                    "notes": {"user_id": "u-42"},
                }
            }
        },
    }
    if account:
        body["account_id"] = account
    return json.dumps(body, separators=(",", ":")).encode()


@pytest.fixture
def collector(aws, tmp_path):
    """A collector on a fresh 2-shard stream: (base URL, Kinesis client, stream, app)."""
    stream = f"events-{uuid.uuid4().hex[:8]}"
    client = make_stream(aws, stream, 2)
    app = build_collector(
        stream=stream,
        write_keys=WRITE_KEYS,
        webhooks=WebhookConfig(secrets=SECRETS, bindings=BINDINGS),
        aws=aws,
        body_timeout_s=1.0,
    )
    with serving(app) as url:
        yield url, client, stream, app


def test_official_segment_library_events_arrive_in_kinesis(collector):
    from segment.analytics.client import Client

    url, client, stream, _ = collector
    errors = []
    analytics = Client(
        write_key="wk_acme_live", host=url, sync_mode=True, on_error=lambda e, b: errors.append(e), max_retries=0
    )
    _, track = analytics.track(
        user_id="u-1", event="Order Completed", properties={"order_id": "o-9", "revenue": 499.0, "currency": "INR"}
    )
    _, identify = analytics.identify(user_id="u-1", traits={"plan": "gold"})
    _, page = analytics.page(anonymous_id="anon-7", name="Home", properties={"path": "/"})
    analytics.flush()
    assert errors == []
    events = {e["messageId"]: e for e in stream_events(client, stream)}
    assert set(events) == {track["messageId"], identify["messageId"], page["messageId"]}
    t, i, p = events[track["messageId"]], events[identify["messageId"]], events[page["messageId"]]
    assert {e["tenantId"] for e in events.values()} == {"acme-in"}
    assert (t["type"], t["event"], t["userId"]) == ("track", "Order Completed", "u-1")
    assert t["properties"] == {"order_id": "o-9", "revenue": 499.0, "currency": "INR"}
    assert (i["type"], i["traits"]) == ("identify", {"plan": "gold"})
    assert (p["type"], p["anonymousId"], p["name"]) == ("page", "anon-7", "Home")
    assert all(e["sentAt"] and e["receivedAt"] and "writeKey" not in e for e in events.values())
    assert t["context"]["library"]["name"] == "analytics-python"
    assert {k for k, _ in read_stream(client, stream)} == {"u-1", "anon-7"}  # partition key = the person


def test_gzip_batch_and_cors_preflight(collector):
    url, client, stream, _ = collector
    batch = [{"type": "track", "event": "Viewed", "anonymousId": f"a{i % 7}", "messageId": f"m{i}"} for i in range(100)]
    body = gzip.compress(orjson.dumps({"batch": batch, "writeKey": "wk_beta_live"}))
    r = httpx.post(f"{url}/v1/batch", content=body, headers={"Content-Encoding": "gzip", "Content-Type": "text/plain"})
    assert r.status_code == 200 and r.json() == {"success": True}
    records = read_stream(client, stream)
    assert sorted(orjson.loads(d)["messageId"] for _, d in records) == sorted(f"m{i}" for i in range(100))
    assert all(orjson.loads(d)["tenantId"] == "beta-co" and k == orjson.loads(d)["anonymousId"] for k, d in records)
    pre = httpx.options(
        f"{url}/v1/track",
        headers={
            "Origin": "https://shop.acme.in",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type,authorization",
        },
    )
    assert pre.status_code == 200 and pre.headers["access-control-allow-origin"] == "*"
    assert "POST" in pre.headers["access-control-allow-methods"]


def test_client_sent_received_at_is_replaced_by_the_arrival_time(collector):
    url, client, stream, _ = collector
    before = dt.datetime.now(dt.UTC)
    event = {"event": "x", "userId": "u", "receivedAt": "1999-01-01T00:00:00Z", "sentAt": "1999-01-01T00:00:00Z"}
    r = httpx.post(f"{url}/v1/track", content=orjson.dumps(event), headers=_auth("wk_acme_live"))
    after = dt.datetime.now(dt.UTC)
    assert r.status_code == 200
    [on_stream] = stream_events(client, stream)
    received = dt.datetime.fromisoformat(on_stream["receivedAt"].replace("Z", "+00:00"))
    assert before - dt.timedelta(milliseconds=1) <= received <= after
    assert on_stream["sentAt"] == "1999-01-01T00:00:00Z"  # sentAt is the client's to give (skew = receivedAt - sentAt)


def test_razorpay_webhook_signature_matches_the_official_sdk_and_reaches_kinesis(collector):
    import razorpay
    from razorpay.errors import SignatureVerificationError

    url, client, stream, _ = collector
    body = _razorpay_body()
    signature = sign("razorpay", SECRETS["razorpay:acme-in"], body)
    utility = razorpay.Client(auth=("rzp_test_key", "unused")).utility
    assert utility.verify_webhook_signature(body.decode(), signature, SECRETS["razorpay:acme-in"])
    r = httpx.post(f"{url}/webhooks/razorpay/acme-in", content=body, headers={"X-Razorpay-Signature": signature})
    assert r.status_code == 200
    # a body the SDK refuses, the collector refuses too
    tampered = body.replace(b"49900", b"99")
    with pytest.raises(SignatureVerificationError):
        utility.verify_webhook_signature(tampered.decode(), signature, SECRETS["razorpay:acme-in"])
    r = httpx.post(f"{url}/webhooks/razorpay/acme-in", content=tampered, headers={"X-Razorpay-Signature": signature})
    assert r.status_code == 401
    [(key, data)] = read_stream(client, stream)
    assert key == "u-42"
    request = webhook_request_from_wrapper(orjson.loads(data))
    assert request.body == body and request.tenant_id == "acme-in" and request.received_at is not None
    [event] = verify_and_convert(request, WebhookConfig(secrets=SECRETS))  # what the pipeline does downstream
    assert event.data["event"] == "Payment Captured" and event.data["tenantId"] == "acme-in"
    assert event.data["messageId"] == "razorpay:payment.captured:pay_Q1"


def test_signed_shopify_order_reaches_kinesis_and_a_redelivery_keeps_its_message_id(collector):
    url, client, stream, _ = collector
    body = _shopify_order(days_old=1)
    first = httpx.post(f"{url}/webhooks/shopify/acme-in", content=body, headers=_shopify_headers(body))
    # the same signed body again under another delivery id (a provider retry, or a replay by whoever holds it)
    again = httpx.post(
        f"{url}/webhooks/shopify/acme-in",
        content=body,
        headers=_shopify_headers(body, **{"X-Shopify-Webhook-Id": "b54557e4-0002"}),
    )
    assert (first.status_code, again.status_code) == (200, 200)
    records = read_stream(client, stream)
    assert [key for key, _ in records] == ["7012345678901", "7012345678901"]  # the Shopify customer: one shard
    config = WebhookConfig(secrets=SECRETS, bindings=BINDINGS)
    converted = [only for _, data in records for only in decode_record(data, webhook_secrets=config)]
    assert all(isinstance(e, RawEvent) for e in converted), converted
    # the message id comes from the signed body, so the downstream dedupe makes the two one event
    assert [e.data["messageId"] for e in converted] == ["shopify:order:5678901234567:completed"] * 2
    assert [e.data["context"]["webhook"]["delivery_id"] for e in converted] == ["b54557e4-0001", "b54557e4-0002"]
    order = converted[0].data
    assert (order["event"], order["tenantId"], order["userId"]) == ("Order Completed", "acme-in", "7012345678901")
    assert order["properties"]["order_id"] == "5678901234567"


def test_shopify_deliveries_the_edge_refuses(collector):
    url, client, stream, _ = collector
    fresh, stale = _shopify_order(days_old=1), _shopify_order(days_old=30)
    cases = [
        # a shop not bound to the tenant (the domain header, checked against WebhookConfig.bindings)
        (fresh, {"X-Shopify-Shop-Domain": "other-shop.myshopify.com"}, 403, "tenant_mismatch"),
        # a correctly signed body older than the 7-day replay window
        (stale, {}, 400, "stale_delivery"),
        # the unsigned topic header contradicts the signed body (an order that was not cancelled)
        (fresh, {"X-Shopify-Topic": "orders/cancelled"}, 400, "topic_mismatch"),
    ]
    for body, overrides, status, reason in cases:
        r = httpx.post(f"{url}/webhooks/shopify/acme-in", content=body, headers=_shopify_headers(body, **overrides))
        assert (r.status_code, r.json()["error"]) == (status, reason), overrides
    assert read_stream(client, stream) == []
    text = httpx.get(f"{url}/metrics").text
    assert [metric(text, "livora_collector_rejects_total", reason=r) for _, _, _, r in cases] == [1, 1, 1]


def test_app_wide_shopify_secret_binds_by_the_signed_shop_not_the_header(aws):
    """One public app for every shop: acme's signed order re-posted to bloom's URL with the unsigned
    X-Shopify-Shop-Domain rewritten to bloom's shop is 403 (the signed order_status_url names acme's shop);
    a refund, whose body names no shop, is 403 too unless the config opts in to the header."""
    stream = f"events-{uuid.uuid4().hex[:8]}"
    client = make_stream(aws, stream, 1)
    app_secret = "shpss_public_app_secret"
    bindings = {
        "shopify:acme-in": ["acme-in.myshopify.com", "60123456789"],
        "shopify:bloom-in": ["bloom-in.myshopify.com", "60987654321"],
    }
    config = WebhookConfig(secrets={"shopify": app_secret}, bindings=bindings)
    order = _shopify_order(days_old=1)
    refund = json.dumps(
        {
            "id": 929361462,
            "order_id": 5678901234567,
            "created_at": dt.datetime.now(dt.UTC).isoformat(),
            "transactions": [{"kind": "refund", "status": "success", "amount": "10.00", "currency": "INR"}],
            "refund_line_items": [],
        }
    ).encode()

    def post(url: str, tenant: str, body: bytes, topic: str, shop: str) -> tuple[int, str | None]:
        headers = {
            "X-Shopify-Topic": topic,
            "X-Shopify-Hmac-Sha256": sign("shopify", app_secret, body),
            "X-Shopify-Shop-Domain": shop,
            "X-Shopify-Webhook-Id": uuid.uuid4().hex,
        }
        r = httpx.post(f"{url}/webhooks/shopify/{tenant}", content=body, headers=headers)
        return r.status_code, r.json().get("error")

    app = build_collector(stream=stream, write_keys={}, webhooks=config, aws=aws)
    with serving(app) as url:
        assert post(url, "bloom-in", order, "orders/create", "bloom-in.myshopify.com") == (403, "tenant_mismatch")
        assert post(url, "bloom-in", refund, "refunds/create", "bloom-in.myshopify.com") == (403, "tenant_mismatch")
        assert post(url, "acme-in", order, "orders/create", "acme-in.myshopify.com")[0] == 200
    assert len(read_stream(client, stream)) == 1
    trusting = build_collector(
        stream=stream, write_keys={}, webhooks=config.model_copy(update={"trust_shop_header": True}), aws=aws
    )
    with serving(trusting) as url:
        assert post(url, "acme-in", refund, "refunds/create", "acme-in.myshopify.com")[0] == 200
        # the signed order still wins over the header with the opt-in
        assert post(url, "bloom-in", order, "orders/create", "bloom-in.myshopify.com") == (403, "tenant_mismatch")
    assert len(read_stream(client, stream)) == 2


def test_any_provider_with_a_tenant_secret_is_a_generic_webhook_route(collector):
    url, client, stream, _ = collector
    body = orjson.dumps(
        [
            {"type": "track", "event": "Charge Succeeded", "userId": "cus_9", "messageId": "evt_9"},
            {"type": "identify", "userId": "cus_9", "traits": {"plan": "pro"}},
        ]
    )
    signature = sign("stripe", SECRETS["stripe:beta-co"], body)
    assert signature.startswith("sha256=")
    r = httpx.post(f"{url}/webhooks/stripe/beta-co", content=body, headers={"X-Livora-Signature": signature})
    assert r.status_code == 200
    refused = [
        # configured provider, but no secret for this tenant: not authentic
        ("/webhooks/stripe/acme-in", {"X-Livora-Signature": signature}, 401, "bad_signature"),
        ("/webhooks/stripe/beta-co", {"X-Livora-Signature": "sha256=" + "0" * 64}, 401, "bad_signature"),
        # no secret names it / not a provider name: no such route
        ("/webhooks/paypal/beta-co", {"X-Livora-Signature": signature}, 404, "unknown_provider"),
        ("/webhooks/Stripe/beta-co", {"X-Livora-Signature": signature}, 404, "unknown_provider"),
        ("/webhooks/stripe:beta-co/beta-co", {"X-Livora-Signature": signature}, 404, "unknown_provider"),
    ]
    for path, headers, status, reason in refused:
        r = httpx.post(f"{url}{path}", content=body, headers=headers)
        assert (path, r.status_code, r.json()["error"]) == (path, status, reason)
    [(key, data)] = read_stream(client, stream)
    assert key == "cus_9"
    # the pipeline's own conversion of what is on Kinesis
    events = decode_record(data, source_ref="kinesis:test", webhook_secrets=WebhookConfig(secrets=SECRETS))
    assert all(isinstance(e, RawEvent) for e in events)
    assert [(e.data["type"], e.data["tenantId"], e.data["source"]) for e in events] == [
        ("track", "beta-co", "stripe"),
        ("identify", "beta-co", "stripe"),
    ]
    assert events[0].data["messageId"] == "evt_9"
    text = httpx.get(f"{url}/metrics").text
    assert metric(text, "livora_collector_requests_total", route="/webhooks/stripe", status="200") == 1
    assert metric(text, "livora_collector_requests_total", route="/webhooks/stripe", status="401") == 2
    assert metric(text, "livora_collector_requests_total", route="/webhooks/unknown", status="404") == 3
    assert metric(text, "livora_collector_rejects_total", reason="unknown_provider") == 3
    assert metric(text, "livora_collector_events_total", kind="webhook:stripe") == 1


def _slow_body(url: str, seconds: float) -> tuple[int, float]:
    """POST a 1000-byte body one byte every 0.2 s; returns (status, seconds until the answer)."""
    host, port = url.removeprefix("http://").split(":")
    started = time.monotonic()
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(
            b"POST /v1/track HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n"
            + b"Authorization: Basic "
            + base64.b64encode(b"wk_acme_live:")
            + b"\r\n\r\n"
        )
        sock.settimeout(0.2)
        answer = b""
        while time.monotonic() - started < seconds and not answer:
            try:
                sock.sendall(b" ")
                answer = sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                break
    return int(answer.split(b" ")[1]) if answer else 0, time.monotonic() - started


def test_hostile_requests_are_refused_counted_and_never_reach_kinesis(collector):
    url, client, stream, _ = collector
    track = orjson.dumps({"event": "x", "userId": "u"})
    rzp = _razorpay_body("pay_X")
    rzp_sig = sign("razorpay", SECRETS["razorpay:acme-in"], rzp)
    cases = [
        ("unknown_write_key", 401, "/v1/track", track, _auth("wk_nope")),
        ("missing_write_key", 401, "/v1/track", track, {}),
        ("unknown_write_key", 401, "/v1/track", orjson.dumps({"event": "x", "writeKey": "wk_guess"}), {}),
        ("malformed_json", 400, "/v1/track", b'{"event": "x",', _auth("wk_acme_live")),
        (
            "tenant_mismatch",
            400,
            "/v1/track",
            orjson.dumps({"event": "x", "tenantId": "beta-co"}),
            _auth("wk_acme_live"),
        ),
        ("oversize", 400, "/v1/track", orjson.dumps({"event": "x", "p": "y" * 40_000}), _auth("wk_acme_live")),
        (
            "oversize",
            400,
            "/v1/batch",
            orjson.dumps({"batch": [{"type": "track", "p": "y" * 20_000}] * 30}),
            _auth("wk_acme_live"),
        ),
        # acme's signed delivery posted to beta's path (beta's secret does not verify it)
        ("bad_signature", 401, "/webhooks/razorpay/beta-co", rzp, {"X-Razorpay-Signature": rzp_sig}),
        # a valid write key is no webhook credential
        ("bad_signature", 401, "/webhooks/razorpay/acme-in", rzp, _auth("wk_acme_live")),
        ("bad_signature", 401, "/webhooks/razorpay/acme-in", rzp, {"X-Razorpay-Signature": "0" * 64}),
        ("bad_signature", 401, "/webhooks/razorpay/acme-in", rzp, {"X-Razorpay-Signature": rzp_sig[:32]}),
        # the same JSON re-encoded (spaces, another key order) does not carry the signature of the original bytes
        (
            "bad_signature",
            401,
            "/webhooks/razorpay/acme-in",
            json.dumps(json.loads(rzp), indent=1, sort_keys=True).encode(),
            {"X-Razorpay-Signature": rzp_sig},
        ),
        ("invalid_tenant", 400, "/webhooks/razorpay/ACME..in", rzp, {"X-Razorpay-Signature": rzp_sig}),
        ("unknown_provider", 404, "/webhooks/paypal/acme-in", rzp, {}),
        ("oversize", 413, "/webhooks/generic/beta-co", b"[" + b"1," * 300_000 + b"1]", {}),
    ]
    for reason, status, path, body, headers in cases:
        r = httpx.post(f"{url}{path}", content=body, headers=headers)
        assert (path, r.status_code, r.json()["error"]) == (path, status, reason)
    bomb = gzip.compress(b"\0" * (100 << 20), compresslevel=9)
    r = httpx.post(f"{url}/v1/batch", content=bomb, headers={**_auth("wk_acme_live"), "Content-Encoding": "gzip"})
    assert (r.status_code, r.json()["error"]) == (400, "gzip_bomb")
    status, took = _slow_body(url, seconds=5)
    assert status == 408 and took < 3  # the body timeout is 1 s here
    assert read_stream(client, stream) == []
    text = httpx.get(f"{url}/metrics").text
    expected = {
        "unknown_write_key": 2,
        "missing_write_key": 1,
        "malformed_json": 1,
        "tenant_mismatch": 1,
        "oversize": 3,
        "bad_signature": 5,
        "invalid_tenant": 1,
        "unknown_provider": 1,
        "gzip_bomb": 1,
        "body_timeout": 1,
    }
    assert {r: metric(text, "livora_collector_rejects_total", reason=r) for r in expected} == expected
    assert metric(text, "livora_collector_events_total", kind="segment") == 0


def test_kinesis_down_is_503_without_a_spool_and_200_then_delivered_with_one(aws, tmp_path):
    stream = f"late-{uuid.uuid4().hex[:8]}"  # does not exist yet: every PutRecords fails
    event = orjson.dumps({"event": "x", "userId": "u", "messageId": "m-late"})
    direct = build_collector(stream=stream, write_keys=WRITE_KEYS, aws=aws, put_timeout_s=0.5)
    with serving(direct) as url:
        r = httpx.post(f"{url}/v1/track", content=event, headers=_auth("wk_acme_live"))
        assert r.status_code == 503 and r.headers["retry-after"] == "5"
        assert httpx.get(f"{url}/ready").status_code == 503
    spooled = build_collector(
        stream=stream, write_keys=WRITE_KEYS, aws=aws, put_timeout_s=0.5, spool_dir=str(tmp_path / "spool")
    )
    with serving(spooled) as url:
        r = httpx.post(f"{url}/v1/track", content=event, headers=_auth("wk_acme_live"))
        assert r.status_code == 200
        assert metric(httpx.get(f"{url}/metrics").text, "livora_collector_spooled_records_total") == 1
        client = make_stream(aws, stream, 1)  # Kinesis comes back: the drainer re-sends
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not read_stream(client, stream):
            time.sleep(0.2)
        assert [e["messageId"] for e in stream_events(client, stream)] == ["m-late"]
        assert metric(httpx.get(f"{url}/metrics").text, "livora_collector_spool_depth_records") == 0
    assert Spool(str(tmp_path / "spool")).pending_records == 0


def test_lambda_handler_serves_an_api_gateway_event(aws, monkeypatch, tmp_path):
    import pipelines.collect as collect

    stream = f"lambda-{uuid.uuid4().hex[:8]}"
    client = make_stream(aws, stream, 1)
    keys = tmp_path / "keys.json"
    keys.write_text(json.dumps(WRITE_KEYS))
    monkeypatch.setenv("LIVORA_COLLECT_STREAM", stream)
    monkeypatch.setenv("LIVORA_WRITE_KEYS", str(keys))
    monkeypatch.setenv("LIVORA_AWS_PROFILE", "local")
    monkeypatch.setenv("LIVORA_AWS_ENDPOINT", aws.endpoint_url)
    monkeypatch.setattr(collect, "_lambda_app", None)
    body = orjson.dumps({"event": "Signed Up", "userId": "u-l", "messageId": "m-lambda"})
    now = dt.datetime.now(dt.UTC)
    event = {  # API Gateway HTTP API, payload format 2.0
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": "/v1/track",
        "rawQueryString": "",
        "headers": {**{k.lower(): v for k, v in _auth("wk_beta_live").items()}, "content-type": "application/json"},
        "requestContext": {
            "accountId": "123456789012",
            "apiId": "api",
            "domainName": "collect.example.com",
            "domainPrefix": "collect",
            "http": {
                "method": "POST",
                "path": "/v1/track",
                "protocol": "HTTP/1.1",
                "sourceIp": "203.0.113.9",
                "userAgent": "t",
            },
            "requestId": "r1",
            "routeKey": "$default",
            "stage": "$default",
            "time": now.strftime("%d/%b/%Y:%H:%M:%S +0000"),
            "timeEpoch": int(now.timestamp() * 1000),
        },
        "body": base64.b64encode(body).decode(),
        "isBase64Encoded": True,
    }
    response = collect.lambda_handler(event, None)
    assert response["statusCode"] == 200, response
    [record] = stream_events(client, stream)
    assert (record["messageId"], record["tenantId"], record["context"]["ip"]) == ("m-lambda", "beta-co", "203.0.113.9")
    event["headers"] = {"content-type": "application/json"}
    assert collect.lambda_handler(event, None)["statusCode"] == 401


def test_lambda_template_points_at_the_handler_and_grants_only_what_it_uses():
    import importlib
    import pathlib

    import yaml

    template = yaml.safe_load(pathlib.Path("infra/collector_lambda.yaml").read_text())
    function = template["Resources"]["CollectorFunction"]["Properties"]
    [handler] = function["ImageConfig"]["Command"]
    module, _, name = handler.rpartition(".")
    assert callable(getattr(importlib.import_module(module), name))
    assert pathlib.Path("infra/Dockerfile.collector").read_text().strip().endswith(f'CMD ["{handler}"]')
    actions = {a for statement in function["Policies"][0]["Statement"] for a in statement["Action"]}
    assert actions == {
        "kinesis:PutRecords",
        "kinesis:PutRecord",
        "kinesis:DescribeStreamSummary",
        "secretsmanager:GetSecretValue",
    }
    paths = {e["Properties"]["Path"] for e in function["Events"].values()}
    assert paths == {"/v1/{kind}", "/webhooks/{provider}/{tenant}", "/health"}


class _GatedSink:
    """A Kinesis stand-in that holds every PutRecords until the test opens the gate: records stay pending."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.records = 0

    def put(self, records) -> None:
        assert self.gate.wait(20), "gate never opened"
        self.records += len(records)


def test_full_buffer_answers_429_with_retry_after_and_ready_503():
    sink, metrics = _GatedSink(), CollectorMetrics()
    delivery = Delivery(sink, metrics, max_pending=100)
    app = build_app(CollectorConfig(write_keys=WRITE_KEYS, retry_after_s=7), delivery, metrics)
    batch = lambda n, tag: {"batch": [{"type": "track", "event": "x", "userId": f"{tag}{i}"} for i in range(n)]}  # noqa: E731
    with serving(app) as url:
        assert httpx.get(f"{url}/ready").status_code == 200
        held: list[httpx.Response] = []
        waiting = threading.Thread(
            target=lambda: held.append(
                httpx.post(f"{url}/v1/batch", json=batch(95, "a"), headers=_auth("wk_acme_live"), timeout=30)
            )
        )
        waiting.start()
        deadline = time.monotonic() + 10
        while metric(httpx.get(f"{url}/metrics").text, "livora_collector_pending_records") < 95:
            assert time.monotonic() < deadline, "the first batch never became pending"
            time.sleep(0.02)
        ready = httpx.get(f"{url}/ready")
        assert ready.status_code == 503 and "retry-after" in ready.headers  # 95 of 100: past 90 %, take us out
        r = httpx.post(f"{url}/v1/batch", json=batch(10, "b"), headers=_auth("wk_acme_live"))
        assert (r.status_code, r.json()["error"], r.headers["retry-after"]) == (429, "overloaded", "7")
        sink.gate.set()
        waiting.join(20)
        assert [h.status_code for h in held] == [200]
        assert httpx.get(f"{url}/ready").status_code == 200
        text = httpx.get(f"{url}/metrics").text
    assert sink.records == 95  # the refused batch was never taken
    assert metric(text, "livora_collector_rejects_total", reason="overloaded") == 1
