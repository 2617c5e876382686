"""The event contract as validators that return plain dicts: the batch parser's fast path.

Validating into pydantic model instances costs several times more than the same checks into plain
dicts (a nested ``Context``/``Page`` model per event; measured in tests/benchmarks/bench_ingest.py).
The batch parser only needs the checked values, so it validates against a ``TypedDict`` mirror of the
models, derived here from the models themselves: the same field types and constraints (the same
``Annotated`` metadata objects), the same aliases (camelCase and snake_case both accepted, as with
``populate_by_name``), the same ``extra`` policy; keys come out under the field names. Model-level
validators (``Event``'s shape rules) do not carry over: callers apply :func:`schemas.events.shape_error`.

Anything the mirror refuses is re-validated by the model itself, which owns the error messages.
"""

from __future__ import annotations

import functools
import types
import typing
from typing import Annotated, Any, Required, Union, get_args, get_origin

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, TypeAdapter
from pydantic_core import SchemaValidator
from typing_extensions import TypedDict  # pydantic needs this one on Python < 3.12

__all__ = ["dict_validator", "mirror"]

_MIRRORS: dict[type[BaseModel], Any] = {}


def mirror(model: type[BaseModel]) -> Any:
    """A ``TypedDict`` (all keys optional) with ``model``'s fields, constraints, aliases and extra policy."""
    found = _MIRRORS.get(model)
    if found is not None:
        return found
    fields: dict[str, Any] = {}
    for name, info in model.model_fields.items():
        annotation = _mirror_type(info.annotation)
        extras = list(info.metadata)
        if info.alias and info.alias != name:
            extras.append(Field(validation_alias=AliasChoices(info.alias, name)))
        annotation = Annotated[(annotation, *extras)] if extras else annotation
        fields[name] = Required[annotation] if info.is_required() else annotation
    typed = TypedDict(f"{model.__name__}Dict", fields, total=False)  # type: ignore[operator]
    typed.__pydantic_config__ = ConfigDict(extra=model.model_config.get("extra") or "ignore")  # type: ignore[attr-defined]
    _MIRRORS[model] = typed
    return typed


def _mirror_type(annotation: Any) -> Any:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return mirror(annotation)
    origin = get_origin(annotation)
    if origin in (Union, types.UnionType):
        return Union[tuple(_mirror_type(arg) for arg in get_args(annotation))]  # noqa: UP007
    if origin is list:
        return list[_mirror_type(get_args(annotation)[0])]
    if origin is Annotated:
        inner, *metadata = get_args(annotation)
        return Annotated[(_mirror_type(inner), *metadata)]
    if origin is dict or annotation is typing.Any or origin is None:
        return annotation
    raise TypeError(f"no dict mirror for the annotation {annotation!r} of a contract model")


@functools.cache
def dict_validator(model: type[BaseModel]) -> SchemaValidator:
    """pydantic-core's validator of :func:`mirror` (``model``): ``validate_python(data)`` -> a plain dict."""
    return TypeAdapter(mirror(model)).validator  # type: ignore[return-value]
