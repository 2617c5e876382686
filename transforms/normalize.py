"""Normalise validated events: UTC time with Segment's clock-skew correction, emails and phones.

Time follows Segment: a device clock may be wrong, but the *difference* between when the device
recorded the event (``originalTimestamp``) and when it sent it (``sentAt``) is right, so the event
time is ``receivedAt - (sentAt - originalTimestamp)``. Events far in the future are rejected (a
broken clock would otherwise plant them in tomorrow's dashboards); events years old are accepted
(history imports are normal). A ``sentAt`` before ``originalTimestamp`` (beyond ``max_future``) is not a
clock offset but a wrong value (a zero ``sentAt`` of year 1): ``bad_timestamp`` on ``sentAt``, not a
future timestamp. Every datetime leaves here tz-aware UTC, microsecond precision.
"""

from __future__ import annotations

import datetime as dt
import functools

import phonenumbers

from schemas.failures import FailedEvent, Reason, Stage
from transforms.validate import ValidEvent

__all__ = [
    "EARLIEST",
    "corrected_times",
    "normalize_contacts",
    "normalize_email",
    "normalize_event",
    "normalize_phone",
]

EARLIEST = dt.datetime(1990, 1, 1, tzinfo=dt.UTC)
"""Timestamps before this are a broken clock (epoch 0, year 1), not history."""

UTC = dt.UTC
EMAIL_KEYS = ("email",)
PHONE_KEYS = ("phone",)


def _utc(value: dt.datetime) -> dt.datetime:
    """Aware UTC; naive values are taken as UTC (Python datetimes are already microsecond precision)."""
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    if value.tzinfo is UTC:
        return value
    return value.astimezone(UTC)  # also for pydantic's TzInfo(0): ~4x cheaper than replace(tzinfo=UTC) here


def normalize_email(value: str) -> str:
    return value.strip().lower()


@functools.lru_cache(maxsize=65_536)
def normalize_phone(value: str, region: str = "IN") -> str | None:
    """E.164 for a valid number, None when it cannot be read as one (cached: a person repeats their number)."""
    try:
        number = phonenumbers.parse(value, region)
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_valid_number(number):
        return None
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def _fail(ev: ValidEvent, reason: Reason, field_path: str, message: str) -> FailedEvent:
    return ev.failure(Stage.NORMALIZE, reason, field_path, message)


def _contact_fields(container: object, path: str, region: str, notes: list[str]) -> None:
    """Lower-case emails and E.164 phones in one properties/traits dict, in place."""
    if not isinstance(container, dict):
        return
    email = container.get("email")
    if isinstance(email, str):
        container["email"] = normalize_email(email)
    phone = container.get("phone")
    if isinstance(phone, str | int) and not isinstance(phone, bool):
        text = str(phone).strip()
        e164 = normalize_phone(text, region) if text else None
        if e164 is None:
            notes.append(f"{path}.phone: not a valid phone number, kept as sent")
        else:
            container["phone"] = e164


TimeFailure = tuple[Reason, str, str]
"""(reason, field path, message) of an event whose times cannot be right."""


def corrected_times(
    received_at: dt.datetime | None,
    original_timestamp: dt.datetime | None,
    sent_at: dt.datetime | None,
    timestamp: dt.datetime | None,
    *,
    now: dt.datetime,
    max_future: dt.timedelta,
    sdk_timestamp_is_original: bool,
) -> tuple[dt.datetime, dt.datetime, dt.datetime | None, dt.datetime | None] | TimeFailure:
    """(received, timestamp, original, sent) in UTC with the clock-skew correction, or a :data:`TimeFailure`.

    The one implementation of the time rules, for the per-event and the batch parser alike.
    """
    try:
        received = _utc(received_at) if received_at is not None else _utc(now)
        original = _utc(original_timestamp) if original_timestamp is not None else None
        sent = _utc(sent_at) if sent_at is not None else None
        own = _utc(timestamp) if timestamp is not None else None
        if sdk_timestamp_is_original and original is None and sent is not None and own is not None:
            original = own
        if original is not None and sent is not None and original - sent > max_future:
            # sent before it was recorded, on one device clock: one of the two is wrong (a zero-valued sentAt,
            # year 1, is the usual culprit) and the correction would move the event that far past receivedAt
            return (
                Reason.BAD_TIMESTAMP,
                "sentAt",
                f"sentAt {sent.isoformat()} is more than {max_future} before originalTimestamp {original.isoformat()}: "
                "an event cannot be sent before it happened",
            )
        if original is not None and sent is not None:
            corrected = received - (sent - original)
        else:
            corrected = own or original or received
    except OverflowError:
        return Reason.BAD_TIMESTAMP, "timestamp", "clock-skew correction overflows the calendar"
    if sent is not None and original is None and sent < EARLIEST:
        # without originalTimestamp nothing cancels the device clock: a year-1 sentAt is a zero value, not a time
        return Reason.BAD_TIMESTAMP, "sentAt", f"sentAt {sent.isoformat()} is before 1990"
    if received < EARLIEST:
        return Reason.BAD_TIMESTAMP, "receivedAt", f"receivedAt {received.isoformat()} is before 1990"
    if corrected < EARLIEST:
        return Reason.BAD_TIMESTAMP, "timestamp", f"timestamp {corrected.isoformat()} is before 1990"
    if corrected - received > max_future:
        return (
            Reason.FUTURE_TIMESTAMP,
            "timestamp",
            f"timestamp {corrected.isoformat()} is more than {max_future} after receivedAt {received.isoformat()}",
        )
    return received, corrected, original, sent


def normalize_contacts(traits: object, properties: object, context_traits: object, region: str = "IN") -> list[str]:
    """Emails lower-cased and phones in E.164, in place in the three dicts that carry them; the notes."""
    notes: list[str] = []
    if traits:
        _contact_fields(traits, "traits", region, notes)
    if properties and ("email" in properties or "phone" in properties):  # type: ignore[operator]
        _contact_fields(properties, "properties", region, notes)
    if context_traits:
        _contact_fields(context_traits, "context.traits", region, notes)
    return notes


def normalize_event(
    ev: ValidEvent,
    *,
    now: dt.datetime,
    max_future: dt.timedelta = dt.timedelta(hours=24),
    default_phone_region: str = "IN",
    sdk_timestamp_is_original: bool = False,
) -> ValidEvent | FailedEvent:
    """Time and contact fields of one event; ``ev`` is updated in place and returned.

    Args:
        ev: a validated event.
        now: the ingest time, used as ``receivedAt`` when the event has none.
        max_future: how far past ``receivedAt`` a (corrected) timestamp may lie.
        default_phone_region: region for phone numbers written without a country code.
        sdk_timestamp_is_original: read ``timestamp`` as ``originalTimestamp`` when the event has ``sentAt`` but
            no ``originalTimestamp``: Segment's device libraries (analytics.js, mobile) send the device time as
            ``timestamp`` on the wire and Segment's API renames it before correcting. Off by default: then an
            explicit ``timestamp`` is kept as sent (history imports).
    """
    event = ev.event
    times = corrected_times(
        event.received_at,
        event.original_timestamp,
        event.sent_at,
        event.timestamp,
        now=now,
        max_future=max_future,
        sdk_timestamp_is_original=sdk_timestamp_is_original,
    )
    if type(times[0]) is Reason:
        return _fail(ev, *times)
    received, timestamp, original, sent = times
    # Straight into the model's field storage: what pydantic's __setattr__ does for these plain fields
    # (no validate_assignment on Event), at a quarter of the per-event cost.
    fields = event.__dict__
    fields["received_at"] = received
    fields["timestamp"] = timestamp
    fields["original_timestamp"] = original
    fields["sent_at"] = sent
    event.__pydantic_fields_set__.update(("received_at", "timestamp"))

    context_traits = (event.context.__pydantic_extra__ or {}).get("traits")
    notes = normalize_contacts(event.traits, event.properties, context_traits, default_phone_region)
    if notes:
        ev.notes = (*ev.notes, *notes)
    return ev
