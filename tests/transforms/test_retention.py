"""Retention: hand-computed cases and randomised comparison with DuckDB SQL."""

from __future__ import annotations

import datetime as dt
import random

import duckdb
import pyarrow as pa
import pytest

from transforms.retention import RetentionDefinition, retention_table

UTC = dt.UTC


def _table(rows, tenant="acme-in"):
    """rows: (person, event, utc datetime)."""
    return pa.table(
        {
            "tenant_id": pa.array([r[3] if len(r) > 3 else tenant for r in rows], pa.string()),
            "person_id": pa.array([r[0] for r in rows], pa.string()),
            "event": pa.array([r[1] for r in rows], pa.string()),
            "timestamp": pa.array([r[2] for r in rows], pa.timestamp("us", tz="UTC")),
        }
    )


def _utc(y, m, d, h=6, minute=0):
    return dt.datetime(y, m, d, h, minute, tzinfo=UTC)


def _grid(table):
    """{(cohort_start, period): (persons, cohort_size)}."""
    return {(r["cohort_start"], r["period"]): (r["persons"], r["cohort_size"]) for r in table.to_pylist()}


def test_timezone_boundary_buckets_on_local_date():
    # 20:00 UTC on 1 March = 01:30 on 2 March IST; 10:00 UTC on 2 March = 15:30 on 2 March IST
    rows = [("u", "signup", _utc(2024, 3, 1, 20)), ("u", "order", _utc(2024, 3, 2, 10))]
    d = RetentionDefinition(start_event="signup", return_event="order", period="day", periods=3)
    grid = _grid(retention_table(_table(rows), d, dt.date(2024, 3, 1), dt.date(2024, 3, 4)))
    assert grid[(dt.date(2024, 3, 2), 0)] == (1, 1)  # same local day: period 0, not 1
    assert grid[(dt.date(2024, 3, 2), 1)] == (0, 1)
    assert (dt.date(2024, 3, 1), 0) not in grid
    # in UTC the same events are a day apart
    utc = _grid(retention_table(_table(rows), d.model_copy(update={"timezone": "UTC"})))
    assert utc[(dt.date(2024, 3, 1), 0)] == (0, 1)
    assert utc[(dt.date(2024, 3, 1), 1)] == (1, 1)


def test_weeks_start_on_monday():
    # Sunday 3 March 2024 -> week of Monday 26 Feb; Monday 4 March -> next week
    rows = [("u", "signup", _utc(2024, 3, 3)), ("u", "order", _utc(2024, 3, 4))]
    d = RetentionDefinition(start_event="signup", return_event="order", period="week", periods=2)
    grid = _grid(retention_table(_table(rows), d, dt.date(2024, 2, 26), dt.date(2024, 3, 10)))
    assert grid == {(dt.date(2024, 2, 26), 0): (0, 1), (dt.date(2024, 2, 26), 1): (1, 1)}


def test_months_are_calendar_months():
    rows = [("u", "signup", _utc(2024, 1, 31)), ("u", "order", _utc(2024, 2, 1)), ("v", "signup", _utc(2024, 2, 29))]
    d = RetentionDefinition(start_event="signup", return_event="order", period="month", periods=3)
    grid = _grid(retention_table(_table(rows), d, dt.date(2024, 1, 1), dt.date(2024, 3, 31)))
    assert grid[(dt.date(2024, 1, 1), 1)] == (1, 1)
    assert grid[(dt.date(2024, 2, 1), 0)] == (0, 1)
    assert (dt.date(2024, 2, 1), 2) not in grid  # April is after the range


def test_first_time_versus_recurring():
    rows = [
        ("u", "visit", _utc(2024, 5, 1)),
        ("u", "order", _utc(2024, 5, 2)),
        ("u", "visit", _utc(2024, 5, 3)),
        ("u", "order", _utc(2024, 5, 4)),
    ]
    first = RetentionDefinition(start_event="visit", return_event="order", period="day", periods=4)
    grid = _grid(retention_table(_table(rows), first, dt.date(2024, 5, 1), dt.date(2024, 5, 4)))
    assert {k: v for k, v in grid.items() if v[0]} == {
        (dt.date(2024, 5, 1), 1): (1, 1),
        (dt.date(2024, 5, 1), 3): (1, 1),
    }
    assert (dt.date(2024, 5, 3), 0) not in grid
    recurring = first.model_copy(update={"kind": "recurring"})
    grid = _grid(retention_table(_table(rows), recurring, dt.date(2024, 5, 1), dt.date(2024, 5, 4)))
    assert {k: v for k, v in grid.items() if v[0]} == {
        (dt.date(2024, 5, 1), 1): (1, 1),
        (dt.date(2024, 5, 1), 3): (1, 1),
        (dt.date(2024, 5, 3), 1): (1, 1),
    }


def test_on_versus_on_or_after():
    rows = [("u", "visit", _utc(2024, 5, 1)), ("u", "order", _utc(2024, 5, 4)), ("v", "visit", _utc(2024, 5, 1))]
    on = RetentionDefinition(start_event="visit", return_event="order", period="day", periods=5)
    got = retention_table(_table(rows), on, dt.date(2024, 5, 1), dt.date(2024, 5, 5))
    assert got.column("persons").to_pylist() == [0, 0, 0, 1, 0]
    assert got.column("cohort_size").to_pylist() == [2] * 5
    after = on.model_copy(update={"mode": "on_or_after"})
    got = retention_table(_table(rows), after, dt.date(2024, 5, 1), dt.date(2024, 5, 5))
    assert got.column("persons").to_pylist() == [1, 1, 1, 1, 0]
    assert got.column("rate").to_pylist() == [0.5, 0.5, 0.5, 0.5, 0.0]


def test_period_zero_counts_the_start_event_when_it_is_the_return_event():
    rows = [("u", "order", _utc(2024, 5, 1)), ("v", "order", _utc(2024, 5, 1)), ("v", "order", _utc(2024, 5, 2))]
    d = RetentionDefinition(start_event="order", return_event="order", period="day", periods=2)
    got = retention_table(_table(rows), d, dt.date(2024, 5, 1), dt.date(2024, 5, 2))
    assert got.column("persons").to_pylist() == [2, 1]


def test_period_zero_needs_a_return_after_the_start():
    rows = [
        ("u", "order", _utc(2024, 5, 1, 4)),  # before the start event, same day: does not count
        ("u", "visit", _utc(2024, 5, 1, 8)),
        ("v", "visit", _utc(2024, 5, 1, 8)),
        ("v", "order", _utc(2024, 5, 1, 9)),
    ]
    d = RetentionDefinition(start_event="visit", return_event="order", period="day", periods=1)
    assert retention_table(_table(rows), d).column("persons").to_pylist() == [1]


def test_first_time_uses_history_before_the_range():
    rows = [
        ("old", "visit", _utc(2024, 4, 20)),
        ("old", "visit", _utc(2024, 5, 2)),
        ("new", "visit", _utc(2024, 5, 2)),
    ]
    d = RetentionDefinition(start_event="visit", return_event="visit", period="day", periods=1)
    got = retention_table(_table(rows), d, dt.date(2024, 5, 1), dt.date(2024, 5, 3))
    assert got.to_pylist() == [
        {
            "tenant_id": "acme-in",
            "cohort_start": dt.date(2024, 5, 2),
            "period": 0,
            "persons": 1,
            "cohort_size": 1,
            "rate": 1.0,
        }
    ]


# --- randomised comparison with DuckDB SQL -----------------------------------------------------

TRUNC = {
    "day": "{x}",
    "week": "CAST(date_trunc('week', {x}) AS DATE)",
    "month": "CAST(date_trunc('month', {x}) AS DATE)",
}
DIFF = {"day": "({b} - {a})", "week": "(({b} - {a}) // 7)", "month": "datediff('month', {a}, {b})"}


def _duckdb_retention(table, d: RetentionDefinition, lo: dt.date, hi: dt.date):
    trunc = TRUNC[d.period]
    diff = DIFF[d.period]
    if d.kind == "first_time":
        entries = """
            SELECT tenant_id, person_id, arg_min(p, ts) AS p, min(ts) AS ts FROM ev
            WHERE event = $start AND d <= $hi GROUP BY tenant_id, person_id HAVING min(d) >= $lo"""
    else:
        entries = """
            SELECT tenant_id, person_id, p, min(ts) AS ts FROM ev
            WHERE event = $start AND d BETWEEN $lo AND $hi GROUP BY tenant_id, person_id, p"""
    cmp = "=" if d.mode == "on" else ">="
    sql = f"""
        WITH ev AS (
            SELECT tenant_id, person_id, event, timestamp AS ts,
                   CAST(timezone($tz, timestamp) AS DATE) AS d,
                   {trunc.format(x="CAST(timezone($tz, timestamp) AS DATE)")} AS p
            FROM tbl),
        entries AS ({entries}),
        returns AS (SELECT tenant_id, person_id, p, ts FROM ev WHERE event = $ret AND d BETWEEN $lo AND $hi),
        grid AS (SELECT e.*, k.range AS k FROM entries e, range({d.periods}) k),
        hits AS (
            SELECT g.tenant_id, g.p, g.k,
                   EXISTS (SELECT 1 FROM returns r WHERE r.tenant_id = g.tenant_id AND r.person_id = g.person_id
                           AND {diff.format(a="g.p", b="r.p")} {cmp} g.k AND (g.k > 0 OR r.ts >= g.ts)) AS hit
            FROM grid g)
        SELECT tenant_id, p AS cohort_start, CAST(k AS INTEGER) AS period, sum(CAST(hit AS BIGINT)) AS persons,
               count(*) AS cohort_size
        FROM hits
        WHERE {diff.format(a="p", b=trunc.format(x="CAST($hi AS DATE)"))} >= k
        GROUP BY ALL ORDER BY ALL"""
    tbl = table  # noqa: F841 - read by DuckDB's replacement scan
    rows = duckdb.execute(
        sql,
        {"start": d.start_event, "ret": d.return_event, "lo": lo, "hi": hi, "tz": d.timezone},
    ).fetchall()
    return {(t, c, k): (p, s) for t, c, k, p, s in rows}


def _random_events(rng: random.Random, n: int):
    base = dt.datetime(2024, 1, 25, tzinfo=UTC)
    rows = []
    for _ in range(n):
        rows.append(
            (
                f"p{rng.randrange(40)}",
                rng.choice(["visit", "visit", "order", "other"]),
                base + dt.timedelta(minutes=rng.randrange(70 * 24 * 60)),
                rng.choice(["acme-in", "bloom-in"]),
            )
        )
    return _table(rows)


@pytest.mark.parametrize("period", ["day", "week", "month"])
@pytest.mark.parametrize("kind", ["first_time", "recurring"])
@pytest.mark.parametrize("mode", ["on", "on_or_after"])
def test_random_against_duckdb(period, kind, mode):
    rng = random.Random(f"{period}{kind}{mode}")
    for trial in range(3):
        table = _random_events(rng, 400)
        d = RetentionDefinition(
            start_event="visit",
            return_event=rng.choice(["order", "visit"]),
            period=period,
            periods=rng.randint(1, 6),
            kind=kind,
            mode=mode,
            timezone=rng.choice(["Asia/Kolkata", "UTC", "America/New_York"]),
        )
        lo = dt.date(2024, 2, 1) + dt.timedelta(days=rng.randrange(10))
        hi = lo + dt.timedelta(days=rng.randrange(10, 40))
        got = retention_table(table, d, lo, hi)
        mine = {
            (r["tenant_id"], r["cohort_start"], r["period"]): (r["persons"], r["cohort_size"]) for r in got.to_pylist()
        }
        assert mine == _duckdb_retention(table, d, lo, hi), (trial, d)
