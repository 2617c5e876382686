"""A clean lake written by the real ingest pipeline, and ways to corrupt copies of it (quality tests).

Built once per test session and shared by tests/connectors/test_quality.py and
tests/pipelines/test_check_lake.py (ingest takes seconds).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil

import pyarrow as pa
import pyarrow.parquet as pq

EVENTS = 2000
TENANTS = ("acme-in", "bloom-in")
START = dt.date(2026, 10, 1)
_BUILT: dict[str, str] = {}


def _books_negative_amount(record: bytes) -> bool:
    """The generator's quirk: a 250 discount on a 249 cart books revenue -1 (see docs/quality.md)."""
    try:
        props = json.loads(record).get("properties") or {}
    except (ValueError, AttributeError):
        return False  # malformed on purpose: ingest dead-letters it
    return any(isinstance(props.get(k), (int, float)) and props[k] < 0 for k in ("revenue", "total", "amount"))


def clean_lake(tmp_path_factory) -> str:
    """Generated traffic (bad and duplicate records included) ingested by pipelines.ingest_batch."""
    if "lake" not in _BUILT:
        from connectors.synthetic import generate_events
        from pipelines.ingest_batch import run

        root = tmp_path_factory.mktemp("quality")
        source = root / "events.ndjson"
        with open(source, "wb") as handle:
            for record in generate_events(EVENTS, seed=11, tenants=TENANTS, start=START, days=2):
                if not _books_negative_amount(record):
                    handle.write(record + b"\n")
        lake = str(root / "lake")
        summary = run(["--input", str(source), "--lake", lake, "--quality-gate", "off"])  # results: the tests own them
        assert summary.lake_rows > EVENTS // 2
        _BUILT["lake"] = lake
    return _BUILT["lake"]


def partition_dir(lake: str, tenant: str, date: dt.date) -> str:
    return os.path.join(lake, "events", f"tenant_id={tenant}", f"event_date={date.isoformat()}")


def partitions(lake: str) -> list[tuple[str, dt.date]]:
    """(tenant, date) of every partition directory, listed from the file system."""
    found = []
    for tenant_dir in sorted(os.listdir(os.path.join(lake, "events"))):
        for date_dir in sorted(os.listdir(os.path.join(lake, "events", tenant_dir))):
            found.append((tenant_dir.split("=", 1)[1], dt.date.fromisoformat(date_dir.split("=", 1)[1])))
    return found


def copy_partition(lake: str, target_lake: str, tenant: str, date: dt.date, as_date: dt.date | None = None) -> str:
    """Copy one partition into another lake, optionally under another event_date (a misplaced partition)."""
    target = partition_dir(target_lake, tenant, as_date or date)
    shutil.copytree(partition_dir(lake, tenant, date), target)
    return target


def part_files(partition: str) -> list[str]:
    return sorted(os.path.join(partition, f) for f in os.listdir(partition) if f.endswith(".parquet"))


def rewrite_file(path: str, edit) -> None:
    """Read one Parquet file as rows, let ``edit(rows)`` change them, write it back with the same schema."""
    table = pq.read_table(path)
    rows = table.to_pylist()
    edit(rows)
    schema = pa.schema([f.with_nullable(True) for f in table.schema], metadata=table.schema.metadata)
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)
