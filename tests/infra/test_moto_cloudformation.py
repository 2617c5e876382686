"""The synthesized dev data stack deployed to the moto server's CloudFormation, then a streaming pass on it.

The template is ``python -m infra.app --env dev``'s output; moto creates the key, alias, stream, bucket and
tables from it (the bucket policy is the one type moto's CloudFormation does not implement: stripped, see
``tests/infra/moto_cfn.py``). The streaming pass then reads the stream and writes the bucket and tables the
stack created, by the names the stack reports, and creates nothing of its own.
"""

from __future__ import annotations

import io
import shutil

import pytest

from connectors.aws import AwsSettings
from connectors.lake import read_events
from connectors.synthetic import generate_events
from infra.cdk.config import ENVIRONMENTS
from infra.local_stack import reset
from infra.resources import StreamingResources
from pipelines import stream_events
from pipelines.demo_stream import put_records
from tests.infra.moto_cfn import MOTO_UNSUPPORTED, deploy, synthesize

pytestmark = [pytest.mark.integration, pytest.mark.slow]

if shutil.which("node") is None:
    pytest.skip("the CDK's jsii runtime needs Node.js on PATH", allow_module_level=True)
pytest.importorskip("aws_cdk")

DEV = ENVIRONMENTS["dev"]


@pytest.fixture(scope="module")
def dev_templates(tmp_path_factory):
    return synthesize("dev", tmp_path_factory.mktemp("cdk-dev"))


def test_moto_unsupported_list_is_exact(dev_templates):
    """The stripped types are exactly those moto lacks: a moto upgrade or a new resource type shows up here."""
    from moto.cloudformation.parsing import resource_class_from_type

    types = {r["Type"] for r in dev_templates[f"{DEV.prefix()}-Data"]["Resources"].values()}
    assert {t for t in types if resource_class_from_type(t) is None} == MOTO_UNSUPPORTED


def test_data_stack_deploys_to_moto_and_a_streaming_pass_runs_on_what_it_created(
    moto_endpoint, dev_templates, tmp_path, monkeypatch
):
    reset(moto_endpoint)
    aws = AwsSettings.local(moto_endpoint, region=DEV.region)
    stack = f"{DEV.prefix()}-Data"
    created = deploy(aws.client("cloudformation"), aws.client("ssm"), stack, dev_templates[stack])

    # what moto created from the template (all of it, except the stripped bucket policy)
    assert sorted(created) == [
        "AWS::DynamoDB::Table",
        "AWS::KMS::Alias",
        "AWS::KMS::Key",
        "AWS::Kinesis::Stream",
        "AWS::S3::Bucket",
    ]
    (stream,) = created["AWS::Kinesis::Stream"]
    (bucket,) = created["AWS::S3::Bucket"]
    tables = set(created["AWS::DynamoDB::Table"])
    assert created["AWS::KMS::Alias"] == [f"alias/livora-{DEV.name}-data"]
    assert bucket == DEV.bucket_name
    outputs = {
        o["OutputKey"]: o["OutputValue"]
        for o in aws.client("cloudformation").describe_stacks(StackName=stack)["Stacks"][0]["Outputs"]
    }
    assert stream in outputs.values()  # the stream's name is exported to the other stacks
    # the bucket's default encryption is the stack's key (moto applies SSE-KMS; the bucket-key flag it drops)
    (key_id,) = created["AWS::KMS::Key"]
    rule = aws.client("s3").get_bucket_encryption(Bucket=bucket)["ServerSideEncryptionConfiguration"]["Rules"][0]
    assert rule["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"] == "aws:kms"
    assert rule["ApplyServerSideEncryptionByDefault"]["KMSMasterKeyID"].endswith(key_id)

    # the pipeline's names must be among the tables the stack created
    res = StreamingResources()
    needed = {res.checkpoint_table, res.dedupe_table, res.profiles_table, res.identity_table}
    assert needed <= tables, needed - tables
    assert res.stream == stream

    records = list(generate_events(300, seed=13))
    assert put_records(aws.client("kinesis"), stream, records) == len(records)
    lake = f"s3://{bucket}/lake"
    argv = [
        f"--stream={stream}",
        f"--lake={lake}",
        f"--aws-endpoint-url={moto_endpoint}",
        f"--aws-region={DEV.region}",
        f"--consumer-app={res.consumer_app}",
        f"--dedupe-table={res.dedupe_table}",
        f"--profiles-table={res.profiles_table}",
        f"--identity-table={res.identity_table}",
        "--buckets=2",
        "--min-call-interval=0.02",
    ]
    summary = stream_events.run(argv, out=io.StringIO())

    # nothing was created beside the stack: the pass used the stack's stream, bucket and tables
    dynamodb = aws.client("dynamodb")
    assert set(dynamodb.list_tables()["TableNames"]) == tables
    assert [b["Name"] for b in aws.client("s3").list_buckets()["Buckets"]] == [bucket]

    # the lake in the stack's bucket received every event that was not a dead letter or a duplicate
    monkeypatch.setenv("LIVORA_AWS_ENDPOINT", moto_endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_REGION", DEV.region)
    rows = read_events(lake, columns=["tenant_id", "message_id"])
    assert rows.num_rows > 0
    assert rows.num_rows == summary.total("lake_rows")
    assert rows.num_rows + summary.total("dead_letters") + summary.total("duplicates") == len(records)
    keys = [o["Key"] for o in aws.client("s3").list_objects_v2(Bucket=bucket, Prefix="lake/events/")["Contents"]]
    assert keys and all(k.startswith("lake/events/tenant_id=") and "/event_date=" in k for k in keys)

    # and the stack's tables: checkpoints per shard, dedupe keys, profiles
    def count(table: str) -> int:
        return dynamodb.scan(TableName=table, Select="COUNT")["Count"]

    assert count(res.checkpoint_table) >= 1
    assert count(res.dedupe_table) > 0
    assert count(res.profiles_table) > 0
