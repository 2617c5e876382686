"""Erase persons everywhere the platform keeps them (DPDP Act 2023 s.12, GDPR Art. 17).

    python -m pipelines.erase --lake LAKE --tenant T (--user-id U | --email E | --phone P | --person-id ID)
    python -m pipelines.erase --lake LAKE --requests requests.jsonl [--dry-run] [--warehouse URL] \\
        [--profiles-table P --identity-table I --features-table F --segments-table S] [--requested-by WHO]

Each request is resolved to everything its person is known by (user ids, anonymous ids, person ids:
through the lake's events and, with --identity-table, the identity graph), then their rows are removed from
the lake's events, dead letters and per-person tables, the DynamoDB tables given and the warehouse given.
A tombstone keeps later ingests from bringing them back; an audit record (hashed identifiers only) says who
asked and what went where. Safe to re-run: a second run removes nothing. docs/erasure.md.
"""

from __future__ import annotations

import json
import logging
import os
import time
import uuid
from collections import Counter
from collections.abc import Sequence

import pyarrow as pa
import pydantic
from apache_beam.io.filesystems import FileSystems

from connectors import erasure as store
from connectors.analytics_io import read_parquet
from connectors.lake import DEAD_LETTERS_DIR, table_path
from connectors.secrets import pii_secret
from pipelines.errors import InputError, UsageError, describe_validation
from pipelines.logs import Progress
from pipelines.options import AwsOptions, TenantOptions, main_entry, parse_options, require_lake, with_s3_options
from schemas import PIPELINE_VERSION
from schemas.lake import EVENTS_TABLE
from transforms.erasure import ErasureRequest, Subjects, close_over, lake_identifiers, needle_pattern, row_mask
from transforms.normalize import normalize_phone
from transforms.pii import check_salt, tenant_salt

log = logging.getLogger("livora.erase")


class EraseOptions(TenantOptions, AwsOptions):
    """Who to erase, and from which stores."""

    @classmethod
    def _add_argparse_args(cls, parser):
        parser.add_argument("--lake", required=True, help="Lake root (local directory or s3://bucket/prefix).")
        parser.add_argument("--user-id", dest="user_id", default=None, help="Erase the person with this user id.")
        parser.add_argument("--email", dest="email", default=None, help="Erase the person with this email.")
        parser.add_argument("--phone", dest="phone", default=None, help="Erase the person with this phone number.")
        parser.add_argument(
            "--anonymous-id", dest="anonymous_id", default=None, help="Erase the person with this anonymous id."
        )
        parser.add_argument("--person-id", dest="person_id", default=None, help="Erase this person id.")
        parser.add_argument(
            "--requests",
            dest="requests",
            default=None,
            help='JSON lines {"tenant": T, "email"|"phone"|"user_id"|"person_id": V, "requested_by": WHO}: '
            "many requests in one pass over the affected partitions.",
        )
        parser.add_argument(
            "--requested-by",
            dest="requested_by",
            default=None,
            help="Who asked (ticket id, operator): recorded in the audit log (a file line's own field wins).",
        )
        parser.add_argument(
            "--dry-run",
            dest="dry_run",
            action="store_true",
            default=False,
            help="Report what would be removed; change nothing (no tombstone, no audit record).",
        )
        parser.add_argument(
            "--dead-letters",
            dest="dead_letters",
            default=None,
            help="Dead-letter directory (default LAKE/dead_letters).",
        )
        parser.add_argument(
            "--warehouse",
            default=None,
            help="Warehouse URL (duckdb:///abs/path.duckdb, postgresql://...): rows are erased from every table with "
            "a tenant_id and a person column (events, features, analytics outputs).",
        )
        parser.add_argument("--profiles-table", dest="profiles_table", default=None, help="DynamoDB profiles table.")
        parser.add_argument(
            "--identity-table", dest="identity_table", default=None, help="DynamoDB identity-graph table."
        )
        parser.add_argument(
            "--features-table", dest="features_table", default=None, help="DynamoDB online feature table."
        )
        parser.add_argument(
            "--segments-table",
            dest="segments_table",
            default=None,
            help="DynamoDB table of segment memberships, when not the profiles table (pk = tenant#person).",
        )


def load_requests(opts: EraseOptions) -> list[ErasureRequest]:
    """The requests of the flags or of the --requests file; a bad line fails the run before any change."""
    single = {
        k: getattr(opts, k) for k in ("email", "phone", "user_id", "anonymous_id", "person_id") if getattr(opts, k)
    }
    if bool(single) == bool(opts.requests):
        raise UsageError("give one of --user-id, --anonymous-id, --email, --phone, --person-id, or --requests FILE")
    if single:
        if not opts.tenant:
            raise UsageError("--tenant is required with --user-id/--email/--phone/--person-id")
        try:
            return [ErasureRequest(tenant=opts.tenant, requested_by=opts.requested_by, **single)]
        except pydantic.ValidationError as err:
            raise UsageError(describe_validation(err, single)) from None
    if not FileSystems.exists(opts.requests):
        raise InputError(f"--requests {opts.requests}: no such file")
    with FileSystems.open(opts.requests) as handle:
        lines = handle.read().decode("utf-8").splitlines()
    requests = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
            data.setdefault("tenant", opts.tenant)
            data.setdefault("requested_by", opts.requested_by)
            requests.append(ErasureRequest.model_validate(data))
        except (ValueError, pydantic.ValidationError) as err:
            text = describe_validation(err, data) if isinstance(err, pydantic.ValidationError) else str(err)
            raise UsageError(f"--requests {opts.requests} line {number}: {text}") from None
    if not requests:
        raise InputError(f"--requests {opts.requests}: no request in the file")
    return requests


def _secret(opts: EraseOptions) -> str:
    secret = os.environ.get("LIVORA_PII_SALT") or pii_secret(opts.lake, opts.view_as(AwsOptions).settings())
    return check_salt(secret, "$LIVORA_PII_SALT / the lake's PII secret")


def _raw_needles(requests: Sequence[ErasureRequest]) -> list[str]:
    """The requests' values in clear, for searching raw dead-letter payloads (never written anywhere)."""
    out = []
    for r in requests:
        out.append(r.value)
        if r.kind == "phone":
            out.append(normalize_phone(r.value) or r.value)
    return out


def erase_tenant(opts: EraseOptions, tenant: str, requests: list[ErasureRequest], secret: str) -> dict:
    """Resolve and erase one tenant's requests; returns its part of the audit record."""
    salt = tenant_salt(secret, tenant)
    seeds: list[tuple[ErasureRequest, str, Subjects]] = []
    for request in requests:
        try:
            kind, values = lake_identifiers(request, salt)
        except ValueError as err:
            raise UsageError(str(err)) from None
        seed = Subjects(person_ids=values) if kind == "person_id" else Subjects(ids=values)
        seeds.append((request, kind, seed))
    union = Subjects()
    for _, _, seed in seeds:
        union.update(seed)
    union.update(_tombstoned(opts.lake, tenant, union))  # a re-run still knows whom it erased

    files = store.event_files(opts.lake, tenant)
    progress = Progress(log, f"{tenant}: event files scanned for identities", every=10.0)
    identities = store.scan_event_identities(files, on_file=progress.add)
    every = pa.concat_tables(identities.values()) if identities else None
    subjects = close_over(every, union) if every is not None else union
    if opts.identity_table:
        client = opts.view_as(AwsOptions).settings().client("dynamodb")
        subjects = store.graph_subjects(client, opts.identity_table, tenant, subjects)
        if every is not None:
            subjects = close_over(every, subjects)
    hits = every.filter(row_mask(every, subjects)) if every is not None else None

    removed: dict[str, dict] = {}
    person_rows: Counter[str] = Counter()
    events = store.Removal()
    events_root = table_path(opts.lake, EVENTS_TABLE)
    for path, table in identities.items():
        if table.num_rows and row_mask(table, subjects).to_pylist().count(True):
            gone = _removed_persons(path, subjects)
            person_rows.update(gone)
            rows = store.rewrite_parquet(path, events_root, subjects, opts.dry_run)
            events.add(rows, path)
    removed["lake_events"] = events.summary()

    dead_dir = opts.dead_letters or table_path(opts.lake, DEAD_LETTERS_DIR)
    needles = needle_pattern([*subjects.ids, *subjects.person_ids, *_raw_needles(requests)])
    removed["dead_letters"] = store.erase_dead_letters(
        dead_dir, tenant, subjects, salt, needles, opts.dry_run
    ).summary()

    others = store.Removal()
    for path in store.per_person_files(opts.lake):
        others.add(store.rewrite_parquet(path, opts.lake, subjects, opts.dry_run, tenant=tenant), path)
    removed["lake_person_tables"] = {**others.summary(), "paths": sorted(_relative(opts.lake, p) for p in others.paths)}

    aws = opts.view_as(AwsOptions).settings()
    persons = sorted(subjects.person_ids)
    if opts.profiles_table:
        removed["dynamodb_profiles"] = {
            "items": store.erase_dynamodb_partitions(
                aws.client("dynamodb"), opts.profiles_table, "pk", "sk", [f"{tenant}#{p}" for p in persons],
                opts.dry_run,
            )
        }  # fmt: skip
    if opts.segments_table and opts.segments_table != opts.profiles_table:
        removed["dynamodb_segments"] = {
            "items": store.erase_dynamodb_partitions(
                aws.client("dynamodb"), opts.segments_table, "pk", "sk", [f"{tenant}#{p}" for p in persons],
                opts.dry_run,
            )
        }  # fmt: skip
    if opts.features_table:
        removed["dynamodb_features"] = {
            "items": store.erase_dynamodb_partitions(
                aws.client("dynamodb"), opts.features_table, "entity", "feature_group",
                [f"{tenant}#{p}" for p in persons], opts.dry_run,
            )
        }  # fmt: skip
    if opts.identity_table:
        removed["dynamodb_identity"] = {
            "items": store.erase_identity_graph(
                aws.client("dynamodb"), opts.identity_table, tenant, subjects, opts.dry_run
            )
        }
    if opts.warehouse:
        removed["warehouse"] = store.erase_warehouse(opts.warehouse, tenant, subjects, opts.dry_run)

    per_request, groups = [], []
    for request, kind, seed in seeds:
        mine = close_over(hits, seed) if hits is not None else seed
        mine.update(_tombstoned(opts.lake, tenant, seed))
        groups.append(mine)
        per_request.append(
            {
                "requested_by": request.requested_by,
                "identifier_kind": kind,
                "identifier_hashes": sorted(seed.ids | seed.person_ids),
                "person_ids": sorted(mine.person_ids),
                "ids": sorted(mine.ids),
                "lake_event_rows": sum(person_rows.get(p, 0) for p in mine.person_ids),
                "found": bool(mine.person_ids),
            }
        )
    return {"tenant": tenant, "requests": per_request, "removed": removed, "subjects": subjects, "groups": groups}


def _tombstoned(lake: str, tenant: str, seed: Subjects) -> Subjects:
    out = Subjects()
    for group in store.read_tombstone_groups(lake, tenant):
        if group.ids & seed.ids or group.person_ids & seed.person_ids:
            out.update(group)
    return out


def _relative(lake: str, path: str) -> str:
    root = lake.rstrip("/")
    return path[len(root) + 1 :] if path.startswith(root + "/") else os.path.relpath(path, os.path.abspath(root))


def _removed_persons(path: str, subjects: Subjects) -> Counter[str]:
    table = read_parquet(path, ["user_id", "anonymous_id", "previous_id", "person_id"])
    gone = table.filter(row_mask(table, subjects))["person_id"].to_pylist()
    return Counter(gone)


def run(argv: list[str] | None = None) -> dict:
    argv = list(argv or [])
    options = parse_options(argv, EraseOptions, __doc__)
    opts = options.view_as(EraseOptions)
    options = with_s3_options(argv, options, opts.lake, opts.dead_letters)  # --aws-* for s3://, --kms-key-id
    opts = options.view_as(EraseOptions)
    requests = load_requests(opts)
    require_lake(opts.lake)
    started = time.monotonic()
    run_id = uuid.uuid4().hex[:12]
    secret = _secret(opts)
    by_tenant: dict[str, list[ErasureRequest]] = {}
    for request in requests:
        by_tenant.setdefault(request.tenant, []).append(request)
    tenants = []
    for tenant, group in sorted(by_tenant.items()):
        result = erase_tenant(opts, tenant, group, secret)
        subjects: Subjects = result.pop("subjects")
        groups: list[Subjects] = result.pop("groups")
        known = store.read_tombstones(opts.lake, tenant).get(tenant, Subjects())
        new = Subjects(subjects.ids - known.ids, subjects.person_ids - known.person_ids)
        if not opts.dry_run and new:
            path = store.write_tombstone(opts.lake, tenant, subjects, run_id, groups)
            result["tombstone"] = _relative(opts.lake, path)
        tenants.append(result)
    record = {
        "run_id": run_id,
        "recorded_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "dry_run": opts.dry_run,
        "pipeline_version": PIPELINE_VERSION,
        "stores": {
            "warehouse": (opts.warehouse or "").split("://", 1)[0] or None,
            "profiles_table": opts.profiles_table,
            "identity_table": opts.identity_table,
            "features_table": opts.features_table,
            "segments_table": opts.segments_table,
        },
        "tenants": tenants,
        "seconds": round(time.monotonic() - started, 2),
    }
    if not opts.dry_run:
        record["audit_record"] = _relative(opts.lake, store.write_audit_record(opts.lake, record))
    return record


def main(argv: list[str] | None = None) -> None:
    main_entry("erase", _main, argv)


def _main(argv: list[str]) -> dict:
    record = run(argv)
    print(json.dumps(record, indent=1, sort_keys=True))
    return record


if __name__ == "__main__":
    main()
