"""pipelines.funnels end to end on FnApiRunner over a small lake, reconciled independently."""

from __future__ import annotations

import datetime as dt
import json

import duckdb
import pyarrow.parquet as pq
import pytest

from connectors.lake import read_events
from pipelines.funnels import run
from tests.pipelines.analytics_lake import random_rows, write_lake
from tests.s3_lake import s3_lake_fs  # noqa: F401  (fixture)
from transforms.funnels import FunnelDefinition, aggregate_funnel, person_funnel

try:
    import chdb
except ImportError:  # pragma: no cover
    chdb = None

STEPS = ["Product Viewed", "Product Added", "Order Completed"]


@pytest.fixture(scope="module")
def lake(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("funnel_lake"))
    write_lake(root, random_rows(seed=3))
    return root


def _distinct_step1_persons(lake: str, start: str, end: str) -> dict[str, int]:
    rows = duckdb.execute(
        f"""SELECT tenant_id, count(DISTINCT person_id) FROM read_parquet('{lake}/events/**/*.parquet',
            hive_partitioning = true) WHERE event = ? AND event_date BETWEEN ? AND ? GROUP BY 1""",
        [STEPS[0], start, end],
    ).fetchall()
    return dict(rows)


@pytest.mark.slow
def test_adhoc_funnel_reconciles_with_the_lake(lake, tmp_path):
    out = str(tmp_path / "out")
    tables = run(
        [
            "--lake",
            lake,
            "--steps",
            ",".join(STEPS),
            "--window",
            "86400",
            "--start-date",
            "2026-10-02",
            "--end-date",
            "2026-10-05",
            "--buckets",
            "5",
            "--output",
            out,
        ]
    )
    steps = tables["funnel_steps"].to_pylist()
    # reconciliation: step-1 persons = distinct persons with the step-1 event in the range (DuckDB on the files)
    step1 = {r["tenant_id"]: r["persons"] for r in steps if r["step"] == 1}
    assert step1 == _distinct_step1_persons(lake, "2026-10-02", "2026-10-05")
    assert all(r["step_event"] == STEPS[r["step"] - 1] for r in steps)
    # bucketing in Beam gives what the pure function gives on the whole range at once
    events = read_events(lake, dt.date(2026, 10, 2), dt.date(2026, 10, 5))
    d = FunnelDefinition(name="adhoc", steps=STEPS, window_seconds=86400)
    assert aggregate_funnel(person_funnel(events, d), d).to_pylist() == steps
    # the CSV twin has the same rows
    assert (tmp_path / "out" / "funnel_steps.csv").read_text().count("\n") == len(steps) + 1
    assert pq.read_table(f"{out}/funnel_entry_days.parquet").num_rows > 0


@pytest.mark.slow
@pytest.mark.skipif(chdb is None, reason="chdb not installed")
@pytest.mark.parametrize("mode", ["strict", "strict_increase"])
def test_pipeline_levels_match_clickhouse(lake, tmp_path, mode):
    out = str(tmp_path / "out")
    steps = run(["--lake", lake, "--steps", ",".join(STEPS), "--window", "7200", "--mode", mode, "--output", out])[
        "funnel_steps"
    ].to_pylist()
    events = read_events(lake, columns=["tenant_id", "person_id", "event", "timestamp"])  # noqa: F841
    mode_arg = {"strict": "'strict_order'", "strict_increase": "'strict_increase'"}[mode]
    conds = ", ".join(f"event = '{s}'" for s in STEPS)
    sql = f"""
        SELECT tenant_id, level, count() FROM (
            SELECT tenant_id, person_id,
                   windowFunnel(7200, {mode_arg})(toUInt64(toUnixTimestamp(timestamp)), {conds}) AS level
            FROM Python(events) GROUP BY tenant_id, person_id)
        GROUP BY tenant_id, level ORDER BY tenant_id, level"""
    by_level: dict[tuple[str, int], int] = {}
    for line in str(chdb.query(sql, "CSV")).split():
        tenant, level, count = line.replace('"', "").split(",")
        by_level[(tenant, int(level))] = int(count)
    for r in steps:
        expected = sum(c for (t, lv), c in by_level.items() if t == r["tenant_id"] and lv >= r["step"])
        assert r["persons"] == expected, r


@pytest.mark.slow
def test_config_with_breakdown_and_rerun_replaces_outputs(lake, tmp_path):
    config = tmp_path / "funnels.yaml"
    config.write_text(
        """
funnels:
  - name: buy
    steps: [Product Viewed, Order Completed]
    window_seconds: 172800
    breakdown: channel
    attribution: first_touch
  - name: cart
    steps: [Product Added, Checkout Started]
    window_seconds: 3600
    mode: unordered
"""
    )
    out = tmp_path / "out"
    args = ["--lake", lake, "--config", str(config), "--tenant", "acme-in", "--output", str(out)]
    first = run(args)["funnel_steps"]
    second = run(args)["funnel_steps"]
    assert first.equals(second)
    assert sorted(p.name for p in out.iterdir()) == [
        "funnel_entry_days.csv",
        "funnel_entry_days.parquet",
        "funnel_steps.csv",
        "funnel_steps.parquet",
    ]
    rows = first.to_pylist()
    assert {r["tenant_id"] for r in rows} == {"acme-in"}
    buy_step1 = sum(r["persons"] for r in rows if r["funnel"] == "buy" and r["step"] == 1)
    assert buy_step1 == _distinct_step1_persons(lake, "2026-01-01", "2027-01-01")["acme-in"]
    assert {r["breakdown_value"] for r in rows if r["funnel"] == "cart"} == {None}


def test_flags_are_checked_before_the_graph_is_built(tmp_path):
    with pytest.raises(ValueError, match="exactly one of --steps"):
        run(["--lake", str(tmp_path), "--output", str(tmp_path / "o")])


@pytest.mark.slow
def test_warehouse_load_replaces_rows_on_rerun(lake, tmp_path):
    warehouse = tmp_path / "wh.duckdb"
    args = [
        "--lake", lake, "--steps", ",".join(STEPS), "--window", "3600", "--name", "wh",
        "--output", str(tmp_path / "out"), "--warehouse", f"duckdb:///{warehouse}",
    ]  # fmt: skip
    steps = run(args)["funnel_steps"]
    run(args)  # a rerun replaces the (tenant, funnel) rows instead of adding to them
    with duckdb.connect(str(warehouse), read_only=True) as con:
        loaded = con.execute("SELECT tenant_id, step, persons FROM funnel_steps ORDER BY 1, 2").fetchall()
        days = con.execute("SELECT count(*), sum(persons) FROM funnel_entry_days WHERE step = 1").fetchone()
    assert loaded == [(r["tenant_id"], r["step"], r["persons"]) for r in steps.to_pylist()]
    assert days[1] == sum(r["persons"] for r in steps.to_pylist() if r["step"] == 1)


@pytest.mark.slow
def test_lookahead_lets_late_entries_convert_without_new_entries(lake, tmp_path):
    base = ["--lake", lake, "--steps", ",".join(STEPS), "--window", "172800", "--start-date", "2026-10-02",
            "--end-date", "2026-10-03", "--buckets", "2"]  # fmt: skip
    plain = run([*base, "--output", str(tmp_path / "plain")])["funnel_steps"].to_pylist()
    ahead = run([*base, "--lookahead", "--output", str(tmp_path / "ahead")])["funnel_steps"].to_pylist()
    # entries are the same people (step 1 still reconciles with the range) ...
    expected = _distinct_step1_persons(lake, "2026-10-02", "2026-10-03")
    assert {r["tenant_id"]: r["persons"] for r in ahead if r["step"] == 1} == expected
    assert {r["tenant_id"]: r["persons"] for r in plain if r["step"] == 1} == expected
    # ... and reading two more days only adds conversions, never removes them
    for p, a in zip(plain, ahead, strict=True):
        assert a["persons"] >= p["persons"]
    assert sum(a["persons"] for a in ahead if a["step"] == 3) > sum(p["persons"] for p in plain if p["step"] == 3)


@pytest.mark.integration
def test_s3_lake_and_output_on_the_moto_server(aws, s3_lake_fs, monkeypatch, caplog):  # noqa: F811
    """Both pipelines read an s3:// lake and write s3:// outputs (Beam's S3 filesystem, moto over HTTP); the
    read's progress counts against the rows in the S3 files' footers (read by ranged GETs)."""
    import pyarrow.fs as pafs

    from connectors.lake import rows_to_table
    from pipelines.retention import run as run_retention

    fs = s3_lake_fs
    rows = random_rows(seed=5, persons=15, days=3, tenants=("acme-in",))
    by_day: dict[str, list[dict]] = {}
    for r in rows:
        by_day.setdefault(r["timestamp"].date().isoformat(), []).append(r)
    for day, part in by_day.items():
        with fs.open_output_stream(f"lake/prod/events/tenant_id=acme-in/event_date={day}/part-0.parquet") as out:
            pq.write_table(rows_to_table(part), out)
    common = ["--aws-endpoint-url", aws.endpoint_url, "--aws-region", aws.region, "--buckets", "2"]
    monkeypatch.setenv("LIVORA_PROGRESS_SECONDS", "0.000001")
    caplog.set_level("INFO", logger="livora.read_progress")
    steps = run(["--lake", "s3://lake/prod", "--steps", ",".join(STEPS), "--output", "s3://lake/out/funnels", *common])[
        "funnel_steps"
    ].to_pylist()
    expected = len({r["person_id"] for r in rows if r["event"] == STEPS[0]})
    assert [r["persons"] for r in steps if r["step"] == 1] == [expected]
    progress = [r.progress for r in caplog.records if r.name == "livora.read_progress"]
    assert progress and progress[-1]["rows_total"] == progress[-1]["rows_done"] == len(rows)
    retention = run_retention(
        ["--lake", "s3://lake/prod", "--start-event", STEPS[0], "--return-event", STEPS[2], "--periods", "3",
         "--output", "s3://lake/out/retention", *common]
    )  # fmt: skip
    assert retention.num_rows > 0
    names = sorted(i.path for i in fs.get_file_info(pafs.FileSelector("lake/out", recursive=True)) if i.is_file)
    assert names == [
        "lake/out/funnels/funnel_entry_days.csv",
        "lake/out/funnels/funnel_entry_days.parquet",
        "lake/out/funnels/funnel_steps.csv",
        "lake/out/funnels/funnel_steps.parquet",
        "lake/out/retention/retention.csv",
        "lake/out/retention/retention.parquet",
    ]


def _null_person_lake(root: str) -> tuple[str, int]:
    """The module's lake with the person id of every 4th row of one partition nulled (a writer bug that
    ``--quality-gate warn|off`` lets through); returns the lake and how many step rows lost their person."""
    import pyarrow as pa

    rows = random_rows(seed=3)
    nulled = 0
    for i, row in enumerate(rows):
        if row["tenant_id"] == "acme-in" and row["timestamp"].date() == dt.date(2026, 10, 2) and i % 4 == 0:
            row["person_id"] = None
            nulled += row["event"] in STEPS
    write_lake(root, [r for r in rows if r["person_id"] is not None])
    part = f"{root}/events/tenant_id=acme-in/event_date=2026-10-02/part-00000.parquet"
    table = pq.read_table(part)
    schema = pa.schema([f.with_nullable(True) for f in table.schema], metadata=table.schema.metadata)
    bad = [r for r in rows if r["person_id"] is None]
    for r in bad:
        r.pop("tenant_id")
    extra = pa.Table.from_pylist(bad, schema=pa.schema([schema.field(n) for n in table.column_names]))
    pq.write_table(pa.concat_tables([table.cast(schema), extra.cast(schema)]), part)
    return root, nulled


@pytest.mark.slow
@pytest.mark.parametrize("gate", ["off", "warn"])
def test_rows_without_a_person_are_left_out_and_counted_not_a_crash(tmp_path, gate, caplog):
    lake, nulled = _null_person_lake(str(tmp_path / "lake"))
    assert nulled > 0
    caplog.set_level("WARNING")
    tables = run(
        ["--lake", lake, "--steps", ",".join(STEPS), "--window", "86400", "--buckets", "3",
         "--output", str(tmp_path / "out"), "--quality-gate", gate]
    )  # fmt: skip
    step1 = {r["tenant_id"]: r["persons"] for r in tables["funnel_steps"].to_pylist() if r["step"] == 1}
    # count(DISTINCT person_id) ignores nulls: the rows without a person count for nobody
    assert step1 == _distinct_step1_persons(lake, "2026-01-01", "2027-01-01")
    dropped = [r for r in caplog.records if "without a person_id" in r.getMessage()]
    assert dropped and sum(getattr(r, "rows_without_person", 0) for r in dropped) == nulled


def _progress_lines(err: str) -> list[dict]:
    lines = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    return [line["progress"] for line in lines if line.get("logger") == "livora.read_progress"]


def test_workers_log_lake_read_progress_in_rows_up_to_100_percent(lake, tmp_path, monkeypatch, capsys):
    """With the interval forced tiny: JSON progress lines in rows of the range's total (counted here by DuckDB),
    never going back, the last at 100 %; with the default interval a small run logs none."""
    from pipelines.funnels import main

    total = duckdb.execute(
        f"""SELECT count(*) FROM read_parquet('{lake}/events/**/*.parquet', hive_partitioning = true)
            WHERE event_date BETWEEN '2026-10-02' AND '2026-10-05'""",
    ).fetchall()[0][0]  # fetchone would leave the default connection mid-result
    argv = [
        "--lake",
        lake,
        "--steps",
        ",".join(STEPS),
        "--start-date",
        "2026-10-02",
        "--end-date",
        "2026-10-05",
        "--buckets",
        "3",
        "--log-format",
        "json",
    ]
    monkeypatch.setenv("LIVORA_PROGRESS_SECONDS", "0.000001")
    main([*argv, "--output", str(tmp_path / "out")])
    progress = _progress_lines(capsys.readouterr().err)
    assert len(progress) >= 3
    done = [p["rows_done"] for p in progress]
    assert done == sorted(done) and all(p["rows_total"] == total for p in progress)
    assert done[-1] == total and progress[-1]["percent"] == 100.0
    assert all("eta_s" in p and p["rows_per_s"] > 0 for p in progress[:-1])

    monkeypatch.delenv("LIVORA_PROGRESS_SECONDS")
    main([*argv, "--output", str(tmp_path / "quiet")])
    assert _progress_lines(capsys.readouterr().err) == []
