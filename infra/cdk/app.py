"""Builds the app of one environment: five stacks wired by constructor arguments."""

from __future__ import annotations

import aws_cdk as cdk

from infra.cdk.catalog import CatalogStack
from infra.cdk.compute import ComputeStack
from infra.cdk.config import EnvConfig
from infra.cdk.data import DataStack
from infra.cdk.monitoring import MonitoringStack
from infra.cdk.warehouse import WarehouseStack

__all__ = ["LivoraStacks", "build_app"]


class LivoraStacks:
    """The stacks of one environment (attributes for tests and for ``infra.app``)."""

    def __init__(self, app: cdk.App, config: EnvConfig):
        env = cdk.Environment(account=config.account, region=config.region)
        prefix = config.prefix()
        tags = {"project": "livora", "environment": config.name}
        self.data = DataStack(app, f"{prefix}-Data", config=config, env=env)
        self.catalog = CatalogStack(app, f"{prefix}-Catalog", config=config, env=env)
        self.warehouse = WarehouseStack(
            app,
            f"{prefix}-Warehouse",
            config=config,
            key=self.data.key,
            bucket=self.data.bucket,
            glue_database=self.catalog.database_name,
            env=env,
        )
        self.compute = ComputeStack(
            app,
            f"{prefix}-Compute",
            config=config,
            key=self.data.key,
            stream=self.data.stream,
            bucket=self.data.bucket,
            tables=self.data.tables,
            table_specs=self.data.resources.table_specs(),
            env=env,
        )
        self.monitoring = MonitoringStack(
            app,
            f"{prefix}-Monitoring",
            config=config,
            stream=self.data.stream,
            table_names=list(self.data.tables),
            env=env,
        )
        self.all = [self.data, self.catalog, self.warehouse, self.compute, self.monitoring]
        for stack in self.all:
            for key, value in tags.items():
                cdk.Tags.of(stack).add(key, value)


def build_app(config: EnvConfig, outdir: str | None = None) -> tuple[cdk.App, LivoraStacks]:
    """The app and its stacks; nothing is looked up in AWS (explicit account and region, no context lookups)."""
    app = cdk.App(outdir=outdir) if outdir else cdk.App()
    return app, LivoraStacks(app, config)
