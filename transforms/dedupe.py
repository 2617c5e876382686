"""Dedup by ``(tenant_id, message_id)``: keep one copy, count the rest.

Which copy survives must not depend on arrival order or on the worker, or reruns would write
different lake rows: the earliest ``received_at`` wins, then the smallest payload source ref.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping


def survivor_key(row: Mapping) -> tuple:
    return (row["received_at"], row.get("_source_ref") or "", row.get("properties") or "")


def dedupe_rows(rows: Iterable[Mapping]) -> tuple[list[Mapping], list[tuple[str, str]]]:
    """Returns (unique rows, (tenant_id, message_id) of every dropped duplicate)."""
    best: dict[tuple[str, str], Mapping] = {}
    duplicates: list[tuple[str, str]] = []
    for row in rows:
        key = (row["tenant_id"], row["message_id"])
        held = best.get(key)
        if held is None:
            best[key] = row
            continue
        duplicates.append(key)
        if survivor_key(row) < survivor_key(held):
            best[key] = row
    return list(best.values()), duplicates
