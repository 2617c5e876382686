"""Benchmark: the HTTP collector on loopback, load from a separate process.

    pytest tests/benchmarks/bench_collector.py -m benchmark -s
    LIVORA_BENCH_COLLECT_SECONDS=60 LIVORA_BENCH_COLLECT_MOTO_SECONDS=20 pytest ... (the defaults)

Four runs, each against a fresh ``python -m pipelines.collect`` process:

(a) ``/v1/batch`` with 100 events a request, sustained, behind a Kinesis stand-in that costs nothing
    (``--null-sink``): what the collector itself can do; events/s and request p50/p99;
(b) single-event ``/v1/track``, same stand-in: requests/s, p50/p99;
(c), (d) the same two against the moto server's Kinesis (``--aws-profile local``);
and the moto server's own ceiling: PutRecords of 500 records from 4 threads, no collector.

The load generator is an aiohttp client in another process (64 connections, keep-alive), so on this
2-core machine the collector gets one core and the client the other.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing as mp
import os
import subprocess
import sys
import threading
import time
import uuid

import pytest

from infra.local_stack import free_port
from tests.connectors.collector_helpers import wait_healthy
from tests.connectors.kinesis_helpers import make_stream

pytestmark = pytest.mark.benchmark

SECONDS = float(os.environ.get("LIVORA_BENCH_COLLECT_SECONDS", "60"))
MOTO_SECONDS = float(os.environ.get("LIVORA_BENCH_COLLECT_MOTO_SECONDS", "20"))
CONNECTIONS = int(os.environ.get("LIVORA_BENCH_COLLECT_CONNECTIONS", "64"))
AUTH = "Basic d2tfYmVuY2g6"  # "wk_bench:"


def _bodies(kind: str, n: int = 64) -> list[bytes]:
    def event(i: int) -> dict:
        return {
            "type": "track",
            "event": "Product Viewed",
            "anonymousId": f"anon-{i % 5000}",
            "messageId": str(uuid.uuid4()),
            "timestamp": "2026-10-01T10:00:00Z",
            "properties": {"product_id": f"p-{i % 300}", "price": 499.0, "currency": "INR", "category": "kurta"},
            "context": {"page": {"path": "/p/kurta", "url": "https://acme.in/p/kurta"}, "userAgent": "Mozilla/5.0"},
        }

    if kind == "batch":
        return [json.dumps({"batch": [event(b * 100 + i) for i in range(100)]}).encode() for b in range(n)]
    return [json.dumps(event(i)).encode() for i in range(n)]


def _load(url: str, path: str, bodies: list[bytes], seconds: float, connections: int, out) -> None:
    """Closed-loop load: ``connections`` clients, each POSTing the next body as soon as it has its answer."""
    import aiohttp

    async def main() -> dict:
        latencies: list[float] = []
        statuses: dict[int, int] = {}
        deadline = time.monotonic() + seconds
        connector = aiohttp.TCPConnector(limit=connections)
        headers = {"Authorization": AUTH, "Content-Type": "application/json"}
        async with aiohttp.ClientSession(connector=connector, headers=headers) as session:

            async def worker(w: int) -> None:
                i = w
                while time.monotonic() < deadline:
                    started = time.perf_counter()
                    async with session.post(url + path, data=bodies[i % len(bodies)]) as response:
                        await response.read()
                    latencies.append(time.perf_counter() - started)
                    statuses[response.status] = statuses.get(response.status, 0) + 1
                    i += connections

            started = time.monotonic()
            await asyncio.gather(*(worker(w) for w in range(connections)))
            elapsed = time.monotonic() - started
        latencies.sort()
        return {
            "requests": len(latencies),
            "seconds": elapsed,
            "statuses": statuses,
            "p50_ms": 1000 * latencies[len(latencies) // 2],
            "p99_ms": 1000 * latencies[int(len(latencies) * 0.99)],
        }

    out.put(asyncio.run(main()))


def _run_load(url: str, path: str, bodies: list[bytes], seconds: float) -> dict:
    queue = mp.get_context("spawn").Queue()
    proc = mp.get_context("spawn").Process(target=_load, args=(url, path, bodies, seconds, CONNECTIONS, queue))
    proc.start()
    result = queue.get(timeout=seconds + 120)
    proc.join(30)
    return result


def _collector(tmp_path, *extra: str) -> tuple[subprocess.Popen, str]:
    keys = tmp_path / "keys.json"
    keys.write_text(json.dumps({"wk_bench": "bench-co"}))
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipelines.collect", "--port", str(port), "--write-keys", str(keys),
         "--log-level", "WARNING", "--max-connections", "2000", *extra],
        env={**os.environ, "PYTHONPATH": os.getcwd()},
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    wait_healthy(url, 60, proc)
    return proc, url


def _report(label: str, result: dict, events_per_request: int) -> float:
    rps = result["requests"] / result["seconds"]
    ok = result["statuses"].get(200, 0)
    print(
        f"{label}: {rps:,.0f} requests/s = {rps * events_per_request:,.0f} events/s over {result['seconds']:.0f}s, "
        f"p50 {result['p50_ms']:.1f} ms, p99 {result['p99_ms']:.1f} ms, statuses {result['statuses']}"
    )
    assert ok == result["requests"], result["statuses"]
    return rps * events_per_request


def _moto_ceiling(aws, seconds: float = 10.0, threads: int = 4) -> float:
    client = make_stream(aws, "ceiling", 4)
    records = [{"Data": b"x" * 400, "PartitionKey": f"k{i}"} for i in range(500)]
    done = [0] * threads
    deadline = time.monotonic() + seconds

    def run(t: int) -> None:
        while time.monotonic() < deadline:
            client.put_records(StreamName="ceiling", Records=records)
            done[t] += 500

    workers = [threading.Thread(target=run, args=(t,)) for t in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    rate = sum(done) / seconds
    print(f"moto server ceiling: PutRecords x500 from {threads} threads: {rate:,.0f} records/s")
    return rate


def test_collector_throughput(aws, tmp_path):
    batch, single = _bodies("batch"), _bodies("track")
    results = {}
    proc, url = _collector(tmp_path, "--stream", "none", "--null-sink")
    try:
        results["batch_null"] = _report(
            "(a) /v1/batch x100, null sink", _run_load(url, "/v1/batch", batch, SECONDS), 100
        )
        results["track_null"] = _report("(b) /v1/track, null sink", _run_load(url, "/v1/track", single, 20), 1)
    finally:
        proc.terminate()
        proc.wait(30)
    make_stream(aws, "bench", 4)
    proc, url = _collector(
        tmp_path, "--stream", "bench", "--aws-profile", "local", "--aws-endpoint-url", aws.endpoint_url
    )
    try:
        results["batch_moto"] = _report(
            "(c) /v1/batch x100, moto Kinesis", _run_load(url, "/v1/batch", batch, MOTO_SECONDS), 100
        )
        results["track_moto"] = _report(
            "(d) /v1/track, moto Kinesis", _run_load(url, "/v1/track", single, MOTO_SECONDS), 1
        )
    finally:
        proc.terminate()
        proc.wait(30)
    results["moto_ceiling"] = _moto_ceiling(aws)
    print(json.dumps({k: round(v) for k, v in results.items()}))
    assert results["batch_null"] >= 10_000, "target: 10,000 events/s through /v1/batch"
