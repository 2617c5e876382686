"""Run records: one JSON document per pipeline run, appended, never overwritten.

``ROOT/_runs/records/run_date=YYYY-MM-DD/<started>-<pipeline>-<run id>.json`` where ROOT is the run's
``--lake`` (or its ``--output`` for pipelines without a lake). A rerun adds a record. Read them with
DuckDB: ``select * from read_json('LAKE/_runs/records/*/*.json', union_by_name=true)``.

Secrets never reach a record: flags whose name says secret, salt, password, token or key have their
value replaced, and passwords inside URLs are removed.

Who ran it: the OS user always; when the run touches AWS (an ``s3://`` path, a Kinesis stream or DynamoDB
table, ``--aws-*`` flags, or AWS credentials in the environment) also ``caller``, the STS
GetCallerIdentity answer (Arn, Account, UserId) for the run's ``--aws-*`` settings, or ``caller_error``
when STS could not say (a short timeout: an unreachable STS never fails or stalls the run).

What it read, wrote and counted: a pipeline declares it with :func:`note_input` (a lake table or
files, fingerprinted from their listing: relative path, size, modification time; no content is read),
:func:`note_outputs` (paths written; the Parquet ones get their row count, from the footers, in
``counts["rows_out"]``) and :func:`note_counts`; its summary (the value ``main`` returns) joins
``counts`` too. All three do nothing outside a recorded run (``run()`` called from code).

A run ended by SIGTERM (a scheduler stopping it, ``kill``) still appends its record: :func:`on_sigterm_exit`
turns the signal into :class:`Terminated`, status ``terminated``, exit code 143.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import datetime as dt
import getpass
import hashlib
import json
import logging
import os
import re
import signal
import socket
import sys
import threading
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import pyarrow.parquet as pq
from apache_beam.io.filesystem import FileMetadata
from apache_beam.io.filesystems import FileSystems
from botocore.exceptions import BotoCoreError, ClientError

from connectors import paths
from connectors.aws import AwsSettings
from schemas import PIPELINE_VERSION

__all__ = [
    "RECORDS_DIR",
    "RunRecord",
    "Terminated",
    "caller_identity",
    "current",
    "listing_fingerprint",
    "note_counts",
    "note_input",
    "note_outputs",
    "on_sigterm_exit",
    "recording",
    "redact_argv",
    "touches_aws",
]

RECORDS_DIR = "_runs/records"
log = logging.getLogger("livora.runs")
_SECRET_FLAG = re.compile(r"secret|salt|password|passwd|token|(^|[-_])key($|[-_])|access[-_]?key", re.I)
_URL_PASSWORD = re.compile(r"(://[^/:@\s]+):[^@/\s]+@")
_AWS_FLAGS = ("--aws-profile", "--aws-endpoint-url", "--stream")
_AWS_ENV = (
    "AWS_ACCESS_KEY_ID",
    "AWS_PROFILE",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
)
STS_TIMEOUT_SECONDS = 3
_current: contextvars.ContextVar[RunRecord | None] = contextvars.ContextVar("livora_run_record", default=None)


def redact_argv(argv: Sequence[str]) -> list[str]:
    """The arguments with secret values replaced by ``***`` and URL passwords removed."""
    out: list[str] = []
    hide_next = False
    for arg in argv:
        if hide_next:
            out.append("***")
            hide_next = False
            continue
        if arg.startswith("--"):
            name, eq, _value = arg.partition("=")
            if _SECRET_FLAG.search(name.lstrip("-")) and not name.endswith(("-table", "-secrets", "-keys", "-key-id")):
                if eq:
                    out.append(f"{name}=***")
                else:
                    out.append(name)
                    hide_next = True
                continue
        out.append(_URL_PASSWORD.sub(r"\1:***@", arg))
    return out


@dataclasses.dataclass
class RunRecord:
    """What one run did; pipelines add to it through :func:`current`."""

    pipeline: str
    argv: list[str]
    run_id: str = dataclasses.field(default_factory=lambda: uuid.uuid4().hex[:12])
    started_at: dt.datetime = dataclasses.field(default_factory=lambda: dt.datetime.now(dt.UTC))
    inputs: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    outputs: list[str] = dataclasses.field(default_factory=list)
    counts: dict[str, Any] = dataclasses.field(default_factory=dict)
    error: str | None = None
    """One line saying why the run failed, when it ends with an exit code rather than an exception."""
    caller: dict[str, str] | None = None
    """STS GetCallerIdentity (Arn, Account, UserId) of a run that touches AWS."""
    caller_error: str | None = None
    """Why ``caller`` is missing on a run that touches AWS (STS unreachable, no credentials)."""
    profile: str | None = None
    """The run profile (dev, staging, prod) that set the run's defaults; None for pipelines without one."""
    result: Any = dataclasses.field(default=None, repr=False)
    """The run's summary (a dataclass, pydantic model or mapping): its numbers become ``counts``."""

    def add_input(self, path: str, **details: Any) -> None:
        self.inputs.append({"path": path, **details})

    def add_output(self, path: str) -> None:
        if path not in self.outputs:
            self.outputs.append(path)

    def add_counts(self, counts: Mapping[str, Any]) -> None:
        self.counts.update({k: v for k, v in counts.items() if isinstance(v, (int, float, str, bool, dict, list))})

    def document(self, status: str, exit_code: int, error: str | None) -> dict[str, Any]:
        ended = dt.datetime.now(dt.UTC)
        return {
            "run_id": self.run_id,
            "pipeline": self.pipeline,
            "profile": self.profile,
            "status": status,
            "exit_code": exit_code,
            "error": error,
            "started_at": self.started_at.isoformat(timespec="microseconds"),
            "ended_at": ended.isoformat(timespec="microseconds"),
            "seconds": round((ended - self.started_at).total_seconds(), 3),
            "argv": redact_argv(self.argv),
            "user": _user(),
            **({"caller": self.caller} if self.caller else {}),
            **({"caller_error": self.caller_error} if self.caller_error else {}),
            "host": socket.gethostname(),
            "pipeline_version": PIPELINE_VERSION,
            "python": sys.version.split()[0],
            "inputs": [{**i, "path": _URL_PASSWORD.sub(r"\1:***@", i["path"])} for i in self.inputs],
            "outputs": [_URL_PASSWORD.sub(r"\1:***@", path) for path in self.outputs],
            "counts": self.counts,
        }


def _user() -> str:
    with contextlib.suppress(Exception):
        return getpass.getuser()
    return str(os.getuid())


def _flag(argv: Sequence[str], flag: str) -> str | None:
    for i, arg in enumerate(argv):
        if arg == flag and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
    return None


def touches_aws(argv: Sequence[str], environ: Mapping[str, str] = os.environ) -> bool:
    """Whether a run with these arguments reaches AWS (or its emulation): an ``s3://`` value, a Kinesis
    stream, a DynamoDB table, an ``--aws-*`` flag, or AWS credentials in the environment."""
    for arg in argv:
        name = arg.split("=", 1)[0]
        if "s3://" in arg or name in _AWS_FLAGS or (name.startswith("--") and name.endswith("-table")):
            return True
    return any(environ.get(var) for var in _AWS_ENV)


def _settings(argv: Sequence[str]) -> AwsSettings:
    """The run's AWS, as :class:`pipelines.options.AwsOptions` builds it from the same flags."""
    return AwsSettings.from_profile(
        _flag(argv, "--aws-profile") or "local",
        _flag(argv, "--aws-endpoint-url"),
        _flag(argv, "--aws-region") or "ap-south-1",
    )


def caller_identity(
    settings: AwsSettings, timeout: float = STS_TIMEOUT_SECONDS
) -> tuple[dict[str, str] | None, str | None]:
    """``({Arn, Account, UserId}, None)`` from STS, or ``(None, one-line reason)``; one attempt, ``timeout`` s."""
    try:
        sts = settings.client(
            "sts", connect_timeout=timeout, read_timeout=timeout, retries={"total_max_attempts": 1, "mode": "standard"}
        )
        answer = sts.get_caller_identity()
    except (BotoCoreError, ClientError, ValueError) as err:
        return None, f"{type(err).__name__}: {' '.join(str(err).split())}"
    return {key: answer[key] for key in ("Arn", "Account", "UserId")}, None


def current() -> RunRecord | None:
    """The record of the run in progress in this driver (None outside :func:`recording`)."""
    return _current.get()


def _root(argv: Sequence[str]) -> str | None:
    """``--lake``, else ``--output`` when it is a folder, else the folder of the ``--output`` file (a report
    page, a training set: a name with a suffix)."""
    if (lake := _flag(argv, "--lake")) is not None:
        return lake
    output = _flag(argv, "--output")
    if output is None or os.path.isdir(output) or not os.path.splitext(output.rstrip("/").rsplit("/", 1)[-1])[1]:
        return output
    return output.rsplit("/", 1)[0] if "/" in output else "."


def _as_counts(result: Any) -> dict[str, Any]:
    if dataclasses.is_dataclass(result) and not isinstance(result, type):
        return dataclasses.asdict(result)
    if hasattr(result, "model_dump"):
        return result.model_dump(mode="json")
    if hasattr(result, "as_dict"):
        return result.as_dict()
    if isinstance(result, Mapping):
        return {k: v for k, v in result.items() if isinstance(v, (int, float, str, bool, dict, list))}
    return {}


# --- what a run read, wrote and counted -----------------------------------------------------

_GLOB = re.compile(r"[*?\[]")


def _listing(files: Iterable[Any]) -> list[FileMetadata]:
    """Size and modification time of ``files`` (paths, globs, or objects with a ``path``), hidden files
    (``.name``: a writer's temporary) left out. Exact paths are listed per directory: one LIST per
    partition on an object store, not one per file."""
    wanted = [str(getattr(f, "path", f)) for f in files]
    exact = {p for p in wanted if not _GLOB.search(p)}
    patterns = sorted({p for p in wanted if p not in exact} | {f"{p.rsplit('/', 1)[0]}/*" for p in exact})
    found: dict[str, FileMetadata] = {}
    for pattern, result in zip(patterns, FileSystems.match(patterns) if patterns else [], strict=True):
        for meta in result.metadata_list:
            if meta.path.rsplit("/", 1)[-1].startswith("."):
                continue
            if pattern in wanted or meta.path in exact:
                found[meta.path] = meta
    return [found[p] for p in sorted(found)]


def _relative(path: str, root: str) -> str:
    if _GLOB.search(root):  # a glob names files under the folder before its first wildcard
        root = root[: _GLOB.search(root).start()].rsplit("/", 1)[0]
    if "://" in root:
        return path.removeprefix(root.rstrip("/") + "/")
    return os.path.relpath(os.path.abspath(path), os.path.abspath(root))


def listing_fingerprint(root: str, listing: Iterable[FileMetadata]) -> str:
    """12 hex digits over the sorted (path under ``root``, size, modification time) of the files: the same
    files give the same fingerprint wherever the lake is mounted; a file added, removed or rewritten
    changes it. Cheap on a big lake: nothing but the listing is read."""
    digest = hashlib.sha1()
    for rel, size, mtime in sorted(
        (_relative(m.path, root), m.size_in_bytes, m.last_updated_in_seconds) for m in listing
    ):
        digest.update(f"{rel}\x1f{size}\x1f{mtime:.6f}\n".encode())
    return digest.hexdigest()[:12]


def note_input(root: str, files: Iterable[Any], fingerprint: str | None = None, **details: Any) -> None:
    """Declare that the run read ``files`` (paths, globs, or :class:`connectors.analytics_io.EventFile`)
    under ``root`` (a lake, a folder, a file): one ``inputs`` entry with the file count, bytes and
    :func:`listing_fingerprint`. A source that is not files (a Kinesis stream) passes no files and its own
    ``fingerprint``. ``details``: what else says which part was read."""
    record = current()
    if record is None:
        return
    if fingerprint is None:
        listing = _listing(files)
        fingerprint = listing_fingerprint(root, listing)
        details = {"files": len(listing), "size_bytes": sum(m.size_in_bytes for m in listing), **details}
    record.add_input(root, fingerprint=fingerprint, **details)


def _parquet_rows(path: str) -> int:
    rows = 0
    for meta in _listing([path]):
        with FileSystems.open(meta.path, compression_type="uncompressed") as handle:
            rows += pq.ParquetFile(handle).metadata.num_rows
    return rows


def note_outputs(*paths: str) -> None:
    """Declare what the run wrote (after writing it): each path joins ``outputs``; a Parquet file (or a glob
    of them) also gets its row count, read from the footers, in ``counts["rows_out"][path]``."""
    record = current()
    if record is None:
        return
    for path in paths:
        record.add_output(path)
        if path.endswith(".parquet"):
            record.counts.setdefault("rows_out", {})[path] = _parquet_rows(path)


def note_counts(counts: Mapping[str, Any] | Any) -> None:
    """Merge ``counts`` (a mapping, dataclass or pydantic model: the pipeline's own summary) into the run's
    ``counts``; a later call for the same name replaces it (a running total per pass)."""
    record = current()
    if record is not None:
        record.add_counts(counts if isinstance(counts, Mapping) else _as_counts(counts))


class Terminated(SystemExit):
    """SIGTERM, raised in the main thread: the run unwinds (``finally`` blocks, leases, its record) and
    the process exits ``128 + signal``, as a shell reports a killed command."""

    def __init__(self, signum: int):
        super().__init__(128 + signum)
        self.signal_name = signal.Signals(signum).name


@contextlib.contextmanager
def on_sigterm_exit() -> Iterator[None]:
    """While the block runs, SIGTERM raises :class:`Terminated` instead of killing the process unrecorded.
    Only the main thread can install a handler; elsewhere (a test's thread) the block runs as it is."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def _raise(signum: int, _frame: Any) -> None:
        raise Terminated(signum)

    previous = signal.signal(signal.SIGTERM, _raise)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def write_record(root: str, record: RunRecord, status: str, exit_code: int, error: str | None) -> str:
    document = record.document(status, exit_code, error)
    base = "/".join([root.rstrip("/"), RECORDS_DIR])
    day = paths.partition_path(base, {"run_date": record.started_at.date()})
    stamp = record.started_at.strftime("%Y%m%dT%H%M%S%f")
    target = paths.join_under(day, f"{stamp}-{record.pipeline}-{record.run_id}.json")
    return paths.write_bytes_atomically(target, (json.dumps(document, default=str) + "\n").encode(), base)


@contextlib.contextmanager
def recording(pipeline: str, argv: Sequence[str]) -> Iterator[RunRecord]:
    """Record the run of ``pipeline``: yields the record; writes it on exit, whatever the outcome.

    The caller sets ``record.result`` (the run's summary), or the exception propagates; either way one
    record is appended where the run writes (``--lake`` or ``--output``), when that folder exists (a
    run pointed at a mistyped lake must not create it).
    """
    record = RunRecord(pipeline, list(argv))
    token = _current.set(record)
    status, code, error = "succeeded", 0, None
    try:
        yield record
    except Terminated as exc:
        status, code, error = "terminated", exc.code, f"terminated by {exc.signal_name}"
        raise
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        status = "succeeded" if code == 0 else "failed"
        error = record.error if code else None
        raise
    except BaseException as exc:
        status, code, error = "failed", 1, f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        raise
    finally:
        _current.reset(token)
        if record.result is not None:
            record.add_counts(_as_counts(record.result))
        root = _root(argv)
        help_only = any(a in ("-h", "--help") for a in argv)
        if root and not help_only and ("://" in root or os.path.isdir(root)):  # never create a mistyped lake
            if touches_aws(argv):
                try:
                    record.caller, record.caller_error = caller_identity(_settings(argv))
                except ValueError as err:  # an invalid --aws-profile: the run itself said so
                    record.caller_error = str(err)
            try:
                where = write_record(root, record, status, code, error)
                log.debug("run record %s", where)
            except Exception as err:  # a run's outcome must not hinge on its bookkeeping: say so loudly
                log.error("could not write the run record under %s: %s", root, err)
