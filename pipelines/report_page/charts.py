"""Charts of the report: Vega-Lite specs built with Altair, rendered to static SVG by vl-convert.

vl-convert runs Vega in an embedded JavaScript engine inside the Python process: no browser, no network,
no script in the page, and the same spec gives the same bytes. Every chart is rendered twice, at a
desktop and a phone width, and the page shows one of the two by CSS media query, so that axis labels
keep a readable size on a 390 px screen instead of a scaled-down desktop chart.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass

import altair as alt
import pandas as pd
import vl_convert as vlc

from pipelines.report_page.formatting import INR_COMPACT_VEGA_EXPR

__all__ = ["Chart", "daily_revenue_chart", "ltv_chart", "retention_chart", "rfm_chart"]

WIDE, NARROW = 960, 340
FONT = "DejaVu Sans, Liberation Sans, Arial, sans-serif"
_ids = itertools.count(1)


@dataclass(frozen=True)
class Chart:
    """One chart at two widths; ``wide`` and ``narrow`` are SVG documents."""

    wide: str
    narrow: str
    description: str


def _config(chart: alt.Chart, width: int, height: int | alt.Step) -> dict:
    narrow = width < 600
    # fit the width only: the whole SVG (axes and legend included) is exactly `width` wide, and rows of a
    # heatmap keep their step height however many there are
    spec = (
        chart.properties(width=width, height=height, autosize=alt.AutoSizeParams(type="fit-x", contains="padding"))
        .configure(font=FONT, background="white")
        .configure_axis(labelFontSize=11, titleFontSize=12, labelLimit=140, titleLimit=width)
        .configure_legend(
            labelFontSize=11, titleFontSize=12, labelLimit=160, orient="bottom", columns=2 if narrow else 4
        )
        .configure_view(stroke=None)
    )
    return spec.to_dict()


def _svg(spec: dict) -> str:
    svg = vlc.vegalite_to_svg(spec)
    # several inline SVGs share one document: keep their ids (clip paths, gradients) apart
    prefix = f"c{next(_ids)}-"
    svg = re.sub(r'id="([^"]+)"', lambda m: f'id="{prefix}{m.group(1)}"', svg)
    return re.sub(r"url\(#([^)]+)\)", lambda m: f"url(#{prefix}{m.group(1)})", svg)


def _render(build, height, narrow_height=None, description: str = "") -> Chart:
    return Chart(
        wide=_svg(_config(build(False), WIDE, height)),
        narrow=_svg(_config(build(True), NARROW, narrow_height or height)),
        description=description,
    )


def reset_ids() -> None:
    """Restart the id prefixes, so that the same tables give the same page bytes."""
    global _ids
    _ids = itertools.count(1)


def _inr_axis(title: str) -> alt.Axis:
    return alt.Axis(title=title, labelExpr=INR_COMPACT_VEGA_EXPR, tickCount=5)


def daily_revenue_chart(days: pd.DataFrame) -> Chart:
    """``days``: date (ISO string) and revenue_inr, one row per day of the range (zero days included)."""

    def build(narrow: bool) -> alt.Chart:
        return (
            alt.Chart(days)
            .mark_bar(color="#2563eb")
            .encode(
                x=alt.X(
                    "date:O",
                    title="Date (local day of the order)",
                    axis=alt.Axis(
                        labelExpr="utcFormat(toDate(datum.value), '%d %b')",
                        labelAngle=0,
                        labelOverlap="greedy",
                        labelSeparation=6,
                    ),
                ),
                y=alt.Y("revenue_inr:Q", axis=_inr_axis("Revenue (₹)")),
            )
        )

    return _render(build, 220, 200, "Revenue per day in INR; days without orders show no bar.")


def retention_chart(retention: pd.DataFrame, period_unit: str) -> Chart:
    """Cohorts (rows) by periods since the cohort start (columns), coloured and labelled by the rate."""
    starts = pd.to_datetime(retention["cohort_start"].astype(str))
    sizes = " (n=" + retention["cohort_size"].astype(int).astype(str) + ")"
    df = retention.assign(
        cohort=starts.dt.strftime("%Y-%m-%d") + sizes,
        # a phone has no room for the year: "03 Aug (n=40)"; sorted by the full date all the same
        cohort_short=starts.dt.strftime("%d %b") + sizes,
        order=starts.dt.strftime("%Y-%m-%d"),
        pct=(retention["rate"].astype(float) * 100).round(1),
    )[["cohort", "cohort_short", "order", "period", "rate", "pct"]]
    unit = period_unit or "period"

    def build(narrow: bool) -> alt.Chart:
        base = alt.Chart(df).encode(
            x=alt.X(
                "period:O",
                title=f"{unit.capitalize()}s since {'cohort' if narrow else 'the cohort'} start",
                axis=alt.Axis(labelAngle=0, titleAnchor="start" if narrow else None),
            ),
            y=alt.Y(
                "cohort_short:N" if narrow else "cohort:N",
                title="Cohort (start, size)",
                sort=alt.EncodingSortField("order", op="min"),
            ),
        )
        cells = base.mark_rect().encode(
            color=alt.Color("rate:Q", scale=alt.Scale(scheme="blues", domain=[0, 1]), legend=None)
        )
        text = base.mark_text(fontSize=9 if narrow else 11).encode(
            text=alt.Text("pct:Q", format=".0f" if narrow else ".1f"),
            color=alt.condition("datum.rate > 0.55", alt.value("white"), alt.value("#111")),
        )
        return cells + text

    return _render(build, alt.Step(24), alt.Step(22), "Retention rate (%) per cohort and period.")


def ltv_chart(ltv: pd.DataFrame) -> Chart:
    """Cumulative revenue per person by months since the first order, one line per first-order cohort."""
    df = ltv.assign(
        cohort=ltv["cohort_month"].astype(str) + " (n=" + ltv["cohort_size"].astype(int).astype(str) + ")",
    )[["cohort", "months_since_first_order", "cumulative_revenue_per_person_inr"]]

    def build(narrow: bool) -> alt.Chart:
        return (
            alt.Chart(df)
            .mark_line(point=True)
            .encode(
                x=alt.X(
                    "months_since_first_order:Q",
                    title="Months since the first order",
                    axis=alt.Axis(tickMinStep=1, format="d"),
                ),
                y=alt.Y("cumulative_revenue_per_person_inr:Q", axis=_inr_axis("Cumulative revenue per person (₹)")),
                color=alt.Color("cohort:N", title="First-order cohort"),
            )
        )

    return _render(build, 240, 220, "Cumulative INR revenue per person by months since the first order.")


def rfm_chart(scores: pd.DataFrame) -> Chart:
    """Buyers by recency (rows, 5 on top) and frequency (columns) score."""
    grid = (
        scores.groupby(["r_score", "f_score"])
        .agg(persons=("person_id", "size"), money=("monetary_inr", "mean"))
        .reset_index()
    )[["r_score", "f_score", "persons"]]

    def build(narrow: bool) -> alt.Chart:
        base = alt.Chart(grid).encode(
            x=alt.X(
                "f_score:O",
                title="Frequency score (5 = most orders)",
                scale=alt.Scale(domain=[1, 2, 3, 4, 5]),
                axis=alt.Axis(labelAngle=0),
            ),
            y=alt.Y("r_score:O", title="Recency score (5 = most recent)", scale=alt.Scale(domain=[5, 4, 3, 2, 1])),
        )
        cells = base.mark_rect().encode(color=alt.Color("persons:Q", scale=alt.Scale(scheme="blues"), legend=None))
        text = base.mark_text(fontSize=11).encode(text=alt.Text("persons:Q", format="d"))
        return cells + text

    return _render(build, alt.Step(40), alt.Step(36), "Buyers per recency and frequency score cell.")
