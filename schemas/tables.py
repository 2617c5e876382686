"""Every table Livora publishes for outside readers, in one list: where it lives, its file schema, its partitions.

:mod:`schemas.ddl` turns each entry into a Glue ``TableInput``, Athena and Redshift DDL, and
``python -m schemas.export`` writes them; nothing is written per table by hand. The file schemas are the
ones the writers use (:mod:`schemas.lake`, :mod:`schemas.outputs`, :mod:`schemas.features`), so a new
column reaches the catalog definitions on the next export.

Locations are relative to one of two roots: ``lake`` (the events lake: events, dead letters, the feature
snapshots) and ``analytics`` (the ``--output`` directories of the batch analytics pipelines, one folder per
pipeline: ``funnels/``, ``retention/``, ``product_analytics/``, ``segments/``, ``clv/``). A single-file table
(``funnels/funnel_steps.parquet``) cannot be an Athena/Glue location, which is always a folder: those tables
are read through a symlink manifest (``docs/lake.md``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import pyarrow as pa

from schemas.codegen import arrow_schema
from schemas.failures import FailedEvent
from schemas.features import FEATURES_TABLE, OFFLINE_FILE_SCHEMA, OFFLINE_SCHEMA
from schemas.lake import EVENTS_FILE_SCHEMA, EVENTS_SCHEMA, EVENTS_TABLE
from schemas.outputs import (
    CLV_PREDICTIONS_SCHEMA,
    ENTRY_DAYS_SCHEMA,
    PRODUCT_TABLE_SCHEMAS,
    RETENTION_SCHEMA,
    RFM_SCHEMA,
    SEGMENT_MEMBERS_SCHEMA,
    SEGMENT_SIZES_SCHEMA,
    funnel_steps_schema,
)

__all__ = ["PUBLISHED_TABLES", "PublishedTable", "WarehouseTable", "published_table"]

TENANT = pa.field("tenant_id", pa.string(), nullable=False)


@dataclass(frozen=True)
class WarehouseTable:
    """How ``connectors.warehouse.load_table`` creates the table in the warehouse (Redshift, PostgreSQL, DuckDB).

    ``schema`` is the loaded Arrow schema (partition columns included as ordinary columns); ``key_columns``
    become the primary key (MERGE key); ``json_columns`` are stored as SUPER/JSONB/JSON.
    """

    name: str
    schema: pa.Schema
    key_columns: tuple[str, ...] = ()
    json_columns: tuple[str, ...] = ()
    redshift_options: str = ""


@dataclass(frozen=True)
class PublishedTable:
    """One published table.

    Attributes:
        name: catalog table name (Glue, Athena, Redshift Spectrum).
        description: one line for the catalog.
        root: ``lake`` or ``analytics`` (see the module docstring).
        path: under the root: the table's folder (partitioned tables) or its one file (``*.parquet``).
        file_schema: the columns inside the files (partition columns excluded).
        partitions: Hive partition columns in path order; ``date32`` ones are dates ``YYYY-MM-DD``.
        file_format: ``parquet`` or ``jsonl`` (dead letters).
        warehouse: the native warehouse table the pipelines load, if any.
    """

    name: str
    description: str
    root: Literal["lake", "analytics"]
    path: str
    file_schema: pa.Schema
    partitions: tuple[pa.Field, ...] = ()
    file_format: Literal["parquet", "jsonl"] = "parquet"
    warehouse: WarehouseTable | None = None

    @property
    def single_file(self) -> bool:
        return self.path.endswith(".parquet")

    @property
    def partition_schema(self) -> pa.Schema:
        """The partition columns as Arrow types: ``pyarrow.dataset.partitioning(t.partition_schema, flavor="hive")``
        reads them typed (``date32`` dates) instead of as dictionary strings (pandas ``category``)."""
        return pa.schema(list(self.partitions))


def _with(schema: pa.Schema, *extra: pa.Field) -> pa.Schema:
    return pa.schema([*schema, *extra])


def _analytics(name: str, folder: str, schema: pa.Schema, description: str) -> PublishedTable:
    """A single-file analytics output; the warehouse table has no key (loads replace partitions' rows)."""
    return PublishedTable(
        name=name,
        description=description,
        root="analytics",
        path=f"{folder}/{name}.parquet",
        file_schema=schema,
        warehouse=WarehouseTable(name, schema),
    )


def _dead_letter_line_schema() -> pa.Schema:
    """A dead-letter line (``FailedEvent.to_json_line``): the record, its payload as text, plus ``payload_encoding``."""
    fields = list(arrow_schema(FailedEvent))
    at = [f.name for f in fields].index("payload")
    encoding = pa.field("payload_encoding", pa.string(), nullable=False, metadata={"description": "utf-8 or base64."})
    return pa.schema([*fields[: at + 1], encoding, *fields[at + 1 :]])


_DAY = pa.date32()
_SEGMENT_PARTITIONS = (pa.field("as_of", _DAY, nullable=False), TENANT)

PUBLISHED_TABLES: tuple[PublishedTable, ...] = (
    PublishedTable(
        name=EVENTS_TABLE,
        description="Accepted, de-duplicated, enriched events (one row per tenant_id, message_id).",
        root="lake",
        path=EVENTS_TABLE,
        file_schema=EVENTS_FILE_SCHEMA,
        partitions=(TENANT, pa.field("event_date", _DAY, nullable=False)),
        warehouse=WarehouseTable(
            EVENTS_TABLE,
            EVENTS_SCHEMA,
            key_columns=("tenant_id", "message_id"),
            json_columns=("properties", "traits", "plan_violations"),
            redshift_options='DISTKEY("person_id") COMPOUND SORTKEY("tenant_id", "event_date")',
        ),
    ),
    PublishedTable(
        name="dead_letters",
        description="Events that failed a stage: original payload, stage, reason code, message (JSON lines).",
        root="lake",
        path="dead_letters",
        file_schema=_dead_letter_line_schema(),
        file_format="jsonl",
    ),
    _analytics(
        "funnel_steps",
        "funnels",
        funnel_steps_schema(with_breakdown=True),
        "Persons and conversion per funnel step (breakdown_value is null, or absent from the file, "
        "without a breakdown).",
    ),
    _analytics(
        "funnel_entry_days",
        "funnels",
        ENTRY_DAYS_SCHEMA,
        "Persons per funnel step by local entry date.",
    ),
    _analytics("retention", "retention", RETENTION_SCHEMA, "Cohort retention by period."),
    *(
        _analytics(name, "product_analytics", schema, f"Product analytics: {name.replace('_', ' ')}.")
        for name, schema in PRODUCT_TABLE_SCHEMAS.items()
    ),
    PublishedTable(
        name="segment_membership",
        description="Members of each segment as of a date (one row per tenant, segment, person).",
        root="analytics",
        path="segments/segments",
        file_schema=SEGMENT_MEMBERS_SCHEMA,
        partitions=_SEGMENT_PARTITIONS,
        warehouse=WarehouseTable(
            "segment_membership",
            _with(SEGMENT_MEMBERS_SCHEMA, pa.field("tenant_id", pa.string()), pa.field("as_of", _DAY)),
        ),
    ),
    PublishedTable(
        name="segment_sizes",
        description="Members and evaluated persons per segment as of a date.",
        root="analytics",
        path="segments/segment_sizes",
        file_schema=SEGMENT_SIZES_SCHEMA,
        partitions=_SEGMENT_PARTITIONS,
        warehouse=WarehouseTable(
            "segment_sizes", _with(SEGMENT_SIZES_SCHEMA, pa.field("tenant_id", pa.string()), pa.field("as_of", _DAY))
        ),
    ),
    PublishedTable(
        name="rfm_scores",
        description="RFM recency/frequency/monetary values and quintile scores per person as of a date.",
        root="analytics",
        path="segments/rfm_scores",
        file_schema=RFM_SCHEMA,
        partitions=_SEGMENT_PARTITIONS,
    ),
    PublishedTable(
        name=FEATURES_TABLE,
        description="Offline person feature snapshots, point-in-time correct as of as_of.",
        root="lake",
        path=FEATURES_TABLE,
        file_schema=OFFLINE_FILE_SCHEMA,
        partitions=(pa.field("as_of_date", _DAY, nullable=False), TENANT),
        warehouse=WarehouseTable(FEATURES_TABLE, OFFLINE_SCHEMA, key_columns=("tenant_id", "person_id", "as_of")),
    ),
    PublishedTable(
        name="clv_predictions",
        description="BG/NBD + Gamma-Gamma customer lifetime value per (tenant, person).",
        root="analytics",
        path="clv/clv_predictions.parquet",
        file_schema=CLV_PREDICTIONS_SCHEMA,
    ),
)


def published_table(name: str) -> PublishedTable:
    """The :data:`PUBLISHED_TABLES` entry called ``name``."""
    for table in PUBLISHED_TABLES:
        if table.name == name:
            return table
    raise KeyError(name)
