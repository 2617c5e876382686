"""The streaming demo: local AWS, a seeded e-commerce stream on Kinesis, the pipeline until caught up.

    python -m pipelines.demo_stream --workdir ./demo --events 3000

Starts the moto server, creates the stream (4 shards) and tables, starts the HTTP collector
(``pipelines.collect``) in front of it and sends a realistic seeded stream through it as the brands'
SDKs would (several tenants, anonymous browsing then sign-up, carts, INR orders, some malformed and
duplicate records; ``/v1/batch`` with each brand's write key), plus a signed Shopify order and a
signed Razorpay payment webhook; then runs ``pipelines.stream_events`` in local incremental mode
until it has caught up, and prints where every event went (refused at the collector's door, or in
the lake, a dead letter or a counted duplicate).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import datetime as dt
import hashlib
import json
import os
import random
import secrets as secrets_module
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterable, Iterator

from connectors.aws import AwsSettings
from connectors.lake import read_dead_letters, read_events
from connectors.synthetic import generate_events, sample_webhooks
from infra.local_stack import running_moto_server
from infra.resources import StreamingResources, create_streaming_resources

PUT_BATCH = 500  # PutRecords limit


def partition_key(record: bytes) -> str:
    """The sender's anonymous id keeps a person's events on one shard, in order; else a content hash."""
    try:
        event = json.loads(record)
        key = event.get("anonymousId") or event.get("userId")
        if isinstance(key, str) and key:
            return key[:256]
    except (ValueError, UnicodeDecodeError, AttributeError):
        pass
    return hashlib.sha1(record).hexdigest()


def put_records(client, stream: str, records: Iterable[bytes], max_attempts: int = 10) -> int:
    """PutRecords in batches of 500; records the response marks as failed are sent again (backoff)."""
    rng = random.Random(0)
    sent = 0
    batch: list[bytes] = []

    def flush(chunk: list[bytes]) -> None:
        entries = [{"Data": r, "PartitionKey": partition_key(r)} for r in chunk]
        for attempt in range(max_attempts):
            response = client.put_records(StreamName=stream, Records=entries)
            if not response.get("FailedRecordCount"):
                return
            entries = [e for e, res in zip(entries, response["Records"], strict=True) if res.get("ErrorCode")]
            time.sleep(rng.uniform(0, min(2.0, 0.05 * 2**attempt)))
        raise RuntimeError(f"{len(entries)} records still failing after {max_attempts} PutRecords attempts")

    for record in records:
        batch.append(record)
        if len(batch) == PUT_BATCH:
            flush(batch)
            sent += len(batch)
            batch = []
    if batch:
        flush(batch)
        sent += len(batch)
    return sent


def _count_items(aws: AwsSettings, table: str) -> int:
    client = aws.client("dynamodb")
    total, kwargs = 0, {"TableName": table, "Select": "COUNT"}
    while True:
        page = client.scan(**kwargs)
        total += page["Count"]
        if "LastEvaluatedKey" not in page:
            return total
        kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]


DEMO_WRITE_KEYS = {"wk_demo_acme": "acme-in", "wk_demo_bloom": "bloom-in"}


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def running_collector(endpoint: str, stream: str, workdir: str, secrets_path: str) -> Iterator[str]:
    """``python -m pipelines.collect`` on a free loopback port, in front of the local Kinesis; yields its URL."""
    keys_path = os.path.join(workdir, "write_keys.json")
    with open(keys_path, "w") as handle:
        json.dump(DEMO_WRITE_KEYS, handle)
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = os.path.join(workdir, "collector.log")
    argv = [sys.executable, "-m", "pipelines.collect", "--port", str(port), "--stream", stream]
    argv += ["--write-keys", keys_path, "--webhook-secrets", secrets_path, "--aws-endpoint-url", endpoint]
    argv += ["--spool-dir", os.path.join(workdir, "collector-spool")]
    with open(log_path, "ab") as log_file:
        proc = subprocess.Popen(argv, stdout=log_file, stderr=log_file)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the collector did not start (see {log_path})")
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


def _post(url: str, path: str, body: bytes, headers: dict) -> int:
    request = urllib.request.Request(url + path, data=body, method="POST", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            answer.read()
            return answer.status
    except urllib.error.HTTPError as err:
        return err.code


def send_through_collector(url: str, records: Iterable[bytes]) -> tuple[int, Counter]:
    """Each generated record to the collector as a brand's SDK would (``/v1/batch`` with the tenant's write
    key, 100 a request; a refused batch is re-sent event by event). Returns (accepted, refused by status)."""
    keys = {tenant: key for key, tenant in DEMO_WRITE_KEYS.items()}
    first_key = next(iter(DEMO_WRITE_KEYS))
    pending: dict[str, list[bytes]] = {}
    accepted, refused = 0, Counter()

    def auth(key: str) -> dict:
        token = base64.b64encode(f"{key}:".encode()).decode()
        return {"Authorization": f"Basic {token}", "Content-Type": "application/json"}

    def one_by_one(key: str, chunk: list[bytes]) -> None:
        nonlocal accepted
        for record in chunk:
            try:
                kind = json.loads(record).get("type")
            except (ValueError, AttributeError):
                kind = None
            endpoint = kind if kind in ("track", "identify", "page", "screen", "group", "alias") else "track"
            status = _post(url, f"/v1/{endpoint}", record, auth(key))
            if status == 200:
                accepted += 1
            else:
                refused[status] += 1

    def flush(key: str) -> None:
        nonlocal accepted
        chunk, pending[key] = pending.get(key, []), []
        if not chunk:
            return
        body = b'{"batch":[' + b",".join(chunk) + b"]}"
        if _post(url, "/v1/batch", body, auth(key)) == 200:
            accepted += len(chunk)
        else:
            one_by_one(key, chunk)

    for record in records:
        try:
            tenant = json.loads(record).get("tenantId")
        except (ValueError, AttributeError):
            one_by_one(first_key, [record])  # not JSON (or not an object): refused at the door
            continue
        key = keys.get(tenant, first_key)
        pending.setdefault(key, []).append(record)
        if len(pending[key]) == 100:
            flush(key)
    for key in list(pending):
        flush(key)
    return accepted, refused


def send_webhooks(url: str, secrets: dict[str, str]) -> int:
    """A signed Shopify order and a signed Razorpay payment of acme-in, posted as the providers do."""
    sent = 0
    for provider, body, headers in sample_webhooks(dt.datetime.now(dt.UTC), secrets):
        status = _post(url, f"/webhooks/{provider}/acme-in", body, {**headers, "Content-Type": "application/json"})
        if status != 200:
            raise RuntimeError(f"the collector refused the signed {provider} webhook ({status})")
        sent += 1
    return sent


def run_streaming_demo(
    workdir: str,
    events: int = 3000,
    seed: int = 7,
    shards: int = 4,
    out=sys.stdout,
    extra_args: list[str] | None = None,
    via_collector: bool = True,
) -> dict:
    """Run the whole streaming demo under ``workdir``; returns the summary it prints.

    Traffic goes through the HTTP collector (Segment ``/v1/batch`` with each brand's write key, plus a
    signed Shopify and Razorpay webhook) unless ``via_collector`` is False (then straight to Kinesis)."""
    from connectors.warehouse import count_rows
    from pipelines import stream_events

    stream_events.quiet_option_warnings()
    workdir = os.path.abspath(workdir)
    lake = os.path.join(workdir, "lake")
    warehouse = f"duckdb:///{os.path.join(workdir, 'warehouse.duckdb')}"
    os.makedirs(workdir, exist_ok=True)
    with running_moto_server() as endpoint:
        aws = AwsSettings.local(endpoint)
        res = create_streaming_resources(aws, StreamingResources(stream="livora-events", shards=shards, bucket=None))
        print(f"local AWS at {endpoint}; created {', '.join(res.created) or 'nothing (all existed)'}", file=out)
        started = time.monotonic()
        secrets = {f"{p}:acme-in": f"demo-{p}-{secrets_module.token_hex(12)}" for p in ("shopify", "razorpay")}
        secrets_path = os.path.join(workdir, "webhook_secrets.json")
        with open(secrets_path, "w") as handle:
            json.dump(secrets, handle)
        os.chmod(secrets_path, 0o600)
        refused: Counter = Counter()
        if via_collector:
            with running_collector(endpoint, res.stream, workdir, secrets_path) as url:
                print(f"collector at {url} (python -m pipelines.collect) in front of {res.stream}", file=out)
                sent, refused = send_through_collector(url, generate_events(events, seed=seed))
                sent += send_webhooks(url, secrets)
            print(
                f"collector accepted {sent} events (incl. a signed Shopify order and Razorpay payment), refused "
                f"{sum(refused.values())} at the door {dict(refused)} in {time.monotonic() - started:.1f}s",
                file=out,
            )
        else:
            sent = put_records(aws.client("kinesis"), res.stream, generate_events(events, seed=seed))
            print(
                f"put {sent} records on {res.stream} ({shards} shards) in {time.monotonic() - started:.1f}s", file=out
            )
        argv = [
            f"--webhook-secrets={secrets_path}",
            f"--stream={res.stream}",
            f"--lake={lake}",
            f"--warehouse={warehouse}",
            f"--aws-endpoint-url={endpoint}",
            f"--consumer-app={res.consumer_app}",
            f"--dedupe-table={res.dedupe_table}",
            f"--profiles-table={res.profiles_table}",
            f"--identity-table={res.identity_table}",
            "--buckets=4",
            "--min-call-interval=0.05",
            "--profile=dev",  # a demo: quality gate warn, whatever $LIVORA_PROFILE says (extra_args may override)
            *(extra_args or []),
        ]
        print("running: python -m pipelines.stream_events " + " ".join(argv), file=out)
        stream_summary = stream_events.run(argv, out=out)
        profiles = _count_items(aws, res.profiles_table)
    totals = stream_summary.as_dict()
    lake_rows = read_events(lake, columns=["message_id"]).num_rows if os.path.isdir(os.path.join(lake, "events")) else 0
    dead = len(read_dead_letters(stream_summary.dead_letters_path))
    webhook_rows = 0
    if lake_rows:
        ids = read_events(lake, columns=["message_id"]).column("message_id").to_pylist()
        webhook_rows = sum(1 for mid in ids if mid.startswith(("shopify:", "razorpay:")))  # ids from signed bodies
    summary = {
        "events_in": sent,
        "refused_at_collector": sum(refused.values()),
        "webhook_rows": webhook_rows,
        "lake_rows": lake_rows,
        "dead_letters": dead,
        "duplicates": totals["duplicates"],
        "accounted": lake_rows + dead + totals["duplicates"],
        "profile_items": profiles,
        "warehouse_rows": count_rows(warehouse),
        "passes": totals["passes"],
        "seconds": round(time.monotonic() - started, 1),
        "paths": {
            "lake": os.path.join(lake, "events"),
            "dead_letters": stream_summary.dead_letters_path,
            "warehouse": warehouse,
            "pass_summaries": os.path.join(lake, "_runs"),
        },
    }
    print(
        f"\nevents in {summary['events_in']} = lake {lake_rows} + dead letters {dead} + duplicates "
        f"{summary['duplicates']} ({'all accounted for' if summary['accounted'] == sent else 'MISMATCH'})\n"
        f"events from the signed webhooks in the lake {webhook_rows}; profile items in DynamoDB {profiles}, warehouse rows {summary['warehouse_rows']}, "
        f"{summary['passes']} passes, {summary['seconds']}s\n"
        f"look at: {summary['paths']['lake']}  {summary['paths']['dead_letters']}  {warehouse}",
        file=out,
    )
    return summary


def main(argv: list[str] | None = None) -> None:
    from pipelines.options import main_entry

    main_entry("demo_stream", _main, argv)


def _main(argv: list[str]) -> None:
    from pipelines.logs import add_logging_arguments
    from pipelines.options import LivoraArgumentParser

    parser = LivoraArgumentParser(
        prog="python -m pipelines.demo_stream",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--workdir", default="demo-stream", help="Where the lake and warehouse go (default demo-stream)."
    )
    parser.add_argument("--events", type=int, default=3000, help="Records to put on the stream (default 3000).")
    parser.add_argument("--seed", type=int, default=7, help="Traffic seed (default 7).")
    parser.add_argument("--shards", type=int, default=4, help="Kinesis shards (default 4).")
    add_logging_arguments(parser.add_argument_group("Logging"))
    args = parser.parse_args(argv)
    summary = run_streaming_demo(args.workdir, args.events, args.seed, args.shards)
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
