"""Seeded lake rows for the segment and product-analytics tests (independent of the ingest pipeline).

Shoppers view products, add some to carts, start checkouts and complete orders (INR, a few in USD
with an fx rate), sometimes twice under the same order id (SDK event + webhook copy), sometimes
refunded; channels, geo and categories vary, some values are null. Rows follow
:data:`schemas.lake.EVENTS_SCHEMA` and :func:`write_lake` lays them out as the lake's Hive partitions.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from decimal import Decimal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from schemas.lake import EVENTS_FILE_SCHEMA

START = dt.datetime(2026, 8, 1, tzinfo=dt.UTC)
CATALOG = [
    ("SKU-1", "Vitamin C Serum", "Skincare", 899),
    ("SKU-2", "Sunscreen", "Skincare", 499),
    ("SKU-3", "Kajal", "Makeup", 249),
    ("SKU-4", "Kurta", "Ethnic Wear", 1899),
    ("SKU-5", "Sneakers", None, 3499),  # a product without a category
]
CHANNELS = ["direct", "email", "organic_search", "paid_social", None]
GEO = [("IN", "MH"), ("IN", "KA"), ("IN", "DL"), ("US", "CA"), (None, None)]
USD_RATE = Decimal("83.2500")


def row(tenant: str, person: str, mid: str, ts: dt.datetime, event: str | None, props: dict, **extra) -> dict:
    base = {
        "tenant_id": tenant,
        "event_date": ts.date(),
        "message_id": mid,
        "type": "track" if event else "page",
        "event": event,
        "name": None if event else "Home",
        "person_id": person,
        "anonymous_id": f"anon-{person}",
        "timestamp": ts,
        "received_at": ts + dt.timedelta(seconds=2),
        "properties": json.dumps(props),
        "is_bot": False,
        "schema_version": "1",
    }
    base.update(extra)
    return base


def generate_rows(persons: int = 80, seed: int = 3, days: int = 90, tenants=("acme-in", "bloom-in")) -> list[dict]:
    rng = np.random.default_rng(seed)
    rows: list[dict] = []
    n = 0
    for p in range(persons):
        tenant = tenants[p % len(tenants)]
        person = f"{tenant[:2]}-p{p:04d}"
        channel = CHANNELS[rng.integers(len(CHANNELS))]
        country, region = GEO[rng.integers(len(GEO))]
        usd = rng.random() < 0.1
        t = START + dt.timedelta(seconds=int(rng.integers(0, days * 86400)))
        for _visit in range(int(rng.integers(1, 5))):
            common = {"channel": channel, "geo_country": country, "geo_region": region}
            n += 1
            rows.append(row(tenant, person, f"m{n:07d}", t, None, {}, **common))
            cart = []
            for _ in range(int(rng.integers(1, 5))):
                sku, name, cat, price = CATALOG[rng.integers(len(CATALOG))]
                t += dt.timedelta(seconds=int(rng.integers(5, 600)))
                prod = {"product_id": sku, "name": name, "price": price, "currency": "INR"}
                if cat is not None:
                    prod["category"] = cat
                n += 1
                rows.append(row(tenant, person, f"m{n:07d}", t, "Product Viewed", prod, **common))
                if rng.random() < 0.4:
                    qty = int(rng.choice([1, 1, 2, 3]))
                    t += dt.timedelta(seconds=int(rng.integers(1, 120)))
                    n += 1
                    rows.append(
                        row(tenant, person, f"m{n:07d}", t, "Product Added", {**prod, "quantity": qty}, **common)
                    )
                    cart.append({**prod, "quantity": qty})
            if cart and rng.random() < 0.7:
                # sometimes the shopper comes back much later (beyond a 24 h window) to check out
                t += dt.timedelta(hours=int(rng.choice([0, 0, 0, 2, 30])), seconds=int(rng.integers(1, 300)))
                n += 1
                rows.append(
                    row(
                        tenant,
                        person,
                        f"m{n:07d}",
                        t,
                        "Checkout Started",
                        {"products": cart, "currency": "INR"},
                        **common,
                    )
                )
                if rng.random() < 0.75:
                    bought = cart if rng.random() < 0.8 else cart[:1]
                    total = sum(item["price"] * item["quantity"] for item in bought)
                    t += dt.timedelta(seconds=int(rng.integers(1, 600)))
                    order_id = f"ord-{n:07d}"
                    currency, rate = ("USD", USD_RATE) if usd else ("INR", Decimal(1))
                    amount = (Decimal(total) / rate).quantize(Decimal("0.01")) if usd else Decimal(total - 50)
                    props = {
                        "order_id": order_id,
                        "revenue": float(amount),
                        "currency": currency,
                        "products": [
                            {
                                **item,
                                "price": float((Decimal(item["price"]) / rate).quantize(Decimal("0.01"))),
                                "currency": currency,
                            }
                            for item in bought
                        ],
                    }
                    money = {
                        "order_id": order_id,
                        "currency": currency,
                        "revenue": amount,
                        "revenue_inr": (amount * rate).quantize(Decimal("0.0001")),
                        "fx_rate": float(rate),
                    }
                    n += 1
                    rows.append(row(tenant, person, f"m{n:07d}", t, "Order Completed", props, **common, **money))
                    if rng.random() < 0.15:  # the webhook copy of the same order, seconds later
                        n += 1
                        later = t + dt.timedelta(seconds=int(rng.integers(1, 30)))
                        rows.append(
                            row(
                                tenant,
                                person,
                                f"m{n:07d}",
                                later,
                                "Order Completed",
                                props,
                                source="shopify",
                                **common,
                                **money,
                            )
                        )
                    if rng.random() < 0.1:
                        n += 1
                        later = t + dt.timedelta(days=int(rng.integers(1, 6)))
                        rows.append(row(tenant, person, f"m{n:07d}", later, "Order Refunded", props, **common, **money))
            t += dt.timedelta(hours=int(rng.integers(1, 24 * 20)))
    return rows


def write_lake(lake: str, rows: list[dict]) -> None:
    """Write ``rows`` as LAKE/events/tenant_id=T/event_date=D/part-00000.parquet."""
    groups: dict[tuple[str, dt.date], list[dict]] = {}
    for r in rows:
        groups.setdefault((r["tenant_id"], r["event_date"]), []).append(r)
    for (tenant, day), part in groups.items():
        directory = os.path.join(lake, "events", f"tenant_id={tenant}", f"event_date={day.isoformat()}")
        os.makedirs(directory, exist_ok=True)
        table = pa.Table.from_pylist(part, schema=EVENTS_FILE_SCHEMA)
        pq.write_table(table, os.path.join(directory, "part-00000.parquet"))
