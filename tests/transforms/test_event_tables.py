import datetime as dt
from decimal import Decimal

import numpy as np
import pyarrow as pa
import pytest

from schemas.lake import EVENTS_FILE_SCHEMA
from schemas.records import SourceRecord
from transforms.composites import pack_records, unpack_records
from transforms.event_tables import (
    NODE,
    WORK_SCHEMA,
    assign_person_ids,
    attach_ids,
    events_table,
    file_shards,
    file_table,
    from_ipc,
    split_by_bucket,
    split_by_partition,
    table_rows,
    to_ipc,
)
from transforms.identity import person_id_for

T0 = dt.datetime(2026, 10, 1, 9, 30, 0, 123456, tzinfo=dt.UTC)


def parsed_row(i: int, tenant: str = "acme-in", user: str | None = None, anon: str = "a1") -> dict:
    """A row as parsing leaves it: lake columns without person and session, plus the source ref."""
    ts = T0 + dt.timedelta(hours=i)
    return {
        "tenant_id": tenant,
        "event_date": ts.date(),
        "message_id": f"m-{i:04d}",
        "type": "track",
        "event": "Order Completed" if i % 3 == 0 else "Product Viewed",
        "user_id": user,
        "anonymous_id": anon,
        "person_id": None,
        "session_id": None,
        "timestamp": ts,
        "sent_at": None,
        "received_at": ts + dt.timedelta(seconds=1),
        "properties": '{"k": "v"}',
        "is_bot": i % 2 == 0,
        "geo_latitude": 12.97 if i % 5 else None,
        "revenue": Decimal("1299.5000") if i % 3 == 0 else None,
        "schema_version": "1.0.0",
        "_source_ref": f"file:x:{i}",
    }


def test_rows_survive_table_ipc_and_back_with_their_python_types():
    rows = [parsed_row(i) for i in range(50)]
    back = table_rows(from_ipc([to_ipc(events_table(rows[:20])), to_ipc(events_table(rows[20:]))]))
    assert len(back) == 50
    for original, got in zip(rows, back, strict=True):
        assert {k: got[k] for k in original} == original
    assert back[3]["timestamp"].tzinfo is dt.UTC and type(back[3]["revenue"]) is Decimal
    assert NODE not in back[0] and back[0]["user_agent"] is None  # lake columns absent from the dict are null


def test_events_table_rejects_a_value_of_the_wrong_type_naming_nothing_silently():
    bad = parsed_row(1) | {"timestamp": "yesterday"}
    with pytest.raises((pa.ArrowInvalid, pa.ArrowTypeError)):
        events_table([bad])


def test_node_is_the_user_when_known_else_the_device():
    table = events_table([parsed_row(0, user="u7", anon="a1"), parsed_row(1, user=None, anon="a2")])
    assert table[NODE].to_pylist() == ["u:u7", "a:a2"]


def test_person_ids_follow_the_tenants_canonical_map():
    rows = [parsed_row(0, anon="a1"), parsed_row(1, user="u1"), parsed_row(2, tenant="beta", anon="a1")]
    table = assign_person_ids(events_table(rows), {"acme-in": {"a:a1": "u:u1"}})
    assert table["person_id"].to_pylist() == [
        person_id_for("acme-in", "u:u1"),
        person_id_for("acme-in", "u:u1"),
        person_id_for("beta", "a:a1"),  # another tenant's map does not apply
    ]


def test_split_by_bucket_keeps_every_row_once_and_in_order():
    table = pa.table({"x": list(range(10))})
    buckets = np.array([3, 1, 3, 0, 1, 3, 0, 0, 1, 3])
    parts = dict(split_by_bucket(table, buckets))
    assert {b: p["x"].to_pylist() for b, p in parts.items()} == {0: [3, 6, 7], 1: [1, 4, 8], 3: [0, 2, 5, 9]}


def test_split_by_partition_and_file_table():
    rows = [parsed_row(i) for i in range(30)] + [parsed_row(40, tenant="beta")]
    table = assign_person_ids(events_table(list(reversed(rows))), {})
    parts = dict(split_by_partition(table))
    expected = {(r["tenant_id"], r["event_date"].isoformat()) for r in rows}
    assert set(parts) == expected
    assert sum(p.num_rows for p in parts.values()) == len(rows)
    day = file_table(parts[("acme-in", T0.date().isoformat())])
    assert day.schema == EVENTS_FILE_SCHEMA
    stamps = day["timestamp"].to_pylist()
    assert stamps == sorted(stamps) and len(stamps) == 15  # 09:30 .. 23:30 on the first day


def test_empty_inputs():
    assert from_ipc([]).schema == WORK_SCHEMA and from_ipc([]).num_rows == 0
    assert list(split_by_partition(WORK_SCHEMA.empty_table())) == []


def test_packed_records_round_trip():
    records = [SourceRecord(b'{"a":1}', "file:x:1"), SourceRecord(b"\xff", "kinesis:s/1/2", T0)]
    assert unpack_records(pack_records(records)) == records
    assert all(isinstance(r, SourceRecord) for r in unpack_records(pack_records(records)))


def attributes(*rows: tuple[str, str, str, str]) -> pa.Table:
    """(message_id, source_ref, person_id, session_id) per surviving copy."""
    return pa.table(
        {
            "tenant_id": ["acme-in"] * len(rows),
            "message_id": [r[0] for r in rows],
            "_source_ref": [r[1] for r in rows],
            "person_id": [r[2] for r in rows],
            "session_id": [r[3] for r in rows],
        }
    )


def test_attach_ids_keeps_survivors_with_their_ids_and_drops_the_rest():
    rows = events_table([parsed_row(i) for i in range(4)]).drop_columns([NODE])
    got = attach_ids(rows, attributes(("m-0002", "file:x:2", "p2", "s2"), ("m-0000", "file:x:0", "p0", "s0")))
    assert sorted(
        zip(got["message_id"].to_pylist(), got["person_id"].to_pylist(), got["session_id"].to_pylist(), strict=True)
    ) == [
        ("m-0000", "p0", "s0"),
        ("m-0002", "p2", "s2"),
    ]
    assert got.schema == rows.schema


def test_attach_ids_matches_on_source_ref_too_and_counts_identical_copies():
    same = parsed_row(1)
    other_copy = parsed_row(1) | {"_source_ref": "file:y:9"}
    rows = events_table([same, same, other_copy]).drop_columns([NODE])
    one = attach_ids(rows, attributes(("m-0001", "file:x:1", "p", "s")))
    assert one["_source_ref"].to_pylist() == ["file:x:1"]
    two = attach_ids(rows, attributes(("m-0001", "file:x:1", "p", "s"), ("m-0001", "file:x:1", "p", "s")))
    assert two["_source_ref"].to_pylist() == ["file:x:1", "file:x:1"]
    assert attach_ids(rows, attributes()).num_rows == 0


def test_file_shards_hash_the_message_id():
    table = events_table([parsed_row(i) for i in range(200)])
    assert set(file_shards(table, 1)) == {0}
    shards = file_shards(table, 4)
    assert set(shards) == {0, 1, 2, 3}
    again = file_shards(events_table([parsed_row(i) for i in reversed(range(200))]), 4)
    assert list(shards) == list(reversed(again))
