"""PII policy: SHA-256(salt + value) hex for configured paths, drops, no mutation of the input; salts
are secret and per tenant (configured, or HMAC-SHA256 of a master secret), never empty."""

from __future__ import annotations

import copy
import hashlib
import hmac

import pytest
from hypothesis import given
from hypothesis import strategies as st

from transforms.pii import (
    CompiledPolicy,
    PiiPolicy,
    apply_policy,
    compile_policy,
    contact_form,
    hash_identifier,
    hash_value,
    tenant_salt,
)

T1 = "t1-salt-0123456789"
X = "x-salt-0123456789ab"
SECRET = "0f" * 32


def sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@pytest.mark.parametrize(
    ("salt", "value", "text"),
    [
        ("s3cret", "priya@example.in", "s3cretpriya@example.in"),
        ("", "+919812345678", "+919812345678"),
        ("acme", 9812345678, "acme9812345678"),
        ("acme", True, "acmetrue"),
        ("नमक", "राहुल@उदाहरण.भारत", "नमकराहुल@उदाहरण.भारत"),
    ],
)
def test_hash_value(salt, value, text):
    assert hash_value(salt, value) == sha(text)


def test_default_policy_paths():
    policy = PiiPolicy()
    assert policy.salt is None  # derived per tenant from the master secret
    # what must be hashed by default: contact details, names, the address, the client IP
    required = {"traits.email", "traits.phone", "traits.name", "traits.first_name", "traits.last_name"}
    required |= {"traits.firstName", "traits.lastName", "traits.address", "properties.email", "properties.phone"}
    assert required | {"context.ip"} <= set(policy.hash_fields)
    assert len(policy.hash_fields) == len(set(policy.hash_fields))
    assert policy.drop_fields == []
    compiled = CompiledPolicy(policy, T1)
    assert compiled.ip_action == "hash"
    assert compiled.ua_action is None


def test_hash_and_drop_nested_paths_without_mutating_the_input():
    policy = CompiledPolicy(
        PiiPolicy(
            hash_fields=["properties.email", "properties.shipping.phone", "properties.products.seller_email"],
            drop_fields=["properties.shipping.address_line1", "properties.card_last4"],
        ),
        T1,
    )
    props = {
        "email": "a@b.in",
        "shipping": {"phone": "+919800000001", "address_line1": "12 MG Road", "city": "Pune"},
        "products": [{"sku": "K1", "seller_email": "s@x.in"}, {"sku": "K2"}, "not-a-dict"],
        "card_last4": "4242",
        "total": 10,
    }
    original = copy.deepcopy(props)
    out = apply_policy(props, "properties", policy)
    assert props == original  # input untouched
    assert out == {
        "email": sha(T1 + "a@b.in"),
        "shipping": {"phone": sha(T1 + "+919800000001"), "city": "Pune"},
        "products": [{"sku": "K1", "seller_email": sha(T1 + "s@x.in")}, {"sku": "K2"}, "not-a-dict"],
        "total": 10,
    }


def test_absent_paths_return_the_same_object():
    policy = CompiledPolicy(PiiPolicy(), T1)
    props = {"sku": "K1", "price": 10}
    assert apply_policy(props, "properties", policy) is props


def test_null_values_stay_null_and_roots_are_separate():
    policy = CompiledPolicy(PiiPolicy(salt=X), X)
    traits = {"email": None, "phone": "+919800000002", "name": "Asha", "plan": "gold"}
    out = apply_policy(traits, "traits", policy)
    assert out == {"email": None, "phone": sha(X + "+919800000002"), "name": sha(X + "Asha"), "plan": "gold"}
    # a traits path never touches properties
    only_traits = CompiledPolicy(PiiPolicy(hash_fields=["traits.email"]), X)
    assert apply_policy({"email": "a@b.in"}, "properties", only_traits) == {"email": "a@b.in"}


def test_drop_wins_over_hash():
    policy = CompiledPolicy(
        PiiPolicy(hash_fields=["properties.email", "context.ip"], drop_fields=["properties.email", "context.ip"]), T1
    )
    assert apply_policy({"email": "a@b.in", "k": 1}, "properties", policy) == {"k": 1}
    assert policy.ip_action == "drop"


def test_user_agent_actions():
    assert CompiledPolicy(PiiPolicy(hash_fields=["context.userAgent"]), T1).ua_action == "hash"
    assert CompiledPolicy(PiiPolicy(drop_fields=["context.user_agent"]), T1).ua_action == "drop"


@given(
    salt=st.text(min_size=16, max_size=40).filter(lambda s: len(s.strip()) >= 16),
    props=st.dictionaries(st.sampled_from(["email", "phone", "name", "sku"]), st.text(max_size=30), max_size=4),
)
def test_hashing_is_deterministic_and_only_touches_configured_keys(salt, props):
    policy = CompiledPolicy(PiiPolicy(salt=salt), salt)
    out = apply_policy(props, "properties", policy)
    assert out == apply_policy(dict(props), "properties", policy)
    assert set(out) == set(props)
    for key, value in props.items():
        if key in ("email", "phone"):
            assert out[key] == sha(salt + value)
        else:
            assert out[key] == value


def test_address_is_hashed_whole_by_default():
    policy = CompiledPolicy(PiiPolicy(), T1)
    address = {"street": "12 MG Road", "city": "Pune", "postalCode": "411001"}
    out = apply_policy({"address": address, "firstName": "Asha", "lastName": "Rao"}, "traits", policy)
    # a dict is hashed through its compact, key-sorted JSON text
    assert out == {
        "address": sha(T1 + '{"city":"Pune","postalCode":"411001","street":"12 MG Road"}'),
        "firstName": sha(T1 + "Asha"),
        "lastName": sha(T1 + "Rao"),
    }


@pytest.mark.parametrize("salt", ["", "   ", "short", "fifteen-chars!!"])
def test_empty_or_short_configured_salt_is_rejected(salt):
    with pytest.raises(ValueError, match="salt"):
        PiiPolicy(salt=salt)
    with pytest.raises(ValueError, match="reversed by hashing guesses"):
        CompiledPolicy(PiiPolicy(), salt)
    with pytest.raises(ValueError, match="master secret"):
        compile_policy(PiiPolicy(), "acme-in", salt)


def test_policy_without_salt_needs_a_master_secret():
    with pytest.raises(ValueError, match="no PII salt for tenant 'acme-in'"):
        compile_policy(PiiPolicy(), "acme-in", None)


def test_tenant_salt_is_hmac_of_the_master_secret():
    expected = hmac.new(SECRET.encode(), b"acme-in", hashlib.sha256).hexdigest()
    assert tenant_salt(SECRET, "acme-in") == expected
    assert compile_policy(PiiPolicy(), "acme-in", SECRET).salt == expected
    # a configured salt wins over the derived one
    assert compile_policy(PiiPolicy(salt=X), "acme-in", SECRET).salt == X


def test_different_tenants_get_different_hashes_of_the_same_value():
    acme = compile_policy(PiiPolicy(), "acme-in", SECRET)
    bloom = compile_policy(PiiPolicy(), "bloom-in", SECRET)
    a = apply_policy({"email": "priya@example.in"}, "traits", acme)["email"]
    b = apply_policy({"email": "priya@example.in"}, "traits", bloom)["email"]
    assert a != b
    assert a == sha(hmac.new(SECRET.encode(), b"acme-in", hashlib.sha256).hexdigest() + "priya@example.in")
    assert sha("priya@example.in") not in (a, b)


@pytest.mark.parametrize(
    ("value", "contact"),
    [
        ("Priya@Example.IN", "priya@example.in"),
        ("  asha.rao+shop@gmail.com ", "asha.rao+shop@gmail.com"),
        ("+91 98765 43210", "+919876543210"),
        ("98765-43210", "+919876543210"),
        ("09876543210", "+919876543210"),
        ("+14155552671", "+14155552671"),
        ("user_123", None),
        ("c0a8f3e2-6f1d-4b7a-9e3c-2b1d4f5a6e7d", None),
        ("42", None),
        ("7012345678901", None),  # a 13-digit Shopify customer id is no phone number
        ("", None),
    ],
)
def test_contact_form_of_identifiers(value, contact):
    assert contact_form(value) == contact


def test_identifier_hashed_like_the_email_trait():
    """An email sent as userId hashes to what traits.email hashes to, so stitching can still join them."""
    policy = CompiledPolicy(PiiPolicy(), T1)
    trait = apply_policy({"email": "priya@example.in"}, "traits", policy)["email"]
    assert hash_identifier(T1, " Priya@Example.in") == trait == sha(T1 + "priya@example.in")
    assert hash_identifier(T1, "+91 98765 43210") == sha(T1 + "+919876543210")
    assert hash_identifier(T1, "user_123") == "user_123"
    assert hash_identifier(T1, None) is None
