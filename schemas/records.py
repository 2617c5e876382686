"""What a source hands to the pipeline: raw bytes plus where and when they arrived."""

from __future__ import annotations

import datetime as dt
from typing import NamedTuple


class SourceRecord(NamedTuple):
    """One record as read: a file line, a Kinesis record, a webhook body.

    ``source_ref`` names the exact origin (``file:PATH:LINE``, ``kinesis:STREAM/SHARD/SEQ``) so that a
    dead letter can be traced and a replayed record recognised; ``received_at`` is the server arrival
    time when the source knows it (Kinesis ApproximateArrivalTimestamp), else None (the event's own
    receivedAt or the ingest time is used).
    """

    payload: bytes
    source_ref: str
    received_at: dt.datetime | None = None
