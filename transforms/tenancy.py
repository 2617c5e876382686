"""Which tenant an event belongs to when the sender did not say: backfills and write keys.

A brand's raw Segment export carries no ``tenantId``; the operator says whose it is (``--tenant``), or
events carry Segment's ``writeKey`` and a write-key map names the tenant. An event that names a
tenant of its own that differs is never re-tenanted: it becomes a dead letter ``tenant_mismatch``.
"""

from __future__ import annotations

from collections.abc import Mapping

from schemas.failures import FailedEvent, Reason, Stage
from schemas.identifiers import check_tenant_id
from transforms.decode import RawEvent

__all__ = ["TenantAssigner"]


class TenantAssigner:
    """Fills or checks ``tenantId`` from a default tenant and/or a write-key map (both checked up front)."""

    __slots__ = ("default", "write_keys")

    def __init__(self, default_tenant: str | None = None, write_keys: Mapping[str, str] | None = None):
        self.default = check_tenant_id(default_tenant, "--tenant") if default_tenant is not None else None
        self.write_keys = {
            key: check_tenant_id(tenant, f"write key {key[:4]}…'s tenant") for key, tenant in (write_keys or {}).items()
        }

    def __bool__(self) -> bool:
        return self.default is not None or bool(self.write_keys)

    def assign(self, raw: RawEvent) -> RawEvent | FailedEvent:
        data = raw.data
        if not isinstance(data, dict):
            return raw  # validation names the problem
        expected = self.default
        key = data.get("writeKey", data.get("write_key"))
        if self.write_keys and key is not None:
            expected = self.write_keys.get(key) if isinstance(key, str) else None
            if expected is None:
                return self._fail(raw, Reason.UNKNOWN_TENANT, "writeKey", "writeKey is not one of the configured keys")
        if expected is None:
            return raw
        own = data.get("tenantId", data.get("tenant_id"))
        if own is None:
            return RawEvent(raw.payload, {**data, "tenantId": expected}, raw.source_ref)
        if own != expected:
            return self._fail(
                raw,
                Reason.TENANT_MISMATCH,
                "tenantId",
                f"tenantId {own!r:.80} differs from the tenant this input belongs to ({expected})",
            )
        return raw

    @staticmethod
    def _fail(raw: RawEvent, reason: Reason, field_path: str, message: str) -> FailedEvent:
        data = raw.data if isinstance(raw.data, dict) else {}
        message_id = data.get("messageId", data.get("message_id"))
        return FailedEvent(
            payload=raw.payload,
            stage=Stage.VALIDATE,
            reason=reason,
            field_path=field_path,
            message=message,
            tenant_id=data.get("tenantId") if isinstance(data.get("tenantId"), str) else None,
            message_id=message_id if isinstance(message_id, str) and len(message_id) <= 256 else None,
            source_ref=raw.source_ref,
        )
