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
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import datetime as dt
import getpass
import json
import logging
import os
import re
import socket
import sys
import uuid
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from connectors import paths
from connectors.aws import AwsSettings
from schemas import PIPELINE_VERSION

__all__ = ["RECORDS_DIR", "RunRecord", "caller_identity", "current", "recording", "redact_argv", "touches_aws"]

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
        self.counts.update({k: v for k, v in counts.items() if isinstance(v, (int, float, str, bool, dict))})

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
            "inputs": self.inputs,
            "outputs": self.outputs,
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
    for flag in ("--lake", "--output"):
        if (value := _flag(argv, flag)) is not None:
            return value
    return None


def _as_counts(result: Any) -> dict[str, Any]:
    if dataclasses.is_dataclass(result) and not isinstance(result, type):
        return dataclasses.asdict(result)
    if hasattr(result, "model_dump"):
        return result.model_dump(mode="json")
    if hasattr(result, "as_dict"):
        return result.as_dict()
    if isinstance(result, Mapping):
        return {k: v for k, v in result.items() if isinstance(v, (int, float, str, bool))}
    return {}


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
