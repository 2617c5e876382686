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
import logging
from collections.abc import Sequence

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from connectors.aws import AwsSettings

DEFAULT_LOCAL_RUNNER = "FnApiRunner"


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


class DateRangeOptions(PipelineOptions):
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
        parser.add_argument("--tenant", dest="tenant", default=None, help="Only this tenant (default: all tenants).")

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
