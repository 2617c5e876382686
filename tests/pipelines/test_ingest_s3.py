"""Batch ingest from s3:// inputs into an s3:// lake, through Beam's S3 filesystem against the moto server."""

from __future__ import annotations

import gzip

import pytest

from connectors.lake import read_events
from pipelines.ingest_batch import run
from tests.pipelines.corpus import build_corpus
from tests.s3_lake import s3_lake_fs  # noqa: F401  (fixture)


@pytest.mark.integration
def test_ingest_reads_s3_globs_and_writes_an_s3_lake(aws, s3_lake_fs):  # noqa: F811
    corpus = build_corpus(valid=30)
    lines = b"".join(r + b"\n" for r in corpus.records if b"\n" not in r)
    whole = [r for r in corpus.records if b"\n" in r]
    s3 = aws.client("s3")
    s3.put_object(Bucket="lake", Key="incoming/2026-10-01/events.ndjson.gz", Body=gzip.compress(lines))
    for i, record in enumerate(whole):
        s3.put_object(Bucket="lake", Key=f"incoming/2026-10-01/whole-{i}.json", Body=record)
    summary = run(
        [
            "--input", "s3://lake/incoming/*/*.ndjson.gz",
            "--input", "s3://lake/incoming/*/*.json",
            "--lake", "s3://lake/prod",
            f"--aws-endpoint-url={aws.endpoint_url}",
            f"--aws-region={aws.region}",
        ]
    )  # fmt: skip
    table = read_events("s3://lake/prod", filesystem=s3_lake_fs, columns=["message_id"])
    assert table.num_rows == corpus.lake
    assert summary.lake_rows == corpus.lake
    assert summary.dead_letters == sum(corpus.dead.values())
    assert summary.duplicates == corpus.dup
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket="lake", Prefix="prod/dead_letters/")["Contents"]]
    assert keys and all(k.endswith(".jsonl") for k in keys)
