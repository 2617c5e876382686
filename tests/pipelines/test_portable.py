"""Nothing depends on one process: ingest through the PortableRunner with SDK workers in other processes.

The job runs on Beam's embedded job service; the SDK harnesses run in a separate worker-pool
process that starts one subprocess per worker (``--environment_type=EXTERNAL``), the same
arrangement as Flink or Spark task managers talking to Python SDK workers.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import duckdb
import pytest

from connectors.lake import read_dead_letters
from infra.local_stack import free_port
from pipelines.ingest_batch import run
from tests.pipelines.corpus import build_corpus


@pytest.fixture
def worker_pool():
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "apache_beam.runners.worker.worker_pool_main", f"--service_port={port}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        # the pool starts each SDK worker as `python ...`: it must be this virtualenv's python
        env={**os.environ, "PATH": f"{os.path.dirname(sys.executable)}{os.pathsep}{os.environ.get('PATH', '')}"},
    )
    time.sleep(3)
    assert proc.poll() is None, "worker pool did not start"
    try:
        yield f"localhost:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=20)


@pytest.mark.slow
@pytest.mark.portable
def test_ingest_on_portable_runner_with_external_sdk_workers(tmp_path, worker_pool):
    corpus = build_corpus(valid=40)
    lines = [r for r in corpus.records if b"\n" not in r]
    whole = [r for r in corpus.records if b"\n" in r]
    (tmp_path / "events.ndjson").write_bytes(b"".join(r + b"\n" for r in lines))
    for i, record in enumerate(whole):
        (tmp_path / f"whole-{i}.json").write_bytes(record)
    lake = tmp_path / "lake"
    summary = run(
        [
            "--input", str(tmp_path / "*.ndjson"),
            "--input", str(tmp_path / "*.json"),
            "--lake", str(lake),
            "--runner=PortableRunner",
            "--job_endpoint=embed",
            "--environment_type=EXTERNAL",
            f"--environment_config={worker_pool}",
        ]
    )  # fmt: skip
    rows = duckdb.sql(
        f"select count(*) from read_parquet('{lake}/events/**/*.parquet', hive_partitioning=true)"
    ).fetchall()[0][0]
    dead = read_dead_letters(str(lake / "dead_letters"))
    assert rows == corpus.lake
    assert len(dead) == sum(corpus.dead.values())
    assert summary.duplicates == corpus.dup
