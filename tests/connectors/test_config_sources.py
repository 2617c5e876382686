"""Webhook secrets and write keys from a file, an environment variable or Secrets Manager (moto)."""

from __future__ import annotations

import json

import pytest

from connectors.config_sources import ConfigSourceError, load_webhook_config, load_write_keys


def test_flat_and_full_webhook_files(tmp_path, monkeypatch):
    flat = tmp_path / "flat.json"
    flat.write_text(json.dumps({"shopify:acme-in": "shpss_0123456789"}))
    assert load_webhook_config(str(flat)).secrets == {"shopify:acme-in": "shpss_0123456789"}
    full = {"secrets": {"razorpay": "rzp_secret_123"}, "bindings": {"razorpay:acme-in": ["acc_1"]}}
    monkeypatch.setenv("LIVORA_WEBHOOK_SECRETS", json.dumps({**full, "replay_window_seconds": None}))
    config = load_webhook_config(None)
    assert config.bindings == {"razorpay:acme-in": ["acc_1"]} and config.replay_window_seconds is None
    monkeypatch.delenv("LIVORA_WEBHOOK_SECRETS")
    assert load_webhook_config(None).secrets == {}


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ("{not json", "not JSON"),
        ("[]", "expected a JSON object"),
        (json.dumps({"shopify:acme-in": "short"}), "at least 8"),
        (json.dumps({"shopify:Acme/..": "long enough secret"}), "not a valid tenant id"),
        (json.dumps({"secrets": {}, "replay_window_seconds": -1}), "replay_window_seconds"),
    ],
)
def test_bad_sources_name_the_source_and_the_entry_not_the_secret(tmp_path, body, needle):
    path = tmp_path / "s.json"
    path.write_text(body)
    with pytest.raises(ConfigSourceError, match=needle) as caught:
        load_webhook_config(str(path))
    assert str(path) in str(caught.value) and "long enough secret" not in str(caught.value)


def test_write_keys(tmp_path, monkeypatch):
    monkeypatch.setenv("KEYS", json.dumps({"wk_1": "acme-in"}))
    assert load_write_keys("env:KEYS") == {"wk_1": "acme-in"}
    assert load_write_keys(None) == {}
    monkeypatch.setenv("KEYS", json.dumps({"wk_1": "../etc"}))
    with pytest.raises(ConfigSourceError, match="not a valid tenant id"):
        load_write_keys("env:KEYS")
    with pytest.raises(ConfigSourceError, match="not set"):
        load_write_keys("env:NOT_SET_ANYWHERE")


@pytest.mark.integration
def test_secrets_manager(aws):
    aws.client("secretsmanager").create_secret(
        Name="livora/webhooks", SecretString=json.dumps({"shopify:acme-in": "shpss_from_aws_1"})
    )
    assert load_webhook_config("secretsmanager:livora/webhooks", aws).secrets == {"shopify:acme-in": "shpss_from_aws_1"}
    with pytest.raises(ConfigSourceError, match="no such secret"):
        load_webhook_config("secretsmanager:livora/missing", aws)
