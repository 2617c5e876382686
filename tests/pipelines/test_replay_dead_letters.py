"""Replay: dead letters from a real ingest run go back through ProcessEvents; corrected ones land once."""

from __future__ import annotations

import json
import subprocess
import sys

import duckdb
import pytest

from pipelines import ingest_batch, replay_dead_letters
from pipelines.replay_dead_letters import load_corrections, select, to_source_record
from schemas.failures import FailedEvent, Reason, Stage

pytestmark = pytest.mark.slow


def event(mid, **extra):
    body = {
        "type": "track",
        "event": "Product Viewed",
        "messageId": mid,
        "tenantId": "acme-in",
        "anonymousId": f"anon-{mid}",
        "originalTimestamp": "2026-03-01T10:00:00.000Z",
        "sentAt": "2026-03-01T10:00:01.000Z",
        "receivedAt": "2026-03-01T10:00:02.000Z",
        "properties": {"product_id": "SKU-1", "price": 499.0, "currency": "INR"},
    }
    body.update(extra)
    return body


GOOD = [event(f"good-{i}") for i in range(6)]
BAD_TIMESTAMP = event("bad-ts", originalTimestamp="yesterday-ish", sentAt=None, receivedAt=None)
NO_ID = {k: v for k, v in event("x").items() if k not in ("anonymousId",)}  # neither user nor anonymous id
NO_ID["messageId"] = "no-ids"
MALFORMED = '{"type": "track", "messageId": "broken", '


def lake_ids(lake):
    rows = (
        duckdb.connect()
        .execute(f"SELECT message_id FROM read_parquet('{lake}/events/**/*.parquet', hive_partitioning=true)")
        .fetchall()
    )
    return sorted(r[0] for r in rows)


@pytest.fixture(scope="module")
def ingested_once(tmp_path_factory):
    root = tmp_path_factory.mktemp("replay")
    source = root / "input.ndjson"
    lines = [json.dumps(e) for e in GOOD] + [json.dumps(BAD_TIMESTAMP), json.dumps(NO_ID), MALFORMED]
    source.write_text("\n".join(lines) + "\n")
    lake = root / "lake"
    summary = ingest_batch.run(["--input", str(source), "--lake", str(lake), "--tracking-plans", "none"])
    assert summary.lake_rows == len(GOOD) and summary.dead_letters == 3
    return lake


@pytest.fixture
def ingested(ingested_once, tmp_path):
    """A private copy of the ingested lake per test (replays write into it)."""
    import shutil

    return shutil.copytree(ingested_once, tmp_path / "lake")


def dead_letter_glob(lake):
    return f"{lake}/dead_letters/*.jsonl"


def test_replay_without_fixes_fails_again_and_changes_nothing(ingested):
    summary = replay_dead_letters.run(
        ["--dead-letters", dead_letter_glob(ingested), "--lake", str(ingested), "--tracking-plans", "none"]
    )
    assert (summary.dead_letters_read, summary.selected, summary.failed_again) == (3, 3, 3)
    assert summary.accounted == summary.selected and summary.lake_rows == 0
    again = [
        FailedEvent.from_json_line(line)
        for p in (ingested / "replays").rglob("*.jsonl")
        for line in p.read_text().splitlines()
    ]
    assert len(again) == 3 and all(f.source_ref.startswith("replay:") for f in again)
    assert lake_ids(ingested) == sorted(e["messageId"] for e in GOOD)


def test_corrected_dead_letters_land_once_and_a_rerun_is_a_no_op(ingested, tmp_path):
    originals = [
        FailedEvent.from_json_line(line)
        for p in (ingested / "dead_letters").glob("*.jsonl")
        for line in p.read_text().splitlines()
    ]
    malformed_ref = next(f.source_ref for f in originals if f.reason == Reason.MALFORMED_JSON)
    fixes = tmp_path / "fixes.jsonl"
    fixes.write_text(
        "\n".join(
            [
                json.dumps({"message_id": "bad-ts", "payload": event("bad-ts")}),
                json.dumps({"source_ref": malformed_ref, "payload": json.dumps(event("broken"))}),
            ]
        )
    )
    argv = [
        "--dead-letters",
        dead_letter_glob(ingested),
        "--lake",
        str(ingested),
        "--corrections",
        str(fixes),
        "--tracking-plans",
        "none",
    ]
    first = replay_dead_letters.run(argv)
    assert (first.selected, first.corrected, first.lake_rows, first.failed_again, first.already_in_lake) == (
        3,
        2,
        2,
        1,
        0,
    )
    expected = sorted([e["messageId"] for e in GOOD] + ["bad-ts", "broken"])
    assert lake_ids(ingested) == expected
    second = replay_dead_letters.run(argv)  # same replay again: nothing doubled
    assert (second.lake_rows, second.already_in_lake, second.failed_again) == (0, 2, 1)
    assert second.accounted == second.selected
    assert lake_ids(ingested) == expected


def test_only_reason_and_events_already_in_lake(ingested, tmp_path):
    # a dead letter whose event is in the lake already (it also arrived intact): a counted duplicate
    extra = FailedEvent(
        payload=json.dumps(GOOD[0]).encode(),
        stage=Stage.VALIDATE,
        reason=Reason.INVALID_VALUE,
        message="was invalid under an older plan",
        tenant_id="acme-in",
        message_id=GOOD[0]["messageId"],
        source_ref="file:old.ndjson:1",
    )
    sink = FailedEvent(payload=b'{"tenant_id": "acme-in"}', stage=Stage.SINK, reason=Reason.SINK_ERROR, message="x")
    letters = tmp_path / "more.jsonl"
    letters.write_text(extra.to_json_line() + "\n" + sink.to_json_line() + "\n")
    summary = replay_dead_letters.run(
        [
            "--dead-letters",
            dead_letter_glob(ingested),
            "--dead-letters",
            str(letters),
            "--lake",
            str(ingested),
            "--only-reason",
            "invalid_value",
            "--tracking-plans",
            "none",
        ]
    )
    assert (summary.dead_letters_read, summary.selected, summary.skipped) == (5, 1, 4)
    assert (summary.already_in_lake, summary.lake_rows) == (1, 0)
    assert lake_ids(ingested).count(GOOD[0]["messageId"]) == 1


def test_pure_helpers():
    fixes = load_corrections(
        ['{"message_id": "m1", "payload": {"a": 1}}', "", '{"source_ref": "f:2", "payload": "raw"}']
    )
    assert fixes == {("message_id", "m1"): b'{"a": 1}', ("source_ref", "f:2"): b"raw"}
    failure = FailedEvent(
        payload=b"old", stage=Stage.DECODE, reason=Reason.MALFORMED_JSON, message="m", source_ref="f:2"
    )
    record, corrected = to_source_record(failure, fixes)
    assert (record.payload, record.source_ref, record.received_at, corrected) == (
        b"raw",
        "replay:f:2",
        failure.failed_at,
        True,
    )
    replayed = failure.model_copy(update={"source_ref": "replay:f:2"})
    assert to_source_record(replayed, {})[0].source_ref == "replay:f:2"
    assert not select(FailedEvent(payload=b"", stage=Stage.SINK, reason=Reason.SINK_ERROR, message=""), None)
    assert select(failure, frozenset({"malformed_json"})) and not select(failure, frozenset({"oversize"}))
    with pytest.raises(ValueError):
        load_corrections(['{"payload": 1}'])


def test_help_lists_every_flag():
    out = subprocess.run(
        [sys.executable, "-m", "pipelines.replay_dead_letters", "--help"], capture_output=True, text=True, check=True
    ).stdout
    for flag in ("--dead-letters", "--lake", "--only-reason", "--corrections", "--dead-letters-out"):
        assert flag in out
