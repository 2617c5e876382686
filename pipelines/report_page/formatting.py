"""Number formats of the report: Indian digit grouping for INR, integers for counts.

Readers of the report count money in lakhs and crores: ₹4,10,681 (the last three digits, then groups
of two), ₹4.1 L and ₹1.2 Cr where space is short. Pure functions; the charts use the same rules through
:data:`INR_COMPACT_VEGA_EXPR` so that an axis and a table never disagree.
"""

from __future__ import annotations

import math
from decimal import ROUND_HALF_UP, Decimal

__all__ = [
    "INR_COMPACT_VEGA_EXPR",
    "fmt_count",
    "fmt_duration",
    "fmt_inr",
    "fmt_inr_compact",
    "fmt_pct",
    "group_indian",
]

LAKH = 100_000
CRORE = 10_000_000


def _missing(value) -> bool:
    if value is None:
        return True
    try:
        return math.isnan(float(value))
    except (TypeError, ValueError):
        return False


def group_indian(digits: str) -> str:
    """Commas the Indian way on a string of digits: "12345678" → "1,23,45,678"."""
    if len(digits) <= 3:
        return digits
    head, tail = digits[:-3], digits[-3:]
    groups = []
    while len(head) > 2:
        groups.insert(0, head[-2:])
        head = head[:-2]
    if head:
        groups.insert(0, head)
    return ",".join(groups) + "," + tail


def _round(value: float, places: int = 0) -> Decimal:
    """Half away from zero (₹0.5 → ₹1), not Python's half-to-even."""
    return Decimal(repr(float(value))).quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_UP)


def fmt_inr(value) -> str:
    """Whole rupees with Indian grouping: 410681 → "₹4,10,681", -1234.5 → "-₹1,235"; "" when missing."""
    if _missing(value):
        return ""
    r = _round(value)
    sign = "-" if r < 0 else ""
    return f"{sign}₹{group_indian(str(abs(int(r))))}"


def fmt_inr_compact(value) -> str:
    """Short INR: ₹1.2 Cr, ₹4.1 L, and below a lakh the full grouped figure (₹45,300)."""
    if _missing(value):
        return ""
    v = float(value)
    sign = "-" if v < 0 else ""
    a = abs(v)
    lakhs = _round(a / LAKH, 1)
    if lakhs >= 100:  # 99.96 L rounds to 100.0 L: say 1 Cr
        crores = _round(a / CRORE, 1)
        whole, _, frac = f"{crores:.1f}".partition(".")
        text = group_indian(whole) + ("" if frac == "0" else "." + frac)
        return f"{sign}₹{text} Cr"
    if a >= LAKH or lakhs >= 1:
        text = f"{lakhs:.1f}".removesuffix(".0")
        return f"{sign}₹{text} L"
    r = int(_round(a))
    return f"{sign if r else ''}₹{group_indian(str(r))}"


# The same rule as fmt_inr_compact for Vega axis labels (below 1 lakh Western and Indian grouping agree).
INR_COMPACT_VEGA_EXPR = (
    "(datum.value < 0 ? '-' : '') + '₹' + ("
    "abs(datum.value) >= 9995000 ? replace(format(abs(datum.value) / 10000000, ',.1f'), /\\.0$/, '') + ' Cr' : "
    "abs(datum.value) >= 99950 ? replace(format(abs(datum.value) / 100000, '.1f'), /\\.0$/, '') + ' L' : "
    "format(abs(datum.value), ',.0f'))"
)


def fmt_count(value) -> str:
    """A count as an integer with Indian grouping (units, persons, orders): 51.0 → "51"."""
    if _missing(value):
        return ""
    return ("-" if value < 0 else "") + group_indian(str(abs(int(_round(value)))))


def fmt_pct(value) -> str:
    return "n/a" if _missing(value) else f"{100 * float(value):.1f}%"


def fmt_duration(seconds) -> str:
    """Seconds as the largest sensible unit: 45s, 12.5m, 3.2h, 2.1d."""
    s = float(seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= size:
            return f"{s / size:.1f}{unit}"
    return f"{s:.0f}s"
