"""Writers keep what they write under their root, whatever the values that named the path."""

from __future__ import annotations

import os
import time

import pytest

from connectors.paths import (
    UnsafePathError,
    ensure_under,
    join_under,
    move_atomically,
    partition_path,
    remove_stale_temp_files,
    write_bytes_atomically,
)


def test_paths_that_leave_the_root_are_refused(tmp_path):
    root = str(tmp_path / "lake")
    assert ensure_under(root, f"{root}/events/x.parquet")
    for path in (f"{root}/../x", f"{root}/a/../../x", "/etc/passwd", f"{root}-other/x", "s3://bucket/lake/x"):
        with pytest.raises(UnsafePathError):
            ensure_under(root, path)


def test_symlinks_out_of_the_root_are_followed_and_refused(tmp_path):
    root = tmp_path / "lake"
    root.mkdir()
    (root / "link").symlink_to(tmp_path)
    with pytest.raises(UnsafePathError):
        write_bytes_atomically(str(root / "link" / "escaped.bin"), b"x", str(root))
    assert not (tmp_path / "escaped.bin").exists()


def test_object_store_paths_are_normalised_before_the_check():
    assert ensure_under("s3://b/lake", "s3://b/lake/events/f.parquet")
    for path in ("s3://b/lake/../other/f", "s3://b/lakeX/f", "s3://c/lake/f", "/b/lake/f"):
        with pytest.raises(UnsafePathError):
            ensure_under("s3://b/lake", path)


def test_partition_and_name_segments_are_checked(tmp_path):
    root = str(tmp_path)
    assert partition_path(root, {"tenant_id": "acme-in", "event_date": "2026-11-01"}).endswith(
        "/tenant_id=acme-in/event_date=2026-11-01"
    )
    for partition in ({"tenant_id": "x/../acme-in"}, {"tenant_id": "acme\x1fin"}, {"event_date": "../x"}):
        with pytest.raises(UnsafePathError):
            partition_path(root, partition)
    with pytest.raises(UnsafePathError):
        join_under(root, "../x.parquet")


def test_stale_temp_files_go_and_fresh_ones_stay(tmp_path):
    old = tmp_path / "p" / ".tmp-abc.part"
    old.parent.mkdir()
    old.write_bytes(b"")
    past = time.time() - 7200
    os.utime(old, (past, past))
    fresh = tmp_path / "p" / ".tmp-def.part"
    fresh.write_bytes(b"")
    kept = tmp_path / "p" / "part-1.parquet"
    kept.write_bytes(b"x")
    os.utime(kept, (past, past))
    assert remove_stale_temp_files(str(tmp_path)) == [str(old)]
    assert fresh.exists() and kept.exists()


def test_a_move_stays_under_its_root(tmp_path):
    root = tmp_path / "lake"
    (root / "events").mkdir(parents=True)
    (root / "events" / "f.parquet").write_bytes(b"rows")
    source = str(root / "events" / "f.parquet")
    for target in (f"{root}/../f.parquet", str(tmp_path / "other" / "f.parquet")):
        with pytest.raises(UnsafePathError):
            move_atomically(source, target, str(root))
    with pytest.raises(UnsafePathError):  # nor may it take a file from outside the root
        move_atomically(str(tmp_path / "outside"), f"{root}/x", str(root))
    assert os.path.exists(source)
    moved = move_atomically(source, f"{root}/_quarantine/events/f.parquet", str(root))
    with open(moved, "rb") as handle:
        assert handle.read() == b"rows" and not os.path.exists(source)


def test_an_encrypted_s3_move_checks_both_paths_before_any_request():
    from connectors.aws import AwsSettings, S3Encryption

    # an endpoint nothing listens on: a request would fail with a connection error, not UnsafePathError
    enc = S3Encryption(kms_key_id="alias/lake", aws=AwsSettings.local("http://127.0.0.1:9"))
    for source, target in (
        ("s3://b/lake/a", "s3://b/other/a"),
        ("s3://b/lake/a/../../x", "s3://b/lake/q/a"),
        ("s3://b/lake/a", "s3://c/lake/a"),
    ):
        with pytest.raises(UnsafePathError):
            move_atomically(source, target, "s3://b/lake", enc)
