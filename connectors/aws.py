"""One place that binds an environment (local emulation or real AWS) to boto3 clients.

``local`` points every client at the moto server started by :mod:`infra.local_stack`;
``aws`` uses the default credential chain and real endpoints (no override). Pipelines take an
:class:`AwsSettings` built from their options, never a whole ``PipelineOptions``.
"""

from __future__ import annotations

import os
from typing import Any, Literal

import boto3
from botocore.config import Config
from pydantic import BaseModel, ConfigDict

LOCAL_ENDPOINT_ENV = "LIVORA_AWS_ENDPOINT"
DEFAULT_REGION = "ap-south-1"


class AwsSettings(BaseModel):
    """Where and how to reach AWS; hashable so DoFns can cache clients per settings."""

    model_config = ConfigDict(frozen=True)

    profile: Literal["local", "aws"] = "aws"
    region: str = DEFAULT_REGION
    endpoint_url: str | None = None
    access_key_id: str | None = None
    secret_access_key: str | None = None

    @classmethod
    def local(cls, endpoint_url: str | None = None, region: str = DEFAULT_REGION) -> AwsSettings:
        endpoint = endpoint_url or os.environ.get(LOCAL_ENDPOINT_ENV) or "http://127.0.0.1:5000"
        return cls(
            profile="local", region=region, endpoint_url=endpoint, access_key_id="testing", secret_access_key="testing"
        )

    @classmethod
    def from_profile(cls, profile: str, endpoint_url: str | None = None, region: str = DEFAULT_REGION) -> AwsSettings:
        if profile == "local":
            return cls.local(endpoint_url, region)
        if profile == "aws":
            return cls(profile="aws", region=region, endpoint_url=endpoint_url)
        raise ValueError(f"unknown AWS profile {profile!r}: expected 'local' or 'aws'")

    def client(self, service: str, **config: Any):
        """A boto3 client; adaptive retries so throttling backs off inside botocore too."""
        retries = config.pop("retries", {"max_attempts": 10, "mode": "adaptive"})
        return boto3.client(
            service,
            region_name=self.region,
            endpoint_url=self.endpoint_url,
            aws_access_key_id=self.access_key_id,
            aws_secret_access_key=self.secret_access_key,
            config=Config(retries=retries, **config),
        )

    def resource(self, service: str):
        return boto3.resource(
            service,
            region_name=self.region,
            endpoint_url=self.endpoint_url,
            aws_access_key_id=self.access_key_id,
            aws_secret_access_key=self.secret_access_key,
        )

    def beam_s3_options(self) -> list[str]:
        """Flags for Beam's S3 filesystem (``s3://`` paths in sources and the lake writer)."""
        flags = [f"--s3_region_name={self.region}"]
        if self.endpoint_url:
            flags.append(f"--s3_endpoint_url={self.endpoint_url}")
        if self.access_key_id:
            flags += [f"--s3_access_key_id={self.access_key_id}", f"--s3_secret_access_key={self.secret_access_key}"]
        return flags
