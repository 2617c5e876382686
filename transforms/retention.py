"""Retention cohorts (PostHog-style), computed on Arrow/numpy batches.

* ``first_time``: a person's cohort is the period of their first-ever start event.
* ``recurring``: a person is in the cohort of every period in which they did the start event.
* Periods are days, ISO weeks (Monday) or calendar months of the *local* wall clock in the
  tenant's timezone (default Asia/Kolkata). Bucketing on the UTC date is the PostHog "one day off
  east of UTC" bug (#17415): an event at 20:00 UTC is already the next day in India.
* ``on``: returned in exactly period k; ``on_or_after``: returned in period k or any later one.
* Period 0: a person counts when they did the return event in the cohort period at or after
  their (first, in that period) start event; a start event that is also a return event counts
  itself, so with return event = start event, period 0 equals the cohort size (PostHog's figure).
  For ``on_or_after`` period 0 means any return at or after the start event.
* Periods that end after the data range (``end_date``) are not reported (they would be partial
  zeros, not information).
"""

from __future__ import annotations

import datetime as dt
from typing import Literal

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from apache_beam.metrics import Metrics
from pydantic import BaseModel, ConfigDict, Field

from schemas.outputs import RETENTION_SCHEMA
from transforms.funnels import BucketLakeBatches, _codes, _person_keys, _sort_order, _tenant_codes

__all__ = [
    "RETENTION_SCHEMA",
    "ComputeRetention",
    "RetentionDefinition",
    "period_index",
    "period_start",
    "retention_table",
    "sum_retention_tables",
]

DEFAULT_TIMEZONE = "Asia/Kolkata"
_EPOCH = dt.date(1970, 1, 1)


class RetentionDefinition(BaseModel):
    model_config = ConfigDict(extra="forbid")

    start_event: str
    return_event: str
    period: Literal["day", "week", "month"] = "day"
    periods: int = Field(8, ge=1, le=400)
    kind: Literal["first_time", "recurring"] = "first_time"
    mode: Literal["on", "on_or_after"] = "on"
    timezone: str = DEFAULT_TIMEZONE


def _local_days(ts: pa.ChunkedArray | pa.Array, timezone: str) -> np.ndarray:
    """Days since 1970-01-01 of the local wall-clock date in ``timezone``."""
    local = pc.local_timestamp(pc.cast(ts, pa.timestamp("us", tz=timezone)))
    return pc.cast(pc.cast(local, pa.date32()), pa.int32()).to_numpy(zero_copy_only=False).astype(np.int64)


def period_index(days: np.ndarray, period: str) -> np.ndarray:
    """Period number of local dates (days since epoch): days, Monday weeks, or months since 1970-01."""
    days = np.asarray(days, dtype=np.int64)
    if period == "day":
        return days
    if period == "week":
        return (days + 3) // 7  # 1970-01-01 was a Thursday; weeks start on Monday 1970-01-05 = index 1
    dates = days.astype("datetime64[D]")
    return dates.astype("datetime64[M]").astype(np.int64)


def period_start(index: np.ndarray, period: str) -> np.ndarray:
    """First local date (days since epoch) of each period number."""
    index = np.asarray(index, dtype=np.int64)
    if period == "day":
        return index
    if period == "week":
        return index * 7 - 3
    return index.astype("datetime64[M]").astype("datetime64[D]").astype(np.int64)


def _first_per_group(group: np.ndarray, order_key: np.ndarray) -> np.ndarray:
    """Index of the row with the smallest ``order_key`` in each ``group`` (sorted by group)."""
    order = _sort_order(group, order_key)
    g = group[order]
    first = np.ones(len(order), dtype=bool)
    first[1:] = g[1:] != g[:-1]
    return order[first]


def retention_table(
    table: pa.Table,
    definition: RetentionDefinition,
    start_date: dt.date | None = None,
    end_date: dt.date | None = None,
) -> pa.Table:
    """Retention rows from event rows (columns tenant_id, person_id, event, timestamp).

    ``start_date``/``end_date`` are local dates: cohorts and returns count inside them. For
    ``first_time`` pass start events from before ``start_date`` too (all history): they decide who
    is new, and persons whose first start event is earlier belong to no cohort in the range.
    Without dates the range is the data's own.
    """
    if table.num_rows == 0:
        return RETENTION_SCHEMA.empty_table()
    t_codes, tenant_values = _tenant_codes(table.column("tenant_id"))
    p_codes, person_values = _codes(table.column("person_id"))
    key, _ = _person_keys(t_codes, len(tenant_values), p_codes, len(person_values))
    ts = pc.cast(table.column("timestamp"), pa.int64()).to_numpy(zero_copy_only=False).astype(np.int64)
    days = _local_days(table.column("timestamp"), definition.timezone)
    per = period_index(days, definition.period)
    event = table.column("event")
    is_start = pc.fill_null(pc.equal(event, definition.start_event), False).to_numpy(zero_copy_only=False)
    is_return = pc.fill_null(pc.equal(event, definition.return_event), False).to_numpy(zero_copy_only=False)
    lo = (start_date - _EPOCH).days if start_date else int(days.min())
    hi = (end_date - _EPOCH).days if end_date else int(days.max())
    is_start &= days <= hi
    is_return &= (days >= lo) & (days <= hi)
    first_period = int(period_index(np.array([lo]), definition.period)[0])
    last_period = int(period_index(np.array([hi]), definition.period)[0])
    n = definition.periods
    # (key, period) packed in one int64: period offset from ``base`` in [0, span)
    base = min(first_period, int(per.min()))
    span = max(last_period, int(per.max())) - base + n + 2

    # cohort entries: (key, cohort period, start ts)
    s_rows = np.flatnonzero(is_start)
    if definition.kind == "first_time":
        chosen = s_rows[_first_per_group(key[s_rows], ts[s_rows])]
        chosen = chosen[days[chosen] >= lo]
    else:
        s_rows = s_rows[days[s_rows] >= lo]
        chosen = s_rows[_first_per_group(key[s_rows] * span + (per[s_rows] - base), ts[s_rows])]
    if len(chosen) == 0:
        return RETENTION_SCHEMA.empty_table()
    c_key, c_per, c_ts, c_tenant = key[chosen], per[chosen], ts[chosen], t_codes[chosen]

    # returns: latest return ts per (key, period), and the latest return per key
    r_rows = np.flatnonzero(is_return)
    r_comb = key[r_rows] * span + (per[r_rows] - base)
    r_order = _sort_order(r_comb, -ts[r_rows])
    r_comb_sorted = r_comb[r_order]
    keep = np.ones(len(r_order), dtype=bool)
    keep[1:] = r_comb_sorted[1:] != r_comb_sorted[:-1]
    ret_comb = r_comb_sorted[keep]  # unique (key, period), ascending
    ret_max_ts = ts[r_rows][r_order][keep]
    ret_key = ret_comb // span
    ret_per = ret_comb % span + base

    counted = np.zeros((len(chosen), n), dtype=bool)
    if len(ret_comb):
        if definition.mode == "on":
            for k in range(n):
                want = c_key * span + (c_per + k - base)
                pos = np.minimum(np.searchsorted(ret_comb, want), len(ret_comb) - 1)
                hit = ret_comb[pos] == want
                if k == 0:
                    hit &= ret_max_ts[pos] >= c_ts
                counted[:, k] = hit
        else:
            # per key: latest return period and latest return ts (rows are sorted by key, period)
            last_of_key = np.ones(len(ret_key), dtype=bool)
            last_of_key[:-1] = ret_key[1:] != ret_key[:-1]
            k_keys, k_per = ret_key[last_of_key], ret_per[last_of_key]
            k_max_ts = np.maximum.reduceat(ret_max_ts, np.flatnonzero(np.r_[True, last_of_key[:-1]]))
            pos = np.minimum(np.searchsorted(k_keys, c_key), len(k_keys) - 1)
            has = k_keys[pos] == c_key
            latest_per = np.where(has, k_per[pos], np.iinfo(np.int64).min)
            latest_ts = np.where(has, k_max_ts[pos], np.iinfo(np.int64).min)
            counted[:, 0] = latest_ts >= c_ts
            for k in range(1, n):
                counted[:, k] = latest_per >= c_per + k

    # aggregate per (tenant, cohort period)
    groups, inverse = np.unique(c_tenant * span + (c_per - base), return_inverse=True)
    inverse = inverse.ravel()
    n_groups = len(groups)
    size = np.bincount(inverse, minlength=n_groups)
    persons = np.zeros((n_groups, n), dtype=np.int64)
    for k in range(n):
        persons[:, k] = np.bincount(inverse, weights=counted[:, k], minlength=n_groups).astype(np.int64)
    g_tenant, g_per = groups // span, groups % span + base
    k_grid = np.arange(n)
    visible = (g_per[:, None] + k_grid[None, :]) <= last_period
    gi, ki = np.nonzero(visible)
    tenants = tenant_values.take(pa.array(g_tenant[gi]))
    cohort_start = pa.array(period_start(g_per[gi], definition.period).astype(np.int32), pa.int32()).cast(pa.date32())
    out = pa.table(
        {
            "tenant_id": tenants,
            "cohort_start": cohort_start,
            "period": pa.array(ki, pa.int32()),
            "persons": pa.array(persons[gi, ki], pa.int64()),
            "cohort_size": pa.array(size[gi], pa.int64()),
            "rate": pa.array(persons[gi, ki] / size[gi], pa.float64()),
        },
        schema=RETENTION_SCHEMA,
    )
    return out.sort_by([("tenant_id", "ascending"), ("cohort_start", "ascending"), ("period", "ascending")])


# ---------------------------------------------------------------------------------------------
# Beam: lake batches -> person buckets -> per-bucket counts -> summed table


def sum_retention_tables(tables: list[pa.Table]) -> pa.Table:
    """Add up per-bucket retention rows (a person is in one bucket, so counts simply add)."""
    tables = [t for t in tables if t.num_rows]
    if not tables:
        return RETENTION_SCHEMA.empty_table()
    keys = ["tenant_id", "cohort_start", "period"]
    summed = pa.concat_tables(tables).group_by(keys).aggregate([("persons", "sum"), ("cohort_size", "sum")])
    persons = summed.column("persons_sum")
    size = summed.column("cohort_size_sum")
    out = pa.table(
        {
            "tenant_id": summed.column("tenant_id"),
            "cohort_start": summed.column("cohort_start"),
            "period": summed.column("period"),
            "persons": persons,
            "cohort_size": size,
            "rate": pc.divide(pc.cast(persons, pa.float64()), pc.cast(size, pa.float64())),
        },
        schema=RETENTION_SCHEMA,
    )
    return out.sort_by([(k, "ascending") for k in keys])


class _RetentionBucketFn(beam.DoFn):
    def __init__(self, definition: RetentionDefinition, start_date: dt.date, end_date: dt.date):
        self.definition, self.start_date, self.end_date = definition, start_date, end_date
        self.cohort_persons = Metrics.counter("retention", "cohort_entries")

    def process(self, element):
        _key, tables = element
        table = pa.concat_tables(list(tables), promote_options="permissive")
        result = retention_table(table, self.definition, self.start_date, self.end_date)
        if result.num_rows:
            zeros = result.filter(pc.equal(result.column("period"), 0))
            self.cohort_persons.inc(int(pc.sum(zeros.column("cohort_size")).as_py() or 0))
            yield result


class ComputeRetention(beam.PTransform):
    """Lake batches (path, Arrow batch) -> one retention table (a single element).

    ``start_date``/``end_date`` are local dates and must be fixed here (not derived per bucket), so
    that every bucket reports the same periods.
    """

    def __init__(self, definition: RetentionDefinition, start_date: dt.date, end_date: dt.date, buckets: int = 64):
        super().__init__()
        if start_date > end_date:
            raise ValueError("start_date is after end_date")
        self.definition, self.start_date, self.end_date, self.buckets = definition, start_date, end_date, buckets

    def expand(self, batches):
        d = self.definition
        events = sorted({d.start_event, d.return_event})
        # returns only count from start_date (local); UTC partitions a day earlier may hold them
        events_from = (
            {d.return_event: self.start_date - dt.timedelta(days=1)} if d.return_event != d.start_event else {}
        )
        return (
            batches
            | "ByPersonBucket" >> BucketLakeBatches(self.buckets, events, events_from)
            | "GroupBuckets" >> beam.GroupByKey()
            | "BucketCounts" >> beam.ParDo(_RetentionBucketFn(d, self.start_date, self.end_date))
            | "AllBuckets" >> beam.combiners.ToList()
            | "Sum" >> beam.Map(sum_retention_tables)
        )
