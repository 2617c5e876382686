"""The warehouse stack: a Redshift Serverless namespace (encrypted with the data key) and its workgroup."""

from __future__ import annotations

import aws_cdk as cdk
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_redshiftserverless as redshift
from aws_cdk import aws_s3 as s3
from constructs import Construct

from infra.cdk.config import EnvConfig

__all__ = ["WarehouseStack"]

DATABASE = "livora"


class WarehouseStack(cdk.Stack):
    """Namespace + workgroup; the namespace's IAM role reads the lake for COPY and Spectrum, nothing else."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        config: EnvConfig,
        key: kms.IKey,
        bucket: s3.IBucket,
        glue_database: str,
        **kwargs,
    ) -> None:
        super().__init__(scope, construct_id, **kwargs)
        self.role = iam.Role(
            self,
            "RedshiftLakeRole",
            role_name=f"livora-{config.name}-redshift",
            assumed_by=iam.ServicePrincipal("redshift.amazonaws.com"),
            description="COPY and Spectrum reads of the lake",
        )
        self.role.add_to_policy(
            iam.PolicyStatement(actions=["s3:ListBucket", "s3:GetBucketLocation"], resources=[bucket.bucket_arn])
        )
        self.role.add_to_policy(iam.PolicyStatement(actions=["s3:GetObject"], resources=[bucket.arn_for_objects("*")]))
        self.role.add_to_policy(
            iam.PolicyStatement(actions=["kms:Decrypt", "kms:DescribeKey"], resources=[key.key_arn])
        )
        catalog = f"arn:{self.partition}:glue:{self.region}:{self.account}"
        self.role.add_to_policy(
            iam.PolicyStatement(
                actions=[
                    "glue:GetDatabase",
                    "glue:GetTable",
                    "glue:GetTables",
                    "glue:GetPartition",
                    "glue:GetPartitions",
                ],
                resources=[
                    f"{catalog}:catalog",
                    f"{catalog}:database/{glue_database}",
                    f"{catalog}:table/{glue_database}/*",
                ],
            )
        )

        self.namespace = redshift.CfnNamespace(
            self,
            "Namespace",
            namespace_name=f"livora-{config.name}",
            db_name=DATABASE,
            admin_username="livora_admin",
            manage_admin_password=True,  # Secrets Manager holds it, encrypted with the data key
            admin_password_secret_kms_key_id=key.key_arn,
            kms_key_id=key.key_arn,
            iam_roles=[self.role.role_arn],
            default_iam_role_arn=self.role.role_arn,
            log_exports=["userlog", "connectionlog", "useractivitylog"],
        )
        self.workgroup = redshift.CfnWorkgroup(
            self,
            "Workgroup",
            workgroup_name=f"livora-{config.name}",
            namespace_name=self.namespace.namespace_name,
            base_capacity=config.redshift_base_capacity,
            publicly_accessible=False,
            enhanced_vpc_routing=True,
        )
        self.workgroup.add_resource_dependency(self.namespace)
