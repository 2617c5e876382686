"""pipelines.report: the static HTML page shows the figures of the tables it was given."""

from __future__ import annotations

import datetime as dt
import os
import re
from html.parser import HTMLParser

import pandas as pd
import pytest

from connectors.analytics_io import write_table
from pipelines import product_analytics, report
from pipelines.errors import InputError
from tests.analytics_lake import generate_rows, write_lake


class TagCounter(HTMLParser):
    def __init__(self):
        super().__init__()
        self.open, self.counts, self.text = [], {}, []

    def handle_starttag(self, tag, attrs):
        self.counts[tag] = self.counts.get(tag, 0) + 1
        if tag not in ("meta", "line", "rect", "polyline", "br"):
            self.open.append(tag)

    def handle_startendtag(self, tag, attrs):
        self.counts[tag] = self.counts.get(tag, 0) + 1

    def handle_endtag(self, tag):
        if tag in ("line", "rect", "polyline"):
            return
        assert self.open and self.open[-1] == tag, f"unbalanced </{tag}>"
        self.open.pop()

    def handle_data(self, data):
        self.text.append(data)


def render(*args: str) -> str:
    path = report.run(list(args))
    with open(path, encoding="utf-8") as handle:
        return handle.read()


def parse(page: str) -> TagCounter:
    parser = TagCounter()
    parser.feed(page)
    assert parser.open == [], "unclosed tags"
    return parser


@pytest.fixture
def outputs(tmp_path):
    out = tmp_path / "out"
    write_table(
        str(out / "funnel_steps.parquet"),
        pd.DataFrame(
            {
                "tenant_id": ["acme-in"] * 3,
                "funnel": ["checkout"] * 3,
                "step": [1, 2, 3],
                "step_event": ["Product Viewed", "Product Added", "Order Completed"],
                "persons": [1234, 617, 150],
                "conversion_from_previous": [1.0, 0.5, 150 / 617],
                "conversion_overall": [1.0, 0.5, 150 / 1234],
                "median_time_to_convert_s": [None, 750.0, 2 * 86400 + 8640],
            }
        ),
    )
    write_table(
        str(out / "retention.parquet"),
        pd.DataFrame(
            {
                "tenant_id": ["acme-in"] * 3,
                "cohort_start": [dt.date(2026, 10, 5)] * 2 + [dt.date(2026, 10, 12)],
                "period": [0, 1, 0],
                "persons": [40, 9, 30],
                "cohort_size": [40, 40, 30],
                "rate": [1.0, 0.225, 1.0],
            }
        ),
    )
    write_table(
        str(out / "revenue_daily.parquet"),
        pd.DataFrame(
            {
                "tenant_id": ["acme-in"] * 3,
                "date": [dt.date(2026, 10, 1), dt.date(2026, 10, 1), dt.date(2026, 10, 3)],
                "channel": ["email", None, "email"],
                "geo_country": ["IN", "IN", "US"],
                "geo_region": ["MH", "KA", "CA"],
                "orders": [2, 1, 1],
                "buyers": [2, 1, 1],
                "revenue_inr": [1000.5, 234.25, 10000.0],
                "units": [3.0, 1.0, 4.0],
                "refunds": [0, 1, 0],
                "refunded_inr": [0.0, 100.0, 0.0],
                "net_revenue_inr": [1000.5, 134.25, 10000.0],
                "average_order_value_inr": [500.25, 234.25, 10000.0],
            }
        ),
    )
    seg_dir = out / "segment_sizes" / "as_of=2026-10-20" / "tenant_id=acme-in"
    write_table(
        str(seg_dir / "part-00000.parquet"),
        pd.DataFrame({"segment": ["vip"], "rule_version": ["abc"], "members": [4321], "evaluated_persons": [99999]}),
        csv=False,
    )
    rfm_dir = out / "rfm_scores" / "as_of=2026-10-20" / "tenant_id=acme-in"
    write_table(
        str(rfm_dir / "part-00000.parquet"),
        pd.DataFrame(
            {
                "person_id": ["a", "b", "c"],
                "recency_days": [1.0, 2.0, 90.0],
                "orders": [5, 4, 1],
                "monetary_inr": [1000.0, 3000.0, 50.0],
                "r_score": [5, 5, 1],
                "f_score": [5, 5, 1],
                "m_score": [4, 5, 1],
                "rfm_cell": ["5-5-4", "5-5-5", "1-1-1"],
            }
        ),
        csv=False,
    )
    return out


def test_report_shows_the_figures(outputs, tmp_path):
    page = render("--input", str(outputs), "--output", str(tmp_path / "r.html"), "--title", "Acme weekly")
    parsed = parse(page)
    text = " ".join(parsed.text)
    assert "Acme weekly" in text
    # funnel bars: one per step, persons and conversion shown
    assert "1,234 · 100.0%" in text and "617 · 50.0% (step 50.0%) · median 12.5m" in text
    assert "150 · 12.2% (step 24.3%) · median 2.1d" in text
    # retention heatmap: the rates in cells, cohort sizes on rows
    assert "22.5%" in text and "2026-10-05 (n=40)" in text and "2026-10-12 (n=30)" in text
    # revenue KPIs: totals over channels and days; a bar per day including the empty 2 Oct
    assert "₹11,234.75" in text and "₹100.00" in text
    assert "2026-10-02: ₹0.00" in text
    assert "(unknown)" in text  # the null channel
    # segments
    assert "4,321" in text and "vip" in text
    # RFM grid: two buyers in R5 F5 with a mean of 2,000 INR, one in R1 F1
    assert "R5 F5: 2 persons, mean ₹2,000.00" in text and "R1 F1: 1 persons, mean ₹50.00" in text
    # charts are inline SVG
    assert parsed.counts["svg"] >= 3 and parsed.counts["rect"] >= 3 + 3 + 3


def test_report_is_self_contained_and_deterministic(outputs, tmp_path):
    a = render("--input", str(outputs), "--output", str(tmp_path / "a.html"))
    b = render("--input", str(outputs), "--output", str(tmp_path / "b.html"))
    assert a == b
    assert "<script" not in a.lower()
    urls = set(re.findall(r"https?://[^\s\"'<>)]+", a))
    assert urls <= {"http://www.w3.org/2000/svg"}  # the SVG namespace only, nothing fetched
    assert not re.search(r"\b(src|href)\s*=", a)


def test_only_present_tables_get_sections(tmp_path):
    out = tmp_path / "only_revenue"
    write_table(
        str(out / "revenue_daily.parquet"),
        pd.DataFrame(
            {
                "tenant_id": ["t"],
                "date": [dt.date(2026, 10, 1)],
                "channel": ["direct"],
                "geo_country": ["IN"],
                "geo_region": ["MH"],
                "orders": [1],
                "buyers": [1],
                "revenue_inr": [10.0],
                "units": [1.0],
                "refunds": [0],
                "refunded_inr": [0.0],
                "net_revenue_inr": [10.0],
                "average_order_value_inr": [10.0],
            }
        ),
    )
    page = render("--input", str(out), "--output", str(tmp_path / "r.html"))
    assert "Revenue (INR)" in page and "Funnels" not in page and "Retention" not in page
    empty = tmp_path / "empty"
    os.makedirs(empty)
    page = render("--input", str(empty), "--output", str(tmp_path / "e.html"))
    assert "No analytics tables found" in page


def test_report_over_a_product_analytics_run(tmp_path):
    lake = tmp_path / "lake"
    write_lake(str(lake), generate_rows(persons=30, seed=2, days=20))
    product_analytics.run(["--lake", str(lake), "--output", str(tmp_path / "out"), "--buckets", "2"])
    products = pd.read_parquet(tmp_path / "out" / "product_funnel.parquet")
    page = render("--input", str(tmp_path / "out"), "--output", str(tmp_path / "r.html"))
    parse(page)
    top = products.loc[products["tenant_id"] == "acme-in"].sort_values("revenue_inr", ascending=False).iloc[0]
    assert f"₹{top['revenue_inr']:,.2f}" in page and str(top["name"]) in page
    assert "Lifetime value by first-order cohort" in page and "<polyline" in page
    with pytest.raises(InputError, match="no such directory"):
        report.run(["--input", str(tmp_path / "missing"), "--output", str(tmp_path / "x.html")])
