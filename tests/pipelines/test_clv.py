"""pipelines.clv on a small hand-written lake, checked against DuckDB SQL over the same files."""

from __future__ import annotations

import datetime as dt
import json
import math

import duckdb
import numpy as np
import pyarrow.parquet as pq
import pytest

from connectors.lake import write_partition_file
from pipelines import clv as clv_pipeline
from pipelines.errors import InputError
from schemas.lake import LakeEvent
from tests.s3_lake import s3_lake_fs  # noqa: F401  (fixture)
from transforms.clv import (
    BgNbdParams,
    GammaGammaParams,
    customer_lifetime_value,
    expected_average_order_value,
    expected_purchases,
    fit_bgnbd,
    fit_gamma_gamma,
    gamma_gamma_log_likelihood,
    period_discount_rate,
    probability_alive,
)

START = dt.date(2025, 1, 1)
CALIBRATION_END = dt.date(2025, 4, 30)
HOLDOUT_END = dt.date(2025, 6, 30)
RECEIVED = dt.datetime(2025, 7, 1, tzinfo=dt.UTC)


def _row(tenant, person, user, ts, message_id, event="Order Completed", type_="track", **money):
    return LakeEvent(
        tenant_id=tenant,
        event_date=ts.date(),
        message_id=message_id,
        type=type_,
        event=event if type_ == "track" else None,
        user_id=user,
        person_id=person,
        timestamp=ts,
        received_at=RECEIVED,
        properties=json.dumps({k: str(v) for k, v in money.items()}),
        **money,
    ).model_dump()


def simulate(tenant: str, n: int, r: float, alpha: float, a: float, b: float, seed: int) -> list[dict]:
    """Orders of a BG/NBD population (times in days) plus noise the pipeline must ignore or merge."""
    rng = np.random.default_rng(seed)
    rows: list[dict] = []
    horizon = (HOLDOUT_END - START).days + 1
    for k in range(n):
        person, user = f"p_{tenant}_{k:04d}", f"u{k}"
        lam, p = rng.gamma(r, 1 / alpha), rng.beta(a, b)
        t = rng.uniform(0, 60)  # first purchase in the first two months
        j = 0
        while t < horizon:
            ts = dt.datetime.combine(START, dt.time(9, 30), tzinfo=dt.UTC) + dt.timedelta(days=float(t))
            value = round(float(rng.gamma(4.0, 400.0)), 2)
            rows.append(
                _row(
                    tenant,
                    person,
                    user,
                    ts,
                    f"{person}-{j}",
                    order_id=f"{person}-o{j}",
                    currency="INR",
                    revenue=value,
                    revenue_inr=value,
                )
            )
            if rng.random() < 0.15:  # a second order the same day: one transaction with the summed value
                rows.append(
                    _row(
                        tenant,
                        person,
                        user,
                        ts + dt.timedelta(minutes=20),
                        f"{person}-{j}b",
                        order_id=f"{person}-o{j}b",
                        currency="INR",
                        revenue=99.0,
                        revenue_inr=99.0,
                    )
                )
            if rng.random() < 0.1:  # the same order reported twice (SDK + webhook): counted once
                rows.append(
                    _row(
                        tenant,
                        person,
                        user,
                        ts,
                        f"{person}-{j}dup",
                        order_id=f"{person}-o{j}",
                        currency="INR",
                        revenue=value,
                        revenue_inr=value,
                    )
                )
            rows.append(_row(tenant, person, user, ts - dt.timedelta(minutes=5), f"{person}-{j}page", type_="page"))
            rows.append(_row(tenant, person, user, ts, f"{person}-{j}view", event="Product Viewed"))
            j += 1
            if rng.random() < p:
                break
            t += rng.exponential(1 / lam) if lam > 0 else horizon
    # first order after the calibration end: no calibration history, not in the output
    late = dt.datetime.combine(CALIBRATION_END + dt.timedelta(days=3), dt.time(8), tzinfo=dt.UTC)
    rows.append(
        _row(
            tenant,
            f"p_{tenant}_late",
            "late",
            late,
            f"{tenant}-late",
            order_id="late",
            currency="INR",
            revenue=5.0,
            revenue_inr=5.0,
        )
    )
    return rows


def write_lake(lake: str, rows: list[dict]) -> None:
    partitions: dict[tuple[str, str], list[dict]] = {}
    for row in rows:
        partitions.setdefault((row["tenant_id"], row["event_date"].isoformat()), []).append(row)
    for (tenant, day), part in partitions.items():
        write_partition_file(lake, "events", {"tenant_id": tenant, "event_date": day}, part, "part-00000.parquet")


SQL_SUMMARY = """
with orders as (   -- one row per order id (duplicates reported twice collapse)
    select distinct tenant_id, person_id, order_id, cast(timestamp as date) as day, cast(revenue_inr as double) as value
    from read_parquet('{lake}/events/**/*.parquet', hive_partitioning = true)
    where type = 'track' and event = 'Order Completed'
), days as (        -- one transaction per person and day
    select tenant_id, person_id, day, sum(value) as value from orders group by all
), firsts as (
    select tenant_id, person_id, min(day) as first_day from days where day <= DATE '{cal}' group by all
)
select d.tenant_id, d.person_id,
       count(*) filter (where d.day <= DATE '{cal}') - 1 as frequency,
       date_diff('day', f.first_day, max(d.day) filter (where d.day <= DATE '{cal}')) / 7.0 as recency,
       date_diff('day', f.first_day, DATE '{cal}') / 7.0 as T,
       avg(d.value) filter (where d.day > f.first_day and d.day <= DATE '{cal}') as monetary,
       count(*) filter (where d.day > DATE '{cal}' and d.day <= DATE '{hold}') as holdout_transactions
from days d join firsts f using (tenant_id, person_id)
group by d.tenant_id, d.person_id, f.first_day
order by 1, 2
"""


@pytest.fixture(scope="module")
def run_on_small_lake(tmp_path_factory):
    root = tmp_path_factory.mktemp("clv")
    lake, out = str(root / "lake"), str(root / "out")
    rows = simulate("acme-in", 300, r=0.6, alpha=20.0, a=0.8, b=3.0, seed=1) + simulate(
        "bloom-in", 200, r=1.5, alpha=15.0, a=0.5, b=4.0, seed=2
    )
    write_lake(lake, rows)
    document = clv_pipeline.run(
        [
            "--lake", lake, "--calibration-end", CALIBRATION_END.isoformat(), "--holdout-end", HOLDOUT_END.isoformat(),
            "--output", out, "--horizon-periods", "26", "--discount-rate", "0.02",
        ]
    )  # fmt: skip
    sql = duckdb.sql(SQL_SUMMARY.format(lake=lake, cal=CALIBRATION_END, hold=HOLDOUT_END)).fetchall()
    predictions = pq.read_table(f"{out}/clv_predictions.parquet").sort_by(
        [("tenant_id", "ascending"), ("person_id", "ascending")]
    )
    return document, predictions.to_pylist(), sql


def test_summary_columns_match_sql(run_on_small_lake):
    _document, predictions, sql = run_on_small_lake
    assert len(predictions) == len(sql) > 400
    assert not any(row["person_id"].endswith("_late") for row in predictions)
    for row, (tenant, person, x, t_x, T, m, holdout) in zip(predictions, sql, strict=True):
        assert (row["tenant_id"], row["person_id"], row["frequency"]) == (tenant, person, x)
        assert row["recency"] == pytest.approx(t_x) and row["T"] == pytest.approx(T)
        assert (row["monetary"] is None) == (m is None)
        if m is not None:
            assert row["monetary"] == pytest.approx(m)
        assert row["holdout_transactions"] == holdout
        assert row["currency"] == "INR"


def test_one_model_per_tenant_equal_to_a_fit_on_the_sql_summary(run_on_small_lake):
    document, _predictions, sql = run_on_small_lake
    assert document["calibration_end"] == "2025-04-30" and document["money_column"] == "revenue_inr"
    models = {m["tenant_id"]: m for m in document["models"]}
    assert set(models) == {"acme-in", "bloom-in"}
    for tenant, model in models.items():
        rows = [r for r in sql if r[0] == tenant]
        x, t_x, T = (np.array([r[k] for r in rows], dtype=float) for k in (2, 3, 4))
        bg, fit = fit_bgnbd(x, t_x, T)
        assert model["n_customers"] == len(rows) and model["n_repeat_customers"] == int((x > 0).sum())
        assert model["bgnbd_log_likelihood"] == pytest.approx(fit.log_likelihood, abs=1e-4)
        for name in ("r", "alpha", "a", "b"):
            assert model[name] == pytest.approx(getattr(bg, name), rel=1e-3), (tenant, name)
        repeat = [(r[2], r[5]) for r in rows if r[2] > 0]
        x_rep, m_rep = [r[0] for r in repeat], [r[1] for r in repeat]
        gg, gg_fit = fit_gamma_gamma(x_rep, m_rep)
        fitted = GammaGammaParams(model["p"], model["q"], model["v"])
        # Same maximum: the pipeline's parameters score the reference fit's log-likelihood ...
        assert gamma_gamma_log_likelihood(fitted, x_rep, m_rep) == pytest.approx(gg_fit.log_likelihood, abs=1e-3)
        # ... and imply the same population mean spend p*v/(q-1), which stays identified where q is not
        assert fitted.p * fitted.v / (fitted.q - 1) == pytest.approx(gg.p * gg.v / (gg.q - 1), rel=1e-3), tenant
        if max(gg.q, fitted.q) < 1e5:  # on a flat ridge (q -> inf, spend ~ no heterogeneity) p, q, v drift apart
            for name in ("p", "q", "v"):
                assert model[name] == pytest.approx(getattr(gg, name), rel=1e-3), (tenant, name)


def test_predictions_follow_the_model(run_on_small_lake):
    document, predictions, _sql = run_on_small_lake
    models = {m["tenant_id"]: m for m in document["models"]}
    d = period_discount_rate(0.02, 7)
    assert document["discount_rate_per_period"] == pytest.approx(d)
    for row in predictions[::17]:
        model = models[row["tenant_id"]]
        bg = BgNbdParams(model["r"], model["alpha"], model["a"], model["b"])
        gg = GammaGammaParams(model["p"], model["q"], model["v"])
        args = (row["frequency"], row["recency"], row["T"])
        m = math.nan if row["monetary"] is None else row["monetary"]
        assert row["expected_purchases"] == pytest.approx(float(expected_purchases(bg, 26, *args)))
        assert row["holdout_expected_purchases"] == pytest.approx(float(expected_purchases(bg, 61 / 7, *args)))
        assert row["p_alive"] == pytest.approx(float(probability_alive(bg, *args)))
        assert row["expected_aov"] == pytest.approx(float(expected_average_order_value(gg, row["frequency"], m)))
        assert row["clv"] == pytest.approx(float(customer_lifetime_value(bg, gg, *args, m, 26, d)))


def test_holdout_totals(run_on_small_lake):
    document, predictions, sql = run_on_small_lake
    for model in document["models"]:
        rows = [p for p in predictions if p["tenant_id"] == model["tenant_id"]]
        holdout = model["holdout"]
        assert holdout["periods"] == pytest.approx(61 / 7)
        assert holdout["actual_transactions"] == sum(r[6] for r in sql if r[0] == model["tenant_id"])
        assert holdout["predicted_transactions"] == pytest.approx(sum(r["holdout_expected_purchases"] for r in rows))
        actual = np.array([r["holdout_transactions"] for r in rows], dtype=float)
        predicted = np.array([r["holdout_expected_purchases"] for r in rows])
        assert holdout["correlation"] == pytest.approx(np.corrcoef(actual, predicted)[0, 1])


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--holdout-end", "2025-04-01"], "--holdout-end must be after"),
        (["--period-days", "0"], "--period-days must be positive"),
        (["--end-date", "2025-05-01"], "--end-date is not used"),
        (["--timezone", "Mars/Olympus"], "not an IANA time zone"),
    ],
)
def test_flag_checks_fail_before_the_graph_is_built(tmp_path, extra, message):
    argv = ["--lake", str(tmp_path), "--calibration-end", "2025-04-30", "--output", str(tmp_path / "o"), *extra]
    with pytest.raises(ValueError, match=message):
        clv_pipeline.run(argv)


@pytest.mark.integration
def test_s3_lake_and_output_on_the_moto_server(aws, s3_lake_fs):  # noqa: F811
    """An s3:// lake in, s3:// outputs out (Beam's S3 filesystem, moto over HTTP), same model as in memory."""
    import collections
    import io

    import pyarrow as pa
    import pyarrow.fs as pafs

    from connectors.lake import rows_to_table
    from transforms.clv import fit_models, order_table, summarise_order_table

    fs = s3_lake_fs
    rows = []
    for row in simulate("acme-in", 120, r=0.8, alpha=10.0, a=0.8, b=3.0, seed=4):
        # every event moved to the Monday of its week: ~17 partition files (each S3 read costs ~1 s here)
        monday = row["timestamp"] - dt.timedelta(days=row["timestamp"].weekday())
        if monday.date() <= CALIBRATION_END:
            rows.append({**row, "timestamp": monday, "event_date": monday.date()})
    by_day: dict[str, list[dict]] = {}
    for row in rows:
        by_day.setdefault(row["event_date"].isoformat(), []).append(row)
    for day, part in by_day.items():
        with fs.open_output_stream(f"lake/prod/events/tenant_id=acme-in/event_date={day}/part-0.parquet") as out:
            pq.write_table(rows_to_table(part), out)

    document = clv_pipeline.run(
        ["--lake", "s3://lake/prod", "--calibration-end", CALIBRATION_END.isoformat(), "--output", "s3://lake/out/clv",
         "--aws-endpoint-url", aws.endpoint_url, "--aws-region", aws.region, "--buckets", "3"]
    )  # fmt: skip
    (model,) = document["models"]

    lake_rows = pa.Table.from_pylist([{k: r[k] for k in ORDER_FIELDS} for r in rows])
    batch, _ = summarise_order_table(order_table(lake_rows), CALIBRATION_END, 7.0)
    s = batch.summaries
    counts = collections.Counter(zip(s["frequency"], s["recency"], s["T"], strict=True))
    spend = (s["frequency"] > 0) & (s["monetary"] > 0)
    expected = fit_models(counts, s.loc[spend, "frequency"], s.loc[spend, "monetary"], batch.currencies, len(s))
    assert model["n_customers"] == expected["n_customers"] == len(s)
    for name in ("r", "alpha", "a", "b", "p", "q", "v"):
        assert model[name] == pytest.approx(expected[name], rel=1e-4), name
    with fs.open_input_file("lake/out/clv/clv_predictions.parquet") as handle:
        predictions = pq.read_table(io.BytesIO(handle.read()))
    assert predictions.num_rows == len(s)
    names = sorted(i.path for i in fs.get_file_info(pafs.FileSelector("lake/out", recursive=True)) if i.is_file)
    assert names == ["lake/out/clv/clv_model.json", "lake/out/clv/clv_predictions.parquet"]


ORDER_FIELDS = ("type", "event", "person_id", "user_id", "timestamp", "order_id", "currency", "revenue", "revenue_inr")


def test_a_lake_without_orders_gives_no_models_and_an_empty_table(tmp_path):
    lake, out = str(tmp_path / "lake"), str(tmp_path / "out")
    ts = dt.datetime(2025, 1, 5, 10, tzinfo=dt.UTC)
    write_lake(
        lake,
        [
            _row("acme-in", "p1", "u1", ts, "m1", type_="page"),
            _row("acme-in", "p1", "u1", ts, "m2", event="Product Viewed"),
        ],
    )
    document = clv_pipeline.run(["--lake", lake, "--calibration-end", "2025-01-31", "--output", out])
    assert document["models"] == []
    table = pq.read_table(f"{out}/clv_predictions.parquet")
    assert table.num_rows == 0
    assert table.schema.names[:3] == ["tenant_id", "person_id", "user_id"]


def test_an_empty_lake_fails_before_the_graph_is_built(tmp_path):
    (tmp_path / "events").mkdir()
    with pytest.raises(InputError, match="no event partitions"):
        clv_pipeline.run(["--lake", str(tmp_path), "--calibration-end", "2025-01-31", "--output", str(tmp_path / "o")])
