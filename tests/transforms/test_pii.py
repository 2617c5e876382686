"""PII policy: SHA-256(salt + value) hex for configured paths, drops, no mutation of the input."""

from __future__ import annotations

import copy
import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from transforms.pii import CompiledPolicy, PiiPolicy, apply_policy, hash_value


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
    assert policy.hash_fields == ["traits.email", "traits.phone", "properties.email", "properties.phone", "context.ip"]
    assert policy.drop_fields == []
    compiled = CompiledPolicy(policy)
    assert compiled.ip_action == "hash"
    assert compiled.ua_action is None


def test_hash_and_drop_nested_paths_without_mutating_the_input():
    policy = CompiledPolicy(
        PiiPolicy(
            salt="t1",
            hash_fields=["properties.email", "properties.shipping.phone", "properties.products.seller_email"],
            drop_fields=["properties.shipping.address_line1", "properties.card_last4"],
        )
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
        "email": sha("t1a@b.in"),
        "shipping": {"phone": sha("t1+919800000001"), "city": "Pune"},
        "products": [{"sku": "K1", "seller_email": sha("t1s@x.in")}, {"sku": "K2"}, "not-a-dict"],
        "total": 10,
    }


def test_absent_paths_return_the_same_object():
    policy = CompiledPolicy(PiiPolicy())
    props = {"sku": "K1", "price": 10}
    assert apply_policy(props, "properties", policy) is props


def test_null_values_stay_null_and_roots_are_separate():
    policy = CompiledPolicy(PiiPolicy(salt="x"))
    traits = {"email": None, "phone": "+919800000002", "name": "Asha"}
    out = apply_policy(traits, "traits", policy)
    assert out == {"email": None, "phone": sha("x+919800000002"), "name": "Asha"}
    # a traits path never touches properties
    only_traits = CompiledPolicy(PiiPolicy(hash_fields=["traits.email"]))
    assert apply_policy({"email": "a@b.in"}, "properties", only_traits) == {"email": "a@b.in"}


def test_drop_wins_over_hash():
    policy = CompiledPolicy(
        PiiPolicy(hash_fields=["properties.email", "context.ip"], drop_fields=["properties.email", "context.ip"])
    )
    assert apply_policy({"email": "a@b.in", "k": 1}, "properties", policy) == {"k": 1}
    assert policy.ip_action == "drop"


def test_user_agent_actions():
    assert CompiledPolicy(PiiPolicy(hash_fields=["context.userAgent"])).ua_action == "hash"
    assert CompiledPolicy(PiiPolicy(drop_fields=["context.user_agent"])).ua_action == "drop"


@given(
    salt=st.text(max_size=20),
    props=st.dictionaries(st.sampled_from(["email", "phone", "name", "sku"]), st.text(max_size=30), max_size=4),
)
def test_hashing_is_deterministic_and_only_touches_configured_keys(salt, props):
    policy = CompiledPolicy(PiiPolicy(salt=salt))
    out = apply_policy(props, "properties", policy)
    assert out == apply_policy(dict(props), "properties", policy)
    assert set(out) == set(props)
    for key, value in props.items():
        if key in ("email", "phone"):
            assert out[key] == sha(salt + value)
        else:
            assert out[key] == value
