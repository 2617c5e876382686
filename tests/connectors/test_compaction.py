"""Names of compaction's output files, told apart from ingest files."""

from connectors.compaction import _output_names, is_compacted_file
from connectors.lake import lake_file_name


def test_an_ingest_file_whose_tag_starts_with_c_is_not_a_compacted_file():
    assert all(is_compacted_file(name) for name in _output_names("0123456789ab", 3))
    assert not is_compacted_file(lake_file_name("c0ffee0123456789", 0))  # reconcile skipped such partitions
