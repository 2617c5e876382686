"""Shared fixtures: the local AWS server is real (moto over HTTP), started once per session."""

from __future__ import annotations

import pytest

from connectors.aws import AwsSettings
from infra.local_stack import reset, running_moto_server


@pytest.fixture(scope="session")
def moto_endpoint():
    with running_moto_server() as url:
        yield url


@pytest.fixture
def aws(moto_endpoint) -> AwsSettings:
    """Settings for a clean local AWS (all resources dropped before the test)."""
    reset(moto_endpoint)
    return AwsSettings.local(moto_endpoint)
