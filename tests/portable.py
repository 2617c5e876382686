"""Fixtures for PortableRunner tests: ``from tests.portable import worker_pool  # noqa: F401``."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from infra.local_stack import free_port


@pytest.fixture
def worker_pool():
    """A Beam SDK worker pool in another process (as Flink task managers would host Python workers).

    Yields its ``host:port`` for ``--environment_type=EXTERNAL --environment_config=...``.
    """
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "apache_beam.runners.worker.worker_pool_main", f"--service_port={port}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        # the pool starts each SDK worker as `python ...`: it must be this virtualenv's python
        env={**os.environ, "PATH": f"{os.path.dirname(sys.executable)}{os.pathsep}{os.environ.get('PATH', '')}"},
    )
    time.sleep(3)
    assert proc.poll() is None, "worker pool did not start"
    try:
        yield f"localhost:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=20)
