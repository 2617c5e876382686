"""Reusable option groups and the one place that runs a pipeline.

Each pipeline composes its own ``PipelineOptions`` subclass from these groups; ``run()``
checks cross-flag rules before building the graph. Local runs default to the in-process
``FnApiRunner`` because the plain ``DirectRunner`` first tries to download Prism (see
docs/runners.md); pass ``--runner`` to choose any other runner (PortableRunner, Flink,
Dataflow).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import difflib
import functools
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence

import apache_beam as beam
import pydantic
from apache_beam.io.filesystem import BeamIOError
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from connectors.analytics_io import events_present
from connectors.aws import AwsSettings, S3Encryption, check_kms_key_id
from connectors.config_sources import ConfigSourceError, load_webhook_config, load_write_keys
from connectors.lake import table_path
from connectors.paths import use_encryption
from connectors.run_records import current as current_run
from connectors.run_records import on_sigterm_exit, recording
from connectors.secrets import pii_secret
from infra.runners import RunnerUnavailable, portable_options, resolve_runner
from pipelines.errors import ConfigError, InputError, PipelineError, UsageError, describe_validation
from pipelines.logs import Progress, add_logging_arguments, configure_logging, logging_flags
from schemas.identifiers import check_tenant_id
from schemas.lake import EVENTS_TABLE
from transforms.composites import ProcessConfig
from transforms.enrich import EnrichConfig, PiiPolicy
from transforms.pii import check_salt

DEFAULT_LOCAL_RUNNER = "FnApiRunner"


DEFAULT_PLANS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "schemas", "tracking_plans")


PROFILES = ("dev", "staging", "prod")
"""Run profiles: the environment names of ``python -m infra.app --env`` (infra/cdk/config.py), one vocabulary."""
PROFILE_ENV = "LIVORA_PROFILE"
DEFAULT_PROFILE = "dev"


@dataclasses.dataclass(frozen=True)
class ProfileDefaults:
    """What a run profile decides for the flags a run does not give (an explicit flag always wins)."""

    quality_gate: str
    """``--quality-gate``: production data is gated (block); dev and the demo only warn."""


def profile_defaults(profile: str) -> ProfileDefaults:
    """The one map from a run profile to its defaults: every pipeline reads its defaults here, not on its own."""
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}: expected one of {', '.join(PROFILES)}")
    return ProfileDefaults(quality_gate="warn" if profile == "dev" else "block")


def _profile(text: str) -> str:
    if text not in PROFILES:
        where = f" (from ${PROFILE_ENV})" if os.environ.get(PROFILE_ENV) == text else ""
        raise argparse.ArgumentTypeError(f"unknown profile {text!r}{where}: expected {', '.join(PROFILES)}")
    return text


class ProfileOptions(PipelineOptions):
    """The run profile: the environment the run belongs to, which sets production defaults."""

    @classmethod
    def _add_argparse_args(cls, parser):
        env = os.environ.get(PROFILE_ENV)
        parser.add_argument(
            "--profile",
            dest="profile",
            type=_profile,
            metavar="{" + ",".join(PROFILES) + "}",
            default=env or DEFAULT_PROFILE,
            help=f"Run profile, named as the infra environments ({', '.join(PROFILES)}); it sets the defaults of "
            f"flags not given: --quality-gate "
            + ", ".join(f"{p}: {profile_defaults(p).quality_gate}" for p in PROFILES)
            + f". Default ${PROFILE_ENV}, else {DEFAULT_PROFILE}; here: {env or DEFAULT_PROFILE}"
            + (f" (from ${PROFILE_ENV})" if env else "")
            + ". Not --aws-profile, which picks the AWS endpoint.",
        )


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
            help='JSON {"<provider>:<tenant>": secret} or {"secrets":…, "bindings":…, "trust_shop_header":…, "replay_window_seconds":…} '
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
        parser.add_argument(
            "--parse-mode",
            dest="parse_mode",
            choices=("batch", "per-event"),
            default="batch",
            help="batch (default): parse, validate and enrich a batch at a time; per-event: one event at a time, "
            "the reference path (same rows, same dead letters; its parse step costs ~1.5x the CPU, docs/ingest-performance.md).",
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
            pii = load_pii_config(self.pii_config)
        plans = None if (self.tracking_plans or "none") == "none" else self.tracking_plans
        aws = self.view_as(AwsOptions).settings()
        try:
            tenant = check_tenant_id(self.tenant, "--tenant") if self.tenant else None
            write_keys = load_write_keys(self.write_keys, aws)
            webhooks = load_webhook_config(self.webhook_secrets, aws)
        except ConfigSourceError as err:
            raise ConfigError(str(err)) from None
        except ValueError as err:
            raise UsageError(str(err)) from None
        return ProcessConfig(
            default_tenant=tenant,
            write_keys=write_keys,
            webhooks=webhooks,
            tracking_plans_dir=plans,
            enrich=EnrichConfig(geoip_db=self.geoip_db, pii=pii, pii_secret=secret),
            max_future_seconds=self.max_future_hours * 3600,
            session_gap_seconds=self.session_gap_minutes * 60,
            buckets=self.buckets,
            files_per_partition=self.files_per_partition,
            batch_size=self.batch_size,
            parse_mode=self.parse_mode.replace("-", "_"),
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
        parser.add_argument(
            "--kms-key-id",
            dest="kms_key_id",
            default=None,
            help="Encrypt every object the run writes to S3 with this customer-managed KMS key (SSE-KMS, bucket "
            "keys on): key id, alias/NAME or key ARN. Default: no encryption headers (the bucket's default).",
        )

    def settings(self) -> AwsSettings:
        return AwsSettings.from_profile(self.aws_profile, self.aws_endpoint_url, self.aws_region)

    def encryption(self) -> S3Encryption | None:
        """The run's SSE-KMS settings (None without --kms-key-id); a malformed key id is a usage error."""
        if not self.kms_key_id:
            return None
        try:
            check_kms_key_id(self.kms_key_id)
        except ValueError as err:
            raise UsageError(str(err)) from None
        return S3Encryption(kms_key_id=self.kms_key_id, aws=self.settings())


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
            raise UsageError(f"--start-date {self.start_date} is after --end-date {self.end_date}")

    def describe_range(self) -> str:
        """``from 2026-10-01 to 2026-10-31 for tenant acme-in``: the slice, for messages."""
        text = f"from {self.start_date or 'the first date'} to {self.end_date or 'the last date'}"
        return text + (f" for tenant {self.tenant}" if self.tenant else "")


class LivoraArgumentParser(argparse.ArgumentParser):
    """argparse that never abbreviates a flag and fails with a :class:`UsageError` (one line, exit 2) instead of
    printing usage: ``--wind 60`` is not ``--window``, and a scheduler's log gets one clear line."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        raise UsageError(message)

    def parse_args(self, args=None, namespace=None):
        """Like argparse's, but an unknown flag names the closest known one, and is reported before a
        missing required flag (``--lkae`` is why ``--lake`` is missing)."""
        args = sys.argv[1:] if args is None else list(args)
        try:
            parsed, unknown = self.parse_known_args(args, namespace)
        except UsageError:
            known = set(option_strings(self))
            unknown = [a for a in args if a.startswith("--") and a.split("=", 1)[0] not in known]
            if unknown:
                raise UsageError(unknown_flags_message(unknown, list(known))) from None
            raise
        if unknown:
            raise UsageError(unknown_flags_message(unknown, option_strings(self)))
        return parsed


def option_strings(parser: argparse.ArgumentParser) -> list[str]:
    return [flag for action in parser._actions for flag in action.option_strings]


def unknown_flags_message(unknown: Sequence[str], mine: Sequence[str], others: Sequence[str] = ()) -> str:
    """``unknown flag --tennant (did you mean --tenant?)``; the pipeline's own flags are preferred as
    suggestions over Beam's, and a stray value (no leading dash) is called an unexpected argument."""
    flags, strays = [], []
    for arg in unknown:
        if arg.startswith("-"):
            name = arg.split("=", 1)[0]
            close = difflib.get_close_matches(name, list(mine), n=1, cutoff=0.6) or difflib.get_close_matches(
                name, [*mine, *others], n=1, cutoff=0.75
            )
            flags.append(f"{name} (did you mean {close[0]}?)" if close else f"{name} (see --help)")
        elif not flags:  # a value after an unknown flag belongs to that flag
            strays.append(arg)
    if flags:
        return ("unknown flag " if len(flags) == 1 else "unknown flags ") + ", ".join(flags)
    return f"unexpected argument {strays[0]!r}"


def _subclasses(cls: type) -> list[type]:
    out = []
    for sub in cls.__subclasses__():
        out.append(sub)
        out.extend(_subclasses(sub))
    return out


class _BeamFlagsParser(LivoraArgumentParser):
    def error(self, message: str):
        if message.startswith("ambiguous option: "):  # as Beam's own parser: never guess
            return
        raise UsageError(message)


@functools.cache
def beam_flags_parser() -> argparse.ArgumentParser:
    """Every flag of every ``PipelineOptions`` subclass Beam itself defines (runner, portability, Flink,
    Dataflow, ``--s3_*`` ...), the way ``PipelineOptions.get_all_options`` sees them (but recursively)."""
    parser = _BeamFlagsParser(add_help=False, conflict_handler="resolve")
    parser.add_value_provider_argument = parser.add_argument  # the value type does not matter for checking
    for cls in _subclasses(PipelineOptions):
        if cls.__module__.startswith("apache_beam.") and "_add_argparse_args" in vars(cls):
            cls._add_argparse_args(parser)
    add_logging_arguments(parser)
    return parser


def pipeline_parser(options_cls: type[PipelineOptions], description: str | None) -> LivoraArgumentParser:
    """The pipeline's own flags, one help group per option group it is composed of, plus the logging flags."""
    module = options_cls.__module__.rsplit(".", 1)[-1]
    parser = LivoraArgumentParser(
        prog=f"python -m pipelines.{module}",
        description=description,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Any Beam pipeline option is accepted too, e.g. --runner=PortableRunner "
        "--job_endpoint=embed --environment_type=EXTERNAL, --flink_master, --streaming. "
        f"Default runner: {DEFAULT_LOCAL_RUNNER} (in-process). Exit codes: README, 'Running in a scheduler'.",
    )
    for cls in reversed(options_cls.__mro__):
        if "_add_argparse_args" in vars(cls) and cls is not PipelineOptions:
            doc = (cls.__doc__ or "").strip().splitlines()
            cls._add_argparse_args(parser.add_argument_group(cls.__name__, doc[0] if doc else None))
    add_logging_arguments(parser.add_argument_group("Logging"))
    return parser


def check_flags(argv: Sequence[str], options_cls: type[PipelineOptions], description: str | None = None) -> None:
    """Fail with a :class:`UsageError` on any flag that is neither the pipeline's nor Beam's, or on a bad value
    of the pipeline's own flags; ``-h/--help`` prints the pipeline's flags and exits 0."""
    own = pipeline_parser(options_cls, description)
    lenient = pipeline_parser(options_cls, description)
    for action in lenient._actions:  # unknown flags first: a typo is often why a required flag is missing
        action.required = False
    _, rest = lenient.parse_known_args(list(argv))
    beam_parser = beam_flags_parser()
    _, unknown = beam_parser.parse_known_args(rest)
    if unknown:
        raise UsageError(unknown_flags_message(unknown, option_strings(own), option_strings(beam_parser)))
    own.parse_known_args(list(argv))  # required flags


def parse_options(argv: list[str], options_cls: type[PipelineOptions], description: str) -> PipelineOptions:
    """Check every flag (:func:`check_flags`), then hand them to Beam; ``-h/--help`` prints them."""
    check_flags(argv, options_cls, description)
    options = PipelineOptions(argv)
    if issubclass(options_cls, ProfileOptions):
        _note_profile(options_cls, options.view_as(options_cls))
    return options


def _note_profile(options_cls: type[PipelineOptions], opts: ProfileOptions) -> None:
    """Put the run's profile in its run record and log it once, so that a scheduler's log and the record say
    which defaults the run had. Only for the run's own options: ``report`` re-parses other runs' flags."""
    record = current_run()
    if record is None or record.pipeline != options_cls.__module__.rsplit(".", 1)[-1] or record.profile:
        return
    record.profile = opts.profile
    source = "--profile" if any(a == "--profile" or a.startswith("--profile=") for a in record.argv) else None
    source = source or (f"${PROFILE_ENV}" if os.environ.get(PROFILE_ENV) else "the default")
    defaults = ", ".join(
        f"--{k.replace('_', '-')} {v}" for k, v in dataclasses.asdict(profile_defaults(opts.profile)).items()
    )
    logging.getLogger("livora.options").info("profile %s (from %s): defaults %s", opts.profile, source, defaults)


def main_entry(name: str, body: Callable[[list[str]], object], argv: Sequence[str] | None = None) -> None:
    """The one way every pipeline's ``main()`` runs ``body(argv)``: logging set up from ``--log-level`` /
    ``--log-format`` before anything else, and a :class:`PipelineError` ends the process with ONE line on
    stderr and its exit code (README "Exit codes"). Any other exception is a bug: traceback, exit 1.
    SIGTERM ends the run with exit 143 and still appends its record (status ``terminated``)."""
    args = sys.argv[1:] if argv is None else list(argv)
    level, fmt = logging_flags(args)
    configure_logging(level, fmt)
    with recording(name, args) as record, on_sigterm_exit():  # one appended run record, whatever the outcome
        try:
            record.result = body(args)
        except PipelineError as err:
            message = " ".join(str(err).split())  # one line, whatever the message held
            record.error = message
            if fmt == "json":
                logging.getLogger(f"livora.{name}").error(message, extra={"exit_code": err.exit_code})
            else:
                print(f"{name}: {message}", file=sys.stderr, flush=True)
            raise SystemExit(err.exit_code) from None


def printed(summary: dict) -> dict:
    """``summary`` printed as JSON on stdout (what a scheduler's log keeps), then returned: a ``_main``
    returns it so that it becomes the run record's ``counts``."""
    print(json.dumps(summary, indent=2))
    return summary


def require_lake(lake: str, table: str = EVENTS_TABLE) -> None:
    """Fail with an :class:`InputError` when ``lake`` has no ``table`` (a typo in --lake, an unmounted volume):
    without this a batch job over a missing lake writes header-only outputs and exits 0."""
    path = table_path(lake, table).rstrip("/")
    if "://" not in path:
        found = os.path.isdir(path)
    else:
        found = bool(FileSystems.match([f"{path}/**"], limits=[1])[0].metadata_list)  # object stores: no dirs
    if not found:
        raise InputError(f"--lake {lake}: no {table} table there ({path} does not exist or is empty)")


def require_events(patterns: Sequence[str], names: Sequence[str], where: str) -> None:
    """Fail with an :class:`InputError` when one of the event ``names`` never occurs in the lake files of
    ``patterns``: a misspelt step or a range without data would otherwise give a table of zeros and exit 0."""
    progress = Progress(logging.getLogger("livora.options"), "lake files scanned for the events", every=10.0)
    present = events_present(patterns, names, on_file=progress.add)
    missing = [name for name in dict.fromkeys(names) if name not in present]
    if missing:
        listed = ", ".join(repr(name) for name in missing)
        raise InputError(
            f"event{'s' if len(missing) > 1 else ''} {listed} never occur{'' if len(missing) > 1 else 's'} in "
            f"{where} ({len(patterns)} partitions); check the name, or pass --allow-empty"
        )


def add_allow_empty(parser) -> None:
    parser.add_argument(
        "--allow-empty",
        dest="allow_empty",
        action="store_true",
        default=False,
        help="Exit 0 even when an event the run needs never occurs in the range (writes tables of zeros); "
        "by default that exits 5 (README, 'Exit codes').",
    )


def require_matches(flag: str, patterns: Sequence[str]) -> None:
    """Fail with an :class:`InputError` naming the first pattern that matches no file."""
    for pattern, match in zip(patterns, FileSystems.match(list(patterns)), strict=True):
        if not match.metadata_list:
            raise InputError(f"{flag} {pattern}: matches no file")


def read_config_file(path: str, what: str, flag: str) -> str:
    """The text of a config file, or a :class:`ConfigError` naming the flag and file."""
    try:
        with FileSystems.open(path) as handle:
            return handle.read().decode("utf-8")
    except BeamIOError as err:  # how Beam's filesystems report a missing file
        raise ConfigError(f"{flag} {path}: cannot read the {what}: no such file") from err
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"{flag} {path}: cannot read the {what}: {err}") from err


def config_error(path: str, err: Exception, data: object = None) -> ConfigError:
    """One line for an invalid config file: the file, the entry and the field (pydantic), or the parser's error."""
    if isinstance(err, pydantic.ValidationError):
        return ConfigError(f"{path}: {describe_validation(err, data)}")
    cause = err.__cause__
    if isinstance(cause, pydantic.ValidationError):
        return ConfigError(f"{path}: {describe_validation(cause, data)}")
    return ConfigError(f"{path}: {err}")


def load_pii_config(path: str) -> dict[str, PiiPolicy]:
    """``--pii-config``: tenant -> PII policy; errors name the file, the tenant and the field."""
    text = read_config_file(path, "PII policy", "--pii-config")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise ConfigError(f"--pii-config {path}: not JSON: {err}") from err
    if not isinstance(data, dict):
        raise ConfigError(f"--pii-config {path}: expected an object of tenant -> policy")
    pii = {}
    for tenant, policy in data.items():
        try:
            pii[tenant] = PiiPolicy.model_validate(policy)
        except pydantic.ValidationError as err:
            raise ConfigError(f"--pii-config {path}: tenant {tenant!r}, {describe_validation(err, policy)}") from err
    return pii


def check_tracking_plans(directory: str | None) -> None:
    """Load the tracking plans once on the driver, so that an invalid plan fails before the run (one line
    naming the file and field) instead of in every worker."""
    if not directory or directory == "none":
        return
    from schemas.tracking_plan import TrackingPlans

    if not os.path.isdir(directory):
        raise ConfigError(f"--tracking-plans {directory!r} is not a directory")
    try:
        TrackingPlans.load(directory)
    except ValueError as err:
        text = str(err)
        path = text.split(":", 1)[0].removeprefix("invalid tracking plan ") if text.startswith("invalid") else ""
        raise config_error(path or directory, err) from err


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
    use_encryption(options.view_as(AwsOptions).encryption())  # the driver's own writes (records, manifests)
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
    try:
        resolve_runner(options)  # Prism / Flink from the project's cache; never a silent switch of runner
    except RunnerUnavailable as err:
        raise UsageError(str(err)) from None
    runner = options.view_as(StandardOptions).runner
    in_process = runner in (DEFAULT_LOCAL_RUNNER, "BundleBasedDirectRunner")
    # a runner outside this process gets the options as JSON values (dates as ISO text): docs/runners.md
    pipeline = beam.Pipeline(options=options if in_process else portable_options(options))
    build(pipeline)
    result = pipeline.run()
    result.wait_until_finish()
    return result


def setup_logging(level: str = "INFO", fmt: str = "text") -> None:
    """Logging for code that runs a pipeline without :func:`main_entry` (see :mod:`pipelines.logs`)."""
    configure_logging(level, fmt)
