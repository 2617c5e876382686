"""A run's totals as one JSON file beside the lake (``LAKE/_runs/NAME.json``), counted from what was written.

The driver cannot count in-process (the job may run on Flink or Dataflow), so the pipeline sums each
output PCollection, writes the sums in one last step, and the driver reads the file back after the run.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from typing import Any

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

from connectors import paths
from connectors.aws import S3Encryption
from connectors.lake import table_path

__all__ = ["RUNS_DIR", "WriteRunSummary", "read_run_summary", "run_summary_path", "total"]

RUNS_DIR = "_runs"


def run_summary_path(lake: str, name: str) -> str:
    """``LAKE/_runs/NAME.json``; the local directory is created (object stores need none)."""
    path = paths.join_under(table_path(lake, RUNS_DIR), f"{name}.json")
    if "://" not in path:
        os.makedirs(os.path.dirname(path), exist_ok=True)
    return path


def total(pcoll: beam.PCollection, label: str, weight: Callable[[Any], int] = lambda _: 1) -> beam.pvalue.AsSingleton:
    """The sum of ``weight(element)`` over ``pcoll`` (its size by default), as a side input."""
    return beam.pvalue.AsSingleton(
        pcoll | f"Count{label}" >> beam.Map(weight) | f"Sum{label}" >> beam.CombineGlobally(sum)
    )


class _WriteSummaryFn(beam.DoFn):
    def __init__(self, path: str, names: list[str], encryption: S3Encryption | None = None):
        self.path, self.names, self.encryption = path, names, encryption

    def process(self, _, *totals):
        body = json.dumps(dict(zip(self.names, totals, strict=True)))
        root = self.path.rsplit("/", 1)[0]
        paths.write_bytes_atomically(self.path, body.encode(), root, self.encryption)
        yield body


class WriteRunSummary(beam.PTransform):
    """Applied to the pipeline: writes ``{name: total}`` (side inputs from :func:`total`) to ``path``
    (SSE-KMS on S3 with ``encryption``)."""

    def __init__(
        self, path: str, totals: Mapping[str, beam.pvalue.AsSingleton], encryption: S3Encryption | None = None
    ):
        super().__init__()
        self.path, self.totals, self.encryption = path, dict(totals), encryption

    def expand(self, pbegin):
        return (
            pbegin
            | "SummaryTrigger" >> beam.Create([None])
            | "WriteSummary"
            >> beam.ParDo(_WriteSummaryFn(self.path, list(self.totals), self.encryption), *self.totals.values())
        )


def read_run_summary(path: str) -> dict[str, Any]:
    """The totals written by :class:`WriteRunSummary`."""
    with FileSystems.open(path) as handle:
        return json.loads(handle.read())
