"""--profile dev|staging|prod (and $LIVORA_PROFILE): the run profile sets the quality gate's default."""

from __future__ import annotations

import glob
import json
import os
import pathlib

import pytest

from pipelines import demo, funnels, ingest_batch, product_analytics, retention, stream_events
from pipelines.errors import EXIT_QUALITY, EXIT_USAGE
from pipelines.options import PROFILE_ENV, PROFILES, parse_options
from tests.pipelines.test_quality_gate import BAD, _BuggyWrite, _events, _files, _last_record, _partition

# the rule, written out here rather than read from the code: production profiles block, dev warns
EXPECTED_GATE = {"dev": "warn", "staging": "block", "prod": "block"}

PIPELINES = {
    "ingest_batch": (ingest_batch.IngestBatchOptions, ["--input", "in.ndjson", "--lake", "lake"]),
    "funnels": (funnels.FunnelOptions, ["--lake", "lake", "--steps", "A,B", "--output", "out"]),
    "retention": (
        retention.RetentionOptions,
        ["--lake", "lake", "--start-event", "A", "--return-event", "B", "--output", "out"],
    ),
    "product_analytics": (product_analytics.ProductAnalyticsOptions, ["--lake", "lake", "--output", "out"]),
    "stream_events": (stream_events.StreamEventsOptions, ["--stream", "s", "--lake", "lake"]),
}


def _gate(name: str, *flags: str) -> tuple[str, str]:
    options_cls, required = PIPELINES[name]
    opts = parse_options([*required, *flags], options_cls, "").view_as(options_cls)
    return opts.profile, opts.quality_gate


def test_profiles_are_the_infra_environments():
    """One vocabulary: a run profile is named as the environment `python -m infra.app --env` deploys."""
    from infra.cdk.config import ENVIRONMENTS

    assert sorted(PROFILES) == sorted(ENVIRONMENTS)


@pytest.mark.parametrize("name", sorted(PIPELINES))
def test_without_a_profile_the_run_is_dev_and_warns(name):
    assert _gate(name) == ("dev", "warn")


@pytest.mark.parametrize("profile", sorted(EXPECTED_GATE))
@pytest.mark.parametrize("name", sorted(PIPELINES))
def test_the_profile_sets_the_gate_default(name, profile):
    assert _gate(name, "--profile", profile) == (profile, EXPECTED_GATE[profile])
    assert _gate(name, f"--profile={profile}") == (profile, EXPECTED_GATE[profile])


@pytest.mark.parametrize("name", ["ingest_batch", "funnels", "stream_events"])
def test_the_environment_variable_is_the_default_profile(name, monkeypatch):
    monkeypatch.setenv(PROFILE_ENV, "prod")
    assert _gate(name) == ("prod", "block")
    monkeypatch.setenv(PROFILE_ENV, "staging")
    assert _gate(name) == ("staging", "block")
    assert _gate(name, "--profile", "dev") == ("dev", "warn")  # the flag wins over the variable


@pytest.mark.parametrize("name", ["ingest_batch", "retention", "stream_events"])
@pytest.mark.parametrize("mode", ["off", "warn", "block"])
def test_an_explicit_quality_gate_always_wins(name, mode, monkeypatch):
    assert _gate(name, "--profile", "prod", "--quality-gate", mode) == ("prod", mode)
    assert _gate(name, "--quality-gate", mode, "--profile", "dev") == ("dev", mode)
    monkeypatch.setenv(PROFILE_ENV, "prod")
    assert _gate(name, "--quality-gate", mode) == ("prod", mode)


@pytest.mark.parametrize("module", [ingest_batch, funnels, stream_events])
def test_an_unknown_profile_is_a_one_line_usage_error(module, tmp_path, capsys):
    name = module.__name__.rsplit(".", 1)[-1]
    _, required = PIPELINES[name]
    with pytest.raises(SystemExit) as exit_info:
        module.main([*required, "--profile", "production"])
    assert exit_info.value.code == EXIT_USAGE == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"{name}: ") and "'production'" in err[0]
    assert all(p in err[0] for p in PROFILES)


def test_an_unknown_profile_in_the_environment_is_a_usage_error_naming_the_variable(monkeypatch, capsys):
    monkeypatch.setenv(PROFILE_ENV, "Prod")
    with pytest.raises(SystemExit) as exit_info:
        ingest_batch.main(PIPELINES["ingest_batch"][1])
    assert exit_info.value.code == EXIT_USAGE
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "'Prod'" in err[0] and f"${PROFILE_ENV}" in err[0]


def test_help_names_the_profile_and_the_gate_defaults(monkeypatch, capsys):
    monkeypatch.setenv(PROFILE_ENV, "staging")
    with pytest.raises(SystemExit) as exit_info:
        ingest_batch.main(["--help"])
    assert exit_info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "--profile {dev,staging,prod}" in text
    assert "here: staging (from $LIVORA_PROFILE)" in text
    assert "Default from --profile: warn for dev, block for staging and prod" in text


def test_streaming_mode_names_the_profile_that_asked_for_block(monkeypatch, capsys):
    """Continuous --streaming has no gate: a prod profile must say so rather than run ungated."""
    monkeypatch.setenv(PROFILE_ENV, "prod")
    with pytest.raises(SystemExit) as exit_info:
        stream_events.main(["--stream", "s", "--lake", "/nonexistent", "--streaming"])
    assert exit_info.value.code == EXIT_USAGE
    err = capsys.readouterr().err
    assert "--quality-gate block (the default of --profile prod)" in err and "--quality-gate warn or off" in err


def test_a_prod_ingest_of_a_corrupted_partition_exits_7_without_the_flag(tmp_path, monkeypatch, capsys):
    """The scheduler's way: LIVORA_PROFILE=prod in the job's environment, no --quality-gate on the command line."""
    source = _events(str(tmp_path / "events.ndjson"))
    lake = str(tmp_path / "lake")
    monkeypatch.setenv(PROFILE_ENV, "prod")
    monkeypatch.setattr(ingest_batch, "WriteLakePartitions", _BuggyWrite)
    with pytest.raises(SystemExit) as exit_info:
        ingest_batch.main(["--input", source, "--lake", lake])
    assert exit_info.value.code == EXIT_QUALITY == 7
    assert "quality gate: 1 of" in capsys.readouterr().err
    assert _files(_partition(lake, "_quarantine/events")) and not _files(_partition(lake))
    record = _last_record(lake, "ingest_batch")
    assert record["profile"] == "prod" and record["exit_code"] == 7
    assert record["counts"]["quality_gate"] == "block"
    assert f"{BAD[0]}/{BAD[1]}" in record["counts"]["quality_failed"]


def test_the_run_record_names_the_profile(tmp_path, capsys):
    lake = tmp_path / "lake"
    (lake / "events").mkdir(parents=True)
    for argv, profile in (([], "dev"), (["--profile", "staging"], "staging")):
        with pytest.raises(SystemExit):  # a failing run is recorded too (no such input)
            ingest_batch.main(["--input", str(tmp_path / "missing.ndjson"), "--lake", str(lake), *argv])
        assert _last_record(str(lake), "ingest_batch")["profile"] == profile


def test_a_pipeline_without_a_profile_records_none(tmp_path):
    """report re-parses funnel runs' flags: their profile is not the report's."""
    lake = tmp_path / "lake"
    (lake / "events").mkdir(parents=True)
    from pipelines import check_lake

    with pytest.raises(SystemExit):
        check_lake.main(["--lake", str(lake), "--profile", "prod"])  # not a flag of check_lake: usage error
    record = _last_record(str(lake), "check_lake")
    assert record["profile"] is None and record["exit_code"] == EXIT_USAGE


def test_the_demo_runs_in_dev_whatever_the_environment_says(tmp_path, monkeypatch):
    """The demo warns and goes on: with $LIVORA_PROFILE=prod in the shell, a failing partition still publishes."""
    from infra.geoip_sample import build_sample_city_db

    monkeypatch.setenv(PROFILE_ENV, "prod")
    monkeypatch.setattr(ingest_batch, "WriteLakePartitions", _BuggyWrite)
    workdir = str(tmp_path)
    geoip = str(build_sample_city_db(os.path.join(workdir, "geoip.mmdb")))
    ingest = demo.run_batch_ingest(workdir, 1500, 5, geoip)
    lake = os.path.join(workdir, "lake")
    assert ingest["lake_rows"] > 0 and _files(_partition(lake))  # the corrupted partition is published (warn)
    paths = glob.glob(f"{lake}/_quality/**/*.json", recursive=True)
    results = [json.loads(pathlib.Path(p).read_text()) for p in paths]
    assert any(r.get("success") is False for r in results)  # ... and it did fail the suite
    out = demo.run_analytics(lake, os.path.join(workdir, "analytics"))
    assert os.path.isfile(out["report"])
