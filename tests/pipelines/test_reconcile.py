"""pipelines.reconcile on a lake, its warehouse, product analytics and DynamoDB profiles: clean, then each
kind of mismatch injected on its own and caught with its numbers."""

from __future__ import annotations

import glob
import json
import os
import shutil

import duckdb
import pyarrow.parquet as pq
import pytest

from connectors.lake import read_events
from connectors.synthetic import generate_events
from pipelines import ingest_batch, load_sinks, product_analytics, reconcile
from pipelines.errors import EXIT_RECONCILE


@pytest.fixture
def platform(tmp_path, aws):
    source = tmp_path / "events.ndjson"
    source.write_bytes(b"\n".join(generate_events(400, seed=9, days=3)) + b"\n")
    lake = str(tmp_path / "lake")
    ingest_batch.main(["--input", str(source), "--lake", lake, "--quality-gate", "off"])  # main: a run record
    warehouse = f"duckdb://{tmp_path}/wh.duckdb"
    aws_flags = ["--aws-profile", "local", "--aws-endpoint-url", aws.endpoint_url]
    sinks = ["--warehouse", warehouse, "--profiles-table", "prof", "--identity-table", "ident", "--create-tables"]
    load_sinks.run(["--lake", lake, *sinks, *aws_flags])
    out = str(tmp_path / "product")
    product_analytics.run(["--lake", lake, "--output", out, "--quality-gate", "off"])
    argv = ["--lake", lake, "--warehouse", warehouse, "--product-output", out, "--profiles-table", "prof", *aws_flags]
    return {"lake": lake, "warehouse": warehouse, "out": out, "argv": argv, "aws": aws}


def _mismatches(argv, *checks):
    found = reconcile.run(argv)["mismatches"]
    assert {m["check"] for m in found} == set(checks), found
    return found


def test_clean_platform_reconciles(platform):
    summary = reconcile.run(platform["argv"])
    assert summary["checks"] == [
        "ingest_books",
        "ingest_vs_lake",
        "lake_vs_warehouse",
        "revenue_vs_lake_orders",
        "profile_orders_vs_lake_orders",
    ]
    assert summary["success"] and summary["mismatches"] == [] and summary["ingest_runs"] == 1


def test_each_mismatch_kind_is_caught_with_its_numbers(platform, capsys):
    lake, argv = platform["lake"], platform["argv"]
    events = read_events(lake, columns=["tenant_id", "event_date", "message_id"]).to_pylist()
    victim = events[0]
    day = victim["event_date"].isoformat()
    lake_rows = sum(
        1 for e in events if (e["tenant_id"], e["event_date"]) == (victim["tenant_id"], victim["event_date"])
    )

    # 1. a warehouse row lost
    with duckdb.connect(platform["warehouse"].removeprefix("duckdb://")) as con:
        con.execute("delete from events where message_id = ?", [victim["message_id"]])
    (m,) = _mismatches(argv, "lake_vs_warehouse")
    assert (m["key"], m["left"], m["right"]) == (f"{victim['tenant_id']}/{day}", lake_rows, lake_rows - 1)
    with pytest.raises(SystemExit) as exit_info:
        reconcile.main(argv)
    assert exit_info.value.code == EXIT_RECONCILE
    assert (
        f"lake_vs_warehouse {victim['tenant_id']}/{day}: lake rows {lake_rows} != warehouse rows {lake_rows - 1}"
        in (capsys.readouterr().out)
    )
    argv = [a for a in argv if a not in ("--warehouse", platform["warehouse"])]

    # 2. an ingest run whose books do not balance (its record says one more lake row than events in)
    (path,) = [p for p in glob.glob(f"{lake}/_runs/records/*/*.json") if "ingest_batch" in p]
    with open(path) as handle:
        record = json.load(handle)
    record["counts"]["lake_rows"] += 1
    with open(path, "w") as handle:
        json.dump(record, handle)
    # ... and its per-tenant-and-day split then no longer adds up to its lake rows
    books, split = sorted(_mismatches(argv, "ingest_books", "ingest_vs_lake"), key=lambda m: m["check"])
    assert books["key"] == f"run {record['run_id']}" and books["right"] == books["left"] + 1
    assert split["key"] == f"run {record['run_id']}" and split["left"] == split["right"] + 1
    record["counts"]["lake_rows"] -= 1
    with open(path, "w") as handle:
        json.dump(record, handle)

    # 3. product analytics revenue that is not the lake's orders
    revenue_path = f"{platform['out']}/revenue_daily.parquet"
    backup = revenue_path + ".bak"
    shutil.copy(revenue_path, backup)
    table = pq.read_table(revenue_path).to_pandas()
    row = table[table["revenue_inr"] > 0].index[0]
    expected = table.groupby(["tenant_id", table["date"].astype(str)])["revenue_inr"].sum()
    key = (table.loc[row, "tenant_id"], str(table.loc[row, "date"]))
    table.loc[row, "revenue_inr"] += 100.0
    table.to_parquet(revenue_path, index=False)
    (m,) = _mismatches(argv, "revenue_vs_lake_orders")
    assert m["key"] == "/".join(key)
    assert m["left"] == pytest.approx(expected[key] + 100.0) and m["right"] == pytest.approx(expected[key], abs=0.01)
    shutil.move(backup, revenue_path)

    # 4. a profile whose order count drifted
    client = platform["aws"].client("dynamodb")
    items = client.scan(TableName="prof")["Items"]
    item = next(i for i in items if int(i.get("order_count", {"N": "0"})["N"]) > 0)
    tenant = item["pk"]["S"].split("#", 1)[0]
    client.update_item(
        TableName="prof",
        Key={"pk": item["pk"], "sk": item["sk"]},
        UpdateExpression="SET order_count = order_count + :one",
        ExpressionAttributeValues={":one": {"N": "1"}},
    )
    (m,) = _mismatches(argv, "profile_orders_vs_lake_orders")
    assert m["key"] == tenant and m["left"] == m["right"] + 1
    assert m["right"] == len(reconcile.lake_orders(lake, tenant=tenant))


@pytest.fixture
def ingested(tmp_path):
    """A lake written by two ingest runs (two input files): books per tenant and day in the run records."""
    lake = str(tmp_path / "lake")
    for name, seed in (("a", 9), ("b", 10)):
        source = tmp_path / f"{name}.ndjson"
        source.write_bytes(b"\n".join(generate_events(300, seed=seed, days=3)) + b"\n")
        ingest_batch.main(["--input", str(source), "--lake", lake, "--quality-gate", "off"])
    return lake


def _partition_rows(lake: str) -> dict[str, int]:
    """Rows per tenant/day of the lake, counted here from the files (independent of the run records)."""
    out: dict[str, int] = {}
    for path in glob.glob(f"{lake}/events/*/*/*.parquet"):
        tenant, day = (part.split("=", 1)[1] for part in path.split("/")[-3:-1])
        out[f"{tenant}/{day}"] = out.get(f"{tenant}/{day}", 0) + pq.read_metadata(path).num_rows
    return out


def test_ingest_books_per_tenant_and_day_catch_each_lake_change(ingested, tmp_path):
    lake = ingested
    summary = reconcile.run(["--lake", lake])
    assert "ingest_vs_lake" in summary["checks"] and summary["success"], summary["mismatches"]
    recorded: dict[str, int] = {}
    for path in glob.glob(f"{lake}/_runs/records/*/*-ingest_batch-*.json"):
        with open(path) as handle:
            record = json.load(handle)
        for parts in record["counts"]["lake_rows_by_partition"].values():
            for key, rows in parts.items():
                recorded[key] = recorded.get(key, 0) + rows
    assert recorded == _partition_rows(lake)  # the records' split is the lake's, per tenant and day

    # a --reprocess of one input rewrites its files: its latest record counts, once
    source = tmp_path / "a.ndjson"
    ingest_batch.main(["--input", str(source), "--lake", lake, "--quality-gate", "off", "--reprocess"])
    assert reconcile.run(["--lake", lake])["success"]

    # 1. a lake file lost after ingest
    victim = sorted(glob.glob(f"{lake}/events/*/*/*.parquet"))[0]
    tenant, day = (part.split("=", 1)[1] for part in victim.split("/")[-3:-1])
    before = _partition_rows(lake)[f"{tenant}/{day}"]
    lost = pq.read_metadata(victim).num_rows
    shutil.move(victim, str(tmp_path / "lost.parquet"))
    (m,) = _mismatches(["--lake", lake], "ingest_vs_lake")
    assert (m["key"], m["left"], m["right"]) == (f"{tenant}/{day}", before, before - lost)
    assert m["left_name"] == "rows ingest recorded" and m["right_name"] == "lake rows in ingest files"

    # 2. the same file doubled under another name of the run's tag
    shutil.move(str(tmp_path / "lost.parquet"), victim)
    shutil.copy(victim, victim.replace(".parquet", "-copy.parquet"))
    (m,) = _mismatches(["--lake", lake], "ingest_vs_lake")
    assert (m["key"], m["left"], m["right"]) == (f"{tenant}/{day}", before, before + lost)
    os.remove(victim.replace(".parquet", "-copy.parquet"))

    # 3. a compacted partition is skipped, not reported
    os.rename(victim, os.path.join(os.path.dirname(victim), "part-c0123456789ab-00000.parquet"))
    summary = reconcile.run(["--lake", lake])
    assert summary["success"] and summary["skipped"] == [f"ingest_vs_lake {tenant}/{day}: compacted since ingest"]
