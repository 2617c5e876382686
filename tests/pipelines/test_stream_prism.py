"""``stream_events --streaming`` run whole on Prism (a runner that streams) against the moto server.

The unbounded reader, shard discovery, fixed windows, every sink and the per-window commits run as
one job; a run stops by draining (``--max-run-seconds``), and a run killed with SIGKILL before its
commit is followed by one that loses and doubles nothing.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import pytest

from connectors.checkpoints import CheckpointStore
from connectors.kinesis import ShardReader, StartPosition, default_kinesis_client, list_shards
from connectors.lake import read_dead_letters
from connectors.synthetic import generate_events
from infra.runners import pipeline_args, prism_path
from pipelines.demo_stream import put_records
from tests.pipelines.test_stream_events import (
    _argv,
    _assert_profiles_match_lake,
    _lake_keys,
    _resources,
    _warehouse_keys,
)

pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow,
    pytest.mark.portable,
    pytest.mark.skipif(
        not prism_path().is_file(), reason=f"Prism binary missing at {prism_path()}: run `make runners`"
    ),
]
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
WINDOW = 3
# Records put while the job runs must be put at least 5 s before its drain, once the first window's file
# exists: driver + Prism start-up + that window + the 2 s watermark margin. Start-up to the first lake
# file was measured at 11-13 s on this 2-core machine at load 8-10 (bench_stream.py -k sustained), which
# left 20 s runs 2-4 s of margin: the guard in _put_while_running then failed now and then.
RUN_SECONDS = 30


def _command(aws, res, lake: str, warehouse: str, run_seconds: float) -> list[str]:
    argv = _argv(aws, res, lake, warehouse, "--window-seconds", str(WINDOW), "--discover-seconds=2")
    extra = ["--streaming", *pipeline_args("prism"), f"--max-run-seconds={run_seconds}", "--lease-seconds=3"]
    return [sys.executable, "-m", "pipelines.stream_events", *argv, *extra]


def _start(cmd: list[str], tmp_path, name: str, **env: str) -> subprocess.Popen:
    environ = {**os.environ, "PYTHONPATH": ROOT, **env}
    out = open(tmp_path / f"{name}.out", "w")  # noqa: SIM115 - closed with the process
    # own session: a SIGKILL to the group takes the driver and the Prism server it started
    return subprocess.Popen(cmd, cwd=ROOT, env=environ, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def _finish(proc: subprocess.Popen, tmp_path, name: str, timeout: float = 120) -> str:
    rc = proc.wait(timeout=timeout)
    text = (tmp_path / f"{name}.out").read_text()
    assert rc == 0, text[-3000:]
    return text


def _put_while_running(proc, tmp_path, name: str, kinesis, stream: str, records: list[bytes]) -> None:
    """Put ``records`` once the job is reading (its first lake file exists), well before its drain."""
    out, lake = tmp_path / f"{name}.out", tmp_path / "lake" / "events"
    deadline = time.monotonic() + 60
    while not (out.exists() and "started" in out.read_text() and any(lake.rglob("part-w*"))):
        assert proc.poll() is None and time.monotonic() < deadline, out.read_text()[-3000:]
        time.sleep(0.2)
    stop_at = int(_run_id(out.read_text())[1:]) / 1000 + RUN_SECONDS  # the run id is its start, epoch ms
    put_records(kinesis, stream, records)
    assert time.time() < stop_at - 5, "the job started too slowly for this test's timing: raise RUN_SECONDS"


def _run_id(text: str) -> str:
    return re.search(r"streaming run (r\d+) started", text).group(1)


def _last_positions(aws, stream: str) -> dict[str, str]:
    """Each shard's last sequence number, read independently of the pipeline."""
    client = default_kinesis_client(aws)
    last = {}
    for shard in list_shards(client, stream):
        reader = ShardReader(client, stream, shard.shard_id, min_call_interval=0)
        reader.open(None, StartPosition.TRIM_HORIZON)
        while True:
            records = reader.poll()
            if records:
                last[shard.shard_id] = records[-1].sequence
            if not records and reader.millis_behind == 0:
                break
    return last


def _assert_exactly_once(aws, res, lake: str, warehouse: str, records: list[bytes]) -> None:
    keys = _lake_keys(lake)
    dead = read_dead_letters(f"{lake}/dead_letters")
    assert len(keys) == len(set(keys)), "a (tenant_id, message_id) twice in the lake"
    # the generator's duplicates are byte-identical re-sends: lake + dead letters = distinct records,
    # so lake + dead letters + duplicates = records put
    assert len(keys) + len(dead) == len(set(records))
    assert {k[0] for k in keys} == {"acme-in", "bloom-in"}
    assert sorted(_warehouse_keys(warehouse)) == sorted(keys)
    _assert_profiles_match_lake(aws, res, lake)
    stored = CheckpointStore(aws, res.checkpoint_table).load(res.stream)
    assert {s: c.sequence for s, c in stored.items()} == _last_positions(aws, res.stream)


def test_streaming_on_prism_then_kill_and_resume_lose_and_double_nothing(aws, tmp_path):
    res = _resources(aws, shards=2)
    lake, warehouse = str(tmp_path / "lake"), f"duckdb:///{tmp_path}/wh.duckdb"
    kinesis = aws.client("kinesis")
    batches = [
        list(generate_events(n, seed=70 + i, bad_fraction=0.05, duplicate_fraction=0.05))
        for i, n in enumerate((400, 200, 300, 100, 100))
    ]
    put = []

    # run 1: a backlog, more records while it runs, stop by draining
    put_records(kinesis, res.stream, batches[0])
    put += batches[0]
    proc = _start(_command(aws, res, lake, warehouse, RUN_SECONDS), tmp_path, "run1")
    _put_while_running(proc, tmp_path, "run1", kinesis, res.stream, batches[1])
    put += batches[1]
    text = _finish(proc, tmp_path, "run1")
    assert "ended: DONE" in text
    _assert_exactly_once(aws, res, lake, warehouse, put)
    files_before = {p.name for p in (tmp_path / "lake").rglob("part-w*")}
    assert all(f"-{_run_id(text)}-" in name for name in files_before)

    # run 2: killed (SIGKILL, driver and its Prism) after its sinks wrote a window, before that window's commit
    put_records(kinesis, res.stream, batches[2])
    put += batches[2]
    marker = tmp_path / "holding"
    proc = _start(
        _command(aws, res, lake, warehouse, 60),
        tmp_path,
        "run2",
        LIVORA_STREAM_HOLD_BEFORE_COMMIT_S="120",
        LIVORA_STREAM_HOLD_BEFORE_COMMIT_S_MARKER=str(marker),
    )
    deadline = time.monotonic() + 90
    while not marker.exists():
        assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "run2.out").read_text()[-3000:]
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    killed = _run_id((tmp_path / "run2.out").read_text())
    uncommitted = {p.name for p in (tmp_path / "lake").rglob(f"part-w*-{killed}-*")}
    assert uncommitted, "the killed run should have left window files without a commit"
    put_records(kinesis, res.stream, batches[3])
    put += batches[3]

    # run 3: waits out the dead run's lease, removes its uncommitted files, reads from the checkpoints
    proc = _start(_command(aws, res, lake, warehouse, RUN_SECONDS), tmp_path, "run3")
    _put_while_running(proc, tmp_path, "run3", kinesis, res.stream, batches[4])
    put += batches[4]
    text = _finish(proc, tmp_path, "run3")
    _assert_exactly_once(aws, res, lake, warehouse, put)
    assert not list((tmp_path / "lake").rglob(f"part-w*-{killed}-*"))
    assert files_before <= {p.name for p in (tmp_path / "lake").rglob("part-w*")}


def test_split_while_streaming_reads_parent_then_children(tmp_path):
    """A shard split mid-run: the parent's reader notices the close, commits shard_end, discovery starts the children."""
    from tests.connectors.kinesis_helpers import faithful_kinesis_server, split_first_shard

    with faithful_kinesis_server() as aws:
        res = _resources(aws, shards=2, sinks=False)
        lake = str(tmp_path / "lake")
        kinesis = aws.client("kinesis")
        before = list(generate_events(300, seed=81, bad_fraction=0.05, duplicate_fraction=0.05))
        after = list(generate_events(300, seed=82, bad_fraction=0.05, duplicate_fraction=0.05))
        put_records(kinesis, res.stream, before)
        cmd = [sys.executable, "-m", "pipelines.stream_events", *_argv(aws, res, lake, None)]
        cmd += ["--window-seconds", str(WINDOW), "--discover-seconds=2", "--streaming", *pipeline_args("prism")]
        cmd += [f"--max-run-seconds={RUN_SECONDS + 10}", "--lease-seconds=3"]
        proc = _start(cmd, tmp_path, "split")
        out = tmp_path / "split.out"
        deadline = time.monotonic() + 60
        while not any((tmp_path / "lake" / "events").rglob("part-w*")):
            assert proc.poll() is None and time.monotonic() < deadline, out.read_text()[-3000:]
            time.sleep(0.2)
        parent = split_first_shard(kinesis, res.stream)
        put_records(kinesis, res.stream, after)
        _finish(proc, tmp_path, "split")
        keys = _lake_keys(lake)
        dead = read_dead_letters(f"{lake}/dead_letters")
        assert len(keys) == len(set(keys))
        assert len(keys) + len(dead) == len(set(before + after))
        stored = CheckpointStore(aws, res.checkpoint_table).load(res.stream)
        assert stored[parent].shard_end
        last = _last_positions(aws, res.stream)
        children = set(last) - {parent, "shardId-000000000001"}
        assert children, "new records should have gone to the children"
        assert {s: stored[s].sequence for s in last if s != parent} == {s: q for s, q in last.items() if s != parent}
