"""A test corpus whose expected outcome is known by construction (not from the pipeline).

Each entry says what must become of it: ``lake`` rows, ``dead`` letters (with the reason code),
or ``dup`` copies. The counts are the test's independent expectation.
"""

from __future__ import annotations

import base64
import datetime as dt
import gzip
import hashlib
import hmac
import json
from dataclasses import dataclass, field

TENANT = "acme-in"
SECRET = "shpss_test_secret"


def event(i: int, **over) -> dict:
    base = {
        "type": "track",
        "event": "Product Viewed",
        "messageId": f"m-{i:05d}",
        "tenantId": TENANT,
        "anonymousId": f"anon-{i % 7}",
        "timestamp": (dt.datetime(2026, 10, 1, tzinfo=dt.UTC) + dt.timedelta(minutes=i)).isoformat(),
        "receivedAt": (dt.datetime(2026, 10, 1, tzinfo=dt.UTC) + dt.timedelta(minutes=i, seconds=1)).isoformat(),
        "properties": {"product_id": f"P{i % 5}", "price": 499, "currency": "INR"},
        "context": {
            "ip": "49.36.10.20",
            "userAgent": "Mozilla/5.0 (Linux; Android 13) Chrome/119.0 Mobile Safari/537.36",
        },
    }
    base.update(over)
    return base


def dumps(obj) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


@dataclass
class Corpus:
    records: list[bytes] = field(default_factory=list)
    lake: int = 0
    dup: int = 0
    dead: dict[str, int] = field(default_factory=dict)

    def add(self, record: bytes, lake: int = 0, dup: int = 0, dead: str | None = None, dead_count: int = 1):
        self.records.append(record)
        self.lake += lake
        self.dup += dup
        if dead:
            self.dead[dead] = self.dead.get(dead, 0) + dead_count

    @property
    def events_in(self) -> int:
        return self.lake + self.dup + sum(self.dead.values())


def build_corpus(valid: int = 60) -> Corpus:
    c = Corpus()
    for i in range(valid):
        c.add(dumps(event(i)), lake=1)
    # identify + order for one person, in INR and USD
    c.add(dumps(event(1000, type="identify", userId="user-1", traits={"email": " A@B.IN "}, event=None)), lake=1)
    order = {
        "order_id": "o1",
        "revenue": "1499.50",
        "currency": "INR",
        "products": [{"product_id": "P1", "price": 1499.5}],
    }
    c.add(dumps(event(1001, event="Order Completed", userId="user-1", properties=order)), lake=1)
    c.add(
        dumps(
            event(
                1002,
                event="Order Completed",
                userId="user-1",
                properties={**order, "order_id": "o2", "currency": "USD", "revenue": 20},
            )
        ),
        lake=1,
    )
    # a JSON array of three events, a Segment batch envelope of two, a gzipped record
    c.add(dumps([event(2000), event(2001), event(2002)]), lake=3)
    c.add(dumps({"batch": [event(2003), event(2004)], "sentAt": "2026-10-01T12:00:00Z"}), lake=2)
    c.add(gzip.compress(dumps(event(2005))), lake=1)
    # historical backfill years old is accepted
    c.add(dumps(event(2006, timestamp="2019-03-01T10:00:00Z", receivedAt="2026-10-01T00:00:00Z")), lake=1)
    # duplicates: exact re-send and a re-send inside an array
    c.add(dumps(event(3)), dup=1)
    c.add(dumps([event(4), event(2010)]), dup=1, lake=1)
    # bad input of every kind
    c.add(b'{"type": "track", "messageId": "x1", ', dead="malformed_json")
    c.add(dumps(event(4000)).replace(b"Product Viewed", b"Product \xff\xfe Viewed"), dead="not_utf8")
    c.add(dumps(event(4001, properties={"blob": "x" * 40_000})), dead="oversize")
    c.add(
        dumps(event(4002, event="Order Completed", properties={"revenue": "lots", "currency": "INR"})),
        dead="wrong_type",
    )
    c.add(dumps(event(4003, messageId=12345)), dead="wrong_type")
    c.add(dumps({k: v for k, v in event(4004).items() if k != "anonymousId"}), dead="missing_field")
    future = (dt.datetime.now(dt.UTC) + dt.timedelta(days=30)).isoformat()
    c.add(dumps(event(4005, timestamp=future, receivedAt=None)), dead="future_timestamp")
    c.add(b"42", dead="not_an_object")
    c.add(b"\x1f\x8b\x08\x00garbage", dead="bad_gzip")
    nested = {"type": "track"}
    for _ in range(100):
        nested = {"n": nested}
    c.add(dumps(event(4006, properties=nested)), dead="too_deep")
    body = dumps({"id": 1, "total_price": "10.00", "currency": "INR"})
    forged = base64.b64encode(hmac.new(b"wrong", body, hashlib.sha256).digest()).decode()
    wrapper = {
        "_webhook": {
            "provider": "shopify",
            "tenant_id": TENANT,
            "headers": {
                "X-Shopify-Hmac-Sha256": forged,
                "X-Shopify-Topic": "orders/create",
                "X-Shopify-Webhook-Id": "w1",
            },
            "body_b64": base64.b64encode(body).decode(),
        }
    }
    c.add(dumps(wrapper), dead="bad_signature")
    return c
