"""Seeded lake rows for the feature tests: messy on purpose (late arrivals, skewed clocks, bots, nulls).

Independent of the ingest pipeline so that the feature tests stay fast; the rows follow
:data:`schemas.lake.EVENTS_SCHEMA` and are written as the lake's Hive layout by :func:`write_lake`.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from decimal import Decimal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from schemas.lake import EVENTS_FILE_SCHEMA, EVENTS_SCHEMA

REFERENCE = dt.datetime(2026, 10, 31, tzinfo=dt.UTC)
KINDS = [  # (type, event, weight)
    ("page", None, 20),
    ("track", "Product Viewed", 25),
    ("track", "Product Added", 10),
    ("track", "Checkout Started", 5),
    ("track", "Order Completed", 10),
    ("track", "Order Refunded", 2),
    ("track", "Order Cancelled", 1),
    ("track", "Payment Failed", 3),
    ("track", "Payment Captured", 6),
    ("identify", None, 3),
]
CATEGORIES = ["Ethnic Wear", "Footwear", "Makeup", "Shirts", "Skincare"]
CHANNELS = ["direct", "email", "organic_search", "paid_social", None]
DEVICES = ["Mobile", "Desktop", "Tablet", None]
OSES = ["Android", "iOS", "Windows", None]
METHODS = ["upi", "card", "cod", "COD ", "netbanking"]


def generate_rows(persons: int = 60, seed: int = 7, days: int = 420) -> list[dict]:
    rng = np.random.default_rng(seed)
    rows: list[dict] = []
    weights = np.array([k[2] for k in KINDS], dtype=float)
    weights /= weights.sum()
    counter = 0
    for p in range(persons):
        tenant = "acme-in" if p % 3 else "bloom-in"
        person = f"p{p:04d}"
        sessions = [f"{person}-s{i}" for i in range(rng.integers(1, 8))]
        bot = rng.random() < 0.05
        for _ in range(int(rng.integers(1, 40))):
            counter += 1
            typ, event, _w = KINDS[rng.choice(len(KINDS), p=weights)]
            ts = REFERENCE - dt.timedelta(seconds=int(rng.integers(0, days * 86_400)))
            roll = rng.random()
            if roll < 0.08:  # late arrival: days after the event
                received = ts + dt.timedelta(days=int(rng.integers(1, 40)), seconds=int(rng.integers(0, 86_400)))
            elif roll < 0.11:  # server clock behind the corrected event time
                received = ts - dt.timedelta(seconds=int(rng.integers(1, 600)))
            else:
                received = ts + dt.timedelta(seconds=int(rng.integers(0, 5)))
            props: dict = {}
            revenue = None
            if event in ("Product Viewed", "Product Added"):
                props = {"category": CATEGORIES[rng.integers(len(CATEGORIES))], "price": 499}
            if event in ("Order Completed", "Order Refunded", "Order Cancelled"):
                props = {
                    "order_id": f"o{counter}",
                    "payment_method": METHODS[rng.integers(len(METHODS))],
                    "products": [{"category": "NotTopLevel", "price": 10}],
                }
                if rng.random() < 0.9:
                    revenue = Decimal(int(rng.integers(100, 9_000))) + Decimal("0.25")
            session = None if typ == "identify" or rng.random() < 0.05 else sessions[rng.integers(len(sessions))]
            rows.append(
                {
                    "tenant_id": tenant,
                    "event_date": ts.date(),
                    "message_id": f"m{counter}",
                    "type": typ,
                    "event": event,
                    "name": "Home" if typ == "page" else None,
                    "person_id": person,
                    "session_id": session,
                    "timestamp": ts,
                    "received_at": received,
                    "properties": json.dumps(props),
                    "channel": CHANNELS[rng.integers(len(CHANNELS))],
                    "ua_device": DEVICES[rng.integers(len(DEVICES))],
                    "ua_os": OSES[rng.integers(len(OSES))],
                    "is_bot": bool(bot),
                    "revenue_inr": revenue,
                    "currency": "INR" if revenue is not None else None,
                    "schema_version": "1.0.0",
                }
            )
    return rows


def rows_table(rows: list[dict]) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=EVENTS_SCHEMA)


def write_lake(lake: str, table: pa.Table) -> None:
    """Write rows as LAKE/events/tenant_id=T/event_date=D/part-00000.parquet (partition columns in the path)."""
    tenants = table.column("tenant_id")
    dates = table.column("event_date")
    for tenant in pc.unique(tenants).to_pylist():
        of_tenant = table.filter(pc.equal(tenants, tenant))
        for day in pc.unique(of_tenant.column("event_date")).to_pylist():
            part = of_tenant.filter(pc.equal(of_tenant.column("event_date"), day))
            directory = os.path.join(lake, "events", f"tenant_id={tenant}", f"event_date={day.isoformat()}")
            os.makedirs(directory, exist_ok=True)
            pq.write_table(
                part.select(EVENTS_FILE_SCHEMA.names).cast(EVENTS_FILE_SCHEMA), f"{directory}/part-00000.parquet"
            )
    del dates
