"""A durable local spool: records appended and fsynced before they are acknowledged, re-sent later.

Segments are files ``seg-<n>.spool`` in one directory, appended by one writer. A frame is
``length (4 bytes) | crc32 (4 bytes) | key length (2 bytes) | partition key | data``; a frame whose
CRC does not match or that is cut short is the torn tail of a write that never returned (the process
died before its fsync, so it was never acknowledged) and ends the segment when it is read back.

The writer appends to the *open* segment; :meth:`Spool.rotate` closes it (the next append opens a
new one). Closed segments are what the drainer ships to Kinesis and then deletes; at start-up every
segment left by an earlier process counts as closed, so a crash loses nothing that was acknowledged.
A segment shipped but not yet deleted when the process dies is shipped again: the spool is
at-least-once, and the events' ``messageId`` makes the copies one downstream.
"""

from __future__ import annotations

import os
import re
import struct
import threading
import zlib
from collections.abc import Iterable

__all__ = ["Spool"]

_HEADER = struct.Struct(">IIH")
_NAME = re.compile(r"^seg-(\d{12})\.spool$")
Record = tuple[str, bytes]


class Spool:
    """Append-and-fsync segments under ``directory`` (created if missing). Thread-safe."""

    def __init__(self, directory: str, max_segment_bytes: int = 8 << 20):
        self.directory = os.path.abspath(directory)
        os.makedirs(self.directory, exist_ok=True)
        self.max_segment_bytes = max_segment_bytes
        self._lock = threading.Lock()
        existing = self._numbers()
        self._next = (existing[-1] + 1) if existing else 1
        self._open: tuple[int, object] | None = None  # (number, file)
        self._open_bytes = 0
        self._open_records = 0
        self.pending_records = sum(len(self.read(n)) for n in existing)
        self.pending_bytes = sum(os.path.getsize(self._path(n)) for n in existing)

    def _path(self, number: int) -> str:
        return os.path.join(self.directory, f"seg-{number:012d}.spool")

    def _numbers(self) -> list[int]:
        return sorted(int(m.group(1)) for name in os.listdir(self.directory) if (m := _NAME.match(name)))

    def append(self, records: Iterable[Record]) -> int:
        """Write ``records`` and fsync them; returns how many. Durable when this returns."""
        frames = []
        for key, data in records:
            k = key.encode("utf-8")
            body = k + data
            frames.append(_HEADER.pack(len(body), zlib.crc32(body), len(k)) + body)
        if not frames:
            return 0
        blob = b"".join(frames)
        with self._lock:
            if self._open is None:
                number = self._next
                self._next += 1
                handle = open(self._path(number), "ab")  # noqa: SIM115 - kept open across appends
                self._open = (number, handle)
                self._fsync_dir()
            handle = self._open[1]
            handle.write(blob)
            handle.flush()
            os.fsync(handle.fileno())
            self._open_bytes += len(blob)
            self._open_records += len(frames)
            self.pending_records += len(frames)
            self.pending_bytes += len(blob)
            if self._open_bytes >= self.max_segment_bytes:
                self._close_open()
        return len(frames)

    def _fsync_dir(self) -> None:
        fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def _close_open(self) -> None:
        if self._open is not None:
            self._open[1].close()
            self._open = None
            self._open_bytes = self._open_records = 0

    def rotate(self) -> None:
        """Close the open segment (if any) so that the drainer may ship it."""
        with self._lock:
            self._close_open()

    def closed_segments(self) -> list[int]:
        """Numbers of the segments ready to ship, oldest first."""
        with self._lock:
            open_number = self._open[0] if self._open else None
            return [n for n in self._numbers() if n != open_number]

    def read(self, number: int) -> list[Record]:
        """The records of one segment, up to a torn tail."""
        with open(self._path(number), "rb") as handle:
            blob = handle.read()
        out: list[Record] = []
        pos = 0
        while pos + _HEADER.size <= len(blob):
            length, crc, key_len = _HEADER.unpack_from(blob, pos)
            body = blob[pos + _HEADER.size : pos + _HEADER.size + length]
            if len(body) < length or zlib.crc32(body) != crc or key_len > length:
                break
            out.append((body[:key_len].decode("utf-8"), body[key_len:]))
            pos += _HEADER.size + length
        return out

    def remove(self, number: int, records: int) -> None:
        """Delete a shipped segment (``records`` of them leave the pending count)."""
        path = self._path(number)
        size = os.path.getsize(path)
        os.remove(path)
        with self._lock:
            self.pending_records = max(0, self.pending_records - records)
            self.pending_bytes = max(0, self.pending_bytes - size)

    def close(self) -> None:
        self.rotate()
