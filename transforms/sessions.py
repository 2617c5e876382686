"""Sessions: a person's events split where they are inactive for longer than the gap."""

from __future__ import annotations

import datetime as dt
import hashlib

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from transforms.dedupe import group_starts

DEFAULT_SESSION_GAP = dt.timedelta(minutes=30)
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def session_id_for(person_id: str, session_start: dt.datetime) -> str:
    digest = hashlib.blake2b(f"{person_id}\x1f{session_start.isoformat()}".encode(), digest_size=10).hexdigest()
    return f"s_{digest}"


def sessionize_table(table: pa.Table, gap: dt.timedelta = DEFAULT_SESSION_GAP) -> pa.Table:
    """Fill ``session_id`` on a table that holds all of each of its persons' events.

    Per person, in event order (time, then message id: ties broken the same on every run), a
    session starts at the first event and at any event more than ``gap`` after the previous one;
    its id hashes the person and the start time, so reruns give the same ids. Rows keep their
    order (only the three key columns are sorted).
    """
    if not table.num_rows:
        return table
    keys = table.select(["person_id", "timestamp", "message_id"])
    order = pc.sort_indices(keys, sort_keys=[(name, "ascending") for name in keys.column_names])
    ordered = keys.take(order)
    micros = pc.cast(ordered["timestamp"], pa.int64()).to_numpy()
    people = ordered["person_id"]
    new_person = group_starts([people]).to_numpy(zero_copy_only=False)
    gap_us = gap // dt.timedelta(microseconds=1)
    starts = new_person | np.r_[True, np.diff(micros) > gap_us]
    start_rows = np.flatnonzero(starts)
    start_people = people.take(pa.array(start_rows)).to_pylist()
    ids = [
        session_id_for(person, _EPOCH + dt.timedelta(microseconds=int(us)))
        for person, us in zip(start_people, micros[start_rows], strict=True)
    ]
    session_of_sorted = np.cumsum(starts) - 1
    session_of_row = np.empty_like(session_of_sorted)
    session_of_row[order.to_numpy()] = session_of_sorted
    session_ids = pa.array(ids, pa.string()).take(pa.array(session_of_row))
    index = table.schema.get_field_index("session_id")
    return table.set_column(index, table.schema.field(index).with_type(pa.string()), session_ids)
