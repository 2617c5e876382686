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
from decimal import ROUND_HALF_EVEN, Decimal
from typing import TYPE_CHECKING, Any

import apache_beam as beam
import orjson
from apache_beam.metrics import Metrics
from pydantic import BaseModel, SecretStr

from schemas.events import EventType
from schemas.failures import FailedEvent, Reason, Stage
from transforms.attribution import CampaignTuple, attribute
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
from transforms.geoip import NO_GEO, GeoIpLookup
from transforms.pii import (
    CompiledPolicy,
    PiiPolicy,
    apply_policy,
    check_salt,
    compile_policy,
    hash_identifier,
    hash_value,
)
from transforms.useragent import UserAgentParser

if TYPE_CHECKING:
    from transforms.validate import ValidEvent

__all__ = ["ENRICH_COLUMNS", "EnrichConfig", "EnrichEvents", "Enricher", "PiiPolicy", "dumps_json"]

ROWS, FAILURES = "rows", "failures"
"""Output tags of :class:`EnrichEvents`."""

ENRICH_COLUMNS = (
    "user_id",
    "anonymous_id",
    "previous_id",
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
"""The LakeEvent columns :meth:`Enricher.enrich` returns, in LakeEvent order (the ids: PII policy applied)."""

_PAGE, _IDENTIFY, _GROUP = EventType.PAGE, EventType.IDENTIFY, EventType.GROUP


class EnrichConfig(BaseModel):
    """Enrichment settings (part of the pipeline's ProcessConfig)."""

    geoip_db: str | None = None
    """Path to a MaxMind-format City database (GeoIP2/GeoLite2-City); None -> geo columns null."""
    pii: dict[str, PiiPolicy] = {}
    """Tenant id -> PII policy."""
    default_pii: PiiPolicy = PiiPolicy()
    """Policy for tenants not in ``pii`` (leave its salt None: a salt set here would be shared by them all)."""
    pii_secret: SecretStr | None = None
    """Master secret of the tenants' salts (:func:`transforms.pii.tenant_salt`) for policies without a salt
    of their own; resolved by the driver (:func:`connectors.secrets.pii_secret`) and shipped to workers
    inside this config. Required unless every policy, ``default_pii`` included, has its own salt."""
    base_currency: str = "INR"
    """Currency of ``revenue_inr``."""
    ua_cache_size: int = 10_000
    geo_cache_size: int = 100_000
    attribution_cache_size: int = 50_000


# --- JSON -----------------------------------------------------------------------------------

_JSON_OPTIONS = orjson.OPT_SORT_KEYS  # non-string keys (never from JSON) take the stdlib fallback


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
    if isinstance(obj, (dt.datetime, dt.date)):
        return obj.isoformat()  # as orjson writes them
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


def page_from_properties(properties: dict[str, Any]) -> tuple[str | None, str | None, str | None]:
    """(url, path, referrer) of a page() call that sent them as properties instead of context.page."""
    return tuple(v if isinstance(v, str) else None for v in map(properties.get, ("url", "path", "referrer")))  # type: ignore[return-value]


class MoneyRefused(Exception):
    """An amount or currency that cannot be booked: args are (reason, field path, message) of the dead letter."""


class _Resources:
    """Per-worker state: parsers, readers, rate table, their caches and compiled PII policies.

    The caches hold finished column dicts (not the parsers' tuples) so that a row is assembled with
    two dict updates; they are never handed out, only copied into rows.
    """

    def __init__(self, config: EnrichConfig) -> None:
        self.config = config
        self.ua_parser = UserAgentParser(cache_size=0)
        self.geo_reader = GeoIpLookup(config.geoip_db, cache_size=0) if config.geoip_db else None
        self.ua = functools.lru_cache(maxsize=config.ua_cache_size)(self._ua)
        self.geo = functools.lru_cache(maxsize=config.geo_cache_size)(self._geo)
        self.attribution = functools.lru_cache(maxsize=config.attribution_cache_size)(self._attribution)
        self.hash_cached = functools.lru_cache(maxsize=config.geo_cache_size)(hash_value)
        self.device = functools.lru_cache(maxsize=config.geo_cache_size)(self._device)
        self.amount = functools.lru_cache(maxsize=10_000)(_amount)
        self.rate = functools.lru_cache(maxsize=100_000)(self._rate)
        self.base_currency = config.base_currency.upper()
        self.row_template: dict[str, Any] = {**dict.fromkeys(ENRICH_COLUMNS), "is_bot": False, "channel": "direct"}
        self._fx: FxTable | None = None
        self.policies: dict[str, CompiledPolicy] = {}
        self.hash_id = functools.lru_cache(maxsize=config.geo_cache_size)(hash_identifier)

    def _ua(self, user_agent: str | None) -> dict[str, Any]:
        return self.ua_parser.parse(user_agent)._asdict()

    def _device(self, policy: CompiledPolicy, ip: str | None, user_agent: str | None) -> dict[str, Any]:
        """ip, user_agent, ua_* and geo_* columns of one (tenant policy, IP, user agent): a visitor's device.

        A visitor keeps its address and browser for a while, so this one lookup serves most events;
        a miss is served by the per-UA and per-IP caches.
        """
        columns = {"ip": ip, "user_agent": user_agent, **self.ua(user_agent), **self.geo(ip)}  # geo: raw IP
        if ip is not None and policy.ip_action is not None:
            columns["ip"] = None if policy.ip_action == "drop" else self.hash_cached(policy.salt, ip)
        if user_agent is not None and policy.ua_action is not None:
            columns["user_agent"] = None if policy.ua_action == "drop" else self.hash_cached(policy.salt, user_agent)
        return columns

    def _geo(self, ip: str | None) -> dict[str, Any]:
        # Looked up from the raw IP, before any hashing.
        return (self.geo_reader.lookup(ip) if self.geo_reader is not None else NO_GEO)._asdict()

    @staticmethod
    def _attribution(
        url: str | None, path: str | None, referrer: str | None, campaign: CampaignTuple | None
    ) -> dict[str, Any]:
        return attribute(url, path, referrer, campaign)._asdict()

    def _rate(self, currency: str, day: dt.date) -> tuple[Decimal, float, dt.date]:
        fx = self.fx.rate(currency, day)
        return fx.rate, float(fx.rate), fx.rate_date

    def money_columns(self, event_name: str | None, properties: dict[str, Any], day: dt.date) -> tuple[Any, ...]:
        """(order_id, currency, revenue, revenue_inr, fx_rate, fx_rate_date) of an event's properties.

        Raises :class:`MoneyRefused` for an amount or currency that cannot be booked. ``day``: the event's
        UTC date (the rate's day). Only REVENUE_EVENTS book revenue (not Product Added/Viewed).
        """
        order_id = properties.get("order_id")
        if order_id is not None:
            order_id = str(order_id)
        currency = properties.get("currency")
        if currency is not None:
            currency = currency.strip().upper() or None if isinstance(currency, str) else None
        if event_name not in REVENUE_EVENTS:
            return order_id, currency, None, None, None, None
        field, raw_amount = money_fields(event_name, properties)
        if field is None:
            return order_id, currency, None, None, None, None
        if currency is None:
            if properties.get("currency") is not None:  # a number, a blank: not a currency to assume INR for
                raise MoneyRefused(
                    Reason.UNKNOWN_CURRENCY, "properties.currency", f"not a currency code: {properties['currency']!r}"
                )
            currency = self.base_currency
        try:
            return (order_id, currency, *self.convert(raw_amount, currency, day))
        except UnknownCurrency as exc:
            raise MoneyRefused(Reason.UNKNOWN_CURRENCY, "properties.currency", str(exc)) from None
        except (InvalidAmount, ArithmeticError) as exc:
            raise MoneyRefused(Reason.INVALID_VALUE, f"properties.{field}", str(exc)) from None

    def convert(self, raw_amount: Any, currency: str, day: dt.date) -> tuple[Decimal, Decimal, float, dt.date]:
        """(amount, amount in the base currency, rate, rate date); raises UnknownCurrency, InvalidAmount, ArithmeticError."""
        amount = self.amount(raw_amount) if type(raw_amount) in _CACHEABLE_AMOUNTS else _amount(raw_amount)
        rate, rate_float, rate_date = self.rate(currency, day)
        converted = (amount * rate).quantize(MONEY_QUANTUM, rounding=ROUND_HALF_EVEN)
        if abs(converted) >= MAX_MONEY:
            raise InvalidAmount(
                f"{amount} {currency} is {converted} {self.base_currency}: too large for Decimal(18, 4)"
            )
        return amount, converted, rate_float, rate_date

    @property
    def fx(self) -> FxTable:
        if self._fx is None:  # ~0.2 s to load the ECB history: only when money is first seen
            self._fx = FxTable(self.base_currency)
        return self._fx

    def policy(self, tenant_id: str) -> CompiledPolicy:
        compiled = self.policies.get(tenant_id)
        if compiled is None:
            compiled = _compile(self.config, tenant_id)
            self.policies[tenant_id] = compiled
        return compiled


def _compile(config: EnrichConfig, tenant_id: str) -> CompiledPolicy:
    """The tenant's policy with its salt: configured, else derived from the master secret."""
    secret = config.pii_secret.get_secret_value() if config.pii_secret is not None else None
    return compile_policy(config.pii.get(tenant_id, config.default_pii), tenant_id, secret)


def _check_pii(config: EnrichConfig) -> None:
    """Refuse, when the graph is built, a configuration that would hash with an empty or short salt."""
    if config.pii_secret is not None:
        check_salt(config.pii_secret.get_secret_value(), "PII master secret")
    elif config.default_pii.salt is None or any(policy.salt is None for policy in config.pii.values()):
        raise ValueError(
            "no PII master secret: policies without a salt of their own derive their tenant's salt from "
            "EnrichConfig.pii_secret (pipelines resolve one per lake with connectors.secrets.pii_secret)"
        )


class Enricher:
    """Enriches one ValidEvent into the enrichment columns of its lake row, or a FailedEvent.

    Args:
        config: the enrichment settings.
        check_files: fail now (when the pipeline graph is built) if the GeoIP database is missing.
    """

    def __init__(self, config: EnrichConfig, check_files: bool = True) -> None:
        if check_files and config.geoip_db and not os.path.isfile(config.geoip_db):
            raise FileNotFoundError(f"GeoIP database not found: {config.geoip_db}")
        _check_pii(config)
        self.config = config
        self._r: _Resources | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {"config": self.config}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.config = state["config"]
        self._r = None

    def setup(self, preload_rates: bool = True) -> None:
        """Open the heavy resources now (call from DoFn.setup) instead of on the first event.

        Without this, the first event opens the parsers and the first money event loads the ECB table (~0.3 s).
        """
        if self._r is None:
            self._r = _Resources(self.config)
        if preload_rates:
            _ = self._r.fx

    def resources(self) -> _Resources:
        """The per-worker resources, opened on first use (the batch parser reads its caches and policies)."""
        if self._r is None:
            self.setup(preload_rates=False)
        assert self._r is not None
        return self._r

    def cache_stats(self) -> dict[str, dict[str, int]]:
        """Hits, misses and size of each per-worker cache (for metrics and tuning the cache sizes)."""
        r = self._r
        if r is None:
            return {}
        caches = {"ua": r.ua, "geo": r.geo, "device": r.device, "attribution": r.attribution, "fx_rate": r.rate}
        return {name: cache.cache_info()._asdict() for name, cache in caches.items()}

    def enrich(self, ev: ValidEvent) -> dict[str, Any] | FailedEvent:
        """The ENRICH_COLUMNS of ``ev``'s lake row, or a FailedEvent (stage enrich) for unconvertible money.

        Hot path (the whole pipeline's budget is ~100k events/s on 2 cores): a row template updated from
        cached column dicts; no per-event parsing of user agents, IPs or URLs seen before.
        """
        r = self._r
        if r is None:
            self.setup(preload_rates=False)
            r = self._r
            assert r is not None
        # Field reads through the models' __dict__: pydantic's attribute hook costs ~3x a dict lookup.
        event = ev.event
        fields = event.__dict__
        ctx = fields["context"].__dict__
        properties = fields["properties"]
        event_type = fields["type"]
        policy = r.policies.get(fields["tenant_id"]) or r.policy(fields["tenant_id"])

        page = ctx["page"]
        if page is not None:
            page = page.__dict__
            url, path, referrer = page["url"], page["path"], page["referrer"]
        else:
            url = path = referrer = None
        if url is None and event_type is _PAGE:
            url, path, referrer = page_from_properties(properties)
        campaign = ctx["campaign"]
        if campaign is not None:
            campaign = (campaign.source, campaign.medium, campaign.name, campaign.term, campaign.content)

        try:
            order_id, currency, revenue, revenue_inr, fx_rate, fx_rate_date = r.money_columns(
                fields["event"], properties, _event_day(event)
            )
        except MoneyRefused as refused:
            return ev.failure(Stage.ENRICH, *refused.args)

        properties = apply_policy(properties, "properties", policy)
        traits = fields["traits"]
        has_traits = bool(traits) or event_type is _IDENTIFY or event_type is _GROUP
        traits_json = dumps_json(apply_policy(traits, "traits", policy)) if has_traits else None
        row = r.row_template.copy()  # all keys in LakeEvent order: updates below never resize the dict
        if policy.hash_ids:  # an email or phone sent as an id: hashed like traits.email, so stitching still joins
            salt, hash_id = policy.salt, r.hash_id
            row["user_id"] = hash_id(salt, fields["user_id"])
            row["anonymous_id"] = hash_id(salt, fields["anonymous_id"])
            row["previous_id"] = hash_id(salt, fields["previous_id"])
        else:
            row["user_id"], row["anonymous_id"], row["previous_id"] = (
                fields["user_id"],
                fields["anonymous_id"],
                fields["previous_id"],
            )
        row.update(r.device(policy, ctx["ip"], ctx["user_agent"]))
        row.update(r.attribution(url, path, referrer, campaign))
        row["locale"] = ctx["locale"]
        row["order_id"] = order_id
        row["currency"] = currency
        if revenue is not None:
            row["revenue"] = revenue
            row["revenue_inr"] = revenue_inr
            row["fx_rate"] = fx_rate
            row["fx_rate_date"] = fx_rate_date
        row["properties"] = dumps_json(properties)
        row["traits"] = traits_json
        return row


_CACHEABLE_AMOUNTS = frozenset({int, float, str, Decimal})  # hashable, and never bool (True == 1)


def _amount(raw: Any) -> Decimal:
    """The booked amount, quantised to 4 places; InvalidAmount when unusable or beyond Decimal(18, 4)."""
    amount = to_decimal(raw).quantize(MONEY_QUANTUM)
    if abs(amount) >= MAX_MONEY:
        raise InvalidAmount(f"{amount} is too large for Decimal(18, 4)")
    return amount


def _event_day(event: Any) -> dt.date:
    """UTC date of the event time (timestamp, else receivedAt / originalTimestamp, else today)."""
    ts = event.timestamp or event.received_at or event.original_timestamp
    if ts is None:
        return dt.datetime.now(dt.UTC).date()
    if ts.tzinfo is not None:
        ts = ts.astimezone(dt.UTC)
    return ts.date()


# --- Beam wrapper -----------------------------------------------------------------------------


class _EnrichFn(beam.DoFn):
    """ValidEvent -> lake row (without person/session ids) on the main output, FailedEvent on 'failures'."""

    def __init__(self, config: EnrichConfig) -> None:
        self._enricher = Enricher(config)

    def setup(self) -> None:
        self._enricher.setup()
        self._enriched = Metrics.counter("enrich", "enriched")
        self._bots = Metrics.counter("enrich", "bots")
        self._failed = Metrics.counter("enrich", "failed")

    def process(self, valid: ValidEvent):
        from transforms.rows import to_lake_row

        out = self._enricher.enrich(valid)
        if isinstance(out, FailedEvent):
            self._failed.inc()
            Metrics.counter("enrich", f"failed_{out.reason.value}").inc()
            yield beam.pvalue.TaggedOutput(FAILURES, out)
            return
        self._enriched.inc()
        if out["is_bot"]:
            self._bots.inc()
        yield to_lake_row(valid, out)


class EnrichEvents(beam.PTransform):
    """PCollection[ValidEvent] -> tagged outputs ``rows`` (lake rows without person/session ids) and
    ``failures`` (FailedEvent, stage enrich). The same :class:`Enricher` core as the fused pipeline stage.

    Args:
        config: the enrichment settings (checked now: a missing GeoIP file fails when the graph is built).
    """

    def __init__(self, config: EnrichConfig) -> None:
        super().__init__()
        Enricher(config)  # fail at construction on a bad configuration
        self._config = config

    def expand(self, events):
        return events | "Enrich" >> beam.ParDo(_EnrichFn(self._config)).with_outputs(FAILURES, main=ROWS)
