"""Logging for runs a scheduler reads: INFO on stderr by default, text or one JSON object a line.

Deliberately free of ``apache_beam`` imports: the package ``__init__`` uses it before any pipeline
module imports Beam, so that the noise Beam logs on import can be dropped.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import sys
import time

from connectors.read_progress import DEFAULT_PROGRESS_SECONDS, PROGRESS_ENV, progress_seconds  # noqa: F401

LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

# Third-party loggers that say INFO things on every run (Beam's runner stages, boto's credential lookup).
THIRD_PARTY = ("apache_beam", "botocore", "boto3", "urllib3", "s3transfer", "great_expectations", "py.warnings")

# Messages logged on every run that say nothing about this run: Beam's optional BigQuery clients
# ("apitools not found …", on ``import apache_beam``), and Beam calling the flags of our composed option
# groups "unparseable" (``parse_options`` has checked every flag before Beam sees them).
NOISE = ("apitools not found", "Discarding unparseable args", "Unparseable argument")


_STANDARD_ATTRS = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "taskName"}


class NoiseFilter(logging.Filter):
    """Drops exactly the records listed in :data:`NOISE`; everything else passes."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.msg if isinstance(record.msg, str) else ""
        return not message.startswith(NOISE)


_NOISE_FILTER = NoiseFilter()


def drop_import_noise() -> None:
    """Filter :data:`NOISE` on the root logger (where Beam logs the apitools warning) and Beam's options logger."""
    for name in ("", "apache_beam.options.pipeline_options"):
        logger = logging.getLogger(name)
        if _NOISE_FILTER not in logger.filters:
            logger.addFilter(_NOISE_FILTER)


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time (UTC ISO 8601), level, logger, message and any ``extra=`` fields."""

    def format(self, record: logging.LogRecord) -> str:
        doc = {
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD_ATTRS and not key.startswith("_"):
                doc[key] = value
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str, ensure_ascii=False)


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time of the record (test runners swap and close it)."""

    def __init__(self):
        super().__init__(sys.stderr)

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):
        pass


def configure_logging(level: str = "INFO", fmt: str = "text") -> None:
    """Replace whatever handlers exist (Beam installs a WARNING one on import) with one stderr handler.

    Third-party loggers stay at WARNING unless ``level`` is DEBUG; Python warnings go through logging, so
    that with ``fmt="json"`` every stderr line is JSON.
    """
    level = level.upper()
    handler = _StderrHandler()
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    handler.addFilter(_NOISE_FILTER)
    logging.basicConfig(level=level, handlers=[handler], force=True)
    drop_import_noise()
    logging.captureWarnings(True)
    third_party = logging.DEBUG if level == "DEBUG" else logging.WARNING
    for name in THIRD_PARTY:
        logging.getLogger(name).setLevel(third_party)


def logging_flags(argv: list[str]) -> tuple[str, str]:
    """``--log-level`` / ``--log-format`` from ``argv`` (``--flag V`` or ``--flag=V``), before anything else parses
    it; unknown values fall back to the defaults here and are rejected by the full parser."""
    found = {"--log-level": "INFO", "--log-format": "text"}
    for i, arg in enumerate(argv):
        name, eq, value = arg.partition("=")
        if name in found:
            if not eq:
                value = argv[i + 1] if i + 1 < len(argv) else ""
            found[name] = value
    level = found["--log-level"].upper()
    fmt = found["--log-format"]
    return (level if level in LEVELS else "INFO", fmt if fmt in FORMATS else "text")


def add_logging_arguments(parser) -> None:
    """The logging flags every pipeline accepts (argparse parser or argument group)."""
    parser.add_argument(
        "--log-level",
        dest="log_level",
        type=str.upper,
        choices=LEVELS,
        default="INFO",
        help="Lowest level logged on stderr (default INFO: what the run reads and writes, progress, summary).",
    )
    parser.add_argument(
        "--log-format",
        dest="log_format",
        choices=FORMATS,
        default="text",
        help="text (default) or json: one JSON object a line (time, level, logger, message, extra fields) "
        "for CloudWatch / Loki.",
    )


class Progress:
    """Progress of a long loop: done / total, rate, ETA; at most one log line every ``every`` seconds.

    Usage: ``progress = Progress(log, "partitions checked", total)``, ``progress.add()`` per item and
    ``progress.finish()`` at the end (always logs). The numbers also go to JSON logs as fields.
    """

    def __init__(self, logger: logging.Logger, what: str, total: int | None = None, every: float = 10.0, clock=None):
        self.logger, self.what, self.total, self.every = logger, what, total, every
        self._clock = clock or time.monotonic
        self.started = self._last = self._clock()
        self.done = 0

    def add(self, n: int = 1) -> None:
        self.done += n
        now = self._clock()
        if now - self._last >= self.every:
            self._last = now
            self._log(now)

    def finish(self) -> None:
        self._log(self._clock(), final=True)

    def _log(self, now: float, final: bool = False) -> None:
        elapsed = max(now - self.started, 1e-9)
        rate = self.done / elapsed
        fields = {"done": self.done, "total": self.total, "rate_per_s": round(rate, 2), "elapsed_s": round(elapsed, 1)}
        text = f"{self.what}: {self.done}"
        if self.total is not None:
            text += f"/{self.total} ({100 * self.done / self.total if self.total else 100:.0f}%)"
        text += f", {rate:.1f}/s"
        if final:
            text += f", done in {elapsed:.1f}s"
        elif self.total is not None and rate > 0:
            eta = (self.total - self.done) / rate
            fields["eta_s"] = round(eta, 1)
            text += f", ETA {eta:.0f}s"
        self.logger.info(text, extra={"progress": fields})
