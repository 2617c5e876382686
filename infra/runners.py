"""Beam's real runners from the project's own files: Prism (Go) and the portable Flink job server (Java).

Nothing here downloads at run time. ``python -m infra.runners install`` (``make runners``) builds
Prism from its Go module and fetches Flink's job-server jar through Maven into ``.cache/runners/``,
both at the version of the installed Beam SDK (a job server of another Beam version is not
guaranteed to understand the SDK). Pipelines then take :func:`pipeline_args`, and
:func:`resolve_runner` is the guard an entry point runs before ``pipeline.run()``: it refuses the
``DirectRunner`` (which tries to download Prism from the internet and, on any failure, quietly
reruns the whole job in-process) and points a Prism or Flink run at the cached binaries, failing
with the command to run when they are missing. See docs/runners.md.

    python -m infra.runners install [--flink] [--flink-version 1.20] [--beam-cache]
    python -m infra.runners status
    python -m infra.runners args prism|flink
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

from apache_beam.options.pipeline_options import (
    DebugOptions,
    FlinkRunnerOptions,
    JobServerOptions,
    PipelineOptions,
    PortableOptions,
    PrismRunnerOptions,
    StandardOptions,
)
from apache_beam.version import __version__ as BEAM_VERSION

log = logging.getLogger("livora.runners")

ROOT = Path(__file__).resolve().parent.parent
CACHE_ENV = "LIVORA_RUNNERS_CACHE"
PRISM_PACKAGE = "github.com/apache/beam/sdks/v2/go/cmd/prism"
# EMR 7.x ships Flink 1.20; the embedded runner bundles its own Flink, so any published version runs locally,
# but a job server submitting to a cluster must match the cluster's Flink minor version.
DEFAULT_FLINK_VERSION = "1.20"
FLINK_VERSIONS = tuple(FlinkRunnerOptions.PUBLISHED_FLINK_VERSIONS)
# What Beam's own Flink tests pass on Java 17: Flink reflects into these JDK packages.
JAVA17_ADD_OPENS = tuple(
    f"--add-opens=java.base/{package}=ALL-UNNAMED"
    for package in ("java.lang", "java.util", "java.nio", "java.lang.invoke")
)
DIRECT_RUNNERS = {"DirectRunner", "SwitchingDirectRunner"}
PRISM_RUNNERS = {"PrismRunner"}
FLINK_RUNNERS = {"FlinkRunner"}


class RunnerUnavailable(RuntimeError):
    """A runner's binary is missing or cannot be installed; the message says what to run or why not."""


def cache_dir() -> Path:
    """``.cache/runners`` in the project, or ``$LIVORA_RUNNERS_CACHE``."""
    return Path(os.environ.get(CACHE_ENV) or ROOT / ".cache" / "runners")


def prism_path(version: str = BEAM_VERSION, cache: Path | None = None) -> Path:
    return (cache or cache_dir()) / "prism" / f"v{version}" / "prism"


def flink_artifact(flink_version: str = DEFAULT_FLINK_VERSION, version: str = BEAM_VERSION) -> str:
    return f"org.apache.beam:beam-runners-flink-{flink_version}-job-server:{version}"


def flink_jar_path(
    flink_version: str = DEFAULT_FLINK_VERSION, version: str = BEAM_VERSION, cache: Path | None = None
) -> Path:
    return (cache or cache_dir()) / "flink" / f"beam-runners-flink-{flink_version}-job-server-{version}.jar"


def beam_prism_cache_zip(version: str = BEAM_VERSION) -> Path:
    """Where Beam's SDK looks for a release Prism before downloading it (``PrismJobServer.BIN_CACHE``)."""
    from apache_beam.runners.portability.prism_runner import PrismJobServer

    url = PrismJobServer._construct_download_url(f"v{version}", f"v{version}", platform.system(), platform.machine())
    return Path(PrismJobServer.BIN_CACHE) / os.path.basename(url)


# --- install -------------------------------------------------------------------------------------------------


def _run(cmd: list[str], env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, check=False)


def install_prism(version: str = BEAM_VERSION, cache: Path | None = None) -> Path:
    """Build Prism ``v<version>`` with ``go install`` into the cache; skips when it is there already."""
    target = prism_path(version, cache)
    if target.is_file() and os.access(target, os.X_OK):
        log.info("prism v%s already at %s", version, target)
        return target
    go = shutil.which("go")
    if go is None:
        raise RunnerUnavailable("Prism is built from its Go module: install Go (1.2x) and put `go` on PATH")
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as gobin:
        started = time.monotonic()
        done = _run([go, "install", f"{PRISM_PACKAGE}@v{version}"], env={**os.environ, "GOBIN": gobin})
        if done.returncode != 0:
            raise RunnerUnavailable(
                f"`go install {PRISM_PACKAGE}@v{version}` failed (exit {done.returncode}):\n{done.stdout[-4000:]}"
            )
        os.replace(os.path.join(gobin, "prism"), target)
    log.info("built prism v%s in %.0f s: %s", version, time.monotonic() - started, target)
    return target


def place_in_beam_cache(binary: Path, version: str = BEAM_VERSION) -> Path:
    """Put ``binary`` where Beam's SDK finds a release Prism (a zip holding one file named as the zip without
    ``.zip``), so that ``--runner=PrismRunner`` works without ``--prism_location``. Skips when present."""
    archive = beam_prism_cache_zip(version)
    if archive.is_file():
        return archive
    archive.parent.mkdir(parents=True, exist_ok=True)
    tmp = archive.with_suffix(".zip.tmp")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as out:
        out.write(binary, arcname=archive.stem)
    os.replace(tmp, archive)
    return archive


def install_flink_job_server(
    flink_version: str = DEFAULT_FLINK_VERSION, version: str = BEAM_VERSION, cache: Path | None = None
) -> Path:
    """Copy Beam's Flink job-server jar from Maven into the cache; skips when it is there already."""
    if flink_version not in FLINK_VERSIONS:
        raise RunnerUnavailable(
            f"Beam {BEAM_VERSION} publishes Flink runners for {FLINK_VERSIONS}, not {flink_version}"
        )
    target = flink_jar_path(flink_version, version, cache)
    if target.is_file() and target.stat().st_size > 0:
        log.info("flink job server already at %s", target)
        return target
    mvn = shutil.which("mvn")
    if mvn is None:
        raise RunnerUnavailable("the Flink job-server jar is fetched with Maven: install it (`apt-get install maven`)")
    target.parent.mkdir(parents=True, exist_ok=True)
    artifact = flink_artifact(flink_version, version)
    started = time.monotonic()
    # -U: a miss is cached in ~/.m2 for a day; ask again. The dependency plugin's copy goal needs no pom.
    done = _run(
        [
            mvn, "-B", "-q", "-U",
            "org.apache.maven.plugins:maven-dependency-plugin:3.6.1:copy",
            f"-Dartifact={artifact}",
            f"-DoutputDirectory={target.parent}",
        ]
    )  # fmt: skip
    if done.returncode != 0:
        errors = "\n".join(line for line in done.stdout.splitlines() if "ERROR" in line)[:3000]
        if "not found" in done.stdout or "Could not find artifact" in done.stdout:
            raise RunnerUnavailable(
                f"Maven does not serve {artifact}. The job server must be the Python SDK's Beam version "
                f"({version}); see docs/runners.md for what to do.\n{errors}"
            )
        raise RunnerUnavailable(f"mvn could not copy {artifact} (exit {done.returncode}):\n{errors}")
    if not target.is_file():
        raise RunnerUnavailable(f"mvn reported success but {target} is missing")
    log.info("fetched %s in %.0f s: %s", artifact, time.monotonic() - started, target)
    return target


# --- pipeline arguments --------------------------------------------------------------------------------------


def prism_args(binary: Path | None = None) -> list[str]:
    """``--runner=PrismRunner --prism_location=<cached binary>``; raises when it was not installed."""
    binary = binary or prism_path()
    if not binary.is_file():
        raise RunnerUnavailable(f"no Prism v{BEAM_VERSION} at {binary}: run `make runners`")
    return ["--runner=PrismRunner", f"--prism_location={binary}"]


def flink_args(
    flink_master: str = "[local]",
    flink_version: str = DEFAULT_FLINK_VERSION,
    environment_type: str = "LOOPBACK",
    jar: Path | None = None,
    parallelism: int | None = None,
) -> list[str]:
    """Beam's portable Flink runner through the cached job-server jar.

    ``flink_master="[local]"`` runs Flink embedded in the job server's JVM; ``host:port`` submits to a
    cluster's JobManager (its REST port), where the SDK workers must be reachable from the task managers
    (``environment_type="PROCESS"`` or ``"EXTERNAL"``, not ``LOOPBACK``).
    """
    jar = jar or flink_jar_path(flink_version)
    if not jar.is_file():
        raise RunnerUnavailable(f"no Flink job server at {jar}: run `make runners-flink`")
    args = [
        "--runner=FlinkRunner",
        f"--flink_master={flink_master}",
        f"--flink_version={flink_version}",
        f"--flink_job_server_jar={jar}",
        f"--environment_type={environment_type}",
        *(f"--job_server_jvm_properties={flag}" for flag in JAVA17_ADD_OPENS),
    ]
    if parallelism:
        args.append(f"--parallelism={parallelism}")
    return args


def pipeline_args(runner: str, **kwargs) -> list[str]:
    """The flags for ``runner``: ``prism``, ``flink`` (embedded) or ``fnapi`` (in-process, the default)."""
    if runner == "prism":
        return prism_args(**kwargs)
    if runner == "flink":
        return flink_args(**kwargs)
    if runner == "fnapi":
        return ["--runner=FnApiRunner"]
    raise ValueError(f"unknown runner {runner!r}: prism, flink or fnapi")


# --- the guard for entry points ------------------------------------------------------------------------------


def _runner_name(runner) -> str | None:
    if runner is None or isinstance(runner, str):
        return runner.rsplit(".", 1)[-1] if runner else None
    return type(runner).__name__


def resolve_runner(options: PipelineOptions) -> PipelineOptions:
    """Make the chosen runner run where it was asked to, or fail now with what to do (mutates ``options``).

    - ``DirectRunner``: refused. It downloads Prism from the internet, and when that or the job fails it
      logs at INFO and reruns the whole pipeline in-process: a silent change of runner, and sinks written twice.
    - ``PrismRunner`` without ``--prism_location``: the project's cached binary, else Beam's own cache, else an
      error (Beam would try to download the release binary).
    - ``FlinkRunner`` without ``--flink_job_server_jar``: the cached jar of ``--flink_version``, else an
      error (Beam would download the jar at run time); the Java 17 ``--add-opens`` flags are added when no JVM
      property was given.
    """
    standard = options.view_as(StandardOptions)
    name = _runner_name(standard.runner)
    if name in DIRECT_RUNNERS:
        raise RunnerUnavailable(
            "--runner=DirectRunner first downloads Prism and on failure silently reruns in-process: choose "
            "--runner=FnApiRunner (in-process) or --runner=PrismRunner (after `make runners`)"
        )
    if name in PRISM_RUNNERS:
        # Beam shares one Prism server per process, started with the options of whichever pipeline came
        # first: a later pipeline's --prism_location (or log settings) would be ignored. One server each.
        debug = options.view_as(DebugOptions)
        if not debug.lookup_experiment("disable_prism_server_singleton"):
            debug.add_experiment("disable_prism_server_singleton")
        prism = options.view_as(PrismRunnerOptions)
        if not prism.prism_location:
            if prism_path().is_file():
                prism.prism_location = str(prism_path())
            elif not beam_prism_cache_zip().is_file():
                raise RunnerUnavailable(
                    f"PrismRunner needs a local Prism v{BEAM_VERSION}: run `make runners` "
                    f"(or pass --prism_location=PATH); Beam would otherwise try to download it"
                )
    if name in FLINK_RUNNERS:
        flink = options.view_as(FlinkRunnerOptions)
        if not flink.flink_job_server_jar:
            jar = flink_jar_path(flink.flink_version)
            if not jar.is_file():
                raise RunnerUnavailable(
                    f"FlinkRunner needs a local job-server jar for Flink {flink.flink_version} at {jar}: "
                    "run `make runners-flink` (or pass --flink_job_server_jar=PATH); Beam would otherwise download it"
                )
            flink.flink_job_server_jar = str(jar)
        jobs = options.view_as(JobServerOptions)
        if not jobs.job_server_jvm_properties:
            jobs.job_server_jvm_properties = list(JAVA17_ADD_OPENS)
        portable = options.view_as(PortableOptions)
        if portable.environment_type is None and flink.flink_master in ("[local]", "[auto]"):
            portable.environment_type = "LOOPBACK"
    return options


# --- options a portable runner can send --------------------------------------------------------------------


def _jsonable(value):
    if isinstance(value, dt.date | dt.datetime):
        return value.isoformat()
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    return value


def portable_options(options: PipelineOptions) -> PipelineOptions:
    """A copy of ``options`` that a portable runner (Prism, Flink, PortableRunner, Dataflow) can submit.

    Those runners send every option to the job service as a protobuf ``Struct``, which takes JSON types
    only: an option parsed into a ``datetime.date`` (``--start-date``/``--end-date``/``--as-of`` through
    ``pipelines.options.iso_date``) makes ``pipeline.run()`` fail with ``ParseError: Value 2026-10-20 has
    unexpected type <class 'datetime.date'>``. Dates become ISO strings here; the driver keeps its own
    options (the graph is built from them), and the SDK workers read no option of ours.
    """
    # retain_unknown_options: our option groups are not all direct PipelineOptions subclasses, which is all
    # that Beam's get_all_options() parses; unknown flags come back as strings, overridden by values set on views
    values = {k: _jsonable(v) for k, v in options.get_all_options(retain_unknown_options=True).items()}
    # the flags as given keep options no registered class declares (Beam passes them through as strings)
    return PipelineOptions(list(options._flags or []), **values)


# --- command line --------------------------------------------------------------------------------------------


def status() -> dict:
    found = {
        "beam": BEAM_VERSION,
        "cache": str(cache_dir()),
        "prism": str(prism_path()) if prism_path().is_file() else None,
    }
    for flink_version in FLINK_VERSIONS:
        jar = flink_jar_path(flink_version)
        if jar.is_file():
            found[f"flink-{flink_version}"] = str(jar)
    found["beam_prism_cache"] = str(beam_prism_cache_zip()) if beam_prism_cache_zip().is_file() else None
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m infra.runners", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    install = sub.add_parser("install", help="build Prism (and fetch the Flink job server with --flink) into the cache")
    install.add_argument("--no-prism", dest="prism", action="store_false", help="skip the Prism build")
    install.add_argument("--flink", action="store_true", help="also fetch the Flink job-server jar")
    install.add_argument("--flink-version", default=DEFAULT_FLINK_VERSION, choices=FLINK_VERSIONS)
    install.add_argument(
        "--beam-cache", action="store_true", help="also place Prism in Beam's cache (~/.apache_beam/cache/prism/bin)"
    )
    sub.add_parser("status", help="what is installed")
    args_cmd = sub.add_parser("args", help="print the pipeline flags for a runner")
    args_cmd.add_argument("runner", choices=("prism", "flink", "fnapi"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", force=True)
    try:
        if args.command == "install":
            if args.prism:
                binary = install_prism()
                if args.beam_cache:
                    log.info("Beam's cache: %s", place_in_beam_cache(binary))
            if args.flink:
                install_flink_job_server(args.flink_version)
        elif args.command == "status":
            for key, value in status().items():
                print(f"{key}: {value or '-'}")
        else:
            print(" ".join(pipeline_args(args.runner)))
    except RunnerUnavailable as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
