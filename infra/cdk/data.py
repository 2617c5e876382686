"""The data stack: the environment's KMS key, the Kinesis stream, the lake bucket, the DynamoDB tables.

Everything is encrypted with one customer-managed key (rotation on). The key policy lets the account's IAM
policies grant its use (each role names the key explicitly, see :mod:`infra.cdk.compute`) and keeps key
administration explicit: no ``kms:*``.
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
from infra.resources import StreamingResources, TableSpec

__all__ = ["KEY_ADMIN_ACTIONS", "KEY_USE_ACTIONS", "DataStack"]

KEY_ADMIN_ACTIONS = [
    "kms:CreateAlias",
    "kms:DeleteAlias",
    "kms:UpdateAlias",
    "kms:DescribeKey",
    "kms:EnableKey",
    "kms:DisableKey",
    "kms:EnableKeyRotation",
    "kms:GetKeyPolicy",
    "kms:GetKeyRotationStatus",
    "kms:ListAliases",
    "kms:ListGrants",
    "kms:ListResourceTags",
    "kms:PutKeyPolicy",
    "kms:RevokeGrant",
    "kms:RetireGrant",
    "kms:TagResource",
    "kms:UntagResource",
    "kms:UpdateKeyDescription",
    "kms:ScheduleKeyDeletion",
    "kms:CancelKeyDeletion",
]
KEY_USE_ACTIONS = [
    "kms:Encrypt",
    "kms:Decrypt",
    "kms:ReEncryptFrom",
    "kms:ReEncryptTo",
    "kms:GenerateDataKey",
    "kms:GenerateDataKeyWithoutPlaintext",
    "kms:DescribeKey",
    "kms:CreateGrant",
]


def removal_policy(config: EnvConfig) -> cdk.RemovalPolicy:
    return cdk.RemovalPolicy.DESTROY if config.removal_policy == "destroy" else cdk.RemovalPolicy.RETAIN


class DataStack(cdk.Stack):
    """Key, stream, bucket and tables; the other stacks take them as constructor arguments."""

    def __init__(self, scope: Construct, construct_id: str, *, config: EnvConfig, **kwargs) -> None:
        super().__init__(scope, construct_id, **kwargs)
        self.config = config
        self.resources = StreamingResources(shards=config.shard_count, bucket=config.bucket_name)
        policy = removal_policy(config)

        account_root = iam.AccountRootPrincipal()
        # Key policies name the key itself as "*" (a key policy's resource can only be its own key).
        self.key = kms.Key(
            self,
            "DataKey",
            alias=f"alias/livora-{config.name}-data",
            description=f"Livora {config.name}: lake, stream, tables and warehouse",
            enable_key_rotation=True,
            removal_policy=policy,
            policy=iam.PolicyDocument(
                statements=[
                    iam.PolicyStatement(
                        sid="KeyAdministration",
                        principals=[account_root],
                        actions=KEY_ADMIN_ACTIONS,
                        resources=["*"],
                    ),
                    iam.PolicyStatement(
                        sid="UseThroughIamPoliciesOfThisAccount",
                        principals=[account_root],
                        actions=KEY_USE_ACTIONS,
                        resources=["*"],
                    ),
                ]
            ),
        )

        self.stream = kinesis.Stream(
            self,
            "Events",
            stream_name=self.resources.stream,
            shard_count=config.shard_count,
            retention_period=cdk.Duration.hours(config.retention_hours),
            encryption=kinesis.StreamEncryption.KMS,
            encryption_key=self.key,
            removal_policy=policy,
        )

        self.bucket = s3.Bucket(
            self,
            "Lake",
            bucket_name=config.bucket_name,
            encryption=s3.BucketEncryption.KMS,
            encryption_key=self.key,
            bucket_key_enabled=True,
            enforce_ssl=True,
            block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
            object_ownership=s3.ObjectOwnership.BUCKET_OWNER_ENFORCED,
            # no versioning: an erasure (docs/erasure.md) must not leave the old object versions behind
            removal_policy=policy,
            auto_delete_objects=False,
        )

        self.tables: dict[str, dynamodb.Table] = {}
        for spec in self.resources.table_specs():
            self.tables[spec.name] = self._table(spec, policy)

    def _table(self, spec: TableSpec, policy: cdk.RemovalPolicy) -> dynamodb.Table:
        string = dynamodb.AttributeType.STRING
        return dynamodb.Table(
            self,
            "Table-" + spec.name,
            table_name=spec.name,
            partition_key=dynamodb.Attribute(name=spec.partition_key, type=string),
            sort_key=dynamodb.Attribute(name=spec.sort_key, type=string) if spec.sort_key else None,
            billing_mode=dynamodb.BillingMode.PAY_PER_REQUEST,
            encryption=dynamodb.TableEncryption.CUSTOMER_MANAGED,
            encryption_key=self.key,
            point_in_time_recovery_specification=dynamodb.PointInTimeRecoverySpecification(
                point_in_time_recovery_enabled=True
            ),
            time_to_live_attribute=spec.ttl_attribute,
            removal_policy=policy,
        )
