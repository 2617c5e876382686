"""``(tenant_id, message_id)`` once in the events table when the same event comes back on another UTC date.

The audit's hole: an event whose time is derived (no ``timestamp``: ``receivedAt``; a mobile event whose
clock-skew correction ``receivedAt - (sentAt - originalTimestamp)`` moves with the delivery) lands on a
different date when it is delivered again, and a check limited to the row's own partition let it in
twice. Then the key index (``LAKE/_keys``) under crashes, compaction and erasure: slower at worst, never a
lost or a doubled event.
"""

from __future__ import annotations

import glob
import os

import duckdb
import pytest

from pipelines import compact_lake, erase
from pipelines.ingest_batch import run
from tests.pipelines.corpus import TENANT, dumps, event
from tests.s3_lake import s3_lake_fs  # noqa: F401  (fixture)
from tests.stream_runs import run_stream_pass

SALT = ["--pii-salt", "k" * 32]


def no_timestamp(i: int, received: str, **over) -> dict:
    record = event(i, receivedAt=received, **over)
    del record["timestamp"]
    return record


def skewed(i: int, received: str, **over) -> dict:
    """A mobile event: the device clock says when it happened and when it was sent, ``receivedAt`` moves."""
    record = event(i, receivedAt=received, originalTimestamp="2026-10-01T23:59:30Z", sentAt="2026-10-01T23:59:40Z")
    del record["timestamp"]
    record.update(over)
    return record


REDELIVERIES = {
    # (first delivery, second delivery): same messageId, UTC dates 2026-10-01 then 2026-10-02
    "no timestamp, time from receivedAt": (
        no_timestamp(900, "2026-10-01T23:59:50Z"),
        no_timestamp(900, "2026-10-02T00:00:20Z"),
    ),
    "clock-skew correction past midnight": (
        skewed(900, "2026-10-01T23:59:45Z"),
        skewed(900, "2026-10-02T00:05:00Z"),
    ),
}


def write_lines(path, records: list[dict]) -> None:
    path.write_bytes(b"".join(dumps(r) + b"\n" for r in records))


def lake_keys(lake) -> list[tuple[str, str, str]]:
    return duckdb.sql(
        f"select tenant_id, message_id, cast(event_date as varchar) from "
        f"read_parquet('{lake}/events/**/*.parquet', hive_partitioning=true) order by all"
    ).fetchall()


def rows_of(lake, message_id: str) -> list[str]:
    return [date for _, mid, date in lake_keys(lake) if mid == message_id]


def ingest(landing, lake, *extra):
    summary = run(["--input", str(landing / "*.ndjson"), "--lake", str(lake), *SALT, *extra])
    assert summary.events_in == summary.events_parsed  # the books balance
    return summary


@pytest.mark.parametrize("kind", list(REDELIVERIES))
def test_an_event_delivered_again_on_another_date_is_in_the_lake_once(tmp_path, kind):
    first, again = REDELIVERIES[kind]
    landing, lake = tmp_path / "landing", tmp_path / "lake"
    landing.mkdir()
    write_lines(landing / "day1.ndjson", [first, *(event(i) for i in range(5))])
    one = ingest(landing, lake)
    assert (one.lake_rows, one.lake_duplicates) == (6, 0)
    assert rows_of(lake, "m-00900") == ["2026-10-01"]

    write_lines(landing / "day2.ndjson", [again, *(event(i) for i in range(10, 13))])
    two = ingest(landing, lake)
    assert (two.files_ingested, two.files_skipped) == (1, 1)
    assert (two.events_parsed, two.lake_rows, two.lake_duplicates) == (4, 3, 1)
    assert rows_of(lake, "m-00900") == ["2026-10-01"]
    keys = [(t, m) for t, m, _ in lake_keys(lake)]
    assert len(keys) == len(set(keys)) == 9


def first_day(landing, lake):
    first, _ = REDELIVERIES["no timestamp, time from receivedAt"]
    write_lines(landing / "day1.ndjson", [first, *(event(i) for i in range(5))])
    ingest(landing, lake)


def second_day(landing):
    _, again = REDELIVERIES["no timestamp, time from receivedAt"]
    write_lines(landing / "day2.ndjson", [again, event(20)])


def key_files(lake) -> list[str]:
    return sorted(glob.glob(f"{lake}/_keys/tenant_id={TENANT}/*.parquet"))


def test_a_lake_file_whose_key_file_was_never_written_is_read_directly(tmp_path):
    """Writer killed between the lake file and its key file (or a lake older than the index)."""
    landing, lake = tmp_path / "landing", tmp_path / "lake"
    landing.mkdir()
    first_day(landing, lake)
    assert key_files(lake)
    for path in key_files(lake):
        os.remove(path)
    second_day(landing)
    two = ingest(landing, lake)
    assert (two.lake_rows, two.lake_duplicates) == (1, 1)
    assert rows_of(lake, "m-00900") == ["2026-10-01"]
    rerun = ingest(landing, lake, "--reprocess")  # both files again: rewritten in place, nothing added
    assert rerun.lake_duplicates == 0 and rerun.lake_rows == 7
    assert len(lake_keys(lake)) == 7


def test_key_entries_for_rows_that_are_not_in_the_lake_drop_nothing(tmp_path):
    """A key file left for a lake file that was never written, and one describing a version of a lake file
    that was replaced: their ids must not make a later run drop a genuine event."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from connectors.lake_keys import KEY_FILE_SCHEMA

    landing, lake = tmp_path / "landing", tmp_path / "lake"
    landing.mkdir()
    first_day(landing, lake)
    (real,) = key_files(lake)
    described = pq.read_table(real)
    lake_file = described["file"][0].as_py()
    keys_dir = os.path.dirname(real)
    ghost = {  # m-00020 arrives on day 2: no lake file holds it
        "message_id": ["m-00020"],
        "file": ["event_date=2026-10-01/part-crashed-0000.parquet"],  # never written
        "file_size": [1234],
        "file_mtime": [1.0],
    }
    pq.write_table(pa.table(ghost, schema=KEY_FILE_SCHEMA), f"{keys_dir}/keys-2026-10-01-part-crashed-0000.parquet")
    stale = {  # the real file's name, but another size and time: an older version of it
        "message_id": ["m-00020"],
        "file": [lake_file],
        "file_size": [described["file_size"][0].as_py() + 1],
        "file_mtime": [described["file_mtime"][0].as_py() - 60],
    }
    pq.write_table(pa.table(stale, schema=KEY_FILE_SCHEMA), f"{keys_dir}/keys-stale.parquet")
    lying = {  # the real file exactly as listed, claiming an id it does not hold (an index alone never drops)
        "message_id": ["m-00020"],
        "file": [lake_file],
        "file_size": [described["file_size"][0].as_py()],
        "file_mtime": [described["file_mtime"][0].as_py()],
    }
    pq.write_table(pa.table(lying, schema=KEY_FILE_SCHEMA), f"{keys_dir}/keys-lying.parquet")

    second_day(landing)
    two = ingest(landing, lake)
    assert (two.lake_rows, two.lake_duplicates) == (1, 1)  # m-00020 lands, m-00900 is the duplicate
    assert rows_of(lake, "m-00020") == ["2026-10-01"]
    assert rows_of(lake, "m-00900") == ["2026-10-01"]
    ingest(landing, lake, "--reprocess")
    assert len(lake_keys(lake)) == 7 and rows_of(lake, "m-00020") == ["2026-10-01"]


def test_compaction_merges_the_index_and_it_still_finds_every_key(tmp_path):
    landing, lake = tmp_path / "landing", tmp_path / "lake"
    landing.mkdir()
    first_day(landing, lake)
    write_lines(landing / "day1b.ndjson", [event(i) for i in range(30, 34)])  # a second file in 2026-10-01
    ingest(landing, lake)
    before = key_files(lake)
    assert len(before) >= 2
    compact_lake.run(["--lake", str(lake), "--min-age-minutes", "0"])
    after = key_files(lake)
    assert len(after) == 1 and after[0] not in before
    second_day(landing)
    two = ingest(landing, lake)
    assert (two.lake_rows, two.lake_duplicates) == (1, 1)
    assert len(lake_keys(lake)) == 11


def test_a_file_rewritten_by_erasure_is_read_directly_and_compaction_drops_the_erased_keys(tmp_path, monkeypatch):
    """Erasure rewrites a lake file under its name and leaves the index alone (other persons' files keep
    their bytes): the file's old entries stop counting, so it is read, and compaction drops them."""
    import pyarrow.parquet as pq

    landing, lake = tmp_path / "landing", tmp_path / "lake"
    landing.mkdir()
    first, _ = REDELIVERIES["no timestamp, time from receivedAt"]
    write_lines(landing / "day1.ndjson", [first, event(1, userId="erase-me"), event(2)])
    ingest(landing, lake)
    monkeypatch.setenv("LIVORA_PII_SALT", SALT[1])
    erase.run(["--lake", str(lake), "--tenant", TENANT, "--user-id", "erase-me", "--requested-by", "t"])
    assert rows_of(lake, "m-00001") == []
    second_day(landing)
    two = ingest(landing, lake)
    assert (two.lake_rows, two.lake_duplicates) == (1, 1)
    assert rows_of(lake, "m-00900") == ["2026-10-01"]

    compact_lake.run(["--lake", str(lake), "--min-age-minutes", "0"])
    indexed = [mid for path in key_files(lake) for mid in pq.read_table(path)["message_id"].to_pylist()]
    assert sorted(indexed) == ["m-00002", "m-00020", "m-00900"]


@pytest.mark.integration
def test_an_event_from_the_batch_sent_again_through_the_stream_on_another_date_is_a_duplicate(aws, tmp_path):
    from infra.resources import StreamingResources, create_streaming_resources
    from pipelines.demo_stream import put_records

    landing, lake = tmp_path / "landing", tmp_path / "lake"
    landing.mkdir()
    first_day(landing, lake)
    _, again = REDELIVERIES["no timestamp, time from receivedAt"]
    res = create_streaming_resources(aws, StreamingResources(stream="events", shards=1, bucket=None))
    put_records(aws.client("kinesis"), res.stream, [dumps(again), dumps(event(40))])
    summary = run_stream_pass(aws, res, str(lake), "--quality-gate=off", f"--pii-salt={SALT[1]}", dedupe_table="none")
    assert summary.total("records_read") == 2
    assert (summary.total("lake_rows"), summary.total("duplicates")) == (1, 1)
    assert rows_of(lake, "m-00900") == ["2026-10-01"]
    assert len(lake_keys(lake)) == 7


@pytest.mark.integration
def test_an_s3_lake_keeps_the_key_once_across_dates(aws, s3_lake_fs):  # noqa: F811
    s3 = aws.client("s3")
    first, again = REDELIVERIES["clock-skew correction past midnight"]
    s3.put_object(Bucket="lake", Key="in/day1.ndjson", Body=dumps(first) + b"\n" + dumps(event(1)) + b"\n")
    argv = ["--lake", "s3://lake/prod", f"--aws-endpoint-url={aws.endpoint_url}", f"--aws-region={aws.region}", *SALT]
    one = run(["--input", "s3://lake/in/*.ndjson", *argv])
    assert one.lake_rows == 2
    keys = s3.list_objects_v2(Bucket="lake", Prefix=f"prod/_keys/tenant_id={TENANT}/")["Contents"]
    assert len(keys) == 1
    s3.put_object(Bucket="lake", Key="in/day2.ndjson", Body=dumps(again) + b"\n" + dumps(event(2)) + b"\n")
    two = run(["--input", "s3://lake/in/*.ndjson", *argv])
    assert (two.lake_rows, two.lake_duplicates) == (1, 1)
    assert two.events_in == two.events_parsed
    from connectors.lake import read_events

    ids = read_events("s3://lake/prod", filesystem=s3_lake_fs, columns=["message_id"])["message_id"].to_pylist()
    assert sorted(ids) == ["m-00001", "m-00002", "m-00900"]
