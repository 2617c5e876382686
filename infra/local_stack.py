"""Start and stop the embedded local AWS: a moto server over HTTP (Kinesis, S3, DynamoDB).

No AWS account and no Docker: ``python -m infra.local_stack`` runs it in the foreground;
:func:`running_moto_server` starts it as a child process for the demo and the test suite.
Clients reach it through :meth:`connectors.aws.AwsSettings.local`.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_until_up(url: str, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"moto server exited with code {proc.returncode} before it was ready")
        try:
            with urllib.request.urlopen(f"{url}/moto-api/", timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"moto server at {url} not ready after {timeout:.0f}s")


@contextlib.contextmanager
def running_moto_server(port: int | None = None, timeout: float = 30.0) -> Iterator[str]:
    """Run ``moto_server`` on 127.0.0.1 and yield its endpoint URL; stop it on exit."""
    port = port or free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    try:
        _wait_until_up(url, proc, timeout)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


def reset(url: str) -> None:
    """Forget every resource on the server (between tests)."""
    req = urllib.request.Request(f"{url}/moto-api/reset", method="POST")
    with urllib.request.urlopen(req, timeout=10):
        pass


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Run the local AWS emulation (moto server) in the foreground.")
    parser.add_argument("--port", type=int, default=5000, help="TCP port on 127.0.0.1 (default 5000).")
    args = parser.parse_args(argv)
    with running_moto_server(args.port) as url:
        print(f"moto server at {url}; export LIVORA_AWS_ENDPOINT={url}; Ctrl-C to stop", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            while True:
                time.sleep(3600)


if __name__ == "__main__":
    main()
