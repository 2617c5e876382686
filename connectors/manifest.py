"""The ingest manifest: which input files the lake already holds, by content.

``LAKE/_ingested/<fingerprint>.json``, one small JSON document per ingested file content (a SHA-256
prefix of its bytes). Batch ingest skips a file whose fingerprint is here, whatever its name or the
folder it sits in, so a scheduler may re-run the same command over a landing folder that grows.
Readable with DuckDB: ``select * from read_json('LAKE/_ingested/*.json')``.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping
from typing import Any

from apache_beam.io.filesystems import FileSystems

from connectors import paths
from connectors.lake import table_path

__all__ = ["INGESTED_DIR", "read_manifest", "write_manifest_entry"]

INGESTED_DIR = "_ingested"


def read_manifest(lake: str) -> dict[str, dict[str, Any]]:
    """fingerprint -> entry, for every file the lake holds (empty for a new lake)."""
    root = table_path(lake, INGESTED_DIR)
    found: dict[str, dict[str, Any]] = {}
    for meta in FileSystems.match([f"{root}/*.json"])[0].metadata_list:
        with FileSystems.open(meta.path) as handle:
            entry = json.loads(handle.read())
        found[entry["fingerprint"]] = entry
    return found


def write_manifest_entry(lake: str, entry: Mapping[str, Any]) -> str:
    """Record one ingested file (atomically; a ``--reprocess`` replaces the entry of the same content)."""
    root = table_path(lake, INGESTED_DIR)
    body = {**entry, "recorded_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")}
    target = paths.join_under(root, f"{entry['fingerprint']}.json")
    return paths.write_bytes_atomically(target, (json.dumps(body, sort_keys=True) + "\n").encode(), root)
