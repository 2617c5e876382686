"""The main job on the embedded default: no AWS account, no Docker.

    python -m pipelines.demo [--events N] [--workdir demo_output]

Generates a seeded, realistic stream of e-commerce traffic for two tenants (anonymous browsing,
sign-ups, carts, INR orders, plus malformed and duplicate records), ingests it into a local
Parquet lake with a sample GeoIP database, and prints what landed where.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import duckdb

from connectors.synthetic import generate_events
from infra.geoip_sample import build_sample_city_db
from pipelines import ingest_batch
from pipelines.options import setup_logging


def _generate(path: str, events: int, seed: int) -> None:
    with open(path, "wb") as handle:
        for record in generate_events(events, seed=seed):
            handle.write(record.replace(b"\n", b" ") + b"\n")


def run_batch_demo(workdir: str, events: int, seed: int) -> dict:
    os.makedirs(os.path.join(workdir, "input"), exist_ok=True)
    source = os.path.join(workdir, "input", "events.ndjson")
    lake = os.path.join(workdir, "lake")
    geoip = build_sample_city_db(os.path.join(workdir, "geoip-sample.mmdb"))
    print(f"[1/3] generating {events:,} events (seed {seed}) -> {source}", flush=True)
    _generate(source, events, seed)
    print(f"[2/3] ingesting into the lake at {lake} (Beam, in-process runner)", flush=True)
    started = time.monotonic()
    summary = ingest_batch.run(["--input", source, "--lake", lake, "--geoip-db", str(geoip)])
    seconds = time.monotonic() - started
    print("[3/3] summary", flush=True)
    glob = f"{lake}/events/**/*.parquet"
    con = duckdb.connect()
    by_event = con.sql(
        f"select tenant_id, event, count(*) n, round(sum(revenue_inr), 2) revenue_inr "
        f"from read_parquet('{glob}', hive_partitioning=true) where type = 'track' group by all order by n desc limit 12"
    ).fetchall()
    persons = con.sql(
        f"select count(distinct person_id) from read_parquet('{glob}', hive_partitioning=true)"
    ).fetchall()[0][0]
    return {
        "events_in": summary.events_in,
        "lake_rows": summary.lake_rows,
        "dead_letters": summary.dead_letters,
        "duplicates": summary.duplicates,
        "persons": persons,
        "seconds": round(seconds, 1),
        "events_per_second": round(summary.events_in / seconds) if seconds else None,
        "lake": f"{lake}/events (duckdb: read_parquet('{glob}', hive_partitioning=true))",
        "dead_letter_files": summary.dead_letters_path,
        "top_events": [list(map(str, r)) for r in by_event],
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=20_000, help="Records to generate (default 20,000).")
    parser.add_argument("--seed", type=int, default=7, help="Random seed (default 7).")
    parser.add_argument("--workdir", default="demo_output", help="Where inputs and outputs go (default demo_output/).")
    args = parser.parse_args(argv)
    setup_logging()
    result = run_batch_demo(os.path.abspath(args.workdir), args.events, args.seed)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
