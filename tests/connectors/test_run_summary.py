"""The run-summary sink: sums per output, an empty output counts 0, the file is read back as written."""

from __future__ import annotations

import apache_beam as beam

from connectors.run_summary import WriteRunSummary, read_run_summary, run_summary_path, total
from pipelines.options import run_pipeline


def test_totals_are_written_and_read_back(tmp_path):
    lake = str(tmp_path / "lake")
    path = run_summary_path(lake, "run-1")
    assert path == f"{lake}/_runs/run-1.json"
    assert (tmp_path / "lake" / "_runs").is_dir()
    batches = [("a", 3), ("b", 4), ("c", 5)]

    def build(p):
        written = p | "Batches" >> beam.Create(batches)
        empty = p | "Nothing" >> beam.Create([])
        _ = p | "RunSummary" >> WriteRunSummary(
            path,
            {
                "rows": total(written, "Rows", lambda kv: kv[1]),
                "files": total(written, "Files"),
                "failures": total(empty, "Failures"),
            },
        )

    run_pipeline(build, beam.options.pipeline_options.PipelineOptions([]))
    assert read_run_summary(path) == {"rows": 12, "files": 3, "failures": 0}
