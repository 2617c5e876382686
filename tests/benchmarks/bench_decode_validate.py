"""Micro-benchmark: decode → validate → normalize on ~100k generated typical events, in a plain loop.

    pytest tests/benchmarks/bench_decode_validate.py -m benchmark -s
    python tests/benchmarks/bench_decode_validate.py [EVENTS]

Prints events/s per stage (cumulative; CPU time of this process, best of 3, so that other work on a
shared machine inflates the figures less than wall time would) and two baselines measured in the same run: the JSON
parse alone with the standard library vs orjson (why decode uses orjson), and a naive
``json.loads`` + ``Event.model_validate`` loop (what the contract check costs at a minimum).
"""

from __future__ import annotations

import datetime as dt
import gc
import json
import os
import sys
import time
from collections.abc import Callable, Sequence

import apache_beam  # noqa: F401  (a worker's heap: the GC figures depend on it)
import orjson
import pytest

from connectors.synthetic import generate_events
from schemas.events import Event
from schemas.failures import FailedEvent
from schemas.tracking_plan import TrackingPlans
from transforms.decode import RawEvent, decode_record
from transforms.normalize import normalize_event
from transforms.validate import ValidEvent, validate_event

EVENTS = int(os.environ.get("LIVORA_BENCH_EVENTS", "100000"))
PLANS_DIR = os.path.join(os.path.dirname(__file__), "..", "..", "schemas", "tracking_plans")


def _timed(label: str, records: Sequence[bytes], fn: Callable[[Sequence[bytes]], int], repeat: int = 3) -> float:
    best = float("inf")
    kept = 0
    for _ in range(repeat):
        start = time.process_time()
        kept = fn(records)
        best = min(best, time.process_time() - start)
    rate = len(records) / best
    print(f"  {label:<44} {rate:>10,.0f} events/s  {best / len(records) * 1e6:6.2f} µs/event  ({kept:,} kept)")
    return rate


def run(n: int = EVENTS) -> dict[str, float]:
    records = list(generate_events(n, seed=7))
    plans = TrackingPlans.load(PLANS_DIR)
    now = dt.datetime.now(dt.UTC)
    max_future = dt.timedelta(hours=24)

    def stdlib_parse(rs):
        return sum(1 for r in rs if isinstance(_try(json.loads, r), dict))

    def orjson_parse(rs):
        return sum(1 for r in rs if isinstance(_try(orjson.loads, r), dict))

    def naive(rs):
        ok = 0
        for r in rs:
            data = _try(json.loads, r)
            if isinstance(data, dict) and isinstance(_try(Event.model_validate, data), Event):
                ok += 1
        return ok

    def decode_only(rs):
        return sum(isinstance(o, RawEvent) for r in rs for o in decode_record(r, source_ref="bench"))

    def decode_validate(rs):
        ok = 0
        for r in rs:
            for raw in decode_record(r, source_ref="bench"):
                if isinstance(raw, RawEvent) and isinstance(validate_event(raw, plans), ValidEvent):
                    ok += 1
        return ok

    def full(rs):
        ok = 0
        for r in rs:
            for raw in decode_record(r, source_ref="bench"):
                if isinstance(raw, FailedEvent):
                    continue
                valid = validate_event(raw, plans)
                if isinstance(valid, ValidEvent) and isinstance(
                    normalize_event(valid, now=now, max_future=max_future), ValidEvent
                ):
                    ok += 1
        return ok

    def batched(rs, size=2000):
        """As the Beam composites run it: each batch's outputs stay alive until the batch is done."""
        ok = 0
        for begin in range(0, len(rs), size):
            kept = []
            for r in rs[begin : begin + size]:
                for raw in decode_record(r, source_ref="bench"):
                    if isinstance(raw, FailedEvent):
                        continue
                    valid = validate_event(raw, plans)
                    if isinstance(valid, ValidEvent):
                        valid = normalize_event(valid, now=now, max_future=max_future)
                    kept.append(valid)
            ok += sum(isinstance(v, ValidEvent) for v in kept)
        return ok

    print(
        f"\n{len(records):,} generated records ({sum(map(len, records)) / len(records):.0f} bytes on average), 1 core"
    )
    rates = {
        "json.loads": _timed("baseline: json.loads", records, stdlib_parse),
        "orjson.loads": _timed("baseline: orjson.loads", records, orjson_parse),
        "naive": _timed("baseline: json.loads + Event.model_validate", records, naive),
        "decode": _timed("decode_record", records, decode_only),
        "decode+validate": _timed("decode_record + validate_event (plans)", records, decode_validate),
        "decode+validate+normalize": _timed("decode + validate + normalize", records, full),
        "batched": _timed("same, outputs kept per 2000-record batch", records, batched),
    }
    # A worker's heap (Beam, pyarrow, phonenumbers metadata) makes the cyclic GC's scans costly once batches
    # keep the pydantic models alive; freezing the setup-time heap and a larger gen-0 threshold avoid most
    # of it. (Keeping flat row dicts instead, as transforms.pipeline_core does, avoids most of it as well.)
    threshold = gc.get_threshold()
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)
    try:
        rates["batched, gc tuned"] = _timed("same, gc.freeze() + gen-0 threshold 50k", records, batched)
    finally:
        gc.set_threshold(*threshold)
        gc.unfreeze()
    print(
        f"  orjson/json parse: {rates['orjson.loads'] / rates['json.loads']:.1f}x;"
        f" full path vs naive parse+validate: {rates['decode+validate+normalize'] / rates['naive']:.2f}x;"
        f" gc tuning on batches: {rates['batched, gc tuned'] / rates['batched']:.2f}x"
    )
    return rates


def _try(fn, arg):
    try:
        return fn(arg)
    except ValueError:
        return None


@pytest.mark.benchmark
def test_decode_validate_normalize_throughput():
    rates = run(EVENTS)
    assert rates["decode+validate+normalize"] > 0
    assert rates["orjson.loads"] > rates["json.loads"]


if __name__ == "__main__":
    run(int(sys.argv[1]) if len(sys.argv) > 1 else EVENTS)
