"""The enrichment facade: one validated, normalised event -> the enrichment columns of its lake row.

One pure core (``Enricher.enrich``) shared by the batch and streaming pipelines; a failure is a value
(:class:`schemas.failures.FailedEvent`, stage ``enrich``), never an exception. Parts:
user agent (:mod:`transforms.useragent`), geo-IP (:mod:`transforms.geoip`), UTM/referrer/channel
(:mod:`transforms.attribution`), currency to INR (:mod:`transforms.currency`) and PII policy
(:mod:`transforms.pii`). Columns are documented in docs/enrichment.md.

The :class:`Enricher` is cheap to build and pickles small (Beam ships it to workers); the heavy
resources (ua-parser rules, the memory-mapped GeoIP file, the ECB rate table) and their LRU caches are
created on first use on the worker, so repeated user agents / IPs / pages / (currency, day) pairs cost a
dictionary lookup.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import os
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import orjson
from pydantic import BaseModel

from schemas.events import EventType
from schemas.failures import FailedEvent, Reason, Stage
from transforms.attribution import Attribution, attribute
from transforms.currency import (
    MAX_MONEY,
    MONEY_QUANTUM,
    REVENUE_EVENTS,
    FxTable,
    InvalidAmount,
    UnknownCurrency,
    money_fields,
    to_decimal,
)
from transforms.geoip import NO_GEO, GeoInfo, GeoIpLookup
from transforms.pii import CompiledPolicy, PiiPolicy, apply_policy, hash_value
from transforms.useragent import UserAgentParser

if TYPE_CHECKING:
    from transforms.validate import ValidEvent

__all__ = ["ENRICH_COLUMNS", "EnrichConfig", "Enricher", "PiiPolicy", "dumps_json"]

ENRICH_COLUMNS = (
    "ip",
    "user_agent",
    "ua_browser",
    "ua_browser_version",
    "ua_os",
    "ua_os_version",
    "ua_device",
    "is_bot",
    "geo_country",
    "geo_region",
    "geo_city",
    "geo_latitude",
    "geo_longitude",
    "page_url",
    "page_path",
    "referrer",
    "referrer_host",
    "utm_source",
    "utm_medium",
    "utm_campaign",
    "utm_term",
    "utm_content",
    "channel",
    "locale",
    "order_id",
    "currency",
    "revenue",
    "revenue_inr",
    "fx_rate",
    "fx_rate_date",
    "properties",
    "traits",
)
"""The LakeEvent columns :meth:`Enricher.enrich` returns, in LakeEvent order."""

TRAIT_TYPES = frozenset({EventType.IDENTIFY, EventType.GROUP})


class EnrichConfig(BaseModel):
    """Enrichment settings (part of the pipeline's ProcessConfig)."""

    geoip_db: str | None = None
    """Path to a MaxMind-format City database (GeoIP2/GeoLite2-City); None -> geo columns null."""
    pii: dict[str, PiiPolicy] = {}
    """Tenant id -> PII policy."""
    default_pii: PiiPolicy = PiiPolicy()
    """Policy for tenants not in ``pii``."""
    base_currency: str = "INR"
    """Currency of ``revenue_inr``."""
    ua_cache_size: int = 10_000
    geo_cache_size: int = 100_000
    attribution_cache_size: int = 50_000


# --- JSON -----------------------------------------------------------------------------------

_JSON_OPTIONS = orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS


def _json_default(obj: Any) -> Any:
    if isinstance(obj, Decimal):
        return orjson.Fragment(str(obj)) if obj.is_finite() else None  # a JSON number, exact digits
    if isinstance(obj, BaseModel):
        return obj.model_dump(mode="python")
    if isinstance(obj, (set, frozenset)):
        return sorted(obj, key=str)
    if isinstance(obj, bytes):
        return obj.decode("utf-8", "replace")
    return str(obj)


def _plain(obj: Any) -> Any:
    """Fallback for what orjson refuses (integers beyond 64 bits): Decimals as ints/floats."""
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, Decimal):
        if not obj.is_finite():
            return None
        return int(obj) if obj == obj.to_integral_value() else float(obj)
    return obj


def dumps_json(obj: Any) -> str:
    """Compact, key-sorted JSON text; Decimals written as JSON numbers with their exact digits.

    Deterministic: the same value always gives the same text (reruns are byte-identical).
    """
    try:
        return orjson.dumps(obj, default=_json_default, option=_JSON_OPTIONS).decode("utf-8")
    except (orjson.JSONEncodeError, TypeError):
        return json.dumps(_plain(obj), separators=(",", ":"), sort_keys=True, ensure_ascii=False, default=str)


# --- the facade ---------------------------------------------------------------------------


class _Resources:
    """Per-worker state: parsers, readers, rate table, their caches and compiled PII policies."""

    def __init__(self, config: EnrichConfig) -> None:
        self.config = config
        self.ua = UserAgentParser(cache_size=config.ua_cache_size).parse
        self.geo_reader = GeoIpLookup(config.geoip_db, cache_size=config.geo_cache_size) if config.geoip_db else None
        self.geo = self.geo_reader.lookup if self.geo_reader else None
        self.attribution = functools.lru_cache(maxsize=config.attribution_cache_size)(attribute)
        self.hash_cached = functools.lru_cache(maxsize=config.geo_cache_size)(hash_value)
        self._fx: FxTable | None = None
        self._policies: dict[str, CompiledPolicy] = {}
        self._default_policy = CompiledPolicy(config.default_pii)

    @property
    def fx(self) -> FxTable:
        if self._fx is None:  # ~0.2 s to load the ECB history: only when money is first seen
            self._fx = FxTable(self.config.base_currency)
        return self._fx

    def policy(self, tenant_id: str) -> CompiledPolicy:
        compiled = self._policies.get(tenant_id)
        if compiled is None:
            source = self.config.pii.get(tenant_id)
            compiled = CompiledPolicy(source) if source is not None else self._default_policy
            self._policies[tenant_id] = compiled
        return compiled


class Enricher:
    """Enriches one ValidEvent into the enrichment columns of its lake row, or a FailedEvent.

    Args:
        config: the enrichment settings.
        check_files: fail now (when the pipeline graph is built) if the GeoIP database is missing.
    """

    def __init__(self, config: EnrichConfig, check_files: bool = True) -> None:
        if check_files and config.geoip_db and not os.path.isfile(config.geoip_db):
            raise FileNotFoundError(f"GeoIP database not found: {config.geoip_db}")
        self.config = config
        self._r: _Resources | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {"config": self.config}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.config = state["config"]
        self._r = None

    def setup(self) -> None:
        """Open the heavy resources now (DoFn.setup) instead of on the first event."""
        if self._r is None:
            self._r = _Resources(self.config)

    def enrich(self, ev: ValidEvent) -> dict[str, Any] | FailedEvent:
        r = self._r
        if r is None:
            self.setup()
            r = self._r
            assert r is not None
        event = ev.event
        ctx = event.context
        raw_ip = ctx.ip
        user_agent = ctx.user_agent
        policy = r.policy(event.tenant_id)
        properties = event.properties

        ua = r.ua(user_agent)
        geo: GeoInfo = r.geo(raw_ip) if (r.geo is not None and raw_ip) else NO_GEO  # before hashing the IP
        attribution = self._attribution(r, event, properties)

        money = self._money(r, ev, properties)
        if isinstance(money, FailedEvent):
            return money

        ip = raw_ip
        if raw_ip is not None and policy.ip_action is not None:
            ip = None if policy.ip_action == "drop" else r.hash_cached(policy.salt, raw_ip)
        if user_agent is not None and policy.ua_action is not None:
            user_agent = None if policy.ua_action == "drop" else r.hash_cached(policy.salt, user_agent)

        properties_json = dumps_json(apply_policy(properties, "properties", policy))
        traits = event.traits
        traits_json = (
            dumps_json(apply_policy(traits, "traits", policy)) if (traits or event.type in TRAIT_TYPES) else None
        )
        return dict(
            zip(
                ENRICH_COLUMNS,
                (ip, user_agent, *ua, *geo, *attribution, ctx.locale, *money, properties_json, traits_json),
                strict=True,
            )
        )

    @staticmethod
    def _attribution(r: _Resources, event: Any, properties: dict[str, Any]) -> Attribution:
        page = event.context.page
        if page is not None:
            url, path, referrer = page.url, page.path, page.referrer
        else:
            url = path = referrer = None
        if url is None and event.type is EventType.PAGE:  # page() calls also carry url/path/referrer as properties
            url, path, referrer = properties.get("url"), properties.get("path"), properties.get("referrer")
            url, path, referrer = (v if isinstance(v, str) else None for v in (url, path, referrer))
        campaign = event.context.campaign
        key = (campaign.source, campaign.medium, campaign.name, campaign.term, campaign.content) if campaign else None
        return r.attribution(url, path, referrer, key)

    def _money(self, r: _Resources, ev: ValidEvent, properties: dict[str, Any]) -> tuple[Any, ...] | FailedEvent:
        """(order_id, currency, revenue, revenue_inr, fx_rate, fx_rate_date) or a FailedEvent."""
        order_id = properties.get("order_id")
        if order_id is not None:
            order_id = str(order_id)
        raw_currency = properties.get("currency")
        currency = raw_currency.strip().upper() if isinstance(raw_currency, str) and raw_currency.strip() else None
        event_name = ev.event.event
        if event_name not in REVENUE_EVENTS:  # includes Product Added/Viewed: no revenue booked
            return order_id, currency, None, None, None, None
        field, raw_amount = money_fields(event_name, properties)
        if field is None:
            return order_id, currency, None, None, None, None
        currency = currency or r.config.base_currency.upper()
        try:
            amount = to_decimal(raw_amount).quantize(MONEY_QUANTUM)
            if abs(amount) >= MAX_MONEY:
                raise InvalidAmount(f"{amount} is too large for Decimal(18, 4)")
            converted, fx = r.fx.convert(amount, currency, _event_day(ev.event))
        except UnknownCurrency as exc:
            return self._failure(ev, Reason.UNKNOWN_CURRENCY, "properties.currency", str(exc))
        except (InvalidAmount, ArithmeticError) as exc:
            return self._failure(ev, Reason.INVALID_VALUE, f"properties.{field}", str(exc))
        return order_id, currency, amount, converted, float(fx.rate), fx.rate_date

    @staticmethod
    def _failure(ev: ValidEvent, reason: Reason, field_path: str, message: str) -> FailedEvent:
        return FailedEvent(
            payload=ev.payload,
            stage=Stage.ENRICH,
            reason=reason,
            field_path=field_path,
            message=message,
            tenant_id=ev.event.tenant_id,
            message_id=ev.event.message_id,
            source_ref=ev.source_ref,
        )


def _event_day(event: Any) -> dt.date:
    """UTC date of the event time (timestamp, else receivedAt / originalTimestamp, else today)."""
    ts = event.timestamp or event.received_at or event.original_timestamp
    if ts is None:
        return dt.datetime.now(dt.UTC).date()
    if ts.tzinfo is not None:
        ts = ts.astimezone(dt.UTC)
    return ts.date()
