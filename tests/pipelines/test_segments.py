"""pipelines.segments on Beam's FnApiRunner: lake files and the DynamoDB profile store (real moto server)."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys

import pandas as pd
import pyarrow.dataset as ds
import pytest

from connectors.dynamodb import create_tables
from connectors.lake import read_events
from connectors.segment_store import read_membership
from pipelines import segments as seg_pipeline
from tests.analytics_lake import START, generate_rows, row, write_lake
from transforms.segments import load_config, membership, person_features, rfm_cutpoints, rfm_table

CONFIG = """
timezone: Asia/Kolkata
rfm: {method: quintiles, lookback_days: 365}
segments:
  - name: skincare_browsers
    rule:
      and:
        - event: {name: Product Viewed, min_count: 2, within_days: 30, where: [{property: category, op: eq, value: Skincare}]}
        - not: {event: {name: Order Completed, within_days: 30}}
  - name: champions
    rule: {rfm: {recency: {min: 4}, frequency: {min: 3}, monetary: {min: 4}}}
  - name: email_buyers
    rule: {event: {name: Order Completed, where: [{column: channel, op: eq, value: email}]}}
"""
AS_OF = dt.date(2026, 10, 20)


@pytest.fixture(scope="module")
def lake(tmp_path_factory):
    path = tmp_path_factory.mktemp("lake")
    write_lake(str(path), generate_rows(persons=120, seed=4, days=90))
    return path


@pytest.fixture(scope="module")
def config_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("cfg") / "segments.yaml"
    path.write_text(CONFIG)
    return path


def read_dir(path) -> pd.DataFrame:
    df = ds.dataset(str(path), format="parquet", partitioning="hive").to_table().to_pandas()
    for col in ("tenant_id", "as_of"):
        df[col] = df[col].astype(str)
    return df


def run(lake, config_file, *extra):
    return seg_pipeline.run(["--lake", str(lake), "--config", str(config_file), "--buckets", "3", *extra])


def test_membership_files_equal_the_single_machine_computation(lake, config_file, tmp_path):
    run(lake, config_file, "--as-of", AS_OF.isoformat(), "--output", str(tmp_path))
    got = read_dir(tmp_path / "segments")
    want = membership(read_events(str(lake)), load_config(CONFIG), AS_OF)
    key = ["tenant_id", "segment", "person_id"]
    got_rows = sorted(zip(*(got[c] for c in [*key, "rule_version"]), got["as_of"], strict=True))
    want_rows = sorted(zip(*(want[c] for c in [*key, "rule_version"]), want["as_of"].astype(str), strict=True))
    assert got_rows == want_rows
    assert {s for _t, s, *_ in got_rows} == {"skincare_browsers", "champions", "email_buyers"}

    sizes = read_dir(tmp_path / "segment_sizes")
    counted = want.groupby(["tenant_id", "segment"]).size()
    for rec in sizes.to_dict("records"):
        assert rec["members"] == counted.get((rec["tenant_id"], rec["segment"]), 0)
    persons = read_events(str(lake), columns=["tenant_id", "person_id", "timestamp"]).to_pandas()
    end = pd.Timestamp("2026-10-20T18:30:00Z")  # end of the as-of day in Asia/Kolkata
    evaluated = persons.loc[persons["timestamp"] < end].groupby("tenant_id")["person_id"].nunique()
    assert dict(zip(sizes["tenant_id"], sizes["evaluated_persons"], strict=True)) == evaluated.to_dict()

    # RFM scores of every buyer, with tenant-wide quintiles
    rfm = read_dir(tmp_path / "rfm_scores").sort_values(["tenant_id", "person_id"]).reset_index(drop=True)
    config = load_config(CONFIG)
    features = person_features(read_events(str(lake)), config, AS_OF)
    expected = rfm_table(features, config.rfm, rfm_cutpoints(features))
    assert list(zip(rfm["tenant_id"], rfm["person_id"], rfm["rfm_cell"], strict=True)) == list(
        zip(expected["tenant_id"], expected["person_id"], expected["rfm_cell"], strict=True)
    )
    assert len(set(rfm["rfm_cell"])) > 5

    # a rerun of the same as-of replaces its files (no second copy)
    run(lake, config_file, "--as-of", AS_OF.isoformat(), "--output", str(tmp_path))
    assert len(read_dir(tmp_path / "segments")) == len(got)
    files = [f for _d, _s, fs in os.walk(tmp_path / "segments") for f in fs]
    assert sorted(files) == ["part-00000.parquet", "part-00000.parquet"]  # one per tenant


def test_default_root_is_the_lake_and_tenant_filter(lake, config_file):
    run(lake, config_file, "--as-of", "2026-09-30", "--tenant", "acme-in")
    parts = sorted(os.listdir(lake / "segments" / "as_of=2026-09-30"))
    assert parts == ["tenant_id=acme-in"]


@pytest.mark.integration
def test_profile_store_gets_conditional_updates(tmp_path, aws, config_file):
    lake = tmp_path / "lake"
    t = START + dt.timedelta(days=2)
    rows = [
        row("acme-in", "alice", "m1", t, "Order Completed", {}, channel="email", order_id="o1"),
        row("acme-in", "bob", "m2", t, "Product Viewed", {"category": "Skincare"}),
        row("acme-in", "bob", "m3", t + dt.timedelta(days=3), "Product Viewed", {"category": "Skincare"}),
    ]
    write_lake(str(lake), rows)
    client = aws.client("dynamodb")
    create_tables(aws, "profiles", "identity")  # the profile store's real layout (pk, sk)
    # the profile item beside the segments item must be left alone
    profile = {"pk": {"S": "acme-in#alice"}, "sk": {"S": "PROFILE"}, "order_count": {"N": "7"}}
    client.put_item(TableName="profiles", Item=profile)
    flags = ["--dynamodb-table", "profiles", "--aws-profile", "local", "--aws-endpoint-url", aws.endpoint_url]

    def stored(person):
        return read_membership(client, "profiles", "acme-in", person)

    # as of day 3 only bob's first view exists: bob is in no segment yet, alice is an email buyer
    run(lake, config_file, "--as-of", "2026-08-03", "--output", str(tmp_path / "o"), *flags)
    assert stored("alice") == (["email_buyers"], dt.date(2026, 8, 3))
    assert stored("bob") == ([], dt.date(2026, 8, 3))
    items = client.query(
        TableName="profiles",
        KeyConditionExpression="pk = :pk",
        ExpressionAttributeValues={":pk": {"S": "acme-in#alice"}},
    )["Items"]
    assert sorted(i["sk"]["S"] for i in items) == ["PROFILE", "SEGMENTS"]  # one query gives both
    assert next(i for i in items if i["sk"]["S"] == "PROFILE") == profile

    # a newer as-of: bob viewed skincare twice within 30 days
    run(lake, config_file, "--as-of", "2026-08-10", "--output", str(tmp_path / "o"), *flags)
    assert stored("bob") == (["skincare_browsers"], dt.date(2026, 8, 10))

    # a backfill of an older as-of never overwrites the newer membership
    run(lake, config_file, "--as-of", "2026-08-04", "--output", str(tmp_path / "o"), *flags)
    assert stored("bob") == (["skincare_browsers"], dt.date(2026, 8, 10))
    assert stored("alice") == (["email_buyers"], dt.date(2026, 8, 10))


def test_help_and_bad_flags(lake, config_file, tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "pipelines.segments", "--help"], capture_output=True, text=True, check=True
    ).stdout
    for flag in ("--lake", "--config", "--as-of", "--tenant", "--output", "--dynamodb-table", "--aws-profile"):
        assert flag in out
    with pytest.raises(ValueError, match="as-of"):
        run(lake, config_file, "--as-of", "2026-10-01", "--end-date", "2026-10-01")
    bad = tmp_path / "bad.yaml"
    bad.write_text("segments: [{name: a, rule: {event: {name: X, min_count: -1}}}]")
    with pytest.raises(ValueError):
        seg_pipeline.run(["--lake", str(lake), "--config", str(bad), "--as-of", "2026-10-01"])


def test_warehouse_load_replaces_the_as_of(lake, config_file, tmp_path):
    import duckdb

    url = f"duckdb:///{tmp_path}/wh.duckdb"
    for _ in range(2):
        run(lake, config_file, "--as-of", AS_OF.isoformat(), "--output", str(tmp_path / "o"), "--warehouse", url)
    files = read_dir(tmp_path / "o" / "segments")
    with duckdb.connect(str(tmp_path / "wh.duckdb"), read_only=True) as con:
        rows = con.execute(
            "SELECT tenant_id, person_id, segment, CAST(as_of AS VARCHAR) FROM segment_membership"
        ).fetchall()
        sizes = con.execute("SELECT count(*) FROM segment_sizes").fetchone()[0]
    assert sorted(rows) == sorted(
        zip(files["tenant_id"], files["person_id"], files["segment"], files["as_of"], strict=True)
    )
    assert sizes == 2 * 3  # two tenants, three segments


def test_persons_older_than_every_window_are_still_evaluated(lake, tmp_path):
    """Rules that look back 7 days read 7 days of events, but everyone seen before is evaluated too."""
    cfg = tmp_path / "short.yaml"
    cfg.write_text(
        "segments:\n"
        "  - {name: recent_viewers, rule: {event: {name: Product Viewed, within_days: 7}}}\n"
        "  - {name: lapsed, rule: {not: {event: {name: Product Viewed, within_days: 7}}}}\n"
    )
    as_of = dt.date(2026, 10, 20)
    run(lake, cfg, "--as-of", as_of.isoformat(), "--output", str(tmp_path / "o"))
    got = read_dir(tmp_path / "o" / "segments")
    want = membership(read_events(str(lake)), load_config(cfg.read_text()), as_of)  # over the whole lake
    assert sorted(zip(got["tenant_id"], got["segment"], got["person_id"], strict=True)) == sorted(
        zip(want["tenant_id"], want["segment"], want["person_id"], strict=True)
    )
    persons = read_events(str(lake), columns=["tenant_id", "person_id", "timestamp"]).to_pandas()
    seen = persons.loc[persons["timestamp"] < pd.Timestamp("2026-10-21T00:00:00Z")]
    sizes = read_dir(tmp_path / "o" / "segment_sizes")
    evaluated = dict(zip(sizes["tenant_id"], sizes["evaluated_persons"], strict=True))
    assert evaluated == seen.groupby("tenant_id")["person_id"].nunique().to_dict()
    lapsed = sizes.loc[sizes["segment"] == "lapsed", "members"].sum()
    recent = sizes.loc[sizes["segment"] == "recent_viewers", "members"].sum()
    assert lapsed + recent == sum(evaluated.values()) and lapsed > recent > 0
