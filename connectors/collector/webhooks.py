"""Webhook deliveries at the edge: verify, then wrap for Kinesis (conversion happens downstream).

The signature is checked over the raw body bytes by :func:`transforms.webhooks.verify_and_convert`
(constant-time; the same code the pipeline runs), before anything is parsed. The edge refuses what
must never enter the stream: a missing or bad signature (401), a delivery for a tenant its shop or
account is not bound to (403), a replay older than the window (400). An *authentic* delivery that
cannot be converted (unknown topic, unexpected field) is accepted: the pipeline turns it into a dead
letter that keeps the payload, instead of the provider retrying and then disabling the webhook.

What goes on Kinesis is :func:`transforms.webhooks.wrap_webhook` of the request, with ``received_at``
set and only the provider's own headers kept (never cookies or Authorization).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping

from connectors.collector.segment import MAX_PARTITION_KEY, Rejected
from schemas.failures import FailedEvent, Reason
from schemas.identifiers import check_tenant_id
from transforms.webhooks import PROVIDERS, WebhookConfig, WebhookRequest, verify_and_convert, wrap_webhook

__all__ = ["MAX_WEBHOOK_BYTES", "accept_webhook"]

MAX_WEBHOOK_BYTES = 512 * 1024  # base64 in the wrapper stays well under Kinesis's 1 MB per record
_KEPT_HEADER_PREFIXES = ("x-shopify-", "x-razorpay-", "x-livora-")
_KEPT_HEADERS = frozenset({"content-type", "user-agent"})

# Failures the edge refuses (status, metric reason); every other failure is accepted for the dead-letter path.
_REFUSED = {
    Reason.BAD_SIGNATURE: (401, "bad_signature"),
    Reason.TENANT_MISMATCH: (403, "tenant_mismatch"),
    Reason.STALE_DELIVERY: (400, "stale_delivery"),
}


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
) -> tuple[str, bytes]:
    """The (partition key, wrapper) record of an authentic delivery, or :class:`Rejected`."""
    if provider not in PROVIDERS:
        raise Rejected("unknown_provider", 404, f"no webhook receiver for {provider[:32]!r}")
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
