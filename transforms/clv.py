"""Customer lifetime value: the BG/NBD purchase model and the Gamma-Gamma spend model.

Pure numpy/scipy; no Beam, no IO. The pipeline (``pipelines/clv.py``) summarises each person's
orders with :func:`summarise_orders`, fits both models once on the whole summary and predicts per
person with the functions at the bottom.

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

import datetime as dt
import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass

import numpy as np
from scipy import optimize, special

__all__ = [
    "BgNbdParams",
    "CustomerSummary",
    "GammaGammaParams",
    "bgnbd_log_likelihood",
    "bgnbd_log_likelihood_terms",
    "customer_lifetime_value",
    "expected_average_order_value",
    "expected_purchases",
    "fit_bgnbd",
    "fit_gamma_gamma",
    "gamma_gamma_log_likelihood",
    "gamma_gamma_log_likelihood_terms",
    "merge_same_day",
    "period_discount_rate",
    "probability_alive",
    "summarise_orders",
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


@dataclass(frozen=True)
class FitResult:
    params: tuple[float, ...]
    log_likelihood: float
    converged: bool
    iterations: int


def _maximise(neg_ll, starts: Sequence[Sequence[float]]) -> FitResult:
    """Minimise ``neg_ll`` over log-parameters from several starts; keep the best.

    Each start runs Nelder-Mead (robust far from the optimum) then polishes with L-BFGS-B.
    Working in logs keeps every parameter positive without bounds.
    """
    best: FitResult | None = None
    for start in starts:
        theta0 = np.log(np.asarray(start, dtype=float))
        coarse = optimize.minimize(
            neg_ll, theta0, method="Nelder-Mead", options={"maxiter": 4000, "xatol": 1e-8, "fatol": 1e-10}
        )
        fine = optimize.minimize(
            neg_ll, coarse.x, method="L-BFGS-B", options={"maxiter": 2000, "ftol": 1e-14, "gtol": 1e-8}
        )
        res = fine if fine.fun <= coarse.fun else coarse
        if not np.isfinite(res.fun):
            continue
        candidate = FitResult(
            params=tuple(float(p) for p in np.exp(res.x)),
            log_likelihood=float(-res.fun),
            converged=bool(coarse.success or fine.success),
            iterations=int(coarse.nit + fine.nit),
        )
        if best is None or candidate.log_likelihood > best.log_likelihood:
            best = candidate
    if best is None:
        raise ValueError("the likelihood is not finite at any starting point")
    return best


def fit_bgnbd(x, t_x, T, weights=None) -> tuple[BgNbdParams, FitResult]:
    """Maximum-likelihood BG/NBD parameters for customers (x, t_x, T) (optionally weighted counts)."""
    x, t_x, T = _arrays(x, t_x, T)
    if x.size == 0:
        raise ValueError("no customers to fit")
    if np.any(x < 0) or np.any(t_x < 0) or np.any(t_x > T + 1e-9):
        raise ValueError("need x >= 0 and 0 <= t_x <= T")
    w = np.ones_like(x) if weights is None else np.asarray(weights, dtype=float)
    scale = max(float(np.average(T, weights=w)), 1e-3)

    def neg_ll(theta: np.ndarray) -> float:
        r, alpha, a, b = np.exp(theta)
        value = -bgnbd_log_likelihood(BgNbdParams(r, alpha, a, b), x, t_x, T, w)
        return value if np.isfinite(value) else 1e300

    starts = [(1.0, scale, 1.0, 1.0), (0.5, scale / 4, 0.5, 2.0), (0.1, 1.0, 0.1, 0.1)]
    fit = _maximise(neg_ll, starts)
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


def fit_gamma_gamma(x, m) -> tuple[GammaGammaParams, FitResult]:
    """Maximum-likelihood Gamma-Gamma parameters on repeat customers (x > 0, m > 0 only)."""
    x, m = _arrays(x, m)
    if x.size == 0:
        raise ValueError("no repeat customers to fit the spend model on")
    if np.any(x <= 0) or np.any(~(m > 0)):
        raise ValueError("the Gamma-Gamma model needs x > 0 and a positive mean spend")
    mean = float(np.mean(m))

    def neg_ll(theta: np.ndarray) -> float:
        p, q, v = np.exp(theta)
        value = -gamma_gamma_log_likelihood(GammaGammaParams(p, q, v), x, m)
        return value if np.isfinite(value) else 1e300

    # E[M] = p v / (q - 1): the starts put the population mean near the sample mean.
    starts = [(1.0, 2.0, mean), (5.0, 3.0, mean * 2 / 5), (1.0, 1.0, 1.0)]
    fit = _maximise(neg_ll, starts)
    return GammaGammaParams(*fit.params), fit


def expected_average_order_value(params: GammaGammaParams, x, m) -> np.ndarray:
    """E[M | p, q, v, x, m] = (q-1)/(px+q-1) * pv/(q-1) + px/(px+q-1) * m.

    A weighted mean of the population mean pv/(q-1) and the person's own mean; with x = 0 (or no
    known spend) it is the population mean. Needs q > 1 (otherwise the mean does not exist: NaN).
    """
    p, q, v = params.p, params.q, params.v
    x, m = _arrays(x, m)
    if q <= 1:
        return np.full(np.broadcast(x, m).shape, np.nan)
    known = (x > 0) & np.isfinite(m)
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
