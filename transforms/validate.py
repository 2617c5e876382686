"""Validate decoded events against the contract (pydantic) and the tenant's tracking plan.

A bad event becomes a :class:`~schemas.failures.FailedEvent` whose ``field_path`` uses the names
the sender used (``messageId`` or ``message_id``, ``properties.revenue``,
``properties.products[0].price``), so the brand can find the field in its own code. The typed
e-commerce properties are validated but not substituted: ``event.properties`` stays the dict the
sender sent (brands' own keys and exact values survive), only its validity is checked.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pycountry
from pydantic import ValidationError

from schemas.events import ECOMMERCE_PROPERTIES, Context, Event
from schemas.failures import FailedEvent, Reason, Stage
from transforms.decode import RawEvent

if TYPE_CHECKING:
    from schemas.tracking_plan import TrackingPlans

__all__ = ["ISO_CURRENCIES", "ValidEvent", "validate_event"]

ISO_CURRENCIES = frozenset(c.alpha_3 for c in pycountry.currencies)
"""ISO 4217 currency codes (pycountry's table)."""

TIMESTAMP_FIELDS = frozenset({"timestamp", "originalTimestamp", "sentAt", "receivedAt"})
_ALIASES = {info.alias: name for model in (Event, Context) for name, info in model.model_fields.items() if info.alias}
"""camelCase alias -> snake_case field name (and the reverse below): error paths use what the sender sent."""
_NAMES = {name: alias for alias, name in _ALIASES.items()}

# Messages of Event's model validator -> (reason, field path).
_SHAPE_ERRORS = {
    "one of userId or anonymousId": (Reason.MISSING_FIELD, "userId"),
    "track events need an event name": (Reason.MISSING_FIELD, "event"),
    "alias events need previousId": (Reason.MISSING_FIELD, "previousId"),
    "group events need groupId": (Reason.MISSING_FIELD, "groupId"),
}
_MAX_ERRORS_IN_MESSAGE = 5


@dataclass(slots=True)
class ValidEvent:
    """An event that passed the contract (and, in block mode, the tracking plan)."""

    event: Event
    payload: bytes
    source_ref: str | None
    violations: tuple[str, ...] = ()
    """Tracking-plan violations recorded in allow/warn mode (``"field.path: message"``)."""
    notes: tuple[str, ...] = ()
    """Data-quality notes from normalisation that did not fail the event (e.g. an unparsable phone)."""

    def failure(self, stage: Stage, reason: Reason, field_path: str | None, message: str) -> FailedEvent:
        """This event as a dead letter of a later stage (normalize, enrich), keeping its original payload."""
        return FailedEvent(
            payload=self.payload,
            stage=stage,
            reason=reason,
            field_path=field_path,
            message=message,
            tenant_id=self.event.tenant_id,
            message_id=self.event.message_id,
            source_ref=self.source_ref,
        )


def _id_of(data: dict, *keys: str) -> str | None:
    for key in keys:
        value = data.get(key)
        if isinstance(value, str) and 0 < len(value) <= 256:
            return value
    return None


def _fail(raw: RawEvent, reason: Reason, field_path: str | None, message: str, stage: Stage) -> FailedEvent:
    data = raw.data if isinstance(raw.data, dict) else {}
    return FailedEvent(
        payload=raw.payload,
        stage=stage,
        reason=reason,
        field_path=field_path,
        message=message,
        tenant_id=_id_of(data, "tenantId", "tenant_id"),
        message_id=_id_of(data, "messageId", "message_id"),
        source_ref=raw.source_ref,
    )


def _sender_path(data: Any, loc: tuple, prefix: tuple = ()) -> str:
    """A dotted path in the sender's names: at each level the key the input actually holds."""
    parts: list[str] = [str(p) for p in prefix]
    node = data
    for step in prefix:
        node = node.get(step) if isinstance(node, dict) else None
    for step in loc:
        if isinstance(step, int):
            parts[-1:] = [f"{parts[-1]}[{step}]"] if parts else [f"[{step}]"]
            node = node[step] if isinstance(node, list) and -len(node) <= step < len(node) else None
            continue
        key = step
        if isinstance(node, dict) and key not in node:
            other = _ALIASES.get(key) or _NAMES.get(key)
            if other is not None and other in node:
                key = other
        parts.append(str(key))
        node = node.get(key) if isinstance(node, dict) else None
    return ".".join(parts)


def _reason_of(error: dict, path_root: str) -> Reason:
    kind = error["type"]
    if kind == "missing":
        return Reason.MISSING_FIELD
    if path_root in ("tenantId", "tenant_id"):
        return Reason.INVALID_TENANT
    if kind.startswith("datetime") and path_root in TIMESTAMP_FIELDS:
        return Reason.BAD_TIMESTAMP
    if kind.endswith(("_type", "_parsing")) or kind in ("int_from_float", "is_instance_of"):
        return Reason.WRONG_TYPE
    return Reason.INVALID_VALUE


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _from_validation_error(raw: RawEvent, exc: ValidationError, prefix: tuple = ()) -> FailedEvent:
    errors = exc.errors(include_url=False, include_context=False)
    described = []
    first: tuple[Reason, str | None] | None = None
    for error in errors:
        loc = error["loc"]
        if not loc and not prefix:  # the envelope's model validator (shape rules)
            text = error["msg"].removeprefix("Value error, ")
            reason, path = next(
                (rp for needle, rp in _SHAPE_ERRORS.items() if needle in text), (Reason.INVALID_VALUE, None)
            )
            described.append(text)
        else:
            path = _sender_path(raw.data, loc, prefix)
            root = str(prefix[0] if prefix else loc[0])
            reason = _reason_of(error, root)
            got = "" if error["type"] == "missing" else f" (got {_short(error.get('input'))})"
            described.append(f"{path}: {error['msg']}{got}")
        if first is None:
            first = (reason, path)
    if len(described) > _MAX_ERRORS_IN_MESSAGE:
        described = [*described[:_MAX_ERRORS_IN_MESSAGE], f"... {len(described) - _MAX_ERRORS_IN_MESSAGE} more"]
    reason, path = first or (Reason.INVALID_VALUE, None)
    return _fail(raw, reason, path, "; ".join(described), Stage.VALIDATE)


def validate_event(raw: RawEvent, plans: TrackingPlans | None = None) -> ValidEvent | FailedEvent:
    """Contract, e-commerce properties, then the tenant's tracking plan. Never raises.

    Args:
        raw: a decoded event.
        plans: per-tenant tracking plans; None (or a tenant without a plan) accepts every valid event.
    """
    data = raw.data
    if not isinstance(data, dict):
        return _fail(
            raw, Reason.NOT_AN_OBJECT, None, f"event is a {type(data).__name__}, not an object", Stage.VALIDATE
        )
    try:
        # the model's validator directly: Event.model_validate minus a Python-level wrapper (per-event cost)
        event = Event.__pydantic_validator__.validate_python(data)
    except ValidationError as exc:
        return _from_validation_error(raw, exc)
    except (TypeError, ValueError, RecursionError) as exc:  # input pydantic could not even describe
        return _fail(raw, Reason.INVALID_VALUE, None, f"invalid event: {type(exc).__name__}: {exc}", Stage.VALIDATE)

    props_model = ECOMMERCE_PROPERTIES.get(event.event) if event.event else None
    if props_model is not None:
        props_key = "properties"
        try:
            typed = props_model.__pydantic_validator__.validate_python(event.properties)
        except ValidationError as exc:
            return _from_validation_error(raw, exc, prefix=(props_key,))
        except (TypeError, ValueError, RecursionError) as exc:
            return _fail(raw, Reason.INVALID_VALUE, props_key, f"invalid properties: {exc}", Stage.VALIDATE)
        currency = getattr(typed, "currency", None)
        if currency is not None:
            if not isinstance(currency, str) or currency not in ISO_CURRENCIES:  # an extra of an open model: any JSON
                got = _short(event.properties.get("currency", currency))
                return _fail(
                    raw,
                    Reason.UNKNOWN_CURRENCY,
                    "properties.currency",
                    f"properties.currency: {got} is not an ISO 4217 currency code",
                    Stage.VALIDATE,
                )
            sent = event.properties.get("currency")
            if isinstance(sent, str) and sent != currency:
                # "inr" -> "INR" before the plan's enum check and for the lake (event.properties is pydantic's
                # copy of the dict: the payload bytes and raw.data keep what was sent)
                event.properties["currency"] = currency

    if plans is None:
        return ValidEvent(event, raw.payload, raw.source_ref)
    plan = plans.for_tenant(event.tenant_id)
    if plan is None:
        return ValidEvent(event, raw.payload, raw.source_ref)
    found = plans.violations(event)
    if not found:
        return ValidEvent(event, raw.payload, raw.source_ref)
    if plan.mode == "block":
        return _fail(
            raw,
            Reason.PLAN_VIOLATION,
            found[0].field_path,
            "; ".join(str(v) for v in found),
            Stage.TRACKING_PLAN,
        )
    if plan.mode == "warn":
        plans.log_warning(event, found)
    return ValidEvent(event, raw.payload, raw.source_ref, violations=tuple(str(v) for v in found))
