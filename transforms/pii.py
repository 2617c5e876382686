"""PII hashing and dropping per tenant policy (SHA-256 of a per-tenant salt + the normalised value).

Hashing keeps joins possible (the same email gives the same hash within a tenant) without storing
the value; a per-tenant salt stops one tenant's hashes from matching another's, and a dictionary of
common emails from being looked up against unsalted hashes. Values are hashed after normalisation
(emails lower-cased, phones in E.164 by transforms.normalize) so that spelling variants collide.
"""

from __future__ import annotations

import hashlib
from typing import Any

from pydantic import BaseModel

__all__ = ["CompiledPolicy", "PiiPolicy", "apply_policy", "hash_value"]

DEFAULT_HASH_FIELDS = ["traits.email", "traits.phone", "properties.email", "properties.phone", "context.ip"]


class PiiPolicy(BaseModel):
    """One tenant's PII policy: dotted paths (``traits.email``, ``properties.address.phone``) to hash or drop."""

    salt: str = ""
    hash_fields: list[str] = list(DEFAULT_HASH_FIELDS)
    drop_fields: list[str] = []


def hash_value(salt: str, value: Any) -> str:
    """sha256(salt + value) as lower-case hex; non-strings hashed through their text form."""
    if not isinstance(value, str):
        value = _text(value)
    return hashlib.sha256((salt + value).encode("utf-8")).hexdigest()


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (dict, list, tuple)):
        import json

        return json.dumps(value, separators=(",", ":"), sort_keys=True, default=str)
    return str(value)


Path = tuple[str, ...]


class CompiledPolicy:
    """A :class:`PiiPolicy` split by root (``properties``, ``traits``, ``context``) into key tuples."""

    __slots__ = ("drop", "hash", "ip_action", "salt", "top_keys", "ua_action")

    def __init__(self, policy: PiiPolicy) -> None:
        self.salt = policy.salt
        self.hash = _by_root(policy.hash_fields)
        self.drop = _by_root(policy.drop_fields)
        self.top_keys = {
            root: frozenset(path[0] for path in (*self.hash.get(root, ()), *self.drop.get(root, ())))
            for root in {*self.hash, *self.drop}
        }
        """root -> first keys of its configured paths: a dict without any of them needs no copy."""
        self.ip_action = self.action("context.ip")
        self.ua_action = self.action("context.user_agent") or self.action("context.userAgent")

    def action(self, path: str) -> str | None:
        """'drop', 'hash' or None for one dotted path (drop wins)."""
        if self.drops(path):
            return "drop"
        return "hash" if self.hashes(path) else None

    def hashes(self, path: str) -> bool:
        root, _, rest = path.partition(".")
        return tuple(rest.split(".")) in self.hash.get(root, ())

    def drops(self, path: str) -> bool:
        root, _, rest = path.partition(".")
        return tuple(rest.split(".")) in self.drop.get(root, ())


def _by_root(paths: list[str]) -> dict[str, tuple[Path, ...]]:
    out: dict[str, list[Path]] = {}
    for path in paths:
        root, _, rest = path.strip().partition(".")
        if root and rest:
            out.setdefault(root, []).append(tuple(rest.split(".")))
    return {root: tuple(paths) for root, paths in out.items()}


def _apply(obj: dict[str, Any], path: Path, salt: str, drop: bool) -> dict[str, Any]:
    """A copy of ``obj`` with ``path`` hashed (or removed); ``obj`` itself when the path is absent."""
    key = path[0]
    if key not in obj:
        return obj
    value = obj[key]
    if len(path) == 1:
        out = dict(obj)
        if drop:
            del out[key]
        elif value is not None:
            out[key] = hash_value(salt, value)
        return out
    if isinstance(value, dict):
        inner = _apply(value, path[1:], salt, drop)
        if inner is value:
            return obj
        out = dict(obj)
        out[key] = inner
        return out
    if isinstance(value, list):  # e.g. properties.products.email applies to every element
        items = [_apply(item, path[1:], salt, drop) if isinstance(item, dict) else item for item in value]
        if all(a is b for a, b in zip(items, value, strict=True)):
            return obj
        out = dict(obj)
        out[key] = items
        return out
    return obj


def apply_policy(obj: dict[str, Any], root: str, policy: CompiledPolicy) -> dict[str, Any]:
    """``obj`` (the event's ``properties`` or ``traits``) with the policy applied; never mutates ``obj``.

    Drops win over hashes for the same path. Returns ``obj`` itself when no configured path is present
    (the common case: no copy).
    """
    keys = policy.top_keys.get(root)
    if not keys or keys.isdisjoint(obj):
        return obj
    for path in policy.drop.get(root, ()):
        obj = _apply(obj, path, policy.salt, drop=True)
    for path in policy.hash.get(root, ()):
        obj = _apply(obj, path, policy.salt, drop=False)
    return obj
