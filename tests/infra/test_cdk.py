"""infra.cdk: the synthesized CloudFormation of every stack, checked with aws_cdk.assertions and cfn-lint.

The app is synthesized once per module (jsii starts a Node process: a few seconds). Expected names and key
schemas come from the connectors' own ``create_*`` functions (recorded, not re-typed here), so a change to a
connector's table layout that the stacks miss fails these tests.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from connectors.checkpoints import create_checkpoint_table
from connectors.dedupe_store import create_dedupe_table
from connectors.dynamodb import create_tables
from connectors.online_store import create_online_table
from infra.cdk.config import ENVIRONMENTS, EnvConfig
from infra.resources import (
    DEFAULT_BUCKET,
    DEFAULT_DEDUPE_TABLE,
    DEFAULT_IDENTITY_TABLE,
    DEFAULT_ONLINE_FEATURES_TABLE,
    DEFAULT_PROFILES_TABLE,
    DEFAULT_STREAM,
    StreamingResources,
)
from schemas.ddl import glue_create_table
from schemas.tables import published_table

pytestmark = pytest.mark.slow

if shutil.which("node") is None:
    pytest.skip("the CDK's jsii runtime needs Node.js on PATH", allow_module_level=True)
cdk = pytest.importorskip("aws_cdk")
from aws_cdk.assertions import Match, Template  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


# --- the connectors' table layouts, recorded ------------------------------------------------------------


class _RecordingClient:
    def __init__(self):
        self.created: dict[str, dict] = {}

    def create_table(self, **kwargs):
        self.created[kwargs["TableName"]] = kwargs

    def get_waiter(self, name):
        return type("W", (), {"wait": lambda self, **kw: None})()

    def update_time_to_live(self, TableName, TimeToLiveSpecification):
        self.created[TableName]["ttl"] = TimeToLiveSpecification["AttributeName"]

    def list_tables(self):
        return {"TableNames": []}


class _RecordingAws:
    def __init__(self):
        self.recorder = _RecordingClient()

    def client(self, service):
        assert service == "dynamodb"
        return self.recorder


def connector_tables() -> dict[str, dict]:
    """What the connectors create locally for the default names: {table: {"keys": [...], "ttl": ...}}."""
    aws = _RecordingAws()
    res = StreamingResources()
    create_checkpoint_table(aws, res.checkpoint_table, client=aws.recorder)
    create_dedupe_table(aws, DEFAULT_DEDUPE_TABLE, client=aws.recorder)
    create_tables(aws, DEFAULT_PROFILES_TABLE, DEFAULT_IDENTITY_TABLE)
    create_online_table(aws, DEFAULT_ONLINE_FEATURES_TABLE)
    return {
        name: {
            "keys": [{"AttributeName": k["AttributeName"], "KeyType": k["KeyType"]} for k in kw["KeySchema"]],
            "ttl": kw.get("ttl"),
        }
        for name, kw in aws.recorder.created.items()
    }


# --- synthesis ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def prod():
    from infra.cdk.app import build_app

    _, stacks = build_app(ENVIRONMENTS["prod"])
    return stacks


@pytest.fixture(scope="module")
def templates(prod) -> dict[str, Template]:
    return {
        name: Template.from_stack(getattr(prod, name))
        for name in ("data", "catalog", "warehouse", "compute", "monitoring")
    }


def _statements(template: dict):
    """Every policy statement of a template: IAM policies, bucket policies, key policies."""
    for resource in template["Resources"].values():
        props = resource.get("Properties", {})
        for doc in (props.get("PolicyDocument"), props.get("KeyPolicy")):
            if doc:
                yield resource["Type"], doc["Statement"]
        for policy in props.get("Policies", []):
            yield resource["Type"], policy["PolicyDocument"]["Statement"]


def _as_list(value):
    return value if isinstance(value, list) else [value]


# --- data -----------------------------------------------------------------------------------------------


def test_key_rotation_and_no_wildcard_key_actions(templates):
    data = templates["data"]
    data.resource_count_is("AWS::KMS::Key", 1)
    data.has_resource_properties("AWS::KMS::Key", {"EnableKeyRotation": True})
    key = next(iter(data.find_resources("AWS::KMS::Key").values()))
    actions = [a for s in key["Properties"]["KeyPolicy"]["Statement"] for a in _as_list(s["Action"])]
    assert "kms:*" not in actions and "kms:Decrypt" in actions and "kms:PutKeyPolicy" in actions


def test_bucket_is_kms_encrypted_tls_only_and_private(templates):
    data = templates["data"]
    data.has_resource_properties(
        "AWS::S3::Bucket",
        {
            "BucketName": f"{DEFAULT_BUCKET}-prod",
            "BucketEncryption": {
                "ServerSideEncryptionConfiguration": [
                    {
                        "BucketKeyEnabled": True,
                        "ServerSideEncryptionByDefault": {
                            "SSEAlgorithm": "aws:kms",
                            "KMSMasterKeyID": Match.object_like({"Fn::GetAtt": Match.array_with(["Arn"])}),
                        },
                    }
                ]
            },
            "PublicAccessBlockConfiguration": {
                "BlockPublicAcls": True,
                "BlockPublicPolicy": True,
                "IgnorePublicAcls": True,
                "RestrictPublicBuckets": True,
            },
        },
    )
    data.has_resource_properties(
        "AWS::S3::BucketPolicy",
        {
            "PolicyDocument": {
                "Statement": Match.array_with(
                    [
                        Match.object_like(
                            {
                                "Effect": "Deny",
                                "Action": "s3:*",
                                "Principal": {"AWS": "*"},
                                "Condition": {"Bool": {"aws:SecureTransport": "false"}},
                            }
                        )
                    ]
                )
            }
        },
    )


def test_stream_is_kms_encrypted_with_resources_defaults(templates):
    config = ENVIRONMENTS["prod"]
    templates["data"].has_resource_properties(
        "AWS::Kinesis::Stream",
        {
            "Name": DEFAULT_STREAM,
            "ShardCount": config.shard_count,
            "RetentionPeriodHours": config.retention_hours,
            "StreamEncryption": {"EncryptionType": "KMS", "KeyId": Match.any_value()},
        },
    )


def test_tables_match_the_connectors_and_are_encrypted_with_pitr(templates):
    expected = connector_tables()
    assert set(expected) == {
        "livora-checkpoints-livora-stream",
        "livora-dedupe",
        "livora-profiles",
        "livora-identity",
        "livora-online-features",
    }
    tables = templates["data"].find_resources("AWS::DynamoDB::Table")
    synthesized = {t["Properties"]["TableName"]: t["Properties"] for t in tables.values()}
    assert set(synthesized) == set(expected)
    for name, props in synthesized.items():
        assert props["KeySchema"] == expected[name]["keys"], name
        assert {a["AttributeType"] for a in props["AttributeDefinitions"]} == {"S"}
        assert props.get("TimeToLiveSpecification", {}).get("AttributeName") == expected[name]["ttl"], name
        assert props["SSESpecification"]["SSEEnabled"] is True
        assert props["SSESpecification"]["SSEType"] == "KMS"
        assert "KMSMasterKeyId" in props["SSESpecification"]
        assert props["PointInTimeRecoverySpecification"]["PointInTimeRecoveryEnabled"] is True
        assert props["BillingMode"] == "PAY_PER_REQUEST"
        assert (
            tables[next(k for k, v in tables.items() if v["Properties"]["TableName"] == name)]["DeletionPolicy"]
            == "Retain"
        )


# --- warehouse, catalog ---------------------------------------------------------------------------------


def test_redshift_namespace_is_encrypted_with_the_data_key(templates):
    warehouse = templates["warehouse"]
    warehouse.has_resource_properties(
        "AWS::RedshiftServerless::Namespace",
        {
            "NamespaceName": "livora-prod",
            "KmsKeyId": {"Fn::ImportValue": Match.string_like_regexp("Livora-prod-Data:.*DataKey.*")},
            "ManageAdminPassword": True,
        },
    )
    warehouse.has_resource_properties(
        "AWS::RedshiftServerless::Workgroup",
        {"PubliclyAccessible": False, "BaseCapacity": ENVIRONMENTS["prod"].redshift_base_capacity},
    )


def test_glue_tables_are_the_exported_definitions(templates):
    from infra.cdk.catalog import lake_catalog

    catalog = templates["catalog"]
    catalog.has_resource_properties("AWS::Glue::Database", {"DatabaseInput": {"Name": "livora"}})
    events = glue_create_table(published_table("events"), lake_catalog(ENVIRONMENTS["prod"]))["TableInput"]
    catalog.has_resource_properties("AWS::Glue::Table", {"DatabaseName": "livora", "TableInput": events})
    params = events["Parameters"]
    assert params["projection.enabled"] == "true"
    assert params["projection.tenant_id.values"] == "acme,bharat_basics"
    assert params["storage.location.template"].startswith("s3://livora-lake-prod/events/tenant_id=")
    assert {t["Properties"]["TableInput"]["Name"] for t in catalog.find_resources("AWS::Glue::Table").values()} == {
        "events",
        "dead_letters",
        "features",
    }


# --- least privilege ------------------------------------------------------------------------------------


def test_no_wildcard_actions_and_star_resources_only_where_aws_offers_no_arn(templates):
    for name, template in templates.items():
        for resource_type, statements in _statements(template.to_json()):
            for s in statements:
                actions = _as_list(s.get("Action", []))
                assert all(a != "*" and not a.endswith(":*") for a in actions if s["Effect"] == "Allow"), (name, s)
                if s["Effect"] == "Allow" and "*" in _as_list(s.get("Resource", [])):
                    # a key policy's only resource is its key; PutMetricData has no resource ARNs
                    assert resource_type == "AWS::KMS::Key" or (
                        actions == ["cloudwatch:PutMetricData"]
                        and s["Condition"] == {"StringEquals": {"cloudwatch:namespace": "Livora/Pipelines"}}
                    ), (name, s)


def _role_policy(template: Template, role_name: str) -> list[dict]:
    roles = template.find_resources("AWS::IAM::Role", {"Properties": {"RoleName": role_name}})
    assert len(roles) == 1, role_name
    (logical_id,) = roles
    return [
        s
        for p in template.find_resources("AWS::IAM::Policy").values()
        if {"Ref": logical_id} in p["Properties"]["Roles"]
        for s in p["Properties"]["PolicyDocument"]["Statement"]
    ]


def test_collector_may_only_put_records_and_read_its_secrets(templates):
    statements = _role_policy(templates["compute"], "livora-prod-collector")
    actions = sorted(a for s in statements for a in _as_list(s["Action"]))
    assert actions == sorted(
        [
            "kinesis:PutRecord",
            "kinesis:PutRecords",
            "kinesis:DescribeStreamSummary",
            "kms:GenerateDataKey",
            "secretsmanager:GetSecretValue",
            "logs:CreateLogGroup",
            "logs:CreateLogStream",
            "logs:PutLogEvents",
            "cloudwatch:PutMetricData",
        ]
    )
    assert not any(a.startswith(("s3:", "dynamodb:")) for a in actions)


def test_tenant_reader_is_limited_to_its_prefixes_and_leading_keys(templates):
    statements = _role_policy(templates["compute"], "livora-prod-tenant-acme-reader")
    by_action = {tuple(_as_list(s["Action"])): s for s in statements}
    listing = by_action[("s3:ListBucket",)]
    assert listing["Condition"] == {
        "StringLike": {
            "s3:prefix": [
                "events/tenant_id=acme/",
                "features/*/tenant_id=acme/",
                "events/tenant_id=acme/*",
                "features/*/tenant_id=acme/*",
            ]
        }
    }
    objects = json.dumps(by_action[("s3:GetObject",)]["Resource"])
    assert '"/events/tenant_id=acme/*"' in objects and '"/features/*/tenant_id=acme/*"' in objects
    assert "bharat_basics" not in json.dumps(statements)
    reads = by_action[("dynamodb:GetItem", "dynamodb:BatchGetItem", "dynamodb:Query")]
    assert reads["Condition"] == {"ForAllValues:StringLike": {"dynamodb:LeadingKeys": ["acme#*"]}}
    assert "Scan" not in json.dumps(statements)
    # the dedupe and checkpoint tables are not a dashboard's business
    assert "dedupe" not in json.dumps(reads["Resource"]) and "checkpoints" not in json.dumps(reads["Resource"])


def test_one_reader_role_per_configured_tenant(templates):
    names = [r["Properties"]["RoleName"] for r in templates["compute"].find_resources("AWS::IAM::Role").values()]
    assert sorted(n for n in names if "-tenant-" in n) == [
        "livora-prod-tenant-acme-reader",
        "livora-prod-tenant-bharat_basics-reader",
    ]


# --- monitoring -----------------------------------------------------------------------------------------


def test_alarms_present(templates):
    monitoring = templates["monitoring"]
    monitoring.has_resource_properties(
        "AWS::CloudWatch::Alarm",
        {"MetricName": "GetRecords.IteratorAgeMilliseconds", "Namespace": "AWS/Kinesis", "Statistic": "Maximum"},
    )
    monitoring.has_resource_properties(
        "AWS::CloudWatch::Alarm", {"MetricName": "DeadLetterEvents", "Namespace": "Livora/Pipelines"}
    )
    monitoring.has_resource_properties("AWS::CloudWatch::Alarm", {"MetricName": "5xx", "Namespace": "AWS/ApiGateway"})
    throttles = monitoring.find_resources(
        "AWS::CloudWatch::Alarm", {"Properties": {"AlarmName": Match.string_like_regexp(".*dynamodb-throttles.*")}}
    )
    assert len(throttles) == len(connector_tables())


# --- environments, CLI, cfn-lint ------------------------------------------------------------------------


def test_config_rejects_tenant_ids_that_would_widen_a_policy():
    with pytest.raises(ValueError, match="tenant id"):
        EnvConfig(name="dev", account="111111111111", tenants=("acme*",))
    with pytest.raises(ValueError):
        EnvConfig(name="dev", account="not-an-account")


def test_cli_synthesizes_every_environment_and_cfn_lint_is_clean(tmp_path):
    pytest.importorskip("cfnlint")
    templates = []
    for env in ("dev", "staging", "prod"):
        out = tmp_path / env
        done = subprocess.run(
            [sys.executable, "-m", "infra.app", "--env", env, "--outdir", str(out)],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        written = sorted(p.name for p in out.glob("*.template.json"))
        prefix = f"Livora-{env}"
        assert written == [
            f"{prefix}-{s}.template.json" for s in ("Catalog", "Compute", "Data", "Monitoring", "Warehouse")
        ]
        templates += [str(p) for p in out.glob("*.template.json")]
    dev = json.loads((tmp_path / "dev" / "Livora-dev-Data.template.json").read_text())
    assert {r.get("DeletionPolicy") for r in dev["Resources"].values() if r["Type"] == "AWS::DynamoDB::Table"} == {
        "Delete"
    }
    from cfnlint.api import ManualArgs, lint_file

    # no rule is ignored; warnings count as failures too
    config = ManualArgs(regions=sorted({c.region for c in ENVIRONMENTS.values()}))
    problems = [str(m) for path in templates for m in lint_file(Path(path), config=config)]
    assert problems == []
