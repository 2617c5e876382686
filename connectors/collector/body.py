"""Reading a request body within limits: size, time and (for gzip) inflated size.

Every limit is checked while reading, so an oversize or slow body costs at most the limit in memory
and the timeout in time: the reader stops at ``max_bytes + 1`` bytes, gives up after
``timeout_s`` for the whole body (a client that trickles its body, slowloris, is cut off), and a
gzip body is inflated in bounded steps so that a small bomb never expands past ``max_inflated``.
"""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import AsyncIterator

__all__ = ["BodyError", "inflate", "read_body"]


class BodyError(Exception):
    """A body refused before parsing: ``reason`` is the metric label, ``status`` the HTTP answer."""

    def __init__(self, reason: str, status: int, message: str):
        super().__init__(message)
        self.reason = reason
        self.status = status


async def read_body(
    chunks: AsyncIterator[bytes], *, max_bytes: int, timeout_s: float, declared_length: str | None = None
) -> bytes:
    """The whole body, or BodyError ``oversize`` (more than ``max_bytes``) / ``body_timeout``."""
    if declared_length is not None:
        try:
            if int(declared_length) > max_bytes:
                raise BodyError("oversize", 400, f"body of {int(declared_length)} bytes is over {max_bytes}")
        except ValueError:
            raise BodyError("bad_request", 400, "Content-Length is not a number") from None
    parts: list[bytes] = []
    size = 0

    async def collect() -> None:
        nonlocal size
        async for chunk in chunks:
            size += len(chunk)
            if size > max_bytes:
                raise BodyError("oversize", 400, f"body is over {max_bytes} bytes")
            parts.append(chunk)

    try:
        async with asyncio.timeout(timeout_s):
            await collect()
    except TimeoutError:
        raise BodyError("body_timeout", 408, f"body not received within {timeout_s:g}s") from None
    return b"".join(parts)


def inflate(body: bytes, encoding: str | None, *, max_inflated: int) -> bytes:
    """``body`` decoded from its Content-Encoding (identity or gzip), never larger than ``max_inflated``."""
    encoding = (encoding or "").strip().lower()
    if encoding in ("", "identity"):
        return body
    if encoding not in ("gzip", "x-gzip"):
        raise BodyError("bad_encoding", 415, f"Content-Encoding {encoding[:20]!r} is not supported (gzip only)")
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    out: list[bytes] = []
    size = 0
    data = body
    try:
        while data:
            piece = inflater.decompress(data, max_inflated + 1 - size)
            size += len(piece)
            out.append(piece)
            if size > max_inflated:
                raise BodyError("gzip_bomb", 400, f"gzip body inflates past {max_inflated} bytes")
            data = inflater.unconsumed_tail
            if inflater.eof:
                break
    except zlib.error:
        raise BodyError("bad_gzip", 400, "body is not valid gzip") from None
    if not inflater.eof:
        raise BodyError("bad_gzip", 400, "gzip body is truncated")
    return b"".join(out)
