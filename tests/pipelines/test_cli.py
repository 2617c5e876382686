"""Runs a scheduler can trust: flags checked before work, one line and a documented exit code on failure,
logging that prints (text or JSON), no third-party noise. Subprocesses only where the exit code or stderr
is the thing under test."""

from __future__ import annotations

import importlib
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipelines import cli
from pipelines.errors import (
    EXIT_INPUT,
    EXIT_UNBALANCED,
    EXIT_USAGE,
    ConfigError,
    InputError,
    UnbalancedError,
    UsageError,
)
from pipelines.logs import JsonFormatter, Progress, logging_flags
from pipelines.options import check_flags, load_pii_config, main_entry, unknown_flags_message
from tests.analytics_lake import generate_rows, write_lake

ROOT = Path(__file__).resolve().parents[2]
PIPELINES = cli.available()
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


def run_module(name: str, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", f"pipelines.{name}", *args],
        cwd=ROOT,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="module")
def lake(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cli_lake")
    write_lake(str(root), generate_rows(persons=20, seed=5, days=30))
    return root


@pytest.fixture
def no_logging_setup(monkeypatch):
    """In-process ``main()`` calls must not replace pytest's own log handlers."""
    monkeypatch.setattr("pipelines.options.configure_logging", lambda level, fmt: None)


def test_every_pipeline_module_is_covered():
    assert {"ingest_batch", "funnels", "stream_events", "demo", "report", "check_lake"} <= set(PIPELINES)


@pytest.mark.parametrize("name", PIPELINES)
def test_unknown_flag_exits_2_naming_it_and_the_closest_flag(name: str):
    done = run_module(name, "--log-levle", "DEBUG")
    assert done.returncode == EXIT_USAGE, done.stderr
    assert done.stderr.splitlines() == [f"{name}: unknown flag --log-levle (did you mean --log-level?)"]


@pytest.mark.parametrize("name", PIPELINES)
def test_help_exits_0_and_lists_the_pipelines_flags(name: str, capsys, no_logging_setup):
    module = importlib.import_module(f"pipelines.{name}")
    with pytest.raises(SystemExit) as exit_info:
        module.main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "--log-level" in out and "--log-format" in out


@pytest.mark.parametrize(
    ("name", "args", "message"),
    [
        (
            "funnels",
            ["--lake", "L", "--output", "O", "--tennant", "acme-in", "--windw", "60"],
            "unknown flags --tennant (did you mean --tenant?), --windw (did you mean --window?)",
        ),
        ("ingest_batch", ["--input", "x", "--lake", "L", "--dead-leters", "D"], "--dead-leters (did you mean --dead-letters?)"),
        ("ingest_batch", ["--input", "x", "--lake", "L", "--tenat", "acme-in"], "unknown flag --tenat (did you mean --tenant?)"),
        ("funnels", ["--lkae", "L", "--output", "O"], "unknown flag --lkae (did you mean --lake?)"),  # before "required"
        ("funnels", ["--lake", "L", "--output", "O", "--wind", "60"], "unknown flag --wind"),  # never abbreviated
    ],
)  # fmt: skip
def test_misspelled_flags_are_rejected_before_any_work(name, args, message):
    options_cls = {
        "funnels": importlib.import_module("pipelines.funnels").FunnelOptions,
        "ingest_batch": importlib.import_module("pipelines.ingest_batch").IngestBatchOptions,
    }[name]
    with pytest.raises(UsageError, match=message.replace("?", r"\?").replace("(", r"\(").replace(")", r"\)")):
        check_flags(args, options_cls)


def test_beams_own_options_pass():
    from pipelines.funnels import FunnelOptions

    beam_flags = [
        "--runner=FnApiRunner",
        "--flink_master=localhost:8081",
        "--job_endpoint=embed",
        "--environment_type=LOOPBACK",
        "--prism_location",
        "/opt/prism",
        "--s3_endpoint_url=http://127.0.0.1:5000",
        "--s3_region_name=ap-south-1",
        "--project=p",
        "--region=asia-south1",
        "--temp_location=gs://b/tmp",
        "--streaming",
        "--log-level=debug",
        "--log-format=json",
    ]
    check_flags(["--lake", "L", "--output", "O", *beam_flags], FunnelOptions)


def test_unknown_flags_message_prefers_the_pipelines_own_flags():
    assert unknown_flags_message(["--regoin"], ["--aws-region"], ["--region"]) == (
        "unknown flag --regoin (did you mean --aws-region?)"
    )
    assert (
        unknown_flags_message(["--runer"], ["--lake"], ["--runner"]) == "unknown flag --runer (did you mean --runner?)"
    )
    assert (
        unknown_flags_message(["--lakee=x"], ["--lake"], ["--labels"]) == "unknown flag --lakee (did you mean --lake?)"
    )
    assert unknown_flags_message(["stray"], ["--lake"]) == "unexpected argument 'stray'"


def test_missing_lake_exits_5_with_exactly_one_line(tmp_path):
    missing = tmp_path / "no_lake"
    done = run_module("funnels", "--lake", str(missing), "--steps", "A,B", "--output", str(tmp_path / "out"))
    assert done.returncode == EXIT_INPUT
    assert done.stderr.splitlines() == [
        f"funnels: --lake {missing}: no events table there ({missing}/events does not exist or is empty)"
    ]
    assert not (tmp_path / "out").exists()  # nothing written


@pytest.mark.parametrize(
    ("module", "args"),
    [
        ("retention", ["--start-event", "A", "--return-event", "B", "--output", "O"]),
        ("product_analytics", ["--output", "O"]),
        ("features", ["--as-of", "2026-10-01"]),
        ("segments", ["--config", "S", "--as-of", "2026-10-01"]),
        ("clv", ["--calibration-end", "2026-10-01", "--output", "O"]),
        ("check_lake", []),
        ("reconcile", []),
        ("compact_lake", []),
        ("training_set", ["--spine", "S", "--output", "O"]),
    ],
)
def test_every_lake_reader_rejects_a_missing_lake(module, args, tmp_path, monkeypatch):
    mod = importlib.import_module(f"pipelines.{module}")
    if module == "segments":
        config = tmp_path / "s.yaml"
        config.write_text("segments: [{name: a, rule: {event: {name: X, min_count: 1}}}]")
        args = ["--config", str(config), "--as-of", "2026-10-01"]
    monkeypatch.chdir(tmp_path)
    with pytest.raises(InputError, match="no events table there"):
        mod.run(["--lake", str(tmp_path / "missing"), *args])


def test_an_empty_input_glob_exits_5_with_exactly_one_line(tmp_path):
    pattern = str(tmp_path / "*.ndjson")
    done = run_module("ingest_batch", "--input", pattern, "--lake", str(tmp_path / "lake"))
    assert done.returncode == EXIT_INPUT
    assert done.stderr.splitlines() == [f"ingest_batch: --input {pattern}: matches no file"]


def test_a_funnel_step_that_never_occurs_exits_5_unless_allowed(lake, tmp_path):
    args = ["--lake", str(lake), "--steps", "Product Viewed,Order Complete", "--buckets", "2"]
    done = run_module("funnels", *args, "--output", str(tmp_path / "a"))
    assert done.returncode == EXIT_INPUT
    [line] = done.stderr.splitlines()
    assert line.startswith("funnels: event 'Order Complete' never occurs in ") and "--allow-empty" in line
    assert not (tmp_path / "a").exists()
    from pipelines import funnels

    tables = funnels.run([*args, "--output", str(tmp_path / "b"), "--allow-empty"])
    assert tables["funnel_steps"].column("persons").to_pylist()[1::2] == [0, 0]  # step 2 of each tenant


def test_a_retention_event_outside_the_range_is_an_input_error(lake, tmp_path):
    from pipelines import retention

    args = ["--lake", str(lake), "--start-event", "Product Viewed", "--return-event", "Order Completed"]
    with pytest.raises(InputError, match=r"never occur in .* from 2030-01-01 to 2030-01-31"):
        retention.run([*args, "--start-date", "2030-01-01", "--end-date", "2030-01-31", "--output", str(tmp_path)])


def test_default_run_logs_info_and_no_third_party_noise(lake, tmp_path):
    done = run_module(
        "funnels",
        *("--lake", str(lake), "--steps", "Product Viewed,Order Completed", "--buckets", "2"),
        *("--output", str(tmp_path / "out"), "--runner=FnApiRunner"),
        "--quality-gate=off",  # this synthetic lake has no session ids: the gate's own warning is not noise
    )
    assert done.returncode == 0, done.stderr
    lines = done.stderr.splitlines()
    assert any(" INFO livora.funnels: 1 funnel(s) over " in line for line in lines)
    assert any(" INFO livora.funnels: wrote " in line for line in lines)
    assert "apitools" not in done.stderr and "WARNING" not in done.stderr, done.stderr


def test_json_logs_every_stderr_line_is_one_json_object(lake, tmp_path):
    done = run_module(
        "funnels",
        *("--lake", str(lake), "--steps", "Product Viewed,Order Completed", "--buckets", "2"),
        *("--output", str(tmp_path / "out"), "--log-format", "json"),
    )
    assert done.returncode == 0, done.stderr
    records = [json.loads(line) for line in done.stderr.splitlines()]  # fails on any non-JSON line
    assert records and all({"time", "level", "logger", "message"} <= set(r) for r in records)
    assert any(r["logger"] == "livora.funnels" and r["level"] == "INFO" for r in records)


def test_log_level_warning_silences_info(tmp_path):
    done = run_module(
        "report", "--input", str(tmp_path), "--output", str(tmp_path / "r.html"), "--log-level", "WARNING"
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    assert (tmp_path / "r.html").exists()


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (UsageError("bad"), EXIT_USAGE),
        (InputError("gone"), EXIT_INPUT),
        (UnbalancedError("ingest totals do not balance:\n 3 parsed"), EXIT_UNBALANCED),
    ],
)
def test_main_entry_maps_errors_to_one_line_and_their_code(error, code, capsys, no_logging_setup):
    def body(argv):
        raise error

    with pytest.raises(SystemExit) as exit_info:
        main_entry("demo_pipe", body, [])
    assert exit_info.value.code == code
    assert capsys.readouterr().err.splitlines() == [f"demo_pipe: {' '.join(str(error).split())}"]


def test_main_entry_lets_a_bug_keep_its_traceback(no_logging_setup):
    def body(argv):
        raise KeyError("bug")

    with pytest.raises(KeyError):
        main_entry("demo_pipe", body, [])


def test_a_bad_funnel_config_names_the_file_entry_and_field(tmp_path):
    from pipelines import funnels

    config = tmp_path / "funnels.yaml"
    config.write_text(
        "funnels:\n  - {name: ok, steps: [a, b]}\n  - {name: checkout, steps: [a], window_seconds: soon}\n"
    )
    with pytest.raises(ConfigError) as info:
        funnels.run(["--lake", "L", "--config", str(config), "--output", "O"])
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{config}: funnel [1] ('checkout'), field window_seconds: ")


def test_a_bad_segments_config_names_the_file_entry_and_field(tmp_path):
    from pipelines import segments

    config = tmp_path / "segments.yaml"
    config.write_text(
        "segments:\n  - {name: ok, rule: {event: {name: X, min_count: 1}}}\n"
        "  - {name: vip, rule: {event: {name: X, min_count: -1}}}\n"
    )
    with pytest.raises(ConfigError) as info:
        segments.run(["--lake", "L", "--config", str(config), "--as-of", "2026-10-01"])
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{config}: entry segments[1] ('vip'), field segments[1].rule.")
    assert "min_count" in message


def test_a_bad_pii_policy_names_the_tenant_and_field(tmp_path):
    path = tmp_path / "pii.json"
    path.write_text('{"acme-in": {"hash_fields": 3}}')
    with pytest.raises(ConfigError, match=r"pii.json: tenant 'acme-in', field hash_fields: "):
        load_pii_config(str(path))


def test_a_bad_tracking_plan_names_the_file_and_field(tmp_path):
    from pipelines.options import check_tracking_plans

    (tmp_path / "acme.yaml").write_text("tenant_id: acme-in\nevents:\n  X: {properties: {a: {type: [1]}}}\n")
    with pytest.raises(ConfigError) as info:
        check_tracking_plans(str(tmp_path))
    assert str(info.value).startswith(f"{tmp_path}/acme.yaml: field events.X.properties.a.type")


def test_progress_logs_at_most_one_line_per_interval_with_rate_and_eta(caplog):
    now = [0.0]
    progress = Progress(logging.getLogger("t.progress"), "partitions", total=100, every=10.0, clock=lambda: now[0])
    with caplog.at_level(logging.INFO, logger="t.progress"):
        for _ in range(50):  # 50 items over 25 s: lines at 10 s and 20 s only
            now[0] += 0.5
            progress.add()
        progress.finish()
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "partitions: 20/100 (20%), 2.0/s, ETA 40s",
        "partitions: 40/100 (40%), 2.0/s, ETA 30s",
        "partitions: 50/100 (50%), 2.0/s, done in 25.0s",
    ]
    assert caplog.records[0].progress == {"done": 20, "total": 100, "rate_per_s": 2.0, "elapsed_s": 10.0, "eta_s": 40.0}


def test_json_formatter_carries_extra_fields():
    record = logging.LogRecord("livora.x", logging.INFO, __file__, 1, "read %d files", (3,), None)
    record.lake = "s3://b/lake"
    doc = json.loads(JsonFormatter().format(record))
    assert doc["message"] == "read 3 files" and doc["level"] == "INFO" and doc["logger"] == "livora.x"
    assert doc["lake"] == "s3://b/lake" and doc["time"].endswith("+00:00")


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        ([], ("INFO", "text")),
        (["--log-level", "debug", "--log-format=json"], ("DEBUG", "json")),
        (["--log-level=LOUD"], ("INFO", "text")),  # the full parser rejects it; logging falls back meanwhile
    ],
)
def test_logging_flags_are_read_before_anything_else(argv, expected):
    assert logging_flags(argv) == expected


def test_livora_names_the_closest_pipeline(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["funels"])
    assert exit_info.value.code == EXIT_USAGE
    assert capsys.readouterr().err.splitlines() == ["livora: unknown pipeline 'funels' (did you mean funnels?)"]
