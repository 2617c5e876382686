"""Reconciliation: numbers that different parts of the platform hold about the same events must agree.

    python -m pipelines.reconcile --lake LAKE [--warehouse URL] [--product-output DIR [--timezone TZ]]
        [--profiles-table T --aws-profile local|aws] [--start-date D --end-date D --tenant T]

Checks (each mismatch is one line naming the check, tenant, day and both numbers; any mismatch exits 8):

- ``lake_vs_warehouse`` (with ``--warehouse``), per tenant and UTC day: lake rows = warehouse ``events`` rows.
- ``ingest_books`` (always), per ingest run record under ``LAKE/_runs/records`` that ended with exit 0:
  events in = lake rows + dead letters + duplicates (+ already in the lake + suppressed erasures). Only the
  run's totals can be balanced: the parse stage counts events per run, and duplicates and suppressed rows
  carry no event day, so this check is per run; its lake part is split per tenant and day next.
- ``ingest_vs_lake`` (always), per tenant and UTC day: the lake rows ingest runs recorded publishing there
  (``lake_rows_by_partition``: per file tag, the latest successful run of a tag wins, so a ``--reprocess``
  counts once) = the rows of the lake files with those tags now. Catches a lost, truncated or doubled lake
  file, and a run whose recorded split does not add up to its ``lake_rows`` (named ``run <id>``). A
  partition compacted since (``part-c*`` files) is skipped (listed in ``skipped``); an erasure since shows
  as fewer lake rows.
- ``revenue_vs_lake_orders`` (with ``--product-output``, a product_analytics output), per tenant and local day:
  ``revenue_daily.revenue_inr`` summed over channel and geo = ``revenue_inr`` of the lake's orders (``Order
  Completed``, one per order id, earliest copy), computed here from the lake, independently of the analytics.
- ``profile_orders_vs_lake_orders`` (with ``--profiles-table``), per tenant, all time (profiles are all-time):
  sum of the DynamoDB profiles' ``order_count`` = distinct orders in the lake.
"""

from __future__ import annotations

import datetime as dt
import glob
import json
import logging
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from zoneinfo import ZoneInfo

import pyarrow.parquet as pq

from connectors.compaction import is_compacted_file
from connectors.lake import read_events
from pipelines.errors import ReconciliationError, UsageError
from pipelines.options import AwsOptions, DateRangeOptions, main_entry, parse_options, require_lake

log = logging.getLogger("livora.reconcile")
ORDER_EVENT = "Order Completed"
MONEY_TOLERANCE = 0.01  # INR; the analytics round to 4 decimals


class ReconcileOptions(DateRangeOptions, AwsOptions):
    """What to reconcile the lake with."""

    @classmethod
    def _add_argparse_args(cls, parser):
        parser.add_argument("--lake", required=True, help="Lake root (local directory).")
        parser.add_argument("--warehouse", default=None, help="Warehouse URL (duckdb:///abs/path, postgresql://...).")
        parser.add_argument(
            "--product-output", dest="product_output", default=None, help="A product_analytics --output directory."
        )
        parser.add_argument(
            "--timezone", default="Asia/Kolkata", help="Local days of --product-output (default Asia/Kolkata)."
        )
        parser.add_argument(
            "--profiles-table", dest="profiles_table", default=None, help="DynamoDB profiles table to check."
        )


@dataclass(frozen=True)
class Mismatch:
    check: str
    key: str
    """``tenant/day``, ``tenant`` or ``run <id>``."""
    left_name: str
    left: float
    right_name: str
    right: float

    def line(self) -> str:
        return f"{self.check} {self.key}: {self.left_name} {_num(self.left)} != {self.right_name} {_num(self.right)}"


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:.4f}"


def compare(
    check: str,
    left_name: str,
    left: Mapping,
    right_name: str,
    right: Mapping,
    tolerance: float = 0.0,
) -> list[Mismatch]:
    """Every key of either side whose values differ by more than ``tolerance`` (a missing key counts as 0)."""
    out = []
    for key in sorted(set(left) | set(right), key=str):
        a, b = left.get(key, 0), right.get(key, 0)
        if abs(float(a) - float(b)) > tolerance:
            name = "/".join(map(str, key)) if isinstance(key, tuple) else str(key)
            out.append(Mismatch(check, name, left_name, a, right_name, b))
    return out


def ingest_books(records: list[dict]) -> list[Mismatch]:
    """Per successful ingest run: events in = lake + dead letters + duplicates (+ lake duplicates, suppressed)."""
    out = []
    for record in records:
        counts = record.get("counts") or {}
        if record.get("pipeline") != "ingest_batch" or record.get("exit_code") != 0 or "events_parsed" not in counts:
            continue
        parts = ("lake_rows", "dead_letters", "duplicates", "lake_duplicates", "suppressed")
        placed = sum(int(counts.get(p, 0)) for p in parts)
        if placed != int(counts["events_parsed"]):
            out.append(
                Mismatch(
                    "ingest_books",
                    f"run {record.get('run_id')}",
                    "events in",
                    counts["events_parsed"],
                    "lake + dead letters + duplicates",
                    placed,
                )
            )
    return out


def recorded_lake_rows(records: list[dict]) -> tuple[dict[tuple[str, str], int], list[Mismatch]]:
    """(rows per (tenant, day) that successful ingest runs recorded publishing, latest run per file tag;
    runs whose per-partition split does not add up to their ``lake_rows``)."""
    per_tag: dict[str, dict[str, int]] = {}
    bad = []
    for record in sorted(records, key=lambda r: str(r.get("started_at"))):
        counts = record.get("counts") or {}
        split = counts.get("lake_rows_by_partition")
        if record.get("pipeline") != "ingest_batch" or record.get("exit_code") != 0 or not isinstance(split, dict):
            continue
        placed = sum(n for parts in split.values() for n in parts.values())
        if placed != int(counts.get("lake_rows", 0)):
            bad.append(
                Mismatch(
                    "ingest_vs_lake",
                    f"run {record.get('run_id')}",
                    "lake rows",
                    counts.get("lake_rows", 0),
                    "lake rows per tenant and day",
                    placed,
                )
            )
        per_tag.update(split)
    out: dict[tuple[str, str], int] = {}
    for parts in per_tag.values():
        for key, rows in parts.items():
            tenant, day = key.rsplit("/", 1)
            out[(tenant, day)] = out.get((tenant, day), 0) + int(rows)
    return out, bad


def ingest_tagged_rows(lake: str, tags, partitions) -> tuple[dict[tuple[str, str], int], list[str]]:
    """(rows of the lake files named after ``tags`` per (tenant, day) of ``partitions``; compacted partitions)."""
    rows: dict[tuple[str, str], int] = {}
    compacted = []
    for tenant, day in sorted(partitions):
        directory = os.path.join(lake, "events", f"tenant_id={tenant}", f"event_date={day}")
        if any(is_compacted_file(os.path.basename(p)) for p in glob.glob(os.path.join(directory, "part-c*.parquet"))):
            compacted.append(f"{tenant}/{day}")
            continue
        for tag in tags:
            for path in glob.glob(os.path.join(directory, f"part-{tag}-*.parquet")):
                rows[(tenant, day)] = rows.get((tenant, day), 0) + pq.read_metadata(path).num_rows
    return rows, compacted


def lake_orders(lake: str, start=None, end=None, tenant=None):
    """The lake's orders as a pandas frame: Order Completed track events, one per (tenant, order key)."""
    columns = ["tenant_id", "type", "event", "order_id", "message_id", "timestamp", "revenue_inr"]
    frame = read_events(lake, start, end, tenant, columns=columns).to_pandas()
    frame = frame[(frame["type"] == "track") & (frame["event"] == ORDER_EVENT)].copy()
    frame["order_key"] = frame["order_id"].where(frame["order_id"].notna(), "msg:" + frame["message_id"])
    frame = frame.sort_values(["timestamp", "message_id"]).drop_duplicates(["tenant_id", "order_key"])
    frame["revenue_inr"] = frame["revenue_inr"].map(lambda v: float(v) if v is not None else 0.0)
    return frame


def _records(lake: str) -> list[dict]:
    out = []
    for path in sorted(glob.glob(os.path.join(lake, "_runs", "records", "*", "*.json"))):
        with open(path) as handle:
            out.append(json.load(handle))
    return out


def _lake_rows(lake: str, opts: ReconcileOptions) -> dict[tuple[str, str], int]:
    table = read_events(lake, opts.start_date, opts.end_date, opts.tenant, columns=["tenant_id", "event_date"])
    counts = table.group_by(["tenant_id", "event_date"]).aggregate([([], "count_all")]).to_pylist()
    return {(r["tenant_id"], r["event_date"].isoformat()): r["count_all"] for r in counts}


def _in_range(day: str, opts: ReconcileOptions) -> bool:
    date = dt.date.fromisoformat(day)
    return (not opts.start_date or date >= opts.start_date) and (not opts.end_date or date <= opts.end_date)


def reconcile(opts: ReconcileOptions, skipped: list[str] | None = None) -> tuple[list[str], list[Mismatch]]:
    """(checks run, mismatches); ``skipped`` collects what a check left out, and why."""
    records = _records(opts.lake)
    checks, mismatches = ["ingest_books"], ingest_books(records)
    recorded, bad_splits = recorded_lake_rows(records)
    recorded = {k: v for k, v in recorded.items() if (not opts.tenant or k[0] == opts.tenant) and _in_range(k[1], opts)}
    tags = {t for r in records for t in ((r.get("counts") or {}).get("lake_rows_by_partition") or {})}
    present, compacted = ingest_tagged_rows(opts.lake, sorted(tags), recorded)
    checks.append("ingest_vs_lake")
    mismatches += bad_splits + compare(
        "ingest_vs_lake",
        "rows ingest recorded",
        {k: v for k, v in recorded.items() if "/".join(k) not in compacted},
        "lake rows in ingest files",
        present,
    )
    if skipped is not None:
        skipped += [f"ingest_vs_lake {key}: compacted since ingest" for key in compacted]
    if opts.warehouse:
        from connectors.warehouse import rows_per_partition

        warehouse = {
            k: v
            for k, v in rows_per_partition(opts.warehouse).items()
            if (not opts.tenant or k[0] == opts.tenant) and _in_range(k[1], opts)
        }
        checks.append("lake_vs_warehouse")
        mismatches += compare(
            "lake_vs_warehouse", "lake rows", _lake_rows(opts.lake, opts), "warehouse rows", warehouse
        )
    if opts.product_output:
        revenue = pq.read_table(os.path.join(opts.product_output, "revenue_daily.parquet")).to_pandas()
        if opts.tenant:
            revenue = revenue[revenue["tenant_id"] == opts.tenant]
        reported = revenue.groupby(["tenant_id", revenue["date"].astype(str)])["revenue_inr"].sum().to_dict()
        day = dt.timedelta(days=1)
        orders = lake_orders(
            opts.lake, opts.start_date and opts.start_date - day, opts.end_date and opts.end_date + day, opts.tenant
        )
        local = orders["timestamp"].dt.tz_convert(ZoneInfo(opts.timezone)).dt.date.astype(str)
        lake = orders.groupby(["tenant_id", local])["revenue_inr"].sum().to_dict()
        days = {d for _, d in reported}  # the days the analytics covered
        lake = {k: v for k, v in lake.items() if k[1] in days and _in_range(k[1], opts)}
        reported = {k: v for k, v in reported.items() if _in_range(k[1], opts)}
        checks.append("revenue_vs_lake_orders")
        mismatches += compare(
            "revenue_vs_lake_orders",
            "revenue_daily revenue_inr",
            reported,
            "lake orders revenue_inr",
            lake,
            MONEY_TOLERANCE,
        )
    if opts.profiles_table:
        from connectors.dynamodb import profile_order_counts

        profiles = profile_order_counts(opts.settings(), opts.profiles_table)
        if opts.tenant:
            profiles = {k: v for k, v in profiles.items() if k == opts.tenant}
        lake = lake_orders(opts.lake, tenant=opts.tenant).groupby("tenant_id").size().to_dict()
        checks.append("profile_orders_vs_lake_orders")
        mismatches += compare("profile_orders_vs_lake_orders", "profile order_count", profiles, "lake orders", lake)
    return checks, mismatches


def run(argv: list[str] | None = None) -> dict:
    opts = parse_options(list(argv or []), ReconcileOptions, __doc__).view_as(ReconcileOptions)
    opts.check_range()
    if "://" in opts.lake:
        raise UsageError("--lake: reconcile reads a local lake (run records and files)")
    require_lake(opts.lake)
    skipped: list[str] = []
    checks, mismatches = reconcile(opts, skipped)
    summary = {
        "checks": checks,
        "mismatches": [asdict(m) for m in mismatches],
        "skipped": skipped,
        "success": not mismatches,
        "ingest_runs": sum(1 for r in _records(opts.lake) if r.get("pipeline") == "ingest_batch"),
    }
    for mismatch in mismatches:
        log.warning("%s", mismatch.line())
    return summary


def main(argv: list[str] | None = None) -> None:
    main_entry("reconcile", _main, argv)


def _main(argv: list[str]) -> dict:
    summary = run(argv)
    for mismatch in summary["mismatches"]:
        print(Mismatch(**mismatch).line())
    print(json.dumps({"checks": summary["checks"], "mismatches": len(summary["mismatches"])}))
    if summary["mismatches"]:
        first = Mismatch(**summary["mismatches"][0])
        more = len(summary["mismatches"]) - 1
        raise ReconciliationError(f"{first.line()}" + (f" (+{more} more)" if more else ""))
    return summary


if __name__ == "__main__":
    main()
