"""Benchmark: pipelines.clv end to end on a simulated lake, with a single-process baseline.

    pytest tests/benchmarks/bench_clv.py -m benchmark -s
    LIVORA_BENCH_PERSONS=1000000 pytest tests/benchmarks/bench_clv.py -m benchmark -s

Simulates a BG/NBD + Gamma-Gamma population with known parameters (numpy, vectorised), writes it as
a lake (one Parquet file per UTC day), then times (a) ``pipelines.clv`` on the in-process
FnApiRunner (read, bucket, summarise, fit, predict, write) and (b) a baseline in the same run: the
same pure functions called once on the whole table in this process (``connectors.lake.read_events``
-> ``order_table`` -> ``summarise_order_table`` -> ``fit_models`` -> ``predict_table``), i.e. what
the Beam plumbing costs on top of the arithmetic. Prints orders/s, persons/s, the fit time and peak
RSS; checks that both give the same model and that the parameters are recovered.
"""

from __future__ import annotations

import collections
import datetime as dt
import itertools
import json
import os
import resource
import tempfile
import time

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from connectors.lake import read_events, write_partition_file
from pipelines import clv as clv_pipeline
from schemas.lake import EVENTS_FILE_SCHEMA
from transforms.clv import (
    ORDER_COLUMNS,
    fit_models,
    order_table,
    period_discount_rate,
    predict_table,
    summarise_order_table,
)

PERSONS = int(os.environ.get("LIVORA_BENCH_PERSONS", "200000"))
START = np.datetime64("2025-01-01T00:00:00", "us")
CALIBRATION_END, HOLDOUT_END = dt.date(2025, 9, 30), dt.date(2025, 12, 31)
TRUE = {"r": 0.5, "alpha_days": 30.0, "a": 0.7, "b": 3.0, "p": 4.0, "q": 3.0, "v": 900.0}


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def simulate(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(person index, time in days, value) of every order; dropout only after repeat purchases."""
    rng = np.random.default_rng(seed)
    lam = rng.gamma(TRUE["r"], 1 / TRUE["alpha_days"], n)
    drop = rng.beta(TRUE["a"], TRUE["b"], n)
    nu = rng.gamma(TRUE["q"], 1 / TRUE["v"], n)
    t = rng.uniform(0, 90, n)
    persons, times = [np.arange(n)], [t.copy()]
    active = np.arange(n)
    while active.size:
        t[active] += rng.exponential(1 / lam[active])
        active = active[t[active] < 365]
        persons.append(active)
        times.append(t[active].copy())
        active = active[rng.random(active.size) >= drop[active]]
    person = np.concatenate(persons)
    when = np.concatenate(times)
    value = np.round(rng.gamma(TRUE["p"], 1.0, person.size) / nu[person], 2)
    return person, when, value


def write_lake(lake: str, person: np.ndarray, when: np.ndarray, value: np.ndarray) -> int:
    ts = START + (when * 86_400e6).astype("timedelta64[us]")
    day = ts.astype("datetime64[D]")
    order = np.argsort(day, kind="stable")
    person, ts, day, value = person[order], ts[order], day[order], value[order]
    bounds = np.flatnonzero(np.r_[True, day[1:] != day[:-1], True])
    for lo, hi in itertools.pairwise(bounds):
        m = hi - lo
        ids = np.char.add("p", person[lo:hi].astype(str))
        cols = {
            "message_id": pa.array(np.char.add("m", np.arange(lo, hi).astype(str))),
            "type": pa.array(["track"] * m),
            "event": pa.array(["Order Completed"] * m),
            "person_id": pa.array(ids),
            "user_id": pa.array(np.char.add("u", person[lo:hi].astype(str))),
            "timestamp": pa.array(ts[lo:hi], pa.timestamp("us", tz="UTC")),
            "received_at": pa.array(ts[lo:hi], pa.timestamp("us", tz="UTC")),
            "properties": pa.array(["{}"] * m),
            "order_id": pa.array(np.char.add("o", np.arange(lo, hi).astype(str))),
            "currency": pa.array(["INR"] * m),
            "revenue": pa.array(value[lo:hi]).cast(pa.decimal128(18, 4)),
            "revenue_inr": pa.array(value[lo:hi]).cast(pa.decimal128(18, 4)),
            "is_bot": pa.array([False] * m),
            "schema_version": pa.array(["1"] * m),
        }
        arrays = [cols[f.name] if f.name in cols else pa.nulls(m, f.type) for f in EVENTS_FILE_SCHEMA]
        table = pa.Table.from_arrays(arrays, schema=EVENTS_FILE_SCHEMA)
        write_partition_file(
            lake, "events", {"tenant_id": "acme-in", "event_date": str(day[lo])}, table, "part.parquet"
        )
    return len(bounds) - 1


def baseline(lake: str) -> tuple[dict, float, float]:
    """The same arithmetic in one process on one table: (model, seconds, fit seconds)."""
    started = time.perf_counter()
    events = read_events(lake, end=HOLDOUT_END, columns=list(ORDER_COLUMNS))
    batch, _ = summarise_order_table(order_table(events), CALIBRATION_END, 7.0, HOLDOUT_END)
    s = batch.summaries
    fit_started = time.perf_counter()
    counts = s.groupby(["frequency", "recency", "T"]).size()
    spend = (s["frequency"] > 0) & (s["monetary"] > 0)
    model = fit_models(
        collections.Counter(dict(zip(counts.index.tolist(), counts.tolist(), strict=True))),
        s.loc[spend, "frequency"].to_numpy(dtype=float),
        s.loc[spend, "monetary"].to_numpy(dtype=float),
        batch.currencies,
        len(s),
    )
    fit_seconds = time.perf_counter() - fit_started
    predict_table("acme-in", s, model, 52, period_discount_rate(0.01, 7), 92 / 7)
    return model, time.perf_counter() - started, fit_seconds


@pytest.mark.benchmark
def test_clv_pipeline_throughput():
    with tempfile.TemporaryDirectory() as root:
        lake, out = os.path.join(root, "lake"), os.path.join(root, "out")
        started = time.perf_counter()
        person, when, value = simulate(PERSONS)
        files = write_lake(lake, person, when, value)
        print(
            f"\nlake: {PERSONS:,} persons, {person.size:,} orders, {files} files ({time.perf_counter() - started:.1f} s)"
        )

        rss_before = _rss_mb()
        started = time.perf_counter()
        document = clv_pipeline.run(
            [
                "--lake", lake, "--calibration-end", CALIBRATION_END.isoformat(),
                "--holdout-end", HOLDOUT_END.isoformat(), "--output", out,
            ]
        )  # fmt: skip
        seconds = time.perf_counter() - started
        (model,) = document["models"]
        rows = pq.read_metadata(f"{out}/clv_predictions.parquet").num_rows
        print(
            f"pipelines.clv (FnApiRunner): {seconds:.1f} s, {person.size / seconds:,.0f} orders/s, "
            f"{rows / seconds:,.0f} persons/s; peak RSS {rss_before:.0f} -> {_rss_mb():.0f} MB"
        )

        base_model, base_seconds, fit_seconds = baseline(lake)
        print(
            f"baseline (same functions, one process, one table): {base_seconds:.1f} s "
            f"(fit {fit_seconds:.2f} s); pipeline / baseline = {seconds / base_seconds:.2f}"
        )
        shown = {k: round(model[k], 3) for k in ("r", "alpha", "a", "b", "p", "q", "v")}
        print("fitted:", json.dumps(shown), "true:", json.dumps({**TRUE, "alpha_weeks": TRUE["alpha_days"] / 7}))
        print("holdout:", json.dumps(model["holdout"]))

        assert rows == model["n_customers"] == base_model["n_customers"]
        for name in ("r", "alpha", "a", "b", "p", "q", "v"):
            assert model[name] == pytest.approx(base_model[name], rel=1e-4)
        assert model["r"] == pytest.approx(TRUE["r"], rel=0.1)
        assert model["a"] == pytest.approx(TRUE["a"], rel=0.1) and model["b"] == pytest.approx(TRUE["b"], rel=0.1)
        assert model["p"] == pytest.approx(TRUE["p"], rel=0.1) and model["q"] == pytest.approx(TRUE["q"], rel=0.1)
        assert pc.sum(pq.read_table(f"{out}/clv_predictions.parquet", columns=["frequency"])["frequency"]).as_py() > 0
