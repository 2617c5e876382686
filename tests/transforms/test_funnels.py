"""Funnel core: the published windowFunnel and PostHog cases, and randomised comparisons.

References the implementation is checked against, all written independently of it:
- chdb (embedded ClickHouse): the real ``windowFunnel`` for ordered, strict_order, strict_increase;
- a plain per-person Python loop over each person's sorted events (written here);
- brute force over all chains (default mode) and over all windows (unordered).
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
import random

import duckdb
import numpy as np
import pyarrow as pa
import pytest
from pydantic import ValidationError

from tests.transforms.funnel_sql import duckdb_funnel_steps, funnel_step_rows
from transforms.funnels import (
    FunnelDefinition,
    aggregate_entry_days,
    aggregate_funnel,
    load_funnels,
    person_funnel,
    window_funnel_levels,
)

try:  # the real ClickHouse windowFunnel, when the (large) chdb wheel is installed
    import chdb
except ImportError:  # pragma: no cover - depends on the environment
    chdb = None

UTC = dt.UTC


def _levels(person, ts, events, conditions, window, mode="ordered"):
    events = np.asarray(events)
    match = np.column_stack([events == c for c in conditions])
    return window_funnel_levels(np.asarray(person), np.asarray(ts), match, window, mode).level.tolist()


# --- published ClickHouse cases (tests 00632_aggregation_window_funnel) ---------------------


@pytest.mark.parametrize(("window", "expected"), [(2, 3), (3, 4), (4, 5)])
def test_clickhouse_window_boundary_is_inclusive(window, expected):
    ts = list(range(9))
    events = [1000 + t for t in ts]
    assert _levels([0] * 9, ts, events, [1003, 1004, 1005, 1006, 1007], window) == [expected]


def test_clickhouse_equal_timestamps_default_and_strict_increase():
    ts = [0, 1, 1, 1, 2]
    events = [1000, 1001, 1002, 1003, 1004]
    conds = [1000, 1001, 1002, 1003, 1004]
    assert _levels([0] * 5, ts, events, conds, 100) == [5]
    assert _levels([0] * 5, ts, events, conds, 100, "strict_increase") == [2]


CLICKHOUSE_USERS = {1: "abc", 2: "adbc", 3: "aabbcc", 4: "aaaabbcc", 5: "aabbdcc", 6: "ccbbaa"}


def _user_rows():
    person, ts, events = [], [], []
    for user, seq in CLICKHOUSE_USERS.items():
        for i, e in enumerate(seq):
            person.append(user - 1)
            ts.append(i + 1)
            events.append(e)
    return person, ts, events


def test_clickhouse_six_users_default():
    assert _levels(*_user_rows(), "abc", 86400) == [3, 3, 3, 3, 3, 1]


def test_clickhouse_six_users_strict_order():
    assert _levels(*_user_rows(), "abc", 86400, "strict") == [3, 1, 3, 3, 2, 1]


def test_new_step_one_restarts_but_older_chain_keeps_progressing():
    # a@0 b@5 a@8 c@9, window 9: the chain from a@0 still reaches c@9 (9 <= 0 + 9)
    assert _levels([0] * 4, [0, 5, 8, 9], list("abac"), "abc", 9) == [3]
    # window 8: c@9 is outside the first chain, and the second chain (a@8) has no b after it
    assert _levels([0] * 4, [0, 5, 8, 9], list("abac"), "abc", 8) == [2]


# --- table-level helpers ----------------------------------------------------------------------


def _table(rows, tenant="acme-in"):
    """rows: (person, event, timestamp, properties-dict[, message_id])."""
    out = {"tenant_id": [], "person_id": [], "event": [], "timestamp": [], "message_id": [], "properties": []}
    for i, row in enumerate(rows):
        person, event, ts, props = row[:4]
        out["tenant_id"].append(tenant)
        out["person_id"].append(person)
        out["event"].append(event)
        out["timestamp"].append(ts)
        out["message_id"].append(row[4] if len(row) > 4 else f"m{i:05d}")
        out["properties"].append(json.dumps(props or {}))
    return pa.table(
        {
            **{k: pa.array(v, pa.string()) for k, v in out.items() if k != "timestamp"},
            "timestamp": pa.array(out["timestamp"], pa.timestamp("us", tz="UTC")),
        }
    )


def _at(day, hour, minute=0):
    return dt.datetime(2020, 1, day, hour, minute, tzinfo=UTC)


# --- published PostHog cases -----------------------------------------------------------------


def test_posthog_strict_funnel_7_2_1():
    sequences = {
        "p1": "S",
        "p2": "PS",
        "p3": "SPxI",
        "p4": "IxPS",
        "p5": "PSxPI",
        "p6": "xSxP",
        "p7": "xSPIx",
        "p8": "IP",
    }
    names = {"S": "signed up", "P": "$pageview", "I": "insight viewed", "x": "other"}
    rows = [
        (person, names[e], _at(1, 0) + dt.timedelta(minutes=i), {})
        for person, seq in sequences.items()
        for i, e in enumerate(seq)
    ]
    definition = FunnelDefinition(
        name="strict", steps=["signed up", "$pageview", "insight viewed"], window_seconds=14 * 86400, mode="strict"
    )
    steps = aggregate_funnel(person_funnel(_table(rows), definition), definition)
    assert steps.column("persons").to_pylist() == [7, 2, 1]
    assert steps.column("conversion_from_previous").to_pylist() == pytest.approx([1.0, 2 / 7, 1 / 2])
    assert steps.column("conversion_overall").to_pylist() == pytest.approx([1.0, 2 / 7, 1 / 7])


def test_posthog_conversion_times():
    rows = [
        ("p1", "sign up", _at(1, 12), {}),
        ("p1", "play movie", _at(1, 13), {}),
        ("p1", "buy", _at(1, 15), {}),
        ("p2", "sign up", _at(2, 14), {}),
        ("p2", "play movie", _at(2, 16), {}),
        ("p3", "sign up", _at(2, 14), {}),
        ("p3", "play movie", _at(2, 16), {}),
        ("p3", "buy", _at(2, 17), {}),
    ]
    definition = FunnelDefinition(name="movie", steps=["sign up", "play movie", "buy"], window_seconds=7 * 86400)
    steps = aggregate_funnel(person_funnel(_table(rows), definition), definition)
    assert steps.column("persons").to_pylist() == [3, 3, 2]
    assert steps.column("avg_time_to_convert_s").to_pylist() == [None, 6000.0, 5400.0]
    assert steps.column("median_time_to_convert_s").to_pylist() == [None, 7200.0, 5400.0]
    # p90 with linear interpolation: step 2 over [3600, 7200, 7200] -> 7200; step 3 over [3600, 7200] -> 6840
    assert steps.column("p90_time_to_convert_s").to_pylist() == [None, 7200.0, pytest.approx(6840.0)]


# --- counted chain, breakdown, exclusions, filters -------------------------------------------


def test_counted_chain_keeps_first_row_of_each_step_and_latest_start():
    # a@0 a@10 b@11 b@12 c@20: chain starts at a@10 (latest start), b@11 (first b), c@20
    rows = [("u", e, _at(1, 0, m), {}) for e, m in [("a", 0), ("a", 10), ("b", 11), ("b", 12), ("c", 20)]]
    definition = FunnelDefinition(name="f", steps=["a", "b", "c"], window_seconds=3600)
    persons = person_funnel(_table(rows), definition)
    assert persons.column("level").to_pylist() == [3]
    assert persons.column("step_1_ts").to_pylist() == [_at(1, 0, 10)]
    assert persons.column("step_2_ts").to_pylist() == [_at(1, 0, 11)]
    assert persons.column("step_3_ts").to_pylist() == [_at(1, 0, 20)]


@pytest.mark.parametrize(
    ("attribution", "expected"),
    [
        ("first_touch", {"google": 1, "meta": 1}),
        ("last_touch", {"email": 1, "meta": 1}),
        ("step_2", {"email": 1, None: 1}),
    ],
)
def test_breakdown_attribution(attribution, expected):
    rows = [
        ("u1", "view", _at(1, 10), {"src": "google"}),
        ("u1", "add", _at(1, 11), {"src": "email"}),
        ("u2", "view", _at(1, 10), {"src": "meta"}),
    ]
    definition = FunnelDefinition(
        name="f", steps=["view", "add"], window_seconds=86400, breakdown="properties.src", attribution=attribution
    )
    steps = aggregate_funnel(person_funnel(_table(rows), definition), definition)
    step1 = {r["breakdown_value"]: r["persons"] for r in steps.to_pylist() if r["step"] == 1}
    assert step1 == expected


def test_exclusion_between_steps_removes_person():
    rows = [
        ("u1", "view", _at(1, 10), {}),
        ("u1", "remove", _at(1, 10, 30), {}),  # between view and add: excluded
        ("u1", "add", _at(1, 11), {}),
        ("u2", "view", _at(1, 10), {}),
        ("u2", "add", _at(1, 11), {}),
        ("u2", "remove", _at(1, 12), {}),  # after add: not between steps 1 and 2
        ("u3", "view", _at(1, 10), {}),
        ("u3", "remove", _at(1, 10, 5), {}),  # no add, inside the window: excluded
        ("u4", "view", _at(1, 10), {}),
        ("u4", "remove", _at(3, 10), {}),  # no add, outside the window: kept
    ]
    definition = FunnelDefinition(
        name="f",
        steps=["view", "add"],
        window_seconds=86400,
        exclusions=[{"event": "remove", "from_step": 1, "to_step": 2}],
    )
    persons = person_funnel(_table(rows), definition)
    excluded = dict(zip(persons.column("person_id").to_pylist(), persons.column("excluded").to_pylist(), strict=True))
    assert excluded == {"u1": True, "u2": False, "u3": True, "u4": False}
    assert aggregate_funnel(persons, definition).column("persons").to_pylist() == [2, 1]


def test_step_property_filters():
    rows = [
        ("u1", "Product Viewed", _at(1, 10), {"category": "shoes", "price": 1200}),
        ("u1", "Order Completed", _at(1, 11), {"revenue": 1200}),
        ("u2", "Product Viewed", _at(1, 10), {"category": "bags", "price": 400}),
        ("u2", "Order Completed", _at(1, 11), {"revenue": 400}),
        ("u3", "Product Viewed", _at(1, 10), {"category": "shoes", "price": 300}),
    ]
    definition = FunnelDefinition(
        name="f",
        steps=[
            {"event": "Product Viewed", "filters": [{"key": "properties.category", "op": "eq", "value": "shoes"}]},
            {"event": "Order Completed", "filters": [{"key": "properties.revenue", "op": "gte", "value": 1000}]},
        ],
        window_seconds=86400,
    )
    assert aggregate_funnel(person_funnel(_table(rows), definition), definition).column("persons").to_pylist() == [2, 1]


def test_unordered_counts_distinct_steps_in_one_window():
    rows = [
        ("u1", "c", _at(1, 10), {}),
        ("u1", "a", _at(1, 11), {}),
        ("u1", "b", _at(1, 12), {}),
        ("u2", "b", _at(1, 10), {}),
        ("u2", "a", _at(2, 11), {}),  # 25 h later: outside a 24 h window
        ("u3", "a", _at(1, 10), {}),
    ]
    definition = FunnelDefinition(name="f", steps=["a", "b", "c"], window_seconds=86400, mode="unordered")
    persons = person_funnel(_table(rows), definition)
    levels = dict(zip(persons.column("person_id").to_pylist(), persons.column("level").to_pylist(), strict=True))
    assert levels == {"u1": 3, "u2": 1, "u3": 1}


def test_tenants_are_separate_people_and_entry_days_use_local_time():
    a = _table([("u", "view", dt.datetime(2024, 3, 1, 20, 0, tzinfo=UTC), {})], tenant="acme-in")
    b = _table([("u", "view", dt.datetime(2024, 3, 1, 10, 0, tzinfo=UTC), {})], tenant="bloom-in")
    definition = FunnelDefinition(name="f", steps=["view", "add"], window_seconds=60)
    persons = person_funnel(pa.concat_tables([a, b]), definition)
    assert persons.num_rows == 2
    days = aggregate_entry_days(persons, definition).to_pylist()
    # 20:00 UTC on 1 March is 01:30 on 2 March in Asia/Kolkata
    assert [(d["tenant_id"], d["entry_date"], d["step"], d["persons"]) for d in days] == [
        ("acme-in", dt.date(2024, 3, 2), 1, 1),
        ("bloom-in", dt.date(2024, 3, 1), 1, 1),
    ]


def test_yaml_definitions(tmp_path):
    path = tmp_path / "funnels.yaml"
    path.write_text(
        """
funnels:
  - name: checkout
    steps: [Product Viewed, {event: Product Added}, Order Completed]
    window_seconds: 3600
    mode: strict_increase
    breakdown: channel
    attribution: step_2
    exclusions: [{event: Product Removed, from_step: 2, to_step: 3}]
"""
    )
    [f] = load_funnels(path)
    assert [s.event for s in f.steps] == ["Product Viewed", "Product Added", "Order Completed"]
    assert (f.mode, f.window_seconds, f.attribution, f.exclusions[0].to_step) == ("strict_increase", 3600, "step_2", 3)
    with pytest.raises(ValidationError):
        FunnelDefinition(name="x", steps=["a"], attribution="step_3")
    with pytest.raises(ValidationError):
        FunnelDefinition(name="x", steps=["a", "b"], mode="sideways")


# --- randomised comparisons against independent references ------------------------------------


def _reference_slots(events, n_steps, window, mode):
    """ClickHouse's algorithm written plainly for one person: events = [(ts, step or -1)]."""
    slots = [None] * n_steps  # (first_ts, last_ts)
    started = False
    for ts, k in sorted(events):
        if k == -1:  # a row matching no step only matters to strict_order
            if mode == "strict" and started:
                break
            continue
        if k == 0:
            slots[0] = (ts, ts)
            started = True
        elif mode == "strict" and started and slots[k - 1] is None:
            break
        elif slots[k - 1] is not None:
            first, last = slots[k - 1]
            if ts <= first + window and (mode != "strict_increase" or last < ts):
                slots[k] = (first, ts)
    return sum(s is not None for s in slots)


def _brute_force_chains(events, n_steps, window):
    """Default mode by definition: longest prefix of steps matched by an ordered chain inside the window."""
    pairs = sorted(events)
    best = 0
    for start in range(len(pairs)):
        if pairs[start][1] != 0:
            continue
        level, t0 = 1, pairs[start][0]
        for ts, k in pairs[start + 1 :]:
            if level < n_steps and k == level and ts <= t0 + window:
                level += 1
        best = max(best, level)
    return best


def _brute_force_unordered(events, n_steps, window):
    best = 0
    for t0, _ in events:
        inside = {k for ts, k in events if t0 <= ts <= t0 + window and k >= 0}
        best = max(best, len(inside))
    return best


def _random_people(rng, n_people, n_steps, with_other):
    person, ts, match_rows = [], [], []
    for p in range(n_people):
        for _ in range(rng.randint(0, 12)):
            person.append(p)
            ts.append(rng.randint(0, 30))
            row = [rng.random() < 0.3 for _ in range(n_steps)]
            if not with_other and not any(row):
                row[rng.randrange(n_steps)] = True
            match_rows.append(row)
    match = np.array(match_rows, dtype=bool).reshape(len(match_rows), n_steps)
    return np.array(person, dtype=np.int64), np.array(ts, dtype=np.int64), match


def _person_pairs(person, ts, match, p):
    out = []
    for i in np.flatnonzero(person == p):
        ks = np.flatnonzero(match[i])
        out += [(int(ts[i]), int(k)) for k in ks] if len(ks) else [(int(ts[i]), -1)]
    return out


@pytest.mark.parametrize("mode", ["ordered", "strict", "strict_increase", "unordered"])
def test_random_against_plain_reference(mode):
    rng = random.Random(f"funnel-{mode}")
    for _ in range(30):
        n_steps = rng.randint(1, 4)
        window = rng.randint(0, 12)
        n_people = rng.randint(1, 25)
        person, ts, match = _random_people(rng, n_people, n_steps, with_other=True)
        got = window_funnel_levels(person, ts, match, window, mode, n_persons=n_people).level.tolist()
        for p in range(n_people):
            pairs = _person_pairs(person, ts, match, p)
            if mode == "unordered":
                expected = _brute_force_unordered(pairs, n_steps, window)
            else:
                expected = _reference_slots(pairs, n_steps, window, mode)
            if mode == "ordered":
                assert _brute_force_chains([x for x in pairs if x[1] >= 0], n_steps, window) == expected
            assert got[p] == expected, (mode, p, pairs, window)


def _chdb_levels(person, ts, match, window, mode):
    n_steps = match.shape[1]
    table = pa.table(  # noqa: F841 - read by chdb through Python(table)
        {
            "p": pa.array(person, pa.int64()),
            "t": pa.array(ts, pa.uint64()),
            **{f"c{k}": pa.array(match[:, k].astype(np.uint8)) for k in range(n_steps)},
        }
    )
    mode_arg = {"ordered": "", "strict": ", 'strict_order'", "strict_increase": ", 'strict_increase'"}[mode]
    conds = ", ".join(f"c{k} = 1" for k in range(n_steps))
    sql = f"SELECT p, windowFunnel({window}{mode_arg})(t, {conds}) AS level FROM Python(table) GROUP BY p ORDER BY p"
    lines = str(chdb.query(sql, "CSV")).split()
    return {int(p): int(level) for p, level in (line.split(",") for line in lines)}


@pytest.mark.skipif(chdb is None, reason="chdb (embedded ClickHouse) not installed")
@pytest.mark.parametrize("mode", ["ordered", "strict", "strict_increase"])
def test_random_against_clickhouse_window_funnel(mode):
    rng = random.Random(f"chdb-{mode}")
    for _ in range(15):
        n_steps = rng.randint(2, 5)
        window = rng.randint(0, 15)
        n_people = 60
        person, ts, match = _random_people(rng, n_people, n_steps, with_other=mode == "strict")
        got = window_funnel_levels(person, ts, match, window, mode, n_persons=n_people).level
        expected = _chdb_levels(person, ts, match, window, mode)
        for p in range(n_people):
            assert got[p] == expected.get(p, 0), (mode, p, _person_pairs(person, ts, match, p), window)


def test_random_large_batch_is_consistent_with_person_by_person():
    """The vectorised batch gives every person the level it gets when computed alone."""
    rng = random.Random(7)
    person, ts, match = _random_people(rng, 200, 3, with_other=True)
    for mode in ("ordered", "strict", "strict_increase", "unordered"):
        together = window_funnel_levels(person, ts, match, 10, mode, n_persons=200)
        for p in itertools.islice(range(200), 0, 200, 17):
            rows = person == p
            alone = window_funnel_levels(np.zeros(rows.sum(), dtype=np.int64), ts[rows], match[rows], 10, mode, 1)
            assert alone.level[0] == together.level[p]


@pytest.mark.parametrize("reverse", [False, True])
def test_equal_timestamps_are_ordered_by_message_id_whatever_the_input_order(reverse):
    # two step-1 rows at the same instant: the later one in (ts, step, message_id) order starts the
    # counted chain (latest start), so first-touch attribution takes message "m-b"'s source
    rows = [
        ("u", "view", _at(1, 10), {"src": "from-a"}, "m-a"),
        ("u", "view", _at(1, 10), {"src": "from-b"}, "m-b"),
        ("u", "add", _at(1, 11), {}, "m-c"),
    ]
    if reverse:
        rows = rows[::-1]
    definition = FunnelDefinition(name="f", steps=["view", "add"], window_seconds=3600, breakdown="properties.src")
    persons = person_funnel(_table(rows), definition)
    assert persons.column("breakdown_value").to_pylist() == ["from-b"]
    assert persons.column("level").to_pylist() == [2]


# --- entry cut-off (reading past the end date so that late chains complete) ---------------------


def test_entry_mask_ordered_and_strict():
    # window 10; rows at t >= 10 may not start chains
    person, ts, events = [0, 0, 0], [0, 10, 11], list("aab")
    match = np.column_stack([np.array(events) == c for c in "ab"])
    mask = np.array(ts) < 10
    # ordered: without the cut-off a@10 restarts and b@11 converts; with it, only the chain from a@0 exists
    assert window_funnel_levels(np.array(person), np.array(ts), match, 10).level.tolist() == [2]
    assert window_funnel_levels(np.array(person), np.array(ts), match, 10, entry_mask=mask).level.tolist() == [1]
    # strict: a step-1 row after the cut-off is ignored, it does not break the chain
    ts2 = [0, 5, 6]
    got = window_funnel_levels(
        np.array(person), np.array(ts2), match, 10, "strict", entry_mask=np.array([1, 0, 0], bool)
    )
    assert got.level.tolist() == [2]
    # a person whose only step-1 rows are after the cut-off is not in the funnel
    got = window_funnel_levels(np.array([0, 0]), np.array([12, 13]), match[1:], 10, entry_mask=np.array([0, 0], bool))
    assert got.level.tolist() == [0]


@pytest.mark.parametrize("mode", ["ordered", "strict_increase", "unordered"])
def test_random_entry_mask_equals_masking_step_one(mode):
    """Outside strict mode, a row that may not enter is a row that does not match step 1 (for unordered: no anchor)."""
    rng = random.Random(f"entry-{mode}")
    for _ in range(20):
        n_steps = rng.randint(2, 4)
        person, ts, match = _random_people(rng, 20, n_steps, with_other=False)
        if len(ts) == 0:
            continue
        cutoff = rng.randint(0, 30)
        mask = ts < cutoff
        got = window_funnel_levels(person, ts, match, 8, mode, n_persons=20, entry_mask=mask).level.tolist()
        if mode == "unordered":
            expected = []
            for p in range(20):
                rows = np.flatnonzero(person == p)
                best = 0
                for i in rows:
                    if mask[i] and match[i].any():
                        inside = rows[(ts[rows] >= ts[i]) & (ts[rows] <= ts[i] + 8)]
                        best = max(best, int(match[inside].any(axis=0).sum()))
                expected.append(best)
        else:
            masked = match.copy()
            masked[:, 0] &= mask
            expected = window_funnel_levels(person, ts, masked, 8, mode, n_persons=20).level.tolist()
        assert got == expected


def test_random_counts_and_conversion_times_against_duckdb():
    """Persons per step and the counted chain's conversion times, with many equal timestamps."""
    rng = random.Random(99)
    steps = ["view", "add", "buy"]
    rows = []
    for tenant in ("acme-in", "bloom-in"):
        for p in range(150):
            t = _at(1, 0) + dt.timedelta(minutes=rng.randrange(3000))
            for _ in range(rng.randint(1, 12)):
                rows.append((f"p{p}", rng.choice([*steps, "view", "other"]), t, {}, f"{tenant}-{len(rows)}", tenant))
                t += dt.timedelta(minutes=rng.choice([0, 0, 1, 7, 60, 600]))
    table = pa.concat_tables(
        [_table([r[:5] for r in rows if r[5] == tenant], tenant=tenant) for tenant in ("acme-in", "bloom-in")]
    )
    definition = FunnelDefinition(name="f", steps=steps, window_seconds=7200)
    got = funnel_step_rows(aggregate_funnel(person_funnel(table, definition), definition))
    expected = duckdb_funnel_steps(table, steps, 7200)
    assert [g[:3] for g in got] == [e[:3] for e in expected]
    for g, e in zip(got, expected, strict=True):
        for a, b in zip(g[3:], e[3:], strict=True):
            assert (a is None and b is None) or a == pytest.approx(b, rel=1e-9), (g, e)


def test_bucketing_keeps_every_row_once_and_a_person_in_one_bucket():
    from transforms.funnels import bucket_lake_batch, partition_of_path, person_buckets

    path = "s3://lake/events/tenant_id=acme-in/event_date=2026-10-02/part-00000.parquet"
    assert partition_of_path(path) == ("acme-in", dt.date(2026, 10, 2))
    rows = [(f"p{i % 37}", ["view", "add", "other"][i % 3], _at(1, 0, i % 60), {}) for i in range(300)]
    table = _table(rows).drop_columns(["tenant_id"])
    pieces = bucket_lake_batch(path, table, buckets=5, events=["view", "add"])
    assert {key[0] for key, _ in pieces} == {"acme-in"}
    assert sum(t.num_rows for _, t in pieces) == sum(1 for r in rows if r[1] != "other")
    seen: dict[str, int] = {}
    for (_, bucket), piece in pieces:
        for person in piece.column("person_id").to_pylist():
            assert seen.setdefault(person, bucket) == bucket
    # the bucket of an id does not depend on what else is in the batch (stable across files and workers)
    alone = person_buckets(pa.array(["p3"]), 5)[0]
    assert alone == seen["p3"] == person_buckets(pa.array(["zz", "p3", "p3"]), 5)[1]
    # events_from: rows of an event kept only from a partition date on
    assert bucket_lake_batch(path, table, 5, ["view"], events_from={"view": dt.date(2026, 10, 3)}) == []


def test_random_exclusions_against_duckdb():
    """Exclusion between steps 1 and 3 of the counted chain (ordered mode), person by person, vs SQL."""
    rng = random.Random(5)
    steps = ["view", "add", "buy"]
    rows = []
    for p in range(200):
        t = _at(1, 0) + dt.timedelta(minutes=rng.randrange(3000))
        for _ in range(rng.randint(1, 10)):
            rows.append((f"p{p}", rng.choice([*steps, "remove", "other"]), t, {}))
            t += dt.timedelta(minutes=rng.choice([0, 1, 7, 60, 600]))
    table = _table(rows)
    definition = FunnelDefinition(
        name="f", steps=steps, window_seconds=7200, exclusions=[{"event": "remove", "from_step": 1, "to_step": 3}]
    )
    mine = person_funnel(table, definition)
    got = {
        (p, lv, ex)
        for p, lv, ex in zip(
            mine.column("person_id").to_pylist(),
            mine.column("level").to_pylist(),
            mine.column("excluded").to_pylist(),
            strict=True,
        )
    }
    w = 7200 * 10**6
    tbl = table  # noqa: F841 - read by DuckDB's replacement scan
    sql = f"""
    WITH ev AS (SELECT person_id, event, epoch_us(timestamp) AS ts FROM tbl),
    s1 AS (SELECT person_id, ts AS t1 FROM ev WHERE event = 'view'),
    s2 AS (SELECT person_id, ts FROM ev WHERE event = 'add'),
    s3 AS (SELECT person_id, ts FROM ev WHERE event = 'buy'),
    c2 AS (SELECT s1.*, s2.ts AS t2 FROM s1 ASOF LEFT JOIN s2 ON s1.person_id = s2.person_id AND s2.ts >= s1.t1),
    c3 AS (SELECT c2.*, s3.ts AS t3 FROM c2 ASOF LEFT JOIN s3 ON c2.person_id = s3.person_id AND s3.ts >= c2.t2),
    chains AS (SELECT *, CASE WHEN t2 IS NULL OR t2 > t1 + {w} THEN 1
                              WHEN t3 IS NULL OR t3 > t1 + {w} THEN 2 ELSE 3 END AS level FROM c3),
    best AS (SELECT person_id, arg_min({{'level': level, 't1': t1, 't3': t3}},
                    {{'l': -level, 'reach': CASE level WHEN 1 THEN t1 WHEN 2 THEN t2 ELSE t3 END, 's': -t1}}) AS c
             FROM chains GROUP BY ALL)
    SELECT person_id, c.level,
           EXISTS (SELECT 1 FROM ev x WHERE x.person_id = b.person_id AND x.event = 'remove' AND x.ts > c.t1
                   AND (CASE WHEN c.level >= 3 THEN x.ts < c.t3 ELSE x.ts <= c.t1 + {w} END))
    FROM best b"""
    expected = {(p, lv, ex) for p, lv, ex in duckdb.sql(sql).fetchall()}
    assert any(ex for _, _, ex in expected) and not all(ex for _, _, ex in expected)
    assert got == expected


def test_bucketing_leaves_out_rows_without_a_person_and_counts_them():
    from transforms.funnels import bucket_lake_batch, person_buckets

    path = "lake/events/tenant_id=acme-in/event_date=2026-10-02/part-00000.parquet"
    rows = [(f"p{i % 7}", ["view", "add", "other"][i % 3], _at(1, 0, i % 60), {}) for i in range(60)]
    table = _table(rows).drop_columns(["tenant_id"])
    ids = table.column("person_id").to_pylist()
    nulled = [i for i in range(len(ids)) if i % 5 == 0]
    table = table.set_column(
        table.column_names.index("person_id"),
        "person_id",
        pa.array([None if i in nulled else p for i, p in enumerate(ids)], pa.string()),
    )
    counted: list[int] = []
    pieces = bucket_lake_batch(path, table, 4, ["view", "add"], without_person=counted.append)
    kept = [p for t in (piece for _, piece in pieces) for p in t.column("person_id").to_pylist()]
    assert None not in kept
    assert counted == [sum(1 for i in nulled if rows[i][1] != "other")]
    assert len(kept) == sum(1 for i, r in enumerate(rows) if r[1] != "other" and i not in nulled)
    with pytest.raises(ValueError, match="null person id"):
        person_buckets(pa.array(["p1", None]), 4)
