import datetime as dt

from transforms.sessions import assign_sessions

T0 = dt.datetime(2026, 10, 1, 10, 0, tzinfo=dt.UTC)


def rows_at(*minutes):
    return [
        {"person_id": "p", "message_id": f"m{i}", "timestamp": T0 + dt.timedelta(minutes=m)}
        for i, m in enumerate(minutes)
    ]


def test_gap_over_thirty_minutes_starts_a_new_session():
    rows = rows_at(0, 10, 40, 71, 101)
    assign_sessions(rows)
    ids = [r["session_id"] for r in rows]
    # 0,10 | 40 (30 min after 10: not more than the gap, same session) ... 71 is 31 min after 40
    assert ids[0] == ids[1] == ids[2]
    assert ids[3] == ids[4] != ids[2]


def test_exactly_the_gap_stays_in_the_session():
    rows = rows_at(0, 30)
    assign_sessions(rows)
    assert rows[0]["session_id"] == rows[1]["session_id"]


def test_order_of_input_does_not_matter_and_ids_are_reproducible():
    a, b = rows_at(0, 50, 5, 120), rows_at(0, 50, 5, 120)
    assign_sessions(a)
    assign_sessions(list(reversed(b)))
    assert [r["session_id"] for r in a] == [r["session_id"] for r in b]
    assert len({r["session_id"] for r in a}) == 3


def test_configurable_gap():
    rows = rows_at(0, 10, 20)
    assign_sessions(rows, gap=dt.timedelta(minutes=5))
    assert len({r["session_id"] for r in rows}) == 3
