"""pipelines.product_analytics on Beam's FnApiRunner over a small generated lake."""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import subprocess
import sys

import pandas as pd
import pyarrow.parquet as pq
import pytest

from connectors.analytics_io import person_buckets, write_table
from connectors.lake import read_events
from pipelines import product_analytics
from tests.analytics_lake import START, generate_rows, row, write_lake
from tests.portable import worker_pool  # noqa: F401  (fixture)
from transforms.product_analytics import analyse

TABLES = product_analytics.TABLES


def run(lake, out, *extra):
    product_analytics.run(["--lake", str(lake), "--output", str(out), "--buckets", "3", *extra])
    return {name: pq.read_table(os.path.join(out, f"{name}.parquet")).to_pandas() for name in TABLES}


@pytest.fixture(scope="module")
def lake(tmp_path_factory):
    path = tmp_path_factory.mktemp("lake")
    write_lake(str(path), generate_rows(persons=60, seed=8, days=40))
    return path


def last_day(lake) -> dt.date:
    return max(read_events(str(lake), columns=["event_date"])["event_date"].to_pylist())


def test_outputs_equal_the_single_machine_computation(lake, tmp_path):
    got = run(lake, tmp_path)  # default timezone: Asia/Kolkata
    end = last_day(lake)
    data_end = dt.datetime.combine(end + dt.timedelta(days=1), dt.time(), tzinfo=dt.UTC)
    want = analyse(read_events(str(lake)), 24, data_end, "Asia/Kolkata")
    for name in TABLES:
        assert len(got[name]) > 0, name
        stored = write_table(str(tmp_path / "want" / f"{name}.parquet"), want[name], csv=False)
        expected = pq.read_table(stored).to_pandas()  # the same storage round trip (nulls, dtypes)
        pd.testing.assert_frame_equal(got[name], expected, check_dtype=False)
        csv = pd.read_csv(tmp_path / f"{name}.csv")
        assert len(csv) == len(got[name]) and list(csv.columns) == list(got[name].columns)


def test_rerun_and_backfill_replace_only_their_days(lake, tmp_path):
    first = run(lake, tmp_path, "--timezone", "UTC")["revenue_daily"]
    again = run(lake, tmp_path, "--timezone", "UTC")["revenue_daily"]
    pd.testing.assert_frame_equal(first, again)  # a rerun does not duplicate

    # backfill one day after that day's partitions changed: only that day's rows change
    days = sorted(set(first["date"]))
    day = days[len(days) // 2]
    lake2 = tmp_path / "lake2"
    shutil.copytree(lake, lake2)
    for tenant_dir in (lake2 / "events").iterdir():
        shutil.rmtree(tenant_dir / f"event_date={day.isoformat()}", ignore_errors=True)
    out = run(lake2, tmp_path, "--start-date", day.isoformat(), "--end-date", day.isoformat(), "--timezone", "UTC")[
        "revenue_daily"
    ]
    assert day not in set(out["date"])
    others = first.loc[first["date"] != day].reset_index(drop=True)
    pd.testing.assert_frame_equal(out.reset_index(drop=True), others)


def test_a_local_day_backfill_reads_both_utc_partitions(lake, tmp_path):
    """An IST day runs from 18:30 UTC the day before: a one-day run must equal that day of a full run."""
    full = run(lake, tmp_path / "full")["revenue_daily"]
    days = sorted(set(full["date"]))
    day = days[len(days) // 2]
    one = run(lake, tmp_path / "one", "--start-date", day.isoformat(), "--end-date", day.isoformat())
    assert set(one["revenue_daily"]["date"]) == {day}
    pd.testing.assert_frame_equal(
        one["revenue_daily"].reset_index(drop=True),
        full.loc[full["date"] == day].reset_index(drop=True),
        check_dtype=False,
    )


def test_an_order_sent_for_two_persons_counts_once(tmp_path):
    # identity stitching may leave the SDK copy and the webhook copy of an order on different persons
    a, b = "person-a", "person-b"
    for i in range(100):  # two persons in different buckets
        b = f"person-b{i}"
        buckets = person_buckets(__import__("pyarrow").array([a, b]), 3)
        if buckets[0] != buckets[1]:
            break
    props = {"order_id": "o-1", "products": [{"product_id": "SKU-1", "price": 100, "quantity": 2}]}
    t = START + dt.timedelta(hours=5)
    rows = [
        row("acme-in", a, "m1", t, "Order Completed", props, order_id="o-1", revenue_inr=200, currency="INR"),
        row("acme-in", b, "m2", t + dt.timedelta(seconds=9), "Order Completed", props, order_id="o-1", revenue_inr=200),
    ]
    write_lake(str(tmp_path / "lake"), rows)
    got = run(tmp_path / "lake", tmp_path / "out")
    assert got["revenue_daily"]["orders"].tolist() == [1]
    assert got["revenue_daily"]["revenue_inr"].tolist() == [200.0]
    assert got["product_funnel"][["orders", "purchasers", "units_sold"]].iloc[0].tolist() == [1, 1, 2]
    assert got["ltv_cohorts"]["cohort_size"].iloc[0] == 1  # the earliest copy's person


def test_tenant_filter_and_empty_range(lake, tmp_path):
    got = run(lake, tmp_path / "t", "--tenant", "bloom-in")
    assert set(got["product_funnel"]["tenant_id"]) == {"bloom-in"}
    empty = run(lake, tmp_path / "e", "--start-date", "2030-01-01", "--end-date", "2030-01-02")
    assert all(len(t) == 0 for t in empty.values())


def test_help_explains_every_flag():
    out = subprocess.run(
        [sys.executable, "-m", "pipelines.product_analytics", "--help"], capture_output=True, text=True, check=True
    ).stdout
    for flag in (
        "--lake",
        "--output",
        "--start-date",
        "--end-date",
        "--tenant",
        "--cart-hours",
        "--buckets",
        "--timezone",
    ):
        assert flag in out


def test_bad_flags_fail_before_the_graph(lake, tmp_path):
    with pytest.raises(ValueError, match="after"):
        product_analytics.run(
            ["--lake", str(lake), "--output", str(tmp_path), "--start-date", "2026-10-02", "--end-date", "2026-10-01"]
        )
    with pytest.raises(ValueError, match="cart-hours"):
        product_analytics.run(["--lake", str(lake), "--output", str(tmp_path), "--cart-hours", "0"])
    with pytest.raises(ValueError, match="timezone"):
        product_analytics.run(["--lake", str(lake), "--output", str(tmp_path), "--timezone", "Mars/Base"])


def test_warehouse_load_is_idempotent(lake, tmp_path):
    import duckdb

    url = f"duckdb:///{tmp_path}/wh.duckdb"
    got = run(lake, tmp_path / "o", "--warehouse", url)
    run(lake, tmp_path / "o", "--warehouse", url)  # a rerun replaces, never adds
    with duckdb.connect(str(tmp_path / "wh.duckdb"), read_only=True) as con:
        for name in TABLES:
            assert con.execute(f"SELECT count(*) FROM {name}").fetchone()[0] == len(got[name]), name
        total = con.execute("SELECT sum(revenue_inr) FROM revenue_daily").fetchone()[0]
    assert total == pytest.approx(got["revenue_daily"]["revenue_inr"].sum())


@pytest.mark.slow
def test_end_to_end_from_synthetic_traffic_reconciles_with_the_lake(tmp_path):
    """synthetic records → ingest_batch → product_analytics → report; totals reconcile with the lake."""
    import duckdb

    from connectors.synthetic import generate_events
    from pipelines import ingest_batch, report
    from pipelines.report_page import page_file_name
    from pipelines.report_page.formatting import fmt_inr

    source = tmp_path / "events.ndjson"
    source.write_bytes(b"".join(r + b"\n" for r in generate_events(6000, seed=5, days=20)))
    lake, out = tmp_path / "lake", tmp_path / "out"
    ingest_batch.run(["--input", str(source), "--lake", str(lake)])
    got = run(lake, out)
    events = f"read_parquet('{lake}/events/**/*.parquet', hive_partitioning=true)"
    with duckdb.connect() as con:
        orders, revenue = con.execute(
            f"SELECT count(DISTINCT (tenant_id, coalesce(order_id, message_id))), "
            f"sum(CAST(revenue_inr AS DOUBLE)) FROM (SELECT *, row_number() OVER (PARTITION BY tenant_id, "
            f"coalesce(order_id, message_id) ORDER BY timestamp, message_id) AS rn FROM {events} "
            f"WHERE event = 'Order Completed') WHERE rn = 1"
        ).fetchone()
        views = con.execute(f"SELECT count(*) FROM {events} WHERE event = 'Product Viewed'").fetchone()[0]
        refunds = con.execute(f"SELECT count(*) FROM {events} WHERE event = 'Order Refunded'").fetchone()[0]
    daily = got["revenue_daily"]
    assert orders > 0 and int(daily["orders"].sum()) == orders
    assert daily["revenue_inr"].sum() == pytest.approx(revenue)
    assert int(daily["refunds"].sum()) == refunds
    assert int(got["product_funnel"]["views"].sum()) == views
    page = (out / "r.html").as_posix()
    report.run(["--input", str(out), "--output", page])
    for tenant, part in daily.groupby("tenant_id"):  # one page per tenant beside the index, whole rupees
        with open(out / page_file_name("r", tenant), encoding="utf-8") as handle:
            html = handle.read()
        assert f"Revenue <b>{fmt_inr(part['revenue_inr'].sum())}</b>" in html, tenant


@pytest.mark.integration
def test_reads_a_lake_on_s3(aws, tmp_path):
    """The same job over an s3:// lake (moto server) through Beam's S3 filesystem, set from the --aws-* flags."""
    local = tmp_path / "lake"
    write_lake(str(local), generate_rows(persons=12, seed=3, days=5))
    s3 = aws.client("s3")
    s3.create_bucket(Bucket="lake", CreateBucketConfiguration={"LocationConstraint": aws.region})
    for directory, _dirs, files in os.walk(local):
        for name in files:
            path = os.path.join(directory, name)
            s3.upload_file(path, "lake", "prod/" + os.path.relpath(path, local))
    got = run(
        "s3://lake/prod", tmp_path / "out", f"--aws-endpoint-url={aws.endpoint_url}", f"--aws-region={aws.region}"
    )
    want = run(local, tmp_path / "out_local")
    for name in TABLES:
        pd.testing.assert_frame_equal(got[name], want[name])
    assert got["revenue_daily"]["orders"].sum() > 0


@pytest.mark.slow
@pytest.mark.portable
def test_product_analytics_and_segments_on_portable_runner(lake, tmp_path, worker_pool):  # noqa: F811
    """No shared memory: the same results with SDK workers in other processes (as on Flink)."""
    from pipelines import segments
    from tests.pipelines.test_segments import CONFIG

    portable = ["--runner=PortableRunner", "--job_endpoint=embed", "--environment_type=EXTERNAL"]
    portable.append(f"--environment_config={worker_pool}")
    got = run(lake, tmp_path / "portable", *portable)
    want = run(lake, tmp_path / "local")
    for name in TABLES:
        pd.testing.assert_frame_equal(got[name], want[name])
    config = tmp_path / "segments.yaml"
    config.write_text(CONFIG)
    for out, extra in ((tmp_path / "seg_portable", portable), (tmp_path / "seg_local", [])):
        segments.run(
            ["--lake", str(lake), "--config", str(config), "--as-of", "2026-09-20", "--output", str(out), *extra]
        )
    read = lambda p: pq.read_table(p).to_pandas().sort_values(["segment", "person_id"]).reset_index(drop=True)  # noqa: E731
    for tenant in ("acme-in", "bloom-in"):
        part = f"segments/as_of=2026-09-20/tenant_id={tenant}/part-00000.parquet"
        pd.testing.assert_frame_equal(read(tmp_path / "seg_portable" / part), read(tmp_path / "seg_local" / part))


def _progress_lines(err: str) -> list[dict]:
    lines = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    return [line["progress"] for line in lines if line.get("logger") == "livora.read_progress"]


def test_workers_log_lake_read_progress_in_bytes_up_to_100_percent(lake, tmp_path, monkeypatch, capsys):
    """With the interval forced tiny: JSON progress lines in bytes of the lake files' sizes (summed here from
    the filesystem), never going back, the last at 100 %; with the default interval a small run logs none."""
    files = [os.path.join(d, f) for d, _, names in os.walk(lake / "events") for f in names if f.endswith(".parquet")]
    total = sum(os.path.getsize(f) for f in files)
    argv = ["--lake", str(lake), "--buckets", "3", "--log-format", "json"]

    monkeypatch.setenv("LIVORA_PROGRESS_SECONDS", "0.000001")
    product_analytics.main([*argv, "--output", str(tmp_path / "out")])
    progress = _progress_lines(capsys.readouterr().err)
    assert len(progress) >= 3
    done = [p["bytes_done"] for p in progress]
    assert done == sorted(done) and all(p["bytes_total"] == total for p in progress)
    assert done[-1] == total and progress[-1]["percent"] == 100.0 and progress[-1]["records"] > 0
    assert all("eta_s" in p and p["bytes_per_s"] > 0 for p in progress[:-1])

    monkeypatch.delenv("LIVORA_PROGRESS_SECONDS")
    product_analytics.main([*argv, "--output", str(tmp_path / "quiet")])
    assert _progress_lines(capsys.readouterr().err) == []
