"""The lake's PII master secret: created at random exactly once, then read by every run.

PII is hashed with a per-tenant salt derived from one master secret (:func:`transforms.pii.tenant_salt`).
With no salt configured, the pipeline driver calls :func:`pii_secret` before it builds the graph;
the secret then travels to the workers inside the pipeline's config (no worker reads the store).

Where the secret is kept:

- local lake: ``LAKE/_secrets/pii_salt`` (64 hex characters), directory mode 0700, file mode 0600:
  readable by the lake's owner only. The file is written in full under a temporary name, then
  hard-linked to its final name: ``link`` fails when the name exists, so of two racing creators
  exactly one wins and the other reads the winner's secret; a reader never sees a half-written file
  (an ``O_CREAT|O_EXCL`` file would exist, empty, before its bytes were written).
- ``s3://bucket/prefix`` lake: AWS Secrets Manager, secret ``livora/pii-salt/<bucket>/<prefix>``
  (:func:`secret_name`), created with ``CreateSecret`` (which fails when the name exists; the loser
  reads it) and read with ``GetSecretValue``: who may read it is the IAM policy on that secret.

Losing the secret changes every hash made afterwards (the same email no longer joins its earlier
rows): back it up with the lake's other keys. Changing it on purpose is the same as losing it.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets as random_source
import tempfile

from botocore.exceptions import ClientError

from connectors.aws import AwsSettings

__all__ = ["SECRET_DIR", "SECRET_FILE", "local_secret", "pii_secret", "s3_secret", "secret_name"]

SECRET_DIR = "_secrets"
SECRET_FILE = "pii_salt"
SECRET_BYTES = 32
_HEX = re.compile(r"[0-9a-f]{64}")


class SecretStoreError(RuntimeError):
    """The stored secret is unreadable or malformed: never replaced silently (that would change every hash)."""


def _new_secret() -> str:
    return random_source.token_hex(SECRET_BYTES)


def _checked(text: str, where: str) -> str:
    secret = text.strip()
    if not _HEX.fullmatch(secret):
        raise SecretStoreError(
            f"{where} does not hold a PII secret (64 hex characters); restore it from its backup, "
            "or delete it knowing that every later hash will differ from earlier ones"
        )
    return secret


def local_secret(lake: str) -> str:
    """The secret of a local lake, created (0600, under a 0700 directory) when it does not exist yet."""
    directory = os.path.join(lake, SECRET_DIR)
    os.makedirs(directory, mode=0o700, exist_ok=True)
    if os.stat(directory).st_mode & 0o077:  # made by an older version or another umask: tighten
        os.chmod(directory, 0o700)
    path = os.path.join(directory, SECRET_FILE)
    if not os.path.exists(path):
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{SECRET_FILE}.")  # mode 0600
        try:
            with os.fdopen(fd, "w") as handle:
                handle.write(_new_secret() + "\n")
                handle.flush()
                os.fsync(handle.fileno())
            with contextlib.suppress(FileExistsError):  # another creator won the race: read theirs
                os.link(tmp, path)  # atomic, and fails when the name exists
        finally:
            os.unlink(tmp)
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)  # the new name survives a crash
        finally:
            os.close(dir_fd)
    with open(path, encoding="ascii") as handle:
        return _checked(handle.read(), path)


def secret_name(lake: str) -> str:
    """The Secrets Manager name of an ``s3://`` lake's secret: ``livora/pii-salt/<bucket>/<prefix>``."""
    location = lake.removeprefix("s3://").strip("/")
    return "livora/pii-salt/" + re.sub(r"[^A-Za-z0-9/_+=.@-]", "-", location)


def s3_secret(lake: str, aws: AwsSettings) -> str:
    """The secret of an ``s3://`` lake in AWS Secrets Manager, created when it does not exist yet."""
    client = aws.client("secretsmanager")
    name = secret_name(lake)
    try:
        return _checked(client.get_secret_value(SecretId=name)["SecretString"], f"secret {name}")
    except ClientError as err:
        if err.response["Error"]["Code"] != "ResourceNotFoundException":
            raise
    try:
        client.create_secret(
            Name=name,
            SecretString=_new_secret(),
            Description="Livora PII master secret of this lake: losing it changes all later PII hashes.",
        )
    except ClientError as err:
        if err.response["Error"]["Code"] != "ResourceExistsException":  # another driver won the race
            raise
    return _checked(client.get_secret_value(SecretId=name)["SecretString"], f"secret {name}")


def pii_secret(lake: str, aws: AwsSettings | None = None) -> str:
    """The PII master secret of ``lake`` (local directory or ``s3://``), created once on first use.

    Args:
        lake: the lake root the pipeline writes.
        aws: how to reach Secrets Manager (``s3://`` lakes only).
    """
    if lake.startswith("s3://"):
        return s3_secret(lake, aws or AwsSettings())
    if "://" in lake:
        raise ValueError(f"no secret store for lake {lake!r}: give --pii-salt (or $LIVORA_PII_SALT)")
    return local_secret(lake)
