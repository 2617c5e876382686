"""pipelines.retention end to end on FnApiRunner, checked against DuckDB SQL on the same lake."""

from __future__ import annotations

import datetime as dt

import pytest

from connectors.lake import read_events
from pipelines.retention import run
from tests.pipelines.analytics_lake import random_rows, write_lake
from tests.transforms.test_retention import _duckdb_retention
from transforms.retention import RetentionDefinition


@pytest.fixture(scope="module")
def lake(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("retention_lake"))
    write_lake(root, random_rows(seed=11, persons=60, days=12))
    return root


def _as_grid(table):
    return {
        (r["tenant_id"], r["cohort_start"], r["period"]): (r["persons"], r["cohort_size"]) for r in table.to_pylist()
    }


@pytest.mark.slow
@pytest.mark.parametrize(
    ("period", "kind", "mode", "start", "end"),
    [
        ("day", "first_time", "on", "2026-10-03", "2026-10-12"),
        ("week", "recurring", "on_or_after", "2026-10-01", "2026-10-20"),
    ],
)
def test_pipeline_matches_duckdb(lake, tmp_path, period, kind, mode, start, end):
    args = [
        "--lake", lake, "--start-event", "Product Viewed", "--return-event", "Order Completed",
        "--period", period, "--periods", "4", "--kind", kind, "--mode", mode,
        "--start-date", start, "--end-date", end, "--buckets", "3", "--output", str(tmp_path / "out"),
    ]  # fmt: skip
    got = run(args)
    d = RetentionDefinition(
        start_event="Product Viewed", return_event="Order Completed", period=period, periods=4, kind=kind, mode=mode
    )
    events = read_events(lake, columns=["tenant_id", "person_id", "event", "timestamp"])
    expected = _duckdb_retention(events, d, dt.date.fromisoformat(start), dt.date.fromisoformat(end))
    assert expected  # the lake has cohorts in range
    assert _as_grid(got) == expected
    assert all(abs(r["rate"] - r["persons"] / r["cohort_size"]) < 1e-12 for r in got.to_pylist())
    # a rerun replaces the output instead of adding to it
    again = run(args)
    assert again.equals(got)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["retention.csv", "retention.parquet"]
