"""One typed configuration per environment: what differs between dev, staging and prod, and nothing else."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from infra.resources import DEFAULT_BUCKET

__all__ = ["ENVIRONMENTS", "EnvConfig"]

_TENANT = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")


class EnvConfig(BaseModel):
    """An environment's deploy target and sizing.

    Attributes:
        name: ``dev``, ``staging`` or ``prod``; prefixes stack names and suffixes the (global) bucket name.
        account, region: the deploy target (one account per environment, so stream and table names repeat).
        shard_count: provisioned Kinesis shards.
        retention_hours: Kinesis retention (24 to 8760 hours).
        removal_policy: ``retain`` keeps data resources when a stack is deleted; ``destroy`` deletes them.
        tenants: tenant ids that get a dashboard read role (and the Glue ``enum`` tenant projection).
        redshift_base_capacity: Redshift Serverless RPUs (8 to 512, in steps of 8).
        iterator_age_alarm_ms: Kinesis consumer lag alarm threshold.
        dead_letter_alarm_per_5min: dead letters in five minutes that raise the alarm.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: Literal["dev", "staging", "prod"]
    account: str = Field(pattern=r"^\d{12}$")
    region: str = Field(default="ap-south-1", pattern=r"^[a-z]{2}(-[a-z]+)+-\d$")
    shard_count: int = Field(default=1, ge=1, le=500)
    retention_hours: int = Field(default=24, ge=24, le=8760)
    removal_policy: Literal["retain", "destroy"] = "retain"
    tenants: tuple[str, ...] = ()
    redshift_base_capacity: int = Field(default=8, ge=8, le=512, multiple_of=8)
    iterator_age_alarm_ms: int = Field(default=60_000, gt=0)
    dead_letter_alarm_per_5min: int = Field(default=100, gt=0)

    @field_validator("tenants")
    @classmethod
    def _tenant_ids(cls, tenants: tuple[str, ...]) -> tuple[str, ...]:
        # a tenant id becomes part of IAM policy ARNs, role names and S3 prefixes: no wildcards, no slashes
        for tenant in tenants:
            if not _TENANT.match(tenant):
                raise ValueError(f"tenant id {tenant!r} must match {_TENANT.pattern}")
        if len(set(tenants)) != len(tenants):
            raise ValueError("duplicate tenant ids")
        return tenants

    @property
    def bucket_name(self) -> str:
        """S3 bucket names are global: the default name, suffixed per environment."""
        return f"{DEFAULT_BUCKET}-{self.name}"

    def prefix(self) -> str:
        return f"Livora-{self.name}"


# Placeholder account ids: set the real ones here (or with --account) before deploying.
ENVIRONMENTS: dict[str, EnvConfig] = {
    "dev": EnvConfig(name="dev", account="111111111111", removal_policy="destroy", tenants=("demo",)),
    "staging": EnvConfig(
        name="staging", account="222222222222", shard_count=2, retention_hours=48, tenants=("demo", "acme")
    ),
    "prod": EnvConfig(
        name="prod",
        account="333333333333",
        shard_count=4,
        retention_hours=168,
        redshift_base_capacity=32,
        tenants=("acme", "bharat_basics"),
    ),
}
