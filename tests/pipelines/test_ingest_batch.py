"""The batch ingest pipeline on Beam's real runners: nothing lost, nothing doubled, reruns idempotent."""

from __future__ import annotations

import collections
import glob
import json
import os
import subprocess
import sys

import duckdb
import pyarrow as pa
import pytest

from connectors.files import read_file_records
from connectors.lake import read_dead_letters
from pipelines.ingest_batch import IngestBatchOptions, run
from pipelines.options import parse_options
from tests.pipelines.corpus import build_corpus, event
from transforms.event_tables import file_table
from transforms.pipeline_core import lake_files, process_in_memory


def write_corpus(path, records):
    with open(path, "wb") as handle:
        for record in records:
            # one record per line: a gzip or non-UTF-8 record must not contain a newline byte
            assert b"\n" not in record
            handle.write(record + b"\n")


def lake_rows(lake):
    return duckdb.sql(
        f"select * from read_parquet('{lake}/events/**/*.parquet', hive_partitioning=true)"
    ).fetch_arrow_table()


@pytest.fixture(scope="module")
def corpus():
    return build_corpus()


def split_records(records):
    """Records holding a newline byte (gzip can) travel as whole-file .json inputs."""
    lines = [r for r in records if b"\n" not in r]
    whole = [r for r in records if b"\n" in r]
    return lines, whole


@pytest.fixture(scope="module")
def ingested(tmp_path_factory, corpus):
    tmp = tmp_path_factory.mktemp("ingest")
    lines, whole = split_records(corpus.records)
    write_corpus(tmp / "events.ndjson", lines)
    for i, record in enumerate(whole):
        (tmp / f"whole-{i}.json").write_bytes(record)
    lake = tmp / "lake"
    summary = run(["--input", str(tmp / "*.ndjson"), "--input", str(tmp / "*.json"), "--lake", str(lake)])
    return tmp, lake, summary


def test_every_event_ends_in_exactly_one_place(ingested, corpus):
    _, lake, summary = ingested
    table = lake_rows(lake)
    dead = read_dead_letters(str(lake / "dead_letters"))
    assert table.num_rows == corpus.lake
    assert len(dead) == sum(corpus.dead.values())
    assert summary.duplicates == corpus.dup
    assert table.num_rows + len(dead) + summary.duplicates == corpus.events_in
    assert summary.events_parsed == corpus.events_in  # the run's own check counts events as the corpus does
    # the pipeline's own summary agrees with what is on disk
    assert (summary.lake_rows, summary.dead_letters) == (table.num_rows, len(dead))


def test_each_bad_input_gets_its_reason_code(ingested, corpus):
    _, lake, _ = ingested
    dead = read_dead_letters(str(lake / "dead_letters"))
    assert collections.Counter(str(d.reason) for d in dead) == collections.Counter(corpus.dead)
    assert all(d.payload and d.stage for d in dead)


def test_lake_contract_columns_and_unique_keys(ingested):
    _, lake, _ = ingested
    con = duckdb.connect()
    rel = con.sql(f"select * from read_parquet('{lake}/events/**/*.parquet', hive_partitioning=true)")
    for column in (
        "tenant_id",
        "message_id",
        "type",
        "event",
        "user_id",
        "anonymous_id",
        "person_id",
        "timestamp",
        "received_at",
        "session_id",
        "properties",
        "revenue_inr",
        "schema_version",
        "event_date",
    ):
        assert column in rel.columns
    dupes = con.sql(
        f"select count(*) - count(distinct (tenant_id, message_id)) from read_parquet('{lake}/events/**/*.parquet', hive_partitioning=true)"
    ).fetchall()[0][0]
    assert dupes == 0
    nulls = con.sql(
        f"select count(*) from read_parquet('{lake}/events/**/*.parquet', hive_partitioning=true) where person_id is null or session_id is null"
    ).fetchall()[0][0]
    assert nulls == 0


def test_anonymous_browsing_is_stitched_to_the_identified_user(ingested):
    _, lake, _ = ingested
    # events 1000-1002 carry anonymousId anon-6 (1000 % 7) and userId user-1: anon-6's earlier
    # anonymous events must share user-1's person id
    persons = duckdb.sql(
        f"select distinct person_id from read_parquet('{lake}/events/**/*.parquet', hive_partitioning=true) "
        "where anonymous_id = 'anon-6' or user_id = 'user-1'"
    ).fetchall()
    assert len(persons) == 1


def test_order_revenue_is_converted_to_inr(ingested):
    _, lake, _ = ingested
    inr, usd = duckdb.sql(
        f"select max(revenue_inr) filter (where order_id='o1'), max(revenue_inr) filter (where order_id='o2') "
        f"from read_parquet('{lake}/events/**/*.parquet', hive_partitioning=true)"
    ).fetchall()[0]
    assert float(inr) == pytest.approx(1499.5)
    assert 20 * 50 < float(usd) < 20 * 150  # USD→INR has stayed between 50 and 150 for decades


def test_rerun_of_the_same_input_skips_it_or_replaces_its_files(ingested, corpus):
    tmp, lake, first = ingested
    docs = os.path.join(lake, "_quality", "docs")  # the quality gate's Data Docs site: one page per check run

    def dirs():
        return sorted(p for p, _, _ in os.walk(lake) if not p.startswith(docs))

    files_before = dirs()
    argv = ["--input", str(tmp / "*.ndjson"), "--input", str(tmp / "*.json"), "--lake", str(lake)]
    second = run(argv)  # the manifest holds every file: nothing to do
    assert (second.files_ingested, second.files_skipped, second.events_parsed) == (0, first.files_matched, 0)
    third = run([*argv, "--reprocess"])  # ingested again: the same files, rewritten in place
    assert third.input_tag == first.input_tag and third.files_ingested == first.files_ingested
    assert (third.lake_rows, third.dead_letters, third.lake_duplicates) == (first.lake_rows, first.dead_letters, 0)
    assert lake_rows(lake).num_rows == corpus.lake
    assert len(read_dead_letters(str(lake / "dead_letters"))) == sum(corpus.dead.values())
    assert dirs() == files_before


def test_a_rerun_that_writes_fewer_files_leaves_no_stale_ones(tmp_path, corpus):
    lines, _ = split_records(corpus.records)
    write_corpus(tmp_path / "events.ndjson", lines)
    lake = tmp_path / "lake"
    base = ["--input", str(tmp_path / "events.ndjson"), "--lake", str(lake)]
    wide = run([*base, "--files-per-partition", "4"])
    shards = {name.rsplit("-", 1)[1] for _, _, names in os.walk(lake / "events") for name in names}
    assert len(shards) > 1  # the corpus has enough persons to fill several files per partition
    narrow = run([*base, "--files-per-partition", "1", "--reprocess"])
    files = [name for _, _, names in os.walk(lake / "events") for name in names]
    assert narrow.input_tag == wide.input_tag and len(files) == narrow.lake_files < wide.lake_files
    assert all(name.endswith("-0000.parquet") for name in files)
    assert lake_rows(lake).num_rows == narrow.lake_rows == wide.lake_rows


def test_the_pipeline_writes_exactly_what_the_plain_functions_compute(ingested):
    """The benchmark's baseline (process_in_memory + lake_files) and the Beam pipeline are one computation."""
    tmp, lake, summary = ingested
    paths = sorted(glob.glob(str(tmp / "*.ndjson")) + glob.glob(str(tmp / "*.json")))
    records = [record for path in paths for record in read_file_records(path)]
    config = parse_options(["--input", "x", "--lake", "y"], IngestBatchOptions, "").view_as(IngestBatchOptions)
    config = config.process_config(str(lake))  # the lake's PII secret, kept by the ingest above
    table, failures, duplicates = process_in_memory(records, config)
    assert (table.num_rows, len(failures), len(duplicates)) == (
        summary.lake_rows,
        summary.dead_letters,
        summary.duplicates,
    )
    expected = pa.concat_tables(
        file_table(part).append_column("tenant_id", pa.array([key[0]] * part.num_rows))
        for key, part in lake_files(table, config)
    )
    got = lake_rows(lake)
    columns = [c for c in expected.column_names if c != "received_at"]  # ingest time of events sent without one
    assert (
        got.select(columns).sort_by("message_id").to_pylist()
        == expected.select(columns).sort_by("message_id").to_pylist()
    )


def test_help_explains_the_flags():
    out = subprocess.run(
        [sys.executable, "-m", "pipelines.ingest_batch", "--help"], capture_output=True, text=True, check=True
    )
    for flag in (
        "--input",
        "--lake",
        "--dead-letters",
        "--tracking-plans",
        "--geoip-db",
        "--files-per-partition",
        "--runner",
    ):
        assert flag in out.stdout


def test_backfill_of_a_raw_export_and_signed_webhooks_with_configured_secrets(tmp_path):
    """A brand's Segment export has no tenantId (--tenant fills it; an event naming another tenant is
    refused), and a correctly signed Shopify delivery needs its secret (--webhook-secrets)."""
    import base64
    import datetime as dt
    import hashlib
    import hmac
    import json as jsonlib
    from pathlib import Path

    from transforms.webhooks import WebhookRequest, wrap_webhook

    secret = "shpss_backfill_secret"
    body = (Path(__file__).resolve().parents[1] / "cases" / "webhooks" / "shopify_orders_create.json").read_bytes()
    headers = {
        "X-Shopify-Topic": "orders/create",
        "X-Shopify-Shop-Domain": "acme-in.myshopify.com",
        "X-Shopify-Hmac-Sha256": base64.b64encode(hmac.new(secret.encode(), body, hashlib.sha256).digest()).decode(),
    }
    received = dt.datetime(2026, 10, 14, 14, 15, tzinfo=dt.UTC)
    delivery = wrap_webhook(WebhookRequest("shopify", "acme-in", headers, body, received))
    export = [{k: v for k, v in event(i).items() if k != "tenantId"} for i in range(5)]  # what Segment's export holds
    export.append(event(99, tenantId="bloom-in"))  # someone else's event mixed in
    with open(tmp_path / "export.ndjson", "wb") as handle:
        for item in export:
            handle.write(jsonlib.dumps(item).encode() + b"\n")
        handle.write(delivery + b"\n")
    (tmp_path / "secrets.json").write_text(jsonlib.dumps({"shopify:acme-in": secret}))
    argv = ["--input", str(tmp_path / "export.ndjson"), "--lake", str(tmp_path / "lake"), "--tenant", "acme-in"]

    without = run([*argv, "--dead-letters", str(tmp_path / "dead0")])
    reasons = collections.Counter(f.reason.value for f in read_dead_letters(str(tmp_path / "dead0")))
    assert reasons == {"tenant_mismatch": 1, "bad_signature": 1} and without.lake_rows == 5

    with_secrets = run([*argv, "--lake", str(tmp_path / "lake2"), "--webhook-secrets", str(tmp_path / "secrets.json")])
    rows = lake_rows(tmp_path / "lake2")
    assert with_secrets.lake_rows == rows.num_rows == 6
    assert set(rows.column("tenant_id").to_pylist()) == {"acme-in"}
    assert "Order Completed" in rows.column("event").to_pylist()
    dead = read_dead_letters(str(tmp_path / "lake2" / "dead_letters"))
    assert [d.reason.value for d in dead] == ["tenant_mismatch"]
    assert secret not in json.dumps(with_secrets.__dict__)


def test_each_run_appends_a_run_record(tmp_path, capsys):
    """Scheduler view: a run and its rerun are two records (never one overwritten), with the input's
    fingerprint, what was skipped, dead letters by reason and no secret."""
    from pipelines.ingest_batch import main

    write_corpus(tmp_path / "day1.ndjson", [json.dumps(event(i)).encode() for i in range(20)] + [b"{oops"])
    argv = ["--input", str(tmp_path / "*.ndjson"), "--lake", str(tmp_path / "lake"), "--pii-salt", "p" * 24]
    main(argv)
    main(argv)
    capsys.readouterr()
    records = duckdb.sql(
        f"select pipeline, status, exit_code, inputs, counts, argv "
        f"from read_json('{tmp_path}/lake/_runs/records/*/*.json') order by started_at"
    ).fetchall()
    assert [(r[0], r[1], r[2]) for r in records] == [("ingest_batch", "succeeded", 0)] * 2
    first, second = records
    assert first[3][0]["skipped"] is False and second[3][0]["skipped"] is True
    assert first[3][0]["fingerprint"] == second[3][0]["fingerprint"]
    assert first[4]["lake_rows"] == 20 and first[4]["dead_letters_by_reason"] == {"malformed_json": 1}
    assert second[4]["files_skipped"] == 1 and second[4]["lake_rows"] == 0
    assert "p" * 24 not in str(first[5])


def _progress_lines(err: str) -> list[dict]:
    lines = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    return [line for line in lines if line.get("logger") == "livora.read_progress"]


def test_ingest_logs_its_inputs_and_reading_progress_up_to_100_percent(tmp_path, monkeypatch, capsys):
    """With the interval forced tiny: JSON progress lines on stderr, bytes never going back, the last at 100 %;
    with the default interval a small run logs none."""
    import gzip

    from connectors.synthetic import generate_events
    from pipelines.ingest_batch import main

    records = list(generate_events(3000, seed=3))
    (tmp_path / "a.ndjson").write_bytes(b"".join(r.replace(b"\n", b" ") + b"\n" for r in records[:2000]))
    (tmp_path / "b.ndjson.gz").write_bytes(
        gzip.compress(b"".join(r.replace(b"\n", b" ") + b"\n" for r in records[2000:]))
    )
    total = sum(os.path.getsize(tmp_path / name) for name in ("a.ndjson", "b.ndjson.gz"))
    argv = [
        "--input",
        str(tmp_path / "*.ndjson*"),
        "--quality-gate",
        "off",
        "--batch-size",
        "100",
        "--log-format",
        "json",
    ]

    monkeypatch.setenv("LIVORA_PROGRESS_SECONDS", "0.000001")
    main([*argv, "--lake", str(tmp_path / "lake")])
    err = capsys.readouterr().err
    inputs = [json.loads(line)["message"] for line in err.splitlines() if '"ingesting 2 file(s)' in line]
    assert len(inputs) == 1 and "a.ndjson (" in inputs[0] and "b.ndjson.gz (" in inputs[0]
    progress = [line["progress"] for line in _progress_lines(err)]
    assert len(progress) >= 3
    done = [p["bytes_done"] for p in progress]
    assert done == sorted(done) and all(p["bytes_total"] == total for p in progress)
    assert [p["records"] for p in progress] == sorted(p["records"] for p in progress)
    assert done[-1] == total and progress[-1]["percent"] == 100.0 and progress[-1]["records"] == len(records)
    assert all("eta_s" in p and p["bytes_per_s"] > 0 for p in progress[:-1])

    monkeypatch.delenv("LIVORA_PROGRESS_SECONDS")
    main([*argv, "--lake", str(tmp_path / "quiet")])
    assert _progress_lines(capsys.readouterr().err) == []


def test_write_keys_file_names_the_tenant_and_an_unknown_key_is_a_dead_letter(tmp_path, monkeypatch):
    """``--write-keys FILE`` end to end: events that carry a writeKey and no tenantId land under the tenant
    the file maps the key to; an unknown key is a dead letter ``unknown_tenant`` (and the run record
    counts it by reason)."""
    monkeypatch.setattr("pipelines.options.configure_logging", lambda level, fmt: None)
    from pipelines import ingest_batch

    keys = tmp_path / "write-keys.json"
    keys.write_text(json.dumps({"wk_acme_0001": "acme-in", "wk_bloom_0002": "bloom-in"}))
    plan = [("wk_bloom_0002", 4), ("wk_acme_0001", 3), ("wk_guess_9999", 2)]
    events, expected = [], collections.defaultdict(set)
    for key, n in plan:
        for _ in range(n):
            body = event(len(events), writeKey=key)
            del body["tenantId"]
            events.append(body)
            expected[key].add(body["messageId"])
    source = tmp_path / "events.ndjson"
    write_corpus(source, [json.dumps(e).encode() for e in events])
    lake = tmp_path / "lake"
    lake.mkdir()
    ingest_batch.main(
        ["--input", str(source), "--lake", str(lake), "--write-keys", str(keys), "--tracking-plans", "none"]
    )

    landed = collections.defaultdict(set)
    for row in lake_rows(lake).select(["tenant_id", "message_id"]).to_pylist():
        landed[row["tenant_id"]].add(row["message_id"])
    assert dict(landed) == {"bloom-in": expected["wk_bloom_0002"], "acme-in": expected["wk_acme_0001"]}
    dead = read_dead_letters(str(lake / "dead_letters"))
    assert {d.message_id for d in dead} == expected["wk_guess_9999"]
    assert {d.reason.value for d in dead} == {"unknown_tenant"}
    (record,) = [json.loads(p.read_text()) for p in lake.glob("_runs/records/*/*.json")]
    assert record["counts"]["dead_letters_by_reason"] == {"unknown_tenant": 2}
    assert str(keys) in record["argv"]
