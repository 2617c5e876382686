"""One place that binds an environment (local emulation or real AWS) to boto3 clients.

``local`` points every client at the moto server started by :mod:`infra.local_stack`;
``aws`` uses the default credential chain and real endpoints (no override). Pipelines take an
:class:`AwsSettings` built from their options, never a whole ``PipelineOptions``.
"""

from __future__ import annotations

import functools
import os
import re
from typing import Any, Literal

import boto3
from botocore.config import Config
from pydantic import BaseModel, ConfigDict, field_validator

LOCAL_ENDPOINT_ENV = "LIVORA_AWS_ENDPOINT"
DEFAULT_REGION = "ap-south-1"

_KEY_ID = r"(?:[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}|mrk-[0-9a-f]{32})"
_ALIAS = r"alias/[A-Za-z0-9/_-]{1,250}"
_KMS_KEY = re.compile(
    rf"{_KEY_ID}|{_ALIAS}|arn:aws(?:-[a-z]+)*:kms:[a-z]{{2}}(?:-[a-z]+)+-\d:\d{{12}}:(?:key/{_KEY_ID}|{_ALIAS})"
)


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


def check_kms_key_id(value: str, flag: str = "--kms-key-id") -> str:
    """``value`` when it is a KMS key id, ``alias/NAME`` or a key / alias ARN, else a one-line ValueError.

    Checked on the driver: S3 would only refuse a malformed key at the first PUT, after the run's work.
    """
    if not isinstance(value, str) or not _KMS_KEY.fullmatch(value):
        raise ValueError(
            f"{flag} {value!r}: expected a KMS key id (1234abcd-12ab-34cd-56ef-1234567890ab or mrk-…), "
            "alias/NAME, or a key ARN (arn:aws:kms:REGION:ACCOUNT:key/ID)"
        )
    return value


class S3Encryption(BaseModel):
    """SSE-KMS for every object a run writes to S3, and the AWS to write them through.

    Beam's S3 filesystem cannot send encryption headers, so writers given one of these PUT through boto3
    instead. It is a plain frozen value: DoFns carry it to the workers inside their own config.
    """

    model_config = ConfigDict(frozen=True)

    kms_key_id: str
    aws: AwsSettings = AwsSettings()

    @field_validator("kms_key_id")
    @classmethod
    def _valid_key(cls, value: str) -> str:
        return check_kms_key_id(value)

    def put_object_args(self) -> dict[str, Any]:
        """The ``put_object`` arguments that make S3 encrypt with the key (bucket keys: fewer KMS calls)."""
        return {"ServerSideEncryption": "aws:kms", "SSEKMSKeyId": self.kms_key_id, "BucketKeyEnabled": True}

    def s3_client(self):
        return _s3_client(self.aws)


@functools.lru_cache(maxsize=8)
def _s3_client(settings: AwsSettings):
    """One S3 client per settings and process (boto3 clients are thread-safe; creating one costs ~50 ms)."""
    return settings.client("s3")
