"""Backfills without tenantId and write keys: filled, or a dead letter, never re-tenanted."""

from __future__ import annotations

import json

import pytest

from schemas.failures import FailedEvent, Reason
from transforms.decode import RawEvent
from transforms.tenancy import TenantAssigner


def raw(**data) -> RawEvent:
    return RawEvent(json.dumps(data).encode(), data, "file:x@0")


def test_a_missing_tenant_is_filled_and_a_different_one_refused():
    assign = TenantAssigner("acme-in").assign
    filled = assign(raw(messageId="m1", type="track"))
    assert isinstance(filled, RawEvent) and filled.data["tenantId"] == "acme-in"
    assert assign(raw(messageId="m2", tenantId="acme-in")).data["tenantId"] == "acme-in"
    other = assign(raw(messageId="m3", tenantId="bloom-in"))
    assert isinstance(other, FailedEvent)
    assert (other.reason, other.field_path, other.message_id) == (Reason.TENANT_MISMATCH, "tenantId", "m3")
    assert b"bloom-in" in other.payload  # the event as sent, for a replay under the right tenant


def test_write_keys_name_the_tenant_and_unknown_keys_are_refused():
    assign = TenantAssigner(write_keys={"wk_acme": "acme-in", "wk_bloom": "bloom-in"}).assign
    assert assign(raw(messageId="m1", writeKey="wk_bloom")).data["tenantId"] == "bloom-in"
    unknown = assign(raw(messageId="m2", writeKey="wk_guess"))
    assert isinstance(unknown, FailedEvent) and unknown.reason is Reason.UNKNOWN_TENANT
    assert "wk_guess" not in unknown.message  # keys are credentials: never echoed
    crossed = assign(raw(messageId="m3", writeKey="wk_acme", tenantId="bloom-in"))
    assert isinstance(crossed, FailedEvent) and crossed.reason is Reason.TENANT_MISMATCH
    assert assign(raw(messageId="m4", tenantId="acme-in")).data["tenantId"] == "acme-in"  # no key: as sent


@pytest.mark.parametrize("bad", ["Acme", "x/../y", ""])
def test_configured_tenants_must_be_valid(bad):
    with pytest.raises(ValueError, match="not a valid tenant id"):
        TenantAssigner(bad)
    with pytest.raises(ValueError, match="not a valid tenant id"):
        TenantAssigner(write_keys={"k": bad})
