"""The compute stack: one IAM role per component, each with only the actions and resources it uses.

- collector (Lambda behind the HTTP API, ``infra/collector_lambda.yaml``): put records on the stream, read its
  two secrets, write its own logs.
- streaming job (``pipelines.stream_events``, on ECS tasks): read the stream, read/write the DynamoDB tables,
  write the lake.
- one dashboard read role per tenant of the config: objects under ``<table>/tenant_id=T/`` only (listing with
  an ``s3:prefix`` condition) and DynamoDB items whose partition key starts with ``T#`` (``dynamodb:LeadingKeys``).

``cloudwatch:PutMetricData`` takes no resource ARN (AWS offers none to narrow to), so it is limited by the
``cloudwatch:namespace`` condition instead; every other statement names its resources.
"""

from __future__ import annotations

import aws_cdk as cdk
from aws_cdk import aws_dynamodb as dynamodb
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kinesis as kinesis
from aws_cdk import aws_kms as kms
from aws_cdk import aws_s3 as s3
from constructs import Construct

from infra.cdk.config import EnvConfig
from infra.resources import TableSpec
from schemas.tables import PUBLISHED_TABLES

__all__ = ["METRICS_NAMESPACE", "ComputeStack", "tenant_prefixes"]

METRICS_NAMESPACE = "Livora/Pipelines"
WRITE_KEYS_SECRET = "livora/collector/write-keys"
WEBHOOK_SECRETS_SECRET = "livora/collector/webhook-secrets"
COLLECTOR_FUNCTION = "livora-collector"


def tenant_prefixes(tenant: str) -> list[str]:
    """S3 key patterns of one tenant's data: every lake table partitioned by ``tenant_id``.

    ``events`` leads with ``tenant_id=T/``; ``features`` has ``as_of_date`` first, so its pattern has a
    wildcard for the date folder (never for the tenant).
    """
    prefixes = []
    for table in PUBLISHED_TABLES:
        names = [p.name for p in table.partitions]
        if table.root != "lake" or "tenant_id" not in names:
            continue
        before = "/".join("*" for _ in names[: names.index("tenant_id")])
        prefixes.append("/".join(part for part in (table.path, before, f"tenant_id={tenant}/") if part))
    return prefixes


def _metrics_statement() -> iam.PolicyStatement:
    return iam.PolicyStatement(
        actions=["cloudwatch:PutMetricData"],
        resources=["*"],  # PutMetricData has no resource-level permissions; the condition narrows it
        conditions={"StringEquals": {"cloudwatch:namespace": METRICS_NAMESPACE}},
    )


class ComputeStack(cdk.Stack):
    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        config: EnvConfig,
        key: kms.IKey,
        stream: kinesis.IStream,
        bucket: s3.IBucket,
        tables: dict[str, dynamodb.ITable],
        table_specs: tuple[TableSpec, ...],
        **kwargs,
    ) -> None:
        super().__init__(scope, construct_id, **kwargs)
        arn = f"arn:{self.partition}"
        region_account = f"{self.region}:{self.account}"

        # --- collector -------------------------------------------------------------------------------
        self.collector_role = iam.Role(
            self,
            "CollectorRole",
            role_name=f"livora-{config.name}-collector",
            assumed_by=iam.ServicePrincipal("lambda.amazonaws.com"),
            description="HTTP collector: events onto the stream",
        )
        self.collector_role.add_to_policy(
            iam.PolicyStatement(
                actions=["kinesis:PutRecord", "kinesis:PutRecords", "kinesis:DescribeStreamSummary"],
                resources=[stream.stream_arn],
            )
        )
        # producers on an SSE-KMS stream need a data key from the stream's key
        self.collector_role.add_to_policy(iam.PolicyStatement(actions=["kms:GenerateDataKey"], resources=[key.key_arn]))
        self.collector_role.add_to_policy(
            iam.PolicyStatement(
                actions=["secretsmanager:GetSecretValue"],
                resources=[
                    f"{arn}:secretsmanager:{region_account}:secret:{WRITE_KEYS_SECRET}-*",
                    f"{arn}:secretsmanager:{region_account}:secret:{WEBHOOK_SECRETS_SECRET}-*",
                ],
            )
        )
        log_group = f"{arn}:logs:{region_account}:log-group:/aws/lambda/{COLLECTOR_FUNCTION}"
        self.collector_role.add_to_policy(
            iam.PolicyStatement(actions=["logs:CreateLogGroup"], resources=[f"{log_group}:*"])
        )
        self.collector_role.add_to_policy(
            iam.PolicyStatement(
                actions=["logs:CreateLogStream", "logs:PutLogEvents"], resources=[f"{log_group}:log-stream:*"]
            )
        )
        self.collector_role.add_to_policy(_metrics_statement())

        # --- streaming job ---------------------------------------------------------------------------
        self.streaming_role = iam.Role(
            self,
            "StreamingRole",
            role_name=f"livora-{config.name}-streaming",
            assumed_by=iam.ServicePrincipal("ecs-tasks.amazonaws.com"),
            description="pipelines.stream_events: stream -> validate -> enrich -> lake and DynamoDB",
        )
        self.streaming_role.add_to_policy(
            iam.PolicyStatement(
                actions=[
                    "kinesis:DescribeStream",
                    "kinesis:DescribeStreamSummary",
                    "kinesis:ListShards",
                    "kinesis:GetShardIterator",
                    "kinesis:GetRecords",
                ],
                resources=[stream.stream_arn],
            )
        )
        self.streaming_role.add_to_policy(
            iam.PolicyStatement(
                actions=[
                    "dynamodb:DescribeTable",
                    "dynamodb:GetItem",
                    "dynamodb:BatchGetItem",
                    "dynamodb:Query",
                    "dynamodb:PutItem",
                    "dynamodb:UpdateItem",
                    "dynamodb:DeleteItem",
                    "dynamodb:BatchWriteItem",
                ],
                resources=[t.table_arn for t in tables.values()],
            )
        )
        self.streaming_role.add_to_policy(
            iam.PolicyStatement(actions=["s3:ListBucket", "s3:GetBucketLocation"], resources=[bucket.bucket_arn])
        )
        self.streaming_role.add_to_policy(
            iam.PolicyStatement(
                actions=["s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload"],
                resources=[bucket.arn_for_objects("*")],
            )
        )
        self.streaming_role.add_to_policy(
            iam.PolicyStatement(
                actions=["kms:Decrypt", "kms:GenerateDataKey", "kms:DescribeKey"], resources=[key.key_arn]
            )
        )
        self.streaming_role.add_to_policy(_metrics_statement())

        # --- per-tenant dashboard readers -----------------------------------------------------------
        tenant_tables = [tables[s.name] for s in table_specs if s.tenant_readable and s.name in tables]
        self.tenant_roles: dict[str, iam.Role] = {}
        for tenant in config.tenants:
            role = iam.Role(
                self,
                f"TenantReader-{tenant}",
                role_name=f"livora-{config.name}-tenant-{tenant}-reader",
                assumed_by=iam.AccountRootPrincipal(),
                description=f"Dashboards of tenant {tenant}: its lake partitions and its DynamoDB items only",
            )
            prefixes = tenant_prefixes(tenant)
            role.add_to_policy(
                iam.PolicyStatement(
                    actions=["s3:ListBucket"],
                    resources=[bucket.bucket_arn],
                    conditions={"StringLike": {"s3:prefix": [*prefixes, *(p + "*" for p in prefixes)]}},
                )
            )
            role.add_to_policy(
                iam.PolicyStatement(
                    actions=["s3:GetObject"], resources=[bucket.arn_for_objects(p + "*") for p in prefixes]
                )
            )
            role.add_to_policy(
                iam.PolicyStatement(
                    actions=["kms:Decrypt"],
                    resources=[key.key_arn],
                    conditions={
                        "StringEquals": {
                            "kms:ViaService": [
                                f"s3.{self.region}.amazonaws.com",
                                f"dynamodb.{self.region}.amazonaws.com",
                            ]
                        }
                    },
                )
            )
            role.add_to_policy(
                iam.PolicyStatement(
                    actions=["dynamodb:GetItem", "dynamodb:BatchGetItem", "dynamodb:Query"],
                    resources=[t.table_arn for t in tenant_tables],
                    conditions={"ForAllValues:StringLike": {"dynamodb:LeadingKeys": [f"{tenant}#*"]}},
                )
            )
            self.tenant_roles[tenant] = role

        for name, role in (("CollectorRoleArn", self.collector_role), ("StreamingRoleArn", self.streaming_role)):
            cdk.CfnOutput(self, name, value=role.role_arn)
