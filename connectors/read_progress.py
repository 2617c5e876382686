"""Progress of a Beam job's input reading, logged by the workers that read it.

A Beam pipeline runs its DoFns in worker processes the driver cannot watch, so the reading DoFn logs its own
progress: bytes of the input read (of the total, known up front from the files' sizes and passed to the DoFn
when it is built), records, rate and ETA, at most once every ``every`` seconds per worker process. The DoFn
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

__all__ = ["ReadProgress", "format_bytes", "tracker"]

log = logging.getLogger("livora.read_progress")

_TRACKERS: dict[str, ReadProgress] = {}
_LOCK = threading.Lock()


def format_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"  # pragma: no cover


class ReadProgress:
    """Bytes and records read by this process of an input of ``total_bytes``; logs at most every ``every`` s.

    Args:
        what: what is read, e.g. ``"input read"`` (the start of each line).
        total_bytes: the whole input's size (sum of the files' sizes).
        every: seconds between lines (and before the first one).
    """

    def __init__(self, what: str, total_bytes: int, every: float = 10.0, clock=time.monotonic) -> None:
        self.what, self.total, self.every, self._clock = what, max(int(total_bytes), 0), every, clock
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
        fields = {
            "bytes_done": self.bytes,
            "bytes_total": self.total,
            "percent": round(percent, 1),
            "records": self.records,
            "bytes_per_s": round(rate),
            "records_per_s": round(self.records / elapsed, 1),
            "elapsed_s": round(elapsed, 1),
            "worker": self.worker,
        }
        text = (
            f"{self.what}: {format_bytes(self.bytes)} of {format_bytes(self.total)} ({percent:.1f}%), "
            f"{self.records} records, {format_bytes(rate)}/s, {self.records / elapsed:.0f} records/s"
        )
        if complete:
            text += f", done in {elapsed:.1f}s"
        elif rate > 0:
            fields["eta_s"] = round((self.total - self.bytes) / rate, 1)
            text += f", ETA {fields['eta_s']:.0f}s"
        text += f" (worker {self.worker})"
        self.logged = True
        log.info(text, extra={"progress": fields})


def tracker(key: str, what: str, total_bytes: int, every: float) -> ReadProgress:
    """The process's tracker of one read (``key``: unique per pipeline read, fixed when the graph is built):
    every DoFn instance of this process that reads for it adds into the same one."""
    with _LOCK:
        if key not in _TRACKERS:
            _TRACKERS[key] = ReadProgress(what, total_bytes, every)
        return _TRACKERS[key]
