"""A static HTML report of the batch analytics outputs, for people who would rather look than read.

    python -m pipelines.report --input OUT_DIR [--input OUT_DIR2 ...] --output report.html [--title T]

Reads whichever tables the input directories hold (``funnel_steps``, ``retention``, ``product_funnel``,
``category_funnel``, ``revenue_daily``, ``ltv_cohorts``, ``cart_abandonment`` as ``NAME.parquet``;
``segment_sizes/`` and ``rfm_scores/`` as the Hive-partitioned directories written by ``pipelines.segments``) and writes one
self-contained page: inline SVG charts and CSS, no scripts, nothing fetched from the network.
The same tables always give the same bytes. Not a Beam pipeline: the inputs are small aggregates.
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Sequence

import pandas as pd
import pyarrow.dataset as ds

from connectors.analytics_io import read_table, write_bytes_atomically
from pipelines.errors import InputError
from pipelines.logs import add_logging_arguments
from pipelines.options import LivoraArgumentParser, main_entry
from transforms.report_html import render_report

log = logging.getLogger(__name__)

TABLES = (
    "funnel_steps",
    "retention",
    "product_funnel",
    "category_funnel",
    "revenue_daily",
    "ltv_cohorts",
    "cart_abandonment",
)
PARTITIONED = ("segment_sizes", "rfm_scores")


def _read_partitioned(path: str) -> pd.DataFrame | None:
    if not os.path.isdir(path):
        return None
    df = ds.dataset(path, format="parquet", partitioning="hive").to_table().to_pandas()
    for col in df.columns:
        if isinstance(df[col].dtype, pd.CategoricalDtype):
            df[col] = df[col].astype(str)
    return df


def load_tables(inputs: Sequence[str]) -> dict[str, pd.DataFrame]:
    """Tables found under the input directories; the same table in several inputs is concatenated."""
    found: dict[str, list[pd.DataFrame]] = {}
    for root in inputs:
        root = root.rstrip("/")
        for name in TABLES:
            df = read_table(f"{root}/{name}.parquet")
            if df is not None:
                found.setdefault(name, []).append(df)
        for name in PARTITIONED:
            df = _read_partitioned(f"{root}/{name}")
            if df is not None:
                found.setdefault(name, []).append(df)
    return {name: pd.concat(parts, ignore_index=True) for name, parts in found.items()}


def parser() -> argparse.ArgumentParser:
    p = LivoraArgumentParser(
        prog="python -m pipelines.report",
        description="Render the analytics tables of one or more output directories as a static HTML page.",
    )
    p.add_argument(
        "--input",
        action="append",
        required=True,
        help="An output directory of pipelines.funnels / retention / product_analytics / segments (repeatable).",
    )
    p.add_argument("--output", required=True, help="Path of the HTML file to write.")
    p.add_argument("--title", default="Livora analytics", help="Page title.")
    add_logging_arguments(p.add_argument_group("Logging"))
    return p


def run(argv: Sequence[str] | None = None) -> str:
    args = parser().parse_args(argv)
    for root in args.input:
        if "://" not in root and not os.path.isdir(root):
            raise InputError(f"--input {root}: no such directory")
    tables = load_tables(args.input)
    log.info("report from %s", ", ".join(f"{k} ({len(v)} rows)" for k, v in sorted(tables.items())) or "no tables")
    page = render_report(tables, args.title, sources=[os.path.basename(os.path.abspath(p)) for p in args.input])
    write_bytes_atomically(args.output, page.encode("utf-8"))
    log.info("wrote %s", args.output)
    return args.output


def main(argv: list[str] | None = None) -> None:
    main_entry("report", _main, argv)


def _main(argv: list[str]) -> None:
    run(argv)


if __name__ == "__main__":
    main()
