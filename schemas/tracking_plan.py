"""Per-tenant tracking plans: which track events a brand expects and what their properties look like.

A plan is a YAML file per tenant (``schemas/tracking_plans/acme-in.yaml``)::

    tenant_id: acme-in
    mode: block                    # allow: record violations | warn: record + log | block: dead-letter
    allow_unplanned_events: false  # a track event not listed under `events` is a violation
    events:
      Order Completed:
        required: [order_id, revenue, currency]
        properties:
          order_id: string
          revenue: number
          currency: {type: string, enum: [INR, USD]}
          products: array

Only ``track`` events are checked against ``events``; identify/page/screen/group/alias pass.
Types are JSON types (string, number, integer, boolean, object, array, null) so the same plan reads
the same to SDK teams. Violations are strings ``"<field path>: <what is wrong>"``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal, NamedTuple

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator

from schemas.events import Event, EventType

__all__ = ["EventRule", "PropertyRule", "TrackingPlan", "TrackingPlans", "Violation"]

log = logging.getLogger(__name__)

JsonType = Literal["string", "number", "integer", "boolean", "object", "array", "null", "any"]


def _type_ok_slow(value: Any, prop: _CompiledProperty) -> bool:
    """Values whose exact type is not listed: JSON integers written as 3.0, subclasses (bool is not a number)."""
    if prop.integral_floats and isinstance(value, float) and value.is_integer():
        return True
    exact = prop.exact_types or frozenset()
    return not isinstance(value, bool) and any(isinstance(value, t) for t in exact)


def _json_type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


class PropertyRule(BaseModel):
    """The expected shape of one property: one or several JSON types, optionally a closed set of values."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: JsonType | list[JsonType] = "any"
    enum: list[Any] | None = None

    @property
    def types(self) -> tuple[str, ...]:
        return (self.type,) if isinstance(self.type, str) else tuple(self.type)


class EventRule(BaseModel):
    """What one planned event must carry."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    required: list[str] = Field(default_factory=list, description="Properties that must be present (not null).")
    properties: dict[str, PropertyRule] = Field(default_factory=dict, description="Property name -> expected type.")

    @field_validator("properties", mode="before")
    @classmethod
    def _short_form(cls, value: Any) -> Any:
        """``revenue: number`` is shorthand for ``revenue: {type: number}``."""
        if isinstance(value, Mapping):
            return {k: {"type": v} if isinstance(v, str | list) else v for k, v in value.items()}
        return value


class TrackingPlan(BaseModel):
    """One tenant's plan."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    tenant_id: str
    mode: Literal["allow", "warn", "block"] = "allow"
    events: dict[str, EventRule] = Field(default_factory=dict, description="Planned track event name -> rule.")
    allow_unplanned_events: bool = Field(default=True, description="False: a track event not in `events` violates.")

    @field_validator("events", mode="before")
    @classmethod
    def _empty_rules(cls, value: Any) -> Any:
        """``Product Viewed:`` with nothing under it plans the event with no property rules."""
        if isinstance(value, Mapping):
            return {k: ({} if v is None else v) for k, v in value.items()}
        return value


_PY_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "number": (int, float),
    "integer": (int,),
    "boolean": (bool,),
    "object": (dict,),
    "array": (list,),
    "null": (type(None),),
}


class _CompiledProperty(NamedTuple):
    """A property rule as exact Python types (JSON decoders give exact types: one set lookup per value)."""

    name: str
    path: str
    exact_types: frozenset[type] | None  # None: any type
    integral_floats: bool  # "integer" accepts 3.0 as JSON does
    enum: tuple | None
    expected: str


def _compile_property(name: str, rule: PropertyRule) -> _CompiledProperty:
    types = rule.types
    exact = None if "any" in types else frozenset(t for name_ in types for t in _PY_TYPES[name_])
    return _CompiledProperty(
        name,
        f"properties.{name}",
        exact,
        "integer" in types,
        tuple(rule.enum) if rule.enum is not None else None,
        " or ".join(types),
    )


class Violation(NamedTuple):
    field_path: str
    message: str

    def __str__(self) -> str:
        return f"{self.field_path}: {self.message}"


class TrackingPlans:
    """All tenants' plans, looked up by tenant id. A tenant without a plan accepts everything."""

    WARN_INTERVAL_SECONDS = 60.0

    def __init__(self, plans: Iterable[TrackingPlan] = ()):
        self._plans: dict[str, TrackingPlan] = {}
        self._rules: dict[str, dict[str, tuple[tuple[str, ...], tuple[_CompiledProperty, ...]]]] = {}
        for plan in plans:
            if plan.tenant_id in self._plans:
                raise ValueError(f"two tracking plans for tenant {plan.tenant_id!r}")
            self._plans[plan.tenant_id] = plan
            self._rules[plan.tenant_id] = {
                name: (tuple(rule.required), tuple(_compile_property(p, r) for p, r in rule.properties.items()))
                for name, rule in plan.events.items()
            }
        self._last_warning: dict[tuple[str, str], float] = {}
        self._suppressed: dict[tuple[str, str], int] = {}

    @classmethod
    def load(cls, directory: str | Path) -> TrackingPlans:
        """Every ``*.yaml`` / ``*.yml`` file in ``directory`` is one tenant's plan (errors name the file)."""
        root = Path(directory)
        if not root.is_dir():
            raise FileNotFoundError(f"tracking-plan directory {root} does not exist")
        plans = []
        for path in sorted([*root.glob("*.yaml"), *root.glob("*.yml")]):
            try:
                plans.append(TrackingPlan.model_validate(yaml.safe_load(path.read_text(encoding="utf-8"))))
            except (yaml.YAMLError, ValueError) as exc:
                raise ValueError(f"invalid tracking plan {path}: {exc}") from exc
        return cls(plans)

    def __len__(self) -> int:
        return len(self._plans)

    def __contains__(self, tenant_id: object) -> bool:
        return tenant_id in self._plans

    @property
    def tenants(self) -> list[str]:
        return sorted(self._plans)

    def for_tenant(self, tenant_id: str) -> TrackingPlan | None:
        return self._plans.get(tenant_id)

    def violations(self, event: Event) -> list[Violation]:
        """The event's violations of its tenant's plan (empty when fine or when the tenant has no plan)."""
        plan = self._plans.get(event.tenant_id)
        if plan is None or event.type is not EventType.TRACK:
            return []
        rule = self._rules[plan.tenant_id].get(event.event or "")
        if rule is None:
            if plan.allow_unplanned_events:
                return []
            return [Violation("event", f"event {event.event!r} is not in the tracking plan of {plan.tenant_id}")]
        required, properties = rule
        found = []
        props = event.properties
        for name in required:
            if props.get(name) is None:
                found.append(Violation(f"properties.{name}", f"required by the plan for {event.event!r}"))
        for prop in properties:
            value = props.get(prop.name)
            if value is None:
                continue  # absent: only `required` makes that a violation
            if prop.exact_types is not None and type(value) not in prop.exact_types and not _type_ok_slow(value, prop):
                found.append(Violation(prop.path, f"expected {prop.expected}, got {_json_type_name(value)}"))
                continue
            if prop.enum is not None and value not in prop.enum:
                found.append(Violation(prop.path, f"{value!r} is not one of {list(prop.enum)}"))
        return found

    def check(self, event: Event) -> list[str]:
        """Violations as ``"field.path: message"`` strings."""
        return [str(v) for v in self.violations(event)]

    def log_warning(self, event: Event, violations: Iterable[object]) -> None:
        """WARNING log for warn-mode tenants, at most once a minute per (tenant, event name)."""
        key = (event.tenant_id, event.event or event.type.value)
        now = time.monotonic()
        last = self._last_warning.get(key)
        if last is not None and now - last < self.WARN_INTERVAL_SECONDS:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return
        self._last_warning[key] = now
        suppressed = self._suppressed.pop(key, 0)
        log.warning(
            "tracking plan violation tenant=%s event=%r message_id=%s: %s%s",
            key[0],
            key[1],
            event.message_id,
            "; ".join(str(v) for v in violations),
            f" (+{suppressed} similar suppressed)" if suppressed else "",
        )


def main(argv: list[str] | None = None) -> int:
    """``python -m schemas.tracking_plan DIR``: check every plan file in DIR and summarise it."""
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m schemas.tracking_plan",
        description="Check the tracking-plan YAML files of a directory (one file per tenant) and print a summary. "
        "Exits 1 with the offending file named when a plan is invalid.",
    )
    parser.add_argument("directory", help="Directory of <tenant>.yaml tracking plans, e.g. schemas/tracking_plans.")
    args = parser.parse_args(argv)
    try:
        plans = TrackingPlans.load(args.directory)
    except (OSError, ValueError) as exc:
        print(f"error: {exc}")
        return 1
    for tenant in plans.tenants:
        plan = plans.for_tenant(tenant)
        assert plan is not None
        unplanned = "allowed" if plan.allow_unplanned_events else "violations"
        print(f"{tenant}: mode={plan.mode}, {len(plan.events)} planned events, unplanned events {unplanned}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
