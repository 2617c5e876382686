"""A small events lake for the analytics pipeline tests, written with the lake's own file schema."""

from __future__ import annotations

import datetime as dt
import json
import random
from collections import defaultdict

from connectors.lake import write_partition_file

FUNNEL_EVENTS = ["Product Viewed", "Product Added", "Checkout Started", "Order Completed", "Page Viewed"]
START = dt.datetime(2026, 10, 1, tzinfo=dt.UTC)


def lake_row(tenant: str, person: str, event: str, ts: dt.datetime, i: int, channel: str | None = None) -> dict:
    return {
        "tenant_id": tenant,
        "message_id": f"{tenant}-m{i:06d}",
        "type": "track",
        "event": event,
        "person_id": person,
        "anonymous_id": f"anon-{person}",
        "timestamp": ts,
        "received_at": ts + dt.timedelta(seconds=2),
        "properties": json.dumps({"category": "shoes" if i % 3 else "bags"}),
        "channel": channel,
        "is_bot": False,
        "schema_version": "1",
    }


def random_rows(seed: int = 1, persons: int = 80, days: int = 6, tenants=("acme-in", "bloom-in")) -> list[dict]:
    """Shopping-like sequences: people view, some add, fewer buy; spread over days, tenants and channels."""
    rng = random.Random(seed)
    rows = []
    i = 0
    for t in tenants:
        for p in range(persons):
            person = f"p{p:03d}"
            channel = rng.choice(["direct", "organic_search", "paid_social", None])
            ts = START + dt.timedelta(minutes=rng.randrange(days * 24 * 60))
            for _ in range(rng.randint(1, 14)):
                event = rng.choices(FUNNEL_EVENTS, weights=[5, 3, 2, 1, 4])[0]
                rows.append(lake_row(t, person, event, ts, i, channel))
                i += 1
                ts += dt.timedelta(minutes=rng.choice([0, 1, 5, 30, 240, 1500]))
    return rows


def write_lake(lake: str, rows: list[dict]) -> None:
    """One Parquet file per (tenant, UTC event date) partition."""
    parts = defaultdict(list)
    for row in rows:
        parts[(row["tenant_id"], row["timestamp"].date().isoformat())].append(row)
    for (tenant, day), part in sorted(parts.items()):
        write_partition_file(lake, "events", {"tenant_id": tenant, "event_date": day}, part, "part-00000.parquet")
