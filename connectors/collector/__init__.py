"""The HTTP collector: Segment-compatible tracking API and webhook receivers in front of Kinesis.

``app`` (Starlette routes and limits), ``segment`` and ``webhooks`` (what a request becomes),
``body`` (reading within size, time and gzip limits), ``delivery`` (batched PutRecords, retries,
back-pressure, the spool policy), ``spool`` (append + fsync segments), ``metrics`` (Prometheus).
How it is started and configured: :mod:`pipelines.collect`; design and figures: docs/collector.md.
"""

from connectors.collector.app import CollectorConfig, build_app
from connectors.collector.delivery import Delivery, KinesisSink, NullSink

__all__ = ["CollectorConfig", "Delivery", "KinesisSink", "NullSink", "build_app"]
