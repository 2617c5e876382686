import datetime as dt

import pyarrow as pa

from transforms.dedupe import dedupe_table

T = dt.datetime(2026, 10, 1, tzinfo=dt.UTC)


def row(tenant, mid, seconds, ref="r", properties="{}"):
    return {
        "tenant_id": tenant,
        "message_id": mid,
        "received_at": T + dt.timedelta(seconds=seconds),
        "_source_ref": ref,
        "properties": properties,
    }


def table(rows):
    return pa.Table.from_pylist(rows)


def test_keeps_one_copy_per_tenant_and_message_and_counts_the_rest():
    rows = [row("t", "m1", 5), row("t", "m1", 1), row("t", "m1", 3), row("t", "m2", 0), row("u", "m1", 0)]
    unique, dups = dedupe_table(table(rows))
    assert sorted(zip(unique["tenant_id"].to_pylist(), unique["message_id"].to_pylist(), strict=True)) == [
        ("t", "m1"),
        ("t", "m2"),
        ("u", "m1"),
    ]
    assert sorted(dups) == [("t", "m1"), ("t", "m1")]
    assert unique.num_rows + len(dups) == len(rows)


def test_survivor_is_the_earliest_received_regardless_of_order():
    copies = [row("t", "m", 9, "c"), row("t", "m", 2, "b"), row("t", "m", 2, "a")]
    for order in (copies, list(reversed(copies))):
        unique, _ = dedupe_table(table(order))
        assert unique["_source_ref"].to_pylist() == ["a"]


def test_a_missing_source_ref_sorts_first_like_an_empty_one():
    copies = [row("t", "m", 2, "a", '{"x":1}'), row("t", "m", 2, None, '{"x":2}')]
    for order in (copies, list(reversed(copies))):
        unique, dups = dedupe_table(table(order))
        assert unique["properties"].to_pylist() == ['{"x":2}'] and dups == [("t", "m")]


def test_no_rows_and_no_duplicates():
    empty, dups = dedupe_table(table([row("t", "m", 0)]).slice(0, 0))
    assert empty.num_rows == 0 and dups == []
    rows = [row("t", f"m{i}", i) for i in range(5)]
    unique, dups = dedupe_table(table(rows))
    assert sorted(unique["message_id"].to_pylist()) == [f"m{i}" for i in range(5)] and dups == []
