"""User-agent parsing: families from uap-core for well-known strings, the bot flag, the cache."""

from __future__ import annotations

import pytest

from transforms.useragent import NO_UA, UserAgentParser, looks_like_bot

ANDROID_CHROME = (
    "Mozilla/5.0 (Linux; Android 13; SM-A536E) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/120.0.6099.144 Mobile Safari/537.36"
)
IPHONE_SAFARI = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_1_2 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/17.1.2 Mobile/15E148 Safari/604.1"
)
WINDOWS_CHROME = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/119.0.0.0 Safari/537.36"
)
WINDOWS_EDGE = WINDOWS_CHROME + " Edg/119.0.2151.97"
UBUNTU_FIREFOX = "Mozilla/5.0 (X11; Ubuntu; Linux x86_64; rv:121.0) Gecko/20100101 Firefox/121.0"
MAC_SAFARI = (
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/17.2 Safari/605.1.15"
)
SAMSUNG_INTERNET = (
    "Mozilla/5.0 (Linux; Android 12; SAMSUNG SM-G991B) AppleWebKit/537.36 (KHTML, like Gecko) "
    "SamsungBrowser/23.0 Chrome/115.0.0.0 Mobile Safari/537.36"
)
GOOGLEBOT = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"
BINGBOT = "Mozilla/5.0 (compatible; bingbot/2.0; +http://www.bing.com/bingbot.htm)"
AHREFS = "Mozilla/5.0 (compatible; AhrefsBot/7.0; +http://ahrefs.com/robot/)"
FB_PREVIEW = "facebookexternalhit/1.1 (+http://www.facebook.com/externalhit_uatext.php)"
CURL = "curl/8.4.0"
REQUESTS = "python-requests/2.31.0"
HEADLESS = (
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) HeadlessChrome/120.0.0.0 Safari/537.36"
)
CUBOT_PHONE = (
    "Mozilla/5.0 (Linux; Android 9; CUBOT P40) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/96.0.4664.104 Mobile Safari/537.36"
)


@pytest.fixture(scope="module")
def parser() -> UserAgentParser:
    return UserAgentParser(cache_size=100)


@pytest.mark.parametrize(
    ("ua", "browser", "browser_version", "os_", "os_version", "device", "is_bot"),
    [
        (ANDROID_CHROME, "Chrome Mobile", "120.0.6099", "Android", "13", "Samsung SM-A536E", False),
        (IPHONE_SAFARI, "Mobile Safari", "17.1.2", "iOS", "17.1.2", "iPhone", False),
        (WINDOWS_CHROME, "Chrome", "119.0.0", "Windows", "10", "Other", False),
        (WINDOWS_EDGE, "Edge", "119.0.2151", "Windows", "10", "Other", False),
        (UBUNTU_FIREFOX, "Firefox", "121.0", "Ubuntu", None, "Other", False),
        (MAC_SAFARI, "Safari", "17.2", "Mac OS X", "10.15.7", "Mac", False),
        (SAMSUNG_INTERNET, "Samsung Internet", "23.0", "Android", "12", "Samsung SM-G991B", False),
        (GOOGLEBOT, "Googlebot", "2.1", "Other", None, "Spider", True),
        (BINGBOT, "bingbot", "2.0", "Other", None, "Spider", True),
        (AHREFS, "AhrefsBot", "7.0", "Other", None, "Spider", True),
        (CURL, "curl", "8.4.0", "Other", None, "Other", True),
        (REQUESTS, "Python Requests", "2.31", "Other", None, "Other", True),
        (HEADLESS, "HeadlessChrome", "120.0.0", "Linux", None, "Other", True),
    ],
)
def test_known_user_agents(parser, ua, browser, browser_version, os_, os_version, device, is_bot):
    info = parser.parse(ua)
    assert info.ua_browser == browser
    assert info.ua_browser_version == browser_version
    assert info.ua_os == os_
    assert info.ua_os_version == os_version
    assert info.ua_device == device
    assert info.is_bot is is_bot


@pytest.mark.parametrize("ua", [None, ""])
def test_missing_user_agent_gives_nulls(parser, ua):
    assert parser.parse(ua) == NO_UA
    assert NO_UA.ua_browser is None and NO_UA.is_bot is False


def test_facebook_link_preview_is_a_bot(parser):
    assert parser.parse(FB_PREVIEW).is_bot is True


@pytest.mark.parametrize(
    ("ua", "expected"),
    [
        (GOOGLEBOT, True),
        (FB_PREVIEW, True),
        (CURL, True),
        (REQUESTS, True),
        (HEADLESS, True),
        ("Wget/1.21.3", True),
        ("Go-http-client/2.0", True),
        (ANDROID_CHROME, False),
        (IPHONE_SAFARI, False),
        (CUBOT_PHONE, False),  # a phone brand that contains "bot"
        ("Mozilla/5.0 (Linux; Android 10; ROBOTIC X)", False),
    ],
)
def test_bot_list(ua, expected):
    assert looks_like_bot(ua) is expected


def test_phone_brand_containing_bot_is_not_flagged(parser):
    info = parser.parse(CUBOT_PHONE)
    assert info.is_bot is False
    assert info.ua_os == "Android"


def test_results_are_cached_per_string():
    parser = UserAgentParser(cache_size=2)
    first = parser.parse(IPHONE_SAFARI)
    again = parser.parse(IPHONE_SAFARI)
    assert again is first
    info = parser.cache_info()
    assert (info.hits, info.misses, info.maxsize) == (1, 1, 2)
    parser.parse(ANDROID_CHROME)
    parser.parse(WINDOWS_CHROME)  # evicts the least recently used (the iPhone string)
    assert parser.cache_info().currsize == 2
    assert parser.parse(IPHONE_SAFARI) == first
    assert parser.cache_info().misses == 4


def test_accelerated_resolvers_agree_with_each_other():
    """ua-parser-rs (when installed) and google-re2 run the same uap-core rules: same columns."""
    rs = pytest.importorskip("ua_parser_rs")
    assert rs is not None
    from ua_parser import load_lazy_builtins
    from ua_parser.re2 import Resolver as Re2Resolver
    from ua_parser.regex import Resolver as RegexResolver

    matchers = load_lazy_builtins()
    with_re2 = UserAgentParser(resolver=Re2Resolver(matchers))
    with_rs = UserAgentParser(resolver=RegexResolver(matchers))
    strings = [
        ANDROID_CHROME,
        IPHONE_SAFARI,
        WINDOWS_EDGE,
        UBUNTU_FIREFOX,
        MAC_SAFARI,
        SAMSUNG_INTERNET,
        GOOGLEBOT,
        CURL,
    ]
    for ua in strings:
        assert with_rs.parse(ua) == with_re2.parse(ua), ua
