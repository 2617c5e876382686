"""Segment's official browser library (``@segment/analytics-next`` from npm) in headless Chromium → the
collector → Kinesis → ``pipelines.stream_events`` → the lake.

The page is served from one local port and the collector listens on another, so the browser's CORS
rules apply for real (analytics-next sends ``Authorization: Basic``, which needs a preflight). The
library is given its settings inline (``cdnSettings``): no request to Segment's CDN or API is made,
and the test would fail if one were needed (there is no network here).
"""

from __future__ import annotations

import contextlib
import functools
import html
import http.server
import json
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from connectors.lake import read_dead_letters, read_events
from infra.local_stack import free_port
from infra.resources import StreamingResources, create_streaming_resources
from pipelines.collect import build_collector
from tests.connectors.collector_helpers import metric, serving
from tests.connectors.collector_helpers import stream_events as kinesis_events
from tests.stream_runs import run_stream_pass

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
WRITE_KEYS = {"wk_acme_live": "acme-in", "wk_beta_live": "beta-co"}
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

# The page: load with inline settings (no CDN), then identify → page → track, each awaited, and write
# what the library reports (message ids, failed deliveries) into a marker element the test reads.
PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>Livora browser test</title></head>
<body>
<pre id="result">pending</pre>
<script src="/analytics-next.js"></script>
<script>
const writeKey = "__WRITE_KEY__";
const analytics = AnalyticsBrowser.load(
  {
    writeKey,
    cdnSettings: {
      integrations: {
        "Segment.io": { apiKey: writeKey, apiHost: "__COLLECTOR_HOST__/v1", protocol: "http"__EXTRA__ },
      },
      metrics: { sampleRate: 0 },
    },
  },
);
(async () => {
  const out = document.getElementById("result");
  try {
    const calls = [
      await analytics.identify("user_42", { plan: "gold" }),
      await analytics.page("Home"),
      await analytics.track("Product Viewed", { product_id: "P1", price: 499, currency: "INR" }),
    ];
    const ids = calls.map((ctx) => ({
      type: ctx.event.type,
      messageId: ctx.event.messageId,
      failed: ctx.failedDelivery() ? String(ctx.failedDelivery().reason) : null,
    }));
    const [a] = await analytics;
    out.textContent = "done " + JSON.stringify({ ids, anonymousId: a.user().anonymousId() });
  } catch (err) {
    out.textContent = "error " + String(err);
  }
})();
</script>
</body></html>
"""


def _pinned_version() -> str:
    return json.loads((ROOT / "infra" / "browser_sdk" / "package.json").read_text())["dependencies"][
        "@segment/analytics-next"
    ]


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


@pytest.fixture(scope="module")
def sdk_bundle() -> Path:
    """The analytics-next bundle, built from the committed lockfile into .cache/browser-sdk (once)."""
    if shutil.which("npm") is None:
        pytest.skip("npm not found: the browser library cannot be built (Debian: apt-get install -y npm)")
    if _chromium() is None:
        pytest.skip("chromium not found (Debian: apt-get install -y chromium; infra/ensure_services.sh does it)")
    built = subprocess.run(
        [str(ROOT / "infra" / "build_browser_sdk.sh")], capture_output=True, text=True, timeout=600, check=False
    )
    assert built.returncode == 0, f"infra/build_browser_sdk.sh failed:\n{built.stderr[-3000:]}"
    return Path(built.stdout.strip().splitlines()[-1])


@contextlib.contextmanager
def _static_site(root: Path) -> Iterator[str]:
    """Serve ``root`` on 127.0.0.1 (another port than the collector: a cross-origin page)."""

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args) -> None:  # keep pytest output clean
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), functools.partial(Quiet, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def _run_page(url: str, profile: Path) -> dict:
    """Load ``url`` in headless Chromium until the page's own calls resolved; the page's result marker."""
    argv = [
        _chromium(),
        *CHROMIUM_FLAGS,
        f"--user-data-dir={profile}",
        "--virtual-time-budget=20000",  # virtual time waits for the fetches; the marker is set well before
        "--dump-dom",
        url,
    ]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=90, check=False)
    match = re.search(r'<pre id="result">(.*?)</pre>', done.stdout, re.S)
    assert match, f"no result marker; chromium exit {done.returncode}:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    text = html.unescape(match.group(1))
    assert text.startswith("done "), f"page did not finish: {text!r}\n{done.stderr[-3000:]}"
    return json.loads(text.removeprefix("done "))


def _wait_records(client, stream: str, n: int, timeout: float = 20) -> list[dict]:
    deadline = time.monotonic() + timeout
    while True:
        events = kinesis_events(client, stream)
        if len(events) >= n or time.monotonic() > deadline:
            return events
        time.sleep(0.2)


class _Seen:
    """ASGI wrapper recording (method, path) of every request that reaches the collector's socket."""

    def __init__(self, app) -> None:
        self.app = app
        self.requests: list[tuple[str, str]] = []

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http":
            self.requests.append((scope["method"], scope["path"]))
        await self.app(scope, receive, send)


@contextlib.contextmanager
def _browser_session(
    aws, tmp_path, sdk_bundle: Path, stream: str, segment_io_extra: str = "", **collector_options
) -> Iterator[tuple[str, str, _Seen]]:
    """Collector and static site up, page written: yields (collector URL, page URL, requests seen).

    ``segment_io_extra`` is appended to the page's ``integrations['Segment.io']`` settings (JS text)."""
    app = _Seen(build_collector(stream=stream, write_keys=WRITE_KEYS, aws=aws, **collector_options))
    site = tmp_path / "site"
    site.mkdir()
    shutil.copy(sdk_bundle, site / "analytics-next.js")
    with serving(app) as collector_url, _static_site(site) as site_url:
        (site / "index.html").write_text(
            PAGE.replace("__WRITE_KEY__", "wk_acme_live")
            .replace("__COLLECTOR_HOST__", collector_url.removeprefix("http://"))
            .replace("__EXTRA__", segment_io_extra)
        )
        yield collector_url, f"{site_url}/index.html", app


def test_analytics_next_in_chromium_through_collector_into_the_lake(aws, tmp_path, sdk_bundle):
    res = create_streaming_resources(
        aws, StreamingResources(stream=f"browser-{uuid.uuid4().hex[:6]}", shards=2, bucket=None)
    )
    kinesis = aws.client("kinesis")
    with _browser_session(aws, tmp_path, sdk_bundle, res.stream) as (collector_url, page_url, seen):
        with tempfile.TemporaryDirectory(dir=tmp_path) as profile:
            result = _run_page(page_url, Path(profile))
        events = _wait_records(kinesis, res.stream, 3)
        metrics_text = httpx.get(f"{collector_url}/metrics").text
    site_url = page_url.removesuffix("/index.html")

    # What the library says it sent: three calls, none failed, in the page's order.
    assert [c["type"] for c in result["ids"]] == ["identify", "page", "track"]
    assert [c["failed"] for c in result["ids"]] == [None, None, None]
    anonymous_id = result["anonymousId"]
    assert anonymous_id

    # The browser preflighted (analytics-next sends Authorization) and then POSTed each one-letter path.
    for path in ("/v1/i", "/v1/p", "/v1/t"):
        assert ("OPTIONS", path) in seen.requests and ("POST", path) in seen.requests
    for route in ("/v1/identify", "/v1/page", "/v1/track"):
        assert metric(metrics_text, "livora_collector_requests_total", route=route, status="200") == 1

    # What the collector put on Kinesis: exactly those three messages, stamped with acme's tenant.
    by_id = {e["messageId"]: e for e in events}
    assert len(events) == 3 and set(by_id) == {c["messageId"] for c in result["ids"]}
    identify, page, track = (by_id[c["messageId"]] for c in result["ids"])
    for event in (identify, page, track):
        assert event["tenantId"] == "acme-in"
        assert "writeKey" not in event
        assert event["userId"] == "user_42"
        assert event["anonymousId"] == anonymous_id  # one browser, one anonymous id across the calls
        assert event["context"]["library"]["name"] == "analytics.js"
        assert event["context"]["library"]["version"] == f"npm:next-{_pinned_version()}"
        assert event["context"]["ip"] == "127.0.0.1"
        assert "Chrome/" in event["context"]["userAgent"]
        assert event["receivedAt"] and event["sentAt"]
    assert identify["type"] == "identify" and identify["traits"] == {"plan": "gold"}
    assert page["type"] == "page" and page["name"] == "Home"
    assert page["properties"]["name"] == "Home"
    assert page["properties"]["url"] == f"{site_url}/index.html"
    assert page["context"]["page"]["path"] == "/index.html"
    assert track["type"] == "track" and track["event"] == "Product Viewed"
    assert track["properties"] == {"product_id": "P1", "price": 499, "currency": "INR"}

    # And through the stream pipeline into the lake.
    lake = str(tmp_path / "lake")
    summary = run_stream_pass(aws, res, lake)
    assert read_dead_letters(summary.dead_letters_path) == []
    rows = read_events(
        lake,
        columns=[
            "tenant_id", "message_id", "type", "event", "name", "user_id", "anonymous_id",
            "properties", "traits", "page_url", "page_path",
        ],
    ).to_pylist()  # fmt: skip
    by_type = {r["type"]: r for r in rows}
    assert len(rows) == 3 and set(by_type) == {"identify", "page", "track"}
    assert {r["tenant_id"] for r in rows} == {"acme-in"}
    assert {r["message_id"] for r in rows} == set(by_id)
    assert {(r["user_id"], r["anonymous_id"]) for r in rows} == {("user_42", anonymous_id)}
    assert json.loads(by_type["identify"]["traits"]) == {"plan": "gold"}
    assert by_type["page"]["name"] == "Home" and by_type["page"]["page_path"] == "/index.html"
    assert by_type["track"]["event"] == "Product Viewed"
    assert json.loads(by_type["track"]["properties"]) == {"product_id": "P1", "price": 499, "currency": "INR"}


def test_a_collector_that_does_not_allow_the_page_origin_gets_nothing_from_the_browser(aws, tmp_path, sdk_bundle):
    """The control for the test above: the same page, but CORS allows only the shop's real origin. The
    browser's preflight is refused, so the POSTs are never sent: the positive test's delivery really went
    through Chromium's CORS checks (not around them)."""
    stream = f"cors-{uuid.uuid4().hex[:6]}"
    kinesis = aws.client("kinesis")
    kinesis.create_stream(StreamName=stream, ShardCount=1)
    kinesis.get_waiter("stream_exists").wait(StreamName=stream, WaiterConfig={"Delay": 0.2})
    options = {"cors_origins": ("https://shop.acme.in",)}
    with _browser_session(aws, tmp_path, sdk_bundle, stream, **options) as (collector_url, page_url, seen):
        with tempfile.TemporaryDirectory(dir=tmp_path) as profile:
            _run_page(page_url, Path(profile))  # the calls resolve: the library queues them for retry
        metrics = httpx.get(f"{collector_url}/metrics").text
    assert ("OPTIONS", "/v1/i") in seen.requests  # the browser asked ...
    assert not [r for r in seen.requests if r[0] == "POST"]  # ... was refused, and sent nothing
    assert kinesis_events(kinesis, stream) == []
    for route in ("/v1/identify", "/v1/page", "/v1/track"):
        assert metric(metrics, "livora_collector_requests_total", route=route, status="200") == 0


def test_analytics_next_batching_delivery_posts_one_batch(aws, tmp_path, sdk_bundle):
    """``deliveryStrategy: batching``: the library buffers the calls and posts them together to ``/v1/b``."""
    stream = f"batching-{uuid.uuid4().hex[:6]}"
    kinesis = aws.client("kinesis")
    kinesis.create_stream(StreamName=stream, ShardCount=1)
    kinesis.get_waiter("stream_exists").wait(StreamName=stream, WaiterConfig={"Delay": 0.2})
    batching = ', deliveryStrategy: { strategy: "batching", config: { size: 3, timeout: 1000 } }'
    with _browser_session(aws, tmp_path, sdk_bundle, stream, segment_io_extra=batching) as (_, page_url, seen):
        with tempfile.TemporaryDirectory(dir=tmp_path) as profile:
            result = _run_page(page_url, Path(profile))
        events = _wait_records(kinesis, stream, 3)
    assert [r for r in seen.requests if r[0] == "POST"] == [("POST", "/v1/b")]
    assert sorted(e["messageId"] for e in events) == sorted(c["messageId"] for c in result["ids"])
    assert sorted(e["type"] for e in events) == ["identify", "page", "track"]
    for event in events:
        assert event["tenantId"] == "acme-in" and "writeKey" not in event
        assert event["userId"] == "user_42" and event["anonymousId"] == result["anonymousId"]
        assert event["sentAt"]  # the batch's, copied onto each event (the library strips the events' own)


def test_build_script_is_a_no_op_when_the_bundle_is_cached(sdk_bundle):
    started = time.monotonic()
    again = subprocess.run(
        [str(ROOT / "infra" / "build_browser_sdk.sh")], capture_output=True, text=True, timeout=60, check=True
    )
    assert Path(again.stdout.strip()) == sdk_bundle
    assert time.monotonic() - started < 5
    assert os.path.getsize(sdk_bundle) > 50_000  # the library itself, not an empty stub
