"""Hostile tenant ids through the real batch pipeline: dead letters, never paths.

Each id below once wrote outside the lake, over another tenant's file, into a partition the lake could
no longer read, or crashed the run. Now each must be a dead letter ``invalid_tenant``, the other
tenant's files must stay byte for byte, nothing may appear outside the lake and the whole lake must
stay readable with Hive partitioning.
"""

from __future__ import annotations

import collections
import hashlib
import json
import os
import random

import duckdb

from connectors.lake import read_dead_letters
from pipelines.ingest_batch import run
from tests.pipelines.corpus import event
from tests.schemas.test_identifiers import HOSTILE_TENANTS


def fuzzed_tenants(count: int, seed: int = 9) -> list[str]:
    """Random ids built from the characters that make trouble in paths and keys."""
    rng = random.Random(seed)
    alphabet = "abc-_./\\=\x00\x1f\n %\u00e9\U0001f600ACME"
    return ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 80))) for _ in range(count)]


def files_under(root):
    found = {}
    for directory, _, names in os.walk(root):
        for name in names:
            path = os.path.join(directory, name)
            with open(path, "rb") as handle:
                found[os.path.relpath(path, root)] = hashlib.sha256(handle.read()).hexdigest()
    return found


def write_lines(path, events):
    with open(path, "w", encoding="utf-8") as handle:
        for item in events:
            handle.write(json.dumps(item, ensure_ascii=True) + "\n")


def test_hostile_tenant_ids_become_dead_letters_and_touch_no_other_file(tmp_path):
    lake = tmp_path / "lake"
    (tmp_path / "in1").mkdir()
    (tmp_path / "in2").mkdir()
    write_lines(tmp_path / "in1" / "good.ndjson", [event(i) for i in range(40)])
    run(["--input", str(tmp_path / "in1" / "*.ndjson"), "--lake", str(lake)])
    before_lake = files_under(lake / "events")
    assert before_lake, "the first run wrote acme-in's files"

    hostile = [t for t in HOSTILE_TENANTS if t] + fuzzed_tenants(60)
    hostile = [t for t in dict.fromkeys(hostile) if t and not (t.islower() and t.replace("-", "").isalnum())]
    attack = [event(1000 + i, tenantId=tenant, messageId=f"m-{i:05d}") for i, tenant in enumerate(hostile)]
    # the attacker reuses acme-in's message ids and dates: a path escape would land on acme-in's files
    write_lines(tmp_path / "in2" / "attack.ndjson", attack)
    outside_before = {p for p in files_under(tmp_path) if not p.startswith("lake/")}

    summary = run(["--input", str(tmp_path / "in2" / "*.ndjson"), "--lake", str(lake)])

    assert summary.events_parsed == len(attack)
    assert summary.lake_rows == 0 and summary.duplicates == 0
    assert summary.dead_letters == len(attack)
    reasons = collections.Counter(f.reason.value for f in read_dead_letters(str(lake / "dead_letters")))
    assert reasons == {"invalid_tenant": len(attack)}
    for letter in read_dead_letters(str(lake / "dead_letters")):
        assert letter.tenant_id is None  # a hostile id never becomes a dead letter's routing field
        assert letter.field_path == "tenantId"

    assert files_under(lake / "events") == before_lake  # acme-in's files byte for byte, and nothing new
    outside_after = {p for p in files_under(tmp_path) if not p.startswith("lake/")}
    assert outside_after == outside_before  # nothing written outside the lake
    top = sorted(os.listdir(lake / "events"))
    assert top == ["tenant_id=acme-in"]

    count, tenants = duckdb.sql(
        f"select count(*), list(distinct tenant_id) from read_parquet('{lake}/events/**/*.parquet', "
        "hive_partitioning=true)"
    ).fetchall()[0]
    assert count == 40 and tenants == ["acme-in"]
