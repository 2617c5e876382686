"""Acceptance: the published CDNOW results through the whole platform.

Every row of the CDNOW 1/10 sample (shipped in the ``lifetimes`` package; only its data file is
used) becomes one Segment ``Order Completed`` event; nothing is merged beforehand. The events go
through ``pipelines.ingest_batch`` into a lake, and ``pipelines.clv`` fits on weeks 1-39
(calibration ends 1997-09-30) and predicts the 39-week holdout (to 1998-06-30).

Published (Fader, Hardie & Lee 2005; Fader & Hardie 2013): r = 0.243, alpha = 4.414, a = 0.793,
b = 2.426, LL = -9582.4; Gamma-Gamma p = 6.25, q = 3.74, v = 15.44 on 946 repeat customers;
holdout about 1,882 actual vs 1,654 predicted repeat transactions.
"""

from __future__ import annotations

import datetime as dt
import importlib.util
import json
import os

import pyarrow.parquet as pq
import pytest

from pipelines import clv as clv_pipeline
from pipelines.ingest_batch import run as ingest

CDNOW = os.path.join(
    importlib.util.find_spec("lifetimes").submodule_search_locations[0], "datasets", "CDNOW_sample.txt"
)
CALIBRATION_END, HOLDOUT_END = dt.date(1997, 9, 30), dt.date(1998, 6, 30)
PUBLISHED = {"r": 0.243, "alpha": 4.414, "a": 0.793, "b": 2.426, "p": 6.25, "q": 3.74, "v": 15.44}


def cdnow_rows() -> list[tuple[int, dt.date, float]]:
    rows = []
    with open(CDNOW) as fh:
        for line in fh:
            _master, sample_id, day, _cds, dollars = line.split()
            rows.append((int(sample_id), dt.datetime.strptime(day, "%Y%m%d").date(), float(dollars)))
    return rows


def write_events(rows, path: str) -> None:
    """One Order Completed track event per CDNOW row (same-day rows stay separate events)."""
    with open(path, "w") as fh:
        for k, (customer, day, dollars) in enumerate(rows):
            event = {
                "type": "track",
                "event": "Order Completed",
                "tenant_id": "cdnow",
                "userId": str(customer),
                "messageId": f"cdnow-{k:05d}",
                "timestamp": f"{day.isoformat()}T12:00:00Z",
                "properties": {"order_id": f"cdnow-{k:05d}", "revenue": dollars, "currency": "USD"},
            }
            fh.write(json.dumps(event) + "\n")


@pytest.mark.slow
def test_cdnow_reproduction(tmp_path):
    rows = cdnow_rows()
    assert len(rows) == 6919
    events, lake, out = str(tmp_path / "cdnow.ndjson"), str(tmp_path / "lake"), str(tmp_path / "clv")
    write_events(rows, events)

    summary = ingest(["--input", events, "--lake", lake])
    assert (summary.lake_rows, summary.dead_letters, summary.duplicates) == (6919, 0, 0)

    document = clv_pipeline.run(
        [
            "--lake", lake, "--calibration-end", "1997-09-30", "--period-days", "7",
            "--money-column", "revenue", "--holdout-end", "1998-06-30", "--output", out,
        ]
    )  # fmt: skip
    (model,) = document["models"]
    assert model["tenant_id"] == "cdnow" and model["currency"] == "USD"
    assert (model["n_customers"], model["n_repeat_customers"], model["n_gamma_gamma_customers"]) == (2357, 946, 946)
    for name, value in PUBLISHED.items():
        assert model[name] == pytest.approx(value, rel=0.01), name
    assert model["bgnbd_log_likelihood"] == pytest.approx(-9582.4, abs=0.5)

    # holdout: actual repeat transactions counted straight from the raw file (distinct customer-days)
    actual = len({(c, d) for c, d, _ in rows if CALIBRATION_END < d <= HOLDOUT_END})
    holdout = model["holdout"]
    print(
        f"\nCDNOW holdout weeks 40-78: actual {holdout['actual_transactions']} (raw file: {actual}), "
        f"predicted {holdout['predicted_transactions']:.1f}, per-customer correlation {holdout['correlation']:.3f}"
    )
    print("fitted:", {k: round(model[k], 4) for k in (*PUBLISHED, "bgnbd_log_likelihood")})
    assert holdout["periods"] == pytest.approx(39.0)
    assert holdout["actual_transactions"] == actual == pytest.approx(1882, abs=5)
    assert holdout["predicted_transactions"] == pytest.approx(1654, rel=0.01)

    predictions = pq.read_table(f"{out}/clv_predictions.parquet").to_pylist()
    assert len(predictions) == 2357
    by_user = {int(p["user_id"]): p for p in predictions}
    # customer 1 (published summary: x = 2, t_x = 30.43, T = 38.86, mean repeat spend 22.35)
    assert by_user[1]["frequency"] == 2
    assert by_user[1]["recency"] == pytest.approx(30.43, abs=0.005)
    assert by_user[1]["T"] == pytest.approx(38.86, abs=0.005)
    assert by_user[1]["monetary"] == pytest.approx(22.345, abs=0.005)
    assert all(0 <= p["p_alive"] <= 1 and p["clv"] > 0 for p in predictions)
