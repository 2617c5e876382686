"""Webhook secrets and write-key maps: read from a file, an environment variable or AWS Secrets Manager.

One value names where the configuration is:

- ``PATH`` (local or ``s3://``): a JSON file;
- ``env:NAME``: the JSON text in environment variable ``NAME``;
- ``secretsmanager:NAME``: the JSON text of AWS Secrets Manager secret ``NAME`` (the moto server serves it
  locally).

Webhook secrets are ``{"<provider>:<tenant>": "<secret>", …}`` (``"<provider>"`` alone for an app-wide
secret), or the full form ``{"secrets": {…}, "bindings": {"shopify:<tenant>": ["<shop>.myshopify.com",
"<shop id>"]}, "trust_shop_header": false, "replay_window_seconds": 604800}``. Write keys are ``{"<write key>": "<tenant_id>", …}``. Errors name the
source and the entry, never a secret's value.
"""

from __future__ import annotations

import json
import os
from typing import Any

from apache_beam.io.filesystems import FileSystems
from pydantic import ValidationError

from connectors.aws import AwsSettings
from schemas.identifiers import check_tenant_id
from transforms.webhooks import WebhookConfig

__all__ = ["ConfigSourceError", "load_webhook_config", "load_write_keys", "read_json_source"]

WEBHOOK_SECRETS_ENV = "LIVORA_WEBHOOK_SECRETS"


class ConfigSourceError(ValueError):
    """A configuration source is missing or malformed (the message names it and the entry)."""


def read_json_source(spec: str, aws: AwsSettings | None = None) -> Any:
    """The JSON value a ``PATH`` / ``env:NAME`` / ``secretsmanager:NAME`` spec points at."""
    if spec.startswith("env:"):
        text = os.environ.get(spec[4:])
        if text is None:
            raise ConfigSourceError(f"{spec}: environment variable {spec[4:]} is not set")
    elif spec.startswith("secretsmanager:"):
        client = (aws or AwsSettings()).client("secretsmanager")
        try:
            text = client.get_secret_value(SecretId=spec.split(":", 1)[1])["SecretString"]
        except client.exceptions.ResourceNotFoundException:
            raise ConfigSourceError(f"{spec}: no such secret") from None
    else:
        if not FileSystems.exists(spec):
            raise ConfigSourceError(f"{spec}: no such file")
        with FileSystems.open(spec) as handle:
            text = handle.read().decode("utf-8")
    try:
        return json.loads(text)
    except ValueError as err:
        raise ConfigSourceError(f"{spec}: not JSON ({err.msg} at line {err.lineno})") from None


def load_webhook_config(spec: str | None, aws: AwsSettings | None = None) -> WebhookConfig:
    """Webhook secrets, bindings and replay window from ``spec`` (default ``$LIVORA_WEBHOOK_SECRETS``)."""
    if spec is None:
        if WEBHOOK_SECRETS_ENV not in os.environ:
            return WebhookConfig()
        spec = f"env:{WEBHOOK_SECRETS_ENV}"
    data = read_json_source(spec, aws)
    if not isinstance(data, dict):
        raise ConfigSourceError(f"{spec}: expected a JSON object")
    if "secrets" not in data:
        data = {"secrets": data}
    for key, secret in data.get("secrets", {}).items():
        provider, _, tenant = str(key).partition(":")
        if not provider or not isinstance(secret, str) or len(secret) < 8:
            raise ConfigSourceError(f"{spec}: entry {key!r} needs a secret string of at least 8 characters")
        if tenant:
            try:
                check_tenant_id(tenant, f"entry {key!r}")
            except ValueError as err:
                raise ConfigSourceError(f"{spec}: {err}") from None
    try:
        return WebhookConfig.model_validate(data)
    except ValidationError as err:
        first = err.errors(include_url=False, include_input=False)[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ConfigSourceError(f"{spec}: {where}: {first['msg']}") from None


def load_write_keys(spec: str | None, aws: AwsSettings | None = None) -> dict[str, str]:
    """``{write key: tenant}`` from ``spec`` (None: no map); every tenant checked against the contract."""
    if spec is None:
        return {}
    data = read_json_source(spec, aws)
    if not isinstance(data, dict):
        raise ConfigSourceError(f"{spec}: expected a JSON object of write key -> tenant id")
    for key, tenant in data.items():
        try:
            check_tenant_id(tenant, f"write key {str(key)[:4]}…'s tenant")
        except ValueError as err:
            raise ConfigSourceError(f"{spec}: {err}") from None
    return dict(data)
