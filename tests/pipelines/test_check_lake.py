"""pipelines.check_lake on FnApiRunner over an ingested lake and a corrupted copy of it."""

from __future__ import annotations

import datetime as dt
import json
import os
import pathlib

import pyarrow.parquet as pq
import pytest

from connectors.quality import read_result
from pipelines import check_lake
from tests.quality_lake import clean_lake, copy_partition, part_files, partition_dir, partitions, rewrite_file
from tests.s3_lake import s3_lake_fs  # noqa: F401  (fixture)


@pytest.fixture(scope="module")
def lake(tmp_path_factory):
    return clean_lake(tmp_path_factory)


def _result_file(lake: str, tenant: str, date: dt.date) -> str:
    return os.path.join(lake, "_quality", "events", f"tenant_id={tenant}", f"event_date={date}", "result.json")


def test_help_explains_every_flag(capsys):
    with pytest.raises(SystemExit) as exit_info:
        check_lake.run(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--lake", "--start-date", "--end-date", "--tenant", "--fail-on-error", "--max-future-hours"):
        assert flag in out


def test_clean_slice_passes_and_exits_zero(lake, capsys):
    tenant = "acme-in"
    start, end = dt.date(2026, 10, 1), dt.date(2026, 10, 2)
    expected = [(t, d) for t, d in partitions(lake) if t == tenant and start <= d <= end]
    assert expected
    check_lake.main(
        ["--lake", lake, "--tenant", tenant, "--start-date", str(start), "--end-date", str(end), "--fail-on-error"]
    )
    out = capsys.readouterr().out
    assert f"partitions checked: {len(expected)}   failed: 0" in out
    assert "every expectation passed" in out
    rows = 0
    for t, d in expected:
        result = read_result(_result_file(lake, t, d))
        assert result.success and result.tenant_id == t and result.start_date == d
        rows += result.rows
    files = [f for t, d in expected for f in part_files(partition_dir(lake, t, d))]
    assert rows == sum(pq.read_metadata(f).num_rows for f in files)
    others = [(t, d) for t, d in partitions(lake) if (t, d) not in expected]
    assert not any(os.path.exists(_result_file(lake, t, d)) for t, d in others)
    # the checkpoint's UpdateDataDocsAction built the site; the run's JSON names what it checked
    assert os.path.exists(os.path.join(lake, "_quality", "docs", "index.html"))
    runs = os.path.join(lake, "_quality", "runs")
    (name,) = [f for f in os.listdir(runs) if f.startswith("check_lake-")]
    document = json.loads(pathlib.Path(runs, name).read_text())
    assert document["partitions"] == len(expected) and document["success"] and document["failed_partitions"] == {}


def test_corrupted_partitions_are_reported_by_name_and_fail_the_run(lake, tmp_path, capsys):
    chosen = partitions(lake)[:4]
    target = str(tmp_path / "lake")
    for tenant, date in chosen:
        copy_partition(lake, target, tenant, date)
    (dup_tenant, dup_date), (neg_tenant, neg_date) = chosen[0], chosen[1]

    def duplicate(rows):
        rows.append(dict(rows[0]))  # a re-sent copy that escaped dedup

    rewrite_file(part_files(partition_dir(target, dup_tenant, dup_date))[0], duplicate)

    def negate(rows):
        for row in rows:
            if row["revenue_inr"] is not None:
                row["revenue_inr"] = -abs(row["revenue_inr"]) - 1
                return
        raise AssertionError("no money row")

    money_file = next(
        f
        for f in part_files(partition_dir(target, neg_tenant, neg_date))
        if pq.read_table(f, columns=["revenue_inr"]).column(0).null_count < pq.read_metadata(f).num_rows
    )
    rewrite_file(money_file, negate)
    negatives = 1

    summary = check_lake.run(["--lake", target, "--fail-on-error"])
    assert summary.partitions == len(chosen)
    assert summary.partitions_failed == 2 and not summary.success and summary.exit_code == 1
    dup_rows = _duplicate_rows(target, dup_tenant, dup_date)
    assert summary.failed_by_name == {
        "unique:tenant_id,message_id": {"partitions": 1, "unexpected_rows": dup_rows},
        "non_negative:revenue_inr": {"partitions": 1, "unexpected_rows": negatives},
    }
    assert sorted(summary.failed_partitions) == sorted([f"{dup_tenant}/{dup_date}", f"{neg_tenant}/{neg_date}"])
    for tenant, date in chosen[2:]:
        assert read_result(_result_file(target, tenant, date)).success
    table = summary.table()
    assert "unique:tenant_id,message_id" in table and "non_negative:revenue_inr" in table

    with pytest.raises(SystemExit) as exit_info:
        check_lake.main(
            [
                "--lake",
                target,
                "--tenant",
                neg_tenant,
                "--start-date",
                str(neg_date),
                "--end-date",
                str(neg_date),
                "--fail-on-error",
            ]
        )
    assert exit_info.value.code == 1
    out = capsys.readouterr().out
    assert "non_negative:revenue_inr" in out
    assert json.loads(out.strip().splitlines()[-1])["success"] is False


def _duplicate_rows(lake: str, tenant: str, date: dt.date) -> int:
    """Rows whose message_id occurs more than once in the partition, counted from the files."""
    ids = [
        mid for f in part_files(partition_dir(lake, tenant, date)) for mid in pq.read_table(f)["message_id"].to_pylist()
    ]
    return sum(1 for mid in ids if ids.count(mid) > 1)


def test_start_after_end_is_rejected_before_running(lake):
    with pytest.raises(ValueError, match="after"):
        check_lake.run(["--lake", lake, "--start-date", "2026-10-05", "--end-date", "2026-10-01"])


@pytest.mark.integration
def test_s3_lake_on_the_moto_server(lake, aws, s3_lake_fs):  # noqa: F811
    """An s3:// lake: partitions listed and read with pyarrow's S3, results written with Beam's S3 filesystem."""
    fs = s3_lake_fs
    chosen = partitions(lake)[:2]
    for tenant, date in chosen:
        for path in part_files(partition_dir(lake, tenant, date)):
            key = f"lake/prod/events/tenant_id={tenant}/event_date={date}/{os.path.basename(path)}"
            with fs.open_output_stream(key) as out, open(path, "rb") as source:
                out.write(source.read())
    summary = check_lake.run(
        ["--lake", "s3://lake/prod", "--aws-endpoint-url", aws.endpoint_url, "--aws-region", aws.region]
    )
    assert summary.partitions == 2 and summary.success
    for tenant, date in chosen:
        key = f"lake/prod/_quality/events/tenant_id={tenant}/event_date={date}/result.json"
        with fs.open_input_stream(key) as handle:
            document = json.loads(handle.read())
        expected = sum(pq.read_metadata(f).num_rows for f in part_files(partition_dir(lake, tenant, date)))
        assert document["success"] is True and document["rows"] == expected


@pytest.mark.integration
def test_a_null_person_id_on_an_s3_lake_is_a_failed_check_not_a_crash(lake, aws, s3_lake_fs, tmp_path):  # noqa: F811
    """An s3:// lake is read file by file with Beam's filesystems: a null in a not-null column must reach the
    suite (as on a local lake), not fail the cast to the contract's schema."""
    tenant, date = partitions(lake)[0]
    copy = str(tmp_path / "lake")
    (path,) = part_files(copy_partition(lake, copy, tenant, date))[:1]
    rewrite_file(path, lambda rows: rows[-1].update(person_id=None))
    key = f"lake/nulls/events/tenant_id={tenant}/event_date={date}/{os.path.basename(path)}"
    with s3_lake_fs.open_output_stream(key) as out, open(path, "rb") as source:
        out.write(source.read())
    summary = check_lake.run(
        ["--lake", "s3://lake/nulls", "--aws-endpoint-url", aws.endpoint_url, "--aws-region", aws.region]
    )
    assert summary.partitions == 1 and not summary.success
    assert summary.failed_by_name == {"not_null:person_id": {"partitions": 1, "unexpected_rows": 1}}
