"""Write the generated forms of the contracts to files: ``python -m schemas.export OUTDIR``.

For each of Event, LakeEvent and FailedEvent (plus the tracking-plan format) it writes

    OUTDIR/<name>.schema.json   JSON Schema (camelCase aliases: what SDK teams send)
    OUTDIR/<name>.avsc          Avro record schema (wire format, dead letters)
    OUTDIR/<name>.arrow.txt     Arrow schema as text (the lake; LakeEvent also as the file schema)

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

from schemas import SCHEMA_VERSION
from schemas.codegen import _is_json_map, _unwrap_optional, arrow_schema, avro_schema, json_schema
from schemas.events import Event
from schemas.failures import FailedEvent
from schemas.lake import EVENTS_FILE_SCHEMA, EVENTS_SCHEMA, LakeEvent
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


def export(outdir: str | Path) -> list[Path]:
    """Write every form of every contract into ``outdir``; returns the files written."""
    root = Path(outdir)
    root.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []

    def write(name: str, text: str) -> None:
        path = root / name
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
    return written


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m schemas.export",
        description="Write the JSON Schema, Avro (.avsc) and Arrow forms of Event, LakeEvent and FailedEvent, "
        "and the JSON Schema of tracking-plan files, generated from the pydantic contracts.",
    )
    parser.add_argument("outdir", help="Directory to write into (created if missing; existing files are replaced).")
    args = parser.parse_args(argv)
    for path in export(args.outdir):
        print(path)


if __name__ == "__main__":
    main(sys.argv[1:])
