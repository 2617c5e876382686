"""The independent funnel reference in DuckDB SQL, shared by tests/transforms/test_funnels.py and the benchmark."""

from __future__ import annotations

import duckdb
import pyarrow as pa


def duckdb_funnel_steps(source: pa.Table | str, steps: list[str], window_s: int) -> list[tuple]:
    """Persons and conversion times per step of a 3-step funnel: greedy chains by ASOF joins (per step-1 event).

    Counted chain per person: the highest level, then the chain that reached it first, then the latest start.
    ``source`` is an Arrow table of events or the root of a lake (its Parquet files read by DuckDB itself).
    Rows: (tenant, step, persons, mean, median, p90 of the seconds from the previous step).
    """
    con = duckdb.connect()
    if isinstance(source, pa.Table):
        con.register("events_source", source)
        events = "events_source"
    else:
        events = f"read_parquet('{source}/events/*/*/*.parquet', hive_partitioning = true)"
    w = window_s * 10**6
    sql = f"""
    WITH ev AS (
        SELECT tenant_id, person_id, event, epoch_us(timestamp) AS ts
        FROM {events}
        WHERE event IN ('{steps[0]}', '{steps[1]}', '{steps[2]}')),
    s1 AS (SELECT tenant_id, person_id, ts AS t1 FROM ev WHERE event = '{steps[0]}'),
    s2 AS (SELECT tenant_id, person_id, ts FROM ev WHERE event = '{steps[1]}'),
    s3 AS (SELECT tenant_id, person_id, ts FROM ev WHERE event = '{steps[2]}'),
    c2 AS (SELECT s1.*, s2.ts AS t2 FROM s1 ASOF LEFT JOIN s2
           ON s1.tenant_id = s2.tenant_id AND s1.person_id = s2.person_id AND s2.ts >= s1.t1),
    c3 AS (SELECT c2.*, s3.ts AS t3 FROM c2 ASOF LEFT JOIN s3
           ON c2.tenant_id = s3.tenant_id AND c2.person_id = s3.person_id AND s3.ts >= c2.t2),
    chains AS (
        SELECT *, CASE WHEN t2 IS NULL OR t2 > t1 + {w} THEN 1 WHEN t3 IS NULL OR t3 > t1 + {w} THEN 2 ELSE 3 END AS level
        FROM c3),
    best AS (
        SELECT tenant_id, person_id,
               arg_min({{'level': level, 't1': t1, 't2': t2, 't3': t3}},
                       {{'l': -level, 'reach': CASE level WHEN 1 THEN t1 WHEN 2 THEN t2 ELSE t3 END, 's': -t1}}) AS c
        FROM chains GROUP BY ALL),
    steps AS (SELECT tenant_id, c.level AS level, (c.t2 - c.t1) / 1e6 AS d2, (c.t3 - c.t2) / 1e6 AS d3 FROM best)
    SELECT tenant_id,
           count(*), count(*) FILTER (WHERE level >= 2), count(*) FILTER (WHERE level >= 3),
           avg(d2) FILTER (WHERE level >= 2), quantile_cont(d2, 0.5) FILTER (WHERE level >= 2),
           quantile_cont(d2, 0.9) FILTER (WHERE level >= 2),
           avg(d3) FILTER (WHERE level >= 3), quantile_cont(d3, 0.5) FILTER (WHERE level >= 3),
           quantile_cont(d3, 0.9) FILTER (WHERE level >= 3)
    FROM steps GROUP BY tenant_id ORDER BY tenant_id"""
    rows = []
    for t, p1, p2, p3, a2, m2, q2, a3, m3, q3 in con.sql(sql).fetchall():
        rows += [(t, 1, p1, None, None, None), (t, 2, p2, a2, m2, q2), (t, 3, p3, a3, m3, q3)]
    return rows


def funnel_step_rows(steps: pa.Table) -> list[tuple]:
    """A ``funnel_steps`` table in the row shape of :func:`duckdb_funnel_steps`, to compare the two."""
    return [
        (
            r["tenant_id"],
            r["step"],
            r["persons"],
            r["avg_time_to_convert_s"],
            r["median_time_to_convert_s"],
            r["p90_time_to_convert_s"],
        )
        for r in steps.to_pylist()
    ]
