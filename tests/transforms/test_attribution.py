"""UTM extraction, referrer hosts and the channel rules (docs/enrichment.md#channels)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from transforms.attribution import attribute, classify_channel, hostname, is_same_site

SHOP = "https://www.acme.in/products/kurta-42"


@pytest.mark.parametrize(
    ("page_url", "referrer", "campaign", "channel"),
    [
        # direct: nothing, or only the shop itself as referrer (self-referral)
        (SHOP, None, None, "direct"),
        (SHOP, "", None, "direct"),
        (SHOP, "https://www.acme.in/collections/all", None, "direct"),
        (SHOP, "https://acme.in/", None, "direct"),
        ("https://shop.acme.in/cart", "https://www.acme.in/", None, "direct"),
        # organic search
        (SHOP, "https://www.google.com/", None, "organic_search"),
        (SHOP, "https://www.google.co.in/search?q=kurta", None, "organic_search"),
        (SHOP, "https://www.bing.com/search?q=kurta", None, "organic_search"),
        (SHOP, "https://duckduckgo.com/", None, "organic_search"),
        (SHOP, "https://in.search.yahoo.com/", None, "organic_search"),
        # paid search: click ids and paid mediums
        (SHOP + "?gclid=Cj0KCQ", "https://www.google.co.in/", None, "paid_search"),
        (SHOP + "?gclid=Cj0KCQ", None, None, "paid_search"),
        (SHOP + "?msclkid=abc", "https://www.bing.com/", None, "paid_search"),
        (
            SHOP + "?utm_source=google&utm_medium=cpc&utm_campaign=diwali",
            "https://www.google.com/",
            None,
            "paid_search",
        ),
        (SHOP, None, ("google", "cpc", "diwali", None, None), "paid_search"),
        (SHOP, None, ("bing", "ppc", None, None, None), "paid_search"),
        # paid social
        (SHOP + "?fbclid=IwAR0", "https://l.facebook.com/", None, "paid_social"),
        (SHOP + "?utm_source=facebook&utm_medium=paid_social", "https://m.facebook.com/", None, "paid_social"),
        (SHOP + "?utm_source=instagram&utm_medium=cpc", None, None, "paid_social"),
        (SHOP, None, ("meta", "paid", "sale", None, None), "paid_social"),
        # organic social
        (SHOP, "https://l.instagram.com/", None, "social"),
        (SHOP, "https://t.co/abc", None, "social"),
        (SHOP, "https://x.com/acme", None, "social"),
        (SHOP, "https://www.linkedin.com/feed/", None, "social"),
        (SHOP, "https://www.youtube.com/watch?v=1", None, "social"),
        (SHOP, "https://web.whatsapp.com/", None, "social"),
        (SHOP + "?utm_source=whatsapp&utm_medium=social", None, None, "social"),
        (SHOP + "?utm_source=instagram&utm_medium=bio_link", None, None, "social"),
        # email
        (SHOP + "?utm_source=klaviyo&utm_medium=email&utm_campaign=nov", None, None, "email"),
        (SHOP, None, ("acme", "newsletter", "weekly", None, None), "email"),
        (SHOP, "https://mail.google.com/", None, "email"),
        # Android apps as referrers (android-app://PACKAGE/), common on Indian mobile traffic
        (SHOP, "android-app://com.google.android.gm/", None, "email"),
        (SHOP, "android-app://com.google.android.googlequicksearchbox/", None, "organic_search"),
        (SHOP, "android-app://com.instagram.android/", None, "social"),
        (SHOP, "android-app://com.whatsapp/", None, "social"),
        (SHOP, "android-app://org.telegram.messenger/", None, "social"),
        (SHOP, "https://t.me/acmedeals", None, "social"),
        # affiliate, display, sms
        (SHOP + "?utm_source=cuelinks&utm_medium=affiliate", "https://cuelinks.com/", None, "affiliate"),
        (SHOP + "?utm_source=dv360&utm_medium=display", None, None, "display"),
        (SHOP + "?utm_source=gupshup&utm_medium=sms", None, None, "sms"),
        # referral: any other external site
        (SHOP, "https://www.reviewsite.in/best-kurtas", None, "referral"),
        (SHOP, "https://news.ycombinator.com/item?id=1", None, "referral"),
        # tagged but unrecognised, or campaign name only
        (SHOP + "?utm_source=partner_x&utm_medium=qr", None, None, "other"),
        (SHOP + "?utm_campaign=diwali", None, None, "other"),
        (SHOP + "?utm_campaign=diwali", "https://l.instagram.com/", None, "social"),
    ],
)
def test_channel_rules(page_url, referrer, campaign, channel):
    assert attribute(page_url, None, referrer, campaign).channel == channel


def test_utm_from_page_url_query():
    result = attribute(
        "https://acme.in/p?utm_source=Google&utm_medium=cpc&utm_campaign=Diwali%20Sale&utm_term=silk+saree"
        "&utm_content=ad-1&color=red",
        None,
        "https://www.google.co.in/",
    )
    assert (result.utm_source, result.utm_medium, result.utm_campaign, result.utm_term, result.utm_content) == (
        "Google",
        "cpc",
        "Diwali Sale",
        "silk saree",
        "ad-1",
    )
    assert result.page_path == "/p"
    assert result.referrer_host == "www.google.co.in"
    assert result.channel == "paid_search"


def test_context_campaign_wins_field_by_field_over_the_url():
    result = attribute(
        "https://acme.in/p?utm_source=url_src&utm_medium=url_med&utm_term=url_term",
        "/p",
        None,
        ("ctx_src", None, "ctx_campaign", None, None),
    )
    assert result.utm_source == "ctx_src"
    assert result.utm_medium == "url_med"
    assert result.utm_campaign == "ctx_campaign"
    assert result.utm_term == "url_term"
    assert result.utm_content is None


def test_page_path_given_is_kept_and_blank_values_are_null():
    result = attribute("https://acme.in/a/b?x=1", "/custom", "  ", ("", " ", None, None, None))
    assert result.page_path == "/custom"
    assert result.referrer is None and result.referrer_host is None
    assert result.utm_source is None and result.utm_medium is None
    assert result.channel == "direct"


def test_self_referral_keeps_referrer_columns():
    result = attribute("https://www.acme.in/cart", None, "https://www.acme.in/products/1")
    assert result.referrer_host == "www.acme.in"
    assert result.channel == "direct"


def test_no_page_at_all():
    result = attribute(None, None, None)
    assert result.page_url is None and result.page_path is None
    assert result.channel == "direct"


@pytest.mark.parametrize(
    ("url", "host"),
    [
        ("https://WWW.Google.CO.IN/search?q=1", "www.google.co.in"),
        ("http://example.com:8080/x", "example.com"),
        ("https://example.com./", "example.com"),
        ("/relative/path", None),
        ("", None),
        (None, None),
        ("http://[::1", None),  # unparseable IPv6 literal
    ],
)
def test_hostname(url, host):
    assert hostname(url) == host


@pytest.mark.parametrize(
    ("a", "b", "same"),
    [
        ("www.acme.in", "acme.in", True),
        ("shop.acme.in", "www.acme.in", True),
        ("acme.in", "notacme.in", False),
        ("acme.in", None, False),
    ],
)
def test_is_same_site(a, b, same):
    assert is_same_site(a, b) is same


def test_classify_channel_directly():
    assert classify_channel(None, None, None) == "direct"
    assert classify_channel(None, None, "www.google.com") == "organic_search"
    assert classify_channel(None, None, "blog.example.com") == "referral"
    assert classify_channel(None, None, None, frozenset({"gclid"})) == "paid_search"
    assert classify_channel("EMAIL", None, None) == "email"
    assert classify_channel("google", "organic", None) == "organic_search"


CHANNELS = {
    "direct",
    "organic_search",
    "paid_search",
    "paid_social",
    "social",
    "email",
    "affiliate",
    "display",
    "sms",
    "referral",
    "other",
}
url_like = st.one_of(
    st.none(),
    st.text(max_size=40),
    st.builds(
        lambda host, q: f"https://{host}/p?{q}",
        st.text(alphabet="abcxyz.[]:@-", max_size=15),
        st.text(alphabet="utm_sourcemdi=&gclfb%[]", max_size=40),
    ),
)


@settings(max_examples=300, deadline=None)
@given(
    page_url=url_like,
    path=st.none() | st.text(max_size=10),
    referrer=url_like,
    campaign=st.none() | st.tuples(*[st.none() | st.text(max_size=8)] * 5),
)
def test_attribute_never_raises(page_url, path, referrer, campaign):
    result = attribute(page_url, path, referrer, campaign)
    assert result.channel in CHANNELS
    assert result.referrer_host is None or result.referrer_host == result.referrer_host.lower()
