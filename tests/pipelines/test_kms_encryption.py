"""``--kms-key-id``: every object a run writes to an s3:// lake carries SSE-KMS with that key (moto server).

The runs use Beam's multi-threaded in-process workers: the writers run on threads that do not share the
driver's context, so an object is encrypted only when its writer's own config carries the key, as it must
on a remote worker.
"""

from __future__ import annotations

import gzip
import json
from decimal import Decimal

import pyarrow.parquet as pq
import pytest

from connectors.paths import use_encryption
from pipelines.errors import UsageError
from pipelines.ingest_batch import main, run
from tests.pipelines.corpus import build_corpus
from tests.s3_lake import s3_lake_fs  # noqa: F401  (fixture)

SALT = "kms-test-master-secret-0123456789"
WORKER_THREADS = ["--direct_running_mode=multi_threading", "--direct_num_workers=2"]


@pytest.fixture(autouse=True)
def _no_driver_key_left():
    """A run sets its driver's key for the process (the main thread's context): none may leak into the next test."""
    yield
    use_encryption(None)


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


def _assert_encrypted_with(s3, keys: list[str], key: dict) -> None:
    assert keys
    for name in keys:
        head = s3.head_object(Bucket="lake", Key=name)
        assert head.get("ServerSideEncryption") == "aws:kms", name
        assert head.get("SSEKMSKeyId") in (key["KeyId"], key["Arn"]), (name, head.get("SSEKMSKeyId"))
        assert head.get("BucketKeyEnabled") is True, name


def _put_plain_lake(fs, rows: list[dict], prefix: str = "lake/prod", files: int = 1) -> None:
    """Lake files written without any key (pyarrow's S3): a KMS header found later came from the run."""
    from connectors.lake import rows_to_table

    parts: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        parts.setdefault((r["tenant_id"], r["timestamp"].date().isoformat()), []).append(r)
    for (tenant, day), part in parts.items():
        for f in range(files):
            chunk = part[f::files]
            with fs.open_output_stream(
                f"{prefix}/events/tenant_id={tenant}/event_date={day}/part-{f:03d}.parquet"
            ) as out:
                pq.write_table(rows_to_table(chunk), out)


def _aws_flags(aws, key: dict) -> list[str]:
    return [f"--aws-endpoint-url={aws.endpoint_url}", f"--aws-region={aws.region}", f"--kms-key-id={key['Arn']}"]


@pytest.mark.integration
def test_product_analytics_outputs_carry_the_kms_key(aws, s3_lake_fs):  # noqa: F811
    from pipelines import product_analytics
    from tests.pipelines.analytics_lake import random_rows

    s3 = aws.client("s3")
    key = aws.client("kms").create_key()["KeyMetadata"]
    _put_plain_lake(s3_lake_fs, random_rows(seed=7, persons=15, days=3, tenants=("acme-in",)))
    product_analytics.run(
        ["--lake", "s3://lake/prod", "--output", "s3://lake/out/products", "--buckets", "2",
         *_aws_flags(aws, key), *WORKER_THREADS]
    )  # fmt: skip
    keys = _written(s3, "out/")
    want = {f"{t}.{ext}" for t in product_analytics.TABLES for ext in ("parquet", "csv")}
    assert {k.rsplit("/", 1)[1] for k in keys} == want
    _assert_encrypted_with(s3, keys, key)


@pytest.mark.integration
def test_compaction_outputs_and_markers_carry_the_kms_key(aws, s3_lake_fs):  # noqa: F811
    from connectors.aws import S3Encryption
    from connectors.compaction import arrow_s3_filesystem, compact_partition
    from pipelines import compact_lake
    from tests.pipelines.analytics_lake import random_rows

    s3 = aws.client("s3")
    key = aws.client("kms").create_key()["KeyMetadata"]
    rows = random_rows(seed=3, persons=20, days=2, tenants=("acme-in",))
    _put_plain_lake(s3_lake_fs, rows, files=6)
    before = _written(s3, "prod/")
    day = rows[0]["timestamp"].date().isoformat()
    part = {"tenant_id": "acme-in", "event_date": day}
    encryption = S3Encryption(kms_key_id=key["KeyId"], aws=aws)
    with pytest.raises(RuntimeError, match="injected crash"):  # leaves the marker and the outputs behind
        compact_partition("s3://lake/prod", "events", part, filesystem=arrow_s3_filesystem(aws),
                          encryption=encryption, _crash_at="staged")  # fmt: skip
    left = sorted(set(_written(s3, "prod/")) - set(before))
    assert any("/_compaction/" in k and k.endswith(".json") for k in left), left
    assert any("/part-c" in k for k in left), left
    _assert_encrypted_with(s3, left, key)

    totals = compact_lake.run(["--lake", "s3://lake/prod", "--min-age-minutes", "0", *_aws_flags(aws, key),
                               *WORKER_THREADS])  # fmt: skip
    days = {r["timestamp"].date() for r in rows}
    # the crashed partition is finished by the recovery (then already compact), every other one compacted
    assert totals["recovered"] == 1 and totals["partitions_compacted"] == len(days) - 1, totals
    keys = _written(s3, "prod/")
    assert not set(keys) & set(before)  # every input replaced; what is left compaction wrote
    index = [k for k in keys if k.startswith("prod/_keys/")]  # compaction merges the key index too
    assert index and all(k.rsplit("/", 1)[1].startswith("keys-merged-") for k in index), index
    assert all(k.rsplit("/", 1)[1].startswith("part-c") for k in keys if k not in index), keys
    _assert_encrypted_with(s3, keys, key)


@pytest.mark.integration
def test_files_quarantined_by_the_quality_gate_carry_the_kms_key(aws, s3_lake_fs, tmp_path, monkeypatch):  # noqa: F811
    """A partition written without the key (a writer bug) is blocked: its files moved to the quarantine carry it."""
    import apache_beam as beam
    import pyarrow as pa
    from apache_beam.io.filesystems import FileSystems

    from connectors.lake import _WritePartitionBatchFn, lake_file_name
    from pipelines import ingest_batch
    from pipelines.errors import QualityError
    from schemas.lake import EVENTS_FILE_SCHEMA, EVENTS_TABLE
    from tests.pipelines.test_quality_gate import BAD, _events
    from transforms.event_tables import from_ipc

    def _corrupt(element):
        """A negative amount and a message id used twice in the bad partition (no null: the S3 read of the
        quality check cannot cast a null person id to the lake schema, see docs/infrastructure.md)."""
        (tenant, date, bucket), rows = element
        rows = list(rows)
        if rows and isinstance(rows[0], bytes):
            rows = from_ipc(rows).to_pylist()
        if (tenant, str(date)) == BAD and len(rows) >= 4:
            rows = [dict(r) for r in rows]
            rows[2]["revenue_inr"] = Decimal("-12.5000")
            rows[3]["message_id"] = rows[2]["message_id"]
        return (tenant, date, bucket), rows

    class _BuggyS3WriteFn(beam.DoFn):
        def __init__(self, lake, tag, encryption):
            self.lake, self.tag, self.encryption = lake, tag, encryption

        def process(self, element):
            (tenant, date, bucket), rows = _corrupt(element)
            if (tenant, str(date)) != BAD:
                yield from _WritePartitionBatchFn(self.lake, EVENTS_TABLE, self.tag, self.encryption).process(element)
                return
            table = pa.Table.from_pylist(sorted(rows, key=lambda r: r["message_id"]), schema=EVENTS_FILE_SCHEMA)
            path = f"{self.lake}/{EVENTS_TABLE}/tenant_id={tenant}/event_date={date}/{lake_file_name(self.tag, bucket)}"
            sink = pa.BufferOutputStream()
            pq.write_table(table, sink)
            with FileSystems.create(path) as out:  # Beam's S3: no KMS header
                out.write(sink.getvalue().to_pybytes())
            yield path, table.num_rows

    class _BuggyS3Write(beam.PTransform):
        def __init__(self, lake, tag, encryption=None):
            super().__init__()
            self.lake, self.tag, self.encryption = lake, tag, encryption

        def expand(self, batches):
            return batches | "WritePartitionFiles" >> beam.ParDo(_BuggyS3WriteFn(self.lake, self.tag, self.encryption))

    s3 = aws.client("s3")
    key = aws.client("kms").create_key()["KeyMetadata"]
    monkeypatch.setattr(ingest_batch, "WriteLakePartitions", _BuggyS3Write)
    source = _events(str(tmp_path / "events.ndjson"))
    with pytest.raises(QualityError):
        ingest_batch.run(
            ["--input", source, "--lake", "s3://lake/enc", "--quality-gate", "block", "--buckets", "2",
             f"--pii-salt={SALT}", *_aws_flags(aws, key), *WORKER_THREADS]
        )  # fmt: skip
    bad = f"tenant_id={BAD[0]}/event_date={BAD[1]}/"
    quarantined = _written(s3, f"enc/_quarantine/events/{bad}")
    assert quarantined and not _written(s3, f"enc/events/{bad}")
    _assert_encrypted_with(s3, quarantined, key)
