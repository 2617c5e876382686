"""Seeded, realistic Segment-style traffic for the demo, tests and benchmarks.

Shoppers browse anonymously, some sign up (identify with email and phone), view products, add
to cart, check out and pay in INR (UPI, cards, cash on delivery); a few orders are refunded or
cancelled and a few Razorpay payments fail. A configurable share of the records is bad in every
way the pipeline must survive (malformed JSON, wrong types, oversize, non-UTF-8, future
timestamps, missing ids) or is an exact re-send of an earlier record (a duplicate).

Deterministic for a given seed: the same arguments always yield the same bytes.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import random
import sys
from collections.abc import Iterator
from dataclasses import dataclass

CATALOG = {
    "acme-in": [  # fashion
        ("ACM-101", "Kurta Set", "Ethnic Wear", 1899),
        ("ACM-102", "Linen Shirt", "Shirts", 1299),
        ("ACM-103", "Denim Jeans", "Bottoms", 2199),
        ("ACM-104", "Silk Saree", "Ethnic Wear", 5499),
        ("ACM-105", "Sneakers", "Footwear", 3499),
        ("ACM-106", "Cotton Tee", "T-Shirts", 599),
    ],
    "bloom-in": [  # beauty
        ("BLM-201", "Vitamin C Serum", "Skincare", 899),
        ("BLM-202", "Sunscreen SPF 50", "Skincare", 499),
        ("BLM-203", "Kajal", "Makeup", 249),
        ("BLM-204", "Hair Oil", "Haircare", 399),
        ("BLM-205", "Lipstick", "Makeup", 649),
    ],
}
USER_AGENTS = [
    "Mozilla/5.0 (Linux; Android 13; SM-A536E) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/119.0.6045.163 Mobile Safari/537.36",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.1 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.0 Safari/605.1.15",
    "Mozilla/5.0 (Linux; Android 12; Redmi Note 11) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/118.0.0.0 Mobile Safari/537.36",
    "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
]
IP_PREFIXES = ["49.36.", "106.51.", "117.96.", "182.64.", "27.4.", "157.32.", "49.36.", "106.51.", "94.200.", "103.21."]
"""Mostly Indian metros (the ranges of infra.geoip_sample), some Gulf shoppers, some unknown ranges."""
ACQUISITION = [  # (weight, referrer, utm source, medium, campaign)
    (30, None, None, None, None),
    (20, "https://www.google.com/", None, None, None),
    (15, "https://www.google.com/", "google", "cpc", "diwali_sale"),
    (15, "https://www.instagram.com/", "instagram", "paid_social", "reels_nov"),
    (10, "https://mail.google.com/", "newsletter", "email", "weekly_drop"),
    (10, "https://www.youtube.com/", None, None, None),
]
PAYMENT_METHODS = [("upi", 50), ("card", 20), ("cod", 25), ("netbanking", 5)]
BAD_KINDS = ("malformed_json", "wrong_type", "oversize", "not_utf8", "future_timestamp", "missing_ids")


@dataclass
class _Person:
    tenant: str
    anonymous_id: str
    user_id: str | None
    ua: str
    ip: str
    acquisition: tuple


def _iso(ts: dt.datetime) -> str:
    return ts.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


class _Generator:
    def __init__(self, seed: int, tenants: tuple[str, ...], start: dt.date, days: int):
        self.rng = random.Random(seed)
        self.tenants = tenants
        self.start = dt.datetime.combine(start, dt.time(), tzinfo=dt.UTC)
        self.days = days
        self.counter = 0
        self.acq_weights = [a[0] for a in ACQUISITION]
        self.pay_methods = [m for m, _ in PAYMENT_METHODS]
        self.pay_weights = [w for _, w in PAYMENT_METHODS]

    def _id(self, prefix: str) -> str:
        return f"{prefix}-{self.rng.getrandbits(64):016x}"

    def person(self) -> _Person:
        rng = self.rng
        ip = rng.choice(IP_PREFIXES) + f"{rng.randrange(256)}.{rng.randrange(1, 255)}"
        return _Person(
            tenant=rng.choice(self.tenants),
            anonymous_id=self._id("anon"),
            user_id=None,
            ua=rng.choice(USER_AGENTS),
            ip=ip,
            acquisition=rng.choices(ACQUISITION, self.acq_weights)[0],
        )

    def envelope(self, p: _Person, kind: str, when: dt.datetime, **fields) -> dict:
        rng = self.rng
        self.counter += 1
        skew = dt.timedelta(seconds=rng.choice((0, 0, 0, 0, 37, -120, 3600)))  # device clocks lie
        sent = when + dt.timedelta(milliseconds=rng.randrange(50, 4000))
        received = sent + dt.timedelta(milliseconds=rng.randrange(20, 800))
        _, referrer, source, medium, campaign = p.acquisition
        host = f"https://www.{p.tenant.split('-')[0]}.in"
        path = fields.pop("path", "/")
        query = f"?utm_source={source}&utm_medium={medium}&utm_campaign={campaign}" if source else ""
        event = {
            "type": kind,
            "messageId": f"{p.tenant}-{self.counter:010d}-{rng.getrandbits(32):08x}",
            "tenantId": p.tenant,
            "anonymousId": p.anonymous_id,
            "originalTimestamp": _iso(when + skew),
            "sentAt": _iso(sent + skew),
            "receivedAt": _iso(received),
            "context": {
                "ip": p.ip,
                "userAgent": p.ua,
                "locale": "en-IN",
                "timezone": "Asia/Kolkata",
                "library": {"name": "analytics.js", "version": "4.1.0"},
                "page": {"url": host + path + query, "path": path, "referrer": referrer},
            },
            **fields,
        }
        if p.user_id:
            event["userId"] = p.user_id
        return event

    def journey(self) -> Iterator[dict]:
        """One person's visits: browse, maybe sign up, maybe buy."""
        rng = self.rng
        p = self.person()
        catalog = CATALOG.get(p.tenant) or CATALOG["acme-in"]
        t = self.start + dt.timedelta(seconds=rng.randrange(self.days * 86400))
        for _visit in range(rng.choice((1, 1, 1, 2, 2, 3, 5))):
            yield self.envelope(p, "page", t, name="Home", path="/")
            cart: list[tuple] = []
            for _ in range(rng.randrange(1, 6)):
                t += dt.timedelta(seconds=rng.randrange(5, 240))
                sku, name, category, price = rng.choice(catalog)
                product = {"product_id": sku, "sku": sku, "name": name, "category": category, "price": price}
                yield self.envelope(
                    p, "track", t, event="Product Viewed", properties={**product, "currency": "INR"}, path=f"/p/{sku}"
                )
                if rng.random() < 0.35:
                    t += dt.timedelta(seconds=rng.randrange(3, 90))
                    qty = rng.choice((1, 1, 1, 2))
                    cart.append((sku, name, category, price, qty))
                    yield self.envelope(
                        p,
                        "track",
                        t,
                        event="Product Added",
                        properties={**product, "quantity": qty, "currency": "INR"},
                        path=f"/p/{sku}",
                    )
            if cart and rng.random() < 0.6:
                yield from self.checkout(p, cart, t)
            t += dt.timedelta(hours=rng.randrange(2, 24 * 14))

    def checkout(self, p: _Person, cart: list[tuple], t: dt.datetime) -> Iterator[dict]:
        rng = self.rng
        products = [{"product_id": s, "name": n, "category": c, "price": pr, "quantity": q} for s, n, c, pr, q in cart]
        total = sum(pr * q for *_, pr, q in cart)
        checkout_id = self._id("chk")
        t += dt.timedelta(seconds=rng.randrange(10, 120))
        if p.user_id is None and rng.random() < 0.7:
            p.user_id = self._id("user")
            digits = rng.randrange(10**9, 10**10)
            traits = {"email": f"  Shopper{digits}@Example.IN ", "phone": f"0{digits}", "name": "Shopper"}
            yield self.envelope(p, "identify", t, traits=traits)
        yield self.envelope(
            p,
            "track",
            t,
            event="Checkout Started",
            properties={"checkout_id": checkout_id, "value": total, "currency": "INR", "products": products},
        )
        if rng.random() < 0.3:
            return  # abandoned checkout
        method = rng.choices(self.pay_methods, self.pay_weights)[0]
        t += dt.timedelta(seconds=rng.randrange(20, 300))
        yield self.envelope(
            p,
            "track",
            t,
            event="Payment Info Entered",
            properties={"checkout_id": checkout_id, "payment_method": method},
        )
        if method != "cod" and rng.random() < 0.12:
            yield self.envelope(
                p,
                "track",
                t,
                event="Payment Failed",
                source="razorpay",
                properties={"amount": total, "currency": "INR", "method": method},
            )
            return
        order_id = self._id("ord")
        if method != "cod":
            yield self.envelope(
                p,
                "track",
                t,
                event="Payment Captured",
                source="razorpay",
                properties={"amount": total, "currency": "INR", "method": method, "order_id": order_id},
            )
        discount = rng.choice((0, 0, 0, 100, 250)) if total >= 1000 else 0  # coupons need a minimum basket
        order = {
            "checkout_id": checkout_id,
            "order_id": order_id,
            "total": total - discount,
            "revenue": total - discount,
            "discount": discount,
            "shipping": 0 if total > 999 else 79,
            "currency": "INR",
            "payment_method": method,
            "products": products,
        }
        t += dt.timedelta(seconds=rng.randrange(1, 30))
        yield self.envelope(p, "track", t, event="Order Completed", properties=order, path="/thank-you")
        roll = rng.random()
        if roll < 0.05:
            later = t + dt.timedelta(days=rng.randrange(2, 10))
            yield self.envelope(p, "track", later, event="Order Refunded", properties={**order, "currency": "INR"})
        elif roll < 0.08:
            yield self.envelope(p, "track", t + dt.timedelta(hours=2), event="Order Cancelled", properties=order)

    def bad(self, good: dict) -> bytes:
        kind = self.rng.choice(BAD_KINDS)
        if kind == "malformed_json":
            return json.dumps(good).encode()[:-7]
        if kind == "wrong_type":
            return json.dumps(
                {
                    **good,
                    "type": "track",
                    "event": "Order Completed",
                    "properties": {"revenue": "lots", "currency": "INR"},
                }
            ).encode()
        if kind == "oversize":
            return json.dumps({**good, "properties": {"blob": "x" * 40_000}}).encode()
        if kind == "not_utf8":
            return json.dumps(good).encode().replace(b'"context"', b'"cont\xff\xfext"')
        if kind == "future_timestamp":
            future = dt.datetime.now(dt.UTC) + dt.timedelta(days=30)
            return json.dumps({**good, "originalTimestamp": _iso(future), "sentAt": None, "receivedAt": None}).encode()
        trimmed = {k: v for k, v in good.items() if k not in ("anonymousId", "userId")}
        return json.dumps(trimmed).encode()


def generate_events(
    n: int,
    seed: int = 0,
    tenants: tuple[str, ...] = ("acme-in", "bloom-in"),
    start: dt.date = dt.date(2026, 10, 1),
    days: int = 30,
    bad_fraction: float = 0.02,
    duplicate_fraction: float = 0.02,
) -> Iterator[bytes]:
    """Exactly ``n`` records (UTF-8 JSON objects, one event each; bad ones as described above).

    Events of one journey come in time order; journeys interleave by start only, as several
    devices' batches would. Duplicates are byte-identical re-sends of a recent record.
    """
    gen = _Generator(seed, tenants, start, days)
    rng = random.Random(seed + 1)
    recent: list[bytes] = []
    emitted = 0
    while emitted < n:
        for event in gen.journey():
            if emitted >= n:
                break
            roll = rng.random()
            if roll < bad_fraction:
                record = gen.bad(event)
            elif roll < bad_fraction + duplicate_fraction and recent:
                record = rng.choice(recent)
            else:
                record = json.dumps(event, separators=(",", ":")).encode()
                recent.append(record)
                if len(recent) > 64:
                    recent.pop(0)
            emitted += 1
            yield record


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write seeded synthetic Segment-style events as NDJSON.")
    parser.add_argument("--events", type=int, default=10_000, help="Number of records to write.")
    parser.add_argument("--seed", type=int, default=0, help="Random seed (same seed, same bytes).")
    parser.add_argument("--out", default="-", help="Output NDJSON path, or - for stdout.")
    parser.add_argument("--bad-fraction", type=float, default=0.02, help="Share of bad records.")
    parser.add_argument("--duplicate-fraction", type=float, default=0.02, help="Share of exact re-sends.")
    parser.add_argument("--start", type=dt.date.fromisoformat, default=dt.date(2026, 10, 1), help="First day.")
    parser.add_argument("--days", type=int, default=30, help="Days of traffic.")
    args = parser.parse_args(argv)
    out = sys.stdout.buffer if args.out == "-" else open(args.out, "wb")  # noqa: SIM115
    try:
        for record in generate_events(
            args.events,
            args.seed,
            start=args.start,
            days=args.days,
            bad_fraction=args.bad_fraction,
            duplicate_fraction=args.duplicate_fraction,
        ):
            out.write(record + b"\n")
    finally:
        if out is not sys.stdout.buffer:
            out.close()


if __name__ == "__main__":
    main()


# --- signed webhook deliveries (the demo posts them to the collector) ---------------------------------

SAMPLES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "samples")


def sample_webhooks(
    now: dt.datetime, secrets: dict[str, str], tenant: str = "acme-in"
) -> list[tuple[str, bytes, dict]]:
    """``(provider, body, headers)`` of a Shopify order and a Razorpay captured payment of ``tenant``, dated
    a minute before ``now`` (inside the replay window) and signed with ``secrets["<provider>:<tenant>"]``
    the way each provider signs (Shopify: base64 HMAC-SHA256; Razorpay: hex HMAC-SHA256 of the raw body)."""
    import base64
    import hashlib
    import hmac

    def read(name: str) -> dict:
        with open(os.path.join(SAMPLES, name), encoding="utf-8") as handle:
            return json.load(handle)

    moment = now - dt.timedelta(minutes=1)
    ist = moment.astimezone(dt.timezone(dt.timedelta(hours=5, minutes=30))).isoformat(timespec="seconds")
    order = read("shopify_orders_create.json")
    for key in ("created_at", "processed_at", "updated_at"):
        order[key] = ist
    order.setdefault("customer", {})["updated_at"] = ist
    payment = read("razorpay_payment_captured.json")
    payment["created_at"] = payment["payload"]["payment"]["entity"]["created_at"] = int(moment.timestamp())
    out = []
    shop_body = json.dumps(order, separators=(",", ":")).encode()
    shop_sig = hmac.new(secrets[f"shopify:{tenant}"].encode(), shop_body, hashlib.sha256).digest()
    out.append(
        (
            "shopify",
            shop_body,
            {
                "X-Shopify-Topic": "orders/create",
                "X-Shopify-Shop-Domain": f"{tenant}.myshopify.com",
                "X-Shopify-Webhook-Id": f"demo-{order['id']}",
                "X-Shopify-Hmac-Sha256": base64.b64encode(shop_sig).decode(),
            },
        )
    )
    pay_body = json.dumps(payment, separators=(",", ":")).encode()
    pay_sig = hmac.new(secrets[f"razorpay:{tenant}"].encode(), pay_body, hashlib.sha256).hexdigest()
    out.append(("razorpay", pay_body, {"X-Razorpay-Signature": pay_sig, "X-Razorpay-Event-Id": "evt_demo_1"}))
    return out
