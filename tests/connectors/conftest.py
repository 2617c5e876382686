"""Connector fixtures: a real PostgreSQL 15 server for the warehouse loader, started once per session."""

from __future__ import annotations

import pytest

from infra.local_postgres import running_postgres


@pytest.fixture(scope="session")
def postgres_url():
    """URL of a fresh PostgreSQL server (runs as an unprivileged user when the suite runs as root).

    The cluster lives in its own world-traversable temp dir: pytest's tmp dirs are private to root,
    which the unprivileged server user could not enter.
    """
    with running_postgres() as url:
        yield url
