"""The HTTP collector: Segment-compatible tracking API and webhook receivers, feeding Kinesis.

    python -m pipelines.collect --port 8080 --stream livora-events --write-keys keys.json \\
        [--webhook-secrets secrets.json] [--aws-profile local|aws] [--aws-endpoint-url URL] \\
        [--spool-dir DIR [--spool-mode fallback|always]] [--local-stack]

Serves on 127.0.0.1 (``--host`` to change) until SIGTERM/SIGINT, then drains what it holds.
``--aws-profile local`` (the default) talks to the moto server at ``--aws-endpoint-url`` or
``$LIVORA_AWS_ENDPOINT``; ``--local-stack`` starts one itself and creates the stream. On AWS Lambda
behind API Gateway, :func:`lambda_handler` serves the same app (configured from the environment).
Design, limits and measured figures: docs/collector.md.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import logging
import os
import signal
import sys
import urllib.request
from collections.abc import Iterable, Iterator
from typing import Any

from connectors.aws import AwsSettings
from connectors.collector import CollectorConfig, Delivery, KinesisSink, NullSink, build_app
from connectors.collector.delivery import SinkError
from connectors.collector.metrics import CollectorMetrics
from connectors.collector.spool import Spool
from connectors.config_sources import ConfigSourceError, load_webhook_config, load_write_keys

__all__ = ["build_collector", "lambda_handler", "main", "parse_args", "send_events"]

log = logging.getLogger("livora.collector")

_STANDARD_LOG_FIELDS = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}


class JsonLogFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message and the record's ``extra`` fields.

    The collector never passes payloads, write keys or secrets as fields (only reasons, routes,
    tenants, counts), so nothing sensitive reaches the log.
    """

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        out.update(
            {k: v for k, v in vars(record).items() if k not in _STANDARD_LOG_FIELDS and not k.startswith("color_")}
        )
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def setup_logging(level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonLogFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("botocore", "urllib3", "apache_beam", "uvicorn.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from pipelines.logs import add_logging_arguments
    from pipelines.options import LivoraArgumentParser

    p = LivoraArgumentParser(
        prog="python -m pipelines.collect", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--port", type=int, required=True, help="TCP port to listen on.")
    p.add_argument("--host", default="127.0.0.1", help="Address to listen on (default 127.0.0.1).")
    p.add_argument("--stream", required=True, help="Kinesis data stream the events go to.")
    p.add_argument(
        "--write-keys",
        required=True,
        help='JSON {"<write key>": "<tenant_id>"} (file, s3://, env:VAR or secretsmanager:NAME).',
    )
    p.add_argument(
        "--webhook-secrets",
        default=None,
        help='JSON {"<provider>:<tenant>": "<secret>"} or the full form with bindings (file, env:VAR, '
        "secretsmanager:NAME; default $LIVORA_WEBHOOK_SECRETS; none: webhooks are refused).",
    )
    p.add_argument("--aws-profile", choices=["local", "aws"], default="local", help="local moto server or AWS.")
    p.add_argument("--aws-endpoint-url", default=None, help="Endpoint override (local: the moto server's URL).")
    p.add_argument("--aws-region", default="ap-south-1", help="AWS region (default ap-south-1).")
    p.add_argument(
        "--local-stack", action="store_true", help="Start a moto server and create the stream (implies local)."
    )
    p.add_argument("--shards", type=int, default=4, help="Shards when --local-stack creates the stream.")
    p.add_argument("--spool-dir", default=None, help="Durable local spool directory (append + fsync).")
    p.add_argument(
        "--spool-mode",
        choices=["fallback", "always"],
        default="fallback",
        help="fallback: spool only what Kinesis does not take in time; always: write-ahead, ship from disk.",
    )
    p.add_argument(
        "--put-timeout", type=float, default=3.0, help="Seconds a request waits for Kinesis (retries included)."
    )
    p.add_argument("--max-pending", type=int, default=50_000, help="Records held in memory before 429.")
    p.add_argument("--max-connections", type=int, default=1000, help="Concurrent connections before 503.")
    p.add_argument("--body-timeout", type=float, default=10.0, help="Seconds to receive a whole body (then 408).")
    p.add_argument("--drain-timeout", type=float, default=15.0, help="Seconds to drain on shutdown.")
    p.add_argument("--cors-origin", action="append", default=None, help="Allowed browser origin (default *).")
    p.add_argument("--null-sink", action="store_true", help="Benchmarks only: accept and discard instead of Kinesis.")
    add_logging_arguments(p)
    p.set_defaults(log_format="json")  # a service's logs: one JSON object a line by default
    args = p.parse_args(argv)
    if args.put_timeout <= 0 or args.body_timeout <= 0:
        p.error("--put-timeout and --body-timeout must be positive")
    if args.spool_mode == "always" and not args.spool_dir:
        p.error("--spool-mode always needs --spool-dir")
    return args


def build_collector(
    *,
    stream: str,
    write_keys: dict[str, str],
    webhooks=None,
    aws: AwsSettings | None = None,
    spool_dir: str | None = None,
    spool_mode: str = "fallback",
    put_timeout_s: float = 3.0,
    max_pending: int = 50_000,
    body_timeout_s: float = 10.0,
    drain_timeout_s: float = 15.0,
    cors_origins: Iterable[str] = ("*",),
    null_sink: bool = False,
    check_stream: bool = True,
):
    """The Starlette app wired to Kinesis (or a null sink); what both uvicorn and Mangum serve."""
    from transforms.webhooks import WebhookConfig

    metrics = CollectorMetrics()
    kinesis = None
    if null_sink:
        sink = drain_sink = NullSink()
    else:
        aws = aws or AwsSettings.local()
        client = aws.client(
            "kinesis",
            retries={"max_attempts": 0, "mode": "standard"},  # our backoff does the retrying
            connect_timeout=2,
            read_timeout=5,
            max_pool_connections=16,
        )
        kinesis = KinesisSink(client, stream, metrics, budget_s=put_timeout_s)
        sink = kinesis
        drain_sink = kinesis.with_path("spool", budget_s=max(put_timeout_s, 10.0))
    spool = Spool(spool_dir) if spool_dir else None
    delivery = Delivery(
        sink,
        metrics,
        spool=spool,
        mode=spool_mode if spool else "direct",
        max_pending=max_pending,
        drain_sink=drain_sink,
    )

    async def on_start() -> None:
        if kinesis is None or not check_stream:
            return
        try:
            await asyncio.to_thread(kinesis.check)
        except SinkError as err:  # /ready says not ready; the spool or 503s cover requests
            delivery.kinesis_ok = False
            log.warning("Kinesis not reachable at start", extra={"stream": stream, "detail": str(err)[:200]})

    config = CollectorConfig(
        write_keys=dict(write_keys),
        webhooks=webhooks or WebhookConfig(),
        body_timeout_s=body_timeout_s,
        cors_origins=tuple(cors_origins),
    )
    return build_app(config, delivery, metrics, on_start=on_start, drain_timeout_s=drain_timeout_s)


@contextlib.contextmanager
def _local_stack(args: argparse.Namespace) -> Iterator[str | None]:
    if not args.local_stack:
        yield args.aws_endpoint_url
        return
    from infra.local_stack import running_moto_server

    with running_moto_server() as url:
        client = AwsSettings.local(url).client("kinesis")
        client.create_stream(StreamName=args.stream, ShardCount=args.shards)
        client.get_waiter("stream_exists").wait(StreamName=args.stream, WaiterConfig={"Delay": 0.2})
        print(f"local stack at {url}: stream {args.stream} ({args.shards} shards)", flush=True)
        yield url


def main(argv: list[str] | None = None) -> None:
    """Flags checked like every pipeline's (one line and exit 2 on a bad one); then serve until stopped."""
    from pipelines.options import main_entry

    main_entry("collect", _serve, argv)


def _serve(argv: list[str]) -> None:
    import uvicorn

    from pipelines.errors import ConfigError

    args = parse_args(argv)
    if args.log_format == "json":  # the service's structured log lines (text: the pipelines' format)
        setup_logging(args.log_level)
    with _local_stack(args) as endpoint:
        profile = "local" if args.local_stack else args.aws_profile
        aws = AwsSettings.from_profile(profile, endpoint, args.aws_region)
        try:
            write_keys = load_write_keys(args.write_keys, aws)
            webhooks = load_webhook_config(args.webhook_secrets, aws)
        except ConfigSourceError as err:
            raise ConfigError(str(err)) from None
        if not write_keys:
            raise ConfigError(f"{args.write_keys}: no write keys")
        app = build_collector(
            stream=args.stream,
            write_keys=write_keys,
            webhooks=webhooks,
            aws=aws,
            spool_dir=args.spool_dir,
            spool_mode=args.spool_mode,
            put_timeout_s=args.put_timeout,
            max_pending=args.max_pending,
            body_timeout_s=args.body_timeout,
            drain_timeout_s=args.drain_timeout,
            cors_origins=args.cors_origin or ("*",),
            null_sink=args.null_sink,
        )
        log.info(
            "collector listening",
            extra={
                "host": args.host,
                "port": args.port,
                "stream": args.stream,
                "tenants": len(set(write_keys.values())),
            },
        )
        # uvicorn drains, restores this handler and re-raises the signal it caught: exit 143 through the
        # `with` blocks (the --local-stack moto server is stopped), not a death by signal.
        signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
        uvicorn.run(
            app,
            host=args.host,
            port=args.port,
            access_log=False,
            log_config=None,
            lifespan="on",
            limit_concurrency=args.max_connections,
            timeout_graceful_shutdown=int(args.drain_timeout),
            proxy_headers=True,
        )


# --- AWS Lambda behind API Gateway (Mangum) --------------------------------------------------------

_lambda_app = None


def lambda_handler(event: dict, context: Any) -> dict:
    """API Gateway (HTTP API or REST) → the same app through Mangum; configured from the environment.

    ``LIVORA_COLLECT_STREAM`` (required), ``LIVORA_WRITE_KEYS`` (a spec: ``secretsmanager:NAME``,
    ``env:VAR``, ``s3://…``), ``LIVORA_WEBHOOK_SECRETS`` (same), ``LIVORA_AWS_PROFILE`` (``aws``
    by default), ``LIVORA_AWS_ENDPOINT`` (tests: the moto server). No spool: a Lambda's disk dies
    with it, so a request is acknowledged only after Kinesis accepted its records.
    """
    global _lambda_app
    if _lambda_app is None:
        from mangum import Mangum

        profile = os.environ.get("LIVORA_AWS_PROFILE", "aws")
        aws = AwsSettings.from_profile(profile, os.environ.get("LIVORA_AWS_ENDPOINT"))
        app = build_collector(
            stream=os.environ["LIVORA_COLLECT_STREAM"],
            write_keys=load_write_keys(os.environ["LIVORA_WRITE_KEYS"], aws),
            webhooks=load_webhook_config(os.environ.get("LIVORA_WEBHOOK_SECRETS"), aws),
            aws=aws,
            put_timeout_s=float(os.environ.get("LIVORA_PUT_TIMEOUT", "5")),
            check_stream=False,
        )
        _lambda_app = Mangum(app, lifespan="auto")
    return _lambda_app(event, context)


# --- a small client (the demo can send its traffic through the collector) --------------------------


def send_events(url: str, write_key: str, events: Iterable[dict], batch_size: int = 100, timeout: float = 30.0) -> int:
    """POST ``events`` to ``url``/v1/batch in batches (Basic auth with ``write_key``); returns how many were accepted.

    Raises ``urllib.error.HTTPError`` on a non-2xx answer (nothing of that batch was accepted).
    """
    auth = "Basic " + base64.b64encode(f"{write_key}:".encode()).decode("ascii")
    sent = 0
    batch: list[dict] = []

    def post(chunk: list[dict]) -> None:
        body = json.dumps({"batch": chunk}).encode("utf-8")
        req = urllib.request.Request(
            url.rstrip("/") + "/v1/batch",
            data=body,
            method="POST",
            headers={"Content-Type": "application/json", "Authorization": auth},
        )
        with urllib.request.urlopen(req, timeout=timeout) as response:
            response.read()

    for event in events:
        batch.append({"type": "track", **event} if "type" not in event else event)
        if len(batch) == batch_size:
            post(batch)
            sent += len(batch)
            batch = []
    if batch:
        post(batch)
        sent += len(batch)
    return sent


if __name__ == "__main__":
    main()
