"""The batch parse step equals the per-event one: same rows, same failures, on any mix of good and bad input.

The per-event path (``parse_mode="per_event"``) is the reference: the batch path may only be faster.
Inputs are the synthetic generator's events mutated at random (hypothesis): fields removed or replaced
by values of the wrong type, odd timestamps, currencies, amounts, ids, contexts, webhook and batch
wrappers, and bytes that are not JSON at all.
"""

from __future__ import annotations

import copy
import datetime as dt
import functools
import json
from typing import Any

import orjson
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from connectors.synthetic import generate_events
from pipelines.options import DEFAULT_PLANS
from schemas.dict_validators import dict_validator
from schemas.events import Event, shape_error
from schemas.records import SourceRecord
from schemas.tracking_plan import TrackingPlans
from transforms.enrich import EnrichConfig, PiiPolicy
from transforms.pipeline_core import EventParser, ProcessConfig, parse_to_table

NOW = dt.datetime(2026, 11, 1, 12, tzinfo=dt.UTC)
BASE = [orjson.loads(record) for record in generate_events(60, seed=3, bad_fraction=0.0, duplicate_fraction=0.0)]
PII = {
    "bloom-in": PiiPolicy(hash_fields=["traits.email", "context.ip"], drop_fields=["properties.phone"]),
    "acme-in": PiiPolicy(hash_identifiers=False, hash_fields=[]),
}

PATHS = [
    ("type",),
    ("messageId",),
    ("message_id",),
    ("tenantId",),
    ("userId",),
    ("user_id",),
    ("anonymousId",),
    ("previousId",),
    ("groupId",),
    ("event",),
    ("name",),
    ("source",),
    ("timestamp",),
    ("sentAt",),
    ("originalTimestamp",),
    ("receivedAt",),
    ("properties",),
    ("properties", "currency"),
    ("properties", "revenue"),
    ("properties", "total"),
    ("properties", "value"),
    ("properties", "amount"),
    ("properties", "products"),
    ("properties", "email"),
    ("properties", "phone"),
    ("properties", "order_id"),
    ("properties", "url"),
    ("traits",),
    ("traits", "email"),
    ("traits", "phone"),
    ("context",),
    ("context", "ip"),
    ("context", "userAgent"),
    ("context", "user_agent"),
    ("context", "page"),
    ("context", "page", "url"),
    ("context", "page", "referrer"),
    ("context", "campaign"),
    ("context", "campaign", "source"),
    ("context", "locale"),
    ("context", "traits"),
    ("batch",),
    ("_webhook",),
]
SPECIAL = st.sampled_from(
    [
        None,
        "",
        "track",
        "identify",
        "page",
        "alias",
        "group",
        "Track",
        "Order Completed",
        "Checkout Started",
        "Order Refunded",
        "Products Searched",
        "Payment Captured",
        "inr",
        "USD",
        "EUR",
        "ZZZ",
        "usd ",
        ["INR"],
        "1999.50",
        "lots",
        -5,
        10**20,
        1e300,
        "2026-10-30T10:00:00Z",
        "2026-10-30T10:00:00+05:30",
        "2026-10-30T10:00:00",
        "2027-06-01T00:00:00Z",
        "0001-01-01T00:00:00Z",
        "1970-01-01T00:00:00Z",
        "yesterday",
        1_761_800_000,
        "Person@Example.COM ",
        "+91 98765 43210",
        "98765",
        "https://shop.example.in/p?utm_source=google&utm_medium=cpc",
        "https://www.google.com/search?q=x",
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 Chrome/120.0 Safari/537.36",
        "Googlebot/2.1 (+http://www.google.com/bot.html)",
        "103.21.244.10",
        "::1",
        "acme-in",
        "../../etc",
        "x" * 300,
        {"url": 5},
        {"source": ["a"]},
        [{"price": "12.5", "quantity": 2}, {"price": "bad"}],
        [{"quantity": -1}],
        {},
    ]
)
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=6,
)
MUTATION = st.tuples(st.sampled_from(PATHS), st.booleans(), st.one_of(SPECIAL, SPECIAL, JSON))
RAW = st.sampled_from([b"", b"{", b"not json", b"\xff\xfe{}", b"[1, 2]", b'{"batch": []}', b"{}", b"null"])


def _mutated(base: dict, mutations: list) -> dict:
    event = copy.deepcopy(base)
    for path, delete, value in mutations:
        node: Any = event
        for key in path[:-1]:
            if not isinstance(node, dict):
                break
            node = node.setdefault(key, {})
        if not isinstance(node, dict):
            continue
        if delete:
            node.pop(path[-1], None)
        else:
            node[path[-1]] = value
    return event


RECORD = st.one_of(
    st.tuples(st.sampled_from(range(len(BASE))), st.lists(MUTATION, max_size=4)).map(
        lambda pick: json.dumps(_mutated(BASE[pick[0]], pick[1])).encode()  # integers beyond 64 bits too
    ),
    RAW,
)


def _both(records: list[bytes], **config: Any) -> tuple[tuple[pa.Table, list], tuple[pa.Table, list]]:
    sources = [
        SourceRecord(payload, f"file:/in/t.ndjson:{line}", NOW if line % 3 == 0 else None)
        for line, payload in enumerate(records, 1)
    ]
    frozen = tuple(sorted((key, json.dumps(value)) for key, value in config.items()))
    return tuple(parse_to_table(sources, _parser(mode, frozen), NOW) for mode in ("per_event", "batch"))


@functools.cache
def _parser(mode: str, config: tuple) -> EventParser:
    """One parser per (mode, config) for the whole module: its caches only make repeats cheaper."""
    extra = {key: json.loads(value) for key, value in config}
    return EventParser(
        ProcessConfig(enrich=EnrichConfig(pii_secret="s" * 32, pii=PII), now=NOW, parse_mode=mode, **extra)
    )


def _assert_same(reference: tuple[pa.Table, list], batch: tuple[pa.Table, list]) -> None:
    (want_rows, want_failures), (got_rows, got_failures) = reference, batch
    order = [("_source_ref", "ascending")]
    assert got_rows.schema == want_rows.schema
    assert got_rows.sort_by(order).to_pylist() == want_rows.sort_by(order).to_pylist()
    drop = {"failed_at"}
    assert [f.model_dump(exclude=drop) for f in got_failures] == [f.model_dump(exclude=drop) for f in want_failures]


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.lists(RECORD, min_size=1, max_size=25))
def test_batch_path_gives_the_per_event_rows_and_failures(records):
    _assert_same(*_both(records))


def test_the_synthetic_corpus_is_parsed_identically():
    records = list(generate_events(3000, seed=11))
    reference, batch = _both(records)
    assert reference[0].num_rows > 2500 and reference[1]  # the corpus holds both kinds
    _assert_same(reference, batch)


def test_tenant_assignment_by_write_key_is_the_same(tmp_path):
    records = [
        orjson.dumps({k: v for k, v in event.items() if k != "tenantId"} | {"writeKey": "wk-1"}) for event in BASE
    ]
    records += [orjson.dumps(BASE[0] | {"writeKey": "unknown"})]
    reference, batch = _both(records, write_keys={"wk-1": "acme-in"})
    assert reference[0].num_rows == len(BASE)
    _assert_same(reference, batch)


@pytest.mark.parametrize("mode", ["allow", "warn", "block"])
def test_tracking_plans_are_applied_on_the_batch_path(tmp_path, mode):
    for tenant in ("acme-in", "bloom-in"):
        (tmp_path / f"{tenant}.yaml").write_text(
            f"tenant_id: {tenant}\nmode: {mode}\nallow_unplanned_events: false\nevents:\n"
            "  Product Viewed:\n    required: [coupon]\n    properties:\n      price: string\n"
        )
    TrackingPlans.load(str(tmp_path))  # the plans are valid
    reference, batch = _both([orjson.dumps(e) for e in BASE], tracking_plans_dir=str(tmp_path))
    if mode == "block":
        assert any(f.reason.value == "plan_violation" for f in reference[1])
    else:
        assert any(v is not None for v in reference[0].column("plan_violations").to_pylist())
    _assert_same(reference, batch)


def test_the_project_tracking_plans_give_the_same_rows():
    """The plans ingest uses by default (schemas/tracking_plans) cover the synthetic tenants."""
    records = list(generate_events(2000, seed=5))
    reference, batch = _both(records, tracking_plans_dir=DEFAULT_PLANS)
    assert TrackingPlans.load(DEFAULT_PLANS).for_tenant("acme-in") is not None
    _assert_same(reference, batch)


@settings(max_examples=300, deadline=None)
@given(st.lists(MUTATION, max_size=4), st.sampled_from(range(len(BASE))))
def test_the_dict_mirror_accepts_what_the_model_accepts(mutations, pick):
    data = _mutated(BASE[pick], mutations)
    try:
        model = Event.model_validate(data)
    except Exception:
        model = None
    try:
        plain = dict_validator(Event).validate_python(data)
        if shape_error(
            plain["type"],
            plain.get("user_id"),
            plain.get("anonymous_id"),
            plain.get("event"),
            plain.get("previous_id"),
            plain.get("group_id"),
        ):
            plain = None
    except Exception:
        plain = None
    assert (model is None) == (plain is None)
    if model is not None:
        dumped = model.model_dump()
        for key in ("type", "message_id", "tenant_id", "user_id", "timestamp", "sent_at", "properties", "traits"):
            assert plain.get(key, dumped[key] if key in ("properties", "traits") else None) == dumped[key]


@pytest.mark.parametrize("mode", ["per_event", "batch"])
def test_an_unhashable_currency_on_an_open_model_is_a_dead_letter(mode):
    event = {**BASE[0], "type": "track", "event": "Products Searched", "properties": {"currency": ["INR"]}}
    process = ProcessConfig(enrich=EnrichConfig(pii_secret="s" * 32), now=NOW, parse_mode=mode)
    rows, failures = parse_to_table([SourceRecord(orjson.dumps(event), "file:x:1")], EventParser(process), NOW)
    assert rows.num_rows == 0 and [f.reason.value for f in failures] == ["unknown_currency"]
