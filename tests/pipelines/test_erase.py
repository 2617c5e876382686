"""Erasure: the persons asked for are gone from every store, nobody else changed, re-runs are no-ops, late
events are suppressed. Expected values come from the corpus written here, not from the code under test."""

from __future__ import annotations

import glob
import json
import os
import re
from pathlib import Path

import duckdb
import pyarrow.parquet as pq
import pytest

from connectors.lake import read_events
from connectors.secrets import local_secret
from connectors.synthetic import generate_events
from pipelines import erase, features, ingest_batch, load_sinks
from transforms.erasure import ErasureRequest, Subjects, close_over, dead_letter_mentions, lake_identifiers
from transforms.pii import hash_value, tenant_salt

SALT = "s" * 32


# --- pure ------------------------------------------------------------------------------------------------


def test_request_identifiers_are_hashed_as_ingest_hashes_them():
    email = ErasureRequest(tenant="acme-in", email="  Alice@Example.IN ")
    assert lake_identifiers(email, SALT) == ("email", {hash_value(SALT, "alice@example.in")})
    phone = ErasureRequest(tenant="acme-in", phone="098765 43210")
    assert lake_identifiers(phone, SALT) == ("phone", {hash_value(SALT, "+919876543210")})
    opaque = ErasureRequest(tenant="acme-in", user_id="user-42")
    assert lake_identifiers(opaque, SALT) == ("user_id", {"user-42"})
    as_email = ErasureRequest(tenant="acme-in", user_id="Bob@Example.in")
    assert lake_identifiers(as_email, SALT) == ("user_id", {hash_value(SALT, "bob@example.in")})
    with pytest.raises(ValueError, match="exactly one"):
        ErasureRequest(tenant="acme-in", email="a@b.in", user_id="u")


def test_close_over_follows_shared_ids_but_not_strangers():
    import pyarrow as pa

    rows = pa.table(
        {
            "user_id": [None, "u1", "u1", "u2"],
            "anonymous_id": ["a1", "a1", "a2", "a3"],
            "previous_id": [None, None, None, None],
            "person_id": ["p_anon", "p1", "p1", "p2"],
            "email_hash": [None, "h1", None, None],
            "phone_hash": [None, None, None, None],
        }
    )
    found = close_over(rows, Subjects(ids={"h1"}))
    assert found.person_ids == {"p1", "p_anon"}  # a1 was p_anon before sign-up (streaming)
    assert found.ids == {"h1", "u1", "a1", "a2"}


def test_dead_letter_match_reads_raw_contacts_and_ids():
    subjects = Subjects(ids={hash_value(SALT, "alice@example.in"), "u1"}, person_ids={"p1"})
    raw = json.dumps({"type": "identify", "anonymousId": "x", "traits": {"email": " ALICE@example.in"}})
    assert dead_letter_mentions(raw, subjects, SALT, None)
    assert dead_letter_mentions(json.dumps({"userId": "u1"}), subjects, SALT, None)
    assert not dead_letter_mentions(
        json.dumps({"userId": "u12", "traits": {"email": "bob@x.in"}}), subjects, SALT, None
    )
    from transforms.erasure import needle_pattern

    needles = needle_pattern(["alice@example.in", "u1"])
    assert dead_letter_mentions('{"broken": "Alice@Example.in', subjects, SALT, needles)
    assert not dead_letter_mentions('{"broken": "u12"', subjects, SALT, needles)


# --- the whole procedure ----------------------------------------------------------------------------------


def _event(mid, kind, day, minute, *, user=None, anon=None, tenant="acme-in", **extra):
    ts = f"2026-10-{day:02d}T10:{minute:02d}:00.000Z"
    event = {"type": kind, "messageId": mid, "tenantId": tenant, "originalTimestamp": ts, "sentAt": ts}
    event["receivedAt"] = ts
    if user:
        event["userId"] = user
    if anon:
        event["anonymousId"] = anon
    event.update(extra)
    return json.dumps(event)


def _corpus() -> list[str]:
    order = {"event": "Order Completed", "properties": {"order_id": "o-a", "revenue": 999, "currency": "INR"}}
    return [
        # Alice: anonymous, then signs up with email + phone, buys on a second device
        _event("a-1", "page", 1, 1, anon="anon-a1", name="Home"),
        _event(
            "a-2",
            "identify",
            1,
            2,
            user="user-a",
            anon="anon-a1",
            traits={"email": " Alice@Example.IN ", "phone": "98765 43210", "name": "Alice"},
        ),
        _event("a-3", "track", 2, 3, user="user-a", anon="anon-a2", **order),
        # Bob: his email is his user id
        _event("b-1", "track", 1, 4, user="Bob@Example.in", anon="anon-b", event="Product Viewed"),
        _event("b-2", "identify", 2, 5, user="Bob@Example.in", traits={"phone": "+91 91234 56789"}),
        # Carol: found through an anonymous id stitched to her user id
        _event("c-1", "page", 1, 6, anon="anon-c", name="Home"),
        _event("c-2", "identify", 1, 7, user="user-c", anon="anon-c", traits={"email": "carol@example.in"}),
        _event("c-3", "track", 2, 8, user="user-c", event="Product Viewed"),
        # Dave stays; and another brand's "user-a" is another person who stays
        _event("d-1", "identify", 1, 9, user="user-d", anon="anon-d", traits={"email": "dave@example.in"}),
        _event("d-2", "track", 2, 10, user="user-d", event="Product Viewed"),
        _event("x-1", "identify", 1, 11, user="user-a", tenant="bloom-in", traits={"email": "alice2@example.in"}),
        # dead letters: Alice's (track without a name; malformed JSON with her email), Dave's
        _event("a-bad", "track", 1, 12, user="user-a"),
        '{"type": "identify", "userId": "someone", "traits": {"email": "ALICE@example.in"',
        _event("d-bad", "track", 1, 13, user="user-d"),
    ]


VICTIM_PERSONS: set[str] = set()


def _files(root) -> dict[str, bytes]:
    out = {}
    for path in glob.glob(f"{root}/**/*", recursive=True):
        rel = os.path.relpath(path, root)
        if os.path.isfile(path) and not rel.startswith(("_audit", "_tombstones", "_secrets", "_runs", "_ingested")):
            out[rel] = Path(path).read_bytes()
    return out


def _texts(lake, warehouse, aws, tenant="acme-in") -> dict[str, str]:
    """Every output of ``tenant`` as text: Parquet rows, JSON/JSONL lines, DynamoDB items, warehouse rows (another
    brand may have a person with the same opaque user id: its data is not searched)."""
    out = {}
    for rel, data in _files(lake).items():
        if "tenant_id=" in rel and f"tenant_id={tenant}/" not in rel:
            continue
        if rel.endswith(".parquet"):
            rows = pq.read_table(os.path.join(lake, rel)).to_pylist()
            out[rel] = str([r for r in rows if r.get("tenant_id", tenant) == tenant])
        else:
            lines = data.decode("utf-8", "replace").splitlines()
            out[rel] = "\n".join(
                line for line in lines if f'"tenant_id": "{tenant}"' in line or "tenant_id" not in line
            )
            out[rel] += "".join(line for line in lines if '"tenant_id": null' in line)
    client = aws.client("dynamodb")
    for table in ("prof", "ident"):
        items = client.scan(TableName=table)["Items"]
        out[f"dynamodb:{table}"] = str([i for i in items if i["pk"]["S"].startswith(f"{tenant}#")])
    con = duckdb.connect(warehouse.removeprefix("duckdb://"))
    for (table,) in con.execute("select table_name from information_schema.tables").fetchall():
        out[f"warehouse:{table}"] = str(
            con.execute(f'select * from "{table}" where tenant_id = ?', [tenant]).fetchall()
        )
    con.close()
    return out


def _ingest(lake, path, lines):
    path.write_bytes(b"\n".join(x if isinstance(x, bytes) else x.encode() for x in lines) + b"\n")
    return ingest_batch.run(["--input", str(path), "--lake", str(lake), "--tracking-plans", "none"])


@pytest.mark.integration
@pytest.mark.slow
def test_erase_everywhere_then_noop_then_suppress(tmp_path, aws):
    lake = tmp_path / "lake"
    others = list(generate_events(300, seed=5, days=3))
    _ingest(lake, tmp_path / "in.ndjson", _corpus() + others)
    warehouse = f"duckdb://{tmp_path}/wh.duckdb"
    sinks = ["--aws-profile", "local", "--aws-endpoint-url", aws.endpoint_url]
    load_sinks.run(
        ["--lake", str(lake), "--warehouse", warehouse, "--profiles-table", "prof", "--identity-table", "ident",
         "--create-tables", *sinks]
    )  # fmt: skip
    features.run(["--lake", str(lake), "--as-of", "2026-10-03", "--warehouse", warehouse])

    salt = tenant_salt(local_secret(str(lake)), "acme-in")
    events = read_events(str(lake)).to_pylist()
    acme = [e for e in events if e["tenant_id"] == "acme-in"]
    victims = {e["person_id"] for e in acme if e["message_id"][:2] in ("a-", "b-", "c-")}
    assert len(victims) == 3  # stitching made one person each
    secrets = {
        *victims, "user-a", "user-c", "anon-a1", "anon-a2", "anon-b", "anon-c",
        hash_value(salt, "alice@example.in"), hash_value(salt, "+919876543210"), hash_value(salt, "bob@example.in"),
        hash_value(salt, "+919123456789"), hash_value(salt, "carol@example.in"),
    }  # fmt: skip
    clear = {"alice@example.in", "9876543210", "98765 43210", "bob@example.in"}
    before_texts = _texts(lake, warehouse, aws)
    assert any("user-a" in t for t in before_texts.values())  # the search can find them
    before_files = _files(lake)
    keep_rows = {(e["tenant_id"], e["message_id"]): e for e in events if e["person_id"] not in victims}
    con = duckdb.connect(warehouse.removeprefix("duckdb://"))
    keep_wh = con.execute("select * from events where person_id not in (select unnest(?))", [list(victims)]).fetchall()
    con.close()

    # Carol through her anonymous id (flags), Alice and Bob through a request file (email; email as user id)
    flags = ["--lake", str(lake), "--warehouse", warehouse, "--profiles-table", "prof", "--identity-table", "ident"]
    erase.run([*flags, *sinks, "--tenant", "acme-in", "--anonymous-id", "anon-c", "--requested-by", "ticket-1"])
    requests = tmp_path / "requests.jsonl"
    requests.write_text(
        json.dumps({"tenant": "acme-in", "email": " Alice@Example.IN ", "requested_by": "ticket-2"})
        + "\n"
        + json.dumps({"tenant": "acme-in", "user_id": "Bob@Example.in", "requested_by": "ticket-3"})
        + "\n"
    )
    record = erase.run([*flags, *sinks, "--requests", str(requests)])
    (tenant,) = record["tenants"]
    assert [r["found"] for r in tenant["requests"]] == [True, True]
    assert tenant["removed"]["lake_events"]["rows"] == 5
    assert tenant["removed"]["dead_letters"]["rows"] == 2  # Alice's invalid track and the malformed line

    after_texts = _texts(lake, warehouse, aws)
    for where, text in after_texts.items():
        leaked = {s for s in secrets if _holds(text, s)} | {c for c in clear if c in text.lower()}
        assert not leaked, f"{where} still holds {leaked}"
    after_files = _files(lake)
    touched = {rel for rel in before_files if after_files.get(rel) != before_files[rel]}
    for rel in touched:  # only files that held a victim changed
        assert any(_holds(before_texts[rel].lower(), s.lower()) for s in secrets | clear), rel
    after_events = read_events(str(lake)).to_pylist()
    assert {(e["tenant_id"], e["message_id"]): e for e in after_events} == keep_rows
    assert any(e["tenant_id"] == "bloom-in" and e["user_id"] == "user-a" for e in after_events)
    con = duckdb.connect(warehouse.removeprefix("duckdb://"))
    assert sorted(con.execute("select * from events").fetchall(), key=str) == sorted(keep_wh, key=str)
    con.close()

    audits = sorted(glob.glob(f"{lake}/_audit/erasure/*.json"))
    assert len(audits) == 2
    audit_text = "".join(Path(p).read_text() for p in audits)
    assert not any(c in audit_text.lower() for c in clear)
    assert hash_value(salt, "alice@example.in") in audit_text and "ticket-2" in audit_text

    # re-run: nothing left to remove, nothing rewritten, one more audit record
    again = erase.run([*flags, *sinks, "--requests", str(requests)])
    removed = again["tenants"][0]["removed"]
    assert removed["lake_events"]["rows"] == removed["dead_letters"]["rows"] == 0
    assert removed["dynamodb_profiles"]["items"] == removed["dynamodb_identity"]["items"] == 0
    assert sum(removed["warehouse"].values()) == 0
    assert _files(lake) == after_files
    assert len(glob.glob(f"{lake}/_audit/erasure/*.json")) == 3

    # a late event of Alice, and one of Dave: Alice's is suppressed, Dave's lands
    late = [
        _event("a-late", "track", 3, 1, user="user-a", event="Product Viewed"),
        _event("d-late", "track", 3, 2, user="user-d", event="Product Viewed"),
    ]
    summary = _ingest(lake, tmp_path / "late.ndjson", late)
    assert summary.suppressed == 1 and summary.lake_rows == 1
    ids = {e["message_id"] for e in read_events(str(lake)).to_pylist()}
    assert "d-late" in ids and "a-late" not in ids


@pytest.mark.integration
def test_dry_run_changes_nothing(tmp_path):
    lake = tmp_path / "lake"
    _ingest(lake, tmp_path / "in.ndjson", _corpus())
    before = _files(lake)
    record = erase.run(["--lake", str(lake), "--tenant", "acme-in", "--user-id", "user-a", "--dry-run"])
    assert record["tenants"][0]["removed"]["lake_events"]["rows"] == 3
    assert _files(lake) == before
    assert not glob.glob(f"{lake}/_audit/**/*.json", recursive=True)
    assert not glob.glob(f"{lake}/_tombstones/**/*.json", recursive=True)


def test_bad_requests_fail_before_any_change(tmp_path):
    from pipelines.errors import UsageError

    with pytest.raises(UsageError, match="one of"):
        erase.run(["--lake", str(tmp_path)])
    with pytest.raises(UsageError, match="--tenant"):
        erase.run(["--lake", str(tmp_path), "--email", "a@b.in"])
    bad = tmp_path / "r.jsonl"
    bad.write_text('{"tenant": "acme-in", "email": "a@b.in", "user_id": "u"}\n')
    with pytest.raises(UsageError, match="line 1"):
        erase.run(["--lake", str(tmp_path), "--requests", str(bad)])


def _holds(text: str, token: str) -> bool:
    """``token`` as a whole id in ``text`` (``anon-b`` is not in ``anon-b0c11f``)."""
    return re.search(rf"(?<![\w-]){re.escape(token)}(?![\w-])", text) is not None
