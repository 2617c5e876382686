"""Run records say who ran a run that touches AWS: STS GetCallerIdentity against the moto server."""

from __future__ import annotations

import glob
import json
import time

import pytest
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions

from connectors.run_records import recording, touches_aws
from tests.s3_lake import s3_lake_fs  # noqa: F401  (fixture)

CLEAN_ENV = {"PATH": "/usr/bin"}


def _local_record(lake) -> dict:
    (path,) = glob.glob(f"{lake}/_runs/records/*/*.json")
    with open(path) as handle:
        return json.load(handle)


@pytest.mark.parametrize(
    ("argv", "env", "expected"),
    [
        (["--lake", "./lake"], CLEAN_ENV, False),
        (["--lake", "./lake", "--output", "out"], CLEAN_ENV, False),
        (["--lake=s3://bucket/lake"], CLEAN_ENV, True),
        (["--input", "s3://bucket/in/*.json", "--lake", "./lake"], CLEAN_ENV, True),
        (["--stream", "events", "--lake", "./lake"], CLEAN_ENV, True),
        (["--lake", "./lake", "--profiles-table", "livora-profiles"], CLEAN_ENV, True),
        (["--lake", "./lake", "--aws-endpoint-url=http://127.0.0.1:5000"], CLEAN_ENV, True),
        (["--lake", "./lake"], {**CLEAN_ENV, "AWS_ACCESS_KEY_ID": "AKIA..."}, True),
        (["--lake", "./lake"], {**CLEAN_ENV, "AWS_PROFILE": "prod"}, True),
    ],
)
def test_which_runs_touch_aws(argv, env, expected):
    assert touches_aws(argv, env) is expected


@pytest.mark.integration
def test_a_run_on_an_s3_lake_records_the_sts_caller(aws, s3_lake_fs):  # noqa: F811
    FileSystems.set_options(PipelineOptions(aws.beam_s3_options()))
    argv = ["--lake", "s3://lake/prod", f"--aws-endpoint-url={aws.endpoint_url}", f"--aws-region={aws.region}"]
    with recording("ingest_batch", argv) as record:
        record.result = {"lake_rows": 1}
    s3 = aws.client("s3")
    (key,) = [o["Key"] for o in s3.list_objects_v2(Bucket="lake", Prefix="prod/_runs/records/")["Contents"]]
    doc = json.loads(s3.get_object(Bucket="lake", Key=key)["Body"].read())
    expected = aws.client("sts").get_caller_identity()  # the server's own answer, asked directly
    assert doc["caller"] == {k: expected[k] for k in ("Arn", "Account", "UserId")}
    assert doc["caller"]["Arn"].startswith("arn:aws:")
    assert "caller_error" not in doc
    assert doc["user"]  # the OS user stays


def test_a_local_only_run_keeps_just_the_os_user(tmp_path, monkeypatch):
    for var in ("AWS_ACCESS_KEY_ID", "AWS_PROFILE", "AWS_WEB_IDENTITY_TOKEN_FILE"):
        monkeypatch.delenv(var, raising=False)
    lake = tmp_path / "lake"
    lake.mkdir()
    with recording("funnels", ["--lake", str(lake)]) as record:
        record.result = {}
    doc = _local_record(lake)
    assert doc["user"]
    assert "caller" not in doc and "caller_error" not in doc


def test_an_unreachable_sts_is_recorded_not_fatal_and_quick(tmp_path, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    lake = tmp_path / "lake"
    lake.mkdir()
    started = time.monotonic()
    # a TEST-NET-1 address (RFC 5737): nothing answers, so the connect times out
    argv = ["--lake", str(lake), "--aws-endpoint-url=http://192.0.2.1:5000"]
    with recording("ingest_batch", argv) as record:
        record.result = {"lake_rows": 0}
    elapsed = time.monotonic() - started
    doc = _local_record(lake)
    assert doc["status"] == "succeeded"
    assert "caller" not in doc
    assert doc["caller_error"].startswith(("ConnectTimeoutError", "EndpointConnectionError")), doc["caller_error"]
    assert elapsed < 15, elapsed
