"""Behavioural segment membership as of a date (batch), to the lake and the DynamoDB profile store.

    python -m pipelines.segments --lake LAKE --config segments.yaml --as-of YYYY-MM-DD [--tenant T]
        [--output OUT] [--dynamodb-table TABLE --aws-profile local|aws]

Graph: partition files up to the as-of day → rows before the as-of end, split by person bucket →
per bucket, vectorised person features (leaf counts, RFM values) → per tenant, RFM quintile cut points
(a side input) → per bucket, the rule trees → membership files per tenant and, optionally,
conditional writes to the profile store (an older as-of never overwrites a newer one).

Output (``ROOT`` = ``--output`` or the lake): ``ROOT/segments/as_of=D/tenant_id=T/part-00000.parquet``
(members) and ``ROOT/segment_sizes/as_of=D/tenant_id=T/part-00000.parquet``; a rerun of the same
as-of date and tenant replaces exactly those files. Columns in docs/analytics-segments-products.md.
"""

from __future__ import annotations

import datetime as dt
import logging

import apache_beam as beam
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import yaml
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics

from connectors.analytics_io import (
    EventFile,
    ReadEventBuckets,
    event_files,
    load_tables,
    person_buckets,
    read_event_file,
    to_arrow,
    write_table,
)
from connectors.aws import AwsSettings, S3Encryption
from connectors.paths import join_under, partition_path, use_encryption
from connectors.run_records import note_input, note_outputs
from connectors.segment_store import DEFAULT_KEY_ATTRIBUTE, DEFAULT_SORT_KEY, write_memberships
from pipelines.errors import UsageError
from pipelines.options import (
    AwsOptions,
    DateRangeOptions,
    config_error,
    iso_date,
    main_entry,
    parse_options,
    read_config_file,
    require_lake,
    run_pipeline,
)
from schemas.lake import EVENTS_SCHEMA
from schemas.outputs import RFM_SCHEMA, SEGMENT_MEMBERS_SCHEMA, SEGMENT_SIZES_SCHEMA
from transforms import segments as seg

log = logging.getLogger(__name__)

# as_of and tenant_id are Hive partition columns: in the path, not in the files (as in the events table)
MEMBERS_SCHEMA, SIZES_SCHEMA = SEGMENT_MEMBERS_SCHEMA, SEGMENT_SIZES_SCHEMA


class SegmentsOptions(DateRangeOptions, AwsOptions):
    """Flags of ``pipelines.segments`` (plus --start-date/--tenant, the AWS group and Beam's own)."""

    @classmethod
    def _add_argparse_args(cls, parser):
        parser.add_argument("--lake", required=True, help="Lake root (local directory or s3://bucket/prefix).")
        parser.add_argument(
            "--config",
            required=True,
            help="Segment rules YAML, local or s3:// (format in docs/analytics-segments-products.md).",
        )
        parser.add_argument(
            "--as-of",
            dest="as_of",
            type=iso_date,
            required=True,
            help="Membership as of the end of this day (in the config's timezone): later events are ignored.",
        )
        parser.add_argument(
            "--output",
            default=None,
            help="Root for segments/ and segment_sizes/ (default: the lake itself).",
        )
        parser.add_argument(
            "--dynamodb-table",
            dest="dynamodb_table",
            default=None,
            help="Also write each evaluated person's segment list to this DynamoDB profile table.",
        )
        parser.add_argument(
            "--dynamodb-key-attribute",
            dest="dynamodb_key_attribute",
            default=DEFAULT_KEY_ATTRIBUTE,
            help="Partition-key attribute of the profile table (value '<tenant_id>#<person_id>').",
        )
        parser.add_argument(
            "--dynamodb-sort-key",
            dest="dynamodb_sort_key",
            default=DEFAULT_SORT_KEY,
            help="Sort-key attribute of the profile table; the segments item has the value SEGMENTS "
            "(beside the PROFILE item). Pass an empty string for a table with a partition key only.",
        )
        parser.add_argument(
            "--buckets", type=int, default=16, help="Person buckets: the parallelism of the per-person work."
        )
        parser.add_argument(
            "--warehouse",
            default=None,
            help="Also load segment_membership and segment_sizes into this warehouse (duckdb:///..., "
            "postgresql://..., redshift://...), replacing the run's (tenant_id, as_of) rows.",
        )


class _FeaturesFn(beam.DoFn):
    def __init__(self, config: seg.SegmentsConfig, as_of: dt.date):
        self.config, self.as_of = config, as_of
        self.persons = Metrics.counter("livora.segments", "persons_evaluated")

    def process(self, element):
        bucket, tables = element
        tables = list(tables)  # grouped values are an iterable on distributed runners, not a list
        schema = pa.schema([pa.field(f.name, f.type) for f in tables[0].schema])  # all nullable
        table = pa.concat_tables([t.cast(schema) for t in tables])
        features = seg.person_features(table, self.config, self.as_of)
        self.persons.inc(len(features))
        yield bucket, features


class _EvaluateFn(beam.DoFn):
    def __init__(self, config: seg.SegmentsConfig, as_of: dt.date):
        self.config, self.as_of = config, as_of
        self.members = Metrics.counter("livora.segments", "memberships")

    def process(self, element, cutpoints):
        _bucket, features = element
        members = seg.evaluate(features, self.config, self.as_of, cutpoints)
        self.members.inc(len(members))
        persons = seg.person_segments(members, features)
        rfm = seg.rfm_table(features, self.config.rfm, cutpoints) if self.config.uses_rfm() else None
        for tenant in sorted(features["tenant_id"].unique()):
            evaluated = int((features["tenant_id"] == tenant).sum())
            scores = rfm.loc[rfm["tenant_id"] == tenant] if rfm is not None else None
            yield beam.pvalue.TaggedOutput(
                "per_tenant", (tenant, (members.loc[members["tenant_id"] == tenant], evaluated, scores))
            )
        yield persons


def _rfm_values(element):
    _bucket, features = element
    yield from seg.rfm_values(features).items()


def _cutpoints(element):
    tenant, parts = element
    import numpy as np

    return tenant, {
        m: seg.quintile_cutpoints(np.concatenate([p[m] for p in parts]) if parts else np.zeros(0))
        for m in seg.RFM_METRICS
    }


class _WriteTenantFn(beam.DoFn):
    def __init__(
        self,
        root: str,
        config: seg.SegmentsConfig,
        as_of: dt.date,
        warehouse: str | None = None,
        encryption: S3Encryption | None = None,
    ):
        self.root, self.config, self.as_of = root.rstrip("/"), config, as_of
        self.encryption = encryption
        self.warehouse = warehouse
        self.files = Metrics.counter("livora.segments", "files_written")

    def process(self, element):
        tenant, parts = element
        parts = list(parts)
        frames = [m for m, _n, _r in parts if len(m)]
        members = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=MEMBERS_SCHEMA.names)
        members = members.sort_values(["segment", "person_id"], kind="stable").reset_index(drop=True)
        members = members[MEMBERS_SCHEMA.names]
        evaluated = sum(n for _m, n, _r in parts)
        counts = members.groupby("segment").size() if len(members) else pd.Series(dtype="int64")
        sizes = pd.DataFrame(
            {
                "segment": [s.name for s in self.config.segments],
                "rule_version": [s.version() for s in self.config.segments],
                "members": [int(counts.get(s.name, 0)) for s in self.config.segments],
                "evaluated_persons": evaluated,
            }
        )
        partition = {"as_of": self.as_of, "tenant_id": tenant}

        def target(table: str) -> str:
            return join_under(partition_path(f"{self.root}/{table}", partition), "part-00000.parquet")

        enc = self.encryption
        write_table(target("segments"), members, csv=False, schema=MEMBERS_SCHEMA, root=self.root, encryption=enc)
        write_table(target("segment_sizes"), sizes, csv=False, schema=SIZES_SCHEMA, root=self.root, encryption=enc)
        self.files.inc(2)
        if self.config.uses_rfm():
            scores = [r for _m, _n, r in parts if r is not None and len(r)]
            rfm = pd.concat(scores, ignore_index=True) if scores else pd.DataFrame(columns=RFM_SCHEMA.names)
            rfm = rfm.sort_values("person_id", kind="stable").reset_index(drop=True)[RFM_SCHEMA.names]
            write_table(target("rfm_scores"), rfm, csv=False, schema=RFM_SCHEMA, root=self.root, encryption=enc)
            self.files.inc()
        if self.warehouse:
            for name, df, schema in (
                ("segment_membership", members, MEMBERS_SCHEMA),
                ("segment_sizes", sizes, SIZES_SCHEMA),
            ):
                table = to_arrow(df, schema)
                table = table.append_column("tenant_id", pa.array([tenant] * table.num_rows, pa.string()))
                table = table.append_column("as_of", pa.array([self.as_of] * table.num_rows, pa.date32()))
                # load_tables skips empty tables: an as-of rerun that leaves a tenant with no member at all keeps
                # the earlier members in the warehouse (segment_sizes, never empty, is always replaced and shows 0)
                load_tables(self.warehouse, {name: (table, ("tenant_id", "as_of"))})
        yield tenant, len(members)


class _WriteProfileStoreFn(beam.DoFn):
    """Conditional per-person updates; the client is opened per worker in setup()."""

    def __init__(self, settings: AwsSettings, table: str, key_attribute: str, sort_key: str | None, as_of: dt.date):
        self.settings, self.table, self.key_attribute, self.as_of = settings, table, key_attribute, as_of
        self.sort_key = sort_key or None
        self.written = Metrics.counter("livora.segments", "profile_items_written")
        self.stale = Metrics.counter("livora.segments", "profile_items_newer_kept")
        self.retries = Metrics.counter("livora.segments", "profile_write_retries")

    def setup(self):
        self.client = self.settings.client("dynamodb", retries={"max_attempts": 2, "mode": "standard"})

    def process(self, persons: pd.DataFrame):
        rows = zip(persons["tenant_id"], persons["person_id"], persons["segments"], strict=True)
        stats = write_memberships(self.client, self.table, rows, self.as_of, self.key_attribute, self.sort_key)
        self.written.inc(stats.written)
        self.stale.inc(stats.stale)
        self.retries.inc(stats.retries)
        yield stats.written


class _PresenceFn(beam.DoFn):
    """An older partition file → one placeholder row per person (no event type, so it counts for no leaf).

    The rules never look back that far, but the persons must still be evaluated: someone inactive since
    then has left every windowed segment, and the profile store must hear it.
    """

    def __init__(self, columns: list[str], buckets: int):
        self.columns, self.buckets = columns, buckets
        self.persons = Metrics.counter("livora.segments", "older_persons_read")

    def process(self, file):
        file = EventFile(*file)
        persons = pc.unique(read_event_file(file, ["person_id"]).column("person_id"))
        n = len(persons)
        if not n:
            return
        at = dt.datetime.combine(file.event_date, dt.time(), tzinfo=dt.UTC)
        values = {
            "tenant_id": pa.array([file.tenant_id] * n, pa.string()),
            "person_id": persons,
            "message_id": pa.array([""] * n, pa.string()),
            "timestamp": pa.array([at] * n, EVENTS_SCHEMA.field("timestamp").type),
        }
        table = pa.table(
            {c: values.get(c, pa.nulls(n, EVENTS_SCHEMA.field(c).type)) for c in self.columns},
        )
        self.persons.inc(n)
        bucket = person_buckets(table["person_id"], self.buckets)
        for b in np.unique(bucket):
            yield int(b), table.filter(pa.array(bucket == b))


class SegmentMembership(beam.PTransform):
    """PCollection[EventFile] (or a pair: files in the rules' window, older files whose persons are only
    evaluated) → tagged outputs ``persons`` (per-bucket DataFrames of tenant_id, person_id, segments) and
    ``per_tenant`` ((tenant, (members DataFrame, persons evaluated)) pieces)."""

    def __init__(self, config: seg.SegmentsConfig, as_of: dt.date, buckets: int = 16):
        super().__init__()
        self.config, self.as_of, self.buckets = config, as_of, buckets

    def expand(self, files):
        window, older = files if isinstance(files, tuple) else (files, None)
        end = seg.as_of_end(self.as_of, self.config.timezone)
        columns = self.config.required_columns()
        pieces = window | "ReadEvents" >> ReadEventBuckets(columns, None, before=end, buckets=self.buckets)
        if older is not None:
            presence = older | "ReadOlderPersons" >> beam.ParDo(_PresenceFn(columns, self.buckets))
            pieces = (pieces, presence) | "WithOlderPersons" >> beam.Flatten()
        features = (
            pieces
            | "GroupByPersonBucket" >> beam.GroupByKey()
            | "PersonFeatures" >> beam.ParDo(_FeaturesFn(self.config, self.as_of))
        )
        if self.config.uses_rfm() and self.config.rfm.method == "quintiles":
            cuts = (
                features
                | "RfmValues" >> beam.FlatMap(_rfm_values)
                | "RfmValuesByTenant" >> beam.GroupByKey()
                | "RfmCutpoints" >> beam.Map(_cutpoints)
            )
            side = beam.pvalue.AsDict(cuts)
        else:
            side = beam.pvalue.AsDict(features.pipeline | "NoCutpoints" >> beam.Create([]))
        return features | "EvaluateRules" >> beam.ParDo(_EvaluateFn(self.config, self.as_of), side).with_outputs(
            "per_tenant", main="persons"
        )


def read_range(config: seg.SegmentsConfig, as_of: dt.date, start: dt.date | None) -> tuple[dt.date | None, dt.date]:
    """Partition dates to read: up to the UTC day holding the as-of end, back as far as the rules look."""
    end = seg.as_of_end(as_of, config.timezone)
    last = (end - dt.timedelta(microseconds=1)).date()
    lookback = config.max_lookback_days()
    first = (end - dt.timedelta(days=lookback)).date() if lookback else None
    if start is not None:
        first = max(first, start) if first else start
    return first, last


def build(pipeline: beam.Pipeline, opts: SegmentsOptions, config: seg.SegmentsConfig) -> None:
    first, last = read_range(config, opts.as_of, opts.start_date)
    files = event_files(opts.lake, first, last, opts.tenant)
    older = (
        event_files(opts.lake, opts.start_date, first - dt.timedelta(days=1), opts.tenant) if first is not None else []
    )
    log.info(
        "segments as of %s over %d partition files (%s..%s), persons only from %d older files",
        opts.as_of,
        len(files),
        first,
        last,
        len(older),
    )
    window_files = pipeline | "EventFiles" >> beam.Create([tuple(f) for f in files])
    note_input(opts.lake, [*files, *older])
    older_files = pipeline | "OlderEventFiles" >> beam.Create([tuple(f) for f in older])
    result = (window_files, older_files) | "SegmentMembership" >> SegmentMembership(config, opts.as_of, opts.buckets)
    root = opts.output or opts.lake
    (
        result.per_tenant
        | "GroupByTenant" >> beam.GroupByKey()
        | "WriteMembership" >> beam.ParDo(_WriteTenantFn(root, config, opts.as_of, opts.warehouse, opts.encryption()))
    )
    if opts.dynamodb_table:
        result.persons | "WriteProfileStore" >> beam.ParDo(
            _WriteProfileStoreFn(
                opts.settings(), opts.dynamodb_table, opts.dynamodb_key_attribute, opts.dynamodb_sort_key, opts.as_of
            )
        )


def load_segments_config(path: str) -> seg.SegmentsConfig:
    """``--config`` (a local path or s3://); an invalid file fails in one line naming it, the segment and the
    field."""
    text = read_config_file(path, "segments config", "--config")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise config_error(path, err) from err
    try:
        return seg.load_config(data)
    except ValueError as err:
        raise config_error(path, err, data) from err


def run(argv: list[str] | None = None) -> SegmentsOptions:
    opts = parse_options(list(argv or []), SegmentsOptions, __doc__).view_as(SegmentsOptions)
    opts.check_range()
    if opts.end_date is not None:
        raise UsageError("pipelines.segments takes --as-of, not --end-date")
    if opts.buckets < 1:
        raise UsageError("--buckets must be >= 1")
    config = load_segments_config(opts.config)  # fails here, before the graph, on a bad config
    FileSystems.set_options(opts)
    use_encryption(opts.encryption())  # --kms-key-id for the driver's own writes (the run record)
    require_lake(opts.lake)
    log.info("%d segments as of %s on %s", len(config.segments), opts.as_of, opts.lake)
    run_pipeline(lambda p: build(p, opts, config), opts)
    tables = ("segments", "segment_sizes", *(["rfm_scores"] if config.uses_rfm() else []))
    note_outputs(*(f"{(opts.output or opts.lake).rstrip('/')}/{t}/as_of={opts.as_of}/*/*.parquet" for t in tables))
    return opts


def main(argv: list[str] | None = None) -> None:
    main_entry("segments", _main, argv)


def _main(argv: list[str]) -> None:
    run(argv)


if __name__ == "__main__":
    main()
