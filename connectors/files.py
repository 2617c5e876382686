"""File source: local paths and ``s3://`` globs through Beam's filesystems, NDJSON / JSON / gzip.

NDJSON-like files (``.ndjson``, ``.jsonl``, ``.log``, ``.txt`` and anything not ``.json``) give one
record per non-blank line; a ``.json`` file is one record (an object, an array or a Segment batch,
split later by the decoder). ``.gz`` is decompressed by extension; gzip *inside* a record is the
decoder's job.

A large plain file is cut into byte ranges (``range_bytes``, 64 MiB by default) that different workers
read, like Beam's text source: a range owns the lines that *start* inside it. Only the small range
descriptors are shuffled to spread the work, never the records themselves; reading and parsing of a
range run fused on one worker. Compressed and whole-file JSON inputs are one range each.

A record's ``source_ref`` is ``file:PATH@OFFSET``, the byte offset where its line starts in the
(decompressed) file (``tail -c +$((OFFSET + 1)) PATH | head -1`` shows it), or ``file:PATH`` for a
whole-file record. Records leave in batches, each packed into one pickle
(:func:`transforms.composites.pack_records`), so that per-element cost is paid per batch.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import NamedTuple

import apache_beam as beam
from apache_beam.io import fileio
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics

from connectors.read_progress import tracker
from schemas.records import SourceRecord
from transforms.composites import pack_records

__all__ = [
    "FileRange",
    "ReadRecordBatches",
    "file_ranges",
    "is_whole_file_json",
    "range_records",
    "read_file_records",
    "read_range",
]

DEFAULT_RANGE_BYTES = 64 * 1024 * 1024


def is_whole_file_json(path: str) -> bool:
    name = path[:-3] if path.endswith(".gz") else path
    return name.endswith(".json")


class FileRange(NamedTuple):
    """Bytes ``[start, end)`` of a file (``end`` None: to the end; the whole file when ``start`` is 0)."""

    path: str
    start: int
    end: int | None


def _splittable(path: str) -> bool:
    return not is_whole_file_json(path) and CompressionTypes.detect_compression_type(path) == (
        CompressionTypes.UNCOMPRESSED
    )


def file_ranges(path: str, size: int, range_bytes: int = DEFAULT_RANGE_BYTES) -> list[FileRange]:
    """How a file is cut for reading: byte ranges of a plain file, the whole file otherwise."""
    if not _splittable(path) or size <= range_bytes:
        return [FileRange(path, 0, None)]
    return [FileRange(path, start, min(start + range_bytes, size)) for start in range(0, size, range_bytes)]


def read_range(handle, file_range: FileRange):
    """(offset, line without its end of line) of every non-blank line starting in the range.

    ``handle`` is the file opened in binary mode (seekable when the range does not start at 0).
    """
    start, end = file_range.start, file_range.end
    position = start
    if start > 0:
        handle.seek(start - 1)
        # the rest of a line that began before the range (or just the newline ending right before it)
        position = start - 1 + len(handle.readline())
    # Beam's CompressedFile (.gz, .bz2 ...) has readline() but is not iterable
    for line in iter(handle.readline, b""):
        if end is not None and position >= end:
            break
        offset, position = position, position + len(line)
        line = line.rstrip(b"\r\n")
        if line.strip():
            yield offset, line


def range_records(handle, file_range: FileRange) -> Iterator[SourceRecord]:
    """The source records of one range of an opened file: one per non-blank line, or the whole file
    as one record for ``.json``. What the pipeline reads, for code that reads files without Beam."""
    path = file_range.path
    if is_whole_file_json(path):
        data = handle.read()
        if data.strip():
            yield SourceRecord(data, f"file:{path}")
        return
    for offset, line in read_range(handle, file_range):
        yield SourceRecord(line, f"file:{path}@{offset}")


def read_file_records(path: str) -> Iterator[SourceRecord]:
    """Every source record of a whole file (local or ``s3://``, ``.gz`` by extension)."""
    with FileSystems.open(path, compression_type=CompressionTypes.AUTO) as handle:
        yield from range_records(handle, FileRange(path, 0, None))


class _RangesFn(beam.DoFn):
    def __init__(self, range_bytes: int):
        self.range_bytes = range_bytes
        self.files = Metrics.counter("livora", "input_files")

    def process(self, metadata):
        """(range, its share of the input's bytes): the share is what reading the range adds to the progress."""
        self.files.inc()
        size = metadata.size_in_bytes
        for file_range in file_ranges(metadata.path, size, self.range_bytes):
            yield file_range, (size if file_range.end is None else file_range.end) - file_range.start


class _ReadRangeBatchesFn(beam.DoFn):
    """Reads one range into packed batches; with ``total_bytes`` also logs the read's progress
    (:mod:`connectors.read_progress`; the total is a construction argument, so it works on any runner)."""

    def __init__(
        self, batch_size: int, total_bytes: int | None = None, progress_every: float = 10.0, progress_key: str = ""
    ):
        self.batch_size = batch_size
        self.total_bytes, self.progress_every, self.progress_key = total_bytes, progress_every, progress_key
        self.bytes_read = Metrics.counter("livora", "input_bytes")
        self.progress = None

    def setup(self):
        if self.total_bytes is not None:
            self.progress = tracker(self.progress_key, "input read", self.total_bytes, self.progress_every)

    def process(self, element):
        file_range, share = element
        # a plain range advances by the bytes of its lines as they are read; a compressed or whole-file JSON
        # range (its offsets are not positions in the file's bytes) by its share once read
        partial = _splittable(file_range.path)
        reported = 0
        batch: list[SourceRecord] = []
        size = 0  # counted per batch, not per line: a metric update is a Python call into the runner
        with FileSystems.open(file_range.path, compression_type=CompressionTypes.AUTO) as handle:
            for record in range_records(handle, file_range):
                size += len(record.payload) + 1
                batch.append(record)
                if len(batch) >= self.batch_size:
                    self.bytes_read.inc(size)
                    if self.progress is not None:
                        step = min(size, share - reported) if partial else 0
                        reported += step
                        self.progress.add(step, len(batch))
                    size = 0
                    yield pack_records(batch)
                    batch = []
        self.bytes_read.inc(size)
        if self.progress is not None:
            self.progress.add(share - reported, len(batch))
        if batch:
            yield pack_records(batch)


class ReadRecordBatches(beam.PTransform):
    """Batches of :class:`SourceRecord` from every file matching the patterns, packed as bytes.

    The output feeds ``ProcessEvents(config, batched=True)``; :func:`transforms.composites.unpack_records`
    gives the list back.

    Args:
        patterns: file patterns (local or ``s3://``); a pattern that matches nothing fails the job
            at start rather than producing an empty, silently "successful" run.
        batch_size: records per emitted batch.
        range_bytes: plain files larger than this are read as several ranges, in parallel where the
            runner has workers.
        total_bytes: the files' total size; when given, the reading workers log their progress (bytes and
            records read, rate, ETA) at most every ``progress_every`` seconds (:mod:`connectors.read_progress`).
    """

    def __init__(
        self,
        patterns: list[str],
        batch_size: int = 2000,
        range_bytes: int = DEFAULT_RANGE_BYTES,
        total_bytes: int | None = None,
        progress_every: float = 10.0,
    ):
        super().__init__()
        if not patterns:
            raise ValueError("ReadRecordBatches needs at least one file pattern")
        if range_bytes < 1:
            raise ValueError("range_bytes must be positive")
        if progress_every <= 0:
            raise ValueError("progress_every must be positive")
        self.patterns, self.batch_size, self.range_bytes = list(patterns), batch_size, range_bytes
        self.total_bytes, self.progress_every = total_bytes, progress_every
        self.progress_key = uuid.uuid4().hex  # this read's tracker in each worker process

    def expand(self, pbegin):
        return (
            pbegin
            | "FilePatterns" >> beam.Create(self.patterns)
            | "MatchFiles" >> fileio.MatchAll(empty_match_treatment=fileio.EmptyMatchTreatment.DISALLOW)
            | "FileRanges" >> beam.ParDo(_RangesFn(self.range_bytes))
            | "SpreadRanges" >> beam.Reshuffle()
            | "ReadRangeBatches"
            >> beam.ParDo(
                _ReadRangeBatchesFn(self.batch_size, self.total_bytes, self.progress_every, self.progress_key)
            )
        )
