"""PII hashing and dropping per tenant policy (SHA-256 of a per-tenant secret salt + the normalised value).

Hashing keeps joins possible (the same email gives the same hash within a tenant) without storing
the value. The salt must be secret and per tenant: an empty or public salt lets anyone reverse a
hash by hashing guesses (all the emails of a leaked list, every IP of a /16 in a few milliseconds),
and a salt shared by tenants makes one brand's customers recognisable in another brand's data.
So a tenant's salt is either configured explicitly (:attr:`PiiPolicy.salt`, at least
:data:`MIN_SALT_LENGTH` characters) or derived from one random master secret as
HMAC-SHA256(secret, tenant id) (:func:`tenant_salt`); the master secret is kept by
:mod:`connectors.secrets`, never chosen here (this module does no IO).

Values are hashed after normalisation (emails lower-cased, phones in E.164 by transforms.normalize)
so that spelling variants collide. Identifiers (userId, anonymousId, previousId) that are an email
or a phone number are hashed the same way (:func:`hash_identifier`), so an email sent as userId and
the same email in ``traits.email`` give the same hash and identity stitching still joins them.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from typing import Any

from pydantic import BaseModel, field_validator

from transforms.normalize import normalize_email, normalize_phone

__all__ = [
    "DEFAULT_HASH_FIELDS",
    "MIN_SALT_LENGTH",
    "CompiledPolicy",
    "PiiPolicy",
    "apply_policy",
    "check_salt",
    "compile_policy",
    "contact_form",
    "hash_identifier",
    "hash_value",
    "tenant_salt",
]

DEFAULT_HASH_FIELDS = [
    "traits.email",
    "traits.phone",
    "traits.name",
    "traits.first_name",
    "traits.last_name",
    "traits.firstName",
    "traits.lastName",
    "traits.address",
    "properties.email",
    "properties.phone",
    "context.ip",
]
"""Hashed unless a tenant's policy says otherwise. ``traits.address`` is hashed whole (a Segment
address object as its JSON text, or a free-text line): coarse location stays available in the
geo-IP columns and in ``traits.city`` / ``state`` / ``country``."""

MIN_SALT_LENGTH = 16
"""Shortest salt or master secret accepted: shorter ones are guessable (a generated one is 64 hex)."""


def check_salt(salt: str, what: str = "PII salt") -> str:
    """``salt`` when it is long enough to be a secret; ValueError (saying why and what to do) otherwise."""
    if len(salt.strip()) < MIN_SALT_LENGTH:
        state = "empty" if not salt.strip() else f"only {len(salt.strip())} characters"
        raise ValueError(
            f"{what} is {state}: hashes made with an empty or short salt can be reversed by hashing guesses. "
            f"Give at least {MIN_SALT_LENGTH} random characters, or none at all: then a random secret is "
            "created once per lake and kept (docs/enrichment.md, 'PII salt')."
        )
    return salt


def tenant_salt(secret: str, tenant_id: str) -> str:
    """The tenant's salt derived from the master secret: HMAC-SHA256(secret, tenant_id) as hex.

    One secret serves every tenant, yet tenants' hashes of the same value never match, and one
    tenant's salt reveals neither the secret nor another tenant's salt.
    """
    return hmac.new(secret.encode("utf-8"), tenant_id.encode("utf-8"), hashlib.sha256).hexdigest()


class PiiPolicy(BaseModel):
    """One tenant's PII policy: dotted paths (``traits.email``, ``properties.address.phone``) to hash or drop.

    ``salt`` None (the default) means the tenant's salt is derived from the pipeline's master secret;
    a configured salt is used as is and must be at least :data:`MIN_SALT_LENGTH` characters.
    """

    salt: str | None = None
    hash_fields: list[str] = list(DEFAULT_HASH_FIELDS)
    drop_fields: list[str] = []
    hash_identifiers: bool = True
    """Hash userId / anonymousId / previousId values that are an email or a phone number."""

    @field_validator("salt")
    @classmethod
    def _secret_enough(cls, salt: str | None) -> str | None:
        return None if salt is None else check_salt(salt)


def hash_value(salt: str, value: Any) -> str:
    """sha256(salt + value) as lower-case hex; non-strings hashed through their text form."""
    if not isinstance(value, str):
        value = _text(value)
    return hashlib.sha256((salt + value).encode("utf-8")).hexdigest()


_EMAIL = re.compile(r"[^@\s]+@[^@\s]+")
_PHONE = re.compile(r"\+?[0-9][0-9 ().-]{6,24}")


def contact_form(value: str, region: str = "IN") -> str | None:
    """The normalised email or E.164 phone number an identifier is, or None when it is neither.

    Email: anything of the form ``local@domain``. Phone: digits with the usual separators (7 to 15
    digits) that libphonenumber reads as a valid number, with ``region`` for numbers without a
    country code (what :mod:`transforms.normalize` does to ``traits.phone``). UUIDs and opaque ids
    fail the shape test on their first letter, so the check costs next to nothing for them.
    """
    text = value.strip()
    if "@" in text:
        return normalize_email(text) if _EMAIL.fullmatch(text) else None
    if _PHONE.fullmatch(text) and 7 <= sum(c.isdigit() for c in text) <= 15:
        return normalize_phone(text, region)
    return None


def hash_identifier(salt: str, value: str | None) -> str | None:
    """``value`` hashed like ``traits.email`` / ``traits.phone`` when it is an email or a phone; else as is."""
    if not value:
        return value
    contact = contact_form(value)
    return value if contact is None else hash_value(salt, contact)


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (dict, list, tuple)):
        import json

        return json.dumps(value, separators=(",", ":"), sort_keys=True, default=str)
    return str(value)


Path = tuple[str, ...]


class CompiledPolicy:
    """A :class:`PiiPolicy` with its tenant's effective salt, split by root (``properties``, ``traits``,
    ``context``) into key tuples.

    Args:
        policy: the tenant's policy.
        salt: the salt to hash with (:func:`compile_policy` picks it); an empty or short one is refused.
    """

    __slots__ = ("drop", "hash", "hash_ids", "ip_action", "salt", "top_keys", "ua_action")

    def __init__(self, policy: PiiPolicy, salt: str) -> None:
        self.salt = check_salt(salt)
        self.hash_ids = policy.hash_identifiers
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


def compile_policy(policy: PiiPolicy, tenant_id: str, secret: str | None) -> CompiledPolicy:
    """``policy`` for ``tenant_id``: its configured salt, else the salt derived from the master ``secret``."""
    if policy.salt is not None:
        return CompiledPolicy(policy, policy.salt)
    if secret is None:
        raise ValueError(f"no PII salt for tenant {tenant_id!r}: neither a configured salt nor a master secret")
    return CompiledPolicy(policy, tenant_salt(check_salt(secret, "PII master secret"), tenant_id))


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
