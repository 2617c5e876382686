"""``python -m pipelines.collect`` as a process: Segment library and a signed webhook → Kinesis → the lake,
graceful shutdown, and kill -9 while a client sends (every acknowledged event is in the lake exactly once after
restart, spool re-send and the stream pipeline)."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid

import duckdb
import httpx
import pytest

from connectors.kinesis import default_kinesis_client
from connectors.lake import read_dead_letters, read_events
from infra.local_stack import free_port
from infra.resources import StreamingResources, create_streaming_resources
from pipelines import cli
from tests.connectors.collector_helpers import metric, read_stream, wait_healthy
from tests.stream_runs import run_stream_pass
from transforms.webhooks import sign

pytestmark = [pytest.mark.integration, pytest.mark.slow]

WRITE_KEYS = {"wk_acme_live": "acme-in", "wk_beta_live": "beta-co"}
SECRETS = {"razorpay:acme-in": "rzp_whsec_acme_123"}


def _start(aws, stream: str, tmp_path, *extra: str) -> tuple[subprocess.Popen, str]:
    keys = tmp_path / "keys.json"
    keys.write_text(json.dumps(WRITE_KEYS))
    secrets = tmp_path / "secrets.json"
    secrets.write_text(json.dumps(SECRETS))
    port = free_port()
    argv = [
        sys.executable, "-m", "pipelines.collect", "--port", str(port), "--stream", stream,
        "--write-keys", str(keys), "--webhook-secrets", str(secrets),
        "--aws-profile", "local", "--aws-endpoint-url", aws.endpoint_url, *extra,
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    log = open(tmp_path / f"collector-{port}.log", "wb")  # noqa: SIM115 - closed with the process
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    wait_healthy(url, 60, proc)
    return proc, url


def test_cli_lists_collect():
    assert "collect" in cli.available()


def test_segment_library_and_webhook_through_collector_into_the_lake(aws, tmp_path):
    from segment.analytics.client import Client

    res = create_streaming_resources(
        aws, StreamingResources(stream=f"events-{uuid.uuid4().hex[:6]}", shards=2, bucket=None)
    )
    proc, url = _start(aws, res.stream, tmp_path)
    try:
        analytics = Client(write_key="wk_acme_live", host=url, sync_mode=True, max_retries=0)
        _, track = analytics.track(
            user_id="u-1", event="Order Completed", properties={"order_id": "o-1", "revenue": 499, "currency": "INR"}
        )
        _, identify = analytics.identify(user_id="u-1", traits={"plan": "gold"})
        _, page = analytics.page(anonymous_id="anon-1", name="Home")
        body = json.dumps(
            {
                "event": "payment.captured",
                "created_at": int(time.time()),
                "payload": {
                    "payment": {
                        "entity": {"id": "pay_L1", "amount": 49900, "currency": "INR", "notes": {"user_id": "u-1"}}
                    }
                },
            }
        ).encode()
        r = httpx.post(
            f"{url}/webhooks/razorpay/acme-in",
            content=body,
            headers={"X-Razorpay-Signature": sign("razorpay", SECRETS["razorpay:acme-in"], body)},
        )
        assert r.status_code == 200
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 128 + signal.SIGTERM  # graceful: drained, then the conventional exit status
        assert '"msg": "collector stopped"' in next(tmp_path.glob("collector-*.log")).read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
    lake = str(tmp_path / "lake")
    summary = _run_stream_pipeline(aws, res, lake, tmp_path)
    assert read_dead_letters(summary.dead_letters_path) == []
    rows = read_events(
        lake, columns=["tenant_id", "message_id", "type", "event", "user_id", "anonymous_id"]
    ).to_pylist()
    by_id = {r["message_id"]: r for r in rows}
    assert set(by_id) == {
        track["messageId"],
        identify["messageId"],
        page["messageId"],
        "razorpay:payment.captured:pay_L1",
    }
    assert {r["tenant_id"] for r in rows} == {"acme-in"}
    assert by_id[track["messageId"]]["event"] == "Order Completed" and by_id[track["messageId"]]["user_id"] == "u-1"
    assert by_id[page["messageId"]]["anonymous_id"] == "anon-1"
    assert by_id["razorpay:payment.captured:pay_L1"]["event"] == "Payment Captured"


def test_logs_hold_no_payload_values_keys_or_secrets(aws, tmp_path):
    """At DEBUG, through accepted and refused requests: the log names reasons and routes, never what was sent."""
    res = create_streaming_resources(
        aws, StreamingResources(stream=f"logs-{uuid.uuid4().hex[:6]}", shards=1, bucket=None)
    )
    proc, url = _start(aws, res.stream, tmp_path, "--log-level", "DEBUG")
    property_value = "zq-distinctive-7781"
    try:
        auth = {"Authorization": "Basic " + base64.b64encode(b"wk_acme_live:").decode()}
        event = {"event": "Viewed", "userId": "u-log-5521", "properties": {"note": property_value}}
        assert httpx.post(f"{url}/v1/track", json=event, headers=auth).status_code == 200
        wrong = {"Authorization": "Basic " + base64.b64encode(b"wk_guessed_9917:").decode()}
        assert httpx.post(f"{url}/v1/track", json=event, headers=wrong).status_code == 401
        body = json.dumps(
            {
                "event": "payment.captured",
                "created_at": int(time.time()),
                "payload": {"payment": {"entity": {"id": "pay_LOG1", "amount": 12345, "currency": "INR"}}},
            }
        ).encode()
        secret = SECRETS["razorpay:acme-in"]
        good = sign("razorpay", secret, body)
        hook = f"{url}/webhooks/razorpay/acme-in"
        assert httpx.post(hook, content=body, headers={"X-Razorpay-Signature": good}).status_code == 200
        assert httpx.post(hook, content=body, headers={"X-Razorpay-Signature": "0" * 64}).status_code == 401
        assert (
            httpx.post(f"{url}/v1/track", content=b'{"event": "' + property_value.encode(), headers=auth).status_code
            == 400
        )
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    text = next(tmp_path.glob("collector-*.log")).read_text()
    assert '"reason": "unknown_write_key"' in text and '"reason": "bad_signature"' in text  # the refusals are logged
    for sent in (property_value, "u-log-5521", "wk_acme_live", "wk_guessed_9917", secret, good, "pay_LOG1", "12345"):
        assert sent not in text, f"{sent!r} in the collector's log"
    assert base64.b64encode(body).decode()[:40] not in text


def _run_stream_pipeline(aws, res, lake: str, tmp_path):
    return run_stream_pass(aws, res, lake, f"--webhook-secrets={tmp_path / 'secrets.json'}")


def test_kill_9_loses_no_acknowledged_event(aws, tmp_path):
    """Write-ahead spool: every 200 is fsynced; after kill -9 the restarted collector re-sends the spool, and
    the stream pipeline makes every acknowledged message id exactly one lake row (copies counted duplicates)."""
    res = create_streaming_resources(
        aws, StreamingResources(stream=f"durable-{uuid.uuid4().hex[:6]}", shards=2, bucket=None)
    )
    stream = res.stream
    client = default_kinesis_client(aws)
    spool = str(tmp_path / "spool")
    proc, url = _start(aws, stream, tmp_path, "--spool-dir", spool, "--spool-mode", "always")
    acked: list[str] = []
    stop = threading.Event()
    auth = {"Authorization": "Basic " + base64.b64encode(b"wk_beta_live:").decode()}

    def send(worker: int) -> None:
        with httpx.Client(timeout=5) as http:
            n = 0
            while not stop.is_set():
                ids = [f"w{worker}-{n}-{i}" for i in range(20)]
                n += 1
                batch = [
                    {"type": "track", "event": "Tick", "anonymousId": f"a{i}", "messageId": m}
                    for i, m in enumerate(ids)
                ]
                try:
                    r = http.post(f"{url}/v1/batch", json={"batch": batch}, headers=auth)
                except httpx.HTTPError:
                    continue  # the collector is dead: not acknowledged, may or may not be in Kinesis
                if r.status_code == 200:
                    acked.extend(ids)

    threads = [threading.Thread(target=send, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    time.sleep(2.0)
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    time.sleep(0.3)
    stop.set()
    for t in threads:
        t.join(10)
    assert len(acked) > 200
    leftover = [f for f in os.listdir(spool) if f.endswith(".spool")]
    proc, url = _start(aws, stream, tmp_path, "--spool-dir", spool, "--spool-mode", "always")
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if metric(httpx.get(f"{url}/metrics").text, "livora_collector_spool_depth_records") == 0:
                break
            time.sleep(0.2)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    ids = [json.loads(data)["messageId"] for _, data in read_stream(client, stream)]
    missing = set(acked) - set(ids)
    assert not missing, f"{len(missing)} acknowledged events missing from Kinesis"

    lake = str(tmp_path / "lake")
    summary = _run_stream_pipeline(aws, res, lake, tmp_path)
    assert read_dead_letters(summary.dead_letters_path) == []
    rows = duckdb.sql(
        f"SELECT message_id, count(*) AS n FROM read_parquet('{lake}/events/**/*.parquet', hive_partitioning = true) "
        "WHERE tenant_id = 'beta-co' GROUP BY message_id"
    ).fetchall()
    in_lake = dict(rows)
    assert set(acked) <= set(in_lake), f"{len(set(acked) - set(in_lake))} acknowledged ids not in the lake"
    assert {m: n for m, n in in_lake.items() if n != 1} == {}  # exactly once per message id
    assert set(in_lake) == set(ids)  # nothing in the lake that was not on the stream
    # books balance: every record read is a lake row or a counted duplicate (spool re-sends, late copies)
    assert summary.total("records_read") == len(ids)
    assert summary.total("lake_rows") == len(set(ids))
    assert summary.total("duplicates") == len(ids) - len(set(ids))
    print(
        f"acked {len(acked)}, in Kinesis {len(ids)} records / {len(set(ids))} ids, "
        f"spool segments at kill {len(leftover)}, lake {len(in_lake)} rows, duplicates {summary.total('duplicates')}"
    )
