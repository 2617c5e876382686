"""Benchmark: checking 100 partitions of the events table, the old way (one validation per partition) and
the new way (pipelines.check_lake: one GX Checkpoint run over all of them, results split per partition).

    pytest tests/benchmarks/bench_check_lake.py -m benchmark -s

The lake: 2,000 generated events ingested by pipelines.ingest_batch; its biggest partition (~240 rows) is
copied into 100 partitions (2 tenants x 50 days) with timestamps, dates, tenant and message ids rewritten,
so every copy is clean and realistic. Prints GX start-up (import, context, suite: once per process) apart
from the checks, and the ratio.
"""

from __future__ import annotations

import datetime as dt
import os
import time

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from connectors.lake import write_partition_file
from schemas.lake import EVENTS_FILE_SCHEMA, EVENTS_TABLE
from tests.quality_lake import clean_lake, part_files, partition_dir, partitions

pytestmark = pytest.mark.benchmark

TENANTS = ("acme-in", "bloom-in")
DAYS = 50
START = dt.date(2026, 1, 1)


def _copy(table: pa.Table, tenant: str, day: dt.date, source_day: dt.date) -> pa.Table:
    shift = pa.scalar(dt.timedelta(days=(day - source_day).days), pa.duration("us"))
    columns = {name: table[name] for name in table.column_names}
    for name in ("timestamp", "received_at", "sent_at", "original_timestamp"):
        if name in columns:
            columns[name] = pc.add(columns[name], shift)
    columns["message_id"] = pc.binary_join_element_wise(columns["message_id"], f"{tenant}-{day}", "-")
    return pa.table(columns).cast(EVENTS_FILE_SCHEMA)


def test_check_100_partitions(tmp_path_factory):
    source_lake = clean_lake(tmp_path_factory)
    tenant, day = max(partitions(source_lake), key=lambda p: sum(pq.read_metadata(f).num_rows for f in part_files(partition_dir(source_lake, *p))))  # fmt: skip
    table = pa.concat_tables(pq.read_table(f) for f in part_files(partition_dir(source_lake, tenant, day)))
    table = table.select([n for n in EVENTS_FILE_SCHEMA.names])
    lake = str(tmp_path_factory.mktemp("bench") / "lake")
    for t in TENANTS:
        for d in range(DAYS):
            target = START + dt.timedelta(days=d)
            write_partition_file(lake, EVENTS_TABLE, {"tenant_id": t, "event_date": target.isoformat()},
                                 _copy(table, t, target, day), "part-bench-0000.parquet")  # fmt: skip
    chosen = partitions(lake)
    assert len(chosen) == 100
    rows = table.num_rows * 100

    started = time.perf_counter()
    from connectors.quality import QualityChecker, docs_dir, shared_checker, write_result

    old_checker = QualityChecker()
    shared_checker(docs=docs_dir(lake))
    startup = time.perf_counter() - started

    started = time.perf_counter()
    old = []
    for t, d in chosen:  # what each Beam worker of the old check_lake did, per partition
        old.append(old_checker.check_partition(lake, t, d))
        write_result(lake, old[-1])
    before = time.perf_counter() - started

    from pipelines import check_lake

    started = time.perf_counter()
    summary = check_lake.run(["--lake", lake, "--fail-on-error"])
    after = time.perf_counter() - started

    assert summary.partitions == 100 and summary.success, summary.table()
    assert all(r.success for r in old)
    assert os.path.exists(os.path.join(lake, "_quality", "docs", "index.html"))
    print(
        f"\n100 partitions, {rows} rows: GX start-up (import, contexts, suite) {startup:.1f}s once per process; "
        f"before (one validation per partition) {before:.1f}s; after (check_lake: one checkpoint run, "
        f"results, Data Docs, run JSON) {after:.1f}s; {before / after:.1f}x faster"
    )
    assert after <= 10
