"""Tenant ids and names that may become paths: the contract accepts only values safe in every store."""

from __future__ import annotations

import os
import string

import pytest
from hypothesis import given
from hypothesis import strategies as st

from schemas.identifiers import check_name, check_partition_value, check_tenant_id, is_tenant_id

HOSTILE_TENANTS = [
    "x/../tenant_id=acme-in",
    "x/../../../../ESCAPED",
    "acme-in/evil",
    "acme-in\u001fevil",
    "../../etc",
    "x=y",
    "a\nb",
    "acme-in\n",
    "a" * 256,
    "\U0001f600" * 100,
    "acme\x00in",
    "",
    ".",
    "..",
    "-acme",
    "acme-",
    "Acme-IN",
    "acme in",
    "acme_in",
    "a" * 64,
]


@pytest.mark.parametrize("tenant", HOSTILE_TENANTS)
def test_hostile_tenant_ids_are_refused(tenant):
    assert not is_tenant_id(tenant)
    with pytest.raises(ValueError, match="not a valid tenant id"):
        check_tenant_id(tenant)


@pytest.mark.parametrize("tenant", ["acme-in", "bloom-in", "t", "t1", "a" * 63, "0-brand-9"])
def test_ordinary_tenant_ids_are_accepted(tenant):
    assert check_tenant_id(tenant) == tenant


@given(st.text(min_size=0, max_size=80))
def test_an_accepted_tenant_id_is_one_plain_path_segment(text):
    if is_tenant_id(text):
        assert os.path.basename(text) == text and text not in (".", "..")
        assert set(text) <= set(string.ascii_lowercase + string.digits + "-")
        assert os.path.normpath(f"/lake/tenant_id={text}") == f"/lake/tenant_id={text}"


@pytest.mark.parametrize("name", ["..", ".hidden", "a/b", "a\\b", "", "x" * 129, "a\x00b", "naïve"])
def test_unsafe_names_are_refused(name):
    with pytest.raises(ValueError, match="not a safe name"):
        check_name(name)


def test_partition_values_are_checked_by_what_the_key_holds():
    assert check_partition_value("event_date", "2026-11-01") == "2026-11-01"
    with pytest.raises(ValueError):
        check_partition_value("event_date", "evil/../x")
    with pytest.raises(ValueError):
        check_partition_value("event_date", "2026-13-45")
    with pytest.raises(ValueError):
        check_partition_value("tenant_id", "x/../y")
    with pytest.raises(ValueError):
        check_partition_value("a/b", "x")
