import datetime as dt

from transforms.dedupe import dedupe_rows

T = dt.datetime(2026, 10, 1, tzinfo=dt.UTC)


def row(tenant, mid, seconds, ref="r"):
    return {
        "tenant_id": tenant,
        "message_id": mid,
        "received_at": T + dt.timedelta(seconds=seconds),
        "_source_ref": ref,
    }


def test_keeps_one_copy_per_tenant_and_message_and_counts_the_rest():
    rows = [row("t", "m1", 5), row("t", "m1", 1), row("t", "m1", 3), row("t", "m2", 0), row("u", "m1", 0)]
    unique, dups = dedupe_rows(rows)
    assert sorted((r["tenant_id"], r["message_id"]) for r in unique) == [("t", "m1"), ("t", "m2"), ("u", "m1")]
    assert sorted(dups) == [("t", "m1"), ("t", "m1")]
    assert len(unique) + len(dups) == len(rows)


def test_survivor_is_the_earliest_received_regardless_of_order():
    copies = [row("t", "m", 9, "c"), row("t", "m", 2, "b"), row("t", "m", 2, "a")]
    for order in (copies, list(reversed(copies))):
        unique, _ = dedupe_rows(order)
        assert unique[0]["_source_ref"] == "a"
