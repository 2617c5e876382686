"""The streaming demo: local AWS, a seeded e-commerce stream on Kinesis, the pipeline until caught up.

    python -m pipelines.demo_stream --workdir ./demo --events 3000

Starts the moto server, creates the stream (4 shards) and tables, puts a realistic seeded stream
(several tenants, anonymous browsing then sign-up, carts, INR orders, some malformed and
duplicate records) with PutRecords, runs ``pipelines.stream_events`` in local incremental mode
until it has caught up, and prints where every event went.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import sys
import time
from collections.abc import Iterable

from connectors.aws import AwsSettings
from connectors.lake import read_dead_letters, read_events
from connectors.synthetic import generate_events
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


def run_streaming_demo(
    workdir: str,
    events: int = 3000,
    seed: int = 7,
    shards: int = 4,
    out=sys.stdout,
    extra_args: list[str] | None = None,
) -> dict:
    """Run the whole streaming demo under ``workdir``; returns the summary it prints."""
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
        sent = put_records(aws.client("kinesis"), res.stream, generate_events(events, seed=seed))
        print(f"put {sent} records on {res.stream} ({shards} shards) in {time.monotonic() - started:.1f}s", file=out)
        argv = [
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
            *(extra_args or []),
        ]
        print("running: python -m pipelines.stream_events " + " ".join(argv), file=out)
        stream_summary = stream_events.run(argv, out=out)
        profiles = _count_items(aws, res.profiles_table)
    totals = stream_summary.as_dict()
    lake_rows = read_events(lake, columns=["message_id"]).num_rows if os.path.isdir(os.path.join(lake, "events")) else 0
    dead = len(read_dead_letters(stream_summary.dead_letters_path))
    summary = {
        "events_in": sent,
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
        f"profile items in DynamoDB {profiles}, warehouse rows {summary['warehouse_rows']}, "
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
