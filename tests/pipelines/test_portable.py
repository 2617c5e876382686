"""Nothing depends on one process: ingest through the PortableRunner with SDK workers in other processes.

The job runs on Beam's embedded job service; the SDK harnesses run in a separate worker-pool
process that starts one subprocess per worker (``--environment_type=EXTERNAL``), the same
arrangement as Flink or Spark task managers talking to Python SDK workers.
"""

from __future__ import annotations

import duckdb
import pytest

from connectors.lake import read_dead_letters
from pipelines.ingest_batch import run
from tests.pipelines.corpus import build_corpus
from tests.portable import worker_pool  # noqa: F401  (fixture)


@pytest.mark.slow
@pytest.mark.portable
def test_ingest_on_portable_runner_with_external_sdk_workers(tmp_path, worker_pool):  # noqa: F811
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
