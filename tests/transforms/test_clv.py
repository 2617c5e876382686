"""BG/NBD + Gamma-Gamma: published CDNOW results, hand-made summaries, independent numerical checks."""

from __future__ import annotations

import collections
import csv
import datetime as dt
import importlib.util
import math
import os
from decimal import Decimal

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import integrate, optimize, stats

from schemas.lake import EVENTS_FILE_SCHEMA
from transforms.clv import (
    ORDER_COLUMNS,
    ORDERS_SCHEMA,
    BgNbdParams,
    GammaGammaParams,
    bgnbd_log_likelihood,
    customer_lifetime_value,
    expected_average_order_value,
    expected_purchases,
    fit_bgnbd,
    fit_gamma_gamma,
    fit_models,
    gamma_gamma_log_likelihood_terms,
    merge_same_day,
    order_table,
    period_discount_rate,
    predict_table,
    probability_alive,
    summarise_order_table,
    summarise_orders,
    tenant_from_path,
)

LIFETIMES_DATA = os.path.join(importlib.util.find_spec("lifetimes").submodule_search_locations[0], "datasets")
CALIBRATION_END = dt.date(1997, 9, 30)
HOLDOUT_END = dt.date(1998, 6, 30)
PUBLISHED_BGNBD = BgNbdParams(r=0.243, alpha=4.414, a=0.793, b=2.426)
PUBLISHED_GG = GammaGammaParams(p=6.25, q=3.74, v=15.44)

D = dt.date


def read_cdnow_sample() -> dict[int, list[tuple[dt.date, float]]]:
    """The raw CDNOW 1/10 sample: one (day, dollars) per row, nothing merged."""
    orders: dict[int, list[tuple[dt.date, float]]] = collections.defaultdict(list)
    with open(os.path.join(LIFETIMES_DATA, "CDNOW_sample.txt")) as fh:
        for line in fh:
            _master, sample_id, day, _cds, dollars = line.split()
            orders[int(sample_id)].append((dt.datetime.strptime(day, "%Y%m%d").date(), float(dollars)))
    return orders


@pytest.fixture(scope="module")
def cdnow():
    orders = read_cdnow_sample()
    summaries = {cid: summarise_orders(o, CALIBRATION_END, 7.0, HOLDOUT_END) for cid, o in orders.items()}
    ids = sorted(summaries)
    arr = {
        "id": ids,
        "x": np.array([summaries[i].frequency for i in ids], dtype=float),
        "t_x": np.array([summaries[i].recency for i in ids]),
        "T": np.array([summaries[i].T for i in ids]),
        "m": np.array([summaries[i].monetary for i in ids]),
        "holdout": np.array([summaries[i].holdout_transactions for i in ids]),
        "rows": sum(len(o) for o in orders.values()),
    }
    return arr


# ----------------------------------------------------------------------------- summary


def test_same_day_orders_are_one_transaction():
    orders = [(D(2024, 1, 1), 100.0), (D(2024, 1, 1), 50.0), (D(2024, 1, 8), 30.0), (D(2024, 1, 8), 10.0)]
    assert merge_same_day(orders) == [(D(2024, 1, 1), 150.0), (D(2024, 1, 8), 40.0)]
    s = summarise_orders(orders, calibration_end=D(2024, 1, 29), period_days=7)
    assert s.frequency == 1
    assert s.recency == pytest.approx(1.0)  # 7 days / 7
    assert s.T == pytest.approx(4.0)  # noqa: SIM300 (T is not a constant): 28 days / 7
    assert s.monetary == pytest.approx(40.0)  # the repeat day's merged value, the first day excluded


def test_single_purchase_has_zero_frequency_and_no_monetary():
    s = summarise_orders([(D(2024, 3, 1), 999.0)], calibration_end=D(2024, 3, 11), period_days=1)
    assert (s.frequency, s.recency, s.T) == (0, 0.0, 10.0)
    assert math.isnan(s.monetary)


def test_monetary_is_mean_of_repeat_days_and_period_is_only_the_unit():
    orders = [(D(2024, 1, 1), 10.0), (D(2024, 1, 2), 20.0), (D(2024, 1, 3), 40.0), (D(2024, 1, 3), 20.0)]
    weekly = summarise_orders(orders, D(2024, 1, 15), period_days=7)
    daily = summarise_orders(orders, D(2024, 1, 15), period_days=1)
    # two distinct purchase days after the first, even though both fall into the same week
    assert weekly.frequency == daily.frequency == 2
    assert weekly.monetary == daily.monetary == pytest.approx((20.0 + 60.0) / 2)
    assert daily.recency == pytest.approx(2.0) and weekly.recency == pytest.approx(2 / 7)
    assert daily.T == pytest.approx(14.0) and weekly.T == pytest.approx(2.0)  # noqa: SIM300


def test_calibration_and_holdout_split():
    orders = [
        (D(2024, 1, 1), 5.0),
        (D(2024, 1, 20), 5.0),
        (D(2024, 2, 5), 7.0),
        (D(2024, 2, 5), 1.0),
        (D(2024, 3, 9), 2.0),
    ]
    s = summarise_orders(orders, calibration_end=D(2024, 1, 31), period_days=1, holdout_end=D(2024, 2, 29))
    assert (s.frequency, s.recency, s.T) == (1, 19.0, 30.0)
    assert s.holdout_transactions == 1  # Feb 5 (two orders, one day); Mar 9 is after the holdout
    assert s.holdout_value == pytest.approx(8.0)
    assert summarise_orders([(D(2024, 2, 1), 1.0)], calibration_end=D(2024, 1, 31)) is None


def test_orders_without_value_count_as_purchases():
    orders = [(D(2024, 1, 1), 10.0), (D(2024, 1, 5), None), (D(2024, 1, 9), 30.0)]
    s = summarise_orders(orders, D(2024, 1, 10), period_days=1)
    assert s.frequency == 2
    assert s.monetary == pytest.approx(30.0)


def test_cdnow_summary_matches_the_published_summary(cdnow):
    """Our summary from the raw rows vs the authors' own x, t_x, T, zbar (rounded to 2 decimals)."""
    assert cdnow["rows"] == 6919
    assert len(cdnow["id"]) == 2357
    index = {cid: k for k, cid in enumerate(cdnow["id"])}
    with open(os.path.join(LIFETIMES_DATA, "cdnow_customers_summary_with_transactions.csv")) as fh:
        published = list(csv.DictReader(fh))
    assert len(published) > 2300
    for row in published:
        k = index[int(row["ID"])]
        assert cdnow["x"][k] == int(row["x"])
        assert cdnow["t_x"][k] == pytest.approx(float(row["t_x"]), abs=0.006)
        assert cdnow["T"][k] == pytest.approx(float(row["T"]), abs=0.006)
        if int(row["x"]) > 0:
            assert cdnow["m"][k] == pytest.approx(float(row["zbar"]), abs=0.006)


# ----------------------------------------------------------------------------- BG/NBD


def test_bgnbd_log_likelihood_at_published_parameters(cdnow):
    ll = bgnbd_log_likelihood(PUBLISHED_BGNBD, cdnow["x"], cdnow["t_x"], cdnow["T"])
    assert ll == pytest.approx(-9582.4, abs=0.5)


def test_bgnbd_fit_reproduces_published_estimates(cdnow):
    params, fit = fit_bgnbd(cdnow["x"], cdnow["t_x"], cdnow["T"])
    for name in ("r", "alpha", "a", "b"):
        assert getattr(params, name) == pytest.approx(getattr(PUBLISHED_BGNBD, name), rel=0.01), name
    assert fit.log_likelihood == pytest.approx(-9582.4, abs=0.5)
    assert fit.log_likelihood >= bgnbd_log_likelihood(PUBLISHED_BGNBD, cdnow["x"], cdnow["t_x"], cdnow["T"]) - 1e-6


def test_bgnbd_weighted_fit_equals_fit_on_repeated_rows():
    x = np.array([0, 1, 3, 0, 2])
    t_x = np.array([0.0, 5.0, 20.0, 0.0, 12.0])
    T = np.array([30.0, 30.0, 25.0, 10.0, 40.0])
    w = np.array([40, 12, 5, 30, 8])
    weighted = bgnbd_log_likelihood(PUBLISHED_BGNBD, x, t_x, T, w)
    expanded = bgnbd_log_likelihood(PUBLISHED_BGNBD, np.repeat(x, w), np.repeat(t_x, w), np.repeat(T, w))
    assert weighted == pytest.approx(expanded)


def _posterior_parts(params: BgNbdParams, x, t_x, T, t):
    """The individual-level model (FHL 2005 eqs. 3 and 7) integrated over the priors, without 2F1.

    Over lam ~ Gamma(r, alpha) analytically: ∫ lam^x e^(-lam s) g(lam) dlam = K(s); over
    p ~ Beta(a, b) numerically. K is scaled by K(t_x) (``log_scale``) so that heavy buyers do not
    underflow. Returns (likelihood, P(data and alive), E[future purchases; data], log_scale).
    An alive customer buys (1 - exp(-lam p t)) / p times on average in the next t periods.
    """
    r, alpha = params.r, params.alpha
    const = math.lgamma(r + x) - math.lgamma(r) + r * math.log(alpha)
    log_scale = const - (r + x) * math.log(alpha + t_x)

    def K(s):
        return math.exp(const - (r + x) * math.log(alpha + s) - log_scale)

    prior_p = stats.beta(params.a, params.b).pdf

    def quad(f):
        return integrate.quad(lambda p: f(p) * prior_p(p), 0, 1, epsabs=0, epsrel=1e-10, limit=500)[0]

    alive = quad(lambda p: (1 - p) ** x * K(T))
    dropped = quad(lambda p: p * (1 - p) ** (x - 1) * K(t_x)) if x > 0 else 0.0
    future = quad(lambda p: (1 - p) ** x / p * (K(T) - K(T + p * t)))
    return alive + dropped, alive, future, log_scale


@pytest.mark.filterwarnings("ignore::scipy.integrate.IntegrationWarning")
@pytest.mark.parametrize(
    ("params", "x", "t_x", "T", "t"),
    [
        (PUBLISHED_BGNBD, 0, 0.0, 38.86, 39.0),
        (PUBLISHED_BGNBD, 2, 30.43, 38.86, 39.0),
        (PUBLISHED_BGNBD, 5, 10.0, 35.0, 39.0),
        (PUBLISHED_BGNBD, 1, 1.71, 20.0, 39.0),
        # heavy buyers and long horizons (days as periods): where 2F1 is hardest to evaluate
        (PUBLISHED_BGNBD, 200, 100.0, 100.0, 52.0),
        (PUBLISHED_BGNBD, 200, 60.0, 100.0, 52.0),
        (BgNbdParams(0.5, 30.0, 0.3, 5.0), 500, 1000.0, 1000.0, 365.0),
        (BgNbdParams(0.5, 30.0, 0.3, 5.0), 3, 1.0, 365.0, 3650.0),
    ],
)
def test_predictions_match_numerical_integration_over_the_posterior(params, x, t_x, T, t):
    total, alive, future, log_scale = _posterior_parts(params, x, t_x, T, t)
    assert float(probability_alive(params, x, t_x, T)) == pytest.approx(alive / total, rel=1e-7)
    assert float(expected_purchases(params, t, x, t_x, T)) == pytest.approx(future / total, rel=1e-7)
    # and the closed-form likelihood is the log of the same integral
    assert bgnbd_log_likelihood(params, [x], [t_x], [T]) == pytest.approx(math.log(total) + log_scale, abs=1e-7)


def test_cdnow_holdout_prediction(cdnow):
    """Weeks 40-78: the published comparison is ~1,882 actual vs ~1,654 predicted repeat transactions."""
    predicted = expected_purchases(PUBLISHED_BGNBD, 39.0, cdnow["x"], cdnow["t_x"], cdnow["T"])
    assert int(cdnow["holdout"].sum()) == pytest.approx(1882, abs=5)
    assert float(predicted.sum()) == pytest.approx(1654, rel=0.01)
    assert np.corrcoef(predicted, cdnow["holdout"])[0, 1] == pytest.approx(0.63, abs=0.02)


# ----------------------------------------------------------------------------- Gamma-Gamma


def test_gamma_gamma_fit_reproduces_published_estimates(cdnow):
    repeat = cdnow["x"] > 0
    assert int(repeat.sum()) == 946
    params, fit = fit_gamma_gamma(cdnow["x"][repeat], cdnow["m"][repeat])
    assert params.p == pytest.approx(PUBLISHED_GG.p, rel=0.01)
    assert params.q == pytest.approx(PUBLISHED_GG.q, rel=0.01)
    assert params.v == pytest.approx(PUBLISHED_GG.v, rel=0.01)
    assert np.isfinite(fit.log_likelihood)


def test_gamma_gamma_spend_scale():
    """p and q are unit-free; v scales with the currency unit (dollars -> cents multiplies v by 100)."""
    rng = np.random.default_rng(7)
    x = rng.integers(1, 8, size=400).astype(float)
    nu = rng.gamma(shape=4.0, scale=1 / 20.0, size=400)  # q = 4, v = 20
    m = np.array([rng.gamma(shape=3.0 * k, scale=1 / (n * k)) for k, n in zip(x, nu, strict=True)])  # p = 3
    dollars, _ = fit_gamma_gamma(x, m)
    cents, _ = fit_gamma_gamma(x, m * 100)
    assert cents.p == pytest.approx(dollars.p, rel=1e-3)
    assert cents.q == pytest.approx(dollars.q, rel=1e-3)
    assert cents.v == pytest.approx(dollars.v * 100, rel=1e-3)


def test_gamma_gamma_density_integrates_to_one():
    for x in (1, 2, 7):
        value, _ = integrate.quad(
            lambda m, x=x: math.exp(gamma_gamma_log_likelihood_terms(PUBLISHED_GG, [x], [m])[0]), 0, np.inf
        )
        assert value == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize(("x", "m"), [(1, 11.77), (2, 22.35), (6, 80.0)])
def test_expected_aov_matches_posterior_mean(x, m):
    """E[M] = E[p / nu | data] with nu's posterior ∝ Gamma(q, v) prior * nu^(px) exp(-nu x m)."""
    p, q, v = PUBLISHED_GG.p, PUBLISHED_GG.q, PUBLISHED_GG.v

    mode = (q + p * x - 1) / (v + x * m)  # where the integrand peaks: helps quad find the mass

    def log_weight(nu):
        return stats.gamma(a=q, scale=1 / v).logpdf(nu) + p * x * math.log(nu) - nu * x * m

    def weight(nu):  # scaled by its value at the mode so that quad's absolute tolerance means something
        return math.exp(log_weight(nu) - log_weight(mode))

    norm, _ = integrate.quad(weight, 0, 50 * mode, points=[mode], limit=200)
    mean, _ = integrate.quad(lambda nu: p / nu * weight(nu), 0, 50 * mode, points=[mode], limit=200)
    assert float(expected_average_order_value(PUBLISHED_GG, x, m)) == pytest.approx(mean / norm, rel=1e-6)


def test_expected_aov_without_repeat_or_positive_spend_is_the_population_mean():
    population = PUBLISHED_GG.p * PUBLISHED_GG.v / (PUBLISHED_GG.q - 1)
    aov = expected_average_order_value(PUBLISHED_GG, [0, 3, 2], [math.nan, math.nan, -5.0])
    np.testing.assert_allclose(aov, population)


# ----------------------------------------------------------------------------- CLV


def test_clv_without_discount_is_expected_purchases_times_aov():
    x, t_x, T, m = np.array([0, 3]), np.array([0.0, 20.0]), np.array([30.0, 30.0]), np.array([math.nan, 50.0])
    clv = customer_lifetime_value(PUBLISHED_BGNBD, PUBLISHED_GG, x, t_x, T, m, horizon_periods=52, discount_rate=0.0)
    expected = expected_purchases(PUBLISHED_BGNBD, 52, x, t_x, T) * expected_average_order_value(PUBLISHED_GG, x, m)
    np.testing.assert_allclose(clv, expected, rtol=1e-10)


def test_clv_discounting_by_hand():
    """Two periods by hand: purchases in period 1 discounted once, in period 2 twice."""
    x, t_x, T, m, d = 2, 10.0, 20.0, 30.0, 0.05
    y1 = float(expected_purchases(PUBLISHED_BGNBD, 1, x, t_x, T))
    y2 = float(expected_purchases(PUBLISHED_BGNBD, 2, x, t_x, T))
    aov = float(expected_average_order_value(PUBLISHED_GG, x, m))
    by_hand = aov * (y1 / 1.05 + (y2 - y1) / 1.05**2)
    assert float(customer_lifetime_value(PUBLISHED_BGNBD, PUBLISHED_GG, x, t_x, T, m, 2, d)) == pytest.approx(by_hand)


def test_period_discount_rate_compounds_the_monthly_rate():
    assert period_discount_rate(0.01, 365.25 / 12) == pytest.approx(0.01)
    assert (1 + period_discount_rate(0.01, 7)) ** (365.25 / 7) == pytest.approx(1.01**12)


# ----------------------------------------------------------------------------- lake rows -> orders


def _lake_table(rows: list[dict]) -> pa.Table:
    schema = pa.schema([EVENTS_FILE_SCHEMA.field(name) for name in ORDER_COLUMNS])
    return pa.Table.from_pylist([{name: row.get(name) for name in ORDER_COLUMNS} for row in rows], schema=schema)


def test_order_table_keeps_order_completed_tracks_only():
    utc = dt.UTC
    table = _lake_table(
        [
            {"type": "track", "event": "Order Completed", "person_id": "p1", "user_id": "u1", "order_id": "o1",
             "timestamp": dt.datetime(2025, 3, 1, 23, 59, tzinfo=utc), "currency": "USD",
             "revenue": Decimal("10.5000"), "revenue_inr": Decimal("880.2500")},
            {"type": "track", "event": "Order Refunded", "person_id": "p1", "order_id": "o1",
             "timestamp": dt.datetime(2025, 3, 2, tzinfo=utc), "revenue": Decimal("10.5")},
            {"type": "page", "event": None, "person_id": "p1", "timestamp": dt.datetime(2025, 3, 2, tzinfo=utc)},
            {"type": "track", "event": "Order Completed", "person_id": "p2", "order_id": None,
             "timestamp": dt.datetime(2025, 3, 2, 0, 0, 1, tzinfo=utc), "currency": "INR"},
        ]
    )  # fmt: skip
    assert order_table(table).to_pylist() == [
        {
            "person_id": "p1",
            "user_id": "u1",
            "day": D(2025, 3, 1),
            "value": 880.25,
            "order_id": "o1",
            "currency": "INR",
        },
        {"person_id": "p2", "user_id": None, "day": D(2025, 3, 2), "value": None, "order_id": None, "currency": "INR"},
    ]
    original = order_table(table, "revenue").to_pylist()
    assert [(o["value"], o["currency"]) for o in original] == [(10.5, "USD"), (None, "INR")]
    assert order_table(table, start=D(2025, 3, 2))["person_id"].to_pylist() == ["p2"]
    with pytest.raises(ValueError, match="money column"):
        order_table(table, "total")


def _orders(rows: list[tuple]) -> pa.Table:
    """(person, day, value, order_id[, currency]) tuples -> an ORDERS_SCHEMA table."""
    return pa.Table.from_pylist(
        [
            {"person_id": r[0], "user_id": f"u-{r[0]}", "day": r[1], "value": r[2], "order_id": r[3],
             "currency": r[4] if len(r) > 4 else "INR"}
            for r in rows
        ],
        schema=ORDERS_SCHEMA,
    )  # fmt: skip


def test_summarise_order_table_dedupes_order_ids_and_merges_days():
    orders = _orders(
        [
            ("p", D(2025, 1, 2), 100.0, "o1"),
            ("p", D(2025, 1, 1), 100.0, "o1"),  # the same order reported a day earlier: the earliest survives
            ("p", D(2025, 1, 8), 50.0, None),
            ("p", D(2025, 1, 8), 50.0, None),  # no id: cannot tell, both kept (and merged into one day)
            ("p", D(2025, 1, 8), 5.0, "o2"),
            ("q", D(2025, 1, 15), 7.0, "o1"),  # order ids are per person
            ("late", D(2025, 2, 1), 1.0, "x"),  # first order after the calibration end
        ]
    )
    batch, dropped = summarise_order_table(orders, calibration_end=D(2025, 1, 31), period_days=7.0)
    assert dropped == 1
    assert batch.currencies == {"INR"}
    rows = batch.summaries.set_index("person_id")
    assert list(rows.index) == ["p", "q"]
    assert rows.loc["p", "frequency"] == 1 and rows.loc["p", "monetary"] == pytest.approx(105.0)
    assert rows.loc["p", "recency"] == pytest.approx(1.0) and rows.loc["p", "T"] == pytest.approx(30 / 7)
    assert rows.loc["q", "frequency"] == 0 and math.isnan(rows.loc["q", "monetary"])
    assert rows.loc["p", "user_id"] == "u-p"


order_rows = st.lists(
    st.tuples(
        st.sampled_from(["a", "b", "c", "d"]),
        st.dates(min_value=D(2025, 1, 1), max_value=D(2025, 3, 31)),
        st.one_of(st.none(), st.floats(min_value=0, max_value=1e4, allow_nan=False)),
        st.one_of(st.none(), st.sampled_from(["o1", "o2", "o3", "o4", "o5", "o6"])),
    ),
    max_size=40,
)


@settings(max_examples=150, deadline=None)
@given(order_rows, st.sampled_from([1.0, 7.0, 30.0]), st.booleans())
def test_vectorised_summary_equals_the_per_person_definition(rows, period_days, with_holdout):
    """summarise_order_table (pandas, many persons) == summarise_orders (one person, reference)."""
    calibration_end, holdout_end = D(2025, 2, 15), (D(2025, 3, 15) if with_holdout else None)
    batch, dropped = summarise_order_table(_orders(rows), calibration_end, period_days, holdout_end)
    expected, expected_dropped = {}, 0
    for person in sorted({r[0] for r in rows}):
        mine = [r for r in rows if r[0] == person]
        survivors = {}
        for r in sorted(mine, key=lambda r: (r[1], -math.inf if r[2] is None else r[2])):
            if r[3] is None:
                survivors[id(r)] = r
            elif r[3] in survivors:
                expected_dropped += 1
            else:
                survivors[r[3]] = r
        summary = summarise_orders(
            [(r[1], r[2]) for r in survivors.values()], calibration_end, period_days, holdout_end
        )
        if summary is not None:
            expected[person] = summary
    assert dropped == expected_dropped
    got = {row["person_id"]: row for row in batch.summaries.to_dict("records")}
    assert set(got) == set(expected)
    for person, summary in expected.items():
        row = got[person]
        assert row["frequency"] == summary.frequency
        assert row["recency"] == pytest.approx(summary.recency)
        assert row["T"] == pytest.approx(summary.T)
        assert row["first_purchase"] == (summary.first_purchase - D(1970, 1, 1)).days
        if math.isnan(summary.monetary):
            assert math.isnan(row["monetary"])
        else:
            assert row["monetary"] == pytest.approx(summary.monetary)
        if with_holdout:
            assert row["holdout_transactions"] == summary.holdout_transactions
            assert row["holdout_value"] == pytest.approx(summary.holdout_value)


def test_summarise_order_table_reports_currencies_of_calibration_orders():
    orders = _orders([("a", D(2025, 1, 1), 1.0, "o1", "USD"), ("a", D(2025, 3, 1), 1.0, "o2", "EUR")])
    batch, _ = summarise_order_table(orders, D(2025, 1, 31), 7.0, D(2025, 3, 31))
    assert batch.currencies == {"USD"}


@pytest.mark.parametrize(
    ("path", "tenant"),
    [
        ("/lake/events/tenant_id=acme-in/event_date=2025-01-01/part-0.parquet", "acme-in"),
        ("s3://bucket/lake/events/tenant_id=bloom%20in/event_date=2025-01-01/x.parquet", "bloom in"),
    ],
)
def test_tenant_from_path(path, tenant):
    assert tenant_from_path(path) == tenant


def test_tenant_from_path_rejects_other_files():
    with pytest.raises(ValueError, match="tenant_id"):
        tenant_from_path("/lake/events/part-0.parquet")


def test_fit_models_refuses_mixed_currencies():
    counts = collections.Counter({(0, 0.0, 10.0): 5, (1, 3.0, 10.0): 3})
    with pytest.raises(ValueError, match="mixes currencies"):
        fit_models(counts, np.ones(3), np.full(3, 10.0), {"INR", "USD"}, 8)


def test_predict_table_without_spend_model():
    """No repeat customer with a known spend: purchases are predicted, value columns are null."""
    model = {"r": 0.243, "alpha": 4.414, "a": 0.793, "b": 2.426, "p": None, "q": None, "v": None, "currency": "INR"}
    summaries = pd.DataFrame(
        {"person_id": ["p"], "user_id": [None], "frequency": [0], "recency": [0.0], "T": [10.0],
         "monetary": [math.nan], "first_purchase": [20089], "last_purchase": [20089]}
    )  # fmt: skip
    (row,) = predict_table("t", summaries, model, horizon_periods=4, discount_rate=0.0).to_pylist()
    assert row["expected_purchases"] == pytest.approx(float(expected_purchases(PUBLISHED_BGNBD, 4, 0, 0.0, 10.0)))
    assert row["p_alive"] == 1.0
    assert row["first_purchase"] == D(2025, 1, 1)
    assert (row["monetary"], row["expected_aov"], row["clv"], row["holdout_expected_purchases"]) == (None,) * 4


def test_transaction_days_follow_the_time_zone():
    """20:00 and 23:00 UTC on 1 March are 01:30 and 04:30 on 2 March in India: one day there, not in UTC."""
    rows = [
        {"type": "track", "event": "Order Completed", "person_id": "p", "order_id": f"o{h}",
         "timestamp": dt.datetime(2025, 3, 1, h, tzinfo=dt.UTC), "revenue_inr": Decimal(1)}
        for h in (17, 20, 23)
    ]  # fmt: skip
    utc_days = order_table(_lake_table(rows))["day"].to_pylist()
    ist_days = order_table(_lake_table(rows), timezone="Asia/Kolkata")["day"].to_pylist()
    assert utc_days == [D(2025, 3, 1)] * 3
    assert ist_days == [D(2025, 3, 1), D(2025, 3, 2), D(2025, 3, 2)]


# ----------------------------------------------------------------------------- optimiser


def test_analytic_gradients_match_finite_differences(cdnow):
    from transforms.clv import _bgnbd_objective, _gamma_gamma_objective

    x, t_x, T, m = cdnow["x"], cdnow["t_x"], cdnow["T"], cdnow["m"]
    w = np.ones_like(x)
    theta = np.log([0.3, 5.0, 0.9, 2.0])
    value, grad = _bgnbd_objective(theta, x, t_x, T, w)
    assert value == pytest.approx(-bgnbd_log_likelihood(BgNbdParams(*np.exp(theta)), x, t_x, T))
    numeric = optimize.approx_fprime(theta, lambda th: _bgnbd_objective(th, x, t_x, T, w)[0], 1e-6)
    np.testing.assert_allclose(grad, numeric, rtol=1e-4, atol=1e-3)

    repeat = x > 0
    theta = np.log([5.0, 3.0, 20.0])
    _value, grad = _gamma_gamma_objective(theta, x[repeat], m[repeat])
    numeric = optimize.approx_fprime(theta, lambda th: _gamma_gamma_objective(th, x[repeat], m[repeat])[0], 1e-6)
    np.testing.assert_allclose(grad, numeric, rtol=1e-4, atol=1e-3)


def test_homogeneous_dropout_gives_a_finite_honest_fit():
    """Every customer with the same dropout probability: the likelihood is nearly flat along
    a, b -> inf at a fixed a/(a+b). Unbounded, rounding error in the gammaln differences looked
    like likelihood there (a positive log-likelihood at a, b ~ 1e14); the bounded fit stays honest.
    """
    rng = np.random.default_rng(3)
    n = 3000
    lam, p = rng.gamma(0.8, 1 / 5.0, n), 0.2
    first = rng.uniform(0, 10, n)
    xs, txs = [], []
    for k in range(n):
        t, last, x = first[k], first[k], 0
        while True:
            t += rng.exponential(1 / lam[k])
            if t > 40:
                break
            x, last = x + 1, t
            if rng.random() < p:
                break
        xs.append(x)
        txs.append(last - first[k])
    params, fit = fit_bgnbd(xs, txs, 40 - first)
    assert fit.log_likelihood < 0
    assert params.a <= 1e6 and params.b <= 1e6
    assert params.a / (params.a + params.b) == pytest.approx(p, abs=0.03)
    assert params.r == pytest.approx(0.8, rel=0.15) and params.alpha == pytest.approx(5.0, rel=0.15)


def test_a_maximum_beyond_the_bounds_is_reported():
    from transforms.clv import SHAPE_BOUNDS, _maximise

    # -LL decreasing forever in theta: the optimum is the upper bound
    fit = _maximise(lambda th: (float(-th[0]), np.array([-1.0])), [(1.0,)], [SHAPE_BOUNDS])
    assert fit.at_bound and fit.params[0] == pytest.approx(SHAPE_BOUNDS[1])
