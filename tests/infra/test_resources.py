"""infra.resources: everything the streaming job needs, created idempotently on the moto server."""

from __future__ import annotations

import pytest

from infra.resources import StreamingResources, create_streaming_resources, main

pytestmark = pytest.mark.integration


def test_create_is_idempotent_and_reports_what_was_new(aws):
    res = create_streaming_resources(aws, StreamingResources(stream="events", shards=3, bucket="lake-bucket"))
    assert set(res.created) == {
        "kinesis:events",
        "s3:lake-bucket",
        "dynamodb:livora-checkpoints-livora-stream",
        "dynamodb:livora-dedupe",
        "dynamodb:livora-profiles",
        "dynamodb:livora-identity",
    }
    again = create_streaming_resources(aws, StreamingResources(stream="events", shards=3, bucket="lake-bucket"))
    assert again.created == []
    kinesis = aws.client("kinesis")
    assert len(kinesis.list_shards(StreamName="events")["Shards"]) == 3
    ttl = aws.client("dynamodb").describe_time_to_live(TableName="livora-dedupe")["TimeToLiveDescription"]
    assert ttl["AttributeName"] == "expires_at"


def test_cli_creates_resources(aws, capsys):
    main(
        [
            "--profile=local",
            f"--endpoint-url={aws.endpoint_url}",
            "--stream=cli",
            "--shards=1",
            "--bucket=none",
            "--profiles-table=none",
            "--identity-table=none",
            "--consumer-app=app",
        ]
    )
    out = capsys.readouterr().out
    assert '"checkpoint_table": "livora-checkpoints-app"' in out
    assert "kinesis:cli" in out and "s3:" not in out
