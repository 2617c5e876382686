"""infra.runners without building anything: cache layout, flags, the runner guard, install errors and skips."""

from __future__ import annotations

import datetime as dt
import os
import stat
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from apache_beam.options.pipeline_options import (
    FlinkRunnerOptions,
    JobServerOptions,
    PipelineOptions,
    PortableOptions,
    PrismRunnerOptions,
    StandardOptions,
)
from apache_beam.runners.portability.portable_runner import JobServiceHandle
from apache_beam.runners.portability.prism_runner import PrismJobServer
from apache_beam.version import __version__ as beam_version
from google.protobuf.json_format import ParseError

from infra import runners
from pipelines.features import FeaturesOptions
from pipelines.options import DateRangeOptions


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv(runners.CACHE_ENV, str(tmp_path / "cache"))
    # Beam's own prism cache, so that no test sees (or writes) the real ~/.apache_beam
    monkeypatch.setattr(PrismJobServer, "BIN_CACHE", str(tmp_path / "beam_cache"))
    return tmp_path / "cache"


def touch(path, mode=0o755):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"#!/bin/sh\n")
    path.chmod(mode)
    return path


def fake_tool(bin_dir, name, script):
    """An executable ``name`` on a PATH of its own: the test sees exactly what the install step runs."""
    touch(bin_dir / name).write_text("#!/bin/sh\n" + script)


def test_paths_follow_the_installed_sdk_version(cache):
    assert runners.prism_path() == cache / "prism" / f"v{beam_version}" / "prism"
    assert runners.flink_jar_path("1.19") == cache / "flink" / f"beam-runners-flink-1.19-job-server-{beam_version}.jar"
    assert runners.flink_artifact("2.0") == f"org.apache.beam:beam-runners-flink-2.0-job-server:{beam_version}"
    # the name Beam's SDK looks for before it downloads a release Prism
    assert runners.beam_prism_cache_zip().name == f"apache_beam-v{beam_version}-prism-linux-amd64.zip"


def test_args_need_the_installed_binaries(cache):
    with pytest.raises(runners.RunnerUnavailable, match="make runners"):
        runners.pipeline_args("prism")
    with pytest.raises(runners.RunnerUnavailable, match="make runners-flink"):
        runners.pipeline_args("flink")
    prism = touch(runners.prism_path())
    jar = touch(runners.flink_jar_path(), 0o644)
    assert runners.pipeline_args("prism") == ["--runner=PrismRunner", f"--prism_location={prism}"]
    flink = runners.pipeline_args("flink", parallelism=2)
    assert flink[:5] == [
        "--runner=FlinkRunner",
        "--flink_master=[local]",
        f"--flink_version={runners.DEFAULT_FLINK_VERSION}",
        f"--flink_job_server_jar={jar}",
        "--environment_type=LOOPBACK",
    ]
    assert "--job_server_jvm_properties=--add-opens=java.base/java.lang=ALL-UNNAMED" in flink
    assert flink[-1] == "--parallelism=2"
    # Beam's own parser reads them back as meant
    options = PipelineOptions(flink)
    assert options.view_as(FlinkRunnerOptions).flink_job_server_jar == str(jar)
    assert "--add-opens=java.base/java.util=ALL-UNNAMED" in options.view_as(JobServerOptions).job_server_jvm_properties
    assert runners.pipeline_args("fnapi") == ["--runner=FnApiRunner"]
    with pytest.raises(ValueError, match="unknown runner"):
        runners.pipeline_args("spark")


def test_guard_refuses_the_direct_runner_and_leaves_in_process_alone(cache):
    for runner in ("DirectRunner", "apache_beam.runners.direct.direct_runner.SwitchingDirectRunner"):
        with pytest.raises(runners.RunnerUnavailable, match="silently reruns in-process"):
            runners.resolve_runner(PipelineOptions([f"--runner={runner}"]))
    options = PipelineOptions(["--runner=FnApiRunner"])
    assert runners.resolve_runner(options) is options
    assert options.view_as(PrismRunnerOptions).prism_location is None


def test_guard_points_prism_at_the_cache_or_fails_before_a_download(cache):
    with pytest.raises(runners.RunnerUnavailable, match="would otherwise try to download"):
        runners.resolve_runner(PipelineOptions(["--runner=PrismRunner"]))
    # Beam's own cache holding the release zip is enough: Beam finds it without a location
    touch(runners.beam_prism_cache_zip(), 0o644)
    options = runners.resolve_runner(PipelineOptions(["--runner=PrismRunner"]))
    assert options.view_as(PrismRunnerOptions).prism_location is None
    # the project's build wins, and an explicit location is kept
    prism = touch(runners.prism_path())
    options = runners.resolve_runner(PipelineOptions(["--runner=PrismRunner"]))
    assert options.view_as(PrismRunnerOptions).prism_location == str(prism)
    options = runners.resolve_runner(PipelineOptions(["--runner=PrismRunner", "--prism_location=/opt/prism"]))
    assert options.view_as(PrismRunnerOptions).prism_location == "/opt/prism"


def test_guard_gives_flink_the_cached_jar_and_java17_flags(cache):
    with pytest.raises(runners.RunnerUnavailable, match="would otherwise download"):
        runners.resolve_runner(PipelineOptions(["--runner=FlinkRunner", "--flink_version=1.19"]))
    jar = touch(runners.flink_jar_path("1.19"), 0o644)
    options = runners.resolve_runner(
        PipelineOptions(["--runner=FlinkRunner", "--flink_version=1.19", "--flink_master=[local]"])
    )
    assert options.view_as(FlinkRunnerOptions).flink_job_server_jar == str(jar)
    assert options.view_as(JobServerOptions).job_server_jvm_properties == list(runners.JAVA17_ADD_OPENS)
    assert options.view_as(PortableOptions).environment_type == "LOOPBACK"
    # a cluster master keeps the environment it was given; given JVM flags are not replaced
    options = runners.resolve_runner(
        PipelineOptions(
            [
                "--runner=FlinkRunner",
                "--flink_version=1.19",
                "--flink_master=emr-master:8081",
                "--environment_type=PROCESS",
                "--job_server_jvm_properties=-Xmx2g",
            ]
        )
    )
    assert options.view_as(PortableOptions).environment_type == "PROCESS"
    assert options.view_as(JobServerOptions).job_server_jvm_properties == ["-Xmx2g"]


def test_date_options_cannot_be_submitted_to_a_portable_runner_until_made_portable():
    argv = ["--lake", "/l", "--as-of", "2026-10-20", "--start-date", "2026-10-01", "--runner=PrismRunner"]
    options = PipelineOptions(argv)
    opts = options.view_as(FeaturesOptions)
    opts.as_of = [dt.date(2026, 10, 20)]  # as pipelines.features sets it
    assert options.view_as(DateRangeOptions).start_date == dt.date(2026, 10, 1)
    # what PortableRunner sends to the job service (Prism, Flink, PortableRunner): the old path fails
    with pytest.raises((ParseError, ValueError)):  # ParseError on the date (alone), or protobuf's "Value not set"
        JobServiceHandle.encode_pipeline_options(options.get_all_options(retain_unknown_options=True))
    with pytest.raises(ParseError, match=r"datetime\.date"):
        JobServiceHandle.encode_pipeline_options({"start_date": options.view_as(DateRangeOptions).start_date})
    fixed = runners.portable_options(options)
    # without retained unknowns only options of Beam-registered classes go (ours may be left out): it encodes
    JobServiceHandle.encode_pipeline_options(fixed.get_all_options(retain_unknown_options=False))
    struct = JobServiceHandle.encode_pipeline_options(fixed.get_all_options(retain_unknown_options=True))
    assert struct["beam:option:start_date:v1"] == "2026-10-01"
    assert list(struct["beam:option:as_of:v1"]) == ["2026-10-20"]
    assert struct["beam:option:lake:v1"] == "/l"
    assert fixed.view_as(StandardOptions).runner == "PrismRunner"
    # the driver's own options are untouched
    assert options.view_as(DateRangeOptions).start_date == dt.date(2026, 10, 1)


def test_install_prism_skips_a_present_binary_and_needs_go(cache, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(runners.RunnerUnavailable, match="install Go"):
        runners.install_prism()
    present = touch(runners.prism_path())
    assert runners.install_prism() == present  # no `go` was needed


def test_install_prism_runs_go_install_at_the_sdk_version(cache, tmp_path, monkeypatch):
    tools = tmp_path / "tools"
    log = tmp_path / "go.args"
    fake_tool(tools, "go", f'echo "$@" > {log}\nprintf "#!/bin/sh\\n" > "$GOBIN/prism"\n/bin/chmod +x "$GOBIN/prism"\n')
    monkeypatch.setenv("PATH", str(tools))
    built = runners.install_prism()
    assert log.read_text().split() == ["install", f"{runners.PRISM_PACKAGE}@v{beam_version}"]
    assert built == runners.prism_path() and os.access(built, os.X_OK)
    assert os.listdir(built.parent) == ["prism"]  # no temporary GOBIN left behind


def test_install_prism_reports_a_failed_build(cache, tmp_path, monkeypatch):
    fake_tool(tmp_path / "tools", "go", 'echo "go: module lookup disabled"; exit 1\n')
    monkeypatch.setenv("PATH", str(tmp_path / "tools"))
    with pytest.raises(runners.RunnerUnavailable, match="module lookup disabled"):
        runners.install_prism()
    assert not runners.prism_path().exists()


def test_install_flink_says_when_maven_does_not_serve_the_jar(cache, tmp_path, monkeypatch):
    tools = tmp_path / "tools"
    missing = (
        "[ERROR] Failed ... Could not find artifact org.apache.beam:beam-runners-flink-1.20-job-server:jar:X in central"
    )
    fake_tool(tools, "mvn", f'echo "{missing}"\nexit 1\n')
    monkeypatch.setenv("PATH", str(tools))
    with pytest.raises(runners.RunnerUnavailable, match=r"Maven does not serve .*beam-runners-flink-1\.20-job-server"):
        runners.install_flink_job_server()
    with pytest.raises(runners.RunnerUnavailable, match="publishes Flink runners for"):
        runners.install_flink_job_server("1.17")


def test_install_flink_copies_the_jar_once(cache, tmp_path, monkeypatch):
    tools = tmp_path / "tools"
    calls = tmp_path / "mvn.calls"
    # copy goal: write <outputDirectory>/<artifactId>-<version>.jar
    fake_tool(
        tools,
        "mvn",
        f'echo "$@" >> {calls}\n'
        'for a in "$@"; do case "$a" in -DoutputDirectory=*) out="${a#*=}";; -Dartifact=*) art="${a#*=}";; esac; done\n'
        "IFS=: read g a v <<EOF\n$art\nEOF\n"
        'echo jar > "$out/$a-$v.jar"\n',
    )
    monkeypatch.setenv("PATH", str(tools))
    jar = runners.install_flink_job_server("1.19")
    assert jar == runners.flink_jar_path("1.19") and jar.read_text() == "jar\n"
    assert runners.install_flink_job_server("1.19") == jar
    assert len(calls.read_text().splitlines()) == 1  # the second call skipped Maven
    assert f"-Dartifact={runners.flink_artifact('1.19')}" in calls.read_text()


def test_beam_finds_the_placed_prism_in_its_own_cache(cache, tmp_path):
    binary = touch(tmp_path / "prism")
    archive = runners.place_in_beam_cache(binary)
    assert zipfile.ZipFile(archive).namelist() == [archive.stem]
    # Beam's own unpacking of a cached release zip gives an executable binary with our content
    unpacked = PrismJobServer._prepare_executable(str(archive), PrismJobServer.BIN_CACHE, ignore_cache=True)
    assert Path(unpacked).read_bytes() == b"#!/bin/sh\n"
    assert os.stat(unpacked).st_mode & stat.S_IEXEC


def test_cli_status_and_args(cache):
    touch(runners.prism_path())
    out = subprocess.run(
        [sys.executable, "-m", "infra.runners", "args", "prism"],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, runners.CACHE_ENV: str(cache)},
    ).stdout
    assert out.strip() == f"--runner=PrismRunner --prism_location={runners.prism_path()}"
    failed = subprocess.run(
        [sys.executable, "-m", "infra.runners", "args", "flink"],
        capture_output=True,
        text=True,
        env={**os.environ, runners.CACHE_ENV: str(cache)},
    )
    assert failed.returncode == 1 and "make runners-flink" in failed.stderr
    assert "apitools" not in failed.stderr, failed.stderr  # Beam's import noise is filtered here too
