"""pipelines.features and pipelines.training_set on Beam's FnApiRunner over a small generated lake."""

from __future__ import annotations

import datetime as dt
import os

import duckdb
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from connectors.offline_store import read_features
from connectors.online_store import read_online_features
from pipelines import features as features_pipeline
from pipelines import training_set as training_pipeline
from schemas.features import FEATURE_NAMES, OFFLINE_FILE_SCHEMA
from tests.feature_lake import REFERENCE, generate_rows, rows_table, write_lake
from transforms.features import build_training_set, features_as_of

DAYS = [dt.date(2026, 10, 20), dt.date(2026, 10, 30)]


@pytest.fixture(scope="module")
def lake(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("pipeline_lake"))
    table = rows_table(generate_rows(persons=40, seed=5, days=200))
    write_lake(root, table)
    return root, table


def by_key(table: pa.Table) -> dict:
    rows = table.to_pylist()
    return {(r["tenant_id"], r["person_id"], r["as_of"]): {n: r[n] for n in FEATURE_NAMES} for r in rows}


def files_of(out: str) -> list[str]:
    found = []
    for root, _, names in os.walk(os.path.join(out, "features")):
        found += [os.path.relpath(os.path.join(root, n), out) for n in names if n.endswith(".parquet")]
    return sorted(found)


def test_offline_snapshots_equal_the_pure_computation_and_rerun_replaces(lake, tmp_path):
    root, table = lake
    out = str(tmp_path / "out")
    args = ["--lake", root, "--output-lake", out, *[f"--as-of={d}" for d in DAYS]]
    summary = features_pipeline.run([*args, "--buckets", "4"])
    expected = features_as_of(table, DAYS)
    got = read_features(out)
    assert got.num_rows == expected.num_rows > 0
    assert by_key(got) == by_key(expected)
    assert sum(s["persons"] for s in summary["snapshots"]) == expected.num_rows
    # files follow the documented layout and schema
    first = files_of(out)
    assert all(f.startswith("features/as_of_date=2026-10-") and "/tenant_id=" in f for f in first)
    assert pq.read_schema(os.path.join(out, first[0])).names == OFFLINE_FILE_SCHEMA.names
    # a rerun with fewer buckets replaces the partitions: no stale files, no duplicated rows
    features_pipeline.run([*args, "--buckets", "1"])
    second = files_of(out)
    assert len(second) == 2 * 2 and all(f.endswith("part-0000.parquet") for f in second)
    assert by_key(read_features(out)) == by_key(expected) and read_features(out).num_rows == expected.num_rows


def test_tenant_filter_leaves_other_tenants_alone(lake, tmp_path):
    root, table = lake
    out = str(tmp_path / "out")
    features_pipeline.run(["--lake", root, "--output-lake", out, "--as-of", "2026-10-30", "--buckets", "2"])
    before = read_features(out, tenant="acme-in")
    features_pipeline.run(
        ["--lake", root, "--output-lake", out, "--as-of", "2026-10-30", "--buckets", "1", "--tenant", "bloom-in"]
    )
    after = read_features(out)
    assert by_key(read_features(out, tenant="acme-in")) == by_key(before)
    expected = features_as_of(table, [dt.date(2026, 10, 30)], tenant="bloom-in")
    assert by_key(read_features(out, tenant="bloom-in")) == by_key(expected)
    assert after.num_rows == before.num_rows + expected.num_rows


def test_warehouse_load(lake, tmp_path):
    root, table = lake
    out, db = str(tmp_path / "out"), str(tmp_path / "wh.duckdb")
    args = ["--lake", root, "--output-lake", out, "--as-of", "2026-10-30", "--buckets", "2", "--warehouse"]
    features_pipeline.run([*args, f"duckdb://{db}"])
    features_pipeline.run([*args, f"duckdb://{db}"])  # idempotent: merged on (tenant, person, as_of)
    expected = features_as_of(table, [dt.date(2026, 10, 30)])
    con = duckdb.connect(db, read_only=True)
    assert con.execute("SELECT count(*) FROM features").fetchone()[0] == expected.num_rows
    total = con.execute("SELECT sum(orders_lifetime), sum(revenue_inr_365d) FROM features").fetchone()
    assert total[0] == sum(expected.column("orders_lifetime").to_pylist())
    assert total[1] == pytest.approx(sum(expected.column("revenue_inr_365d").to_pylist()))


@pytest.mark.integration
def test_online_store_gets_the_newest_snapshot(lake, tmp_path, aws):
    root, table = lake
    out = str(tmp_path / "out")
    common = ["--lake", root, "--output-lake", out, "--online-table", "features-online"]
    common += ["--aws-profile", "local", "--aws-endpoint-url", aws.endpoint_url, "--buckets", "2"]
    features_pipeline.run([*common, *[f"--as-of={d}" for d in DAYS]])
    # re-materialising an older window afterwards must not replace the newer values
    features_pipeline.run([*common, "--as-of", "2026-10-01"])
    newest = features_as_of(table, [DAYS[-1]]).to_pylist()
    persons = [r["person_id"] for r in newest if r["tenant_id"] == "acme-in"]
    got = read_online_features(aws.client("dynamodb"), "features-online", "acme-in", persons, ttl=None)
    for row in newest:
        if row["tenant_id"] == "acme-in":
            assert {n: got[row["person_id"]][n] for n in FEATURE_NAMES} == {n: row[n] for n in FEATURE_NAMES}
            assert got[row["person_id"]]["orders_feature_ts"] == row["as_of"]


def test_training_set_pipeline_keeps_spine_order_and_matches_the_pure_join(lake, tmp_path):
    root, table = lake
    persons = sorted({(r["tenant_id"], r["person_id"]) for r in table.select(["tenant_id", "person_id"]).to_pylist()})
    rows = []
    for i, (tenant, person) in enumerate(persons * 2):
        label = REFERENCE - dt.timedelta(days=(i * 7) % 150, hours=i)
        rows.append({"tenant_id": tenant, "person_id": person, "label_timestamp": label, "label": i % 2, "note": i})
    rows.append({"tenant_id": "acme-in", "person_id": "ghost", "label_timestamp": REFERENCE, "label": 0, "note": -1})
    spine = pa.Table.from_pylist(rows)
    spine_path, out = str(tmp_path / "spine.parquet"), str(tmp_path / "train.parquet")
    pq.write_table(spine, spine_path)
    training_pipeline.run(
        ["--lake", root, "--spine", spine_path, "--output", out, "--ttl-days", "30", "--buckets", "3"]
    )
    got = pq.read_table(out)
    expected = build_training_set(spine, table, ttl=dt.timedelta(days=30))
    assert got.column("note").to_pylist() == [r["note"] for r in rows]
    for name in ["label", *FEATURE_NAMES]:
        assert got.column(name).to_pylist() == expected.column(name).to_pylist(), name
    assert got.column("orders_lifetime").null_count > 0  # the TTL did something
    assert any(v for v in got.column("sessions_90d").to_pylist())


def test_training_set_from_csv_without_ttl(lake, tmp_path):
    root, table = lake
    csv = tmp_path / "spine.csv"
    csv.write_text(
        "tenant_id,person_id,label_timestamp,label\n"
        "acme-in,p0001,2026-10-01T10:00:00Z,1\n"
        "bloom-in,p0003,2026-09-01 00:00:00,0\n"
        "acme-in,p0002,2026-10-20T10:00:00+05:30,1\n"
    )
    out = str(tmp_path / "train.csv")
    training_pipeline.run(["--lake", root, "--spine", str(csv), "--output", out, "--no-ttl", "--buckets", "2"])
    got = pacsv.read_csv(out)
    labels = [
        dt.datetime(2026, 10, 1, 10, tzinfo=dt.UTC),
        dt.datetime(2026, 9, 1, tzinfo=dt.UTC),
        dt.datetime(2026, 10, 20, 4, 30, tzinfo=dt.UTC),
    ]
    spine = pa.table(
        {
            "tenant_id": ["acme-in", "bloom-in", "acme-in"],
            "person_id": ["p0001", "p0003", "p0002"],
            "label_timestamp": pa.array(labels, pa.timestamp("us", tz="UTC")),
        }
    )
    expected = build_training_set(spine, table, ttl=None)
    assert got.column("person_id").to_pylist() == ["p0001", "p0003", "p0002"]
    assert got.column("orders_lifetime").to_pylist() == expected.column("orders_lifetime").to_pylist()
    assert got.column("sessions_30d").to_pylist() == expected.column("sessions_30d").to_pylist()


@pytest.mark.parametrize("module", [features_pipeline, training_pipeline])
def test_help_lists_every_flag(module, capsys):
    with pytest.raises(SystemExit) as exit_:
        module.main(["--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    flags = ["--lake", "--tenant", "--buckets"]
    flags += ["--as-of", "--online-table", "--warehouse", "--output-lake"] if module is features_pipeline else []
    flags += ["--spine", "--ttl-days", "--no-ttl", "--output"] if module is training_pipeline else []
    assert all(flag in text for flag in flags)


def test_bad_flags_fail_before_the_graph_is_built(lake):
    root, _ = lake
    with pytest.raises(ValueError, match="--buckets"):
        features_pipeline.run(["--lake", root, "--as-of", "2026-10-30", "--buckets", "0"])
    with pytest.raises(ValueError, match="--end-date"):
        features_pipeline.run(["--lake", root, "--as-of", "2026-10-30", "--end-date", "2026-10-30"])
    with pytest.raises(ValueError, match="ttl"):
        training_pipeline.run(["--lake", root, "--spine", "x.csv", "--output", "y", "--ttl-days", "0"])


@pytest.mark.slow
def test_end_to_end_synthetic_traffic_through_ingest_matches_duckdb(tmp_path):
    """The project's traffic generator -> pipelines.ingest_batch -> pipelines.features, checked by DuckDB SQL."""
    ingest = pytest.importorskip("pipelines.ingest_batch")
    from connectors.synthetic import generate_events
    from tests.transforms.test_features import assert_same, reference_features
    from transforms.features import as_of_time

    source = tmp_path / "events.ndjson"
    source.write_bytes(b"".join(r + b"\n" for r in generate_events(3000, seed=9, start=dt.date(2026, 9, 1), days=45)))
    lake = str(tmp_path / "lake")
    ingest.run(["--input", str(source), "--lake", lake])
    day = dt.date(2026, 10, 10)
    features_pipeline.run(["--lake", lake, "--as-of", day.isoformat(), "--buckets", "2"])
    mine = read_features(lake).to_pylist()
    assert len(mine) > 50
    ref = reference_features(
        f"{lake}/events/**/*.parquet", [(r["tenant_id"], r["person_id"], as_of_time(day)) for r in mine]
    )
    for m, r in zip(mine, ref, strict=True):
        assert_same(m, r, f"{m['person_id']}")
    assert any(m["orders_lifetime"] for m in mine) and any(m["payment_failure_rate_365d"] for m in mine)
    assert any(m["cod_share_365d"] for m in mine) and any(m["top_category_90d"] for m in mine)
    assert any(m["preferred_device_90d"] for m in mine)
