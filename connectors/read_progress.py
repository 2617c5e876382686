"""Progress of a Beam job's input reading, logged by the workers that read it.

A Beam pipeline runs its DoFns in worker processes the driver cannot watch, so the reading DoFn logs its own
progress: bytes of the input read (of the total, known up front from the files' sizes and passed to the DoFn
when it is built) or rows (of the total in the Parquet files' footers), records, rate and ETA, at most once every ``every`` seconds per worker process. The DoFn
instances of one process (the runner's threads) add into one tracker, so a one-process run (the in-process
and direct runners) logs the whole job's progress and ends at 100 %. On a runner with several worker
processes each logs the part it read (``of the input`` percentages then add up across workers; its ETA is
what the rest would take at that worker's rate alone), without any state shared between workers.

Quiet for small runs: nothing is logged before ``every`` seconds have passed, and the final line only when
an earlier one was logged.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time

__all__ = ["ReadProgress", "format_bytes", "progress_seconds", "tracker"]

log = logging.getLogger("livora.read_progress")

PROGRESS_ENV = "LIVORA_PROGRESS_SECONDS"
DEFAULT_PROGRESS_SECONDS = 10.0
UNITS = ("bytes", "rows")
_TRACKERS: dict[str, ReadProgress] = {}
_LOCK = threading.Lock()


def progress_seconds() -> float:
    """Seconds between progress lines of long work: ``$LIVORA_PROGRESS_SECONDS`` (tests make it tiny), else 10."""
    raw = os.environ.get(PROGRESS_ENV, "")
    try:
        value = float(raw) if raw else DEFAULT_PROGRESS_SECONDS
    except ValueError:
        raise ValueError(f"${PROGRESS_ENV} must be a number of seconds, not {raw!r}") from None
    if value <= 0:
        raise ValueError(f"${PROGRESS_ENV} must be positive, not {raw!r}")
    return value


def format_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"  # pragma: no cover


class ReadProgress:
    """Bytes (or rows) and records read by this process of an input of ``total_bytes`` (or rows); logs at most
    every ``every`` s.

    Args:
        what: what is read, e.g. ``"input read"`` (the start of each line).
        total_bytes: the whole input's size (sum of the files' sizes), or its row count with ``unit="rows"``.
        every: seconds between lines (and before the first one).
        unit: ``"bytes"`` or ``"rows"`` (a Parquet reader that only sees row groups counts rows, not bytes).
    """

    def __init__(
        self, what: str, total_bytes: int, every: float = 10.0, clock=time.monotonic, unit: str = "bytes"
    ) -> None:
        if unit not in UNITS:
            raise ValueError(f"unit must be one of {UNITS}, not {unit!r}")
        self.what, self.total, self.every, self._clock = what, max(int(total_bytes), 0), every, clock
        self.unit = unit
        self.started = self._last = clock()
        self.bytes = self.records = 0
        self.logged = False
        self._lock = threading.Lock()
        self.worker = f"{socket.gethostname()}:{os.getpid()}"

    def add(self, n_bytes: int, records: int = 0) -> None:
        """Count what one reader did since its last call; logs when due (and the final line at the total)."""
        with self._lock:
            self.bytes = min(self.bytes + n_bytes, self.total)
            self.records += records
            now = self._clock()
            complete = self.bytes >= self.total
            if (complete and self.logged) or (not complete and now - self._last >= self.every):
                self._last = now
                self._log(now, complete)

    def _log(self, now: float, complete: bool) -> None:
        elapsed = max(now - self.started, 1e-9)
        rate = self.bytes / elapsed
        percent = 100.0 * self.bytes / self.total if self.total else 100.0
        unit = self.unit
        fields = {f"{unit}_done": self.bytes, f"{unit}_total": self.total, "percent": round(percent, 1)}
        if unit == "bytes":
            fields["records"] = self.records
        fields[f"{unit}_per_s"] = round(rate)
        if unit == "bytes":
            fields["records_per_s"] = round(self.records / elapsed, 1)
        fields |= {"elapsed_s": round(elapsed, 1), "worker": self.worker}
        if unit == "bytes":
            text = (
                f"{self.what}: {format_bytes(self.bytes)} of {format_bytes(self.total)} ({percent:.1f}%), "
                f"{self.records} records, {format_bytes(rate)}/s, {self.records / elapsed:.0f} records/s"
            )
        else:
            text = f"{self.what}: {self.bytes} of {self.total} rows ({percent:.1f}%), {rate:.0f} rows/s"
        if complete:
            text += f", done in {elapsed:.1f}s"
        elif rate > 0:
            fields["eta_s"] = round((self.total - self.bytes) / rate, 1)
            text += f", ETA {fields['eta_s']:.0f}s"
        text += f" (worker {self.worker})"
        self.logged = True
        log.info(text, extra={"progress": fields})


def tracker(key: str, what: str, total_bytes: int, every: float, unit: str = "bytes") -> ReadProgress:
    """The process's tracker of one read (``key``: unique per pipeline read, fixed when the graph is built):
    every DoFn instance of this process that reads for it adds into the same one."""
    with _LOCK:
        if key not in _TRACKERS:
            _TRACKERS[key] = ReadProgress(what, total_bytes, every, unit=unit)
        return _TRACKERS[key]
