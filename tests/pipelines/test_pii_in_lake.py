"""No PII reaches the lake in a reversible form under the default configuration (no salt given).

Batch ingest of events carrying known emails, phones, IPs, names and an address (an email sent as
userId, a phone as anonymousId), then every byte of every lake file is searched for each value in
clear, for sha256(value) and for sha256(normalised value) as hex: the old default (empty salt) wrote
exactly those. Dead letters are left out on purpose: they keep the raw payload for replay, and
docs/lake.md says who may read them (the test checks that they do, so the exclusion is visible).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os

import pyarrow.parquet as pq
import pytest

from connectors.secrets import SECRET_DIR, SECRET_FILE
from pipelines.ingest_batch import run

T0 = dt.datetime(2026, 10, 1, 9, 0, tzinfo=dt.UTC)

EMAILS = {"Priya.Sharma@Example.IN": "priya.sharma@example.in", "rahul.k@gmail.com": "rahul.k@gmail.com"}
PHONES = {"+91 98765 43210": "+919876543210", "098111 22233": "+919811122233"}
IPS = {"49.36.101.7": "49.36.101.7", "106.51.3.4": "106.51.3.4"}
NAMES = {"Priya Sharma": "Priya Sharma", "Priya": "Priya", "Sharma": "Sharma", "Rahul Kumar": "Rahul Kumar"}
ADDRESS = {"street": "12 MG Road, Indiranagar", "city": "Bengaluru", "postalCode": "560038"}
STREET = ADDRESS["street"]


def sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def event(i: int, tenant: str = "acme-in", **over) -> dict:
    base = {
        "type": "track",
        "event": "Product Viewed",
        "messageId": f"m-{tenant}-{i}",
        "tenantId": tenant,
        "anonymousId": f"anon-{i % 3}",
        "timestamp": (T0 + dt.timedelta(minutes=i)).isoformat(),
        "receivedAt": (T0 + dt.timedelta(minutes=i, seconds=1)).isoformat(),
        "properties": {"product_id": "P1", "price": 499, "currency": "INR"},
        "context": {"ip": "49.36.101.7", "userAgent": "Mozilla/5.0 (Linux; Android 13) Chrome/119.0"},
    }
    base.update(over)
    return base


def corpus() -> list[dict]:
    traits = {
        "email": "Priya.Sharma@Example.IN",
        "phone": "+91 98765 43210",
        "name": "Priya Sharma",
        "firstName": "Priya",
        "last_name": "Sharma",
        "address": ADDRESS,
        "plan": "gold",
    }
    events = []
    for tenant in ("acme-in", "bloom-in"):
        events += [
            # the email as userId (what customers often send), then the same email differently spelt
            event(1, tenant, type="identify", userId="Priya.Sharma@Example.IN", traits=traits),
            event(2, tenant, userId=" priya.sharma@example.in ", context={"ip": "106.51.3.4"}),
            # a phone number as anonymousId, linked to the same person by an identify
            event(3, tenant, type="identify", userId="Priya.Sharma@Example.IN", anonymousId="098111 22233"),
            event(4, tenant, anonymousId="098111 22233", properties={"email": "rahul.k@gmail.com", "price": 1}),
            event(
                5,
                tenant,
                type="identify",
                userId="user_42",
                traits={"email": "rahul.k@gmail.com", "first_name": "Rahul", "name": "Rahul Kumar"},
            ),
            event(6, tenant, type="alias", userId="user_42", previousId="rahul.k@gmail.com"),
            event(7, tenant, properties={"phone": "098111 22233", "price": 2}),
        ]
    return events


BAD = {**event(99), "type": "not-a-type", "traits": {"email": "rahul.k@gmail.com"}}


def needles() -> dict[str, str]:
    """Every text that would give a PII value away: the value, its normalised form, sha256 of both."""
    out: dict[str, str] = {}
    for table in (EMAILS, PHONES, IPS, NAMES, {STREET: STREET, ADDRESS["postalCode"]: ADDRESS["postalCode"]}):
        for raw, normal in table.items():
            for text in {raw, raw.strip(), normal}:
                out[text.lower()] = raw
                out[sha(text)] = f"sha256({text!r})"
    out[sha(json.dumps(ADDRESS, separators=(",", ":"), sort_keys=True))] = "sha256(address JSON)"
    return out


def lake_texts(lake: str) -> dict[str, str]:
    """path -> all its text: the raw bytes, and for Parquet every column of every row as text."""
    texts = {}
    for folder, _, names in os.walk(lake):
        if os.path.relpath(folder, lake).split(os.sep)[0] == "dead_letters":
            continue
        for name in names:
            path = os.path.join(folder, name)
            with open(path, "rb") as handle:
                text = handle.read().decode("latin-1")
            if name.endswith(".parquet"):
                table = pq.read_table(path)
                text += "\n" + json.dumps(table.to_pylist(), default=str, ensure_ascii=False)
            texts[path] = text.lower()
    return texts


@pytest.fixture(scope="module")
def ingested(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pii")
    with open(tmp / "events.ndjson", "w") as handle:
        for ev in [*corpus(), BAD]:
            handle.write(json.dumps(ev) + "\n")
    lake = str(tmp / "lake")
    saved = os.environ.pop("LIVORA_PII_SALT", None)  # the default configuration: no salt anywhere
    try:
        summary = run(["--input", str(tmp / "events.ndjson"), "--lake", lake, "--tracking-plans", "none"])
    finally:
        if saved is not None:
            os.environ["LIVORA_PII_SALT"] = saved
    return lake, summary


def test_no_pii_in_clear_or_unsalted_hash_anywhere_in_the_lake(ingested):
    lake, summary = ingested
    assert (summary.lake_rows, summary.dead_letters) == (14, 1)
    texts = lake_texts(lake)
    assert any(path.endswith(".parquet") for path in texts) and len(texts) > 2
    found = [
        f"{where} in {os.path.relpath(path, lake)}"
        for path, text in texts.items()
        for needle, where in needles().items()
        if needle in text
    ]
    assert found == []


def test_the_secret_is_kept_with_the_lake_and_unused_secrets_are_not_in_rows(ingested):
    lake, _ = ingested
    path = os.path.join(lake, SECRET_DIR, SECRET_FILE)
    with open(path) as handle:
        secret = handle.read().strip()
    assert len(secret) == 64
    assert not any(secret in text for p, text in lake_texts(lake).items() if p != path)


def rows(lake: str) -> list[dict]:
    out = []
    for folder, _, names in os.walk(os.path.join(lake, "events")):
        for name in names:
            out += pq.read_table(os.path.join(folder, name)).to_pylist()
    return out


def test_hashed_ids_still_stitch_per_tenant_and_differ_between_tenants(ingested):
    lake, _ = ingested
    by_id = {r["message_id"]: r for r in rows(lake)}
    for tenant in ("acme-in", "bloom-in"):
        one, two, three, four = (by_id[f"m-{tenant}-{i}"] for i in (1, 2, 3, 4))
        # the email as userId, spelt two ways, is one hashed id, equal to the hashed traits.email
        assert one["user_id"] == two["user_id"] == json.loads(one["traits"])["email"]
        assert len(one["user_id"]) == 64
        # the phone as anonymousId is hashed, and the identify still stitches it to the email user
        assert three["anonymous_id"] == four["anonymous_id"] != "098111 22233"
        assert one["person_id"] == two["person_id"] == three["person_id"] == four["person_id"]
        five, six = by_id[f"m-{tenant}-5"], by_id[f"m-{tenant}-6"]
        assert five["user_id"] == six["user_id"] == "user_42"  # opaque ids stay as sent
        assert six["previous_id"] == json.loads(five["traits"])["email"]
        assert json.loads(one["traits"])["plan"] == "gold"  # non-PII traits untouched
    acme, bloom = by_id["m-acme-in-1"], by_id["m-bloom-in-1"]
    assert acme["user_id"] != bloom["user_id"]  # tenants' hashes of the same email never match
    assert acme["ip"] != bloom["ip"]


def test_dead_letters_keep_the_raw_payload(ingested):
    """Documented exception (docs/lake.md): dead letters hold the payload as sent, for replay."""
    lake, _ = ingested
    folder = os.path.join(lake, "dead_letters")
    text = ""
    for d, _, names in os.walk(folder):
        for n in names:
            with open(os.path.join(d, n), encoding="utf-8") as handle:
                text += handle.read()
    assert "rahul.k@gmail.com" in text


def test_a_second_run_on_the_same_lake_hashes_the_same(ingested, tmp_path):
    lake, _ = ingested
    before = {r["message_id"]: (r["user_id"], r["ip"], r["traits"]) for r in rows(lake)}
    with open(tmp_path / "again.ndjson", "w") as handle:
        for ev in corpus():
            handle.write(json.dumps({**ev, "messageId": ev["messageId"] + "-again"}) + "\n")
    run(["--input", str(tmp_path / "again.ndjson"), "--lake", lake, "--tracking-plans", "none"])
    after = {r["message_id"]: (r["user_id"], r["ip"], r["traits"]) for r in rows(lake)}
    assert len(after) == 2 * len(before)
    assert all(after[key + "-again"] == value for key, value in before.items())


@pytest.mark.integration
@pytest.mark.slow
def test_no_pii_in_the_warehouse_or_dynamodb_either(aws, tmp_path):
    """The same corpus through the streaming job with every sink (default configuration: no salt):
    every DynamoDB item and every warehouse value is searched for the same needles as the lake."""
    import io

    import duckdb

    from infra.resources import StreamingResources, create_streaming_resources
    from pipelines import stream_events
    from pipelines.demo_stream import put_records

    res = create_streaming_resources(aws, StreamingResources(stream="events", shards=1, bucket=None))
    put_records(aws.client("kinesis"), res.stream, [json.dumps(ev).encode() for ev in corpus()])
    lake, warehouse = str(tmp_path / "lake"), tmp_path / "wh.duckdb"
    saved = os.environ.pop("LIVORA_PII_SALT", None)
    try:
        summary = stream_events.run(
            [
                f"--stream={res.stream}",
                f"--lake={lake}",
                f"--aws-endpoint-url={aws.endpoint_url}",
                f"--consumer-app={res.consumer_app}",
                f"--dedupe-table={res.dedupe_table}",
                f"--profiles-table={res.profiles_table}",
                f"--identity-table={res.identity_table}",
                f"--warehouse=duckdb:///{warehouse}",
                "--tracking-plans=none",
            ],
            out=io.StringIO(),
        )
    finally:
        if saved is not None:
            os.environ["LIVORA_PII_SALT"] = saved
    assert summary.total("lake_rows") == 14
    texts = {"lake " + p: t for p, t in lake_texts(lake).items()}
    client = aws.client("dynamodb")
    for table in (res.profiles_table, res.identity_table, res.dedupe_table):
        items = client.scan(TableName=table)["Items"]
        assert items, table
        texts[f"dynamodb {table}"] = json.dumps(items, ensure_ascii=False).lower()
    with duckdb.connect(str(warehouse), read_only=True) as con:
        for (name,) in con.execute("select table_name from information_schema.tables").fetchall():
            values = con.execute(f'select * from "{name}"').fetchall()
            texts[f"warehouse {name}"] = json.dumps(values, default=str, ensure_ascii=False).lower()
    assert any(k.startswith("warehouse") and len(v) > 100 for k, v in texts.items())
    found = [
        f"{what} in {where}" for where, text in texts.items() for needle, what in needles().items() if needle in text
    ]
    assert found == []
