"""File source: local paths and ``s3://`` globs through Beam's filesystems, NDJSON / JSON / gzip.

NDJSON-like files (``.ndjson``, ``.jsonl``, ``.log``, ``.txt`` and anything not ``.json``) give one
record per non-blank line; a ``.json`` file is one record (an object, an array or a Segment batch,
split later by the decoder). ``.gz`` is decompressed by extension; gzip *inside* a record is the
decoder's job. Records leave in batches so that per-element cost is paid per batch, each batch
packed into one pickle (:func:`transforms.composites.pack_records`): bytes cross the spreading shuffle
and Beam's size sampling for the price of a length, where a list of records costs an encode per record.
"""

from __future__ import annotations

import apache_beam as beam
from apache_beam.io import fileio
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.metrics import Metrics

from schemas.records import SourceRecord
from transforms.composites import pack_records

__all__ = ["ReadRecordBatches", "is_whole_file_json"]


def is_whole_file_json(path: str) -> bool:
    name = path[:-3] if path.endswith(".gz") else path
    return name.endswith(".json")


class _ReadFileBatchesFn(beam.DoFn):
    def __init__(self, batch_size: int):
        self.batch_size = batch_size
        self.files = Metrics.counter("livora", "input_files")
        self.bytes_read = Metrics.counter("livora", "input_bytes")

    def process(self, readable: fileio.ReadableFile):
        path = readable.metadata.path
        self.files.inc()
        with readable.open(compression_type=CompressionTypes.AUTO) as handle:
            if is_whole_file_json(path):
                data = handle.read()
                self.bytes_read.inc(len(data))
                if data.strip():
                    yield pack_records([SourceRecord(data, f"file:{path}")])
                return
            batch: list[SourceRecord] = []
            size = 0  # counted per batch, not per line: a metric update is a Python call into the runner
            # Beam's CompressedFile (.gz, .bz2 ...) has readline() but is not iterable
            for number, line in enumerate(iter(handle.readline, b""), start=1):
                size += len(line)
                line = line.rstrip(b"\r\n")
                if not line.strip():
                    continue
                batch.append(SourceRecord(line, f"file:{path}:{number}"))
                if len(batch) >= self.batch_size:
                    self.bytes_read.inc(size)
                    size = 0
                    yield pack_records(batch)
                    batch = []
            self.bytes_read.inc(size)
            if batch:
                yield pack_records(batch)


class ReadRecordBatches(beam.PTransform):
    """Batches of :class:`SourceRecord` from every file matching the patterns, packed as bytes.

    The output feeds ``ProcessEvents(config, batched=True)``; :func:`transforms.composites.unpack_records`
    gives the list back.

    Args:
        patterns: file patterns (local or ``s3://``); a pattern that matches nothing fails the job
            at start rather than producing an empty, silently "successful" run.
        batch_size: records per emitted list.
    """

    def __init__(self, patterns: list[str], batch_size: int = 2000):
        super().__init__()
        if not patterns:
            raise ValueError("ReadRecordBatches needs at least one file pattern")
        self.patterns, self.batch_size = list(patterns), batch_size

    def expand(self, pbegin):
        return (
            pbegin
            | "FilePatterns" >> beam.Create(self.patterns)
            | "MatchFiles" >> fileio.MatchAll(empty_match_treatment=fileio.EmptyMatchTreatment.DISALLOW)
            | "ReadMatches" >> fileio.ReadMatches(compression=CompressionTypes.UNCOMPRESSED)
            | "ReadLineBatches" >> beam.ParDo(_ReadFileBatchesFn(self.batch_size))
            | "SpreadBatches" >> beam.Reshuffle()
        )
