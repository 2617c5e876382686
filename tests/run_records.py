"""Reading run records in tests as the README says to (DuckDB over the JSON files), oldest first."""

from __future__ import annotations

import json

import duckdb


def read_run_records(root: str) -> list[dict]:
    """The run records under ``root`` (``ROOT/_runs/records``), each as the JSON object it was written as."""
    rows = (
        duckdb.connect()
        .sql(  # own connection: other tests leave results open on the default one
            f"select to_json(r) from read_json('{root}/_runs/records/*/*.json', union_by_name=true) r order by started_at"
        )
        .fetchall()
    )
    return [json.loads(row[0]) for row in rows]
