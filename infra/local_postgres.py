"""A throwaway PostgreSQL 15 server for tests and local runs of the warehouse loader.

``running_postgres()`` runs ``initdb`` into a temporary directory and starts ``postgres`` on a free
127.0.0.1 port (unix socket in the same directory, trust auth), yielding a URL such as
``postgresql://livora@127.0.0.1:PORT/livora``. PostgreSQL refuses to run as root: when we are root
(CI and these machines), the server runs as the unprivileged ``nobody`` user through ``runuser``
(or a ``livora`` system user, created when ``nobody`` is missing) and the data directory is chowned to it.

``python -m infra.local_postgres`` runs one in the foreground and prints its URL.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from infra.local_stack import free_port

SEARCH_DIRS = ("/usr/lib/postgresql/15/bin", "/usr/local/bin", "/usr/lib/postgresql/16/bin", "/usr/bin")
SUPERUSER = "livora"
DATABASE = "livora"


def pg_binary(name: str) -> str:
    """Where ``initdb`` / ``postgres`` live: $LIVORA_PG_BIN, the Debian layout, then $PATH."""
    for folder in filter(None, (os.environ.get("LIVORA_PG_BIN"), *SEARCH_DIRS)):
        candidate = Path(folder) / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    found = shutil.which(name)
    if not found:
        raise FileNotFoundError(f"PostgreSQL binary {name!r} not found (install postgresql-15 or set LIVORA_PG_BIN)")
    return found


def _server_user() -> str | None:
    """None when we may run postgres ourselves; else the unprivileged user to run it as."""
    if os.geteuid() != 0:
        return None
    for name in ("nobody", SUPERUSER):
        with contextlib.suppress(KeyError):
            pwd.getpwnam(name)
            return name
    subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", SUPERUSER], check=True)
    return SUPERUSER


def _as_user(user: str | None, argv: list[str]) -> list[str]:
    return ["runuser", "-u", user, "--", *argv] if user else argv


def _wait_ready(url: str, proc: subprocess.Popen, log_file: Path, timeout: float) -> None:
    import psycopg

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"postgres exited with {proc.returncode}: {log_file.read_text()[-2000:]}")
        try:
            with psycopg.connect(url.rsplit("/", 1)[0] + "/postgres", connect_timeout=2, autocommit=True):
                return
        except psycopg.OperationalError:
            time.sleep(0.2)
    raise TimeoutError(f"postgres not ready after {timeout:.0f}s: {log_file.read_text()[-2000:]}")


@contextlib.contextmanager
def running_postgres(datadir: str | os.PathLike | None = None, timeout: float = 60.0) -> Iterator[str]:
    """Start a fresh PostgreSQL server, yield its URL (database ``livora``), stop it and clean up on exit.

    Args:
        datadir: where the cluster goes (kept afterwards); default a new temp dir, removed on exit.
            Under root, it and its parents must be reachable by the unprivileged server user.
        timeout: seconds to wait for the server to accept connections.
    """
    import psycopg

    owned = datadir is None
    user = _server_user()
    # under root the server user must be able to reach the directory: /tmp is world-traversable, a
    # custom $TMPDIR (or pytest's tmp dirs) may not be
    parent = "/tmp" if user and os.path.isdir("/tmp") else None
    base = Path(tempfile.mkdtemp(prefix="livora-pg-", dir=parent) if owned else datadir)
    base.mkdir(parents=True, exist_ok=True)
    data, log_file = base / "data", base / "postgres.log"
    if user:
        info = pwd.getpwnam(user)
        os.chown(base, info.pw_uid, info.pw_gid)
        log_file.touch()
        os.chown(log_file, info.pw_uid, info.pw_gid)
    initdb = subprocess.run(
        _as_user(
            user,
            [pg_binary("initdb"), "-D", str(data), "-U", SUPERUSER, "--auth=trust", "-E", "UTF8", "--no-sync", "-N"],
        ),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    if initdb.returncode:
        raise RuntimeError(
            f"initdb failed ({initdb.returncode}); the data dir and its parents must be reachable by "
            f"{user or 'the current user'}: {initdb.stderr[-2000:]}"
        )
    port = free_port()
    argv = [
        pg_binary("postgres"),
        "-D",
        str(data),
        "-p",
        str(port),
        "-k",
        str(base),
        "-c",
        "listen_addresses=127.0.0.1",
        "-c",
        "fsync=off",
        "-c",
        "synchronous_commit=off",
        "-c",
        "full_page_writes=off",
        "-c",
        "max_connections=50",
    ]
    with open(log_file, "ab") as log:
        proc = subprocess.Popen(_as_user(user, argv), stdout=log, stderr=log, start_new_session=True)
    url = f"postgresql://{SUPERUSER}@127.0.0.1:{port}/{DATABASE}"
    try:
        _wait_ready(url, proc, log_file, timeout)
        with psycopg.connect(f"postgresql://{SUPERUSER}@127.0.0.1:{port}/postgres", autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {DATABASE}")
        yield url
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGINT)  # fast shutdown of the group we started (runuser + postgres)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        if owned:
            shutil.rmtree(base, ignore_errors=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Run a throwaway PostgreSQL server in the foreground.")
    parser.add_argument("--datadir", default=None, help="Directory for the cluster (default: a temp dir, removed).")
    args = parser.parse_args(argv)
    with running_postgres(args.datadir) as url:
        print(f"PostgreSQL at {url}; Ctrl-C to stop", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            while True:
                time.sleep(3600)


if __name__ == "__main__":
    main()
