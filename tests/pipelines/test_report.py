"""pipelines.report: the static HTML pages show the figures of the tables they were given, escaped."""

from __future__ import annotations

import datetime as dt
import os
import re
from html.parser import HTMLParser

import pandas as pd
import pytest
import vl_convert
from hypothesis import given
from hypothesis import strategies as st

from connectors.analytics_io import write_table
from pipelines import product_analytics, report
from pipelines.errors import InputError, UsageError
from pipelines.report_page.formatting import INR_COMPACT_VEGA_EXPR, fmt_count, fmt_inr, fmt_inr_compact
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


FIXED = ["--generated-at", "2026-10-20T06:30:00+00:00"]


def test_report_shows_the_figures(outputs, tmp_path):
    index = render("--input", str(outputs), "--output", str(tmp_path / "r.html"), "--title", "Acme weekly", *FIXED)
    assert 'href="r-acme-in.html"' in index and "revenue ₹11,235" in index
    page = (tmp_path / "r-acme-in.html").read_text(encoding="utf-8")
    parsed = parse(page)
    text = " ".join(parsed.text)
    assert "Acme weekly · acme-in" in text
    # header: data dates over all tables (revenue from 1 Oct, segments as of 20 Oct), UTC and IST (+5:30)
    assert "2026-10-01 to 2026-10-20" in text
    assert "2026-10-20 06:30 UTC" in text and "2026-10-20 12:00 IST" in text
    # funnel bars: one per step, persons and conversion shown
    assert "1,234 · 100.0%" in text and "617 · 50.0% (step 50.0%) · median 12.5m" in text
    assert "150 · 12.2% (step 24.3%) · median 2.1d" in text
    assert page.count('class="bar"') == 3 and 'style="width:50.0%"' in page
    # retention heatmap: the rates in cells, cohort sizes on rows, titled axes
    assert "22.5" in text and "2026-10-05 (n=40)" in text and "2026-10-12 (n=30)" in text
    assert "Cohort (start, size)" in text and "periods since the cohort start" in text.lower()
    # revenue KPIs in whole rupees with Indian grouping: totals over channels and days
    assert "₹11,235" in text and "₹100" in text and "₹2,809" in text  # AOV 11,234.75 / 4
    assert "Revenue (₹)" in text and "Date (local day of the order)" in text
    assert "(unknown)" in text  # the null channel
    # segments
    assert "4,321" in text and "vip" in text
    # RFM grid: two buyers in R5 F5 with a mean of 2,000 INR, one in R1 F1
    assert "R5 F5 2 ₹2,000" in " ".join(t.strip() for t in parsed.text if t.strip())
    assert "R1 F1 1 ₹50" in " ".join(t.strip() for t in parsed.text if t.strip())
    assert "Recency score (5 = most recent)" in text and "Frequency score (5 = most orders)" in text
    # charts are inline SVG, each at two widths
    assert parsed.counts["svg"] == 2 * 3


def test_header_shows_the_definitions(outputs, tmp_path):
    args = ["--input", str(outputs), "--output", str(tmp_path / "t.html"), "--tenant", "acme-in", *FIXED]
    text = " ".join(parse(render(*args)).text)
    assert "window not recorded" in text and "period not recorded" in text
    defined = [
        *args,
        "--funnel-window",
        "1800",
        "--funnel-mode",
        "strict",
        "--retention-start-event",
        "Signed Up",
        "--retention-return-event",
        "Order Completed",
        "--retention-period",
        "week",
    ]
    text = " ".join(parse(render(*defined)).text)
    assert "window 30.0m from step 1 · mode strict" in text
    assert "start event Signed Up · return event Order Completed · period week" in text
    assert "Weeks since the cohort start" in text


def test_report_is_self_contained_and_deterministic(outputs, tmp_path):
    a = render("--input", str(outputs), "--output", str(tmp_path / "a" / "r.html"), *FIXED)
    b = render("--input", str(outputs), "--output", str(tmp_path / "b" / "r.html"), *FIXED)
    assert a == b
    page_a = (tmp_path / "a" / "r-acme-in.html").read_text(encoding="utf-8")
    assert page_a == (tmp_path / "b" / "r-acme-in.html").read_text(encoding="utf-8")
    for page in (a, page_a):
        assert "<script" not in page.lower()
        urls = set(re.findall(r"https?://[^\s\"'<>)]+", page))
        assert urls <= {"http://www.w3.org/2000/svg", "http://www.w3.org/1999/xlink"}  # namespaces, nothing fetched
        assert not re.search(r"\bsrc\s*=", page)
        assert set(re.findall(r'href="([^"]*)"', page)) <= {"r.html", "r-acme-in.html"}  # the other page only
    # ids of the inline SVGs (clip paths, gradients) never repeat within a page
    ids = re.findall(r'\bid="([^"]+)"', page_a)
    assert len(ids) == len(set(ids))


def _two_tenants(tmp_path):
    out = tmp_path / "two"
    write_table(
        str(out / "funnel_steps.parquet"),
        pd.DataFrame(
            {
                "tenant_id": ["acme-in", "acme-in", "<b>evil</b>", "<b>evil</b>"],
                "funnel": ["f", "f", "f", "f"],
                "step": [1, 2, 1, 2],
                "step_event": ["A", "B", "<img src=x onerror=alert(1)>", "Order Completed"],
                "persons": [10, 5, 7, 3],
                "conversion_from_previous": [1.0, 0.5, 1.0, 3 / 7],
                "conversion_overall": [1.0, 0.5, 1.0, 3 / 7],
                "median_time_to_convert_s": [None, 46.0, None, 60.0],
            }
        ),
    )
    return out


def test_one_page_per_tenant_and_an_index(tmp_path):
    out = _two_tenants(tmp_path)
    index = render("--input", str(out), "--output", str(tmp_path / "site" / "index.html"), *FIXED)
    pages = sorted(p.name for p in (tmp_path / "site").iterdir())
    assert len(pages) == 3 and "index-acme-in.html" in pages
    evil = next(p for p in pages if p not in ("index.html", "index-acme-in.html"))
    assert re.fullmatch(r"index-b_evil_b-[0-9a-f]{10}\.html", evil)  # a slug and a hash, never the raw id
    assert f'href="{evil}"' in index and "&lt;b&gt;evil&lt;/b&gt;" in index and "<b>evil" not in index
    acme = (tmp_path / "site" / "index-acme-in.html").read_text(encoding="utf-8")
    assert "1. A" in acme and "onerror" not in acme  # only its own tenant's rows
    # --tenant: that page only, at --output, without a link to an index
    single = render("--input", str(out), "--output", str(tmp_path / "one.html"), "--tenant", "<b>evil</b>", *FIXED)
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix == ".html") == ["one.html"]
    assert "All tenants" not in single and "1. A<" not in single
    with pytest.raises(UsageError, match="not in the input tables"):
        report.run(["--input", str(out), "--output", str(tmp_path / "x.html"), "--tenant", "nobody"])


def test_values_from_data_are_escaped(tmp_path):
    out = _two_tenants(tmp_path)
    write_table(
        str(out / "product_funnel.parquet"),
        pd.DataFrame(
            {
                "tenant_id": ["<b>evil</b>"],
                "product_id": ["p-1"],
                "name": ["<script>alert('x')</script>"],
                "views": [10],
                "viewers": [8],
                "adders": [4],
                "purchasers": [2],
                "view_to_add_rate": [0.5],
                "add_to_purchase_rate": [0.5],
                "units_sold": [51.0],
                "revenue_inr": [410681.0],
                "cart_abandonment_rate": [0.5],
            }
        ),
    )
    page = render("--input", str(out), "--output", str(tmp_path / "e.html"), "--tenant", "<b>evil</b>", *FIXED)
    parsed = parse(page)
    assert "<script" not in page and "<img" not in page and "<b>evil" not in page
    assert "script" not in parsed.counts and "img" not in parsed.counts
    cells = [t.strip() for t in parsed.text if t.strip()]
    # the names render as text, exactly as in the data
    assert "<script>alert('x')</script>" in cells and "1. <img src=x onerror=alert(1)>" in cells
    assert "<b>evil</b>" in cells
    # units are a count: 51, not 51.00; revenue in Indian grouping
    assert "51" in cells and "51.00" not in page and "₹4,10,681" in cells


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
    render("--input", str(out), "--output", str(tmp_path / "r.html"))
    page = (tmp_path / "r-t.html").read_text(encoding="utf-8")
    assert (
        "<h2>Revenue (INR)</h2>" in page and "Funnels" not in page and "Retention" not in page
    )  # nor their definitions
    empty = tmp_path / "empty"
    os.makedirs(empty)
    page = render("--input", str(empty), "--output", str(tmp_path / "e.html"))
    assert "No analytics tables found" in page


def test_report_over_a_product_analytics_run(tmp_path):
    lake = tmp_path / "lake"
    write_lake(str(lake), generate_rows(persons=30, seed=2, days=20))
    product_analytics.run(["--lake", str(lake), "--output", str(tmp_path / "out"), "--buckets", "2"])
    products = pd.read_parquet(tmp_path / "out" / "product_funnel.parquet")
    page = render("--input", str(tmp_path / "out"), "--output", str(tmp_path / "r.html"), "--tenant", "acme-in")
    parse(page)
    top = products.loc[products["tenant_id"] == "acme-in"].sort_values("revenue_inr", ascending=False).iloc[0]
    assert fmt_inr(top["revenue_inr"]) in page and str(top["name"]) in page
    assert "Lifetime value by first-order cohort" in page and "Months since the first order" in page
    assert "Cumulative revenue per person (₹)" in page and "First-order cohort" in page
    with pytest.raises(InputError, match="no such directory"):
        report.run(["--input", str(tmp_path / "missing"), "--output", str(tmp_path / "x.html")])


@pytest.mark.parametrize(
    ("value", "full", "compact"),
    [
        (410681, "₹4,10,681", "₹4.1 L"),
        (12_345_678.9, "₹1,23,45,679", "₹1.2 Cr"),
        (1.2e7, "₹1,20,00,000", "₹1.2 Cr"),
        (1e7, "₹1,00,00,000", "₹1 Cr"),
        (9_996_000, "₹99,96,000", "₹1 Cr"),  # 99.96 L would round to "100 L": a crore
        (12_345_678_901, "₹12,34,56,78,901", "₹1,234.6 Cr"),
        (100_000, "₹1,00,000", "₹1 L"),
        (99_999, "₹99,999", "₹1 L"),
        (45_300, "₹45,300", "₹45,300"),
        (999, "₹999", "₹999"),
        (0.5, "₹1", "₹1"),  # half away from zero, not to even
        (2.5, "₹3", "₹3"),
        (0, "₹0", "₹0"),
        (-0.2, "₹0", "₹0"),  # no "-₹0"
        (-410681, "-₹4,10,681", "-₹4.1 L"),
        (-1.2e7, "-₹1,20,00,000", "-₹1.2 Cr"),
        (None, "", ""),
        (float("nan"), "", ""),
    ],
)
def test_inr_uses_indian_grouping(value, full, compact):
    assert fmt_inr(value) == full
    assert fmt_inr_compact(value) == compact


@given(st.integers(min_value=0, max_value=10**15))
def test_indian_grouping_is_three_then_twos(n):
    text = fmt_inr(n).removeprefix("₹")
    groups = text.split(",")
    assert int("".join(groups)) == n
    assert len(groups[-1]) == (3 if n >= 1000 else len(str(n)))
    assert all(len(g) == 2 for g in groups[1:-1]) and 1 <= len(groups[0]) <= (2 if n >= 1000 else 3)


def test_counts_are_integers():
    assert [fmt_count(v) for v in (51.0, 51, 0.0, 1234567.0, None)] == ["51", "51", "0", "12,34,567", ""]


def test_chart_axis_labels_follow_the_compact_rule():
    """The Vega expression on INR axes gives the same text as fmt_inr_compact (rendered by vl-convert)."""
    values = [0, 45_300, 99_999, 410_681, 9_996_000, 12_000_000]
    spec = {
        "data": {"values": [{"v": v, "i": i} for i, v in enumerate(values)]},
        "mark": {"type": "text"},
        "encoding": {
            "y": {"field": "i", "type": "ordinal"},
            "text": {"field": "label", "type": "nominal"},
        },
        "transform": [{"calculate": INR_COMPACT_VEGA_EXPR.replace("datum.value", "datum.v"), "as": "label"}],
    }
    svg = vl_convert.vegalite_to_svg(spec)
    rendered = re.findall(r"<text[^>]*>([^<]*)</text>", svg)
    assert [r for r in rendered if r.startswith(("₹", "-₹"))] == [fmt_inr_compact(v) for v in values]


def test_definitions_come_from_the_run_records_of_the_inputs(tmp_path, monkeypatch):
    """funnels/retention run through main() append run records to the lake; --runs LAKE reads their flags."""
    from pipelines import funnels, retention

    monkeypatch.setattr("pipelines.options.configure_logging", lambda level, fmt: None)
    lake = tmp_path / "lake"
    write_lake(str(lake), generate_rows(persons=20, seed=5, days=30))
    funnel_out, retention_out = tmp_path / "funnels", tmp_path / "retention"
    steps = "Product Viewed,Order Completed"
    funnels.main(["--lake", str(lake), "--steps", steps, "--window", "3600", "--output", str(funnel_out)])
    funnels.main(  # a later run with other flags into another directory: not the one the report reads
        ["--lake", str(lake), "--steps", steps, "--window", "60", "--output", str(tmp_path / "other")]
    )
    retention.main(
        [
            *("--lake", str(lake), "--start-event", "Product Viewed", "--return-event", "Order Completed"),
            *("--period", "month", "--periods", "2", "--output", str(retention_out)),
        ]
    )
    args = ["--input", str(funnel_out), "--input", str(retention_out), "--tenant", "acme-in", *FIXED]
    text = " ".join(parse(render(*args, "--output", str(tmp_path / "a.html"), "--runs", str(lake))).text)
    assert "adhoc: window 1.0h from step 1 · mode ordered" in text  # ordered: the funnels default, as run
    assert "start event Product Viewed · return event Order Completed · period month · first_time" in text
    assert "Months since the cohort start" in text
    # a flag given to the report wins over the record
    page = render(*args, "--output", str(tmp_path / "b.html"), "--runs", str(lake), "--funnel-mode", "strict")
    assert "adhoc: window 1.0h from step 1 · mode strict" in " ".join(parse(page).text)
    # without --runs: not recorded
    text = " ".join(parse(render(*args, "--output", str(tmp_path / "c.html"))).text)
    assert "adhoc: window not recorded" in text and "start event not recorded" in text
