"""``--kms-key-id``: every object a run writes to an s3:// lake carries SSE-KMS with that key (moto server).

The runs use Beam's multi-threaded in-process workers: the writers run on threads that do not share the
driver's context, so an object is encrypted only when its writer's own config carries the key, as it must
on a remote worker.
"""

from __future__ import annotations

import gzip
import json

import pyarrow.parquet as pq
import pytest

from pipelines.errors import UsageError
from pipelines.ingest_batch import main, run
from tests.pipelines.corpus import build_corpus
from tests.s3_lake import s3_lake_fs  # noqa: F401  (fixture)

SALT = "kms-test-master-secret-0123456789"
WORKER_THREADS = ["--direct_running_mode=multi_threading", "--direct_num_workers=2"]


def _put_input(s3) -> None:
    corpus = build_corpus(valid=20)
    lines = b"".join(r + b"\n" for r in corpus.records if b"\n" not in r)
    s3.put_object(Bucket="lake", Key="incoming/events.ndjson.gz", Body=gzip.compress(lines))


def _written(s3, prefix: str) -> list[str]:
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket="lake", Prefix=prefix)
    return [o["Key"] for page in pages for o in page.get("Contents", [])]


def _argv(aws, lake: str, *extra: str) -> list[str]:
    return [
        "--input", "s3://lake/incoming/*.ndjson.gz",
        "--lake", lake,
        f"--aws-endpoint-url={aws.endpoint_url}",
        f"--aws-region={aws.region}",
        f"--pii-salt={SALT}",
        *WORKER_THREADS,
        *extra,
    ]  # fmt: skip


@pytest.mark.integration
def test_every_object_of_an_ingest_run_carries_the_kms_key(aws, s3_lake_fs):  # noqa: F811
    s3 = aws.client("s3")
    key = aws.client("kms").create_key(Description="livora lake")["KeyMetadata"]
    _put_input(s3)
    main(_argv(aws, "s3://lake/enc", f"--kms-key-id={key['KeyId']}"))  # main(): the run record is written too
    keys = _written(s3, "enc/")
    kinds = {k.split("/")[1] for k in keys}
    # lake files, dead letters, the run summary and run record, the ingest manifest, the quality results
    assert {"events", "dead_letters", "_runs", "_ingested"} <= kinds, kinds
    (record_key,) = [k for k in keys if "/_runs/records/" in k]
    record = json.loads(s3.get_object(Bucket="lake", Key=record_key)["Body"].read())
    assert record["caller"]["Account"] == aws.client("sts").get_caller_identity()["Account"]  # who ran it
    assert f"--kms-key-id={key['KeyId']}" in record["argv"]  # a key id is no secret: kept for the audit
    for name in keys:
        head = s3.head_object(Bucket="lake", Key=name)
        assert head.get("ServerSideEncryption") == "aws:kms", name
        assert head.get("SSEKMSKeyId") in (key["KeyId"], key["Arn"]), (name, head.get("SSEKMSKeyId"))
        assert head.get("BucketKeyEnabled") is True, name


@pytest.mark.integration
def test_without_the_flag_objects_carry_no_kms_header(aws, s3_lake_fs):  # noqa: F811
    s3 = aws.client("s3")
    _put_input(s3)
    summary = run(_argv(aws, "s3://lake/plain"))
    assert summary.lake_rows > 0
    keys = _written(s3, "plain/")
    assert any(k.startswith("plain/events/") for k in keys)
    for name in keys:
        head = s3.head_object(Bucket="lake", Key=name)
        assert head.get("ServerSideEncryption") != "aws:kms", name
        assert "SSEKMSKeyId" not in head, name


@pytest.mark.parametrize(
    "value", ["my-key", "alias/", "arn:aws:kms:ap-south-1:123:key/abc", "1234abcd-12ab-34cd-56ef", "alias/a b"]
)
def test_a_malformed_key_id_is_a_usage_error_naming_the_flag(tmp_path, value):
    (tmp_path / "in.ndjson").write_text("{}\n")
    with pytest.raises(UsageError, match=r"^--kms-key-id .*expected a KMS key id"):
        run(["--input", str(tmp_path / "in.ndjson"), "--lake", "s3://lake/x", f"--kms-key-id={value}"])


@pytest.mark.integration
def test_analytics_outputs_written_by_workers_carry_the_kms_key(aws, s3_lake_fs):  # noqa: F811
    from connectors.lake import rows_to_table
    from pipelines.funnels import run as run_funnels
    from pipelines.retention import run as run_retention
    from tests.pipelines.analytics_lake import random_rows

    s3 = aws.client("s3")
    key = aws.client("kms").create_key()["KeyMetadata"]
    rows = random_rows(seed=5, persons=15, days=3, tenants=("acme-in",))
    by_day: dict[str, list[dict]] = {}
    for r in rows:
        by_day.setdefault(r["timestamp"].date().isoformat(), []).append(r)
    for day, part in by_day.items():
        with s3_lake_fs.open_output_stream(
            f"lake/prod/events/tenant_id=acme-in/event_date={day}/part-0.parquet"
        ) as out:
            pq.write_table(rows_to_table(part), out)
    common = [
        "--aws-endpoint-url", aws.endpoint_url, "--aws-region", aws.region, "--buckets", "2",
        f"--kms-key-id={key['Arn']}", *WORKER_THREADS,
    ]  # fmt: skip
    steps = "Product Viewed,Product Added,Order Completed"
    run_funnels(["--lake", "s3://lake/prod", "--steps", steps, "--output", "s3://lake/out/funnels", *common])
    run_retention(
        ["--lake", "s3://lake/prod", "--start-event", "Product Viewed", "--return-event", "Order Completed",
         "--periods", "3", "--output", "s3://lake/out/retention", *common]
    )  # fmt: skip
    keys = _written(s3, "out/")
    assert {k.rsplit("/", 1)[1] for k in keys} >= {"funnel_steps.parquet", "funnel_steps.csv", "retention.parquet"}
    for name in keys:
        head = s3.head_object(Bucket="lake", Key=name)
        assert head.get("ServerSideEncryption") == "aws:kms", name
        assert head.get("SSEKMSKeyId") in (key["KeyId"], key["Arn"]), name
