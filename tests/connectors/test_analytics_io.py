"""connectors.analytics_io's Parquet reader: the same rows as before, and a process that exits cleanly.

Handing Arrow's threaded readers a Python object (``io.BytesIO``, ``pa.BufferReader`` over ``bytes``)
aborted about 1 pipeline run in 10 at interpreter exit (code 134, "terminate called without an active
exception"; apache/arrow#33975, #34314). The regression test runs the reader in fresh processes, the way
a pipeline does at its end, and requires every one of them to exit 0.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from connectors.analytics_io import arrow_input, read_parquet
from connectors.offline_store import read_spine

ROOT = Path(__file__).resolve().parents[2]
RUNS = int(os.environ.get("LIVORA_EXIT_RUNS", "20"))
"""Fresh processes per test (2 at a time, ~30 s); the old reader failed 1 run in 10 to 15 (see the report)."""

# Read both files the way the pipelines do, last thing before the interpreter exits; the second one also
# through the remote (s3://) branch's Arrow-owned buffer.
SCRIPT = """
import sys
import pyarrow.parquet as pq
from connectors.analytics_io import arrow_input, read_parquet
first, second = sys.argv[1:]
read_parquet(first, ["person_id", "v"])
read_parquet(second)
with open(second, "rb") as handle:
    pq.read_table(arrow_input(handle.read()), columns=["v"])
"""


def _table(seed: int) -> pa.Table:
    n = 2000
    return pa.table(
        {
            "person_id": [f"p-{seed}-{i % 97}" for i in range(n)],
            "v": list(range(seed, seed + n)),
            "s": [f"text {i}" for i in range(n)],
        }
    )


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> list[str]:
    root = tmp_path_factory.mktemp("exit_lake") / "events" / "tenant_id=acme-in" / "event_date=2026-08-01"
    root.mkdir(parents=True)
    paths = []
    for seed in (1, 2):
        path = root / f"part-{seed}.parquet"
        pq.write_table(_table(seed), path, compression="zstd", row_group_size=500)
        paths.append(str(path))
    return paths


def test_read_parquet_reads_columns_without_partition_columns(files):
    table = read_parquet(files[0], ["v", "person_id"])
    assert table.schema.names == ["v", "person_id"]  # no tenant_id/event_date guessed from the Hive path
    assert table.column("v").to_pylist() == list(range(1, 2001))
    assert read_parquet(files[1]).equals(_table(2))


def test_arrow_input_owns_a_copy():
    data = bytearray(b"abc")
    reader = arrow_input(bytes(data))
    data[0] = ord("x")
    assert reader.read() == b"abc"


def test_read_spine_parquet_and_csv(tmp_path, files):
    assert read_spine(files[0], ["person_id"]).column("person_id").to_pylist()[:2] == ["p-1-0", "p-1-1"]
    csv = tmp_path / "spine.csv"
    csv.write_text("tenant_id,person_id,as_of\nacme-in,007,2026-08-01\n")
    spine = read_spine(str(csv))
    assert spine.column("person_id").to_pylist() == ["007"]  # ids stay text
    assert spine.schema.field("tenant_id").type == pa.string()


def test_reading_parquet_then_exiting_never_aborts(files):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONFAULTHANDLER": "1"}
    codes: list[int] = []
    errors: list[str] = []
    for _ in range(0, RUNS, 2):
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", SCRIPT, *files],
                cwd=ROOT,
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
            for _ in range(2)
        ]
        for proc in procs:
            _, err = proc.communicate(timeout=120)
            codes.append(proc.returncode)
            if proc.returncode:
                errors.append(err.decode(errors="replace")[-2000:])
    failed = [c for c in codes if c != 0]
    assert not failed, f"{len(failed)} of {len(codes)} runs failed with codes {failed}; last stderr:\n{errors[-1]}"
