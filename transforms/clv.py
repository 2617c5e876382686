"""Customer lifetime value: the BG/NBD purchase model and the Gamma-Gamma spend model.

The models are pure numpy/scipy. ``summarise_orders`` is the per-person reference definition of
the summary and ``summarise_order_table`` its vectorised twin (pandas, many persons at once). The
thin Beam composites at the bottom (no IO) split orders by (tenant, person bucket), summarise each
bucket, fit both models once per tenant and predict per bucket; ``pipelines/clv.py`` wires them.

References (closed forms used below):
- Fader, Hardie & Lee (2005), "Counting Your Customers the Easy Way: An Alternative to the
  Pareto/NBD Model", Marketing Science 24(2): the BG/NBD likelihood (eq. 6), the conditional
  expectation (eq. 10) and P(alive) (from the note "Computing P(alive) using the BG/NBD model").
- Fader & Hardie (2013), "The Gamma-Gamma Model of Monetary Value": the likelihood of the mean
  repeat spend and the conditional expectation of a person's mean order value.

Summary definitions follow the paper and the ``lifetimes`` package: several orders of one person
on one day are one transaction (their values are summed); ``period_days`` is only the time unit
of recency and T.
"""

from __future__ import annotations

import collections
import datetime as dt
import math
import re
import urllib.parse
import zlib
import zoneinfo
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass

import apache_beam as beam
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from apache_beam.metrics import Metrics
from scipy import optimize, special

from schemas.outputs import CLV_PREDICTIONS_SCHEMA

__all__ = [
    "ORDERS_SCHEMA",
    "PREDICTIONS_SCHEMA",
    "BgNbdParams",
    "CustomerSummary",
    "FitClvModels",
    "GammaGammaParams",
    "HoldoutComparison",
    "OrdersFromLakeBatches",
    "PredictClv",
    "SummariseCustomers",
    "SummaryBatch",
    "bgnbd_log_likelihood",
    "bgnbd_log_likelihood_terms",
    "customer_lifetime_value",
    "expected_average_order_value",
    "expected_purchases",
    "fit_bgnbd",
    "fit_gamma_gamma",
    "fit_models",
    "gamma_gamma_log_likelihood",
    "gamma_gamma_log_likelihood_terms",
    "merge_same_day",
    "order_table",
    "period_discount_rate",
    "person_buckets",
    "predict_table",
    "probability_alive",
    "summarise_order_table",
    "summarise_orders",
    "tenant_from_path",
]

DAYS_PER_MONTH = 365.25 / 12


# --------------------------------------------------------------------------------------------
# Summary
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CustomerSummary:
    """One person's calibration summary (times in periods), plus the holdout count when asked."""

    frequency: int
    """Repeat transactions: distinct purchase days in calibration minus one."""
    recency: float
    """Periods between the first and the last purchase day in calibration (0 when frequency is 0)."""
    T: float
    """Periods between the first purchase day and the calibration end."""
    monetary: float
    """Mean value of the repeat transactions (first one excluded); NaN when there is none with a value."""
    first_purchase: dt.date
    last_purchase: dt.date
    holdout_transactions: int | None = None
    """Distinct purchase days after the calibration end up to the holdout end (None without holdout)."""
    holdout_value: float | None = None
    """Sum of the order values in the holdout (None without holdout)."""

    def as_dict(self) -> dict:
        return asdict(self)


def merge_same_day(orders: Iterable[tuple[dt.date, float | None]]) -> list[tuple[dt.date, float | None]]:
    """Orders -> one transaction per day, sorted by day; values summed (None if no order had one).

    The BG/NBD paper counts a day with several orders as one transaction; splitting it would make
    frequent same-day shoppers look like heavy buyers.
    """
    by_day: dict[dt.date, float | None] = {}
    for day, value in orders:
        if day not in by_day:
            by_day[day] = None
        if value is not None and not (isinstance(value, float) and math.isnan(value)):
            by_day[day] = (by_day[day] or 0.0) + float(value)
    return sorted(by_day.items())


def summarise_orders(
    orders: Iterable[tuple[dt.date, float | None]],
    calibration_end: dt.date,
    period_days: float = 7.0,
    holdout_end: dt.date | None = None,
) -> CustomerSummary | None:
    """The ``lifetimes``-style summary of one person's orders (day, value), or None.

    None when the person has no order on or before ``calibration_end`` (no calibration history:
    the models say nothing about them). Orders after ``holdout_end`` (or after the calibration end
    without a holdout) are ignored.
    """
    if period_days <= 0:
        raise ValueError("period_days must be positive")
    days = merge_same_day(orders)
    calibration = [(d, v) for d, v in days if d <= calibration_end]
    if not calibration:
        return None
    first, last = calibration[0][0], calibration[-1][0]
    repeat_values = [v for _, v in calibration[1:] if v is not None]
    holdout_n = holdout_v = None
    if holdout_end is not None:
        holdout = [(d, v) for d, v in days if calibration_end < d <= holdout_end]
        holdout_n = len(holdout)
        holdout_v = float(sum(v for _, v in holdout if v is not None))
    return CustomerSummary(
        frequency=len(calibration) - 1,
        recency=(last - first).days / period_days,
        T=(calibration_end - first).days / period_days,
        monetary=float(np.mean(repeat_values)) if repeat_values else math.nan,
        first_purchase=first,
        last_purchase=last,
        holdout_transactions=holdout_n,
        holdout_value=holdout_v,
    )


# --------------------------------------------------------------------------------------------
# BG/NBD
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BgNbdParams:
    """Purchase rate ~ Gamma(r, alpha) (alpha in periods); dropout probability ~ Beta(a, b)."""

    r: float
    alpha: float
    a: float
    b: float

    def as_array(self) -> np.ndarray:
        return np.array([self.r, self.alpha, self.a, self.b], dtype=float)


def _arrays(*values) -> list[np.ndarray]:
    return [np.asarray(v, dtype=float) for v in values]


def bgnbd_log_likelihood_terms(params: BgNbdParams, x, t_x, T) -> np.ndarray:
    """Per-customer log-likelihood, FHL 2005 eq. 6:

    L = B(a, b+x)/B(a, b) * Γ(r+x) alpha^r / (Γ(r) (alpha+T)^(r+x))
        + [x>0] B(a+1, b+x-1)/B(a, b) * Γ(r+x) alpha^r / (Γ(r) (alpha+t_x)^(r+x))

    computed in logs as A1 + A2 + log(exp(A3) + [x>0] exp(A4)).
    """
    r, alpha, a, b = params.r, params.alpha, params.a, params.b
    x, t_x, T = _arrays(x, t_x, T)
    a1 = special.gammaln(r + x) - special.gammaln(r) + r * np.log(alpha)
    a2 = special.gammaln(a + b) + special.gammaln(b + x) - special.gammaln(b) - special.gammaln(a + b + x)
    a3 = -(r + x) * np.log(alpha + T)
    repeat = x > 0
    with np.errstate(divide="ignore", invalid="ignore"):
        a4 = np.where(repeat, np.log(a) - np.log(np.where(repeat, b + x - 1, 1.0)) - (r + x) * np.log(alpha + t_x), 0)
    return a1 + a2 + np.where(repeat, np.logaddexp(a3, a4), a3)


def bgnbd_log_likelihood(params: BgNbdParams, x, t_x, T, weights=None) -> float:
    """Sum of :func:`bgnbd_log_likelihood_terms`, each weighted by how many customers share it."""
    terms = bgnbd_log_likelihood_terms(params, x, t_x, T)
    return float(np.sum(terms if weights is None else terms * np.asarray(weights, dtype=float)))


SHAPE_BOUNDS = (1e-6, 1e6)
"""Bounds of the shape parameters (r, a, b, p, q). Beyond 1e6 the gammaln differences of the
likelihoods lose their precision (a flat likelihood ridge, e.g. a, b -> inf at a fixed a/(a+b),
would otherwise send the optimiser to 1e14 where rounding error looks like likelihood)."""
SCALE_BOUNDS = (1e-10, 1e15)
"""Bounds of the scale parameters (alpha in periods, v in currency units): only their logs enter."""


@dataclass(frozen=True)
class FitResult:
    params: tuple[float, ...]
    log_likelihood: float
    converged: bool
    iterations: int
    at_bound: bool = False
    """True when a parameter ended on its bound: the maximum is on a ridge (degenerate data)."""


def _maximise(objective, starts: Sequence[Sequence[float]], bounds: Sequence[tuple[float, float]]) -> FitResult:
    """Minimise ``objective(theta) -> (value, gradient)`` over log-parameters; keep the best start.

    L-BFGS-B with the analytic gradient from each start; when none converges, Nelder-Mead from the
    best point and another L-BFGS-B polish. Logs keep the parameters positive.
    """
    log_bounds = [(math.log(lo), math.log(hi)) for lo, hi in bounds]
    lows, highs = np.array([lo for lo, _ in log_bounds]), np.array([hi for _, hi in log_bounds])

    def safe(theta):
        value, grad = objective(theta)
        if not np.isfinite(value) or not np.all(np.isfinite(grad)):
            return 1e300, np.zeros_like(theta)
        return value, grad

    lbfgs = {"maxiter": 5000, "ftol": 1e-15, "gtol": 1e-9}
    results = []
    for start in starts:
        theta0 = np.clip(np.log(np.asarray(start, dtype=float)), lows, highs)
        results.append(optimize.minimize(safe, theta0, jac=True, method="L-BFGS-B", bounds=log_bounds, options=lbfgs))
    best = min(results, key=lambda res: res.fun)
    iterations = sum(int(res.nit) for res in results)
    if not best.success:
        coarse = optimize.minimize(
            lambda th: safe(th)[0], best.x, method="Nelder-Mead", bounds=log_bounds, options={"maxiter": 8000}
        )
        polished = optimize.minimize(safe, coarse.x, jac=True, method="L-BFGS-B", bounds=log_bounds, options=lbfgs)
        iterations += int(coarse.nit + polished.nit)
        best = min((best, coarse, polished), key=lambda res: res.fun)
        best.success = bool(polished.success or coarse.success)
    if not np.isfinite(best.fun) or best.fun >= 1e300:
        raise ValueError("the likelihood is not finite at any starting point")
    span = highs - lows
    return FitResult(
        params=tuple(float(v) for v in np.exp(best.x)),
        log_likelihood=float(-best.fun),
        converged=bool(best.success),
        iterations=iterations,
        at_bound=bool(np.any((best.x - lows < 1e-6 * span) | (highs - best.x < 1e-6 * span))),
    )


def _bgnbd_objective(theta: np.ndarray, x, t_x, T, w) -> tuple[float, np.ndarray]:
    """Negative log-likelihood and its gradient with respect to the log-parameters.

    With S = log(e^A3 + [x>0] e^A4) and w4 = [x>0] e^(A4 - S), w3 = 1 - w4 (the posterior weights
    of "still alive" and "dropped out after the last purchase"):
      dLL/dr = ψ(r+x) - ψ(r) + log alpha - w3 log(alpha+T) - w4 log(alpha+t_x)
      dLL/dalpha = r/alpha - (r+x) (w3/(alpha+T) + w4/(alpha+t_x))
      dLL/da = ψ(a+b) - ψ(a+b+x) + w4/a
      dLL/db = ψ(a+b) + ψ(b+x) - ψ(b) - ψ(a+b+x) - w4/(b+x-1)
    """
    r, alpha, a, b = np.exp(theta)
    repeat = x > 0
    log_at, log_atx = np.log(alpha + T), np.log(alpha + t_x)
    b_x1 = np.where(repeat, b + x - 1, 1.0)
    a3 = -(r + x) * log_at
    a4 = np.log(a) - np.log(b_x1) - (r + x) * log_atx
    lse = np.where(repeat, np.logaddexp(a3, a4), a3)
    terms = (
        special.gammaln(r + x)
        - special.gammaln(r)
        + r * np.log(alpha)
        + special.gammaln(a + b)
        + special.gammaln(b + x)
        - special.gammaln(b)
        - special.gammaln(a + b + x)
        + lse
    )
    w4 = np.where(repeat, np.exp(np.minimum(a4 - lse, 0.0)), 0.0)
    w3 = 1.0 - w4
    psi_ab, psi_abx = special.digamma(a + b), special.digamma(a + b + x)
    d_r = special.digamma(r + x) - special.digamma(r) + np.log(alpha) - w3 * log_at - w4 * log_atx
    d_alpha = r / alpha - (r + x) * (w3 / (alpha + T) + w4 / (alpha + t_x))
    d_a = psi_ab - psi_abx + w4 / a
    d_b = psi_ab + special.digamma(b + x) - special.digamma(b) - psi_abx - w4 / b_x1
    # np.sum(w * ...) rather than w @ ...: a BLAS dot is slower here on a busy machine (thread spin-up)
    grad = np.array([np.sum(w * d_r) * r, np.sum(w * d_alpha) * alpha, np.sum(w * d_a) * a, np.sum(w * d_b) * b])
    return -float(np.sum(w * terms)), -grad


def fit_bgnbd(x, t_x, T, weights=None) -> tuple[BgNbdParams, FitResult]:
    """Maximum-likelihood BG/NBD parameters for customers (x, t_x, T) (optionally weighted counts)."""
    x, t_x, T = _arrays(x, t_x, T)
    if x.size == 0:
        raise ValueError("no customers to fit")
    if np.any(x < 0) or np.any(t_x < 0) or np.any(t_x > T + 1e-9):
        raise ValueError("need x >= 0 and 0 <= t_x <= T")
    w = np.ones_like(x) if weights is None else np.asarray(weights, dtype=float)
    scale = max(float(np.average(T, weights=w)), 1e-3)
    starts = [(1.0, scale, 1.0, 1.0), (0.5, scale / 4, 0.5, 2.0), (0.1, 1.0, 0.1, 0.1)]
    bounds = [SHAPE_BOUNDS, SCALE_BOUNDS, SHAPE_BOUNDS, SHAPE_BOUNDS]
    fit = _maximise(lambda theta: _bgnbd_objective(theta, x, t_x, T, w), starts, bounds)
    return BgNbdParams(*fit.params), fit


def probability_alive(params: BgNbdParams, x, t_x, T) -> np.ndarray:
    """P(still active | x, t_x, T) = 1 / (1 + [x>0] a/(b+x-1) ((alpha+T)/(alpha+t_x))^(r+x))."""
    r, alpha, a, b = params.r, params.alpha, params.a, params.b
    x, t_x, T = _arrays(x, t_x, T)
    repeat = x > 0
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        log_odds = (
            np.log(a) - np.log(np.where(repeat, b + x - 1, 1.0)) + (r + x) * (np.log(alpha + T) - np.log(alpha + t_x))
        )
    return np.where(repeat, special.expit(-log_odds), 1.0)


def expected_purchases(params: BgNbdParams, t, x, t_x, T) -> np.ndarray:
    """E[Y(t) | x, t_x, T]: expected transactions in the next ``t`` periods (FHL 2005 eq. 10).

    (a+b+x-1)/(a-1) * [1 - ((alpha+T)/(alpha+T+t))^(r+x) 2F1(r+x, b+x; a+b+x-1; t/(alpha+T+t))]
    / (1 + [x>0] a/(b+x-1) ((alpha+T)/(alpha+t_x))^(r+x))
    """
    r, alpha, a, b = params.r, params.alpha, params.a, params.b
    t, x, t_x, T = _arrays(t, x, t_x, T)
    z = t / (alpha + T + t)
    hyp = special.hyp2f1(r + x, b + x, a + b + x - 1, z)
    bracket = 1.0 - np.exp((r + x) * (np.log(alpha + T) - np.log(alpha + T + t))) * hyp
    return (a + b + x - 1) / (a - 1) * bracket * probability_alive(params, x, t_x, T)


# --------------------------------------------------------------------------------------------
# Gamma-Gamma
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GammaGammaParams:
    """Spend per transaction ~ Gamma(p, nu); nu ~ Gamma(q, v). ``v`` is in currency units."""

    p: float
    q: float
    v: float


def gamma_gamma_log_likelihood_terms(params: GammaGammaParams, x, m) -> np.ndarray:
    """Per-customer log density of the mean spend m over x repeat transactions (Fader & Hardie 2013):

    f(m | p, q, v, x) = Γ(px+q) / (Γ(px) Γ(q)) * v^q m^(px-1) x^(px) / (v + x m)^(px+q)
    """
    p, q, v = params.p, params.q, params.v
    x, m = _arrays(x, m)
    px = p * x
    return (
        special.gammaln(px + q)
        - special.gammaln(px)
        - special.gammaln(q)
        + q * np.log(v)
        + (px - 1) * np.log(m)
        + px * np.log(x)
        - (px + q) * np.log(v + x * m)
    )


def gamma_gamma_log_likelihood(params: GammaGammaParams, x, m, weights=None) -> float:
    terms = gamma_gamma_log_likelihood_terms(params, x, m)
    return float(np.sum(terms if weights is None else terms * np.asarray(weights, dtype=float)))


def _gamma_gamma_objective(theta: np.ndarray, x, m) -> tuple[float, np.ndarray]:
    """Negative log-likelihood and gradient (log-parameters):

    dLL/dp = x (ψ(px+q) - ψ(px) + log m + log x - log(v+xm))
    dLL/dq = ψ(px+q) - ψ(q) + log v - log(v+xm)
    dLL/dv = q/v - (px+q)/(v+xm)
    """
    p, q, v = np.exp(theta)
    px = p * x
    log_vxm = np.log(v + x * m)
    terms = gamma_gamma_log_likelihood_terms(GammaGammaParams(p, q, v), x, m)
    psi_pxq = special.digamma(px + q)
    d_p = x * (psi_pxq - special.digamma(px) + np.log(m) + np.log(x) - log_vxm)
    d_q = psi_pxq - special.digamma(q) + np.log(v) - log_vxm
    d_v = q / v - (px + q) / (v + x * m)
    return -float(np.sum(terms)), -np.array([np.sum(d_p) * p, np.sum(d_q) * q, np.sum(d_v) * v])


def fit_gamma_gamma(x, m) -> tuple[GammaGammaParams, FitResult]:
    """Maximum-likelihood Gamma-Gamma parameters on repeat customers (x > 0, m > 0 only)."""
    x, m = _arrays(x, m)
    if x.size == 0:
        raise ValueError("no repeat customers to fit the spend model on")
    if np.any(x <= 0) or np.any(~(m > 0)):
        raise ValueError("the Gamma-Gamma model needs x > 0 and a positive mean spend")
    mean = float(np.mean(m))
    # E[M] = p v / (q - 1): the starts put the population mean near the sample mean.
    starts = [(1.0, 2.0, mean), (5.0, 3.0, mean * 2 / 5), (1.0, 1.0, 1.0)]
    bounds = [SHAPE_BOUNDS, SHAPE_BOUNDS, SCALE_BOUNDS]
    fit = _maximise(lambda theta: _gamma_gamma_objective(theta, x, m), starts, bounds)
    return GammaGammaParams(*fit.params), fit


def expected_average_order_value(params: GammaGammaParams, x, m) -> np.ndarray:
    """E[M | p, q, v, x, m] = (q-1)/(px+q-1) * pv/(q-1) + px/(px+q-1) * m.

    A weighted mean of the population mean pv/(q-1) and the person's own mean; with x = 0 or no
    positive known spend (the model is defined for m > 0 only; the spend fit skips those people
    too) it is the population mean. Needs q > 1 (otherwise the mean does not exist: NaN).
    """
    p, q, v = params.p, params.q, params.v
    x, m = _arrays(x, m)
    if q <= 1:
        return np.full(np.broadcast(x, m).shape, np.nan)
    with np.errstate(invalid="ignore"):
        known = (x > 0) & (m > 0)  # NaN compares False
    px = np.where(known, p * x, 0.0)
    return (p * v + px * np.where(known, m, 0.0)) / (px + q - 1)


# --------------------------------------------------------------------------------------------
# CLV
# --------------------------------------------------------------------------------------------


def period_discount_rate(monthly_rate: float, period_days: float) -> float:
    """The per-period rate equivalent to a monthly rate: (1 + d_month)^(period_days / 30.44) - 1."""
    return (1.0 + monthly_rate) ** (period_days / DAYS_PER_MONTH) - 1.0


def customer_lifetime_value(
    bgnbd: BgNbdParams,
    gamma_gamma: GammaGammaParams,
    x,
    t_x,
    T,
    m,
    horizon_periods: int,
    discount_rate: float,
) -> np.ndarray:
    """Discounted expected revenue over the next ``horizon_periods`` periods:

    CLV = Σ_{k=1..H} (E[Y(k)] - E[Y(k-1)]) * E[M] / (1 + d)^k

    with E[Y(k)] from :func:`expected_purchases`, E[M] from :func:`expected_average_order_value`
    and ``d`` the per-period discount rate (see :func:`period_discount_rate`). Purchases expected
    in period k are discounted to the calibration end at the end of period k.
    """
    if horizon_periods < 0:
        raise ValueError("horizon_periods must be >= 0")
    x, t_x, T, m = _arrays(x, t_x, T, m)
    aov = expected_average_order_value(gamma_gamma, x, m)
    total = np.zeros(np.broadcast(x, t_x, T).shape)
    previous = np.zeros_like(total)
    for k in range(1, horizon_periods + 1):
        cumulative = expected_purchases(bgnbd, k, x, t_x, T)
        total = total + (cumulative - previous) / (1.0 + discount_rate) ** k
        previous = cumulative
    return total * aov


# --------------------------------------------------------------------------------------------
# Lake rows -> orders (pure, Arrow)
# --------------------------------------------------------------------------------------------

ORDER_EVENT = "Order Completed"
MONEY_COLUMNS = ("revenue_inr", "revenue")
ORDER_COLUMNS = ("type", "event", "person_id", "user_id", "timestamp", "order_id", "currency", *MONEY_COLUMNS)
"""The lake columns the CLV pipeline reads."""
DEFAULT_BUCKETS = 32
_EPOCH = dt.date(1970, 1, 1)

ORDERS_SCHEMA = pa.schema(
    [
        pa.field("person_id", pa.string()),
        pa.field("user_id", pa.string()),
        pa.field("day", pa.date32()),
        pa.field("value", pa.float64()),
        pa.field("order_id", pa.string()),
        pa.field("currency", pa.string()),
    ]
)
"""One Order Completed event reduced to what the models need (``day`` is a local calendar date)."""

_TENANT_IN_PATH = re.compile(r"(?:^|/)tenant_id=([^/]+)/")


def tenant_from_path(path: str) -> str:
    """The tenant of a lake file from its Hive path (``.../tenant_id=T/event_date=D/part.parquet``)."""
    match = _TENANT_IN_PATH.search(path.replace("\\", "/"))
    if not match:
        raise ValueError(f"not a lake events file (no tenant_id=... in the path): {path}")
    return urllib.parse.unquote(match.group(1))


def order_table(
    table: pa.Table, money_column: str = "revenue_inr", timezone: str = "UTC", start: dt.date | None = None
) -> pa.Table:
    """The Order Completed track events of a lake table as :data:`ORDERS_SCHEMA` rows.

    ``day`` is the calendar date of the event time in ``timezone`` (an IANA name; the day is what
    merges several orders into one transaction); orders on days before ``start`` are dropped.
    ``currency`` is INR for ``revenue_inr`` and the event's own currency for ``revenue``.
    """
    if money_column not in MONEY_COLUMNS:
        raise ValueError(f"money column must be one of {MONEY_COLUMNS}, got {money_column!r}")
    mask = pc.and_(pc.equal(table["type"], "track"), pc.equal(table["event"], ORDER_EVENT))
    orders = table.filter(pc.fill_null(mask, False))
    local = pc.local_timestamp(pc.cast(orders["timestamp"], pa.timestamp("us", tz=timezone)))
    days = pc.cast(local, pa.date32())
    currency = pa.array(["INR"] * orders.num_rows, pa.string()) if money_column == "revenue_inr" else orders["currency"]
    result = pa.Table.from_arrays(
        [
            orders["person_id"],
            orders["user_id"],
            days,
            pc.cast(orders[money_column], pa.float64()),
            orders["order_id"],
            currency,
        ],
        schema=ORDERS_SCHEMA,
    )
    if start is not None:
        result = result.filter(pc.greater_equal(result["day"], pa.scalar(start, pa.date32())))
    return result


def person_buckets(person_ids: pa.Array | pa.ChunkedArray, buckets: int) -> np.ndarray:
    """Bucket of each person: crc32 of the id modulo ``buckets`` (the same in every worker)."""
    return np.fromiter(
        (zlib.crc32(pid.encode()) % buckets for pid in person_ids.to_pylist()), dtype=np.int64, count=len(person_ids)
    )


@dataclass(frozen=True)
class SummaryBatch:
    """The summaries of one (tenant, bucket) and the currencies of their calibration orders."""

    summaries: pd.DataFrame
    currencies: frozenset[str]


def _day_numbers(column: pd.Series) -> np.ndarray:
    return column.to_numpy(dtype="datetime64[D]").astype(np.int64)


def summarise_order_table(
    orders: pa.Table,
    calibration_end: dt.date,
    period_days: float = 7.0,
    holdout_end: dt.date | None = None,
) -> tuple[SummaryBatch, int]:
    """:func:`summarise_orders` for every person of an :data:`ORDERS_SCHEMA` table, vectorised.

    First one order per (person, order_id) (the SDK and a Shopify webhook may both report an
    order; the survivor is the earliest day, then the lowest value; orders without an id are all
    kept), then one transaction per (person, day) with the values summed. Returns the summaries
    (one row per person with an order up to the calibration end) and the number of duplicate
    order ids dropped.
    """
    if period_days <= 0:
        raise ValueError("period_days must be positive")
    df = orders.to_pandas(date_as_object=False)
    df["day"] = _day_numbers(df["day"])
    cal = (calibration_end - _EPOCH).days
    end = (holdout_end - _EPOCH).days if holdout_end is not None else cal
    has_id = df["order_id"].notna()
    ided = df[has_id].sort_values(["person_id", "order_id", "day", "value"], na_position="first", kind="stable")
    ided = ided.drop_duplicates(["person_id", "order_id"], keep="first")
    dropped = int(has_id.sum()) - len(ided)
    df = pd.concat([ided, df[~has_id]], ignore_index=True)
    df = df[df["day"] <= end]
    days = df.groupby(["person_id", "day"], sort=True)["value"].sum(min_count=1).reset_index()
    calib = days[days["day"] <= cal]
    grouped = calib.groupby("person_id", sort=True)["day"]
    first, last, count = grouped.min(), grouped.max(), grouped.size()
    is_first = calib["person_id"].ne(calib["person_id"].shift())
    monetary = calib[~is_first.to_numpy()].groupby("person_id")["value"].mean()
    persons = first.index
    summaries = pd.DataFrame(
        {
            "person_id": persons,
            "user_id": df.groupby("person_id")["user_id"].min().reindex(persons).to_numpy(),
            "first_purchase": first.to_numpy(),
            "last_purchase": last.to_numpy(),
            "frequency": count.to_numpy() - 1,
            "recency": (last - first).to_numpy() / period_days,
            "T": (cal - first).to_numpy() / period_days,
            "monetary": monetary.reindex(persons).to_numpy(dtype=float),
        }
    )
    if holdout_end is not None:
        holdout = days[days["day"] > cal].groupby("person_id")["value"]
        summaries["holdout_transactions"] = holdout.size().reindex(persons, fill_value=0).to_numpy()
        summaries["holdout_value"] = holdout.sum().reindex(persons, fill_value=0.0).to_numpy()
    calibration_orders = df[df["day"] <= cal]
    currencies = frozenset(calibration_orders["currency"].dropna().unique().tolist())
    return SummaryBatch(summaries, currencies), dropped


# --------------------------------------------------------------------------------------------
# Beam wrappers
# --------------------------------------------------------------------------------------------

PREDICTIONS_SCHEMA = CLV_PREDICTIONS_SCHEMA


class _OrdersFromBatchFn(beam.DoFn):
    def __init__(self, money_column: str, timezone: str, start: dt.date | None, buckets: int):
        self.args = (money_column, timezone, start)
        self.buckets = buckets
        self.orders = Metrics.counter("clv", "orders_read")
        self.no_money = Metrics.counter("clv", "orders_without_money")

    def process(self, element):
        path, table = element
        tenant = tenant_from_path(path)
        orders = order_table(table, *self.args)
        if orders.num_rows == 0:
            return
        self.orders.inc(orders.num_rows)
        self.no_money.inc(orders["value"].null_count)
        bucket = person_buckets(orders["person_id"], self.buckets)
        for b in np.unique(bucket):
            yield (tenant, int(b)), orders.filter(pa.array(bucket == b))


class OrdersFromLakeBatches(beam.PTransform):
    """(file path, Arrow table) lake batches -> ((tenant_id, person bucket), orders table).

    Args:
        money_column: ``revenue_inr`` or ``revenue``.
        timezone: IANA time zone whose calendar days are the transaction days.
        start: orders on earlier (local) days are ignored (optional).
        buckets: person buckets per tenant (the unit of parallel work downstream).
    """

    def __init__(
        self,
        money_column: str = "revenue_inr",
        timezone: str = "UTC",
        start: dt.date | None = None,
        buckets: int = DEFAULT_BUCKETS,
    ):
        super().__init__()
        if money_column not in MONEY_COLUMNS:
            raise ValueError(f"money column must be one of {MONEY_COLUMNS}, got {money_column!r}")
        if buckets < 1:
            raise ValueError("buckets must be >= 1")
        zoneinfo.ZoneInfo(timezone)  # fail while building the graph, not in a worker
        self.args = (money_column, timezone, start, buckets)

    def expand(self, batches):
        return batches | "Orders" >> beam.ParDo(_OrdersFromBatchFn(*self.args))


class _SummariseFn(beam.DoFn):
    def __init__(self, calibration_end: dt.date, period_days: float, holdout_end: dt.date | None):
        self.args = (calibration_end, period_days, holdout_end)
        self.duplicates = Metrics.counter("clv", "duplicate_order_ids")
        self.persons = Metrics.counter("clv", "persons_summarised")
        self.late = Metrics.counter("clv", "persons_without_calibration_orders")

    def process(self, element):
        (tenant, _bucket), tables = element
        orders = pa.concat_tables(list(tables))
        batch, dropped = summarise_order_table(orders, *self.args)
        self.duplicates.inc(dropped)
        self.persons.inc(len(batch.summaries))
        self.late.inc(pc.count_distinct(orders["person_id"]).as_py() - len(batch.summaries))
        if len(batch.summaries):
            yield tenant, batch


class SummariseCustomers(beam.PTransform):
    """((tenant, bucket), orders tables) -> (tenant, SummaryBatch) per bucket with any customer."""

    def __init__(self, calibration_end: dt.date, period_days: float = 7.0, holdout_end: dt.date | None = None):
        super().__init__()
        if period_days <= 0:
            raise ValueError("period_days must be positive")
        if holdout_end is not None and holdout_end <= calibration_end:
            raise ValueError("the holdout must end after the calibration end")
        self.args = (calibration_end, period_days, holdout_end)

    def expand(self, orders):
        return orders | "GroupByBucket" >> beam.GroupByKey() | "Summarise" >> beam.ParDo(_SummariseFn(*self.args))


class _FitCombineFn(beam.CombineFn):
    """Sufficient statistics per tenant, then one fit.

    BG/NBD customers with the same (x, t_x, T) share a likelihood term, so the accumulator is a
    count per distinct triple (days are whole numbers: millions of customers collapse to far
    fewer terms). Gamma-Gamma keeps (x, mean spend) of the repeat customers.
    """

    def create_accumulator(self):
        return {"bg": collections.Counter(), "gg_x": [], "gg_m": [], "currencies": set(), "n": 0}

    def add_input(self, acc, batch: SummaryBatch):
        s = batch.summaries
        counts = s.groupby(["frequency", "recency", "T"]).size()
        acc["bg"].update(dict(zip(counts.index.tolist(), counts.to_numpy().tolist(), strict=True)))
        spend = (s["frequency"] > 0) & (s["monetary"] > 0)  # NaN (no known spend) is not > 0
        acc["gg_x"].append(s.loc[spend, "frequency"].to_numpy(dtype=float))
        acc["gg_m"].append(s.loc[spend, "monetary"].to_numpy(dtype=float))
        acc["currencies"] |= batch.currencies
        acc["n"] += len(s)
        return acc

    def merge_accumulators(self, accumulators):
        merged = self.create_accumulator()
        for acc in accumulators:
            merged["bg"].update(acc["bg"])
            merged["gg_x"].extend(acc["gg_x"])
            merged["gg_m"].extend(acc["gg_m"])
            merged["currencies"] |= acc["currencies"]
            merged["n"] += acc["n"]
        return merged

    def extract_output(self, acc):
        x = np.concatenate(acc["gg_x"]) if acc["gg_x"] else np.empty(0)
        m = np.concatenate(acc["gg_m"]) if acc["gg_m"] else np.empty(0)
        return fit_models(acc["bg"], x, m, acc["currencies"], acc["n"])


def fit_models(
    bg_counts: collections.Counter, gg_x: np.ndarray, gg_m: np.ndarray, currencies: set[str], n_customers: int
) -> dict:
    """Fit both models on one tenant's sufficient statistics; the result is what clv_model.json holds."""
    if len(currencies) > 1:
        raise ValueError(
            f"the money column mixes currencies {sorted(currencies)}; use --money-column revenue_inr "
            "or select one tenant with a single currency"
        )
    triples = np.array(list(bg_counts), dtype=float).reshape(-1, 3)
    weights = np.array(list(bg_counts.values()), dtype=float)
    bg, bg_fit = fit_bgnbd(triples[:, 0], triples[:, 1], triples[:, 2], weights)
    model = {
        "currency": next(iter(currencies), None),
        "n_customers": int(n_customers),
        "n_repeat_customers": int(np.sum(weights[triples[:, 0] > 0])),
        "n_gamma_gamma_customers": len(gg_x),
        "r": bg.r,
        "alpha": bg.alpha,
        "a": bg.a,
        "b": bg.b,
        "bgnbd_log_likelihood": bg_fit.log_likelihood,
        "bgnbd_converged": bg_fit.converged,
        "bgnbd_at_bound": bg_fit.at_bound,
        "p": None,
        "q": None,
        "v": None,
        "gamma_gamma_log_likelihood": None,
        "gamma_gamma_converged": None,
        "gamma_gamma_at_bound": None,
    }
    if len(gg_x):
        gg, gg_fit = fit_gamma_gamma(gg_x, gg_m)
        model.update(
            p=gg.p,
            q=gg.q,
            v=gg.v,
            gamma_gamma_log_likelihood=gg_fit.log_likelihood,
            gamma_gamma_converged=gg_fit.converged,
            gamma_gamma_at_bound=gg_fit.at_bound,
        )
    return model


class FitClvModels(beam.PTransform):
    """(tenant, SummaryBatch) -> (tenant_id, model dict): one BG/NBD + Gamma-Gamma fit per tenant."""

    def expand(self, summaries):
        return summaries | "Fit" >> beam.CombinePerKey(_FitCombineFn())


def predict_table(
    tenant: str,
    summaries: pd.DataFrame,
    model: dict,
    horizon_periods: int,
    discount_rate: float,
    holdout_periods: float | None = None,
) -> pa.Table:
    """Prediction rows (:data:`PREDICTIONS_SCHEMA`) for one tenant's summaries, vectorised."""
    bg = BgNbdParams(model["r"], model["alpha"], model["a"], model["b"])
    n = len(summaries)
    x = summaries["frequency"].to_numpy(dtype=float)
    t_x = summaries["recency"].to_numpy(dtype=float)
    T = summaries["T"].to_numpy(dtype=float)
    m = summaries["monetary"].to_numpy(dtype=float)
    if model.get("p") is not None:
        gg = GammaGammaParams(model["p"], model["q"], model["v"])
        aov = expected_average_order_value(gg, x, m)
        value = customer_lifetime_value(bg, gg, x, t_x, T, m, horizon_periods, discount_rate)
    else:
        aov = value = np.full(n, np.nan)

    def floats(values) -> pa.Array:
        values = np.asarray(values, dtype=float)
        return pa.array(values, pa.float64(), mask=np.isnan(values))

    holdout = holdout_periods is not None
    columns = {
        "tenant_id": pa.array([tenant] * n, pa.string()),
        "person_id": pa.array(summaries["person_id"], pa.string()),
        "user_id": pa.array(summaries["user_id"], pa.string(), from_pandas=True),
        "currency": pa.array([model.get("currency")] * n, pa.string()),
        "first_purchase": pa.array(summaries["first_purchase"].to_numpy(dtype=np.int32), pa.date32()),
        "last_purchase": pa.array(summaries["last_purchase"].to_numpy(dtype=np.int32), pa.date32()),
        "frequency": pa.array(summaries["frequency"].to_numpy(dtype=np.int64)),
        "recency": floats(t_x),
        "T": floats(T),
        "monetary": floats(m),
        "expected_purchases": floats(expected_purchases(bg, horizon_periods, x, t_x, T)),
        "p_alive": floats(probability_alive(bg, x, t_x, T)),
        "expected_aov": floats(aov),
        "clv": floats(value),
        "holdout_transactions": pa.array(summaries["holdout_transactions"].to_numpy(dtype=np.int64))
        if holdout
        else pa.nulls(n, pa.int64()),
        "holdout_value": floats(summaries["holdout_value"]) if holdout else pa.nulls(n, pa.float64()),
        "holdout_expected_purchases": floats(expected_purchases(bg, holdout_periods, x, t_x, T))
        if holdout
        else pa.nulls(n, pa.float64()),
    }
    return pa.Table.from_pydict(columns, schema=PREDICTIONS_SCHEMA)


class _PredictFn(beam.DoFn):
    def __init__(self, horizon_periods: int, discount_rate: float, holdout_periods: float | None):
        self.args = (horizon_periods, discount_rate, holdout_periods)

    def process(self, element, models):
        tenant, batch = element
        yield predict_table(tenant, batch.summaries, models[tenant], *self.args)


class PredictClv(beam.PTransform):
    """(tenant, SummaryBatch) + per-tenant models (side input) -> prediction tables (Arrow).

    Args:
        models: the ``(tenant_id, model)`` PCollection from :class:`FitClvModels`.
        horizon_periods: CLV and expected-purchases horizon, in periods.
        discount_rate: per-period discount rate (see :func:`period_discount_rate`).
        holdout_periods: length of the holdout in periods, to predict it per person (optional).
    """

    def __init__(self, models, horizon_periods: int, discount_rate: float, holdout_periods: float | None = None):
        super().__init__()
        if horizon_periods < 0 or discount_rate < 0:
            raise ValueError("horizon_periods and discount_rate must be >= 0")
        self.models = models
        self.args = (horizon_periods, discount_rate, holdout_periods)

    def expand(self, summaries):
        return summaries | "Predict" >> beam.ParDo(_PredictFn(*self.args), models=beam.pvalue.AsDict(self.models))


class _HoldoutCombineFn(beam.CombineFn):
    """Per tenant: actual vs predicted holdout transactions and their per-person correlation."""

    def create_accumulator(self):
        return np.zeros(6)  # n, Σa, Σp, Σa², Σp², Σap

    def add_input(self, acc, table: pa.Table):
        a = table["holdout_transactions"].to_numpy().astype(float)
        p = table["holdout_expected_purchases"].to_numpy().astype(float)
        return acc + np.array([len(a), a.sum(), p.sum(), a @ a, p @ p, a @ p])

    def merge_accumulators(self, accumulators):
        return np.sum(list(accumulators), axis=0)

    def extract_output(self, acc):
        n, sa, sp, saa, spp, sap = acc.tolist()
        var_a, var_p = n * saa - sa * sa, n * spp - sp * sp
        corr = (n * sap - sa * sp) / math.sqrt(var_a * var_p) if var_a > 0 and var_p > 0 else None
        return {"actual_transactions": round(sa), "predicted_transactions": sp, "correlation": corr}


class HoldoutComparison(beam.PTransform):
    """Prediction tables (with holdout columns) -> (tenant_id, {actual, predicted, correlation})."""

    def expand(self, tables):
        return (
            tables
            | "KeyByTenant" >> beam.Map(lambda t: (t["tenant_id"][0].as_py(), t))
            | "Compare" >> beam.CombinePerKey(_HoldoutCombineFn())
        )
