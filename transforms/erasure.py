"""Erasure (DPDP Act 2023 s.12, GDPR Art. 17): who a request is about, and which rows name them.

Pure functions, no IO: :mod:`connectors.erasure` reads and rewrites the stores, :mod:`pipelines.erase` wires
them. A request names a person the way the customer knows themself (an email, a phone, the brand's user id)
or the way the platform does (a ``person_id``). The lake never holds an email or a phone in clear: it holds
their salted hash (:mod:`transforms.pii`), in ``traits``/``properties`` and as ``user_id``/``anonymous_id``
when the SDK sent an email or a phone as an id. So a request is first turned into the identifiers *as the
lake stores them* (:func:`lake_identifiers`), then into every person and id those identifiers are
connected to (:func:`close_over`), and rows are matched against that :class:`Subjects` set with Arrow's
``is_in`` (one pass for any number of requests).
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, model_validator

from schemas.identifiers import check_tenant_id
from transforms.normalize import normalize_email, normalize_phone
from transforms.pii import contact_form, hash_identifier, hash_value

__all__ = [
    "IDENTITY_COLUMNS",
    "ErasureRequest",
    "Subjects",
    "close_over",
    "contact_hashes",
    "dead_letter_mentions",
    "identity_table",
    "lake_identifiers",
    "needle_pattern",
    "row_mask",
]

Kind = Literal["email", "phone", "user_id", "anonymous_id", "person_id"]
KINDS: tuple[Kind, ...] = ("email", "phone", "user_id", "anonymous_id", "person_id")
IDENTITY_COLUMNS = ("user_id", "anonymous_id", "previous_id", "person_id")
"""The events columns that name a person (``traits`` is read for the email/phone hashes)."""

_TRAIT_HASH = {
    "email": re.compile(r'"email":"([0-9a-f]{64})"'),
    "phone": re.compile(r'"phone":"([0-9a-f]{64})"'),
}
"""``traits`` is compact JSON with sorted keys and hashed contacts: ``"email":"<64 hex>"``."""


class ErasureRequest(BaseModel):
    """One data principal's request: exactly one identifier, the tenant and who asked.

    ``requested_by`` is whoever filed it (a support ticket id, an operator's email): it goes to the audit
    log as is, so it should not be the customer's own email.
    """

    tenant: str
    email: str | None = None
    phone: str | None = None
    user_id: str | None = None
    anonymous_id: str | None = None
    person_id: str | None = None
    requested_by: str | None = None

    @model_validator(mode="after")
    def _one_identifier(self) -> ErasureRequest:
        check_tenant_id(self.tenant, "tenant")
        given = [kind for kind in KINDS if getattr(self, kind)]
        if len(given) != 1:
            raise ValueError(
                f"give exactly one of email, phone, user_id, anonymous_id, person_id (got {given or 'none'})"
            )
        return self

    @property
    def kind(self) -> Kind:
        return next(kind for kind in KINDS if getattr(self, kind))

    @property
    def value(self) -> str:
        return getattr(self, self.kind)


def lake_identifiers(request: ErasureRequest, salt: str) -> tuple[str, set[str]]:
    """``(kind, identifiers as the lake stores them)`` for one request: what the audit log may keep.

    An email is lower-cased and a phone put in E.164 (India by default) before hashing, as ingest does, so
    ``" Shopper@Example.IN "`` and ``"shopper@example.in"`` are the same request. A user id that is an email
    or a phone is hashed (ingest hashed it); an opaque one stays as is. A phone that cannot be read as a
    number is refused (ValueError): it can match nothing the lake holds.
    """
    value = request.value.strip()
    if request.kind == "email":
        return "email", {hash_value(salt, normalize_email(value))}
    if request.kind == "phone":
        e164 = normalize_phone(value)
        if e164 is None:
            raise ValueError(f"request of {request.requested_by or 'unknown'}: not a valid phone number")
        return "phone", {hash_value(salt, e164)}
    if request.kind in ("user_id", "anonymous_id"):
        return request.kind, {hash_identifier(salt, value) or value}
    return "person_id", {value}


def contact_hashes(values: Iterable[Any], salt: str) -> set[str]:
    """Salted hashes of every value that reads as an email or a phone (for raw dead-letter payloads)."""
    out = set()
    for value in values:
        if isinstance(value, int) and not isinstance(value, bool):
            value = str(value)
        if isinstance(value, str) and value.strip():
            contact = contact_form(value)
            if contact is not None:
                out.add(hash_value(salt, contact))
    return out


@dataclass
class Subjects:
    """Everything the persons of a tenant's requests are known by: ids as the lake stores them, person ids."""

    ids: set[str] = field(default_factory=set)
    """user ids, anonymous ids (and email/phone hashes, which may be ids too)."""
    person_ids: set[str] = field(default_factory=set)

    def __bool__(self) -> bool:
        return bool(self.ids or self.person_ids)

    def update(self, other: Subjects) -> None:
        self.ids |= other.ids
        self.person_ids |= other.person_ids

    def arrays(self) -> tuple[pa.Array, pa.Array]:
        return pa.array(sorted(self.ids), pa.string()), pa.array(sorted(self.person_ids), pa.string())


def identity_table(events: pa.Table) -> pa.Table:
    """The distinct ``(user_id, anonymous_id, previous_id, person_id, email_hash, phone_hash)`` of some events.

    ``events`` needs the :data:`IDENTITY_COLUMNS` and ``traits``. Distinct rows: a person repeats the same
    ids on every event, so this is a small fraction of the events and it is all resolution needs.
    """
    traits = events["traits"]
    columns = {name: events[name] for name in IDENTITY_COLUMNS}
    for kind, pattern in _TRAIT_HASH.items():
        found = pc.extract_regex(traits, pattern.pattern.replace("(", "(?P<h>", 1))
        columns[f"{kind}_hash"] = pc.struct_field(found, [0])
    table = pa.table(columns)
    return table.group_by(list(table.column_names), use_threads=False).aggregate([])


def _any_in(table: pa.Table, columns: Iterable[str], values: pa.Array) -> pa.Array:
    mask = None
    for name in columns:
        if name not in table.column_names:
            continue
        column = table[name]
        if pa.types.is_null(column.type):  # an all-null column (no id of that kind in these rows)
            column = column.cast(pa.string())
        hit = pc.fill_null(pc.is_in(column, value_set=values), False)
        mask = hit if mask is None else pc.or_(mask, hit)
    return mask if mask is not None else pa.array([False] * table.num_rows, pa.bool_())


def row_mask(table: pa.Table, subjects: Subjects) -> pa.Array:
    """True for the rows of ``table`` that belong to ``subjects``: any id column or the person id is theirs.

    Columns a table lacks are skipped (feature snapshots have ``person_id`` only), and so are the hash
    columns of :func:`identity_table` when present.
    """
    ids, persons = subjects.arrays()
    by_id = _any_in(table, ("user_id", "anonymous_id", "previous_id", "email_hash", "phone_hash"), ids)
    by_person = _any_in(table, ("person_id",), persons)
    return pc.or_(by_id, by_person)


def close_over(identities: pa.Table, seeds: Subjects, max_rounds: int = 20) -> Subjects:
    """Every person and id connected to ``seeds`` through the rows of ``identities`` (:func:`identity_table`).

    A row that names one of the subjects' ids or persons brings in its person and all its ids; repeated until
    nothing new comes in (the identity graph's component, plus the person ids streaming gave an anonymous id
    before sign-up). ``max_rounds`` bounds a pathological chain; each round is one ``is_in`` per column.
    """
    found = Subjects(set(seeds.ids), set(seeds.person_ids))
    for _ in range(max_rounds):
        if not found or not identities.num_rows:
            break
        hits = identities.filter(row_mask(identities, found))
        grown = Subjects(set(found.ids), set(found.person_ids))
        for name in ("user_id", "anonymous_id", "previous_id"):
            grown.ids.update(v for v in hits[name].to_pylist() if v)
        grown.person_ids.update(v for v in hits["person_id"].to_pylist() if v)
        if grown.ids == found.ids and grown.person_ids == found.person_ids:
            break
        found = grown
    return found


_PAYLOAD_ID_KEYS = ("userId", "anonymousId", "previousId", "user_id", "anonymous_id", "previous_id", "person_id")
_CONTACT_KEYS = ("email", "phone")


def _payload_values(doc: Any) -> tuple[set[str], list[Any]]:
    """``(id values, contact values)`` of a decoded payload: top-level ids and any ``email``/``phone`` key."""
    ids: set[str] = set()
    contacts: list[Any] = []
    if isinstance(doc, Mapping):
        for key in _PAYLOAD_ID_KEYS:
            if isinstance(doc.get(key), str):
                ids.add(doc[key])
    stack = [doc]
    while stack:
        item = stack.pop()
        if isinstance(item, Mapping):
            for key, value in item.items():
                if key in _CONTACT_KEYS:
                    contacts.append(value)
                if isinstance(value, Mapping | list):
                    stack.append(value)
                elif isinstance(value, str) and key in ("traits", "properties") and value.startswith("{"):
                    # a sink dead letter's payload is a lake row: traits/properties are JSON text (if it is not
                    # JSON, the needle search still sees it)
                    with contextlib.suppress(ValueError):
                        stack.append(json.loads(value))
        elif isinstance(item, list):
            stack.extend(item)
    return ids, contacts


def dead_letter_mentions(payload_text: str, subjects: Subjects, salt: str, needles: re.Pattern | None) -> bool:
    """Whether one dead letter mentions a subject: its raw payload or its recorded ids.

    Dead letters keep the payload as received, before any PII policy: an email or phone there is in clear,
    in whatever spelling the client sent. So the payload is decoded when it is JSON and every ``email`` /
    ``phone`` value (any depth) is normalised and hashed with the tenant's salt, and every id compared as is
    and hashed (an email sent as userId); a payload that is not JSON (a malformed record) is searched for
    the ``needles`` (the subjects' ids and the requests' raw values, case-insensitive).
    """
    ids, persons = subjects.ids, subjects.person_ids
    try:
        doc = json.loads(payload_text)
    except ValueError:
        doc = None
    if doc is not None:
        found_ids, contacts = _payload_values(doc)
        if found_ids & persons or found_ids & ids:
            return True
        if {hash_identifier(salt, v) for v in found_ids} & ids:
            return True
        if {c for c in contacts if isinstance(c, str)} & ids or contact_hashes(contacts, salt) & ids:
            return True
    return bool(needles and needles.search(payload_text))


def needle_pattern(values: Iterable[str]) -> re.Pattern | None:
    """A case-insensitive search for any of ``values`` as a whole token (``u1`` does not match ``u12``)."""
    words = sorted({v.strip() for v in values if v and v.strip()}, key=len, reverse=True)
    if not words:
        return None
    body = "|".join(re.escape(w) for w in words)
    return re.compile(rf"(?<![A-Za-z0-9_.@+-])(?:{body})(?![A-Za-z0-9_@-])", re.IGNORECASE)
