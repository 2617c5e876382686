"""The batch pipelines on Beam's real runners (Prism; Flink embedded) give what the in-process FnApiRunner gives.

Each runner's binary comes from ``make runners`` (Prism) / ``make runners-flink`` (Flink job server) into
``.cache/runners``; a test whose binary is missing is skipped with that command as its reason. The
in-process run is the reference, and the ingest run is also checked against the corpus's own counts.
"""

from __future__ import annotations

import collections

import duckdb
import pyarrow as pa
import pytest

from connectors.lake import read_dead_letters
from connectors.offline_store import read_features
from infra.runners import RunnerUnavailable, pipeline_args
from pipelines import features as features_pipeline
from pipelines import funnels as funnels_pipeline
from pipelines import retention as retention_pipeline
from pipelines.ingest_batch import run as ingest
from schemas.features import FEATURE_NAMES
from tests.feature_lake import generate_rows, rows_table
from tests.feature_lake import write_lake as write_feature_lake
from tests.pipelines.analytics_lake import random_rows, write_lake
from tests.pipelines.corpus import build_corpus

pytestmark = [pytest.mark.slow, pytest.mark.portable]

RUNNERS = ["prism", "flink"]


@pytest.fixture(params=RUNNERS)
def runner(request):
    try:
        return request.param, pipeline_args(request.param, **({"parallelism": 2} if request.param == "flink" else {}))
    except RunnerUnavailable as err:
        pytest.skip(str(err))


def sorted_rows(table: pa.Table, *keys: str) -> list[dict]:
    return sorted(table.to_pylist(), key=lambda r: tuple(str(r[k]) for k in keys))


# --- ingest ----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory):
    corpus = build_corpus(valid=40)
    tmp = tmp_path_factory.mktemp("runner_corpus")
    (tmp / "events.ndjson").write_bytes(b"".join(r + b"\n" for r in corpus.records if b"\n" not in r))
    for i, record in enumerate(r for r in corpus.records if b"\n" in r):
        (tmp / f"whole-{i}.json").write_bytes(record)
    return corpus, tmp


def ingest_lake(src, lake, extra):
    salt = ["--pii-salt", "r" * 32]  # one secret for both lakes: hashes (and person ids) comparable
    summary = ingest(
        ["--input", str(src / "*.ndjson"), "--input", str(src / "*.json"), "--lake", str(lake), *salt, *extra]
    )
    rows = duckdb.sql(
        f"select * from read_parquet('{lake}/events/**/*.parquet', hive_partitioning=true)"
    ).fetch_arrow_table()
    dead = collections.Counter(str(d.reason) for d in read_dead_letters(str(lake / "dead_letters")))
    return summary, sorted_rows(rows, "tenant_id", "message_id"), dead


@pytest.fixture(scope="module")
def ingest_reference(corpus_dir, tmp_path_factory):
    _, src = corpus_dir
    return ingest_lake(src, tmp_path_factory.mktemp("fnapi") / "lake", ["--runner=FnApiRunner"])


def test_ingest_batch(runner, corpus_dir, ingest_reference, tmp_path):
    _, args = runner
    corpus, src = corpus_dir
    summary, rows, dead = ingest_lake(src, tmp_path / "lake", args)
    ref_summary, ref_rows, ref_dead = ingest_reference
    # the corpus's own expectation, then the in-process run row for row
    assert (len(rows), sum(dead.values()), summary.duplicates) == (corpus.lake, sum(corpus.dead.values()), corpus.dup)
    assert dead == collections.Counter(corpus.dead)
    assert rows == ref_rows
    assert dead == ref_dead
    assert (summary.lake_rows, summary.lake_files, summary.dead_letters) == (
        ref_summary.lake_rows,
        ref_summary.lake_files,
        ref_summary.dead_letters,
    )


# --- analytics -------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def events_lake(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("runner_events_lake"))
    write_lake(root, random_rows(seed=5, persons=30, days=8))
    return root


def funnel_tables(lake, out, extra):
    tables = funnels_pipeline.run(
        [
            "--lake", lake, "--steps", "Product Viewed,Product Added,Order Completed", "--window", "86400",
            "--start-date", "2026-10-02", "--end-date", "2026-10-06", "--buckets", "3", "--output", str(out), *extra,
        ]
    )  # fmt: skip
    return {name: sorted_rows(t, *t.column_names) for name, t in tables.items()}


def test_funnels(runner, events_lake, tmp_path):
    _, args = runner
    reference = funnel_tables(events_lake, tmp_path / "fnapi", ["--runner=FnApiRunner"])
    got = funnel_tables(events_lake, tmp_path / "runner", args)
    assert reference["funnel_steps"]  # the lake has funnel entries in range
    assert got == reference


def retention_rows(lake, out, extra):
    table = retention_pipeline.run(
        [
            "--lake", lake, "--start-event", "Product Viewed", "--return-event", "Order Completed",
            "--period", "day", "--periods", "3", "--start-date", "2026-10-01", "--end-date", "2026-10-08",
            "--buckets", "3", "--output", str(out), *extra,
        ]
    )  # fmt: skip
    return sorted_rows(table, "tenant_id", "cohort_start", "period")


def test_retention(runner, events_lake, tmp_path):
    _, args = runner
    reference = retention_rows(events_lake, tmp_path / "fnapi", ["--runner=FnApiRunner"])
    got = retention_rows(events_lake, tmp_path / "runner", args)
    assert reference
    assert got == reference


@pytest.fixture(scope="module")
def feature_lake(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("runner_feature_lake"))
    write_feature_lake(root, rows_table(generate_rows(persons=20, seed=5, days=120)))
    return root


def feature_rows(lake, out, extra):
    features_pipeline.run(["--lake", lake, "--output-lake", str(out), "--as-of=2026-10-20", "--buckets", "3", *extra])
    table = read_features(str(out))
    return {(r["tenant_id"], r["person_id"], r["as_of"]): {n: r[n] for n in FEATURE_NAMES} for r in table.to_pylist()}


def test_features(runner, feature_lake, tmp_path):
    _, args = runner
    reference = feature_rows(feature_lake, tmp_path / "fnapi", ["--runner=FnApiRunner"])
    got = feature_rows(feature_lake, tmp_path / "runner", args)
    assert reference
    assert got == reference
