"""UTM / referrer / channel attribution for one event (urllib.parse only, no network).

Channel rules (first match wins; documented with examples in docs/enrichment.md):

1. ``email``          utm_medium or utm_source is email / e-mail / newsletter, or an untagged visit
                      from a webmail host or mail app (mail.google.com, android-app://com.google.android.gm)
2. ``affiliate``      utm_medium is affiliate / affiliates / partner
3. ``paid_search``    a search click id (gclid, gbraid, wbraid, msclkid, dclid), or a paid medium
                      (cpc, ppc, paid*, ...) whose source / referrer is a search engine, or medium
                      cpc / ppc / sem / paid_search from a source that is not a social network
4. ``paid_social``    a social click id (fbclid, ttclid, li_fat_id, twclid), or a paid medium whose
                      source / referrer is a social network, or medium paid_social / paidsocial
5. ``display``        utm_medium is display / banner / cpm / programmatic
6. ``sms``            utm_medium is sms
7. ``organic_search`` referrer (or utm_source with medium organic) is a search engine
8. ``social``         referrer or utm_source is a social network, or utm_medium social / social-media
9. ``other``          utm_source / utm_medium present that none of the rules above recognise
10. ``referral``      an external referrer (self-referrals, the page's own site, are ignored)
11. ``other``         only utm_campaign / term / content, no referrer
12. ``direct``        no external referrer, no UTM, no click id
"""

from __future__ import annotations

import re
from typing import NamedTuple
from urllib.parse import parse_qs, urlsplit

__all__ = [
    "Attribution",
    "CampaignTuple",
    "attribute",
    "classify_channel",
    "hostname",
    "is_same_site",
]

CampaignTuple = tuple[str | None, str | None, str | None, str | None, str | None]
"""(source, medium, name, term, content) from ``context.campaign``."""

UTM_KEYS = ("utm_source", "utm_medium", "utm_campaign", "utm_term", "utm_content")
SEARCH_CLICK_IDS = ("gclid", "gbraid", "wbraid", "msclkid", "dclid")
SOCIAL_CLICK_IDS = ("fbclid", "ttclid", "li_fat_id", "twclid")

SEARCH_ENGINE_LABELS = frozenset({"google", "bing", "duckduckgo", "yahoo", "yandex", "baidu", "ecosia", "qwant"})
SOCIAL_LABELS = frozenset(
    {
        "facebook",
        "fb",
        "instagram",
        "twitter",
        "linkedin",
        "youtube",
        "whatsapp",
        "pinterest",
        "reddit",
        "snapchat",
        "telegram",
        "sharechat",
    }
)
SOCIAL_HOSTS = frozenset({"t.co", "x.com", "lnkd.in", "youtu.be", "wa.me", "fb.me", "pin.it", "ig.me", "t.me"})
SOCIAL_SOURCES = SOCIAL_LABELS | SOCIAL_HOSTS | {"ig", "x", "meta", "wa", "tiktok"}
EMAIL_WORDS = frozenset({"email", "e-mail", "e_mail", "newsletter", "mail"})
WEBMAIL_PREFIXES = ("mail.", "outlook.")
WEBMAIL_HOSTS = frozenset(
    {"com.google.android.gm", "com.microsoft.office.outlook", "com.yahoo.mobile.client.android.mail"}
)
"""Android mail apps as they appear in ``android-app://PACKAGE/`` referrers (Gmail, Outlook, Yahoo Mail)."""
AFFILIATE_MEDIUMS = frozenset({"affiliate", "affiliates", "partner", "partners"})
PAID_SEARCH_MEDIUMS = frozenset({"cpc", "ppc", "sem", "paid_search", "paidsearch", "paid-search", "search_ads"})
PAID_SOCIAL_MEDIUMS = frozenset({"paid_social", "paidsocial", "paid-social", "social_paid", "social-paid"})
DISPLAY_MEDIUMS = frozenset({"display", "banner", "cpm", "programmatic", "interstitial"})
SOCIAL_MEDIUMS = frozenset({"social", "social-media", "social_media", "social-network", "sm", "social network"})
PAID_MEDIUM = re.compile(r"^(.*cp.*|ppc|retargeting|paid.*)$")  # GA4's "paid" medium pattern


class Attribution(NamedTuple):
    """The page / referrer / UTM / channel columns of a lake row."""

    page_url: str | None = None
    page_path: str | None = None
    referrer: str | None = None
    referrer_host: str | None = None
    utm_source: str | None = None
    utm_medium: str | None = None
    utm_campaign: str | None = None
    utm_term: str | None = None
    utm_content: str | None = None
    channel: str = "direct"


def hostname(url: str | None) -> str | None:
    """Lower-cased host of an absolute URL (``None`` for relative, empty or unparseable URLs)."""
    if not url:
        return None
    try:
        host = urlsplit(url.strip()).hostname
    except ValueError:
        return None
    return host.rstrip(".") or None if host else None


def _site(host: str) -> str:
    return host[4:] if host.startswith("www.") else host


def is_same_site(host: str, other: str | None) -> bool:
    """``shop.acme.in`` and ``www.acme.in`` are the same site as ``acme.in`` (self-referral)."""
    if not other:
        return False
    a, b = _site(host), _site(other)
    return a == b or a.endswith("." + b) or b.endswith("." + a)


def _labels(host: str | None) -> set[str]:
    return set(host.split(".")) if host else set()


def is_search_engine(host: str | None) -> bool:
    return (
        bool(host)
        and bool(_labels(host) & SEARCH_ENGINE_LABELS)
        and not host.startswith(WEBMAIL_PREFIXES)
        and host not in WEBMAIL_HOSTS
    )


def is_social(host: str | None) -> bool:
    return bool(host) and (host in SOCIAL_HOSTS or _site(host) in SOCIAL_HOSTS or bool(_labels(host) & SOCIAL_LABELS))


def _source_is_search(source: str) -> bool:
    return source in SEARCH_ENGINE_LABELS or is_search_engine(source)


def _source_is_social(source: str) -> bool:
    return source in SOCIAL_SOURCES or is_social(source)


def classify_channel(
    utm_source: str | None,
    utm_medium: str | None,
    referrer_host: str | None,
    click_ids: frozenset[str] = frozenset(),
    has_utm: bool | None = None,
) -> str:
    """The marketing channel from UTM values, an *external* referrer host and click-id parameter names.

    ``referrer_host`` must already exclude self-referrals (pass ``None`` for them).
    """
    source = (utm_source or "").strip().lower()
    medium = (utm_medium or "").strip().lower()
    tagged = bool(source or medium)  # referrer-based rules apply only to untagged visits
    if has_utm is None:
        has_utm = tagged
    paid = bool(medium) and PAID_MEDIUM.match(medium) is not None
    search_ref = is_search_engine(referrer_host)
    social_ref = is_social(referrer_host)
    search_src = bool(source) and _source_is_search(source)
    social_src = bool(source) and _source_is_social(source)

    if medium in EMAIL_WORDS or source in EMAIL_WORDS:
        return "email"
    if not tagged and referrer_host and (referrer_host.startswith(WEBMAIL_PREFIXES) or referrer_host in WEBMAIL_HOSTS):
        return "email"
    if medium in AFFILIATE_MEDIUMS:
        return "affiliate"
    if click_ids.intersection(SEARCH_CLICK_IDS):
        return "paid_search"
    if paid and (search_src or (not source and search_ref)):
        return "paid_search"
    if medium in PAID_SEARCH_MEDIUMS and not social_src:
        return "paid_search"
    if click_ids.intersection(SOCIAL_CLICK_IDS):
        return "paid_social"
    if (paid and (social_src or (not source and social_ref))) or medium in PAID_SOCIAL_MEDIUMS:
        return "paid_social"
    if medium in DISPLAY_MEDIUMS:
        return "display"
    if medium == "sms":
        return "sms"
    if (search_ref and not tagged) or (medium == "organic" and (search_src or search_ref)):
        return "organic_search"
    if (social_ref and not tagged) or (social_src and not paid) or medium in SOCIAL_MEDIUMS:
        return "social"
    if tagged:
        return "other"
    if referrer_host:
        return "referral"
    return "other" if has_utm else "direct"


def _first(query: dict[str, list[str]], key: str) -> str | None:
    values = query.get(key)
    if not values:
        return None
    value = values[0].strip()
    return value or None


def _clean(value: str | None) -> str | None:
    if value is None:
        return None
    value = str(value).strip()
    return value or None


def attribute(
    page_url: str | None,
    page_path: str | None,
    referrer: str | None,
    campaign: CampaignTuple | None = None,
) -> Attribution:
    """Attribution columns: UTM from ``context.campaign`` field by field, else from the page URL's query."""
    page_url = _clean(page_url)
    referrer = _clean(referrer)
    query: dict[str, list[str]] = {}
    page_host = None
    if page_url:
        try:
            parts = urlsplit(page_url)
            query = parse_qs(parts.query) if parts.query else {}
            page_host = parts.hostname
            if not page_path:
                page_path = parts.path or None
        except ValueError:  # e.g. an invalid IPv6 literal in the host
            pass
    campaign = campaign or (None, None, None, None, None)
    utm = tuple(_clean(campaign[i]) or _first(query, key) for i, key in enumerate(UTM_KEYS))
    click_ids = frozenset(key for key in (*SEARCH_CLICK_IDS, *SOCIAL_CLICK_IDS) if _first(query, key))
    referrer_host = hostname(referrer)
    external = referrer_host
    if referrer_host and page_host and is_same_site(page_host.lower(), referrer_host):
        external = None
    channel = classify_channel(utm[0], utm[1], external, click_ids, has_utm=any(utm))
    return Attribution(page_url, _clean(page_path), referrer, referrer_host, *utm, channel)
