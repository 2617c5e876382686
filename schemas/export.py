"""Write the generated forms of the contracts to files: ``python -m schemas.export OUTDIR``.

For each of Event, LakeEvent and FailedEvent (plus the tracking-plan format) it writes

    OUTDIR/<name>.schema.json   JSON Schema (camelCase aliases: what SDK teams send)
    OUTDIR/<name>.avsc          Avro record schema (wire format, dead letters)
    OUTDIR/<name>.arrow.txt     Arrow schema as text (the lake; LakeEvent also as the file schema)

and, for every published table (:data:`schemas.tables.PUBLISHED_TABLES`: events, dead letters, the analytics
outputs, feature snapshots, CLV predictions), the catalog definitions of :mod:`schemas.ddl`:

    OUTDIR/glue/<table>.json               Glue CreateTable input (aws glue create-table --cli-input-json)
    OUTDIR/athena/<table>.sql              Athena CREATE EXTERNAL TABLE (same columns and projection)
    OUTDIR/redshift/spectrum/<table>.sql   Redshift Spectrum CREATE EXTERNAL TABLE over the same files
    OUTDIR/redshift/warehouse/<table>.sql  the native table the pipelines' warehouse loads create
    OUTDIR/symlink/<table>/symlink.txt     single-file tables: the manifest to upload to their LOCATION

All of it comes from :mod:`schemas.codegen`, never from hand-kept copies. :func:`avro_datum` turns
a model instance into the record the Avro schema describes (JSON maps as JSON text, enums as
their values), so a producer writing Avro needs nothing else.
"""

from __future__ import annotations

import argparse
import json
import sys
import typing
from collections.abc import Sequence
from enum import Enum
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from schemas import SCHEMA_VERSION, ddl
from schemas.codegen import _is_json_map, _unwrap_optional, arrow_schema, avro_schema, json_schema
from schemas.events import Event
from schemas.failures import FailedEvent
from schemas.lake import EVENTS_FILE_SCHEMA, EVENTS_SCHEMA, LakeEvent
from schemas.tables import PUBLISHED_TABLES
from schemas.tracking_plan import TrackingPlan

__all__ = ["CONTRACTS", "avro_datum", "export", "main"]

CONTRACTS: dict[str, type[BaseModel]] = {"event": Event, "lake_event": LakeEvent, "failed_event": FailedEvent}


def _json_text(value: Any) -> str | None:
    if value is None:
        return None
    return json.dumps(value, ensure_ascii=False, sort_keys=True, default=str)


def _datum_value(annotation: Any, value: Any) -> Any:
    if value is None:
        return None
    tp, _ = _unwrap_optional(annotation)
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return avro_datum(value)
    if typing.get_origin(tp) is list:
        (item,) = typing.get_args(tp)
        return [_datum_value(item, v) for v in value]
    if _is_json_map(tp):
        return value if isinstance(value, str) else _json_text(value)
    if isinstance(value, Enum):
        return value.value
    return value


def avro_datum(instance: BaseModel) -> dict[str, Any]:
    """The Avro record of a model instance under :func:`schemas.codegen.avro_schema` of its class."""
    return {
        name: _datum_value(info.annotation, getattr(instance, name))
        for name, info in type(instance).model_fields.items()
    }


DEFAULT_LAKE = "s3://LAKE-BUCKET/lake"


def export(outdir: str | Path, catalog: ddl.Catalog | None = None) -> list[Path]:
    """Write every form of every contract, and the catalog definitions of every published table, into
    ``outdir``; returns the files written. ``catalog`` says where the tables live (default: placeholders)."""
    catalog = catalog or ddl.Catalog(lake=DEFAULT_LAKE, analytics=f"{DEFAULT_LAKE}/analytics")
    root = Path(outdir)
    root.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []

    def write(name: str, text: str) -> None:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text if text.endswith("\n") else text + "\n", encoding="utf-8")
        written.append(path)

    for name, model in CONTRACTS.items():
        write(f"{name}.schema.json", json.dumps(json_schema(model), indent=2, sort_keys=True))
        write(f"{name}.avsc", json.dumps(avro_schema(model), indent=2))
        if model is LakeEvent:
            write(f"{name}.arrow.txt", EVENTS_SCHEMA.to_string(truncate_metadata=False, show_schema_metadata=True))
            write(
                f"{name}_file.arrow.txt",
                EVENTS_FILE_SCHEMA.to_string(truncate_metadata=False, show_schema_metadata=True),
            )
        else:
            write(f"{name}.arrow.txt", arrow_schema(model).to_string(truncate_metadata=False))
    write("tracking_plan.schema.json", json.dumps(TrackingPlan.model_json_schema(), indent=2, sort_keys=True))
    write("VERSION", SCHEMA_VERSION)
    for table in PUBLISHED_TABLES:
        write(f"glue/{table.name}.json", json.dumps(ddl.glue_create_table(table, catalog), indent=2))
        write(f"athena/{table.name}.sql", ddl.athena_ddl(table, catalog))
        write(f"redshift/spectrum/{table.name}.sql", ddl.spectrum_ddl(table, catalog))
        if (native := ddl.warehouse_ddl(table)) is not None:
            write(f"redshift/warehouse/{table.name}.sql", native)
        if (manifest := ddl.symlink_manifest(table, catalog)) is not None:
            write(f"symlink/{table.name}/symlink.txt", manifest)
    return written


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m schemas.export",
        description="Write the JSON Schema, Avro (.avsc) and Arrow forms of Event, LakeEvent and FailedEvent, "
        "the JSON Schema of tracking-plan files, and the Glue, Athena and Redshift definitions of every published "
        "table, generated from the pydantic contracts and Arrow schemas.",
    )
    parser.add_argument("outdir", help="Directory to write into (created if missing; existing files are replaced).")
    parser.add_argument(
        "--lake", default=DEFAULT_LAKE, help="Lake root URL: events, dead_letters, features (s3://bucket/prefix)."
    )
    parser.add_argument(
        "--analytics",
        default=None,
        help="Root of the analytics outputs, one folder per pipeline (funnels/, retention/, product_analytics/, "
        "segments/, clv/) (default: LAKE/analytics).",
    )
    parser.add_argument("--database", default="livora", help="Glue / Athena database (default livora).")
    parser.add_argument(
        "--spectrum-schema",
        default="spectrum",
        help="Redshift external schema of the Spectrum tables (default spectrum).",
    )
    parser.add_argument(
        "--tenants",
        default="",
        help="Comma-separated tenant ids: an enum projection of tenant_id. Default: injected (queries must name "
        "the tenant).",
    )
    parser.add_argument(
        "--first-date", default="2020-01-01", help="First date of the date partition projections (YYYY-MM-DD)."
    )
    args = parser.parse_args(argv)
    lake = args.lake.rstrip("/")
    catalog = ddl.Catalog(
        lake=lake,
        analytics=(args.analytics or f"{lake}/analytics").rstrip("/"),
        database=args.database,
        spectrum_schema=args.spectrum_schema,
        tenants=tuple(t for t in args.tenants.split(",") if t),
        first_date=args.first_date,
    )
    for path in export(args.outdir, catalog):
        print(path)


if __name__ == "__main__":
    main(sys.argv[1:])
