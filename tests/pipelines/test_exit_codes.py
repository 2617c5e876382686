"""Every analytics pipeline, run as its own process several times in a row, exits 0 every time.

They used to abort at exit in about 1 run in 5 (code 134, "terminate called without an active exception":
Arrow's reader threads releasing a Python buffer during interpreter shutdown; see
:mod:`connectors.analytics_io`). ``LIVORA_REPEAT_RUNS`` sets the runs per pipeline (default 3 keeps CI
fast; the issue's acceptance figure is 50, run with ``--timeout=0``: 50 runs outlast pytest-timeout's
600 s per test).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.analytics_lake import generate_rows, write_lake
from tests.pipelines.test_segments import CONFIG

ROOT = Path(__file__).resolve().parents[2]
REPEAT = int(os.environ.get("LIVORA_REPEAT_RUNS", "3"))

PIPELINES = {
    "funnels": ["--steps", "Product Viewed,Order Completed", "--window", "86400", "--buckets", "2"],
    "retention": [
        "--start-event", "Product Viewed", "--return-event", "Order Completed", "--period", "week", "--periods", "4",
        "--buckets", "2",
    ],
    "product_analytics": ["--buckets", "2"],
    "features": ["--as-of", "2026-10-20", "--buckets", "2"],
    "clv": ["--calibration-end", "2026-10-01"],
    "segments": ["--as-of", "2026-10-20", "--buckets", "2"],
}  # fmt: skip


@pytest.fixture(scope="module")
def lake(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("exit_lake")
    write_lake(str(root), generate_rows(persons=40, seed=5, days=90))
    return root


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(PIPELINES))
def test_pipeline_exits_zero_every_run(name: str, lake: Path, tmp_path: Path):
    out = tmp_path / "out"
    args = ["--lake", str(lake), *PIPELINES[name]]
    if name == "features":
        args += ["--output-lake", str(out)]
    else:
        args += ["--output", str(out)]
    if name == "segments":
        config = tmp_path / "segments.yaml"
        config.write_text(CONFIG)
        args += ["--config", str(config)]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONFAULTHANDLER": "1"}
    failures = []
    for attempt in range(REPEAT):
        done = subprocess.run(
            [sys.executable, "-m", f"pipelines.{name}", *args], cwd=ROOT, env=env, capture_output=True, timeout=600
        )
        if done.returncode != 0:
            failures.append((attempt, done.returncode, done.stderr.decode(errors="replace")[-1500:]))
    assert not failures, f"{len(failures)} of {REPEAT} runs of pipelines.{name} failed: {failures[:2]}"


@pytest.mark.slow
def test_ingest_exits_zero_every_run(tmp_path: Path):
    """The daily command as a scheduler runs it (the input already ingested after the first run: skipped), and
    with --reprocess (the whole pipeline every time)."""
    from connectors.synthetic import generate_events

    source = tmp_path / "events.ndjson"
    source.write_bytes(b"".join(r.replace(b"\n", b" ") + b"\n" for r in generate_events(300, seed=9)))
    base = ["--input", str(source), "--lake", str(tmp_path / "lake")]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONFAULTHANDLER": "1"}
    failures = []
    for attempt in range(REPEAT):
        for extra in ([], ["--reprocess"]):
            done = subprocess.run(
                [sys.executable, "-m", "pipelines.ingest_batch", *base, *extra],
                cwd=ROOT,
                env=env,
                capture_output=True,
                timeout=600,
            )
            if done.returncode != 0:
                failures.append((attempt, extra, done.returncode, done.stderr.decode(errors="replace")[-1500:]))
    assert not failures, f"{len(failures)} of {2 * REPEAT} ingest runs failed: {failures[:2]}"
