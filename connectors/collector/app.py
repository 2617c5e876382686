"""The collector's ASGI app (Starlette): Segment-compatible ``/v1/*``, webhook receivers, health, metrics.

Why Starlette on uvicorn: the smallest maintained ASGI toolkit (routing, requests, CORS middleware,
lifespan) without a validation layer we would not use (bodies are parsed with orjson and checked by
our own rules), and uvicorn with uvloop + httptools is the fastest maintained Python HTTP/1.1 server.
The same app runs on Lambda behind API Gateway through Mangum (see ``pipelines.collect``).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

import orjson
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from connectors.collector.body import BodyError, inflate, read_body
from connectors.collector.delivery import Delivery, Overloaded, Unavailable
from connectors.collector.metrics import CollectorMetrics
from connectors.collector.segment import (
    BATCH_KINDS,
    MAX_BATCH_BYTES,
    MAX_EVENT_BYTES,
    Rejected,
    basic_auth_user,
    kind_of,
    normalise_request,
)
from connectors.collector.webhooks import MAX_WEBHOOK_BYTES, accept_webhook, known_providers
from transforms.webhooks import WebhookConfig

__all__ = ["CollectorConfig", "build_app"]

log = logging.getLogger("livora.collector")

_OK = b'{"success":true}'


@dataclass
class CollectorConfig:
    """What the app needs besides its delivery: who may send, and the request limits."""

    write_keys: Mapping[str, str]
    webhooks: WebhookConfig = field(default_factory=WebhookConfig)
    body_timeout_s: float = 10.0
    retry_after_s: int = 5
    cors_origins: tuple[str, ...] = ("*",)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _iso(when: dt.datetime) -> str:
    return when.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _json(status: int, payload: dict, headers: dict | None = None) -> Response:
    return Response(orjson.dumps(payload), status_code=status, media_type="application/json", headers=headers)


class _Handlers:
    def __init__(self, config: CollectorConfig, delivery: Delivery, metrics: CollectorMetrics):
        self.config = config
        self.delivery = delivery
        self.metrics = metrics
        self.started = False
        self.providers = known_providers(config.webhooks)

    def _reject(self, route: str, reason: str, status: int, message: str, **fields) -> Response:
        self.metrics.rejects.labels(reason).inc()
        log.info("rejected", extra={"route": route, "reason": reason, "status": status, **fields})
        headers = {"Connection": "close"} if reason in ("body_timeout", "oversize", "gzip_bomb") else None
        return _json(status, {"success": False, "error": reason, "message": message}, headers)

    def _unavailable(self, route: str, err: Exception) -> Response:
        overloaded = isinstance(err, Overloaded)
        reason, status = ("overloaded", 429) if overloaded else ("unavailable", 503)
        self.metrics.rejects.labels(reason).inc()
        log.warning("not accepted", extra={"route": route, "reason": reason, "detail": str(err)[:200]})
        return _json(
            status,
            {"success": False, "error": reason, "message": "try again later"},
            {"Retry-After": str(self.config.retry_after_s)},
        )

    async def _body(self, request: Request, max_bytes: int, max_inflated: int) -> bytes:
        raw = await read_body(
            request.stream(),
            max_bytes=max_bytes,
            timeout_s=self.config.body_timeout_s,
            declared_length=request.headers.get("content-length"),
        )
        return inflate(raw, request.headers.get("content-encoding"), max_inflated=max_inflated)

    # --- Segment ---

    async def segment(self, request: Request) -> Response:
        started = time.perf_counter()
        kind = kind_of(request.path_params["kind"])
        route = f"/v1/{kind or 'unknown'}"
        response = await self._segment(request, kind, route)
        self.metrics.requests.labels(route, str(response.status_code)).inc()
        self.metrics.request_seconds.labels(route).observe(time.perf_counter() - started)
        return response

    async def _segment(self, request: Request, kind: str | None, route: str) -> Response:
        if kind is None:
            return self._reject(route, "unknown_endpoint", 404, "no such Segment endpoint")
        header_key = basic_auth_user(request.headers.get("authorization"))
        if header_key is not None and header_key not in self.config.write_keys:
            return self._reject(route, "unknown_write_key", 401, "unknown write key")
        limit = MAX_BATCH_BYTES if kind in BATCH_KINDS else MAX_EVENT_BYTES
        try:
            body = await self._body(request, limit, limit)
        except BodyError as err:
            return self._reject(route, err.reason, err.status, str(err))
        try:
            parsed = orjson.loads(body)
        except orjson.JSONDecodeError:
            return self._reject(route, "malformed_json", 400, "body is not JSON")
        key = header_key
        if key is None and isinstance(parsed, dict) and isinstance(parsed.get("writeKey"), str):
            key = parsed["writeKey"]
        tenant = self.config.write_keys.get(key) if key else None
        if tenant is None:
            reason = "missing_write_key" if not key else "unknown_write_key"
            return self._reject(route, reason, 401, "a valid write key is required (Basic auth user or writeKey)")
        if isinstance(parsed, dict):
            parsed.pop("writeKey", None)
        client_ip = request.client.host if request.client else None
        try:
            records = normalise_request(kind, parsed, tenant_id=tenant, received_at=_iso(_now()), client_ip=client_ip)
        except Rejected as err:
            return self._reject(route, err.reason, err.status, str(err), tenant=tenant)
        try:
            await self.delivery.deliver(records)
        except (Overloaded, Unavailable) as err:
            return self._unavailable(route, err)
        self.metrics.events.labels("segment").inc(len(records))
        return Response(_OK, media_type="application/json")

    # --- webhooks ---

    async def webhook(self, request: Request) -> Response:
        started = time.perf_counter()
        provider = request.path_params["provider"]
        route = f"/webhooks/{provider if provider in self.providers else 'unknown'}"  # labels stay bounded
        response = await self._webhook(request, provider, route)
        self.metrics.requests.labels(route, str(response.status_code)).inc()
        self.metrics.request_seconds.labels(route).observe(time.perf_counter() - started)
        return response

    async def _webhook(self, request: Request, provider: str, route: str) -> Response:
        tenant = request.path_params["tenant"]
        if provider not in self.providers:  # before reading a body nothing can verify
            return self._reject(route, "unknown_provider", 404, "no webhook receiver for this provider")
        try:
            body = await self._body(request, MAX_WEBHOOK_BYTES, MAX_WEBHOOK_BYTES)
        except BodyError as err:
            return self._reject(route, err.reason, 413 if err.reason == "oversize" else err.status, str(err))
        try:
            record = accept_webhook(
                provider, tenant, request.headers, body, self.config.webhooks, _now(), self.providers
            )
        except Rejected as err:
            return self._reject(route, err.reason, err.status, str(err))
        try:
            await self.delivery.deliver([record])
        except (Overloaded, Unavailable) as err:
            return self._unavailable(route, err)
        self.metrics.events.labels(f"webhook:{provider}").inc()
        return Response(_OK, media_type="application/json")

    # --- operations ---

    async def health(self, request: Request) -> Response:
        return _json(200, {"status": "ok"})

    async def ready(self, request: Request) -> Response:
        if self.delivery.ready():
            return _json(200, {"status": "ready", "mode": self.delivery.mode})
        return _json(503, {"status": "not ready", "mode": self.delivery.mode}, {"Retry-After": "5"})

    async def metrics_page(self, request: Request) -> Response:
        return Response(self.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")


def build_app(
    config: CollectorConfig,
    delivery: Delivery,
    metrics: CollectorMetrics,
    *,
    on_start=None,
    drain_timeout_s: float = 10.0,
) -> Starlette:
    """The Starlette app; the lifespan starts the delivery (and ``on_start``) and drains it on shutdown."""
    handlers = _Handlers(config, delivery, metrics)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        await delivery.start()
        if on_start is not None:
            await on_start()
        log.info("collector started", extra={"mode": delivery.mode})
        try:
            yield
        finally:
            log.info("collector draining")
            await delivery.stop(drain_timeout_s)
            log.info("collector stopped")

    routes = [
        Route("/health", handlers.health, methods=["GET"]),
        Route("/ready", handlers.ready, methods=["GET"]),
        Route("/metrics", handlers.metrics_page, methods=["GET"]),
        Route("/v1/{kind}", handlers.segment, methods=["POST"]),
        Route("/webhooks/{provider}/{tenant}", handlers.webhook, methods=["POST"]),
    ]
    middleware = [
        Middleware(
            CORSMiddleware,
            allow_origins=list(config.cors_origins),
            allow_methods=["POST", "OPTIONS"],
            allow_headers=["Authorization", "Content-Type", "Content-Encoding"],
            max_age=86400,
        )
    ]
    app = Starlette(routes=routes, middleware=middleware, lifespan=lifespan)
    app.state.handlers = handlers
    app.state.metrics = metrics
    app.state.delivery = delivery
    return app
