"""Run records: appended per run, secrets redacted, readable with DuckDB."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import time
from pathlib import Path

import duckdb
import pytest

from connectors.run_records import (
    current,
    note_counts,
    note_input,
    note_outputs,
    on_sigterm_exit,
    recording,
    redact_argv,
)


def test_secrets_never_reach_the_arguments():
    argv = [
        "--lake",
        "/l",
        "--pii-salt",
        "very-secret-salt-value",
        "--s3_secret_access_key=abc123",
        "--api-key=k",
        "--warehouse",
        "postgresql://livora:hunter2@db:5432/wh",
        "--webhook-secrets",
        "/etc/livora/webhooks.json",
        "--dedupe-table=livora-dedupe",
    ]
    out = redact_argv(argv)
    text = " ".join(out)
    for secret in ("very-secret-salt-value", "abc123", "hunter2", "=k"):
        assert secret not in text
    assert "/etc/livora/webhooks.json" in out and "--dedupe-table=livora-dedupe" in out
    assert "postgresql://livora:***@db:5432/wh" in out


@dataclasses.dataclass
class Summary:
    lake_rows: int
    dead_letters: int


def test_every_run_appends_a_record_with_its_outcome(tmp_path):
    lake = str(tmp_path / "lake")
    os.makedirs(lake)
    for _ in range(2):
        with recording("ingest_batch", ["--lake", lake, "--pii-salt", "x" * 20]) as record:
            assert current() is record
            record.add_input("/in/day1.ndjson", fingerprint="abc", size_bytes=10)
            record.result = Summary(lake_rows=7, dead_letters=1)
    with pytest.raises(ValueError), recording("funnels", ["--lake", lake]):
        raise ValueError("--lake /nope does not exist")
    assert current() is None
    rows = duckdb.sql(
        f"select pipeline, status, exit_code, error, counts, inputs, argv "
        f"from read_json('{lake}/_runs/records/*/*.json', union_by_name=true) order by started_at"
    ).fetchall()
    assert [(r[0], r[1], r[2]) for r in rows] == [
        ("ingest_batch", "succeeded", 0),
        ("ingest_batch", "succeeded", 0),
        ("funnels", "failed", 1),
    ]
    assert rows[0][4]["lake_rows"] == 7 and rows[0][5][0]["fingerprint"] == "abc"
    assert rows[2][3] == "ValueError: --lake /nope does not exist"
    assert "x" * 20 not in str(rows[0][6])


def test_exit_codes_and_help_runs(tmp_path):
    lake = str(tmp_path / "lake")
    os.makedirs(lake)
    with pytest.raises(SystemExit), recording("funnels", ["--lake", lake]):
        raise SystemExit(3)
    with pytest.raises(SystemExit), recording("funnels", ["--lake", lake, "--help"]):
        raise SystemExit(0)
    got = duckdb.sql(f"select status, exit_code from read_json('{lake}/_runs/records/*/*.json')").fetchall()
    assert got == [("failed", 3)]


def test_a_mistyped_lake_is_not_created_by_its_record(tmp_path):
    with pytest.raises(SystemExit), recording("funnels", ["--lake", str(tmp_path / "typo")]):
        raise SystemExit(5)
    assert not (tmp_path / "typo").exists()


def _read_records(root) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(Path(root).glob("_runs/records/*/*.json"))]


def test_declarations_do_nothing_outside_a_run_and_passwords_never_reach_outputs(tmp_path):
    note_input(str(tmp_path), [str(tmp_path / "nothing.parquet")])  # no run: no error, nothing listed
    note_outputs(str(tmp_path / "x.parquet"))
    note_counts({"rows": 1})
    assert not list(tmp_path.iterdir())
    with recording("load_sinks", ["--lake", str(tmp_path)]):
        note_outputs("postgresql://livora:hunter2@db:5432/wh#events")
    (record,) = _read_records(tmp_path)
    assert record["outputs"] == ["postgresql://livora:***@db:5432/wh#events"]


def test_sigterm_inside_a_run_unwinds_and_appends_a_terminated_record(tmp_path):
    unwound = []
    with pytest.raises(SystemExit) as ended, recording("compact_lake", ["--lake", str(tmp_path)]), on_sigterm_exit():
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # the handler raises before this ends
        finally:
            unwound.append(True)
    assert ended.value.code == 143 and unwound == [True]
    (record,) = _read_records(tmp_path)
    assert (record["status"], record["exit_code"], record["error"]) == ("terminated", 143, "terminated by SIGTERM")
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is the run's only


def test_the_listing_fingerprint_ignores_where_the_lake_is_and_sees_what_changed(tmp_path):
    for lake in ("a", "b"):
        part = tmp_path / lake / "events" / "tenant_id=t" / "event_date=2026-01-01"
        part.mkdir(parents=True)
        (part / "part-0.parquet").write_bytes(b"x" * 10)
        (part / ".part-1.parquet.tmp").write_bytes(b"in flight")  # a writer's temporary: not an input
        os.utime(part / "part-0.parquet", (1_700_000_000, 1_700_000_000))

    def fingerprint(lake: str) -> dict:
        with recording("funnels", ["--lake", str(tmp_path / lake)]) as record:
            note_input(str(tmp_path / lake), [f"{tmp_path / lake}/events/*/*/*"])
        return record.inputs[0]

    a, b = fingerprint("a"), fingerprint("b")
    assert a["fingerprint"] == b["fingerprint"] and (a["files"], a["size_bytes"]) == (1, 10)
    os.utime(tmp_path / "b/events/tenant_id=t/event_date=2026-01-01/part-0.parquet", (1_700_000_001,) * 2)
    assert fingerprint("b")["fingerprint"] != a["fingerprint"]
