"""Signed webhooks (Shopify, Razorpay, generic) → Segment-style events.

Any other provider name (``stripe``, ``acme-erp``: :func:`is_provider_name`) is a *generic* provider:
its body is Segment-style events signed HMAC-SHA256 in ``X-Livora-Signature: sha256=<hex>``, with the
tenant's own secret ``"<provider>:<tenant_id>"`` (no provider-wide secret: nothing binds such a
sender to a tenant), and its events get ``source = <provider>``.

The signature is checked over the *raw* body before anything is parsed (an attacker's JSON never
reaches the converter), with :func:`hmac.compare_digest`. Only the body is signed: every header
(delivery id, Shopify topic, shop domain, trigger time) can be changed by whoever re-posts a signed
body. So everything that decides what an event *is* comes from the body:

* ``messageId`` is built from the body's own ids (``shopify:order:<id>:completed``,
  ``razorpay:payment.captured:<payment id>``): a provider retry, or the same signed body posted again
  with a new delivery id, is the same event and dedupes downstream. The header delivery id is kept as
  ``context.webhook.delivery_id`` (informational).
* a Shopify topic that the body contradicts (an uncancelled order posted as ``orders/cancelled``) is a
  ``topic_mismatch`` failure;
* a body whose own time is older than the replay window (7 days by default) before its arrival is a
  ``stale_delivery`` failure;
* a tenant is bound to its Shopify shops / Razorpay account ids; with a provider-wide secret the
  binding is required and is checked against *signed* content (the shop in a Shopify order's
  ``order_status_url``, the Razorpay ``account_id``); a Shopify body that names no shop cannot be bound
  under an app-wide secret (``tenant_mismatch``) unless ``trust_shop_header`` says otherwise.

Secrets are looked up as ``"<provider>:<tenant_id>"`` first, then ``"<provider>"``; all settings are
one :class:`WebhookConfig`.

Webhooks can travel through files and Kinesis wrapped as one JSON object
(:func:`wrap_webhook`), which :func:`transforms.decode.decode_record` recognises::

    {"_webhook": {"provider": "shopify", "tenant_id": "acme-in", "headers": {...},
                  "body_b64": "...", "received_at": "2026-10-01T10:00:00Z"}}
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import hmac
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any
from urllib.parse import urlsplit

import orjson
from pydantic import BaseModel, ConfigDict, Field

from schemas import PIPELINE_VERSION
from schemas.failures import FailedEvent, Reason, Stage
from transforms.decode import WEBHOOK_KEY, RawEvent

__all__ = [
    "DEFAULT_REPLAY_WINDOW_SECONDS",
    "PROVIDERS",
    "RAZORPAY_EVENTS",
    "SHOPIFY_TOPICS",
    "Headers",
    "WebhookConfig",
    "WebhookRequest",
    "is_provider_name",
    "sign",
    "verify_and_convert",
    "webhook_request_from_wrapper",
    "wrap_webhook",
]

PROVIDERS = ("shopify", "razorpay", "generic")
"""Providers that always exist; any other valid name is a generic provider (see the module docstring)."""
_PROVIDER_NAME = re.compile(r"[a-z][a-z0-9_-]{0,31}")
LIBRARY = {"name": "livora-webhooks", "version": PIPELINE_VERSION}

# Currencies whose minor unit is not 1/100 (ISO 4217): Razorpay sends amounts in the minor unit.
_MINOR_UNIT_EXPONENT = {
    **dict.fromkeys(("BIF", "CLP", "DJF", "GNF", "ISK", "JPY", "KMF", "KRW", "PYG", "RWF", "UGX", "VND"), 0),
    **dict.fromkeys(("VUV", "XAF", "XOF", "XPF"), 0),
    **dict.fromkeys(("BHD", "IQD", "JOD", "KWD", "LYD", "OMR", "TND"), 3),
}
_CENT = Decimal("0.01")

DEFAULT_REPLAY_WINDOW_SECONDS = 7 * 24 * 3600.0
"""A delivery whose body is older than this when it arrives is refused (Shopify retries for 48 h at most)."""


class WebhookConfig(BaseModel):
    """Everything :func:`verify_and_convert` needs besides the request, as plain (picklable) values."""

    model_config = ConfigDict(frozen=True)

    secrets: dict[str, str] = Field(
        default_factory=dict, description='"<provider>:<tenant>" (or "<provider>" for an app-wide secret) -> secret.'
    )
    bindings: dict[str, list[str]] = Field(
        default_factory=dict,
        description='"shopify:<tenant>" -> the tenant\'s shops: shop domains (acme-in.myshopify.com, a storefront '
        'domain such as www.acme.in) and/or numeric shop ids (60123456789); "razorpay:<tenant>" -> allowed '
        "Razorpay account ids (the signed body's account_id). Required for a tenant whose deliveries are checked "
        "with a provider-wide secret.",
    )
    trust_shop_header: bool = Field(
        default=False,
        description="Under an app-wide Shopify secret, accept a delivery whose signed body names no shop (refunds, "
        "customers) when its unsigned X-Shopify-Shop-Domain is bound to the tenant. Weaker: such deliveries stay "
        "forgeable by anyone holding another shop's signed body; a secret per tenant is the real fix.",
    )
    replay_window_seconds: float | None = Field(
        default=DEFAULT_REPLAY_WINDOW_SECONDS,
        gt=0,
        description="Refuse a delivery whose body time is older than this before its arrival; None disables "
        "the check (backfills of old deliveries must say so explicitly).",
    )
    now: dt.datetime | None = Field(
        default=None, description="Arrival time of requests without received_at (default: wall clock)."
    )

    @classmethod
    def of(cls, value: WebhookConfig | Mapping[str, str] | None) -> WebhookConfig:
        """A config from a config or a bare secrets mapping (the older call form: default window, no bindings)."""
        if isinstance(value, WebhookConfig):
            return value
        return cls(secrets=dict(value or {}))


class Headers(dict):
    """HTTP headers with case-insensitive lookup (keys are stored lower-cased)."""

    def __init__(self, items: Mapping[str, str] | None = None):
        super().__init__({str(k).lower(): str(v) for k, v in (items or {}).items()})

    def __getitem__(self, key: str) -> str:
        return super().__getitem__(key.lower())

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and super().__contains__(key.lower())

    def get(self, key: str, default: Any = None) -> Any:
        return super().get(key.lower(), default)


@dataclass(frozen=True)
class WebhookRequest:
    """One webhook delivery as received: provider, tenant (from the URL it was posted to), headers, raw body."""

    provider: str
    tenant_id: str
    headers: dict[str, str]
    body: bytes
    received_at: dt.datetime | None = None
    delivery_ref: str | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.headers, Headers):
            object.__setattr__(self, "headers", Headers(self.headers))


# --- signatures -----------------------------------------------------------------------------------


def is_provider_name(value: object) -> bool:
    """True for a name that may name a provider: 1-32 of a-z, 0-9, '_', '-', starting with a letter."""
    return isinstance(value, str) and _PROVIDER_NAME.fullmatch(value) is not None


def _scheme(provider: str) -> str:
    """How ``provider`` signs and what its body is: ``shopify``, ``razorpay``, else ``generic``."""
    return provider if provider in ("shopify", "razorpay") else "generic"


def sign(provider: str, secret: str, body: bytes) -> str:
    """The signature header value a provider sends for ``body`` (what senders and tests compute)."""
    digest = hmac.new(secret.encode("utf-8"), body, hashlib.sha256).digest()
    if provider == "shopify":
        return base64.b64encode(digest).decode("ascii")
    if provider == "razorpay":
        return digest.hex()
    return "sha256=" + digest.hex()


SIGNATURE_HEADERS = {
    "shopify": "X-Shopify-Hmac-Sha256",
    "razorpay": "X-Razorpay-Signature",
    "generic": "X-Livora-Signature",
}


def _secret_for(req: WebhookRequest, secrets: Mapping[str, str]) -> str | None:
    own = secrets.get(f"{req.provider}:{req.tenant_id}")
    if own or req.provider not in PROVIDERS:
        return own
    return secrets.get(req.provider)


def _app_wide_secret(req: WebhookRequest, secrets: Mapping[str, str]) -> bool:
    """True when the tenant has no secret of its own: the provider-wide one proves the sender, not the tenant."""
    return not secrets.get(f"{req.provider}:{req.tenant_id}")


def _signature_problem(req: WebhookRequest, secrets: Mapping[str, str]) -> str | None:
    """None when the body is authentic, else why not."""
    secret = _secret_for(req, secrets)
    if not secret:
        return f"no secret configured for {req.provider}:{req.tenant_id}"
    header = SIGNATURE_HEADERS[_scheme(req.provider)]
    sent = req.headers.get(header)
    if not sent:
        return f"missing {header} header"
    expected = sign(req.provider, secret, req.body)
    if not hmac.compare_digest(sent.strip().encode("utf-8", "replace"), expected.encode("ascii")):
        return f"{header} does not match the body (forged, altered or signed with another secret)"
    return None


# --- helpers --------------------------------------------------------------------------------------


def _fail(req: WebhookRequest, reason: Reason, message: str, source_ref: str | None, field_path: str | None = None):
    return FailedEvent(
        payload=req.body,
        stage=Stage.WEBHOOK,
        reason=reason,
        field_path=field_path,
        message=message,
        tenant_id=req.tenant_id,
        source_ref=source_ref,
    )


def _money(value: Any) -> str | None:
    """A provider's decimal amount (Shopify sends strings) as a decimal string; None when absent."""
    if value is None or value == "":
        return None
    return str(Decimal(str(value)))


def _minor_to_major(amount: Any, currency: str | None) -> str | None:
    """Razorpay amounts are integers in the currency's minor unit (paise for INR)."""
    if amount is None:
        return None
    exponent = _MINOR_UNIT_EXPONENT.get((currency or "INR").upper(), 2)
    major = Decimal(int(amount)).scaleb(-exponent)
    return str(major.quantize(_CENT) if exponent == 2 else major)


def _iso_from_unix(seconds: Any) -> str | None:
    if seconds is None:
        return None
    return dt.datetime.fromtimestamp(int(seconds), dt.UTC).isoformat().replace("+00:00", "Z")


def _id(value: Any) -> str | None:
    return None if value is None or value == "" else str(value)


def _compact(d: dict) -> dict:
    return {k: v for k, v in d.items() if v is not None}


def _body_digest(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()[:32]


_DELIVERY_HEADERS = {
    "shopify": ("X-Shopify-Webhook-Id", "X-Shopify-Event-Id"),
    "razorpay": ("X-Razorpay-Event-Id",),
    "generic": ("X-Livora-Webhook-Id",),
}


def _delivery_id(req: WebhookRequest) -> str | None:
    """The provider's delivery id header: unsigned, so only ever informational."""
    for header in _DELIVERY_HEADERS[_scheme(req.provider)]:
        value = (req.headers.get(header) or "").strip()
        if value:
            return value
    return None


def _parse_time(value: Any) -> dt.datetime | None:
    """An ISO-8601 time (naive = UTC) or unix seconds as an aware datetime; None when absent or unreadable."""
    try:
        if isinstance(value, str) and value.strip():
            parsed = dt.datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
            return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)
        if isinstance(value, int | float) and not isinstance(value, bool):
            return dt.datetime.fromtimestamp(value, dt.UTC)
    except (ValueError, OverflowError, OSError):
        return None
    return None


def _identity(user_id: Any, fallback_anonymous: str | None) -> dict:
    """userId from an id (the provider's customer id, the brand's own id), else an anonymous id.

    Never an email or a phone: ids are stored in clear and join everything, while contact details go to
    ``traits`` where the PII policy hashes them (``traits.email``/``traits.phone`` by default).
    """
    if isinstance(user_id, str | int) and not isinstance(user_id, bool) and str(user_id).strip():
        return {"userId": str(user_id).strip()}
    return {"anonymousId": fallback_anonymous or "webhook:unknown"}


def _envelope(req: WebhookRequest, *, message_id: str, source: str, fields: dict, traits: dict | None = None) -> dict:
    event: dict[str, Any] = {
        "messageId": message_id,
        "tenantId": req.tenant_id,
        "source": source,
        **fields,
    }
    context = event.setdefault("context", {})
    context["library"] = dict(LIBRARY)
    delivery_id = _delivery_id(req)
    if delivery_id:
        context["webhook"] = {"delivery_id": delivery_id}  # unsigned: informational only, never a key
    traits = {k: v for k, v in (traits or {}).items() if v is not None and v != ""}
    if traits:
        event["traits"] = {**traits, **(event.get("traits") or {})}
    if req.received_at is not None:
        received = req.received_at if req.received_at.tzinfo else req.received_at.replace(tzinfo=dt.UTC)
        event["receivedAt"] = received.isoformat()
    return event


# --- Shopify ----------------------------------------------------------------------------------------


def _shopify_payment_method(order: dict) -> str | None:
    names = order.get("payment_gateway_names") or ([order["gateway"]] if order.get("gateway") else [])
    if not names:
        return None
    name = str(names[0]).strip().lower()
    if "cash on delivery" in name or name in ("cod", "cash_on_delivery"):
        return "cod"
    return name


def _shopify_products(line_items: Any) -> list[dict]:
    products = []
    for item in line_items or []:
        if not isinstance(item, dict):
            continue
        products.append(
            _compact(
                {
                    "product_id": _id(item.get("product_id")),
                    "sku": item.get("sku") or None,
                    "name": item.get("title") or item.get("name"),
                    "variant": item.get("variant_title") or None,
                    "brand": item.get("vendor") or None,
                    "price": _money(item.get("price")),
                    "quantity": item.get("quantity"),
                }
            )
        )
    return products


def _shopify_context(resource: dict) -> dict:
    client = resource.get("client_details") or {}
    context: dict[str, Any] = _compact(
        {"ip": client.get("browser_ip") or resource.get("browser_ip"), "userAgent": client.get("user_agent")}
    )
    landing, referrer = resource.get("landing_site"), resource.get("referring_site")
    page: dict[str, Any] = {}
    if isinstance(landing, str) and landing:
        parts = urlsplit(landing)
        if parts.scheme:
            page["url"] = landing
        page["path"] = parts.path or "/"
        if parts.query:
            page["search"] = "?" + parts.query
    if isinstance(referrer, str) and referrer:
        page["referrer"] = referrer
    if page:
        context["page"] = page
    return context


def _shopify_order_properties(order: dict) -> dict:
    """Segment e-commerce v2 order fields from a Shopify order.

    ``revenue`` is the subtotal after discounts excluding shipping and tax; Indian prices include GST
    (``taxes_included``), so the tax is taken out of the subtotal then.
    """
    currency = order.get("currency") or order.get("presentment_currency")
    subtotal = _money(order.get("subtotal_price"))
    tax = _money(order.get("total_tax"))
    revenue = subtotal
    if subtotal is not None and tax is not None and order.get("taxes_included"):
        revenue = str(Decimal(subtotal) - Decimal(tax))
    shipping_set = ((order.get("total_shipping_price_set") or {}).get("shop_money") or {}).get("amount")
    codes = [c.get("code") for c in order.get("discount_codes") or [] if isinstance(c, dict) and c.get("code")]
    return _compact(
        {
            "order_id": _id(order.get("id")),
            "checkout_id": _id(order.get("checkout_token") or order.get("checkout_id")),
            "order_number": order.get("name") or _id(order.get("order_number")),
            "affiliation": order.get("source_name"),
            "subtotal": subtotal,
            "total": _money(order.get("total_price")),
            "revenue": revenue,
            "shipping": _money(shipping_set),
            "tax": tax,
            "discount": _money(order.get("total_discounts")),
            "coupon": codes[0] if codes else None,
            "currency": currency,
            "payment_method": _shopify_payment_method(order),
            "financial_status": order.get("financial_status"),
            "products": _shopify_products(order.get("line_items")),
        }
    )


def _shopify_person(resource: dict) -> tuple[dict, dict]:
    """userId = Shopify's customer id; a guest (no customer) stays anonymous. Email/phone only as traits."""
    customer = resource.get("customer") if isinstance(resource.get("customer"), dict) else {}
    email = resource.get("email") or resource.get("contact_email") or customer.get("email")
    phone = resource.get("phone") or customer.get("phone")
    customer_id = _id(customer.get("id"))
    fallback = f"shopify:{_id(resource.get('id')) or 'unknown'}"
    traits = {"email": email, "phone": phone, "shopify_customer_id": customer_id}
    return _identity(customer_id, fallback), traits


def _shopify_order_event(name: str, time_key: str) -> Callable[[dict], dict]:
    def convert(order: dict) -> dict:
        ids, traits = _shopify_person(order)
        properties = _shopify_order_properties(order)
        if name == "Order Cancelled":
            properties["cancel_reason"] = order.get("cancel_reason")
        return {
            "type": "track",
            "event": name,
            **ids,
            "timestamp": order.get(time_key) or order.get("updated_at") or order.get("created_at"),
            "properties": _compact(properties),
            "context": _shopify_context(order),
            "_traits": traits,
        }

    return convert


def _shopify_refund(refund: dict) -> dict:
    items = [i for i in refund.get("refund_line_items") or [] if isinstance(i, dict)]
    transactions = [
        t
        for t in refund.get("transactions") or []
        if isinstance(t, dict) and t.get("kind") == "refund" and t.get("status") in (None, "success")
    ]
    total = sum((Decimal(str(t.get("amount") or 0)) for t in transactions), Decimal(0))
    subtotal = sum((Decimal(str(i.get("subtotal") or 0)) for i in items), Decimal(0))
    tax = sum((Decimal(str(i.get("total_tax") or 0)) for i in items), Decimal(0))
    currency = next((t.get("currency") for t in transactions if t.get("currency")), None)
    products = _shopify_products([{**(i.get("line_item") or {}), "quantity": i.get("quantity")} for i in items])
    return {
        "type": "track",
        "event": "Order Refunded",
        "anonymousId": f"shopify:order:{_id(refund.get('order_id')) or 'unknown'}",
        "timestamp": refund.get("processed_at") or refund.get("created_at"),
        "properties": _compact(
            {
                "order_id": _id(refund.get("order_id")),
                "refund_id": _id(refund.get("id")),
                "total": str(total) if transactions else None,
                "revenue": str(subtotal) if items else None,
                "tax": str(tax) if items else None,
                "currency": currency,
                "note": refund.get("note") or None,
                "products": products,
            }
        ),
    }


def _shopify_checkout(checkout: dict) -> dict:
    ids, traits = _shopify_person(checkout)
    props = _shopify_order_properties(checkout)
    props.pop("order_id", None)
    props["checkout_id"] = _id(checkout.get("token") or checkout.get("id"))
    props["value"] = props.get("total")
    if "anonymousId" in ids and checkout.get("cart_token"):
        ids = {"anonymousId": f"shopify:cart:{checkout['cart_token']}"}
    return {
        "type": "track",
        "event": "Checkout Started",
        **ids,
        "timestamp": checkout.get("created_at"),
        "properties": _compact(props),
        "context": _shopify_context(checkout),
        "_traits": traits,
    }


def _shopify_customer(customer: dict) -> dict:
    email, phone = customer.get("email"), customer.get("phone")
    customer_id = _id(customer.get("id"))
    first, last = customer.get("first_name"), customer.get("last_name")
    address = customer.get("default_address") if isinstance(customer.get("default_address"), dict) else {}
    consent = (
        customer.get("email_marketing_consent") if isinstance(customer.get("email_marketing_consent"), dict) else {}
    )
    traits = _compact(
        {
            "email": email,
            "phone": phone,
            "first_name": first,
            "last_name": last,
            "name": " ".join(p for p in (first, last) if p) or None,
            "created_at": customer.get("created_at"),
            "shopify_customer_id": customer_id,
            "email_marketing": consent.get("state"),
            "city": address.get("city"),
            "state": address.get("province"),
            "country": address.get("country_code"),
        }
    )
    return {
        "type": "identify",
        **_identity(customer_id, "shopify:customer:unknown"),
        "timestamp": customer.get("created_at"),
        "traits": traits,
    }


SHOPIFY_TOPICS: dict[str, Callable[[dict], dict]] = {
    "orders/create": _shopify_order_event("Order Completed", "created_at"),
    "orders/cancelled": _shopify_order_event("Order Cancelled", "cancelled_at"),
    "refunds/create": _shopify_refund,
    "checkouts/create": _shopify_checkout,
    "customers/create": _shopify_customer,
}
"""X-Shopify-Topic → converter of the webhook's JSON resource."""

# Topic → (resource the body must be, the body's id field, what happened: the messageId's last part).
_SHOPIFY_KEYS: dict[str, tuple[str, tuple[str, ...], str | None]] = {
    "orders/create": ("order", ("id",), "completed"),
    "orders/cancelled": ("order", ("id",), "cancelled"),
    "refunds/create": ("refund", ("id",), None),
    "checkouts/create": ("checkout", ("token", "id"), "started"),
    "customers/create": ("customer", ("id",), "created"),
}
_SHOPIFY_TIMES = ("updated_at", "created_at", "cancelled_at", "processed_at")


def _shopify_resource(body: dict) -> str | None:
    """What the (signed) body is, from fields only that resource has; None when it does not say."""
    if "refund_line_items" in body or ("order_id" in body and "transactions" in body and "line_items" not in body):
        return "refund"
    if "abandoned_checkout_url" in body:
        return "checkout"
    if "line_items" in body and ("order_number" in body or "financial_status" in body):
        return "order"
    if "orders_count" in body or "email_marketing_consent" in body or "default_address" in body:
        return "customer"
    return None


def _shopify_topic_problem(topic: str, body: dict) -> str | None:
    """Why the unsigned X-Shopify-Topic disagrees with the signed body, or None.

    The body wins over the header, but we do not re-label: a disagreeing delivery is either an attack
    (a signed orders/create posted as orders/cancelled) or a bug upstream, and either deserves a look.
    """
    expected = _SHOPIFY_KEYS[topic][0]
    shown = _shopify_resource(body)
    if shown is not None and shown != expected:
        return f"X-Shopify-Topic {topic!r} but the signed body is a {shown}"
    if topic == "orders/cancelled" and not body.get("cancelled_at"):
        return "X-Shopify-Topic 'orders/cancelled' but the signed order has no cancelled_at"
    if topic == "orders/create" and body.get("cancelled_at"):
        return f"X-Shopify-Topic 'orders/create' but the signed order was cancelled at {body['cancelled_at']}"
    return None


def _shopify_message_id(topic: str, body: dict, raw: bytes) -> str:
    """``shopify:<resource>:<id>[:<what happened>]`` from the signed body (digest of the body without an id).

    The key deliberately leaves out ``updated_at``: each supported topic happens once per resource, so
    a later snapshot of the same order posted under the same topic must not book it a second time.
    """
    resource, id_fields, happened = _SHOPIFY_KEYS[topic]
    resource_id = next((_id(body.get(f)) for f in id_fields if _id(body.get(f))), None)
    if resource_id is None:
        return f"shopify:{topic}:{_body_digest(raw)}"
    return f"shopify:{resource}:{resource_id}" + (f":{happened}" if happened else "")


def _shopify_time(body: dict) -> dt.datetime | None:
    """The latest time the signed resource carries: how old this snapshot is."""
    times = [t for t in map(_parse_time, (body.get(k) for k in _SHOPIFY_TIMES)) if t is not None]
    return max(times) if times else None


def _convert_shopify(
    req: WebhookRequest, body: Any, config: WebhookConfig, source_ref: str | None
) -> list[RawEvent | FailedEvent]:
    topic = (req.headers.get("X-Shopify-Topic") or "").strip().lower()
    convert = SHOPIFY_TOPICS.get(topic)
    if convert is None:
        return [
            _fail(req, Reason.UNKNOWN_WEBHOOK, f"unsupported Shopify topic {topic!r}", source_ref, "X-Shopify-Topic")
        ]
    if not isinstance(body, dict):
        return [_fail(req, Reason.NOT_AN_OBJECT, "Shopify webhook body is not a JSON object", source_ref)]
    mismatch = _shopify_binding_problem(req, config, topic, body)
    if mismatch is not None:
        problem, where = mismatch
        return [_fail(req, Reason.TENANT_MISMATCH, problem, source_ref, where)]
    problem = _shopify_topic_problem(topic, body)
    if problem is not None:
        return [_fail(req, Reason.TOPIC_MISMATCH, problem, source_ref, "X-Shopify-Topic")]
    failure = _replay_failure(req, config, _shopify_time(body), "updated_at", source_ref)
    if failure is not None:
        return [failure]
    message_id = _shopify_message_id(topic, body, req.body)
    fields = convert(body)
    traits = fields.pop("_traits", None)
    ref = source_ref or f"webhook:shopify:{_delivery_id(req) or message_id}"
    return [_event(req, message_id, "shopify", fields, traits, ref)]


# --- Razorpay -------------------------------------------------------------------------------------


def _entity(body: dict, name: str) -> dict:
    entity = ((body.get("payload") or {}).get(name) or {}).get("entity")
    return entity if isinstance(entity, dict) else {}


def _razorpay_notes(*entities: dict) -> dict:
    for entity in entities:
        notes = entity.get("notes")
        if isinstance(notes, dict) and notes:
            return notes
    return {}


def _razorpay_payment_properties(payment: dict) -> dict:
    currency = payment.get("currency")
    card = payment.get("card") if isinstance(payment.get("card"), dict) else {}
    return {
        "payment_id": payment.get("id"),
        "order_id": payment.get("order_id"),
        "amount": _minor_to_major(payment.get("amount"), currency),
        "currency": currency,
        "method": payment.get("method"),
        "status": payment.get("status"),
        "captured": payment.get("captured"),
        "international": payment.get("international"),
        "bank": payment.get("bank"),
        "wallet": payment.get("wallet"),
        "card_network": card.get("network"),
        "amount_refunded": _minor_to_major(payment.get("amount_refunded"), currency)
        if payment.get("amount_refunded")
        else None,
        "error_code": payment.get("error_code"),
        "error_reason": payment.get("error_reason"),
        "error_description": payment.get("error_description"),
    }


def _razorpay_person(payment: dict, *others: dict) -> tuple[dict, dict]:
    notes = _razorpay_notes(payment, *others)
    email = payment.get("email") or notes.get("email")
    phone = payment.get("contact") or notes.get("phone") or notes.get("contact")
    user_id = notes.get("user_id") or notes.get("userId") or notes.get("customer_id")
    # The anonymous anchor is Razorpay's customer id or the payment id, never the contact (a phone number).
    anchor = _id(payment.get("customer_id")) or _id(payment.get("id")) or "unknown"
    return _identity(user_id, f"razorpay:{anchor}"), {"email": email, "phone": phone}


def _razorpay_payment_event(name: str) -> Callable[[dict], dict]:
    def convert(body: dict) -> dict:
        payment = _entity(body, "payment")
        ids, traits = _razorpay_person(payment)
        return {
            "type": "track",
            "event": name,
            **ids,
            "properties": _compact(_razorpay_payment_properties(payment)),
            "_traits": traits,
        }

    return convert


def _razorpay_order_paid(body: dict) -> dict:
    order, payment = _entity(body, "order"), _entity(body, "payment")
    ids, traits = _razorpay_person(payment, order)
    currency = order.get("currency") or payment.get("currency")
    return {
        "type": "track",
        "event": "Order Paid",
        **ids,
        "properties": _compact(
            {
                "order_id": order.get("id"),
                "receipt": order.get("receipt"),
                "total": _minor_to_major(order.get("amount_paid", order.get("amount")), currency),
                "currency": currency,
                "payment_id": payment.get("id"),
                "method": payment.get("method"),
                "attempts": order.get("attempts"),
            }
        ),
        "_traits": traits,
    }


def _razorpay_refund(body: dict) -> dict:
    refund, payment = _entity(body, "refund"), _entity(body, "payment")
    ids, traits = _razorpay_person(payment, refund)
    currency = refund.get("currency") or payment.get("currency")
    return {
        "type": "track",
        "event": "Refund Processed",
        **ids,
        "properties": _compact(
            {
                "refund_id": refund.get("id"),
                "payment_id": refund.get("payment_id") or payment.get("id"),
                "order_id": payment.get("order_id"),
                "amount": _minor_to_major(refund.get("amount"), currency),
                "currency": currency,
                "method": payment.get("method"),
                "speed": refund.get("speed_processed"),
                "status": refund.get("status"),
            }
        ),
        "_traits": traits,
    }


RAZORPAY_EVENTS: dict[str, Callable[[dict], dict]] = {
    "payment.captured": _razorpay_payment_event("Payment Captured"),
    "payment.failed": _razorpay_payment_event("Payment Failed"),
    "payment.authorized": _razorpay_payment_event("Payment Authorized"),
    "order.paid": _razorpay_order_paid,
    "refund.processed": _razorpay_refund,
}
"""Razorpay ``event`` → converter of the webhook body."""

# The entity whose id, with the event name, identifies what happened (each happens once per entity).
_RAZORPAY_KEY_ENTITY = {
    "payment.captured": "payment",
    "payment.failed": "payment",
    "payment.authorized": "payment",
    "order.paid": "order",
    "refund.processed": "refund",
}


def _razorpay_message_id(kind: str, body: dict, raw: bytes) -> str:
    """``razorpay:<event>:<entity id>`` from the signed body (a digest of the body without an id).

    Without the envelope's ``created_at``: a payment is captured once, so a re-emitted copy of the
    same capture with another time must still count once.
    """
    entity_id = _id(_entity(body, _RAZORPAY_KEY_ENTITY[kind]).get("id"))
    return f"razorpay:{kind}:{entity_id}" if entity_id else f"razorpay:{kind}:{_body_digest(raw)}"


def _convert_razorpay(
    req: WebhookRequest, body: Any, config: WebhookConfig, source_ref: str | None
) -> list[RawEvent | FailedEvent]:
    if not isinstance(body, dict):
        return [_fail(req, Reason.NOT_AN_OBJECT, "Razorpay webhook body is not a JSON object", source_ref)]
    kind = body.get("event")
    convert = RAZORPAY_EVENTS.get(kind) if isinstance(kind, str) else None
    if convert is None:
        return [_fail(req, Reason.UNKNOWN_WEBHOOK, f"unsupported Razorpay event {kind!r}", source_ref, "event")]
    account = body.get("account_id")
    problem = _razorpay_binding_problem(
        req, config, account.strip().lower() if isinstance(account, str) else "", "account_id"
    )
    if problem is not None:
        return [_fail(req, Reason.TENANT_MISMATCH, problem, source_ref, "account_id")]
    failure = _replay_failure(req, config, _parse_time(body.get("created_at")), "created_at", source_ref)
    if failure is not None:
        return [failure]
    message_id = _razorpay_message_id(kind, body, req.body)
    fields = convert(body)
    fields["timestamp"] = _iso_from_unix(body.get("created_at"))
    fields = _compact(fields)
    traits = fields.pop("_traits", None)
    ref = source_ref or f"webhook:razorpay:{_delivery_id(req) or message_id}"
    return [_event(req, message_id, "razorpay", fields, traits, ref)]


# --- tenant binding and replay window -------------------------------------------------------------


def _razorpay_binding_problem(req: WebhookRequest, config: WebhookConfig, claimed: str, what: str) -> str | None:
    """Why this Razorpay delivery may not belong to the tenant it was posted for, or None.

    ``claimed`` is the signed body's account id. A tenant with its own secret is proven by the
    signature; with a provider-wide secret any account can sign, so the tenant must be bound to its
    accounts.
    """
    allowed = config.bindings.get(f"{req.provider}:{req.tenant_id}")
    if allowed is None:
        if _app_wide_secret(req, config.secrets):
            return (
                f"the {req.provider} secret is app-wide and no {what} is bound to tenant {req.tenant_id!r} "
                f"(WebhookConfig.bindings[{req.provider + ':' + req.tenant_id!r}])"
            )
        return None
    if claimed and claimed in {a.strip().lower() for a in allowed}:
        return None
    return f"{what} {claimed or '(absent)'!r} is not bound to tenant {req.tenant_id!r}"


# Fields of a Shopify resource whose URL names the shop: https://<shop domain>/<shop id>/orders/... (an
# order, cancelled or not) and https://<shop domain>/<shop id>/checkouts/... (a checkout). Refunds and
# customers carry none.
_SHOPIFY_SHOP_URLS = ("order_status_url", "abandoned_checkout_url")
_SHOP_HEADER = "X-Shopify-Shop-Domain"


def _shopify_signed_shop(body: dict) -> tuple[str, frozenset[str]] | None:
    """(field, {domain, numeric shop id}) the signed body names its shop by; None when it names none.

    Shopify signs the body, so these (unlike the X-Shopify-Shop-Domain header) cannot be rewritten by
    whoever re-posts it. The domain is the shop's primary domain (myshopify or a storefront domain).
    """
    for name in _SHOPIFY_SHOP_URLS:
        value = body.get(name)
        if not isinstance(value, str):
            continue
        try:
            parts = urlsplit(value.strip())
            host = (parts.hostname or "").lower()
        except ValueError:
            continue
        segments = [segment for segment in parts.path.split("/") if segment]
        shop_id = segments[0] if segments and segments[0].isdigit() else ""
        identifiers = frozenset(i for i in (host, shop_id) if i)
        if identifiers:
            return name, identifiers
    return None


def _shopify_binding_problem(
    req: WebhookRequest, config: WebhookConfig, topic: str, body: dict
) -> tuple[str, str] | None:
    """(why, field) when this Shopify delivery may not belong to the tenant it was posted for, else None.

    A tenant's own secret proves the tenant (a configured binding is still checked against the header,
    as a guard against misrouted deliveries). An app-wide secret proves only that *some* installed shop
    signed, so the shop must come from the signed body and be bound to the tenant; the unsigned header,
    when sent, must be bound too. A body naming no shop can be bound only by the header, which an
    attacker rewrites at will: refused unless ``config.trust_shop_header``.
    """
    key = f"shopify:{req.tenant_id}"
    listed = config.bindings.get(key)
    bound = None if listed is None else {a.strip().lower() for a in listed}
    header = (req.headers.get(_SHOP_HEADER) or "").strip().lower()
    if not _app_wide_secret(req, config.secrets):
        if bound is None or (header and header in bound):
            return None
        return _unbound_header(req, header)
    if bound is None:
        return (
            f"the shopify secret is app-wide and no shop is bound to tenant {req.tenant_id!r} "
            f"(WebhookConfig.bindings[{key!r}])",
            _SHOP_HEADER,
        )
    signed = _shopify_signed_shop(body)
    if signed is not None:
        field_name, shop = signed
        names = " / ".join(sorted(shop))
        said = f" ({_SHOP_HEADER} says {header!r})" if header else ""
        if not shop & bound:
            return (
                f"the signed {field_name} names shop {names}, not bound to tenant {req.tenant_id!r}{said}",
                field_name,
            )
        if header and header not in bound:
            return (
                f"{_SHOP_HEADER} {header!r} disagrees with the signed {field_name}, which names shop {names} "
                f"of tenant {req.tenant_id!r}",
                _SHOP_HEADER,
            )
        return None
    if not config.trust_shop_header:
        return (
            f"the signed {topic} body names no shop and the shopify secret is app-wide, so nothing proves this "
            f"delivery is tenant {req.tenant_id!r}'s (the {_SHOP_HEADER} header is unsigned): give the tenant "
            f"its own secret (a custom app per shop, WebhookConfig.secrets[{key!r}]), or accept the weaker "
            "header binding with WebhookConfig.trust_shop_header",
            _SHOP_HEADER,
        )
    if header and header in bound:
        return None
    return _unbound_header(req, header)


def _unbound_header(req: WebhookRequest, header: str) -> tuple[str, str]:
    return (
        f"shop domain ({_SHOP_HEADER}) {header or '(absent)'!r} is not bound to tenant {req.tenant_id!r}",
        _SHOP_HEADER,
    )


def _replay_failure(
    req: WebhookRequest, config: WebhookConfig, body_time: dt.datetime | None, time_field: str, source_ref: str | None
) -> FailedEvent | None:
    """A stale (or undatable) delivery as a failure; None when fresh or the window is disabled.

    The age is the arrival time (the request's ``received_at``, else ``config.now``, else the clock)
    minus the newest time the *signed* body carries; the unsigned X-Shopify-Triggered-At is not used.
    """
    window = config.replay_window_seconds
    if window is None:
        return None
    if body_time is None:
        return _fail(
            req, Reason.MISSING_FIELD, "no time in the signed body to check the replay window", source_ref, time_field
        )
    arrived = req.received_at or config.now or dt.datetime.now(dt.UTC)
    if arrived.tzinfo is None:
        arrived = arrived.replace(tzinfo=dt.UTC)
    age = arrived - body_time
    if age > dt.timedelta(seconds=window):
        return _fail(
            req,
            Reason.STALE_DELIVERY,
            f"body time {body_time.isoformat()} is {age} before arrival {arrived.isoformat()} "
            f"(replay window {dt.timedelta(seconds=window)})",
            source_ref,
            time_field,
        )
    return None


# --- generic --------------------------------------------------------------------------------------


def _convert_generic(req: WebhookRequest, source_ref: str | None) -> list[RawEvent | FailedEvent]:
    """A signed body of Segment-style events (object, array, NDJSON or batch), forced to the request's tenant."""
    from transforms.decode import decode_record

    delivery = _delivery_id(req)
    digest = _body_digest(req.body)  # ids of events without their own come from the signed body, not the header
    out: list[RawEvent | FailedEvent] = []
    ref = source_ref or f"webhook:{req.provider}:{delivery or digest}"
    for index, item in enumerate(decode_record(req.body, source_ref=ref)):
        if isinstance(item, FailedEvent):
            out.append(item.model_copy(update={"stage": Stage.WEBHOOK, "tenant_id": req.tenant_id}))
            continue
        data = dict(item.data)
        if isinstance(data.get(WEBHOOK_KEY), dict):
            out.append(_fail(req, Reason.NOT_AN_OBJECT, "a webhook wrapper inside a webhook body", ref, WEBHOOK_KEY))
            continue
        data.pop("tenant_id", None)
        data["tenantId"] = req.tenant_id
        data.setdefault("source", "webhook" if req.provider == "generic" else req.provider)
        if "messageId" not in data and "message_id" not in data:
            data["messageId"] = f"webhook:{digest}:{index}"
        if req.received_at is not None and "receivedAt" not in data and "received_at" not in data:
            data["receivedAt"] = req.received_at.isoformat()
        out.append(RawEvent(orjson.dumps(data), data, item.source_ref))
    return out


def _event(
    req: WebhookRequest, message_id: str, source: str, fields: dict, traits: dict | None, source_ref: str
) -> RawEvent:
    data = _envelope(req, message_id=message_id, source=source, fields=fields, traits=traits)
    return RawEvent(orjson.dumps(data), data, source_ref)


# --- entry points ---------------------------------------------------------------------------------


def verify_and_convert(
    req: WebhookRequest, config: WebhookConfig | Mapping[str, str] | None, *, source_ref: str | None = None
) -> list[RawEvent | FailedEvent]:
    """Authenticate one delivery and convert it to events; every problem is a FailedEvent (stage ``webhook``).

    Order: signature over the raw bytes, parse, known topic/event, tenant binding, topic against body,
    replay window, conversion.

    Args:
        req: the delivery.
        config: a :class:`WebhookConfig`, or just its ``secrets`` (``"provider:tenant"`` or ``"provider"``
            → signing secret) with the default replay window and no bindings.
        source_ref: where the delivery came from (defaults to ``webhook:<provider>:<delivery id>``).
    """
    config = WebhookConfig.of(config)
    if not is_provider_name(req.provider):
        return [_fail(req, Reason.UNKNOWN_WEBHOOK, f"not a provider name: {req.provider[:40]!r}", source_ref)]
    problem = _signature_problem(req, config.secrets)
    if problem is not None:
        return [_fail(req, Reason.BAD_SIGNATURE, problem, source_ref, SIGNATURE_HEADERS[_scheme(req.provider)])]
    if _scheme(req.provider) == "generic":
        return _convert_generic(req, source_ref)
    try:
        body = orjson.loads(req.body)
    except orjson.JSONDecodeError as exc:
        return [_fail(req, Reason.MALFORMED_JSON, f"webhook body: {exc}", source_ref)]
    try:
        if req.provider == "shopify":
            return _convert_shopify(req, body, config, source_ref)
        return _convert_razorpay(req, body, config, source_ref)
    except (ArithmeticError, InvalidOperation, TypeError, ValueError, AttributeError, KeyError) as exc:
        # An authentic body we cannot read (a field of an unexpected type): keep it for a fixed converter.
        return [
            _fail(
                req,
                Reason.INVALID_VALUE,
                f"cannot convert {req.provider} webhook: {type(exc).__name__}: {exc}",
                source_ref,
            )
        ]


def wrap_webhook(req: WebhookRequest) -> bytes:
    """The one-line JSON form of a delivery, for files and Kinesis (read back by decode_record)."""
    inner: dict[str, Any] = {
        "provider": req.provider,
        "tenant_id": req.tenant_id,
        "headers": dict(req.headers),
        "body_b64": base64.b64encode(req.body).decode("ascii"),
    }
    if req.received_at is not None:
        inner["received_at"] = req.received_at.isoformat()
    return orjson.dumps({WEBHOOK_KEY: inner})


def webhook_request_from_wrapper(value: Mapping[str, Any]) -> WebhookRequest | str:
    """The request inside a ``{"_webhook": ...}`` wrapper, or a text saying what is wrong with it."""
    inner = value.get(WEBHOOK_KEY)
    if not isinstance(inner, dict):
        return "_webhook must be an object"
    provider, tenant, headers, body_b64 = (inner.get(k) for k in ("provider", "tenant_id", "headers", "body_b64"))
    if not isinstance(provider, str) or not isinstance(tenant, str) or not tenant:
        return "_webhook needs provider and tenant_id strings"
    if not isinstance(headers, dict) or not all(isinstance(v, str) for v in headers.values()):
        return "_webhook.headers must be an object of strings"
    if not isinstance(body_b64, str):
        return "_webhook.body_b64 must be a base64 string"
    try:
        body = base64.b64decode(body_b64, validate=True)
    except (binascii.Error, ValueError) as exc:
        return f"_webhook.body_b64 is not base64: {exc}"
    received_at = None
    if isinstance(inner.get("received_at"), str):
        try:
            received_at = dt.datetime.fromisoformat(inner["received_at"].replace("Z", "+00:00"))
        except ValueError:
            return "_webhook.received_at is not an ISO timestamp"
    return WebhookRequest(provider.lower(), tenant, headers, body, received_at)
