"""Sessions: a person's events split where they are inactive for longer than the gap."""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import MutableMapping, Sequence

DEFAULT_SESSION_GAP = dt.timedelta(minutes=30)


def event_order_key(row: MutableMapping) -> tuple:
    """Deterministic event order: time, then message id (ties broken the same on every run)."""
    return (row["timestamp"], row["message_id"])


def session_id_for(person_id: str, session_start: dt.datetime) -> str:
    digest = hashlib.blake2b(f"{person_id}\x1f{session_start.isoformat()}".encode(), digest_size=10).hexdigest()
    return f"s_{digest}"


def assign_sessions(rows: Sequence[MutableMapping], gap: dt.timedelta = DEFAULT_SESSION_GAP) -> None:
    """Set ``session_id`` on one person's rows (sorted here by :func:`event_order_key`).

    A session starts at the first event and at any event more than ``gap`` after the previous
    one; its id hashes the person and the start time, so reruns give the same ids.
    """
    ordered = sorted(rows, key=event_order_key)
    session_id, last = None, None
    for row in ordered:
        ts = row["timestamp"]
        if last is None or ts - last > gap:
            session_id = session_id_for(row["person_id"], ts)
        row["session_id"] = session_id
        last = ts
