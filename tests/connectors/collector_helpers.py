"""Shared by the collector tests: serve an app on a real socket, read a whole stream back."""

from __future__ import annotations

import contextlib
import threading
import time
import urllib.request
from collections.abc import Iterator

import orjson

from infra.local_stack import free_port


@contextlib.contextmanager
def serving(app) -> Iterator[str]:
    """Run ``app`` under uvicorn in a thread on 127.0.0.1; yields its base URL; drains and stops on exit."""
    import uvicorn

    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, lifespan="on", access_log=False, log_config=None)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    wait_healthy(url, 20)
    try:
        yield url
    finally:
        server.should_exit = True
        thread.join(30)


def wait_healthy(url: str, timeout: float, proc=None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"collector exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"{url}/health not 200 after {timeout}s")


def read_stream(client, stream: str) -> list[tuple[str, bytes]]:
    """Every record on every shard, from the start: (partition key, data)."""
    out = []
    shards = client.list_shards(StreamName=stream)["Shards"]
    for shard in shards:
        iterator = client.get_shard_iterator(
            StreamName=stream, ShardId=shard["ShardId"], ShardIteratorType="TRIM_HORIZON"
        )["ShardIterator"]
        while iterator:
            page = client.get_records(ShardIterator=iterator, Limit=10_000)
            out.extend((r["PartitionKey"], r["Data"]) for r in page["Records"])
            if not page["Records"] or page.get("MillisBehindLatest", 0) == 0:
                break
            iterator = page.get("NextShardIterator")
    return out


def stream_events(client, stream: str) -> list[dict]:
    return [orjson.loads(data) for _, data in read_stream(client, stream)]


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample in Prometheus text (0 when absent)."""
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        head, _, value = line.rpartition(" ")
        sample, _, rest = head.partition("{")
        got = ",".join(sorted(p for p in rest.rstrip("}").split(",") if p)) if rest else ""
        if sample == name and got == want:
            return float(value)
    return 0.0
