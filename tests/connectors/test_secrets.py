"""The lake's PII master secret: random, created exactly once, private, stable across runs, never replaced."""

from __future__ import annotations

import os
import stat
import subprocess
import sys

import pytest

from connectors.secrets import SECRET_DIR, SECRET_FILE, SecretStoreError, pii_secret, secret_name

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_local_secret_is_random_private_and_stable(tmp_path):
    lake = str(tmp_path / "lake")
    first = pii_secret(lake)
    assert len(first) == 64 and int(first, 16) >= 0  # 32 random bytes as hex
    assert pii_secret(lake) == first  # a second run reads the same secret
    path = tmp_path / "lake" / SECRET_DIR / SECRET_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert os.listdir(path.parent) == [SECRET_FILE]  # no temporary file left behind
    assert pii_secret(str(tmp_path / "other-lake")) != first  # each lake its own


def test_loose_secret_directory_is_tightened(tmp_path):
    directory = tmp_path / "lake" / SECRET_DIR
    directory.mkdir(parents=True, mode=0o755)
    os.chmod(directory, 0o755)
    pii_secret(str(tmp_path / "lake"))
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700


def test_malformed_secret_is_never_replaced(tmp_path):
    path = tmp_path / "lake" / SECRET_DIR / SECRET_FILE
    path.parent.mkdir(parents=True)
    path.write_text("")
    with pytest.raises(SecretStoreError, match="restore it from its backup"):
        pii_secret(str(tmp_path / "lake"))
    assert path.read_text() == ""


def test_concurrent_creators_agree(tmp_path):
    """Processes racing to create the secret all end up with the one that won."""
    lake = str(tmp_path / "lake")
    code = (
        "import sys, time\n"
        "from connectors.secrets import pii_secret\n"
        "start = float(sys.argv[2])\n"
        "while time.time() < start: pass\n"  # start together
        "print(pii_secret(sys.argv[1]))\n"
    )
    import time

    start = str(time.time() + 1.5)
    env = {**os.environ, "PYTHONPATH": ROOT}
    procs = [
        subprocess.Popen([sys.executable, "-c", code, lake, start], stdout=subprocess.PIPE, text=True, env=env)
        for _ in range(4)
    ]
    outs = {proc.communicate(timeout=60)[0].strip() for proc in procs}
    assert all(proc.returncode == 0 for proc in procs)
    assert len(outs) == 1
    assert outs == {(tmp_path / "lake" / SECRET_DIR / SECRET_FILE).read_text().strip()}


def test_unsupported_lake_scheme_asks_for_a_salt():
    with pytest.raises(ValueError, match="--pii-salt"):
        pii_secret("gs://bucket/lake")


def test_secret_name_of_s3_lakes():
    assert secret_name("s3://livora-lake/prod/") == "livora/pii-salt/livora-lake/prod"
    assert secret_name("s3://b/a b:c") == "livora/pii-salt/b/a-b-c"


def test_s3_lake_secret_in_secrets_manager(aws):
    lake = "s3://livora-lake/prod"
    first = pii_secret(lake, aws)
    assert len(first) == 64
    assert pii_secret(lake, aws) == first
    stored = aws.client("secretsmanager").get_secret_value(SecretId="livora/pii-salt/livora-lake/prod")
    assert stored["SecretString"] == first
    assert pii_secret("s3://livora-lake/staging", aws) != first


def test_s3_creator_that_loses_the_race_reads_the_winner(aws, monkeypatch):
    """Both drivers found no secret; the other one created it first: CreateSecret fails for this one,
    which must return the winner's secret, not its own."""
    from botocore.exceptions import ClientError

    from connectors.aws import AwsSettings

    lake = "s3://livora-lake/race"
    aws.client("secretsmanager").create_secret(Name=secret_name(lake), SecretString="ab" * 32)  # the winner
    real_client = AwsSettings.client
    calls = []

    class LateReader:
        """The real client, whose first read happened before the winner's create."""

        def __init__(self, client):
            self._client = client

        def get_secret_value(self, **kwargs):
            calls.append("get")
            if len(calls) == 1:
                raise ClientError({"Error": {"Code": "ResourceNotFoundException"}}, "GetSecretValue")
            return self._client.get_secret_value(**kwargs)

        def create_secret(self, **kwargs):
            calls.append("create")
            return self._client.create_secret(**kwargs)

    monkeypatch.setattr(AwsSettings, "client", lambda self, service: LateReader(real_client(self, service)))
    assert pii_secret(lake, aws) == "ab" * 32
    assert calls == ["get", "create", "get"]
