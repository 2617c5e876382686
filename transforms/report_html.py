"""A static, self-contained HTML report of the batch analytics tables (inline SVG, no scripts).

Pure: DataFrames in, one HTML string out (no clock, no network; the same tables give the same bytes).
Sections appear only for the tables present: funnel bars (``funnel_steps``), a retention heatmap
(``retention``), daily revenue bars and revenue by channel (``revenue_daily``), product and category
funnels, cart abandonment, LTV curves by first-order cohort (``ltv_cohorts``) and segment sizes.
"""

from __future__ import annotations

import html
import math
from collections.abc import Callable, Mapping, Sequence

import pandas as pd

__all__ = [
    "bar_chart_svg",
    "funnel_svg",
    "heatmap_svg",
    "line_chart_svg",
    "render_report",
    "rfm_grid_svg",
    "table_html",
]

PALETTE = ["#2563eb", "#16a34a", "#ea580c", "#9333ea", "#0891b2", "#be123c", "#4d7c0f", "#a16207"]
CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;margin:24px;color:#111;max-width:1100px}
h1{font-size:22px}h2{font-size:18px;margin-top:32px;border-bottom:1px solid #ddd;padding-bottom:4px}
h3{font-size:15px;margin:18px 0 6px}
table{border-collapse:collapse;font-size:12px;margin:6px 0 12px}
th,td{border:1px solid #e5e7eb;padding:3px 6px;text-align:right}th{background:#f3f4f6}
td.l,th.l{text-align:left}.muted{color:#6b7280;font-size:12px}svg{display:block;margin:6px 0}
.kpis span{display:inline-block;margin-right:18px;font-size:14px}.kpis b{font-size:18px}
"""


def esc(value) -> str:
    return html.escape("" if value is None or (isinstance(value, float) and math.isnan(value)) else str(value))


def fmt_int(v) -> str:
    return "" if v is None or pd.isna(v) else f"{int(v):,}"


def fmt_pct(v) -> str:
    return "n/a" if v is None or pd.isna(v) else f"{100 * float(v):.1f}%"


def fmt_inr(v) -> str:
    return "" if v is None or pd.isna(v) else f"₹{float(v):,.2f}"


def fmt_num(v) -> str:
    return "" if v is None or pd.isna(v) else f"{float(v):,.2f}"


def fmt_duration(seconds) -> str:
    """Seconds as the largest sensible unit: 45s, 12.5m, 3.2h, 2.1d."""
    s = float(seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= size:
            return f"{s / size:.1f}{unit}"
    return f"{s:.0f}s"


def table_html(df: pd.DataFrame, columns: Sequence[tuple[str, str, Callable | None]], limit: int | None = None) -> str:
    """``columns``: (column, header, formatter or None for text, left-aligned)."""
    rows = df if limit is None else df.head(limit)
    head = "".join(f'<th class="{"l" if f is None else ""}">{esc(h)}</th>' for _c, h, f in columns)
    body = []
    for rec in rows.to_dict("records"):
        cells = []
        for col, _h, f in columns:
            value = rec.get(col)
            cells.append(f'<td class="l">{esc(value)}</td>' if f is None else f"<td>{esc(f(value))}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def funnel_svg(steps: pd.DataFrame, width: int = 720) -> str:
    """Horizontal bars, one per step: width ∝ persons, labelled with persons and conversion."""
    steps = steps.sort_values("step")
    top = max(int(steps["persons"].max() or 0), 1)
    bar_h, gap, label_w = 26, 8, 220
    height = len(steps) * (bar_h + gap) + gap
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img">']
    for i, rec in enumerate(steps.to_dict("records")):
        y = gap + i * (bar_h + gap)
        w = (width - label_w - 170) * int(rec["persons"]) / top
        label = f"{int(rec['step'])}. {rec['step_event']}"
        text = f"{fmt_int(rec['persons'])} · {fmt_pct(rec.get('conversion_overall'))}"
        if int(rec["step"]) > 1:
            text += f" (step {fmt_pct(rec.get('conversion_from_previous'))})"
            median = rec.get("median_time_to_convert_s")
            if median is not None and not pd.isna(median):
                text += f" · median {fmt_duration(median)}"
        parts.append(f'<text x="0" y="{y + 17}" font-size="12">{esc(label)}</text>')
        parts.append(
            f'<rect x="{label_w}" y="{y}" width="{w:.1f}" height="{bar_h}" fill="{PALETTE[0]}" rx="3">'
            f"<title>{esc(label)}: {esc(text)}</title></rect>"
        )
        parts.append(f'<text x="{label_w + w + 6:.1f}" y="{y + 17}" font-size="12">{esc(text)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _heat(rate: float) -> str:
    """White → blue by rate (0..1)."""
    r = max(0.0, min(1.0, float(rate)))
    return f"rgb({int(255 - 218 * r)},{int(255 - 156 * r)},{int(255 - 20 * r)})"


def heatmap_svg(retention: pd.DataFrame, width_cell: int = 56) -> str:
    """Cohorts as rows, periods as columns, cells coloured and labelled by the retention rate."""
    cohorts = sorted(retention["cohort_start"].unique())
    periods = sorted(int(p) for p in retention["period"].unique())
    left, top, cell_h = 170, 22, 22
    width = left + width_cell * len(periods) + 4
    height = top + cell_h * len(cohorts) + 4
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img">']
    for j, p in enumerate(periods):
        parts.append(
            f'<text x="{left + j * width_cell + width_cell / 2}" y="15" font-size="11" text-anchor="middle">{p}</text>'
        )
    index = {(r["cohort_start"], int(r["period"])): r for r in retention.to_dict("records")}
    for i, c in enumerate(cohorts):
        y = top + i * cell_h
        size = next((r["cohort_size"] for (cc, _p), r in index.items() if cc == c), None)
        parts.append(f'<text x="0" y="{y + 15}" font-size="11">{esc(c)} (n={fmt_int(size)})</text>')
        for j, p in enumerate(periods):
            rec = index.get((c, p))
            if rec is None:
                continue
            rate = rec["rate"] if not pd.isna(rec["rate"]) else 0.0
            x = left + j * width_cell
            color = "#fff" if rate > 0.55 else "#111"
            parts.append(
                f'<rect x="{x}" y="{y}" width="{width_cell - 2}" height="{cell_h - 2}" fill="{_heat(rate)}">'
                f"<title>{esc(c)} period {p}: {fmt_int(rec['persons'])} persons</title></rect>"
                f'<text x="{x + (width_cell - 2) / 2}" y="{y + 15}" font-size="10" text-anchor="middle" '
                f'fill="{color}">{fmt_pct(rec["rate"])}</text>'
            )
    parts.append("</svg>")
    return "".join(parts)


def _nice_max(v: float) -> float:
    if v <= 0:
        return 1.0
    mag = 10 ** math.floor(math.log10(v))
    for m in (1, 2, 2.5, 5, 10):
        if v <= m * mag:
            return m * mag
    return 10 * mag


def bar_chart_svg(
    labels: Sequence[str], values: Sequence[float], fmt=fmt_inr, width: int = 900, height: int = 240
) -> str:
    """Vertical bars with a labelled y axis (max and half) and sparse x labels."""
    n = max(len(values), 1)
    left, bottom, top = 90, 40, 10
    plot_w, plot_h = width - left - 10, height - top - bottom
    vmax = _nice_max(max([float(v) for v in values] + [0.0]))
    bw = plot_w / n
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img">']
    for frac in (0.0, 0.5, 1.0):
        y = top + plot_h * (1 - frac)
        parts.append(f'<line x1="{left}" y1="{y:.1f}" x2="{width - 10}" y2="{y:.1f}" stroke="#e5e7eb"/>')
        parts.append(
            f'<text x="{left - 6}" y="{y + 4:.1f}" font-size="10" text-anchor="end">{esc(fmt(vmax * frac))}</text>'
        )
    step = max(1, math.ceil(n / 12))
    for i, (label, v) in enumerate(zip(labels, values, strict=True)):
        h = plot_h * max(float(v), 0.0) / vmax
        x = left + i * bw
        parts.append(
            f'<rect x="{x + bw * 0.1:.1f}" y="{top + plot_h - h:.1f}" width="{bw * 0.8:.1f}" height="{h:.1f}" '
            f'fill="{PALETTE[0]}"><title>{esc(label)}: {esc(fmt(v))}</title></rect>'
        )
        if i % step == 0:
            parts.append(
                f'<text x="{x + bw / 2:.1f}" y="{height - bottom + 14}" font-size="10" text-anchor="middle">{esc(label)}</text>'
            )
    parts.append("</svg>")
    return "".join(parts)


def line_chart_svg(
    series: Mapping[str, Sequence[tuple[float, float]]], fmt=fmt_inr, width: int = 720, height: int = 260
) -> str:
    """One polyline per named series of (x, y) points, with a legend."""
    left, bottom, top, right = 90, 30, 10, 170
    plot_w, plot_h = width - left - right, height - top - bottom
    xs = [x for pts in series.values() for x, _ in pts] or [0.0]
    ys = [y for pts in series.values() for _, y in pts] or [0.0]
    xmax = max(max(xs), 1.0)
    ymax = _nice_max(max(ys))
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img">']
    for frac in (0.0, 0.5, 1.0):
        y = top + plot_h * (1 - frac)
        parts.append(f'<line x1="{left}" y1="{y:.1f}" x2="{left + plot_w}" y2="{y:.1f}" stroke="#e5e7eb"/>')
        parts.append(
            f'<text x="{left - 6}" y="{y + 4:.1f}" font-size="10" text-anchor="end">{esc(fmt(ymax * frac))}</text>'
        )
    for x in range(int(xmax) + 1):
        parts.append(
            f'<text x="{left + plot_w * x / xmax:.1f}" y="{height - 10}" font-size="10" text-anchor="middle">{x}</text>'
        )
    for k, (name, pts) in enumerate(series.items()):
        color = PALETTE[k % len(PALETTE)]
        coords = " ".join(f"{left + plot_w * x / xmax:.1f},{top + plot_h * (1 - y / ymax):.1f}" for x, y in pts)
        parts.append(f'<polyline points="{coords}" fill="none" stroke="{color}" stroke-width="2"/>')
        ly = top + 14 * k + 10
        parts.append(f'<rect x="{left + plot_w + 12}" y="{ly - 8}" width="10" height="10" fill="{color}"/>')
        parts.append(f'<text x="{left + plot_w + 26}" y="{ly + 1}" font-size="11">{esc(name)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def rfm_grid_svg(scores: pd.DataFrame, cell: int = 64) -> str:
    """Recency score (rows, 5 on top) by frequency score (columns): persons and their mean INR monetary value."""
    counts = scores.groupby(["r_score", "f_score"]).agg(persons=("person_id", "size"), money=("monetary_inr", "mean"))
    top = max(int(counts["persons"].max()), 1) if len(counts) else 1
    left, head = 60, 22
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{left + 5 * cell + 4}" height="{head + 5 * cell + 4}" role="img">'
    ]
    for f in range(1, 6):
        parts.append(f'<text x="{left + (f - 0.5) * cell}" y="15" font-size="11" text-anchor="middle">F{f}</text>')
    for i, r in enumerate(range(5, 0, -1)):
        y = head + i * cell
        parts.append(f'<text x="0" y="{y + cell / 2 + 4}" font-size="11">R{r}</text>')
        for f in range(1, 6):
            x = left + (f - 1) * cell
            persons = int(counts["persons"].get((r, f), 0)) if len(counts) else 0
            money = counts["money"].get((r, f), float("nan")) if len(counts) else float("nan")
            share = persons / top
            color = "#fff" if share > 0.55 else "#111"
            parts.append(
                f'<rect x="{x}" y="{y}" width="{cell - 2}" height="{cell - 2}" fill="{_heat(share)}">'
                f"<title>R{r} F{f}: {fmt_int(persons)} persons, mean {esc(fmt_inr(money))}</title></rect>"
                f'<text x="{x + (cell - 2) / 2}" y="{y + cell / 2 - 2}" font-size="12" text-anchor="middle" '
                f'fill="{color}">{fmt_int(persons)}</text>'
                f'<text x="{x + (cell - 2) / 2}" y="{y + cell / 2 + 12}" font-size="9" text-anchor="middle" '
                f'fill="{color}">{esc(fmt_inr(money)) if persons else ""}</text>'
            )
    parts.append("</svg>")
    return "".join(parts)


# --- sections -------------------------------------------------------------------------------


def _funnels(df: pd.DataFrame) -> str:
    out = ["<h2>Funnels</h2>"]
    keys = ["tenant_id", "funnel"] + (["breakdown_value"] if "breakdown_value" in df.columns else [])
    for key, steps in df.groupby(keys, sort=True, dropna=False):
        title = " · ".join(esc(k) for k in key if k is not None and not (isinstance(k, float) and math.isnan(k)))
        out.append(f"<h3>{title}</h3>")
        out.append(funnel_svg(steps))
    return "".join(out)


def _retention(df: pd.DataFrame) -> str:
    out = ["<h2>Retention</h2>"]
    for tenant, part in df.groupby("tenant_id", sort=True):
        out.append(f"<h3>{esc(tenant)}</h3>")
        out.append('<p class="muted">Rows: cohorts (start period, size); columns: periods since the cohort start.</p>')
        out.append(heatmap_svg(part))
    return "".join(out)


def _revenue(df: pd.DataFrame) -> str:
    out = ["<h2>Revenue (INR)</h2>"]
    for tenant, part in df.groupby("tenant_id", sort=True):
        daily = part.groupby("date", sort=True)[["orders", "revenue_inr", "refunded_inr"]].sum()
        total, orders = float(daily["revenue_inr"].sum()), int(daily["orders"].sum())
        refunded = float(daily["refunded_inr"].sum())
        out.append(f"<h3>{esc(tenant)}</h3>")
        out.append(
            f'<p class="kpis"><span>Revenue <b>{esc(fmt_inr(total))}</b></span><span>Orders <b>{fmt_int(orders)}</b></span>'
            f"<span>Refunded <b>{esc(fmt_inr(refunded))}</b></span>"
            f"<span>AOV <b>{esc(fmt_inr(total / orders if orders else float('nan')))}</b></span></p>"
        )
        # every day of the range gets a bar, zero when nothing was sold
        days = pd.date_range(min(daily.index), max(daily.index), freq="D").date
        values = daily["revenue_inr"].reindex(days, fill_value=0.0)
        out.append(bar_chart_svg([d.isoformat() for d in days], values.tolist()))
        by_channel = (
            part.assign(channel=part["channel"].fillna("(unknown)"))
            .groupby("channel", sort=True)[["orders", "buyers", "revenue_inr", "refunded_inr"]]
            .sum()
            .reset_index()
            .sort_values(["revenue_inr", "channel"], ascending=[False, True])
        )
        out.append(
            table_html(
                by_channel,
                [
                    ("channel", "Channel", None),
                    ("orders", "Orders", fmt_int),
                    ("revenue_inr", "Revenue", fmt_inr),
                    ("refunded_inr", "Refunded", fmt_inr),
                ],
            )
        )
        by_geo = (
            part.assign(geo_country=part["geo_country"].fillna("(unknown)"))
            .groupby("geo_country", sort=True)[["orders", "revenue_inr"]]
            .sum()
            .reset_index()
            .sort_values(["revenue_inr", "geo_country"], ascending=[False, True])
        )
        out.append(
            table_html(
                by_geo,
                [("geo_country", "Country", None), ("orders", "Orders", fmt_int), ("revenue_inr", "Revenue", fmt_inr)],
            )
        )
    return "".join(out)


_FUNNEL_COLS = [
    ("views", "Views", fmt_int),
    ("viewers", "Viewers", fmt_int),
    ("adders", "Adders", fmt_int),
    ("purchasers", "Purchasers", fmt_int),
    ("view_to_add_rate", "View→add", fmt_pct),
    ("add_to_purchase_rate", "Add→purchase", fmt_pct),
    ("units_sold", "Units", fmt_num),
    ("revenue_inr", "Revenue", fmt_inr),
    ("cart_abandonment_rate", "Cart abandonment", fmt_pct),
]


def _products(products: pd.DataFrame | None, categories: pd.DataFrame | None, carts: pd.DataFrame | None) -> str:
    out = ["<h2>Products</h2>"]
    tenants = sorted(
        set().union(*[set(t["tenant_id"]) for t in (products, categories, carts) if t is not None and len(t)])
    )
    for tenant in tenants:
        out.append(f"<h3>{esc(tenant)}</h3>")
        if carts is not None and len(carts):
            c = carts.loc[carts["tenant_id"] == tenant]
            ab, pu, pe = (int(c[f"carts_{s}"].sum()) for s in ("abandoned", "purchased", "pending"))
            rate = ab / (ab + pu) if ab + pu else float("nan")
            out.append(
                f'<p class="kpis"><span>Carts <b>{fmt_int(ab + pu + pe)}</b></span><span>Abandoned <b>{fmt_int(ab)}</b>'
                f"</span><span>Purchased <b>{fmt_int(pu)}</b></span><span>Pending <b>{fmt_int(pe)}</b></span>"
                f"<span>Abandonment rate <b>{fmt_pct(rate)}</b></span></p>"
            )
        if categories is not None and len(categories):
            cat = categories.loc[categories["tenant_id"] == tenant].sort_values(
                ["revenue_inr", "category"], ascending=[False, True]
            )
            out.append(table_html(cat, [("category", "Category", None), *_FUNNEL_COLS]))
        if products is not None and len(products):
            prod = products.loc[products["tenant_id"] == tenant].sort_values(
                ["revenue_inr", "product_id"], ascending=[False, True]
            )
            out.append('<p class="muted">Top 20 products by revenue.</p>')
            out.append(
                table_html(prod, [("product_id", "Product", None), ("name", "Name", None), *_FUNNEL_COLS], limit=20)
            )
    return "".join(out)


def _ltv(df: pd.DataFrame) -> str:
    out = ["<h2>Lifetime value by first-order cohort</h2>"]
    out.append('<p class="muted">Cumulative INR revenue per person by months since the first order.</p>')
    for tenant, part in df.groupby("tenant_id", sort=True):
        series = {}
        for cohort, rows in part.groupby("cohort_month", sort=True):
            rows = rows.sort_values("months_since_first_order")
            n = int(rows["cohort_size"].iloc[0])
            series[f"{cohort} (n={n})"] = list(
                zip(
                    rows["months_since_first_order"].astype(float),
                    rows["cumulative_revenue_per_person_inr"].astype(float),
                    strict=True,
                )
            )
        out.append(f"<h3>{esc(tenant)}</h3>")
        out.append(line_chart_svg(series))
        wide = part.pivot_table(
            index="cohort_month", columns="months_since_first_order", values="cumulative_revenue_per_person_inr"
        ).sort_index()
        cols = [("cohort_month", "Cohort", None)] + [(str(k), f"M{k}", fmt_inr) for k in wide.columns]
        wide.columns = [str(k) for k in wide.columns]
        out.append(table_html(wide.reset_index(), cols))
    return "".join(out)


def _segments(df: pd.DataFrame) -> str:
    out = ["<h2>Segments</h2>"]
    df = df.sort_values(["tenant_id", "as_of", "segment"])
    out.append(
        table_html(
            df,
            [
                ("tenant_id", "Tenant", None),
                ("as_of", "As of", None),
                ("segment", "Segment", None),
                ("members", "Members", fmt_int),
                ("evaluated_persons", "Evaluated", fmt_int),
            ],
        )
    )
    return "".join(out)


def _rfm(df: pd.DataFrame) -> str:
    out = [
        "<h2>RFM</h2>",
        '<p class="muted">Buyers by recency (rows) and frequency (columns) score; '
        "cells show persons and their mean monetary value.</p>",
    ]
    for (tenant, as_of), part in df.groupby(["tenant_id", "as_of"], sort=True):
        out.append(f"<h3>{esc(tenant)} · as of {esc(as_of)}</h3>")
        out.append(rfm_grid_svg(part))
    return "".join(out)


def render_report(
    tables: Mapping[str, pd.DataFrame], title: str = "Livora analytics", sources: Sequence[str] = ()
) -> str:
    """The whole page; sections for the tables present (keys as the output file names, without .parquet)."""
    body = [f"<h1>{esc(title)}</h1>"]
    if sources:
        body.append('<p class="muted">From: ' + ", ".join(esc(s) for s in sources) + "</p>")

    def has(name: str) -> bool:
        return name in tables and tables[name] is not None and len(tables[name]) > 0

    if has("funnel_steps"):
        body.append(_funnels(tables["funnel_steps"]))
    if has("retention"):
        body.append(_retention(tables["retention"]))
    if has("revenue_daily"):
        body.append(_revenue(tables["revenue_daily"]))
    if has("product_funnel") or has("category_funnel") or has("cart_abandonment"):
        body.append(
            _products(tables.get("product_funnel"), tables.get("category_funnel"), tables.get("cart_abandonment"))
        )
    if has("ltv_cohorts"):
        body.append(_ltv(tables["ltv_cohorts"]))
    if has("segment_sizes"):
        body.append(_segments(tables["segment_sizes"]))
    if has("rfm_scores"):
        body.append(_rfm(tables["rfm_scores"]))
    if len(body) <= 2:
        body.append("<p>No analytics tables found in the inputs.</p>")
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{esc(title)}</title><style>{CSS}</style></head><body>{''.join(body)}</body></html>"
    )
