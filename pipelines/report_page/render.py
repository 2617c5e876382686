"""The report's pages: analytics tables of one tenant → a Jinja2 template (autoescape on) → HTML.

Every value from data (tenant ids, event, product and channel names) reaches the page through Jinja2's
autoescape; charts are SVG from vl-convert, whose renderer escapes text and attributes itself.
No clock and no network here: the generation time is an argument, so the same tables give the same bytes.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from zoneinfo import ZoneInfo

import jinja2
import pandas as pd

from pipelines.report_page import charts
from pipelines.report_page.formatting import fmt_count, fmt_duration, fmt_inr, fmt_inr_compact, fmt_pct

__all__ = ["Definitions", "page_file_name", "render_index", "render_tenant_page", "tenants_of"]

IST = ZoneInfo("Asia/Kolkata")
_ENV = jinja2.Environment(
    loader=jinja2.PackageLoader("pipelines.report_page", "templates"),
    autoescape=True,  # not select_autoescape: the templates end in .j2 and every one of them is HTML
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)


@dataclass(frozen=True)
class Definitions:
    """How the funnel and retention tables were computed: not in the tables, so given to the report.

    ``funnels`` maps a funnel name to its (window seconds, mode) as recorded by its run; ``funnel_window_s``
    and ``funnel_mode`` (the report's flags) apply to every funnel and win over the record.
    """

    funnel_window_s: float | None = None
    funnel_mode: str | None = None
    retention_start_event: str | None = None
    retention_return_event: str | None = None
    retention_period: str | None = None
    retention_kind: str | None = None
    funnels: dict[str, tuple[float, str]] = field(default_factory=dict)

    def funnel_text(self, names: Sequence[str] = ()) -> str:
        texts = []
        for name in names or [""]:
            window, mode = self.funnels.get(name, (None, None))
            window = self.funnel_window_s if self.funnel_window_s is not None else window
            mode = self.funnel_mode or mode
            w = "window not recorded" if window is None else f"window {fmt_duration(window)}"
            texts.append(f"{name + ': ' if name else ''}{w} from step 1 · mode {mode or 'not recorded'}")
        return "; ".join(texts)

    def retention_text(self) -> str:
        start = self.retention_start_event or "not recorded"
        ret = self.retention_return_event or "not recorded"
        kind = f" · {self.retention_kind}" if self.retention_kind else ""
        return f"start event {start} · return event {ret} · period {self.retention_period or 'not recorded'}{kind}"


def _missing(v) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v)) or v is pd.NA or v is pd.NaT


def _text(v) -> str:
    return "" if _missing(v) else str(v)


@dataclass
class _Table:
    headers: list[dict]
    rows: list[list[str]]


def _table(df: pd.DataFrame, columns: Sequence[tuple[str, str, Callable | None]], limit: int | None = None) -> _Table:
    """``columns``: (column, header, formatter; None for text, left-aligned)."""
    rows = df if limit is None else df.head(limit)
    headers = [{"title": h, "left": f is None} for _c, h, f in columns]
    body = [
        [_text(rec.get(c)) if f is None else f(rec.get(c)) for c, _h, f in columns] for rec in rows.to_dict("records")
    ]
    return _Table(headers, body)


def tenants_of(tables: Mapping[str, pd.DataFrame]) -> list[str]:
    found: set[str] = set()
    for df in tables.values():
        if df is not None and "tenant_id" in df.columns:
            found.update(str(t) for t in df["tenant_id"].dropna().unique())
    return sorted(found)


def page_file_name(stem: str, tenant: str) -> str:
    """``report-acme-in.html``; ids that are not plain names get a slug and a hash (never a path)."""
    if re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]{0,62}", tenant):
        return f"{stem}-{tenant}.html"
    slug = re.sub(r"[^A-Za-z0-9_-]+", "_", tenant).strip("_")[:40] or "tenant"
    return f"{stem}-{slug}-{hashlib.sha256(tenant.encode()).hexdigest()[:10]}.html"


def _of(tables: Mapping[str, pd.DataFrame], name: str, tenant: str) -> pd.DataFrame | None:
    df = tables.get(name)
    if df is None or not len(df) or "tenant_id" not in df.columns:
        return None
    part = df.loc[df["tenant_id"].astype(str) == tenant]
    return part if len(part) else None


def _dates(tables: Mapping[str, pd.DataFrame], tenant: str) -> tuple[dt.date, dt.date] | None:
    found: list[dt.date] = []
    for name, col in (
        ("revenue_daily", "date"),
        ("funnel_entry_days", "entry_date"),
        ("retention", "cohort_start"),
        ("segment_sizes", "as_of"),
        ("rfm_scores", "as_of"),
    ):
        part = _of(tables, name, tenant)
        if part is not None and col in part.columns:
            values = pd.to_datetime(part[col].astype(str), errors="coerce").dropna()
            if len(values):
                found += [values.min().date(), values.max().date()]
    return (min(found), max(found)) if found else None


def _funnels(df: pd.DataFrame) -> list[dict]:
    out = []
    keys = ["funnel"] + (["breakdown_value"] if "breakdown_value" in df.columns else [])
    for key, steps in df.groupby(keys, sort=True, dropna=False):
        key = key if isinstance(key, tuple) else (key,)
        title = " · ".join(str(k) for k in key if not _missing(k))
        steps = steps.sort_values("step")
        top = max(int(steps["persons"].max() or 0), 1)
        rows = []
        for rec in steps.to_dict("records"):
            figures = f"{fmt_count(rec['persons'])} · {fmt_pct(rec.get('conversion_overall'))}"
            if int(rec["step"]) > 1:
                figures += f" (step {fmt_pct(rec.get('conversion_from_previous'))})"
                median = rec.get("median_time_to_convert_s")
                if not _missing(median):
                    figures += f" · median {fmt_duration(median)}"
            rows.append(
                {
                    "label": f"{int(rec['step'])}. {rec['step_event']}",
                    "persons": fmt_count(rec["persons"]),
                    "width": f"{100 * int(rec['persons']) / top:.1f}",
                    "figures": figures,
                }
            )
        out.append({"title": title, "steps": rows})
    return out


def _revenue(part: pd.DataFrame) -> dict:
    daily = part.groupby("date", sort=True)[["orders", "revenue_inr", "refunded_inr"]].sum()
    total, orders = float(daily["revenue_inr"].sum()), int(daily["orders"].sum())
    refunded = float(daily["refunded_inr"].sum())
    days = pd.date_range(min(daily.index), max(daily.index), freq="D").date
    per_day = pd.DataFrame(
        {"date": [d.isoformat() for d in days], "revenue_inr": daily["revenue_inr"].reindex(days, fill_value=0.0)}
    )

    def by(col: str, title: str, extra: list) -> _Table:
        g = (
            part.assign(**{col: part[col].fillna("(unknown)")})
            .groupby(col, sort=True)[["orders", "revenue_inr", "refunded_inr"]]
            .sum()
            .reset_index()
            .sort_values(["revenue_inr", col], ascending=[False, True])
        )
        return _table(
            g, [(col, title, None), ("orders", "Orders", fmt_count), ("revenue_inr", "Revenue", fmt_inr), *extra]
        )

    return {
        "kpis": [
            ("Revenue", fmt_inr(total)),
            ("Orders", fmt_count(orders)),
            ("Refunded", fmt_inr(refunded)),
            ("Average order value", fmt_inr(total / orders) if orders else "n/a"),
        ],
        "chart": charts.daily_revenue_chart(per_day),
        "by_channel": by("channel", "Channel", [("refunded_inr", "Refunded", fmt_inr)]),
        "by_geo": by("geo_country", "Country", []),
    }


_FUNNEL_COLS = [
    ("views", "Views", fmt_count),
    ("viewers", "Viewers", fmt_count),
    ("adders", "Adders", fmt_count),
    ("purchasers", "Purchasers", fmt_count),
    ("view_to_add_rate", "View→add", fmt_pct),
    ("add_to_purchase_rate", "Add→purchase", fmt_pct),
    ("units_sold", "Units", fmt_count),
    ("revenue_inr", "Revenue", fmt_inr),
    ("cart_abandonment_rate", "Cart abandonment", fmt_pct),
]


def _products(products, categories, carts) -> dict | None:
    if products is None and categories is None and carts is None:
        return None
    out: dict = {"carts": None, "categories": None, "top": None}
    if carts is not None:
        ab, pu, pe = (int(carts[f"carts_{s}"].sum()) for s in ("abandoned", "purchased", "pending"))
        out["carts"] = [
            ("Carts", fmt_count(ab + pu + pe)),
            ("Abandoned", fmt_count(ab)),
            ("Purchased", fmt_count(pu)),
            ("Pending", fmt_count(pe)),
            ("Abandonment rate", fmt_pct(ab / (ab + pu) if ab + pu else None)),
        ]
    if categories is not None:
        cat = categories.sort_values(["revenue_inr", "category"], ascending=[False, True])
        out["categories"] = _table(cat, [("category", "Category", None), *_FUNNEL_COLS])
    if products is not None:
        prod = products.sort_values(["revenue_inr", "product_id"], ascending=[False, True])
        out["top"] = _table(prod, [("product_id", "Product", None), ("name", "Name", None), *_FUNNEL_COLS], limit=20)
    return out


def _ltv(part: pd.DataFrame) -> dict:
    wide = part.pivot_table(
        index="cohort_month", columns="months_since_first_order", values="cumulative_revenue_per_person_inr"
    ).sort_index()
    cols = [("cohort_month", "Cohort", None)] + [(str(k), f"Month {k}", fmt_inr) for k in wide.columns]
    wide.columns = [str(k) for k in wide.columns]
    return {"chart": charts.ltv_chart(part), "table": _table(wide.reset_index(), cols)}


def _rfm(part: pd.DataFrame) -> list[dict]:
    out = []
    for as_of, scores in part.groupby("as_of", sort=True):
        cells = (
            scores.groupby(["r_score", "f_score"])
            .agg(persons=("person_id", "size"), money=("monetary_inr", "mean"))
            .reset_index()
            .sort_values(["r_score", "f_score"], ascending=[False, True])
        )
        cells["cell"] = "R" + cells["r_score"].astype(str) + " F" + cells["f_score"].astype(str)
        table = _table(
            cells, [("cell", "Cell", None), ("persons", "Buyers", fmt_count), ("money", "Mean monetary value", fmt_inr)]
        )
        out.append({"as_of": str(as_of), "chart": charts.rfm_chart(scores), "table": table})
    return out


def _times(generated_at: dt.datetime) -> tuple[str, str]:
    utc = generated_at.astimezone(dt.UTC)
    return utc.strftime("%Y-%m-%d %H:%M UTC"), utc.astimezone(IST).strftime("%Y-%m-%d %H:%M IST")


def render_tenant_page(
    tables: Mapping[str, pd.DataFrame],
    tenant: str,
    *,
    generated_at: dt.datetime,
    definitions: Definitions = Definitions(),
    title: str = "Livora analytics",
    sources: Sequence[str] = (),
    index_href: str | None = None,
) -> str:
    """One tenant's page: header (tenant, data dates, generation time, definitions) and its sections."""
    charts.reset_ids()
    dates = _dates(tables, tenant)
    funnel_steps = _of(tables, "funnel_steps", tenant)
    retention = _of(tables, "retention", tenant)
    revenue = _of(tables, "revenue_daily", tenant)
    products = _products(
        _of(tables, "product_funnel", tenant),
        _of(tables, "category_funnel", tenant),
        _of(tables, "cart_abandonment", tenant),
    )
    ltv = _of(tables, "ltv_cohorts", tenant)
    segments = _of(tables, "segment_sizes", tenant)
    rfm = _of(tables, "rfm_scores", tenant)
    unit = definitions.retention_period or "period"
    context = {
        "page_title": f"{title} · {tenant}",
        "title": title,
        "tenant": tenant,
        "date_range": f"{dates[0].isoformat()} to {dates[1].isoformat()}" if dates else "no dated rows",
        "generated_utc": _times(generated_at)[0],
        "generated_ist": _times(generated_at)[1],
        "sources": list(sources),
        "index_href": index_href,
        "definitions": {
            "funnel": definitions.funnel_text(
                sorted(funnel_steps["funnel"].astype(str).unique()) if funnel_steps is not None else ()
            ),
            "retention": definitions.retention_text(),
        },
        "funnels": _funnels(funnel_steps) if funnel_steps is not None else None,
        "retention": {"unit": unit, "chart": charts.retention_chart(retention, unit)}
        if retention is not None
        else None,
        "revenue": _revenue(revenue) if revenue is not None else None,
        "products": products,
        "ltv": _ltv(ltv) if ltv is not None else None,
        "segments": _table(
            segments.sort_values(["as_of", "segment"]),
            [
                ("as_of", "As of", None),
                ("segment", "Segment", None),
                ("members", "Members", fmt_count),
                ("evaluated_persons", "Evaluated", fmt_count),
            ],
        )
        if segments is not None
        else None,
        "rfm": _rfm(rfm) if rfm is not None else None,
    }
    context["sections"] = any(
        context[k] for k in ("funnels", "retention", "revenue", "products", "ltv", "segments", "rfm")
    )
    return _ENV.get_template("tenant.html.j2").render(context)


def tenant_summary(tables: Mapping[str, pd.DataFrame], tenant: str) -> str:
    """One line for the index: the data dates and the revenue, compact."""
    parts = []
    dates = _dates(tables, tenant)
    if dates:
        parts.append(f"{dates[0].isoformat()} to {dates[1].isoformat()}")
    revenue = _of(tables, "revenue_daily", tenant)
    if revenue is not None:
        parts.append(f"revenue {fmt_inr_compact(revenue['revenue_inr'].sum())}")
    return " · ".join(parts)


def render_index(
    tables: Mapping[str, pd.DataFrame],
    links: Mapping[str, str],
    *,
    generated_at: dt.datetime,
    title: str = "Livora analytics",
    sources: Sequence[str] = (),
) -> str:
    """The page linking one page per tenant (``links``: tenant → relative file name)."""
    utc, ist = _times(generated_at)
    tenants = [{"tenant": t, "href": href, "summary": tenant_summary(tables, t)} for t, href in sorted(links.items())]
    return _ENV.get_template("index.html.j2").render(
        page_title=title, title=title, generated_utc=utc, generated_ist=ist, sources=list(sources), tenants=tenants
    )
