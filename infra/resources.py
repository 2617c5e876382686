"""The cloud resources the streaming job uses, created idempotently (local moto server or real AWS).

    python -m infra.resources --profile local --stream events --shards 4 --bucket livora-lake

Kinesis stream, S3 bucket for the lake, DynamoDB tables: checkpoints (per consumer application),
the cross-pass dedupe table, and the profile / identity tables of :mod:`connectors.dynamodb`.
Running it again changes nothing. On AWS, prefer your infrastructure-as-code tool; this is the
same definition for a first setup and for the local stack.
"""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import asdict, dataclass, field

from botocore.exceptions import ClientError

from connectors.aws import AwsSettings
from connectors.checkpoints import checkpoint_table_name, create_checkpoint_table
from connectors.dedupe_store import create_dedupe_table

log = logging.getLogger("livora.resources")

DEFAULT_STREAM = "livora-events"
DEFAULT_BUCKET = "livora-lake"
DEFAULT_CONSUMER_APP = "livora-stream"
DEFAULT_DEDUPE_TABLE = "livora-dedupe"
DEFAULT_PROFILES_TABLE = "livora-profiles"
DEFAULT_IDENTITY_TABLE = "livora-identity"
DEFAULT_ONLINE_FEATURES_TABLE = "livora-online-features"
# segment membership lives in the profile table, beside each profile item (connectors.segment_store)
DEFAULT_SEGMENTS_TABLE = DEFAULT_PROFILES_TABLE


@dataclass(frozen=True)
class TableSpec:
    """One DynamoDB table's name and key schema, as the connector that creates it locally defines it.

    The CDK stacks (:mod:`infra.cdk`) build the AWS tables from these, and ``tests/infra/test_cdk.py``
    checks them against the ``create_*`` functions of the connectors, so the three cannot drift.

    Attributes:
        partition_key, sort_key: string key attributes.
        ttl_attribute: the item expiry attribute, if the table has one.
        tenant_prefixed: the partition key starts with ``<tenant_id>#``.
        tenant_readable: a tenant's dashboards read it (limited to ``<tenant_id>#`` keys by ``dynamodb:LeadingKeys``).
    """

    name: str
    partition_key: str
    sort_key: str | None = None
    ttl_attribute: str | None = None
    tenant_prefixed: bool = False
    tenant_readable: bool = False


@dataclass
class StreamingResources:
    """Names of everything the streaming job touches (the defaults of pipelines.stream_events)."""

    stream: str = DEFAULT_STREAM
    shards: int = 4
    bucket: str | None = DEFAULT_BUCKET
    consumer_app: str = DEFAULT_CONSUMER_APP
    dedupe_table: str = DEFAULT_DEDUPE_TABLE
    profiles_table: str | None = DEFAULT_PROFILES_TABLE
    identity_table: str | None = DEFAULT_IDENTITY_TABLE
    created: list[str] = field(default_factory=list)

    @property
    def checkpoint_table(self) -> str:
        return checkpoint_table_name(self.consumer_app)

    def table_specs(self, online_features_table: str | None = DEFAULT_ONLINE_FEATURES_TABLE) -> tuple[TableSpec, ...]:
        """Every DynamoDB table of the platform: checkpoints, dedupe, profiles (+ segments), identity, features."""
        specs = [
            TableSpec(self.checkpoint_table, "stream", "shard_id"),
            TableSpec(self.dedupe_table, "dedupe_key", ttl_attribute="expires_at", tenant_prefixed=True),
        ]
        specs += [
            TableSpec(t, "pk", "sk", tenant_prefixed=True, tenant_readable=True)
            for t in (self.profiles_table, self.identity_table)
            if t
        ]
        if online_features_table:
            specs.append(
                TableSpec(online_features_table, "entity", "feature_group", tenant_prefixed=True, tenant_readable=True)
            )
        return tuple(specs)


def create_stream(aws: AwsSettings, stream: str, shards: int, client=None) -> bool:
    client = client or aws.client("kinesis")
    try:
        client.create_stream(StreamName=stream, ShardCount=shards)
        created = True
    except ClientError as err:
        if err.response["Error"]["Code"] != "ResourceInUseException":
            raise
        created = False
    client.get_waiter("stream_exists").wait(StreamName=stream, WaiterConfig={"Delay": 1, "MaxAttempts": 120})
    return created


def create_bucket(aws: AwsSettings, bucket: str, client=None) -> bool:
    client = client or aws.client("s3")
    kwargs = {"Bucket": bucket}
    if aws.region != "us-east-1":
        kwargs["CreateBucketConfiguration"] = {"LocationConstraint": aws.region}
    try:
        client.create_bucket(**kwargs)
    except ClientError as err:
        if err.response["Error"]["Code"] in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
            return False
        raise
    return True


def create_streaming_resources(aws: AwsSettings, res: StreamingResources | None = None) -> StreamingResources:
    """Create whatever is missing; ``res.created`` lists what was new."""
    res = res or StreamingResources()
    res.created = []
    if create_stream(aws, res.stream, res.shards):
        res.created.append(f"kinesis:{res.stream}")
    if res.bucket and create_bucket(aws, res.bucket):
        res.created.append(f"s3:{res.bucket}")
    if create_checkpoint_table(aws, res.checkpoint_table):
        res.created.append(f"dynamodb:{res.checkpoint_table}")
    if create_dedupe_table(aws, res.dedupe_table):
        res.created.append(f"dynamodb:{res.dedupe_table}")
    if res.profiles_table and res.identity_table:
        from connectors.dynamodb import create_tables

        client = aws.client("dynamodb")
        existing = set(client.list_tables().get("TableNames", []))
        create_tables(aws, res.profiles_table, res.identity_table)
        res.created += [f"dynamodb:{t}" for t in (res.profiles_table, res.identity_table) if t not in existing]
    return res


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", choices=("local", "aws"), default="local", help="local moto server or real AWS.")
    parser.add_argument("--endpoint-url", default=None, help="Endpoint override (local: default $LIVORA_AWS_ENDPOINT).")
    parser.add_argument("--region", default="ap-south-1", help="AWS region (default ap-south-1).")
    parser.add_argument("--stream", default=DEFAULT_STREAM, help=f"Kinesis stream (default {DEFAULT_STREAM}).")
    parser.add_argument("--shards", type=int, default=4, help="Shards of a new stream (default 4).")
    parser.add_argument("--bucket", default=DEFAULT_BUCKET, help="S3 bucket for the lake; 'none' to skip.")
    parser.add_argument("--consumer-app", default=DEFAULT_CONSUMER_APP, help="Names the checkpoint table.")
    parser.add_argument("--dedupe-table", default=DEFAULT_DEDUPE_TABLE, help="Cross-pass dedupe table.")
    parser.add_argument("--profiles-table", default=DEFAULT_PROFILES_TABLE, help="Person profiles; 'none' to skip.")
    parser.add_argument("--identity-table", default=DEFAULT_IDENTITY_TABLE, help="Identity graph; 'none' to skip.")
    args = parser.parse_args(argv)
    aws = AwsSettings.from_profile(args.profile, args.endpoint_url, args.region)

    def opt(value: str) -> str | None:
        return None if value == "none" else value

    res = create_streaming_resources(
        aws,
        StreamingResources(
            stream=args.stream,
            shards=args.shards,
            bucket=opt(args.bucket),
            consumer_app=args.consumer_app,
            dedupe_table=args.dedupe_table,
            profiles_table=opt(args.profiles_table),
            identity_table=opt(args.identity_table),
        ),
    )
    print(json.dumps({**asdict(res), "checkpoint_table": res.checkpoint_table}, indent=2))


if __name__ == "__main__":
    main()
