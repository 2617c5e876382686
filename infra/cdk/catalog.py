"""The catalog stack: the Glue database and the lake's tables, from the same generator as the exported DDL.

The ``TableInput`` of each table is :func:`schemas.ddl.glue_create_table` for the lake tables of
:data:`schemas.tables.PUBLISHED_TABLES` (events, dead letters, feature snapshots), so the catalog on AWS has
the columns and the partition projection of ``python -m schemas.export``.
"""

from __future__ import annotations

import aws_cdk as cdk
from aws_cdk import aws_glue as glue
from constructs import Construct

from infra.cdk.config import EnvConfig
from schemas.ddl import Catalog, glue_create_table
from schemas.tables import PUBLISHED_TABLES

__all__ = ["CatalogStack", "lake_catalog"]

DATABASE = "livora"


def lake_catalog(config: EnvConfig) -> Catalog:
    lake = f"s3://{config.bucket_name}"
    return Catalog(lake=lake, analytics=f"{lake}/analytics", database=DATABASE, tenants=config.tenants)


class CatalogStack(cdk.Stack):
    def __init__(self, scope: Construct, construct_id: str, *, config: EnvConfig, **kwargs) -> None:
        super().__init__(scope, construct_id, **kwargs)
        catalog = lake_catalog(config)
        self.database_name = catalog.database
        database = glue.CfnDatabase(
            self,
            "Database",
            catalog_id=self.account,
            database_input=glue.CfnDatabase.DatabaseInputProperty(
                name=catalog.database, description=f"Livora lake ({config.name})"
            ),
        )
        self.tables: dict[str, glue.CfnTable] = {}
        for table in PUBLISHED_TABLES:
            if table.root != "lake":
                continue
            table_input = glue_create_table(table, catalog)["TableInput"]
            cfn = glue.CfnTable(
                self,
                f"Table-{table.name}",
                catalog_id=self.account,
                database_name=catalog.database,
                table_input=glue.CfnTable.TableInputProperty(name=table.name),
            )
            # the generator already speaks CloudFormation's (= Glue API's) property names: pass it through whole
            cfn.add_property_override("TableInput", table_input)
            cfn.add_resource_dependency(database)
            self.tables[table.name] = cfn
