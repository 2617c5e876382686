"""Compaction: same rows before and after, re-runnable, crash-safe, and readers never see doubles or gaps."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
import threading

import duckdb
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import connectors.compaction as compaction
from connectors.compaction import compact_partition, list_partitions
from connectors.lake import write_partition_file
from pipelines import compact_lake
from tests.s3_lake import s3_lake_fs  # noqa: F401  (fixture)

T0 = dt.datetime(2026, 3, 1, 8, 0, tzinfo=dt.UTC)


def row(i: int, day: int, tenant: str) -> dict:
    ts = T0 + dt.timedelta(days=day, minutes=i)
    return {
        "message_id": f"{tenant}-{day}-{i}",
        "type": "track",
        "event": "Product Viewed",
        "person_id": f"p{i % 7}",
        "timestamp": ts,
        "received_at": ts + dt.timedelta(seconds=1),
        "properties": f'{{"i": {i}}}',
        "is_bot": False,
        "schema_version": "1.0.0",
    }


def make_lake(root, files_per_partition=12, rows_per_file=5, tenants=("acme-in", "bloom-in"), days=2):
    """Many small files per partition; one row of each partition also written twice (a re-ingest)."""
    expected = {}
    for tenant in tenants:
        for day in range(days):
            date = (T0 + dt.timedelta(days=day)).date().isoformat()
            rows = [row(i, day, tenant) for i in range(files_per_partition * rows_per_file)]
            for f in range(files_per_partition):
                chunk = rows[f * rows_per_file : (f + 1) * rows_per_file]
                write_partition_file(
                    str(root), "events", {"tenant_id": tenant, "event_date": date}, chunk, f"part-in{f:03d}.parquet"
                )
            write_partition_file(
                str(root), "events", {"tenant_id": tenant, "event_date": date}, rows[:1], "part-again.parquet"
            )
            expected[(tenant, date)] = sorted(r["message_id"] for r in rows)
    return expected


def read_ids(root) -> dict:
    """What a plain glob reader sees: message ids per partition (duplicates kept)."""
    con = duckdb.connect()
    rows = con.execute(
        f"SELECT tenant_id, CAST(event_date AS VARCHAR), message_id FROM read_parquet('{root}/events/**/*.parquet', hive_partitioning=true)"
    ).fetchall()
    seen: dict = {}
    for tenant, date, mid in rows:
        seen.setdefault((tenant, date), []).append(mid)
    return {k: sorted(v) for k, v in seen.items()}


def files_of(root, tenant, date):
    d = f"{root}/events/tenant_id={tenant}/event_date={date}"
    return sorted(n for n in os.listdir(d) if n.endswith(".parquet"))


def test_compaction_keeps_every_row_once_and_rerun_is_a_no_op(tmp_path):
    expected = make_lake(tmp_path)
    totals = compact_lake.run(["--lake", str(tmp_path), "--min-age-minutes", "0"])
    assert totals["partitions_compacted"] == 4 and totals["files_in"] == 4 * 13 and totals["files_out"] == 4
    assert totals["duplicates_removed"] == 4 and totals["rows"] == sum(len(v) for v in expected.values())
    assert read_ids(tmp_path) == expected
    before = {k: files_of(tmp_path, *k) for k in expected}
    assert all(len(names) == 1 and names[0].startswith("part-c") for names in before.values())
    mtimes = {
        k: os.stat(f"{tmp_path}/events/tenant_id={k[0]}/event_date={k[1]}/{v[0]}").st_mtime_ns
        for k, v in before.items()
    }
    again = compact_lake.run(["--lake", str(tmp_path), "--min-age-minutes", "0"])
    assert again["partitions_compacted"] == 0 and again["partitions_skipped"] == 4
    assert {k: files_of(tmp_path, *k) for k in expected} == before
    assert mtimes == {
        k: os.stat(f"{tmp_path}/events/tenant_id={k[0]}/event_date={k[1]}/{v[0]}").st_mtime_ns
        for k, v in before.items()
    }
    leftovers = os.listdir(tmp_path / "_compaction" / "events" / "tenant_id=acme-in" / "event_date=2026-03-01")
    assert leftovers == [".lock"]  # no staging dir, no marker


def test_range_tenant_and_open_partitions_are_respected(tmp_path):
    make_lake(tmp_path)
    assert len(list_partitions(str(tmp_path), "events", tenant="acme-in", start=dt.date(2026, 3, 2))) == 1
    totals = compact_lake.run(
        ["--lake", str(tmp_path), "--tenant", "acme-in", "--start-date", "2026-03-02", "--min-age-minutes", "0"]
    )
    assert totals["partitions_compacted"] == 1
    assert (
        len(files_of(tmp_path, "acme-in", "2026-03-02")) == 1 and len(files_of(tmp_path, "acme-in", "2026-03-01")) == 13
    )
    fresh = compact_lake.run(["--lake", str(tmp_path), "--min-age-minutes", "30"])  # files just written: open
    assert fresh["partitions_compacted"] == 0


def test_target_size_splits_into_several_files(tmp_path):
    expected = make_lake(tmp_path, files_per_partition=30, rows_per_file=40, tenants=("acme-in",), days=1)
    part = {"tenant_id": "acme-in", "event_date": "2026-03-01"}
    total = sum(
        os.path.getsize(f"{tmp_path}/events/tenant_id=acme-in/event_date=2026-03-01/{n}")
        for n in files_of(tmp_path, "acme-in", "2026-03-01")
    )
    result = compact_partition(str(tmp_path), "events", part, target_file_mb=total / 3 / 1024 / 1024)
    assert result.files_out == 3
    assert read_ids(tmp_path) == expected


@pytest.mark.parametrize("strategy", ["exchange", "copy"])
@pytest.mark.parametrize("crash_at", ["staged", "swapped"])
def test_crash_at_any_point_is_repaired_by_rerunning(tmp_path, strategy, crash_at):
    expected = make_lake(tmp_path, tenants=("acme-in",), days=1)
    part = {"tenant_id": "acme-in", "event_date": "2026-03-01"}
    with pytest.raises(RuntimeError, match="injected crash"):
        compact_partition(str(tmp_path), "events", part, strategy=strategy, _crash_at=crash_at)
    seen = read_ids(tmp_path)[("acme-in", "2026-03-01")]
    assert set(seen) == set(expected[("acme-in", "2026-03-01")])  # never a missing row
    if strategy == "exchange":
        # the swap is atomic: before it the old files (incl. the re-ingested copy), after it the compacted ones
        assert len(seen) == len(expected[("acme-in", "2026-03-01")]) + (1 if crash_at == "staged" else 0)
    result = compact_partition(str(tmp_path), "events", part, strategy=strategy)
    assert result.recovered == 1
    assert read_ids(tmp_path) == expected
    assert len(files_of(tmp_path, "acme-in", "2026-03-01")) == 1
    state = tmp_path / "_compaction" / "events" / "tenant_id=acme-in" / "event_date=2026-03-01"
    assert [p.name for p in state.iterdir()] == [".lock"]


def test_a_partition_being_compacted_elsewhere_is_skipped(tmp_path):
    import fcntl

    expected = make_lake(tmp_path, tenants=("acme-in",), days=1)
    part = {"tenant_id": "acme-in", "event_date": "2026-03-01"}
    state = tmp_path / "_compaction" / "events" / "tenant_id=acme-in" / "event_date=2026-03-01"
    state.mkdir(parents=True)
    with open(state / ".lock", "a") as held:  # another compaction of this partition is running
        fcntl.flock(held, fcntl.LOCK_EX)
        assert compact_partition(str(tmp_path), "events", part).status == "skipped_busy"
    assert compact_partition(str(tmp_path), "events", part).status == "compacted"
    assert read_ids(tmp_path) == expected


def test_file_written_during_compaction_is_kept(tmp_path, monkeypatch):
    expected = make_lake(tmp_path, tenants=("acme-in",), days=1)
    part = {"tenant_id": "acme-in", "event_date": "2026-03-01"}
    late = [row(1000 + i, 0, "acme-in") for i in range(3)]
    real_write = compaction._write_outputs

    def write_and_race(fs, directory, table, names):
        real_write(fs, directory, table, names)
        # a streaming writer publishes a new file into the partition while we are compacting
        write_partition_file(str(tmp_path), "events", part, late, "part-late.parquet")

    monkeypatch.setattr(compaction, "_write_outputs", write_and_race)
    result = compact_partition(str(tmp_path), "events", part, strategy="exchange")
    assert result.strays_moved == 1
    assert read_ids(tmp_path)[("acme-in", "2026-03-01")] == sorted(
        expected[("acme-in", "2026-03-01")] + [r["message_id"] for r in late]
    )


def test_concurrent_reader_never_sees_duplicates_or_gaps(tmp_path):
    """A reader globbing the table while the partition is compacted over and over (exchange strategy)."""
    part = {"tenant_id": "acme-in", "event_date": "2026-03-01"}
    rows = [row(i, 0, "acme-in") for i in range(60)]
    expected = len(rows)
    partition_dir = tmp_path / "events" / "tenant_id=acme-in" / "event_date=2026-03-01"

    def publish_small_files(round_):
        """Test setup: swap in a fresh set of small files (no duplicates) without the reader seeing a gap."""
        fresh = tmp_path / f"fresh-{round_}"
        for f in range(6):
            write_partition_file(str(fresh), "x", {}, rows[f * 10 : (f + 1) * 10], f"part-r{round_}-{f}.parquet")
        if partition_dir.exists():
            compaction._exchange(str(fresh / "x"), str(partition_dir))
        else:
            partition_dir.parent.mkdir(parents=True)
            os.rename(fresh / "x", partition_dir)

    publish_small_files(0)
    stop, observations, errors = threading.Event(), [], []

    def reader():
        con = duckdb.connect()
        query = f"SELECT count(*), count(DISTINCT message_id) FROM read_parquet('{tmp_path}/events/**/*.parquet')"
        while not stop.is_set():
            try:
                observations.append(con.execute(query).fetchone())
            except duckdb.Error as err:  # listed before a swap, opened after: a loud failure, retried
                errors.append(str(err))

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for round_ in range(1, 16):
            result = compact_partition(str(tmp_path), "events", part, strategy="exchange")
            assert result.status == "compacted"
            publish_small_files(round_)
    finally:
        stop.set()
        thread.join()
    print(f"reader: {len(observations)} reads, {len(errors)} failed loudly")
    assert len(observations) > 5, "the reader hardly ran"
    assert all(distinct == expected for _, distinct in observations), "a reader missed rows"
    assert all(total == expected for total, _ in observations), "a reader saw duplicated rows"


def test_help_lists_every_flag():
    out = subprocess.run(
        [sys.executable, "-m", "pipelines.compact_lake", "--help"], capture_output=True, text=True, check=True
    ).stdout
    for flag in (
        "--lake",
        "--table",
        "--target-file-mb",
        "--min-age-minutes",
        "--strategy",
        "--start-date",
        "--end-date",
        "--tenant",
    ):
        assert flag in out


@pytest.mark.integration
def test_s3_lake_is_compacted_with_the_copy_strategy_and_recovers(aws, s3_lake_fs):  # noqa: F811
    """An s3:// lake on the moto server: copy strategy (no atomic swap on S3), crash and re-run."""
    import pyarrow.fs as pafs
    import pyarrow.parquet as pq

    from connectors.lake import read_events, rows_to_table

    fs = s3_lake_fs
    rows = [row(i, 0, "acme-in") for i in range(40)]
    prefix = "lake/prod/events/tenant_id=acme-in/event_date=2026-03-01"
    for f in range(8):
        with fs.open_output_stream(f"{prefix}/part-s{f}.parquet") as out:
            pq.write_table(rows_to_table(rows[f * 5 : (f + 1) * 5]), out)
    part = {"tenant_id": "acme-in", "event_date": "2026-03-01"}
    assert list_partitions("s3://lake/prod", "events") == [part]
    with pytest.raises(RuntimeError, match="injected crash"):
        compact_partition("s3://lake/prod", "events", part, _crash_at="staged")
    result = compact_partition("s3://lake/prod", "events", part)
    assert result.recovered == 1
    names = [i.base_name for i in fs.get_file_info(pafs.FileSelector(prefix)) if i.base_name.endswith(".parquet")]
    assert len(names) == 1 and names[0].startswith("part-c")
    ids = read_events("s3://lake/prod", columns=["message_id"]).column("message_id").to_pylist()
    assert sorted(ids) == sorted(r["message_id"] for r in rows)


@settings(max_examples=15, deadline=None)
@given(data=st.data())
def test_any_file_split_with_repeats_compacts_to_the_distinct_rows(tmp_path_factory, data):
    """Property: however rows are spread over files (with re-sent copies), compaction keeps each event once,
    names its output deterministically, and a second run changes nothing."""
    root = tmp_path_factory.mktemp("prop")
    part = {"tenant_id": "acme-in", "event_date": "2026-03-01"}
    n = data.draw(st.integers(1, 40))
    rows = [row(i, 0, "acme-in") for i in range(n)]
    files = data.draw(st.lists(st.lists(st.sampled_from(rows), min_size=1, max_size=12), min_size=2, max_size=8))
    covered = {r["message_id"] for f in files for r in f}
    for k, chunk in enumerate(files):
        write_partition_file(str(root), "events", part, chunk, f"part-p{k}.parquet")
    result = compact_partition(str(root), "events", part, strategy=data.draw(st.sampled_from(["exchange", "copy"])))
    assert result.status == "compacted" and result.rows_in == sum(len(f) for f in files)
    assert read_ids(root)[("acme-in", "2026-03-01")] == sorted(covered)
    (name,) = files_of(root, "acme-in", "2026-03-01")
    again = compact_partition(str(root), "events", part)
    assert again.status == "skipped_compact" and files_of(root, "acme-in", "2026-03-01") == [name]


def test_redundant_partition_columns_are_dropped_and_unknown_columns_refused(tmp_path):
    import pyarrow as pa

    from connectors.lake import rows_to_table

    part = {"tenant_id": "acme-in", "event_date": "2026-03-01"}
    rows = [row(i, 0, "acme-in") for i in range(6)]
    for k in range(3):  # a writer that also stored the Hive partition columns in the files
        table = rows_to_table(rows[2 * k : 2 * k + 2]).append_column("tenant_id", pa.array(["acme-in"] * 2))
        write_partition_file(str(tmp_path), "events", part, table, f"part-w{k}.parquet")
    assert compact_partition(str(tmp_path), "events", part).status == "compacted"
    assert read_ids(tmp_path)[("acme-in", "2026-03-01")] == sorted(r["message_id"] for r in rows)

    other = {"tenant_id": "bloom-in", "event_date": "2026-03-01"}
    for k in range(2):
        table = rows_to_table(rows[:2]).append_column("surprise", pa.array(["x", "y"]))
        write_partition_file(str(tmp_path), "events", other, table, f"part-u{k}.parquet")
    result = compact_partition(str(tmp_path), "events", other)
    assert result.status == "skipped_unknown_columns"
    assert files_of(tmp_path, "bloom-in", "2026-03-01") == ["part-u0.parquet", "part-u1.parquet"]  # untouched
