"""The main job on the embedded default: no AWS account, no Docker.

    python -m pipelines.demo [--events N] [--workdir demo_output] [--mode stream|batch]

stream (default): starts a local AWS (moto server over HTTP), creates the Kinesis stream, S3
bucket and DynamoDB tables, pushes a seeded, realistic stream of e-commerce traffic for two
tenants (anonymous browsing, sign-ups, carts, INR orders, malformed and duplicate records),
runs the streaming pipeline in local incremental mode until it has caught up, and loads the
lake, DynamoDB and the DuckDB warehouse. Then it runs the batch analytics (funnel, retention,
product analytics) on the lake and writes an HTML report.

batch: the same traffic as a file through ``pipelines.ingest_batch`` instead of Kinesis.
"""

from __future__ import annotations

import argparse
import json
import os
import time

from connectors.synthetic import generate_events
from infra.geoip_sample import build_sample_city_db
from pipelines import funnels, ingest_batch, product_analytics, report, retention
from pipelines.logs import add_logging_arguments
from pipelines.options import LivoraArgumentParser, main_entry

FUNNEL = "Product Viewed,Product Added,Checkout Started,Order Completed"
DEMO = ["--profile", "dev"]  # the demo is dev (quality gate warn), whatever $LIVORA_PROFILE the shell has


def run_batch_ingest(workdir: str, events: int, seed: int, geoip: str) -> dict:
    source = os.path.join(workdir, "input", "events.ndjson")
    os.makedirs(os.path.dirname(source), exist_ok=True)
    with open(source, "wb") as handle:
        for record in generate_events(events, seed=seed):
            handle.write(record.replace(b"\n", b" ") + b"\n")
    lake = os.path.join(workdir, "lake")
    summary = ingest_batch.run(["--input", source, "--lake", lake, "--geoip-db", geoip, *DEMO])
    return {
        "events_in": summary.events_in,
        "lake_rows": summary.lake_rows,
        "dead_letters": summary.dead_letters,
        "duplicates": summary.duplicates,
        "paths": {"lake": os.path.join(lake, "events"), "dead_letters": summary.dead_letters_path},
    }


def run_stream_ingest(workdir: str, events: int, seed: int, geoip: str) -> dict:
    from pipelines.demo_stream import run_streaming_demo

    return run_streaming_demo(workdir, events=events, seed=seed, extra_args=[f"--geoip-db={geoip}"])


def run_analytics(lake: str, out: str) -> dict:
    """The batch pipelines on the lake the ingest just wrote, and the report over their outputs."""
    funnels.run(["--lake", lake, "--steps", FUNNEL, "--window", str(3 * 86400), "--output", f"{out}/funnels", *DEMO])
    retention.run(
        ["--lake", lake, "--start-event", "Product Viewed", "--return-event", "Product Viewed", "--period", "week",
         "--periods", "4", "--output", f"{out}/retention", *DEMO]
    )  # fmt: skip
    product_analytics.run(["--lake", lake, "--output", f"{out}/products", *DEMO])
    html = f"{out}/report.html"
    report.run(
        ["--input", f"{out}/funnels", "--input", f"{out}/retention", "--input", f"{out}/products", "--output", html,
         # the definitions the header shows (run() of a pipeline writes no run record to read them from)
         "--funnel-window", str(3 * 86400), "--retention-start-event", "Product Viewed",
         "--retention-return-event", "Product Viewed", "--retention-period", "week"]
    )  # fmt: skip
    return {"analytics": out, "report": html}


def main(argv: list[str] | None = None) -> None:
    main_entry("demo", _main, argv)


def _main(argv: list[str]) -> None:
    parser = LivoraArgumentParser(
        prog="python -m pipelines.demo", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=5_000, help="Records to generate (default 5,000).")
    parser.add_argument("--seed", type=int, default=7, help="Random seed (default 7).")
    parser.add_argument("--workdir", default="demo_output", help="Where inputs and outputs go (default demo_output/).")
    parser.add_argument(
        "--mode",
        choices=("stream", "batch"),
        default="stream",
        help="Kinesis streaming ingest (default) or file batch ingest.",
    )
    parser.add_argument(
        "--skip-analytics", action="store_true", help="Only ingest; skip funnels, retention, products and the report."
    )
    add_logging_arguments(parser.add_argument_group("Logging"))
    args = parser.parse_args(argv)
    workdir = os.path.abspath(args.workdir)
    os.makedirs(workdir, exist_ok=True)
    geoip = str(build_sample_city_db(os.path.join(workdir, "geoip-sample.mmdb")))
    started = time.monotonic()
    print(f"== ingest ({args.mode}) of {args.events:,} seeded events into {workdir}", flush=True)
    ingest = (run_stream_ingest if args.mode == "stream" else run_batch_ingest)(workdir, args.events, args.seed, geoip)
    result = {"ingest": ingest}
    if not args.skip_analytics:
        print("== batch analytics on the lake: funnel, retention, product analytics, report", flush=True)
        result.update(run_analytics(os.path.join(workdir, "lake"), os.path.join(workdir, "analytics")))
    result["seconds"] = round(time.monotonic() - started, 1)
    print(json.dumps(result, indent=2, default=str))
    print(f"\nopen {result.get('report', ingest['paths']['lake'])}")


if __name__ == "__main__":
    main()
