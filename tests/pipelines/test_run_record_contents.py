"""Every pipeline's run record says what the run read (with a fingerprint), what it wrote and how much:
each pipeline is run twice through its ``main()`` on a small lake, and the record is checked against the
files the run left behind (row counts read with DuckDB, not taken from the pipeline)."""

from __future__ import annotations

import datetime as dt
import glob
import importlib
import json
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines import ingest_batch
from tests.analytics_lake import generate_rows, write_lake
from tests.run_records import read_run_records

pytestmark = pytest.mark.slow

SEGMENTS = """
timezone: UTC
segments:
  - name: buyers
    rule: {event: {name: Order Completed}}
"""


@pytest.fixture(autouse=True)
def no_logging_setup(monkeypatch):
    """In-process ``main()`` calls must not replace pytest's own log handlers."""
    monkeypatch.setattr("pipelines.options.configure_logging", lambda level, fmt: None)


@pytest.fixture(scope="module")
def base_lake(tmp_path_factory) -> str:
    root = str(tmp_path_factory.mktemp("record_lake"))
    write_lake(root, generate_rows(persons=16, seed=5, days=24))
    return root


def parquet_rows(pattern: str) -> int:
    return duckdb.connect().sql(f"select count(*) from read_parquet('{pattern}')").fetchall()[0][0]


def lake_rows(lake: str) -> int:
    return parquet_rows(f"{lake}/events/*/*/*.parquet")


def split_partition_files(lake: str) -> None:
    """Two files per partition (halves of the one written), so that compaction has work to do."""
    for path in glob.glob(f"{lake}/events/*/*/part-00000.parquet"):
        table = pq.read_table(path)
        half = table.num_rows // 2
        if half:
            pq.write_table(table.slice(0, half), path)
            pq.write_table(table.slice(half), path.replace("part-00000", "part-00001"))


def ingest_with_dead_letters(lake: str, tmp: Path) -> None:
    """A lake whose dead_letters hold events refused for a missing timestamp."""
    lines = [
        {
            "type": "track",
            "event": "Product Viewed",
            "messageId": f"m-{i}",
            "tenantId": "acme-in",
            "anonymousId": f"a-{i}",
            "originalTimestamp": "2026-08-02T10:00:00.000Z" if i % 3 else "not a time",
            "sentAt": None,
            "receivedAt": None,
        }
        for i in range(9)
    ]
    source = tmp / "events.ndjson"
    source.write_text("".join(json.dumps(line) + "\n" for line in lines))
    ingest_batch.run(["--input", str(source), "--lake", lake, "--tracking-plans", "none"])


def _funnels_outputs(lake: str, out: str) -> None:
    importlib.import_module("pipelines.funnels").run(
        ["--lake", lake, "--steps", "Product Viewed,Order Completed", "--output", out]
    )


class Case:
    """How to run one pipeline (``argv(lake, work)``, after ``prepare``), where its records go, and what
    its counts must agree with (``agree(record, lake, work)``, beyond the Parquet row counts)."""

    def __init__(
        self,
        argv: Callable[[str, str], list[str]],
        root: Callable[[str, str], str] = lambda lake, work: lake,
        prepare: Callable[[str, Path], None] | None = None,
        agree: Callable[[dict, str, str], None] | None = None,
        changes_its_input: bool = False,
    ):
        self.argv, self.root, self.prepare, self.agree = argv, root, prepare, agree
        self.changes_its_input = changes_its_input


def _features_agree(record: dict, lake: str, work: str) -> None:
    persons = sum(s["persons"] for s in record["counts"]["snapshots"])
    assert persons == parquet_rows(f"{work}/out/features/*/*/*.parquet") > 0


def _clv_agree(record: dict, lake: str, work: str) -> None:
    assert record["counts"]["customers"] == parquet_rows(f"{work}/out/clv_predictions.parquet") > 0


def _training_agree(record: dict, lake: str, work: str) -> None:
    assert record["counts"]["spine_rows"] == parquet_rows(f"{work}/train.parquet")
    assert any(i["path"] == f"{work}/spine.parquet" for i in record["inputs"])


def _write_spine(lake: str, work: Path) -> None:
    persons = (
        duckdb.connect()
        .sql(
            f"select distinct tenant_id, person_id from read_parquet('{lake}/events/*/*/*.parquet', hive_partitioning=true)"
            " where person_id is not null order by 1, 2"
        )
        .fetchall()
    )
    label = dt.datetime(2026, 8, 20, tzinfo=dt.UTC)
    rows = [
        {"tenant_id": t, "person_id": p, "label_timestamp": label, "label": i % 2} for i, (t, p) in enumerate(persons)
    ]
    pq.write_table(pa.Table.from_pylist(rows), str(work / "spine.parquet"))


def _check_agree(record: dict, lake: str, work: str) -> None:
    assert record["counts"]["rows"] == lake_rows(lake)
    assert record["counts"]["partitions"] == len(glob.glob(f"{lake}/events/*/*"))
    assert all(os.path.exists(p) for p in record["outputs"])


def _compact_agree(record: dict, lake: str, work: str) -> None:
    # the second run finds nothing left to compact; the first compacted every partition into one file
    assert record["counts"]["partitions_compacted"] == 0
    assert record["counts"]["partitions_skipped"] == len(glob.glob(f"{lake}/events/*/*"))
    assert record["inputs"][0]["files"] == len(glob.glob(f"{lake}/events/*/*/*.parquet"))


def _replay_agree(record: dict, lake: str, work: str) -> None:
    lines = sum(len(Path(p).read_text().splitlines()) for p in glob.glob(f"{lake}/dead_letters/*.jsonl"))
    assert record["counts"]["dead_letters_read"] == lines > 0
    assert record["inputs"][0]["files"] == len(glob.glob(f"{lake}/dead_letters/*.jsonl"))


def _sinks_agree(record: dict, lake: str, work: str) -> None:
    assert record["counts"]["lake_rows"] == lake_rows(lake)
    loaded = duckdb.connect(f"{work}/wh.duckdb", read_only=True).sql("select count(*) from events").fetchall()[0][0]
    assert record["counts"]["warehouse_rows_loaded"] == loaded > 0


def _report_agree(record: dict, lake: str, work: str) -> None:
    pages = glob.glob(f"{work}/*.html")
    assert sorted(record["outputs"]) == sorted(pages) and len(pages) >= 2  # the index and one page per tenant


CASES = {
    "funnels": Case(
        lambda lake, w: ["--lake", lake, "--steps", "Product Viewed,Order Completed", "--output", w + "/out"]
    ),
    "retention": Case(
        lambda lake, w: [
            "--lake",
            lake,
            "--start-event",
            "Product Viewed",
            "--return-event",
            "Order Completed",
            "--start-date",
            "2026-08-01",
            "--end-date",
            "2026-08-20",
            "--output",
            w + "/out",
        ]
    ),
    "product_analytics": Case(lambda lake, w: ["--lake", lake, "--output", w + "/out", "--buckets", "2"]),
    "segments": Case(
        lambda lake, w: ["--lake", lake, "--config", w + "/seg.yaml", "--as-of", "2026-08-20", "--output", w + "/out"],
        prepare=lambda lake, w: (w / "seg.yaml").write_text(SEGMENTS),
    ),
    "features": Case(
        lambda lake, w: ["--lake", lake, "--as-of", "2026-08-20", "--output-lake", w + "/out", "--buckets", "2"],
        agree=_features_agree,
    ),
    "training_set": Case(
        lambda lake, w: ["--lake", lake, "--spine", w + "/spine.parquet", "--output", w + "/train.parquet"],
        prepare=_write_spine,
        agree=_training_agree,
    ),
    "clv": Case(
        lambda lake, w: ["--lake", lake, "--calibration-end", "2026-08-20", "--output", w + "/out"], agree=_clv_agree
    ),
    "check_lake": Case(lambda lake, w: ["--lake", lake], agree=_check_agree),
    "compact_lake": Case(
        lambda lake, w: ["--lake", lake, "--min-age-minutes", "0"],
        prepare=lambda lake, w: split_partition_files(lake),
        agree=_compact_agree,
        changes_its_input=True,
    ),
    "replay_dead_letters": Case(
        lambda lake, w: ["--dead-letters", f"{lake}/dead_letters/*.jsonl", "--lake", lake, "--tracking-plans", "none"],
        prepare=lambda lake, w: ingest_with_dead_letters(lake, w),
        agree=_replay_agree,
    ),
    "load_sinks": Case(lambda lake, w: ["--lake", lake, "--warehouse", f"duckdb://{w}/wh.duckdb"], agree=_sinks_agree),
    "report": Case(
        lambda lake, w: [
            "--input",
            w + "/analytics",
            "--output",
            w + "/report.html",
            "--generated-at",
            "2026-09-01T00:00:00+00:00",
        ],
        root=lambda lake, w: w,
        prepare=lambda lake, w: _funnels_outputs(lake, str(w / "analytics")),
        agree=_report_agree,
    ),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_a_run_records_its_inputs_outputs_and_counts_and_a_rerun_appends(name, base_lake, tmp_path):
    case = CASES[name]
    lake, work = str(tmp_path / "lake"), str(tmp_path)
    if name == "replay_dead_letters":
        os.makedirs(lake)
    else:
        shutil.copytree(base_lake, lake)
    if case.prepare:
        case.prepare(lake, tmp_path)
    module = importlib.import_module(f"pipelines.{name}")
    for _ in range(2):
        module.main(case.argv(lake, work))
    runs = [r for r in read_run_records(case.root(lake, work)) if r["pipeline"] == name]
    assert len(runs) == 2 and runs[0]["run_id"] != runs[1]["run_id"]
    for record in runs:
        assert record["status"] == "succeeded" and record["exit_code"] == 0
        assert record["inputs"], "no inputs recorded"
        for entry in record["inputs"]:
            assert re.fullmatch(r"[0-9a-f]{12}", entry["fingerprint"]) and entry["files"] > 0
        assert record["outputs"], "no outputs recorded"
        for output in record["outputs"]:
            assert "://" in output or glob.glob(output), f"{output} was recorded but not written"
            if output.endswith(".parquet"):
                assert record["counts"]["rows_out"][output] == parquet_rows(output)
    first, second = ([i["fingerprint"] for i in r["inputs"]] for r in runs)
    assert (first != second) if case.changes_its_input else (first == second)
    if case.agree:
        case.agree(runs[1], lake, work)


def _funnels(lake: str, out: str, *extra: str) -> dict:
    importlib.import_module("pipelines.funnels").main(
        ["--lake", lake, "--steps", "Product Viewed,Order Completed", "--output", out, *extra]
    )
    return read_run_records(lake)[-1]["inputs"][0]


def test_the_fingerprint_changes_with_the_files_read_and_only_with_them(base_lake, tmp_path):
    lake = str(tmp_path / "lake")
    shutil.copytree(base_lake, lake)
    in_range = ["--start-date", "2026-08-05", "--end-date", "2026-08-10", "--allow-empty"]
    first = _funnels(lake, str(tmp_path / "o"), *in_range)
    assert _funnels(lake, str(tmp_path / "o"), *in_range)["fingerprint"] == first["fingerprint"]
    # the same lake elsewhere (copied with its times): the same fingerprint
    moved = str(tmp_path / "moved")
    shutil.copytree(lake, moved)
    assert _funnels(moved, str(tmp_path / "o"), *in_range)["fingerprint"] == first["fingerprint"]
    # a partition outside the range changes: not read, same fingerprint
    outside = sorted(glob.glob(f"{lake}/events/*/event_date=2026-08-2*/*.parquet"))[0]
    shutil.copyfile(outside, outside.replace("part-00000", "part-00009"))
    assert _funnels(lake, str(tmp_path / "o"), *in_range)["fingerprint"] == first["fingerprint"]
    # a file of a partition it reads is rewritten (same name): another fingerprint
    inside = sorted(glob.glob(f"{lake}/events/*/event_date=2026-08-0[5-9]/*.parquet"))[0]
    table = pq.read_table(inside)
    pq.write_table(table.slice(1), inside)
    changed = _funnels(lake, str(tmp_path / "o"), *in_range)
    assert changed["fingerprint"] != first["fingerprint"]
    assert changed["size_bytes"] != first["size_bytes"] and changed["files"] == first["files"]
