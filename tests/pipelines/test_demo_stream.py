"""The streaming demo runs end to end on its own local stack and accounts for every event."""

from __future__ import annotations

import io
import os

import pytest

from pipelines.demo_stream import partition_key, run_streaming_demo

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_partition_key_keeps_a_person_on_one_shard():
    assert partition_key(b'{"anonymousId":"anon-1","userId":"u"}') == "anon-1"
    assert partition_key(b'{"userId":"u-9"}') == "u-9"
    assert partition_key(b"not json") == partition_key(b"not json") != partition_key(b"other")
    assert len(partition_key(b"\xff\xfe")) == 40


def test_streaming_demo_accounts_for_every_event(tmp_path):
    out = io.StringIO()
    summary = run_streaming_demo(str(tmp_path), events=400, seed=3, shards=2, out=out)
    # through the HTTP collector: 400 SDK events + 2 signed webhooks, the unparseable ones refused at the door
    assert summary["events_in"] + summary["refused_at_collector"] == 402
    assert 0 < summary["refused_at_collector"] < 20
    assert summary["lake_rows"] + summary["dead_letters"] + summary["duplicates"] == summary["events_in"]
    assert summary["webhook_rows"] == 2  # the Shopify order and the Razorpay payment, verified twice
    assert summary["lake_rows"] > 300 and summary["dead_letters"] > 0 and summary["duplicates"] > 0
    assert summary["warehouse_rows"] == summary["lake_rows"]
    assert summary["profile_items"] > 0
    assert os.path.isdir(summary["paths"]["lake"])
    assert "all accounted for" in out.getvalue() and "pass k" in out.getvalue()
