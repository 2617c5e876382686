"""Identifiers that name places: tenant ids, partition values, output names.

A tenant id becomes a Hive partition directory, an S3 prefix, the leading part of a DynamoDB key and a
warehouse value; an output or funnel name becomes a file name. So the contract allows only values that
are safe in every one of those stores as they are, with no escaping: lower-case letters, digits and
inner hyphens, at most 63 characters (the rules of an S3 bucket label). Anything else is refused where
it enters (a dead letter ``invalid_tenant``, a config error naming the entry), never encoded into a path.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Annotated

from pydantic import StringConstraints

__all__ = [
    "NAME_PATTERN",
    "TENANT_ID_PATTERN",
    "Name",
    "TenantId",
    "check_name",
    "check_partition_value",
    "check_tenant_id",
    "is_tenant_id",
]

TENANT_ID_PATTERN = r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$"
"""1-63 characters of ``a-z``, ``0-9`` and ``-``, starting and ending with a letter or digit."""

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$"
"""A file or output name: letters, digits, ``_ . -``, not starting with a dot, at most 128 characters."""

_TENANT = re.compile(TENANT_ID_PATTERN)
_NAME = re.compile(NAME_PATTERN)
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")

TenantId = Annotated[str, StringConstraints(pattern=TENANT_ID_PATTERN)]
Name = Annotated[str, StringConstraints(pattern=NAME_PATTERN)]


def is_tenant_id(value: object) -> bool:
    # fullmatch: "$" would also accept a trailing newline
    return isinstance(value, str) and _TENANT.fullmatch(value) is not None


def check_tenant_id(value: object, what: str = "tenant id") -> str:
    """``value`` when it is a valid tenant id, else ValueError naming ``what`` and the rule."""
    if not is_tenant_id(value):
        raise ValueError(
            f"{what} {_shown(value)} is not a valid tenant id (1-63 of a-z, 0-9 and '-', "
            "starting and ending with a letter or digit)"
        )
    return value  # type: ignore[return-value]


def check_name(value: object, what: str = "name") -> str:
    """``value`` when it can name a file or directory as it is, else ValueError naming ``what``."""
    if not (isinstance(value, str) and _NAME.fullmatch(value) and value not in (".", "..")):
        raise ValueError(
            f"{what} {_shown(value)} is not a safe name (1-128 of letters, digits, '_', '.', '-', "
            "not starting with '.')"
        )
    return value


def check_partition_value(key: str, value: object) -> str:
    """A Hive partition ``key=value`` pair's value, checked by what the key holds; the key itself too."""
    check_name(key, "partition key")
    text = value.isoformat() if isinstance(value, dt.date) else value
    if key == "tenant_id":
        return check_tenant_id(text, "partition tenant_id")
    if key.endswith(("_date", "as_of")) or key == "as_of":
        if not (isinstance(text, str) and _DATE.fullmatch(text)):
            raise ValueError(f"partition {key} {_shown(text)} is not a YYYY-MM-DD date")
        dt.date.fromisoformat(text)
        return text
    return check_name(text, f"partition {key}")


def _shown(value: object, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
