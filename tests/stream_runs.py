"""One incremental ``stream_events`` pass as the tests run it: against the moto server, small buckets, fast polls."""

from __future__ import annotations

import io

from infra.resources import StreamingResources
from pipelines import stream_events


def stream_argv(aws, res: StreamingResources, lake: str, *extra: str, dedupe_table: str | None = None) -> list[str]:
    """The flags of a test pass over ``res`` into ``lake``; ``dedupe_table`` defaults to the resources' table."""
    return [
        f"--stream={res.stream}",
        f"--lake={lake}",
        f"--aws-endpoint-url={aws.endpoint_url}",
        f"--consumer-app={res.consumer_app}",
        f"--dedupe-table={dedupe_table or res.dedupe_table}",
        "--buckets=2",
        "--min-call-interval=0.02",
        *extra,
    ]


def run_stream_pass(aws, res: StreamingResources, lake: str, *extra: str, dedupe_table: str | None = None):
    """Run one pass (output captured) and return its summary."""
    return stream_events.run(stream_argv(aws, res, lake, *extra, dedupe_table=dedupe_table), out=io.StringIO())
