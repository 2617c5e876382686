"""A static HTML report of the batch analytics outputs: one page per tenant, for people who would rather look than read.

    python -m pipelines.report --input OUT_DIR [--input OUT_DIR2 ...] --output report.html
        [--tenant T] [--title T] [--runs LAKE] [--funnel-window S --funnel-mode M]
        [--retention-start-event E --retention-return-event E --retention-period P]

Reads whichever tables the input directories hold (``funnel_steps``, ``funnel_entry_days``, ``retention``,
``product_funnel``, ``category_funnel``, ``revenue_daily``, ``ltv_cohorts``, ``cart_abandonment`` as
``NAME.parquet``; ``segment_sizes/`` and ``rfm_scores/`` as the Hive-partitioned directories written by
``pipelines.segments``). With ``--tenant`` it writes that tenant's page to ``--output``; without, ``--output``
is an index page linking one page per tenant, written beside it as ``<stem>-<tenant>.html``.
Pages are self-contained: Jinja2 templates, SVG charts rendered in-process by vl-convert, CSS, no
scripts, nothing fetched. Not a Beam pipeline: the inputs are small aggregates.
"""

from __future__ import annotations

import argparse
import datetime as dt
import glob
import json
import logging
import os
from collections.abc import Sequence

import pandas as pd
import pyarrow.dataset as ds

from connectors.analytics_io import read_table, write_bytes_atomically
from connectors.run_records import RECORDS_DIR, note_input, note_outputs
from pipelines.errors import InputError, PipelineError, UsageError
from pipelines.logs import add_logging_arguments
from pipelines.options import LivoraArgumentParser, main_entry, parse_options
from pipelines.report_page import Definitions, page_file_name, render_index, render_tenant_page, tenants_of

log = logging.getLogger(__name__)

TABLES = (
    "funnel_steps",
    "funnel_entry_days",
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


def _utc_time(text: str) -> dt.datetime:
    value = dt.datetime.fromisoformat(text)
    if value.tzinfo is None:
        raise argparse.ArgumentTypeError(f"{text!r}: give a time zone, e.g. 2026-10-20T06:30:00+00:00")
    return value


def parser() -> argparse.ArgumentParser:
    p = LivoraArgumentParser(
        prog="python -m pipelines.report",
        description="Render the analytics tables of one or more output directories as static HTML pages.",
    )
    p.add_argument(
        "--input",
        action="append",
        required=True,
        help="An output directory of pipelines.funnels / retention / product_analytics / segments (repeatable).",
    )
    p.add_argument(
        "--output",
        required=True,
        help="HTML file to write: the tenant's page with --tenant, else an index with one page per tenant beside it.",
    )
    p.add_argument("--tenant", help="Only this tenant's page (default: an index page and one page per tenant).")
    p.add_argument("--title", default="Livora analytics", help="Page title.")
    p.add_argument(
        "--generated-at",
        type=_utc_time,
        help="Generation time shown in the header, ISO 8601 with a zone (default: now); fixes the bytes for diffs.",
    )
    g = p.add_argument_group("Definitions shown in the header (the tables do not carry them)")
    g.add_argument(
        "--runs",
        action="append",
        help="A lake whose run records (_runs/records/) hold the funnels/retention runs that wrote the inputs: "
        "their flags give the definitions (repeatable; local paths). The flags below win over them.",
    )
    g.add_argument("--funnel-window", type=float, help="The --window (seconds) pipelines.funnels ran with.")
    g.add_argument("--funnel-mode", help="The funnel --mode (ordered, strict, strict_increase, unordered).")
    g.add_argument("--retention-start-event", help="The --start-event pipelines.retention ran with.")
    g.add_argument("--retention-return-event", help="The --return-event pipelines.retention ran with.")
    g.add_argument("--retention-period", choices=("day", "week", "month"), help="The retention --period.")
    g.add_argument("--retention-kind", choices=("first_time", "recurring"), help="The retention --kind.")
    add_logging_arguments(p.add_argument_group("Logging"))
    return p


def _flag(argv: Sequence[str], name: str) -> str | None:
    for i, arg in enumerate(argv):
        if arg == name and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return None


def recorded_definitions(roots: Sequence[str], inputs: Sequence[str]) -> Definitions:
    """The definitions of the newest successful ``funnels`` / ``retention`` runs that wrote one of ``inputs``.

    Their run records (``ROOT/_runs/records/``, ROOT = the runs' ``--lake``) keep the argv; it is parsed by
    the pipelines' own option code, so defaults and ``--config`` YAML files resolve as they did in the run.
    A record that no longer parses (e.g. its YAML file is gone) is skipped with a warning.
    """
    from pipelines import funnels, retention  # only when asked

    wanted = {os.path.abspath(p).rstrip("/") for p in inputs if "://" not in p}
    newest: dict[str, dict] = {}
    for root in roots:
        for path in sorted(glob.glob(os.path.join(root, RECORDS_DIR, "*", "*.json"))):
            with open(path, encoding="utf-8") as handle:
                record = json.load(handle)
            output = _flag(record.get("argv", []), "--output")
            if (
                record.get("pipeline") in ("funnels", "retention")
                and record.get("status") == "succeeded"
                and output is not None
                and os.path.abspath(output).rstrip("/") in wanted
                and record["started_at"] >= newest.get(record["pipeline"], {}).get("started_at", "")
            ):
                newest[record["pipeline"]] = record
    found: dict = {}
    for pipeline, record in sorted(newest.items()):
        try:
            if pipeline == "funnels":
                opts = parse_options(record["argv"], funnels.FunnelOptions, "").view_as(funnels.FunnelOptions)
                found["funnels"] = {
                    d.name: (float(d.window_seconds), d.mode) for d in funnels.definitions_from_options(opts)
                }
            else:
                opts = parse_options(record["argv"], retention.RetentionOptions, "").view_as(retention.RetentionOptions)
                d = retention.definition_from_options(opts)
                found.update(
                    retention_start_event=d.start_event,
                    retention_return_event=d.return_event,
                    retention_period=d.period,
                    retention_kind=d.kind,
                )
            log.info("definitions of %s from its run %s (%s)", pipeline, record.get("run_id"), record["started_at"])
        except PipelineError as err:
            log.warning("the flags of %s run %s no longer parse (%s): not shown", pipeline, record.get("run_id"), err)
    return Definitions(**found)


def _sibling(path: str, name: str) -> str:
    if "://" in path:
        return f"{path.rsplit('/', 1)[0]}/{name}"
    return os.path.join(os.path.dirname(os.path.abspath(path)), name)


def _stem(path: str) -> str:
    base = path.rstrip("/").rsplit("/", 1)[-1]
    return base[:-5] if base.endswith(".html") else base


def run(argv: Sequence[str] | None = None) -> str:
    """Write the page(s); returns ``--output`` (the tenant page with ``--tenant``, else the index)."""
    args = parser().parse_args(argv)
    for root in args.input:
        if "://" not in root and not os.path.isdir(root):
            raise InputError(f"--input {root}: no such directory")
    tables = load_tables(args.input)
    for root in args.input:
        note_input(
            root, [f"{root.rstrip('/')}/*.parquet", *(f"{root.rstrip('/')}/{n}/**.parquet" for n in PARTITIONED)]
        )
    log.info("report from %s", ", ".join(f"{k} ({len(v)} rows)" for k, v in sorted(tables.items())) or "no tables")
    generated_at = args.generated_at or dt.datetime.now(dt.UTC)
    recorded = recorded_definitions(args.runs or [], args.input)
    definitions = Definitions(
        funnel_window_s=args.funnel_window,
        funnel_mode=args.funnel_mode,
        retention_start_event=args.retention_start_event or recorded.retention_start_event,
        retention_return_event=args.retention_return_event or recorded.retention_return_event,
        retention_period=args.retention_period or recorded.retention_period,
        retention_kind=args.retention_kind or recorded.retention_kind,
        funnels=recorded.funnels,
    )
    common = {
        "generated_at": generated_at,
        "title": args.title,
        "sources": [os.path.basename(os.path.abspath(p)) for p in args.input],
    }
    tenants = tenants_of(tables)
    if args.tenant is not None:
        if args.tenant not in tenants:
            raise UsageError(
                f"--tenant {args.tenant}: not in the input tables (tenants: {', '.join(tenants) or 'none'})"
            )
        page = render_tenant_page(tables, args.tenant, definitions=definitions, **common)
        write_bytes_atomically(args.output, page.encode("utf-8"))
        note_outputs(args.output)
        log.info("wrote %s", args.output)
        return args.output
    index_name = args.output.rstrip("/").rsplit("/", 1)[-1]
    links = {}
    for tenant in tenants:
        name = page_file_name(_stem(args.output), tenant)
        page = render_tenant_page(tables, tenant, definitions=definitions, index_href=index_name, **common)
        write_bytes_atomically(_sibling(args.output, name), page.encode("utf-8"))
        links[tenant] = name
    write_bytes_atomically(args.output, render_index(tables, links, **common).encode("utf-8"))
    note_outputs(args.output, *(_sibling(args.output, name) for name in links.values()))
    log.info("wrote %s and %d tenant page(s) beside it", args.output, len(links))
    return args.output


def main(argv: list[str] | None = None) -> None:
    main_entry("report", _main, argv)


def _main(argv: list[str]) -> None:
    run(argv)


if __name__ == "__main__":
    main()
