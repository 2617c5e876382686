"""Shared fixtures: the local AWS server is real (moto over HTTP), started once per session."""

from __future__ import annotations

import os

import pytest

from connectors.aws import AwsSettings
from infra.local_stack import reset, running_moto_server


@pytest.fixture(scope="session", autouse=True)
def no_profile_from_the_shell():
    """$LIVORA_PROFILE=prod in a developer's shell would turn every default quality gate into block: tests
    that want a profile set it themselves."""
    saved = os.environ.pop("LIVORA_PROFILE", None)
    yield
    if saved is not None:
        os.environ["LIVORA_PROFILE"] = saved


@pytest.fixture(scope="session")
def moto_endpoint():
    with running_moto_server() as url:
        yield url


@pytest.fixture
def aws(moto_endpoint) -> AwsSettings:
    """Settings for a clean local AWS (all resources dropped before the test)."""
    reset(moto_endpoint)
    return AwsSettings.local(moto_endpoint)
