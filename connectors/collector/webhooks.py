"""Webhook deliveries at the edge: verify, then wrap for Kinesis (conversion happens downstream).

The signature is checked over the raw body bytes by :func:`transforms.webhooks.verify_and_convert`
(constant-time; the same code the pipeline runs), before anything is parsed. The edge refuses what
must never enter the stream: a missing or bad signature (401), a delivery for a tenant its shop or
account is not bound to (403), a replay older than the window (400), a Shopify topic header that the
signed body contradicts (400: only the body is signed, so a signed ``orders/create`` re-posted as
``orders/cancelled`` is an altered delivery, not one of Shopify's). An *authentic* delivery that
cannot be converted (unknown topic, unexpected field) is accepted: the pipeline turns it into a dead
letter that keeps the payload, instead of the provider retrying and then disabling the webhook.

Providers: ``shopify``, ``razorpay`` and ``generic`` always have a route; any other name that
:func:`transforms.webhooks.is_provider_name` accepts has one when the secrets name it
(``"<provider>:<tenant>"``): a generic provider (Segment-style body, ``X-Livora-Signature``). A name
that is not a provider name, or that no secret names, is 404 ``unknown_provider`` before the body is
read; a configured provider posted for a tenant without its secret is 401 like any bad signature.

What goes on Kinesis is :func:`transforms.webhooks.wrap_webhook` of the request, with ``received_at``
set and only the provider's own headers kept (never cookies or Authorization).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping

from connectors.collector.segment import MAX_PARTITION_KEY, Rejected
from schemas.failures import FailedEvent, Reason
from schemas.identifiers import check_tenant_id
from transforms.webhooks import (
    PROVIDERS,
    WebhookConfig,
    WebhookRequest,
    is_provider_name,
    verify_and_convert,
    wrap_webhook,
)

__all__ = ["MAX_WEBHOOK_BYTES", "accept_webhook", "known_providers"]

MAX_WEBHOOK_BYTES = 512 * 1024  # base64 in the wrapper stays well under Kinesis's 1 MB per record
_KEPT_HEADER_PREFIXES = ("x-shopify-", "x-razorpay-", "x-livora-")
_KEPT_HEADERS = frozenset({"content-type", "user-agent"})

# Failures the edge refuses (status, metric reason); every other failure is accepted for the dead-letter path.
_REFUSED = {
    Reason.BAD_SIGNATURE: (401, "bad_signature"),
    Reason.TENANT_MISMATCH: (403, "tenant_mismatch"),
    Reason.STALE_DELIVERY: (400, "stale_delivery"),
    Reason.TOPIC_MISMATCH: (400, "topic_mismatch"),
}


def known_providers(config: WebhookConfig) -> frozenset[str]:
    """The providers with a route: the built-in three and every valid name a ``"<provider>:<tenant>"`` secret uses."""
    named = {key.partition(":")[0] for key in config.secrets if ":" in key}
    return frozenset(PROVIDERS) | {name for name in named if is_provider_name(name)}


def kept_headers(headers: Mapping[str, str]) -> dict[str, str]:
    return {
        k.lower(): v
        for k, v in headers.items()
        if k.lower() in _KEPT_HEADERS or k.lower().startswith(_KEPT_HEADER_PREFIXES)
    }


def accept_webhook(
    provider: str,
    tenant_id: str,
    headers: Mapping[str, str],
    body: bytes,
    config: WebhookConfig,
    received_at: dt.datetime,
    providers: frozenset[str] | None = None,
) -> tuple[str, bytes]:
    """The (partition key, wrapper) record of an authentic delivery, or :class:`Rejected`.

    ``providers`` is :func:`known_providers` of ``config`` (computed once by the app, not per request).
    """
    if provider not in (providers if providers is not None else known_providers(config)):
        raise Rejected("unknown_provider", 404, "no webhook receiver for this provider")
    try:
        check_tenant_id(tenant_id, "the tenant in the path")
    except ValueError:
        raise Rejected("invalid_tenant", 400, "the tenant in the path is not a valid tenant id") from None
    request = WebhookRequest(provider, tenant_id, kept_headers(headers), body, received_at)
    results = verify_and_convert(request, config)
    events = []
    for result in results:
        if isinstance(result, FailedEvent):
            if result.reason in _REFUSED:
                status, reason = _REFUSED[result.reason]
                raise Rejected(reason, status, result.message if status != 401 else "signature check failed")
        else:
            events.append(result.data)
    key = f"{provider}:{tenant_id}"
    for event in events:
        person = event.get("anonymousId") or event.get("userId")
        if isinstance(person, str) and person:
            key = person[:MAX_PARTITION_KEY]
            break
    return key, wrap_webhook(request)
