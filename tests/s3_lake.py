"""Fixture for s3:// lake tests: ``from tests.s3_lake import s3_lake_fs  # noqa: F401``."""

from __future__ import annotations

import pyarrow.fs as pafs
import pytest


@pytest.fixture
def s3_lake_fs(aws, monkeypatch) -> pafs.S3FileSystem:
    """An empty bucket ``lake`` on the moto server and a pyarrow S3 filesystem on it.

    The environment points pyarrow's S3 (connectors.lake) at the same server with test credentials;
    Beam's S3 filesystem gets it from the pipelines' ``--aws-endpoint-url``/``--aws-region`` flags.
    """
    monkeypatch.setenv("LIVORA_AWS_ENDPOINT", aws.endpoint_url)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_REGION", aws.region)
    aws.client("s3").create_bucket(Bucket="lake", CreateBucketConfiguration={"LocationConstraint": aws.region})
    return pafs.S3FileSystem(endpoint_override=aws.endpoint_url, region=aws.region)
