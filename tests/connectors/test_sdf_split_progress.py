"""A runner's split request on a streaming SDF bundle must not fail the bundle.

Prism asks an SDF bundle to split when it made no progress between two progress ticks (a slow
GetRecords on a loaded machine). Beam's SDK then computes the element's progress with ``completed``
replaced by the element's output bytes (``SdfProcessSizedElements.current_element_progress``), which
are NaN while its byte sampler holds no sample (``MeanInt64Accumulator`` of no values). With a
progress of only completed/remaining the split raised "cannot convert float NaN to integer" and
Prism failed the job (seen in ``bench_stream.py``'s sustained run at 2,000 events/s)."""

from __future__ import annotations

import math

import pytest
from apache_beam.runners.worker.bundle_processor import DataInputOperation
from apache_beam.transforms.cy_combiners import MeanInt64Accumulator

from connectors.kinesis import Checkpoint, ShardRange, ShardRangeTracker
from pipelines.stream_events import _Handed, _HandedTracker


def _reader(claims: int, done: bool) -> ShardRangeTracker:
    tracker = ShardRangeTracker(ShardRange(None))
    for i in range(claims):
        assert tracker.try_claim(Checkpoint(str(100 + i)))
    if done:
        tracker.try_split(0)  # the self-checkpoint: primary done
    return tracker


def _discovery(claims: int, done: bool) -> _HandedTracker:
    tracker = _HandedTracker(_Handed())
    for i in range(claims):
        assert tracker.try_claim(f"shardId-{i:012d}")
    if done:
        tracker.try_split(0)
    return tracker


def test_unsampled_output_bytes_are_nan_in_beam():
    """The premise, from Beam itself: an empty mean is NaN (if Beam changes this, the guard is moot)."""
    assert math.isnan(MeanInt64Accumulator().extract_output())


@pytest.mark.parametrize("make", [_reader, _discovery], ids=["kinesis reader", "shard discovery"])
@pytest.mark.parametrize(("claims", "done"), [(0, False), (3, False), (3, True)])
def test_split_request_with_unsampled_output_bytes_does_not_fail(make, claims, done):
    tracker = make(claims, done)
    progress = tracker.current_progress().with_completed(MeanInt64Accumulator().extract_output())
    fraction = progress.fraction_completed
    assert 0.0 <= fraction <= 1.0
    # Beam's own split arithmetic for a one-element bundle, fraction_of_remainder 0.5 as Prism sends it
    DataInputOperation._compute_split(0, fraction, 1, 0.5, 1, (), tracker.try_split)
    assert tracker.current_restriction().done == done  # a non-zero fraction never splits a shard
