"""--quality-gate on ingest and the analytics pipelines: a corrupted partition is blocked, then published."""

from __future__ import annotations

import datetime as dt
import glob
import json
import os
import pathlib
from decimal import Decimal

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from connectors.lake import _WritePartitionBatchFn, lake_file_name
from connectors.warehouse import count_rows
from pipelines import funnels, ingest_batch, load_sinks, product_analytics, retention
from pipelines.errors import EXIT_QUALITY
from schemas.lake import EVENTS_FILE_SCHEMA, EVENTS_TABLE
from transforms.event_tables import from_ipc

TENANT, DAY = "acme-in", dt.date(2026, 10, 1)
BAD = ("acme-in", "2026-10-01")


def _events(path: str) -> str:
    """Clean generated traffic for two tenants over two days (no negative amounts: see docs/quality.md)."""
    from connectors.synthetic import generate_events
    from tests.quality_lake import _books_negative_amount

    with open(path, "wb") as handle:
        for record in generate_events(600, seed=5, tenants=("acme-in", "bloom-in"), start=DAY, days=2):
            if not _books_negative_amount(record):
                handle.write(record + b"\n")
    return path


def _corrupt(element):
    """A writer bug in one partition: two null person ids, a negative amount, one message id used twice."""
    (tenant, date, bucket), rows = element
    rows = list(rows)
    if rows and isinstance(rows[0], bytes):
        rows = from_ipc(rows).to_pylist()
    if (tenant, str(date)) == BAD and len(rows) >= 4:
        rows = [dict(r) for r in rows]
        rows[0]["person_id"] = rows[1]["person_id"] = None
        rows[2]["revenue_inr"] = Decimal("-12.5000")
        rows[3]["message_id"] = rows[2]["message_id"]
    return (tenant, date, bucket), rows


class _BuggyWriteFn(beam.DoFn):
    """A writer bug: the bad partition's file is written from corrupted rows with a schema that allows nulls."""

    def __init__(self, lake: str, tag: str):
        self.lake, self.tag = lake, tag

    def process(self, element):
        (tenant, date, bucket), rows = _corrupt(element)
        if (tenant, str(date)) != BAD:
            yield from _WritePartitionBatchFn(self.lake, EVENTS_TABLE, self.tag).process(element)
            return
        schema = pa.schema([f.with_nullable(True) for f in EVENTS_FILE_SCHEMA])
        table = pa.Table.from_pylist(sorted(rows, key=lambda r: r["message_id"]), schema=schema)
        directory = os.path.join(self.lake, EVENTS_TABLE, f"tenant_id={tenant}", f"event_date={date}")
        os.makedirs(directory, exist_ok=True)
        path = os.path.join(directory, lake_file_name(self.tag, bucket))
        pq.write_table(table, path)
        yield path, table.num_rows


class _BuggyWrite(beam.PTransform):
    """Stands in for ingest's WriteLakePartitions."""

    def __init__(self, lake: str, tag: str, encryption=None):
        super().__init__()
        self.lake, self.tag = lake, tag

    def expand(self, batches):
        return batches | "WritePartitionFiles" >> beam.ParDo(_BuggyWriteFn(self.lake, self.tag))


def _files(root: str) -> list[str]:
    return sorted(os.path.basename(p) for p in glob.glob(f"{root}/**/*.parquet", recursive=True))


def _partition(lake: str, table: str = "events") -> str:
    return os.path.join(lake, table, f"tenant_id={BAD[0]}", f"event_date={BAD[1]}")


def _last_record(lake: str, pipeline: str) -> dict:
    paths = sorted(glob.glob(f"{lake}/_runs/records/*/*-{pipeline}-*.json"))
    with open(paths[-1]) as handle:
        return json.load(handle)


def _warehouse_rows(url: str, partition: tuple[str, str]) -> int:
    import duckdb

    with duckdb.connect(url.removeprefix("duckdb://")) as con:
        return con.execute(
            "select count(*) from events where tenant_id = ? and cast(event_date as varchar) = ?", list(partition)
        ).fetchone()[0]


def test_block_quarantines_a_corrupted_partition_and_a_fixed_rerun_publishes_it(tmp_path, monkeypatch, capsys):
    source = _events(str(tmp_path / "events.ndjson"))
    lake = str(tmp_path / "lake")
    argv = ["--input", source, "--lake", lake, "--quality-gate", "block"]
    monkeypatch.setattr(ingest_batch, "WriteLakePartitions", _BuggyWrite)
    with pytest.raises(SystemExit) as exit_info:
        ingest_batch.main(argv)
    assert exit_info.value.code == EXIT_QUALITY == 7
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("ingest_batch: ")]
    assert len(err) == 1 and "quality gate: 1 of" in err[0] and f"first {BAD[0]}/{BAD[1]}" in err[0]
    for name in ("not_null:person_id", "unique:tenant_id,message_id", "non_negative:revenue_inr"):
        assert name in err[0]

    quarantined = _files(_partition(lake, "_quarantine/events"))
    assert quarantined and not _files(_partition(lake))  # nothing of it left where readers look
    assert _files(os.path.join(lake, "events"))  # the other partitions are published
    manifest = [p for p in glob.glob(f"{lake}/_ingested/**/*", recursive=True) if os.path.isfile(p)]
    assert not manifest  # input not recorded as ingested: the re-run ingests it again
    record = _last_record(lake, "ingest_batch")
    assert record["exit_code"] == 7 and record["error"].startswith("quality gate:")
    assert record["counts"]["quality_gate"] == "block"
    assert record["counts"]["quality_partitions_failed"] == 1
    assert sorted(record["counts"]["quality_failed"][f"{BAD[0]}/{BAD[1]}"]) == sorted(
        ["not_null:person_id", "unique:tenant_id,message_id", "non_negative:revenue_inr"]
    )
    assert record["counts"]["quality_files_quarantined"] == len(quarantined)

    # the warehouse load that follows ingest does not see the quarantined rows, even when run regardless
    warehouse = f"duckdb://{tmp_path}/wh.duckdb"
    load_sinks.run(["--lake", lake, "--warehouse", warehouse])
    assert _warehouse_rows(warehouse, BAD) == 0
    assert count_rows(warehouse) == sum(
        pq.read_metadata(p).num_rows for p in glob.glob(f"{lake}/events/**/*.parquet", recursive=True)
    )

    monkeypatch.undo()  # the writer bug is fixed; the same input is ingested again
    summary = ingest_batch.run(argv)
    assert summary.lake_rows > 0
    assert _files(_partition(lake)) == quarantined  # same names, now published
    assert not _files(os.path.join(lake, "_quarantine"))  # quarantined copies removed
    load_sinks.run(["--lake", lake, "--warehouse", warehouse])
    published = sum(pq.read_metadata(p).num_rows for p in glob.glob(f"{_partition(lake)}/*.parquet"))
    assert _warehouse_rows(warehouse, BAD) == published > 0


@pytest.fixture(scope="module")
def warned_lake(tmp_path_factory):
    """A lake where the corrupted partition was published under --quality-gate warn (the dev profile's default)."""
    root = tmp_path_factory.mktemp("warned")
    source = _events(str(root / "events.ndjson"))
    lake = str(root / "lake")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ingest_batch, "WriteLakePartitions", _BuggyWrite)
        ingest_batch.main(["--input", source, "--lake", lake])  # default warn: publishes, exit 0
    return lake


def test_warn_publishes_and_records_the_failure(warned_lake):
    assert _files(_partition(warned_lake))
    record = _last_record(warned_lake, "ingest_batch")
    counts = record["counts"]
    assert record["profile"] == "dev"  # no --profile, no $LIVORA_PROFILE: dev, whose gate warns
    assert counts["quality_gate"] == "warn" and counts["quality_partitions_failed"] == 1
    assert f"{BAD[0]}/{BAD[1]}" in counts["quality_failed"]


ANALYTICS = {
    "funnels": (funnels, ["--steps", "Product Viewed,Order Completed"]),
    "retention": (  # recurring: first_time would read all history, the bad day included
        retention,
        ["--start-event", "Product Viewed", "--return-event", "Product Viewed", "--kind", "recurring"],
    ),
    "product_analytics": (product_analytics, []),
}


@pytest.mark.parametrize("name", sorted(ANALYTICS))
def test_analytics_block_refuses_a_failing_input_partition(warned_lake, tmp_path, name, capsys):
    module, extra = ANALYTICS[name]
    out = tmp_path / "out"
    argv = [
        "--lake",
        warned_lake,
        "--output",
        str(out),
        "--start-date",
        "2026-10-01",
        "--end-date",
        "2026-10-02",
        *extra,
    ]
    with pytest.raises(SystemExit) as exit_info:
        module.main([*argv, "--quality-gate", "block"])
    assert exit_info.value.code == EXIT_QUALITY
    assert "refusing to compute" in capsys.readouterr().err
    assert not glob.glob(f"{out}/*.parquet")
    record = _last_record(warned_lake, name)
    assert record["exit_code"] == 7 and record["counts"]["quality_partitions_failed"] == 1
    # a range whose partitions (the neighbours each pipeline reads included) pass is computed under block
    later = [
        "--lake",
        warned_lake,
        "--output",
        str(out),
        "--start-date",
        "2026-10-03",
        "--end-date",
        "2026-10-05",
        *extra,
    ]
    module.main(
        [*later, "--quality-gate", "block", "--allow-empty"]
        if name != "product_analytics"
        else [*later, "--quality-gate", "block"]
    )
    assert glob.glob(f"{out}/*.parquet")
    assert _last_record(warned_lake, name)["counts"]["quality_partitions_failed"] == 0


def test_a_run_of_several_gated_passes_records_them_all(tmp_path):
    """stream_events records one gate outcome per pass: the run record keeps the union, not the last pass."""
    from connectors.run_records import recording
    from pipelines.quality_gate import gate_pass

    lake = str(tmp_path / "lake")
    os.makedirs(lake)
    with recording("stream_events", ["--lake", lake]) as record:
        gate_pass(lake, ["k1"], {"mode": "warn", "partitions": 3, "failed": {"a/2026-10-01": ["x"]}})
        gate_pass(lake, ["k2"], {"mode": "warn", "partitions": 2, "failed": {"b/2026-10-02": ["y"]}})
        gate_pass(lake, ["k3"], {"mode": "warn", "partitions": 1, "failed": {"a/2026-10-01": ["x"]}})
    assert record.counts["quality_partitions_checked"] == 6
    assert record.counts["quality_failed"] == {"a/2026-10-01": ["x"], "b/2026-10-02": ["y"]}
    assert record.counts["quality_partitions_failed"] == 2


def _write_bad_earlier_file(lake: str) -> str:
    """An earlier run's file in the BAD partition, written directly: its rows break three rules."""
    (clean,) = glob.glob(f"{_partition(lake)}/*.parquet")[:1]
    rows = pq.read_table(clean).to_pylist()[:5]
    for row in rows:
        row["message_id"] = "earlier-" + row["message_id"]
    rows[0]["person_id"] = None
    rows[1]["revenue_inr"] = Decimal("-99.0000")
    rows[2]["message_id"] = rows[3]["message_id"]
    schema = pa.schema([f.with_nullable(True) for f in EVENTS_FILE_SCHEMA])
    path = os.path.join(_partition(lake), "part-earlier-0000.parquet")
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)
    return path


def _quality_runs(lake: str, pipeline: str) -> list[dict]:
    paths = sorted(glob.glob(f"{lake}/_quality/runs/{pipeline}-*.json"), key=os.path.getmtime)
    return [json.loads(open(p).read()) for p in paths]


def test_the_ingest_gate_judges_only_the_rows_the_run_wrote(tmp_path, monkeypatch, capsys):
    """Bad rows an earlier run left in a partition neither fail nor quarantine a later clean run into it; a bad
    later run is blocked and quarantines its own files of the partition, never the earlier file."""
    lake = str(tmp_path / "lake")
    first = _events(str(tmp_path / "day1.ndjson"))
    ingest_batch.run(["--input", first, "--lake", lake, "--quality-gate", "off"])
    earlier = _write_bad_earlier_file(lake)
    earlier_bytes = pathlib.Path(earlier).read_bytes()

    later = str(tmp_path / "later.ndjson")
    from connectors.synthetic import generate_events
    from tests.quality_lake import _books_negative_amount

    with open(later, "wb") as handle:
        for record in generate_events(400, seed=77, tenants=("acme-in", "bloom-in"), start=DAY, days=2):
            if not _books_negative_amount(record):
                handle.write(record + b"\n")
    argv = ["--input", later, "--lake", lake, "--quality-gate", "block"]
    capsys.readouterr()
    ingest_batch.main(argv)  # under a whole-partition check: exit 7 for the earlier file's rows
    summary = json.loads(capsys.readouterr().out)
    assert summary["lake_rows"] > 0 and summary["lake_duplicates"] == 0
    record = _last_record(lake, "ingest_batch")
    assert record["counts"]["quality_partitions_failed"] == 0 and record["counts"]["quality_partitions_checked"] > 0
    assert not os.path.isdir(os.path.join(lake, "_quarantine"))
    run_json = _quality_runs(lake, "ingest_batch")[-1]
    assert run_json["scope"] == "run_files" and run_json["success"]
    checked = run_json["files"][f"{BAD[0]}/{BAD[1]}"]
    assert "part-earlier-0000.parquet" not in checked and checked
    assert run_json["rows"] == summary["lake_rows"]  # the run's rows, not the partitions'
    assert pathlib.Path(earlier).read_bytes() == earlier_bytes

    # the whole-partition check (check_lake) still sees the earlier rows
    from pipelines import check_lake

    result = check_lake.run(["--lake", lake, "--start-date", BAD[1], "--end-date", BAD[1], "--tenant", BAD[0]])
    assert result.partitions_failed == 1

    # a bad later run: blocked, its own files of the partition quarantined, the earlier file left where it was
    bad = str(tmp_path / "bad.ndjson")
    with open(bad, "wb") as handle:
        for record in generate_events(400, seed=78, tenants=("acme-in", "bloom-in"), start=DAY, days=2):
            if not _books_negative_amount(record):
                handle.write(record + b"\n")
    published = _files(_partition(lake))
    monkeypatch.setattr(ingest_batch, "WriteLakePartitions", _BuggyWrite)
    with pytest.raises(SystemExit) as exit_info:
        ingest_batch.main(["--input", bad, "--lake", lake, "--quality-gate", "block"])
    assert exit_info.value.code == EXIT_QUALITY
    quarantined = _files(_partition(lake, "_quarantine/events"))
    assert quarantined and "part-earlier-0000.parquet" not in quarantined
    assert _files(_partition(lake)) == published  # the earlier runs' files, the bad one's included, stay
    failed = _quality_runs(lake, "ingest_batch")[-1]["failed_results"]
    assert list(failed) == [f"{BAD[0]}/{BAD[1]}"]
    assert failed[f"{BAD[0]}/{BAD[1]}"]["rows"] == sum(
        pq.read_metadata(p).num_rows for p in glob.glob(f"{_partition(lake, '_quarantine/events')}/*.parquet")
    )  # the bad run's rows of the partition, not the earlier runs'
    assert pathlib.Path(earlier).read_bytes() == earlier_bytes
