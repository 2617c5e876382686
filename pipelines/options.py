"""Reusable option groups and the one place that runs a pipeline.

Each pipeline composes its own ``PipelineOptions`` subclass from these groups; ``run()``
checks cross-flag rules before building the graph. Local runs default to the in-process
``FnApiRunner`` because the plain ``DirectRunner`` first tries to download Prism (see
../shared/REFERENCE.md); pass ``--runner`` to choose any other runner (PortableRunner, Flink,
Dataflow).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
from collections.abc import Sequence

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from connectors.aws import AwsSettings
from connectors.config_sources import load_webhook_config, load_write_keys
from connectors.secrets import pii_secret
from schemas.identifiers import check_tenant_id
from transforms.composites import ProcessConfig
from transforms.enrich import EnrichConfig, PiiPolicy
from transforms.pii import check_salt

DEFAULT_LOCAL_RUNNER = "FnApiRunner"


DEFAULT_PLANS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "schemas", "tracking_plans")


class TenantOptions(PipelineOptions):
    """One brand (the flag is shared: Beam's option parser allows each flag once)."""

    @classmethod
    def _add_argparse_args(cls, parser):
        parser.add_argument(
            "--tenant",
            dest="tenant",
            default=None,
            help="The tenant (brand). Analytics and checks: only this tenant (default all). Ingest: the tenant of "
            "events that carry no tenantId (backfill of one brand's raw Segment export); an event naming "
            "another tenant becomes a dead letter tenant_mismatch.",
        )


class ProcessingOptions(TenantOptions):
    """How events are validated and enriched (shared by batch and streaming ingest)."""

    @classmethod
    def _add_argparse_args(cls, parser):
        parser.add_argument(
            "--tracking-plans",
            dest="tracking_plans",
            default=DEFAULT_PLANS if os.path.isdir(DEFAULT_PLANS) else None,
            help="Directory of per-tenant tracking-plan YAML files (default: schemas/tracking_plans). "
            "'none' disables plan checks.",
        )
        parser.add_argument(
            "--geoip-db", dest="geoip_db", default=None, help="MaxMind-format City database (.mmdb) for geo-IP."
        )
        parser.add_argument(
            "--pii-salt",
            dest="pii_salt",
            default=os.environ.get("LIVORA_PII_SALT"),
            help="Master secret (16+ characters) of the per-tenant PII salts (default $LIVORA_PII_SALT; when "
            "neither is given, a random secret kept with the lake: LAKE/_secrets/pii_salt or AWS Secrets "
            "Manager); per-tenant salts go in --pii-config.",
        )
        parser.add_argument(
            "--pii-config",
            dest="pii_config",
            default=None,
            help="JSON file: tenant -> PII policy (salt, hash_fields, drop_fields).",
        )
        parser.add_argument(
            "--write-keys",
            dest="write_keys",
            default=None,
            help="JSON {writeKey: tenant} (file, s3://, env:VAR or secretsmanager:NAME): events with a writeKey "
            "belong to its tenant; an unknown key is a dead letter unknown_tenant.",
        )
        parser.add_argument(
            "--webhook-secrets",
            dest="webhook_secrets",
            default=None,
            help='JSON {"<provider>:<tenant>": secret} or {"secrets":…, "bindings":…, "replay_window_seconds":…} '
            "(file, s3://, env:VAR or secretsmanager:NAME; default $LIVORA_WEBHOOK_SECRETS). Without it every "
            "webhook delivery is dead-lettered bad_signature.",
        )
        parser.add_argument(
            "--max-future-hours",
            dest="max_future_hours",
            type=float,
            default=24.0,
            help="Tolerated lead of event time over receivedAt before an event is dead-lettered as future_timestamp (default 24).",
        )
        parser.add_argument(
            "--session-gap-minutes",
            dest="session_gap_minutes",
            type=float,
            default=30.0,
            help="Inactivity that ends a session (default 30).",
        )
        parser.add_argument(
            "--buckets",
            dest="buckets",
            type=int,
            default=16,
            help="Shuffle buckets by person: parallelism of identity, dedupe and sessions (default 16).",
        )
        parser.add_argument(
            "--files-per-partition",
            dest="files_per_partition",
            type=int,
            default=1,
            help="Lake files per (tenant, date) partition per input, rows split by message id; raise it for "
            "partitions too big for one worker's memory (default 1).",
        )
        parser.add_argument(
            "--batch-size",
            dest="batch_size",
            type=int,
            default=2000,
            help="Records per batch inside the pipeline (default 2000).",
        )

    def process_config(self, lake: str | None = None) -> ProcessConfig:
        """The processing config; without --pii-salt, the PII master secret is the one kept with ``lake``
        (created on first use), read here on the driver and shipped to the workers inside the config."""
        secret = self.pii_salt
        if secret is None:
            if lake is None:
                raise ValueError("no --pii-salt and no lake to keep a PII secret with")
            secret = pii_secret(lake, self.view_as(AwsOptions).settings())
        check_salt(secret, "--pii-salt / $LIVORA_PII_SALT")
        pii: dict[str, PiiPolicy] = {}
        if self.pii_config:
            with FileSystems.open(self.pii_config) as handle:
                pii = {tenant: PiiPolicy.model_validate(policy) for tenant, policy in json.loads(handle.read()).items()}
        plans = None if (self.tracking_plans or "none") == "none" else self.tracking_plans
        aws = self.view_as(AwsOptions).settings()
        return ProcessConfig(
            default_tenant=check_tenant_id(self.tenant, "--tenant") if self.tenant else None,
            write_keys=load_write_keys(self.write_keys, aws),
            webhooks=load_webhook_config(self.webhook_secrets, aws),
            tracking_plans_dir=plans,
            enrich=EnrichConfig(geoip_db=self.geoip_db, pii=pii, pii_secret=secret),
            max_future_seconds=self.max_future_hours * 3600,
            session_gap_seconds=self.session_gap_minutes * 60,
            buckets=self.buckets,
            files_per_partition=self.files_per_partition,
            batch_size=self.batch_size,
        )


def iso_date(text: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected a date as YYYY-MM-DD, got {text!r}") from err


class AwsOptions(PipelineOptions):
    """Which AWS to talk to: the embedded local emulation or the real one."""

    @classmethod
    def _add_argparse_args(cls, parser):
        parser.add_argument(
            "--aws-profile",
            dest="aws_profile",
            choices=("local", "aws"),
            default="local",
            help="local: the moto server of `python -m infra.local_stack` (endpoint from --aws-endpoint-url "
            "or $LIVORA_AWS_ENDPOINT); aws: real AWS through the default credential chain.",
        )
        parser.add_argument(
            "--aws-endpoint-url", dest="aws_endpoint_url", default=None, help="Override the AWS endpoint URL."
        )
        parser.add_argument("--aws-region", dest="aws_region", default="ap-south-1", help="AWS region.")

    def settings(self) -> AwsSettings:
        return AwsSettings.from_profile(self.aws_profile, self.aws_endpoint_url, self.aws_region)


class DateRangeOptions(TenantOptions):
    """The slice of the lake a batch pipeline reads (inclusive dates, UTC event_date partitions)."""

    @classmethod
    def _add_argparse_args(cls, parser):
        parser.add_argument(
            "--start-date",
            dest="start_date",
            type=iso_date,
            default=None,
            help="First event date (YYYY-MM-DD, inclusive).",
        )
        parser.add_argument(
            "--end-date", dest="end_date", type=iso_date, default=None, help="Last event date (YYYY-MM-DD, inclusive)."
        )

    def check_range(self) -> None:
        if self.start_date and self.end_date and self.start_date > self.end_date:
            raise ValueError(f"--start-date {self.start_date} is after --end-date {self.end_date}")


def parse_options(argv: list[str], options_cls: type[PipelineOptions], description: str) -> PipelineOptions:
    """Parse a pipeline's flags; ``-h/--help`` prints them (Beam's own parser does not)."""
    if "-h" in argv or "--help" in argv:
        parser = argparse.ArgumentParser(
            description=description,
            formatter_class=argparse.RawDescriptionHelpFormatter,
            epilog="Any other Beam pipeline option is accepted too, e.g. --runner=PortableRunner "
            "--job_endpoint=embed --environment_type=EXTERNAL, --flink_master, --streaming. "
            f"Default runner: {DEFAULT_LOCAL_RUNNER} (in-process).",
        )
        for cls in reversed(options_cls.__mro__):
            if "_add_argparse_args" in vars(cls) and cls is not PipelineOptions:
                group = parser.add_argument_group(
                    cls.__name__, (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else None
                )
                cls._add_argparse_args(group)
        parser.print_help()
        raise SystemExit(0)
    return PipelineOptions(argv)


def with_default_runner(options: PipelineOptions) -> PipelineOptions:
    """Pick the in-process runner when none was asked for (never the Prism download)."""
    standard = options.view_as(StandardOptions)
    if standard.runner is None:
        standard.runner = DEFAULT_LOCAL_RUNNER
    return options


def with_s3_options(argv: list[str], options: PipelineOptions, *paths: str | None) -> PipelineOptions:
    """The options for a run touching ``paths``: when one is on S3, ``argv`` again plus Beam's ``--s3_*`` flags
    for the ``--aws-*`` settings (Beam's S3 filesystem does not read ours). They are also made the driver's
    ``FileSystems`` options, since the driver lists the lake and reads results itself before and after the run.
    """
    if any((path or "").startswith("s3://") for path in paths):
        options = PipelineOptions([*argv, *options.view_as(AwsOptions).settings().beam_s3_options()])
    FileSystems.set_options(options)
    return options


def counter_totals(result, namespace: str, names: Sequence[str] = ()) -> dict[str, int]:
    """The committed Beam counters of ``namespace`` in a finished run, summed by name (``names`` start at 0)."""
    totals = dict.fromkeys(names, 0)
    for counter in result.metrics().query(MetricsFilter().with_namespace(namespace))["counters"]:
        totals[counter.key.metric.name] = totals.get(counter.key.metric.name, 0) + counter.committed
    return totals


def run_pipeline(build, options: PipelineOptions):
    """Build the graph with ``build(pipeline)`` and run it to completion; returns the result."""
    with_default_runner(options)
    pipeline = beam.Pipeline(options=options)
    build(pipeline)
    result = pipeline.run()
    result.wait_until_finish()
    return result


def setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("apache_beam", "botocore", "urllib3", "root"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # Our option groups are not direct PipelineOptions subclasses (two pipelines both declaring
    # --lake would clash in Beam's global parser), so Beam calls their flags "unparseable" while
    # still passing them through; the values are parsed by the pipeline's own view.
    logging.getLogger("apache_beam.options.pipeline_options").setLevel(logging.ERROR)
