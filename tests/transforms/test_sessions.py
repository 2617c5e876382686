import datetime as dt

import pyarrow as pa

from transforms.sessions import session_id_for, sessionize_table

T0 = dt.datetime(2026, 10, 1, 10, 0, tzinfo=dt.UTC)


def rows_at(*minutes, person="p"):
    return [
        {"person_id": person, "message_id": f"m{i}", "timestamp": T0 + dt.timedelta(minutes=m), "session_id": None}
        for i, m in enumerate(minutes)
    ]


def sessions(rows, **kwargs) -> dict[str, str]:
    """message_id -> session_id."""
    out = sessionize_table(pa.Table.from_pylist(rows), **kwargs)
    return dict(zip(out["message_id"].to_pylist(), out["session_id"].to_pylist(), strict=True))


def test_gap_over_thirty_minutes_starts_a_new_session():
    ids = sessions(rows_at(0, 10, 40, 71, 101))
    # 0,10 | 40 (30 min after 10: not more than the gap, same session) ... 71 is 31 min after 40
    assert ids["m0"] == ids["m1"] == ids["m2"]
    assert ids["m3"] == ids["m4"] != ids["m2"]


def test_session_id_hashes_the_person_and_the_start_time():
    ids = sessions(rows_at(0, 10, 45))
    assert ids["m0"] == session_id_for("p", T0)
    assert ids["m2"] == session_id_for("p", T0 + dt.timedelta(minutes=45))


def test_exactly_the_gap_stays_in_the_session():
    ids = sessions(rows_at(0, 30))
    assert ids["m0"] == ids["m1"]


def test_order_of_input_does_not_matter_and_ids_are_reproducible():
    a = sessions(rows_at(0, 50, 5, 120))
    b = sessions(list(reversed(rows_at(0, 50, 5, 120))))
    assert a == b
    assert len(set(a.values())) == 3


def test_persons_are_sessionized_apart_even_when_interleaved():
    rows = rows_at(0, 20, person="p") + [{**r, "message_id": "q" + r["message_id"]} for r in rows_at(5, 10, person="q")]
    ids = sessions(rows)
    assert ids["m0"] == ids["m1"] == session_id_for("p", T0)
    assert ids["qm0"] == ids["qm1"] == session_id_for("q", T0 + dt.timedelta(minutes=5))


def test_configurable_gap():
    ids = sessions(rows_at(0, 10, 20), gap=dt.timedelta(minutes=5))
    assert len(set(ids.values())) == 3
