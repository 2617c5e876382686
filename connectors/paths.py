"""Paths built from data, and the one atomic writer every file output goes through.

A value from outside (a tenant id, a date, an output or funnel name) may name a directory or a file only
after :mod:`schemas.identifiers` has accepted it; and whatever a writer is about to write must resolve
to a place under the root it was given (the lake, a table, an output folder). Both checks are made here,
at the last moment before the bytes land, so that a value that slipped past validation upstream stops a
run with a clear error instead of writing outside the lake or over another tenant's files.

With an :class:`connectors.aws.S3Encryption` (``--kms-key-id``), an ``s3://`` write is a boto3 PUT carrying
the SSE-KMS headers (Beam's S3 filesystem cannot send them), and a move (:func:`move_atomically`) a boto3 copy
carrying them. Writers inside a pipeline pass it explicitly
(it travels with their DoFn); the driver's own writes (run records, manifests, results) take the default
set by :func:`use_encryption` for the run.
"""

from __future__ import annotations

import contextvars
import os
import posixpath
import tempfile
import time
from collections.abc import Mapping

from apache_beam.io.filesystems import FileSystems

from connectors.aws import S3Encryption
from schemas.identifiers import check_name, check_partition_value

__all__ = [
    "UnsafePathError",
    "ensure_under",
    "join_under",
    "move_atomically",
    "partition_path",
    "remove_stale_temp_files",
    "use_encryption",
    "write_bytes_atomically",
]

TEMP_PREFIX, TEMP_SUFFIX = ".tmp-", ".part"


_DRIVER_ENCRYPTION: contextvars.ContextVar[S3Encryption | None] = contextvars.ContextVar(
    "livora_driver_s3_encryption", default=None
)


def use_encryption(encryption: S3Encryption | None) -> None:
    """The encryption of this driver's own S3 writes from now on (None: none); set once per run.

    A context variable, not a global: threads the runner starts (workers) do not see it, so a writer in a
    DoFn encrypts only when its own config carries the key, as it must on a remote worker.
    """
    _DRIVER_ENCRYPTION.set(encryption)


class UnsafePathError(ValueError):
    """A path built from data would leave its root or holds a value the contract does not allow."""


def _is_url(path: str) -> bool:
    return "://" in path


def _normal(path: str) -> str:
    if _is_url(path):
        scheme, _, rest = path.partition("://")
        return f"{scheme}://{posixpath.normpath('/' + rest).lstrip('/')}"
    return os.path.realpath(path)


def ensure_under(root: str, path: str) -> str:
    """``path`` when it resolves to ``root`` or below it (symlinks followed locally), else UnsafePathError."""
    if not root:
        raise UnsafePathError("no root to check the path against")
    if _is_url(root) != _is_url(path) or (_is_url(path) and path.split("://")[0] != root.split("://")[0]):
        raise UnsafePathError(f"{path!r} is not under {root!r}")
    base, target = _normal(root).rstrip("/"), _normal(path)
    sep = "/" if _is_url(path) else os.sep
    if target != base and not target.startswith(base + sep):
        raise UnsafePathError(f"{path!r} resolves outside its root {root!r}")
    return path


def join_under(root: str, *names: str) -> str:
    """``root/name/...`` with each name checked as a safe file name and the result checked under ``root``."""
    for name in names:
        try:
            check_name(name)
        except ValueError as err:
            raise UnsafePathError(str(err)) from None
    return ensure_under(root, "/".join([root.rstrip("/"), *names]))


def partition_path(root: str, partition: Mapping[str, object]) -> str:
    """``root/k1=v1/k2=v2`` with every key and value checked by what it holds (tenant id, date, name)."""
    parts = []
    for key, value in partition.items():
        try:
            parts.append(f"{key}={check_partition_value(key, value)}")
        except ValueError as err:
            raise UnsafePathError(str(err)) from None
    return ensure_under(root, "/".join([root.rstrip("/"), *parts]))


def _s3_object(path: str) -> tuple[str, str]:
    """(bucket, key) of an ``s3://`` path, normalised; UnsafePathError when it names no object."""
    bucket, _, key = _normal(path).removeprefix("s3://").partition("/")
    if not bucket or not key:
        raise UnsafePathError(f"{path!r} names no S3 object")
    return bucket, key


def write_bytes_atomically(path: str, data: bytes, root: str, encryption: S3Encryption | None = None) -> str:
    """Write ``data`` to ``path`` whole or not at all; ``path`` must stay under ``root``.

    Locally: a temp file in the target directory, fsync'd, then renamed over the target. On S3: one
    object PUT, which is visible whole or not at all; with ``encryption`` (default: the driver's, see
    :func:`use_encryption`) a boto3 PUT with the SSE-KMS headers.
    """
    ensure_under(root, path)
    encryption = encryption or _DRIVER_ENCRYPTION.get()
    if path.startswith("s3://") and encryption is not None:
        bucket, key = _s3_object(path)
        encryption.s3_client().put_object(Bucket=bucket, Key=key, Body=data, **encryption.put_object_args())
        return path
    if _is_url(path):
        with FileSystems.create(path) as handle:
            handle.write(data)
        return path
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=TEMP_PREFIX, suffix=TEMP_SUFFIX)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; outputs are for other readers too
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def move_atomically(source: str, target: str, root: str, encryption: S3Encryption | None = None) -> str:
    """Move ``source`` to ``target``, both under ``root``; the target appears whole or not at all.

    Locally and on S3 without a key: ``FileSystems.rename`` (a rename; on S3 Beam's copy + delete). On S3 with
    ``encryption`` (default: the driver's): a boto3 ``copy_object`` with the SSE-KMS headers, then the source is
    deleted. A copy without them (Beam's) takes the bucket's default encryption, whatever the source had, so a
    moved object would lose the run's key. One ``copy_object`` copies up to 5 GB, far above a lake file.
    """
    ensure_under(root, source)
    ensure_under(root, target)
    encryption = encryption or _DRIVER_ENCRYPTION.get()
    if target.startswith("s3://") and encryption is not None:
        (source_bucket, source_key), (bucket, key) = _s3_object(source), _s3_object(target)
        client = encryption.s3_client()
        client.copy_object(
            Bucket=bucket,
            Key=key,
            CopySource={"Bucket": source_bucket, "Key": source_key},
            **encryption.put_object_args(),
        )
        client.delete_object(Bucket=source_bucket, Key=source_key)  # only once the copy is whole
        return target
    if not _is_url(target):
        os.makedirs(os.path.dirname(os.path.abspath(target)), exist_ok=True)
    FileSystems.rename([source], [target])
    return target


def remove_stale_temp_files(root: str, older_than_seconds: float = 3600.0) -> list[str]:
    """Delete temp files of writers killed mid-write (``.tmp-*.part`` under ``root``, local only).

    Only files older than ``older_than_seconds`` go: a writer still running keeps its file. Object
    stores have no temp files (a PUT is atomic), so an ``s3://`` root has nothing to clean.
    """
    if _is_url(root) or not os.path.isdir(root):
        return []
    cutoff, removed = time.time() - older_than_seconds, []
    for directory, _, files in os.walk(root):
        for name in files:
            if name.startswith(TEMP_PREFIX) and name.endswith(TEMP_SUFFIX):
                path = os.path.join(directory, name)
                try:
                    if os.stat(path).st_mtime < cutoff:
                        os.unlink(path)
                        removed.append(path)
                except FileNotFoundError:
                    pass
    return removed
