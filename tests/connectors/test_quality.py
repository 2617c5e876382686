"""The GX quality suite on a lake written by the real ingest pipeline, and on corrupted copies of it."""

from __future__ import annotations

import datetime as dt
import json
import os
import pathlib
from decimal import Decimal

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from connectors.lake import read_events
from connectors.quality import QualityChecker, parse_partition_dir, read_result, result_path, write_result
from schemas.expectations import CHANNELS, add_check_columns, contract_specs, events_frame, events_specs
from schemas.lake import EVENTS_SCHEMA
from tests.quality_lake import (
    clean_lake,
    copy_partition,
    part_files,
    partition_dir,
    partitions,
    rewrite_file,
)

# Non-nullable columns as docs/lake.md lists them (independent of the code that derives them).
DOCUMENTED_NOT_NULL = {
    "tenant_id",
    "event_date",
    "message_id",
    "type",
    "person_id",
    "timestamp",
    "received_at",
    "properties",
    "is_bot",
    "schema_version",
}


# --- the suite itself (no GX) -------------------------------------------------------------


def test_suite_derives_not_null_and_types_from_the_contract():
    specs = contract_specs()
    not_null = {s.kwargs["column"] for s in specs if s.expectation == "ExpectColumnValuesToNotBeNull"}
    assert not_null == DOCUMENTED_NOT_NULL
    typed = {s.kwargs["column"]: s.kwargs["type_"] for s in specs if s.expectation == "ExpectColumnValuesToBeOfType"}
    assert list(typed) == EVENTS_SCHEMA.names
    assert typed["message_id"] == "str" and typed["is_bot"] == "bool" and typed["geo_latitude"] == "float64"
    assert typed["timestamp"] == "Timestamp" and typed["event_date"] == "datetime64"
    columns = next(s for s in specs if s.name == "column_order_matches_contract").kwargs["column_list"]
    assert columns[: len(EVENTS_SCHEMA)] == EVENTS_SCHEMA.names
    column_set = next(s for s in specs if s.name == "column_set_matches_contract").kwargs["column_set"]
    assert set(column_set) == set(columns)


def test_a_new_contract_column_changes_the_suite():
    extended = EVENTS_SCHEMA.append(pa.field("loyalty_tier", pa.string(), nullable=False))
    names = {s.name for s in contract_specs(extended)}
    assert {"type:loyalty_tier", "not_null:loyalty_tier"} <= names


def test_suite_names_are_unique_and_rules_present():
    names = [s.name for s in events_specs()]
    assert len(names) == len(set(names))
    for rule in (
        "unique:tenant_id,message_id",
        "in_set:type",
        "event_date_is_utc_date_of_timestamp",
        "timestamp_not_after_received_at_plus_max_future",
        "non_negative:revenue_inr",
        "iso4217:currency",
        "iso3166_alpha2:geo_country",
        "in_set:channel",
        "present:schema_version",
        "not_null:session_id",
        "not_null:person_id",
    ):
        assert rule in names


def test_channel_set_covers_what_attribution_produces():
    from transforms.attribution import classify_channel

    mediums = [None, "email", "affiliate", "cpc", "paid_social", "display", "sms", "organic", "social", "weird"]
    sources = [None, "google", "instagram", "newsletter", "partnerx"]
    referrers = [None, "www.google.com", "instagram.com", "mail.google.com", "blog.example.org"]
    clicks = [frozenset(), frozenset({"gclid"}), frozenset({"fbclid"})]
    seen = {classify_channel(s, m, r, c) for s in sources for m in mediums for r in referrers for c in clicks} | {
        classify_channel(None, None, None, has_utm=True)
    }
    assert seen <= set(CHANNELS)
    assert len(seen) >= 10


def test_check_columns_use_the_utc_date_and_the_lead_over_receipt():
    ist = dt.timezone(dt.timedelta(hours=5, minutes=30))
    ts = dt.datetime(2026, 10, 2, 3, 0, tzinfo=ist)  # 2026-10-01 21:30 UTC
    table = pa.table(
        {
            "timestamp": pa.array([ts], pa.timestamp("us", tz="UTC")),
            "received_at": pa.array([ts - dt.timedelta(hours=2)], pa.timestamp("us", tz="UTC")),
        }
    )
    frame = add_check_columns(events_frame(table))
    assert frame["check_timestamp_utc_date"].iloc[0].date() == dt.date(2026, 10, 1)
    assert frame["check_timestamp_lead_seconds"].iloc[0] == 7200.0
    assert list(events_frame(table).columns) == ["timestamp", "received_at"]  # input frame untouched


def test_parse_partition_dir():
    assert parse_partition_dir("/x/lake/events/tenant_id=acme-in/event_date=2026-10-01") == (
        "acme-in",
        dt.date(2026, 10, 1),
    )
    with pytest.raises(ValueError):
        parse_partition_dir("/x/lake/events/tenant_id=acme-in")


# --- GX on the ingested lake --------------------------------------------------------------


@pytest.fixture(scope="module")
def lake(tmp_path_factory):
    return clean_lake(tmp_path_factory)


@pytest.fixture(scope="module")
def checker():
    return QualityChecker()


def _lake_rows(lake: str) -> int:
    return (
        duckdb.connect()
        .execute(f"select count(*) from read_parquet('{lake}/events/**/*.parquet', hive_partitioning=true)")
        .fetchone()[0]
    )


def test_ingested_lake_passes_every_expectation(lake, checker):
    result = checker.check_range(lake)
    assert [o.name for o in result.expectations if not o.success] == []
    assert result.success and result.failed == []
    assert result.rows == _lake_rows(lake)
    assert [o.name for o in result.expectations] == [s.name for s in events_specs()]
    assert all(o.error is None for o in result.expectations)


def test_partition_result_is_written_where_documented_and_rerun_replaces_it(lake, checker):
    tenant, date = partitions(lake)[0]
    first = checker.check_partition(lake, tenant, date)
    path = write_result(lake, first)
    assert path == os.path.join(lake, "_quality", "events", f"tenant_id={tenant}", f"event_date={date}", "result.json")
    body = pathlib.Path(path).read_bytes()
    document = json.loads(body)
    assert document["tenant_id"] == tenant and document["start_date"] == document["end_date"] == date.isoformat()
    expected_rows = sum(pq.read_metadata(f).num_rows for f in part_files(partition_dir(lake, tenant, date)))
    assert document["rows"] == expected_rows and document["success"] is True
    assert read_result(path) == first
    write_result(lake, checker.check_partition(lake, tenant, date))
    assert pathlib.Path(path).read_bytes() == body  # deterministic: same data, same bytes
    assert len(os.listdir(os.path.dirname(path))) == 1


def test_range_results_have_their_own_path(lake, checker):
    result = checker.check_range(lake, dt.date(2026, 10, 1), dt.date(2026, 10, 2), "acme-in")
    assert result_path(lake, result).endswith(
        "_quality/events/ranges/tenant_id=acme-in/2026-10-01_2026-10-02/result.json"
    )


# --- corrupted copies of ingested partitions: each breaks exactly one expectation ---------


def _busiest_partition(lake: str) -> tuple[str, dt.date]:
    return max(
        partitions(lake), key=lambda p: sum(pq.read_metadata(f).num_rows for f in part_files(partition_dir(lake, *p)))
    )


def _partition_with_money(lake: str) -> tuple[str, dt.date, str]:
    for tenant, date in partitions(lake):
        for path in part_files(partition_dir(lake, tenant, date)):
            if pq.read_table(path, columns=["revenue_inr"]).column(0).null_count < pq.read_metadata(path).num_rows:
                return tenant, date, path
    raise AssertionError("no money event in the lake")


def test_duplicate_message_id_fails_only_uniqueness(lake, checker, tmp_path):
    tenant, date = _busiest_partition(lake)
    target = str(tmp_path / "lake")
    copied = copy_partition(lake, target, tenant, date)
    path = max(part_files(copied), key=lambda f: pq.read_metadata(f).num_rows)
    duplicated = {}

    def edit(rows):
        assert len(rows) >= 2
        duplicated["id"] = rows[0]["message_id"]
        rows[1]["message_id"] = rows[0]["message_id"]

    rewrite_file(path, edit)
    result = checker.check_partition(target, tenant, date)
    assert result.failed == ["unique:tenant_id,message_id"]
    outcome = next(o for o in result.expectations if not o.success)
    assert outcome.unexpected_count == 2
    assert outcome.column == "tenant_id,message_id"
    key = {"tenant_id": tenant, "message_id": duplicated["id"]}
    assert outcome.unexpected_examples == [{"message_id": duplicated["id"], "value": key}] * 2


def test_null_person_id_fails_only_not_null_person_id(lake, checker, tmp_path):
    tenant, date = _busiest_partition(lake)
    target = str(tmp_path / "lake")
    path = part_files(copy_partition(lake, target, tenant, date))[0]
    nulled = {}

    def edit(rows):
        nulled["id"] = rows[-1]["message_id"]
        rows[-1]["person_id"] = None

    rewrite_file(path, edit)
    result = checker.check_partition(target, tenant, date)
    assert result.failed == ["not_null:person_id"]
    outcome = next(o for o in result.expectations if not o.success)
    assert outcome.unexpected_count == 1
    assert outcome.unexpected_examples[0]["message_id"] == nulled["id"]


def test_partition_under_the_wrong_date_fails_only_the_event_date_rule(lake, checker, tmp_path):
    tenant, date = _busiest_partition(lake)
    target = str(tmp_path / "lake")
    wrong = date + dt.timedelta(days=1)
    copy_partition(lake, target, tenant, date, as_date=wrong)
    result = checker.check_partition(target, tenant, wrong)
    assert result.failed == ["event_date_is_utc_date_of_timestamp"]
    outcome = next(o for o in result.expectations if not o.success)
    rows = sum(pq.read_metadata(f).num_rows for f in part_files(partition_dir(lake, tenant, date)))
    assert outcome.unexpected_count == rows == result.rows


def test_negative_revenue_fails_only_the_revenue_rule(lake, checker, tmp_path):
    tenant, date, source = _partition_with_money(lake)
    target = str(tmp_path / "lake")
    copied = copy_partition(lake, target, tenant, date)
    path = os.path.join(copied, os.path.basename(source))
    negated = {}

    def edit(rows):
        row = next(r for r in rows if r["revenue_inr"] is not None and r["revenue_inr"] > 0)
        negated["id"], row["revenue_inr"] = row["message_id"], -row["revenue_inr"]
        negated["value"] = row["revenue_inr"]

    rewrite_file(path, edit)
    result = checker.check_partition(target, tenant, date)
    assert result.failed == ["non_negative:revenue_inr"]
    outcome = next(o for o in result.expectations if not o.success)
    assert outcome.unexpected_count == 1
    assert outcome.unexpected_examples == [{"message_id": negated["id"], "value": str(negated["value"])}]


def test_unreadable_file_is_a_failed_result_not_a_crash(lake, checker, tmp_path):
    tenant, date = _busiest_partition(lake)
    target = str(tmp_path / "lake")
    path = part_files(copy_partition(lake, target, tenant, date))[0]
    table = pq.read_table(path)
    index = table.schema.get_field_index("revenue_inr")
    broken = table.set_column(index, "revenue_inr", pa.array(["lots"] * table.num_rows))
    pq.write_table(broken, path)
    result = checker.check_partition(target, tenant, date)
    assert result.failed == ["partition_readable"] and not result.success
    assert result.rows == 0 and len(result.expectations) == 1
    assert "'lots' is not a valid decimal128" in result.expectations[0].error


# --- rules the ingest cannot produce, on in-memory rows of an ingested partition ----------


def _rows(lake: str) -> list[dict]:
    tenant, date = _busiest_partition(lake)
    return read_events(lake, date, date, tenant).to_pylist()


def _money_row(rows: list[dict]) -> dict:
    return next(r for r in rows if r["currency"] is not None)


@pytest.mark.parametrize(
    "name, edit",
    [
        ("in_set:type", lambda rows: rows[0].update(type="trak")),
        ("iso4217:currency", lambda rows: _money_row(rows).update(currency="RUPEE")),
        ("iso3166_alpha2:geo_country", lambda rows: rows[0].update(geo_country="IND")),
        ("in_set:channel", lambda rows: rows[0].update(channel="tv")),
        ("present:schema_version", lambda rows: rows[0].update(schema_version="")),
        ("not_null:session_id", lambda rows: rows[0].update(session_id=None)),
        (
            "timestamp_not_after_received_at_plus_max_future",
            lambda rows: rows[0].update(received_at=rows[0]["timestamp"] - dt.timedelta(hours=24, seconds=1)),
        ),
    ],
)
def test_each_business_rule_catches_its_violation(lake, checker, name, edit):
    rows = _rows(lake)
    edit(rows)
    tenant = rows[0]["tenant_id"]
    result = checker.check_table(pa.Table.from_pylist(rows, schema=EVENTS_SCHEMA), tenant, None, None)
    assert result.failed == [name]
    assert next(o for o in result.expectations if not o.success).unexpected_count == 1


def test_a_lead_of_exactly_max_future_is_allowed(lake, checker):
    rows = _rows(lake)
    rows[0]["received_at"] = rows[0]["timestamp"] - dt.timedelta(hours=24)
    result = checker.check_table(pa.Table.from_pylist(rows, schema=EVENTS_SCHEMA), rows[0]["tenant_id"], None, None)
    assert result.success, result.failed


def test_refund_amounts_are_positive_in_the_ingested_lake(lake):
    refunds = (
        duckdb.connect()
        .execute(
            f"select min(revenue_inr), count(*) from read_parquet('{lake}/events/**/*.parquet', hive_partitioning=true) "
            "where event = 'Order Refunded'"
        )
        .fetchone()
    )
    assert refunds[1] == 0 or refunds[0] >= Decimal(0)


def test_gx_values_become_plain_json():
    import numpy as np
    import pandas as pd

    from connectors.quality import _jsonable

    values = [pd.NA, pd.NaT, float("nan"), np.int64(3), np.float64(2.5), Decimal("-1.5000")]
    values += [pd.Timestamp("2026-10-01T05:30:00+05:30"), dt.date(2026, 10, 1), {"k": np.bool_(True)}]
    converted = _jsonable(values)
    assert converted == [None, None, None, 3, 2.5, "-1.5000", "2026-10-01T05:30:00+05:30", "2026-10-01", {"k": True}]
    assert json.loads(json.dumps(converted)) == converted


def test_docs_name_every_rule_and_the_suite_size():
    from schemas.expectations import rule_specs

    text = (pathlib.Path(__file__).parents[2] / "docs" / "quality.md").read_text()
    for spec in rule_specs():
        assert f"`{spec.name}`" in text, spec.name
    assert f"{len(events_specs())} expectations" in text


def test_reordered_columns_fail_only_the_order_check(lake, checker):
    table = pa.Table.from_pylist(_rows(lake), schema=EVENTS_SCHEMA)
    names = table.column_names
    names[2], names[3] = names[3], names[2]  # message_id <-> type
    result = checker.check_table(table.select(names), "acme-in", None, None)
    assert result.failed == ["column_order_matches_contract"]


def test_a_missing_column_fails_the_column_checks_and_its_type_check(lake, checker):
    table = pa.Table.from_pylist(_rows(lake), schema=EVENTS_SCHEMA).drop_columns(["locale"])
    result = checker.check_table(table, "acme-in", None, None)
    assert result.failed == ["column_set_matches_contract", "column_order_matches_contract", "type:locale"]
    type_check = next(o for o in result.expectations if o.name == "type:locale")
    assert type_check.error  # GX 1.24 reports an IndexError text ("list index out of range") for a missing column


def test_one_checkpoint_run_gives_the_same_per_partition_results_as_one_validation_each(lake, checker, tmp_path):
    """The fast path (check_partitions) against the slow one (check_partition), on three corruptions."""
    chosen = partitions(lake)[:5]
    target = str(tmp_path / "lake")
    for tenant, date in chosen:
        copy_partition(lake, target, tenant, date)

    def duplicate(rows):
        rows.append(dict(rows[0]))

    def null_persons(rows):
        rows[0]["person_id"] = None
        rows[-1]["person_id"] = None

    def negative(rows):
        row = next(r for r in rows if r["revenue_inr"] is not None)
        row["revenue_inr"] = Decimal("-5")

    money = next(
        (t, d)
        for t, d in chosen[2:]
        if any(
            pq.read_table(f, columns=["revenue_inr"]).column(0).null_count < pq.read_metadata(f).num_rows
            for f in part_files(partition_dir(target, t, d))
        )
    )
    rewrite_file(part_files(partition_dir(target, *chosen[0]))[0], duplicate)
    rewrite_file(part_files(partition_dir(target, *chosen[1]))[0], null_persons)
    money_file = next(
        f
        for f in part_files(partition_dir(target, *money))
        if pq.read_table(f, columns=["revenue_inr"]).column(0).null_count < pq.read_metadata(f).num_rows
    )
    rewrite_file(money_file, negative)

    slow = [checker.check_partition(target, t, d) for t, d in chosen]
    fast = checker.check_partitions(target, chosen, chunk=3)  # two chunks
    assert [r.failed for r in slow] == [r.failed for r in fast]
    assert fast[0].failed == ["unique:tenant_id,message_id"]
    assert fast[1].failed == ["not_null:person_id"]
    assert fast[chosen.index(money)].failed == ["non_negative:revenue_inr"]
    for s, f in zip(slow, fast, strict=True):
        assert (s.tenant_id, s.start_date, s.rows) == (f.tenant_id, f.start_date, f.rows)
        for a, b in zip(s.expectations, f.expectations, strict=True):
            assert (a.name, a.success, a.element_count, a.unexpected_count) == (
                b.name,
                b.success,
                b.element_count,
                b.unexpected_count,
            )
            assert a.unexpected_percent == pytest.approx(b.unexpected_percent)
            assert a.unexpected_examples == b.unexpected_examples
    assert (
        fast[1].expectations[[e.name for e in fast[1].expectations].index("not_null:person_id")].unexpected_count == 2
    )


def test_data_docs_under_a_relative_lake_path(lake, tmp_path, monkeypatch):
    """``--lake lake`` is a relative path: the Data Docs site must still be built (GX wants absolute)."""
    monkeypatch.chdir(tmp_path)
    checker = QualityChecker(docs_dir=os.path.join("lake", "_quality", "docs"))
    (result,) = checker.check_partitions(lake, partitions(lake)[:1])
    assert result.success
    assert (tmp_path / "lake" / "_quality" / "docs" / "index.html").is_file()
