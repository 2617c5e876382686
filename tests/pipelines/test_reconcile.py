"""pipelines.reconcile on a lake, its warehouse, product analytics and DynamoDB profiles: clean, then each
kind of mismatch injected on its own and caught with its numbers."""

from __future__ import annotations

import glob
import json
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


def _mismatches(argv, check):
    found = reconcile.run(argv)["mismatches"]
    assert {m["check"] for m in found} == {check}, found
    return found


def test_clean_platform_reconciles(platform):
    summary = reconcile.run(platform["argv"])
    assert summary["checks"] == [
        "ingest_books",
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
    (m,) = _mismatches(argv, "ingest_books")
    assert m["key"] == f"run {record['run_id']}" and m["right"] == m["left"] + 1
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
