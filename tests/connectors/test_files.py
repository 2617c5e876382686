"""The file source: byte ranges cover every line exactly once, on a real Beam pipeline too."""

from __future__ import annotations

import gzip
import io

import apache_beam as beam
from apache_beam.testing.util import assert_that, equal_to
from hypothesis import given, settings
from hypothesis import strategies as st

from connectors.files import FileRange, ReadRecordBatches, file_ranges, read_range
from transforms.composites import unpack_records


def expected_lines(data: bytes) -> list[tuple[int, bytes]]:
    """(offset, line) of every non-blank line, the slow obvious way."""
    out, offset = [], 0
    for line in data.split(b"\n"):
        if line.rstrip(b"\r").strip():
            out.append((offset, line.rstrip(b"\r")))
        offset += len(line) + 1
    return out


lines = st.lists(st.sampled_from([b"", b" ", b'{"a":1}', b"x" * 17, b"\xff\xfe", b"{}\r"]), max_size=40)


@settings(max_examples=300, deadline=None)
@given(lines=lines, trailing_newline=st.booleans(), range_bytes=st.integers(min_value=1, max_value=64))
def test_ranges_cover_every_line_once(lines, trailing_newline, range_bytes):
    data = b"\n".join(lines) + (b"\n" if trailing_newline else b"")
    got = []
    for file_range in file_ranges("f.ndjson", len(data), range_bytes):
        got += list(read_range(io.BytesIO(data), file_range))
    assert got == expected_lines(data)


def test_compressed_and_whole_json_files_are_one_range_and_small_files_too():
    assert file_ranges("a.ndjson.gz", 10**9, 1000) == [FileRange("a.ndjson.gz", 0, None)]
    assert file_ranges("a.json", 10**9, 1000) == [FileRange("a.json", 0, None)]
    assert file_ranges("a.ndjson", 1000, 1000) == [FileRange("a.ndjson", 0, None)]
    assert [r.start for r in file_ranges("a.ndjson", 2500, 1000)] == [0, 1000, 2000]


def test_pipeline_reads_split_plain_and_gzip_files_with_offsets(tmp_path):
    body = b"".join(b'{"n":%d}\n' % i for i in range(500))
    (tmp_path / "big.ndjson").write_bytes(body)
    (tmp_path / "small.ndjson.gz").write_bytes(gzip.compress(b'{"z":1}\n\n{"z":2}\n'))
    expected = [(f"file:{tmp_path}/big.ndjson@{offset}", line) for offset, line in expected_lines(body)]
    expected += [(f"file:{tmp_path}/small.ndjson.gz@0", b'{"z":1}'), (f"file:{tmp_path}/small.ndjson.gz@9", b'{"z":2}')]
    with beam.Pipeline() as p:
        records = (
            p
            | ReadRecordBatches([str(tmp_path / "*.ndjson*")], batch_size=64, range_bytes=1000)
            | beam.FlatMap(unpack_records)
            | beam.Map(lambda r: (r.source_ref, r.payload))
        )
        assert_that(records, equal_to(expected))
