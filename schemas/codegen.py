"""Generate the Arrow, Avro and JSON Schema forms of a contract from its pydantic model.

One definition, four forms: the pydantic model validates; these functions derive the lake's
Arrow schema, the Avro wire/dead-letter schema and the JSON Schema for SDK teams from it, so
the forms cannot drift apart. Free-form maps (``dict[str, Any]``) become JSON text in Arrow
and Avro: brands add their own properties and a new key must never break a load.
"""

from __future__ import annotations

import datetime as dt
import types
import typing
from decimal import Decimal
from enum import Enum
from typing import Any

import pyarrow as pa
from pydantic import BaseModel
from pydantic.fields import FieldInfo

DEFAULT_DECIMAL = (18, 4)


def _unwrap_optional(annotation: Any) -> tuple[Any, bool]:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        nullable = len(args) < len(typing.get_args(annotation))
        if len(args) != 1:
            raise TypeError(f"unions other than Optional are not supported: {annotation}")
        inner, inner_nullable = _unwrap_optional(args[0])
        return inner, nullable or inner_nullable
    if origin is typing.Annotated:
        return _unwrap_optional(typing.get_args(annotation)[0])
    return annotation, False


def _decimal_of(field: FieldInfo | None) -> tuple[int, int]:
    digits, places = DEFAULT_DECIMAL
    for meta in getattr(field, "metadata", ()) if field else ():
        digits = getattr(meta, "max_digits", None) or digits
        places = getattr(meta, "decimal_places", None) or places
    return digits, places


def _is_json_map(tp: Any) -> bool:
    return tp is Any or typing.get_origin(tp) is dict or tp is dict


def _field_info(annotation: Any, field: FieldInfo | None) -> FieldInfo | None:
    """Decimal precision may sit on the field or inside an ``Annotated`` alias."""
    if typing.get_origin(annotation) is typing.Annotated:
        for meta in typing.get_args(annotation)[1:]:
            if isinstance(meta, FieldInfo):
                return meta
    for arg in typing.get_args(annotation):
        found = _field_info(arg, None)
        if found is not None:
            return found
    return field


# --- Arrow ---------------------------------------------------------------------------------


def _arrow_type(annotation: Any, field: FieldInfo | None = None) -> tuple[pa.DataType, bool]:
    tp, nullable = _unwrap_optional(annotation)
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return pa.struct(arrow_fields(tp)), nullable
    if typing.get_origin(tp) is list:
        item, _ = _arrow_type(typing.get_args(tp)[0])
        return pa.list_(item), nullable
    if _is_json_map(tp):
        return pa.string(), True
    if isinstance(tp, type) and issubclass(tp, Enum):
        return pa.string(), nullable
    if tp is Decimal:
        return pa.decimal128(*_decimal_of(_field_info(annotation, field))), nullable
    simple = {
        str: pa.string(),
        bool: pa.bool_(),
        int: pa.int64(),
        float: pa.float64(),
        bytes: pa.binary(),
        dt.datetime: pa.timestamp("us", tz="UTC"),
        dt.date: pa.date32(),
    }
    if tp in simple:
        return simple[tp], nullable
    raise TypeError(f"no Arrow type for {annotation!r}")


def arrow_fields(model: type[BaseModel], exclude: frozenset[str] = frozenset()) -> list[pa.Field]:
    fields = []
    for name, info in model.model_fields.items():
        if name in exclude:
            continue
        arrow_type, nullable = _arrow_type(info.annotation, info)
        metadata = {"description": info.description} if info.description else None
        fields.append(pa.field(name, arrow_type, nullable=nullable, metadata=metadata))
    return fields


def arrow_schema(model: type[BaseModel], exclude: frozenset[str] = frozenset(), **metadata: str) -> pa.Schema:
    return pa.schema(arrow_fields(model, exclude), metadata=metadata or None)


# --- Avro ----------------------------------------------------------------------------------


def _avro_type(annotation: Any, field: FieldInfo | None, namespace: str, seen: dict[str, bool]) -> tuple[Any, bool]:
    tp, nullable = _unwrap_optional(annotation)
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        if tp.__name__ in seen:
            return f"{namespace}.{tp.__name__}", nullable
        return avro_schema(tp, namespace=namespace, _seen=seen), nullable
    if typing.get_origin(tp) is list:
        item, _ = _avro_type(typing.get_args(tp)[0], None, namespace, seen)
        return {"type": "array", "items": item}, nullable
    if _is_json_map(tp):
        return "string", True
    if isinstance(tp, type) and issubclass(tp, Enum):
        return "string", nullable
    if tp is Decimal:
        digits, places = _decimal_of(_field_info(annotation, field))
        return {"type": "bytes", "logicalType": "decimal", "precision": digits, "scale": places}, nullable
    simple = {
        str: "string",
        bool: "boolean",
        int: "long",
        float: "double",
        bytes: "bytes",
        dt.datetime: {"type": "long", "logicalType": "timestamp-micros"},
        dt.date: {"type": "int", "logicalType": "date"},
    }
    if tp in simple:
        return simple[tp], nullable
    raise TypeError(f"no Avro type for {annotation!r}")


def avro_schema(model: type[BaseModel], namespace: str = "io.livora", _seen: dict[str, bool] | None = None) -> dict:
    """An Avro record schema (parse it with ``fastavro.parse_schema``)."""
    seen = {} if _seen is None else _seen
    seen[model.__name__] = True
    fields = []
    for name, info in model.model_fields.items():
        avro_type, nullable = _avro_type(info.annotation, info, namespace, seen)
        entry: dict[str, Any] = {"name": name, "type": ["null", avro_type] if nullable else avro_type}
        if nullable:
            entry["default"] = None
        if info.description:
            entry["doc"] = info.description
        fields.append(entry)
    record = {"type": "record", "name": model.__name__, "namespace": namespace, "fields": fields}
    if model.__doc__:
        record["doc"] = model.__doc__.strip().splitlines()[0]
    return record


def json_schema(model: type[BaseModel]) -> dict:
    """JSON Schema as SDK teams send it (camelCase aliases)."""
    return model.model_json_schema(by_alias=True)
