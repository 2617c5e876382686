"""Funnels with ClickHouse ``windowFunnel`` semantics, computed per person on Arrow/numpy batches.

Why this shape: a funnel level is a small state machine per person, and running it event by
event in Python is what makes funnel jobs slow. Here the state machine runs for *all persons of a
batch at once*: pairs (event row, matched step) are laid out rank-major (the j-th pair of every
person in one contiguous slice), so iteration j is a handful of numpy operations over the persons
that have a j-th pair. The cost is O(pairs) element work plus O(longest person) numpy calls.

Semantics (docs/analytics-funnels-retention.md has the long version):

* A person's rows are ordered by (timestamp, matched step index, message_id); a row that matches
  several steps is one pair per step (so, as in ClickHouse, one row can fill several levels).
* A step-1 pair starts a chain; a step-k pair advances a chain at level k-1 when
  ``t <= t_chain_start + window`` (inclusive). The level is the highest step any chain reached.
  Exactly ClickHouse's slot algorithm: per level, the latest-started chain that reached it.
* ``strict`` = ClickHouse ``strict_order``: after the first step-1 row, a row of the person that
  matches no step (any event type) or a step whose previous step was never reached ends the scan.
* ``strict_increase``: a step only advances when its timestamp is strictly after the slot's last
  step timestamp (ClickHouse's slot rule, including its quirk: the slot keeps the latest chain).
* ``unordered``: level = the most distinct steps found inside one window ``[t, t + window]``
  whose first row is a step row.
* The *counted chain* (for time to convert, breakdown attribution, exclusions and entry day) is
  the chain that first reached the person's final level; inside a chain each step keeps the first
  row that reached it (PostHog's rule), the chain start is the latest step-1 row before it.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
import urllib.parse
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import yaml
from apache_beam.metrics import Metrics
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from schemas.outputs import ENTRY_DAYS_SCHEMA, funnel_steps_schema

log = logging.getLogger("livora.funnels")

__all__ = [
    "BucketLakeBatches",
    "ComputeFunnels",
    "Exclusion",
    "FunnelDefinition",
    "FunnelStep",
    "PropertyFilter",
    "aggregate_entry_days",
    "aggregate_funnel",
    "bucket_lake_batch",
    "combine_funnel_outputs",
    "funnel_events",
    "funnel_input_columns",
    "load_funnels",
    "partition_of_path",
    "person_buckets",
    "person_funnel",
    "window_funnel_levels",
]

Mode = Literal["ordered", "strict", "strict_increase", "unordered"]
MODES: tuple[str, ...] = ("ordered", "strict", "strict_increase", "unordered")
DEFAULT_TIMEZONE = "Asia/Kolkata"
NONE = np.int64(-1)
_IDX = np.int32  # row and pair indices (a batch holds fewer than 2**31 rows)
_US = 1_000_000

# ---------------------------------------------------------------------------------------------
# definitions


class PropertyFilter(BaseModel):
    """A condition on a lake column (``channel``) or a JSON property (``properties.category``)."""

    model_config = ConfigDict(extra="forbid")

    key: str
    op: Literal["eq", "neq", "in", "not_in", "gt", "gte", "lt", "lte", "contains", "is_set", "is_not_set"] = "eq"
    value: Any = None

    @model_validator(mode="after")
    def _value_needed(self) -> PropertyFilter:
        if self.op not in ("is_set", "is_not_set") and self.value is None:
            raise ValueError(f"filter on {self.key!r} with op {self.op!r} needs a value")
        if self.op in ("in", "not_in") and not isinstance(self.value, list):
            raise ValueError(f"filter on {self.key!r} with op {self.op!r} needs a list value")
        return self


class FunnelStep(BaseModel):
    model_config = ConfigDict(extra="forbid")

    event: str
    filters: list[PropertyFilter] = Field(default_factory=list)


class Exclusion(BaseModel):
    """An event that disqualifies a person when it happens between two steps of the counted chain."""

    model_config = ConfigDict(extra="forbid")

    event: str
    filters: list[PropertyFilter] = Field(default_factory=list)
    from_step: int = Field(1, ge=1)
    to_step: int = Field(2, ge=2)

    @model_validator(mode="after")
    def _ordered(self) -> Exclusion:
        if self.to_step <= self.from_step:
            raise ValueError("exclusion to_step must be after from_step")
        return self


class FunnelDefinition(BaseModel):
    """One funnel: what a YAML entry or the command line describes."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9_.\- ]+$")
    steps: list[FunnelStep] = Field(min_length=1, max_length=32)
    window_seconds: int = Field(86400, gt=0)
    mode: Mode = "ordered"
    breakdown: str | None = Field(default=None, description="lake column or properties.<key>")
    attribution: str = Field("first_touch", description="first_touch, last_touch or step_N (1-based)")
    exclusions: list[Exclusion] = Field(default_factory=list)
    timezone: str = Field(DEFAULT_TIMEZONE, description="timezone of the entry day")

    @field_validator("steps", mode="before")
    @classmethod
    def _steps_from_names(cls, value):
        return [{"event": s} if isinstance(s, str) else s for s in value]

    @field_validator("attribution")
    @classmethod
    def _attribution(cls, value: str) -> str:
        if value not in ("first_touch", "last_touch") and not re.fullmatch(r"step_[1-9][0-9]*", value):
            raise ValueError("attribution must be first_touch, last_touch or step_N")
        return value

    @model_validator(mode="after")
    def _cross_checks(self) -> FunnelDefinition:
        n = len(self.steps)
        if self.attribution.startswith("step_") and int(self.attribution[5:]) > n:
            raise ValueError(f"attribution {self.attribution} is past the last step ({n})")
        for ex in self.exclusions:
            if ex.to_step > n:
                raise ValueError(f"exclusion to_step {ex.to_step} is past the last step ({n})")
        return self

    @property
    def window_us(self) -> int:
        return self.window_seconds * _US


def load_funnels(path: str | Path) -> list[FunnelDefinition]:
    """Funnels from YAML: either a list or ``{funnels: [...]}``; validated, names unique."""
    data = yaml.safe_load(Path(path).read_text())
    items = data.get("funnels", data) if isinstance(data, dict) else data
    if not isinstance(items, list) or not items:
        raise ValueError(f"{path}: expected a non-empty list of funnels (or a 'funnels:' key)")
    funnels = [FunnelDefinition.model_validate(item) for item in items]
    names = [f.name for f in funnels]
    if len(set(names)) != len(names):
        raise ValueError(f"{path}: funnel names must be unique, got {names}")
    return funnels


def _column_of(key: str) -> str:
    return "properties" if key.startswith("properties.") else key


def funnel_input_columns(definitions: Sequence[FunnelDefinition]) -> list[str]:
    """Lake columns a funnel run needs (partition column tenant_id included)."""
    cols = {"tenant_id", "person_id", "event", "timestamp", "message_id"}
    for d in definitions:
        for cond in [*d.steps, *d.exclusions]:
            cols.update(_column_of(f.key) for f in cond.filters)
        if d.breakdown:
            cols.add(_column_of(d.breakdown))
    return sorted(cols)


# ---------------------------------------------------------------------------------------------
# row conditions


def _json_path(text: str | None, path: Sequence[str]):
    if text is None:
        return None
    try:
        value = json.loads(text)
    except ValueError:
        return None
    for part in path:
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


def property_values(table: pa.Table, key: str, rows: np.ndarray | None = None) -> list:
    """Python values of a lake column or a JSON property for ``rows`` (all rows when None)."""
    column = table.column(_column_of(key))
    if rows is not None:
        column = column.take(pa.array(rows, type=pa.int64()))
    values = column.to_pylist()
    if key.startswith("properties."):
        path = key.split(".")[1:]
        cache: dict[str | None, Any] = {}
        out = []
        for text in values:
            if text not in cache:
                cache[text] = _json_path(text, path)
            out.append(cache[text])
        return out
    return values


def _compare(value, f: PropertyFilter) -> bool:
    op = f.op
    if op == "is_set":
        return value is not None
    if op == "is_not_set":
        return value is None
    if value is None:
        return op in ("neq", "not_in")
    if op == "eq":
        return _same(value, f.value)
    if op == "neq":
        return not _same(value, f.value)
    if op == "in":
        return any(_same(value, v) for v in f.value)
    if op == "not_in":
        return not any(_same(value, v) for v in f.value)
    if op == "contains":
        return str(f.value) in str(value)
    try:
        left, right = float(value), float(f.value)
    except (TypeError, ValueError):
        left, right = str(value), str(f.value)
    return {"gt": left > right, "gte": left >= right, "lt": left < right, "lte": left <= right}[op]


def _same(a, b) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return a == b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return a == b
    return str(a) == str(b)


def condition_mask(table: pa.Table, event: str, filters: Sequence[PropertyFilter]) -> np.ndarray:
    """Rows that are ``event`` and pass every filter (vectorised on the event name)."""
    mask = pc.fill_null(pc.equal(table.column("event"), event), False).to_numpy(zero_copy_only=False)
    if filters and mask.any():
        rows = np.flatnonzero(mask)
        keep = np.ones(len(rows), dtype=bool)
        for f in filters:
            values = property_values(table, f.key, rows)
            keep &= np.fromiter((_compare(v, f) for v in values), dtype=bool, count=len(rows))
        mask = mask.copy()
        mask[rows[~keep]] = False
    return mask


# ---------------------------------------------------------------------------------------------
# the per-person engine


class LevelResult:
    """Per person (codes 0..P-1): level, and the counted chain as row indices (-1 = not reached)."""

    def __init__(self, level: np.ndarray, chain_rows: np.ndarray):
        self.level = level
        self.chain_rows = chain_rows


class _Rows:
    """A lazy row selection of a tiebreak column: values are only materialised for tied rows."""

    def __init__(self, values, rows: np.ndarray):
        self.values, self.rows = values, rows


def _take(values, rows: np.ndarray) -> np.ndarray:
    """Rows of a numpy array, an Arrow array or a :class:`_Rows` selection."""
    if isinstance(values, _Rows):
        return _take(values.values, values.rows[rows])
    if isinstance(values, pa.Array | pa.ChunkedArray):
        return np.asarray(values.take(pa.array(rows, pa.int64())).to_pylist(), dtype=object)
    return np.asarray(values)[rows]


def _sort_order(person: np.ndarray, key: np.ndarray) -> np.ndarray:
    """Indices ordering rows by (person, key); rows with equal (person, key) come out adjacent.

    Two unstable int64 argsorts instead of a multi-key lexsort (3-4x faster): rank the rows by key,
    then sort on ``person * n + rank``, which is unique and fits in int64.
    """
    n = len(key)
    if n and int(person.max()) > (2**62) // n:  # keep person * n + rank inside int64
        person = np.unique(person, return_inverse=True)[1].ravel()
    by_key = np.argsort(key)
    rank = np.empty(n, dtype=np.int64)
    rank[by_key] = np.arange(n, dtype=np.int64)
    return np.argsort(person * n + rank)


def _order_pairs(person: np.ndarray, ts: np.ndarray, idx: np.ndarray, tiebreak=None) -> np.ndarray:
    """Sort order by (person, ts, step index, tiebreak); ties on the first three are rare, fixed after."""
    if len(person) == 0:
        return np.zeros(0, dtype=np.int64)
    width = int(idx.max()) + 2  # step index -1..N-1 -> 0..N
    key = (ts - ts.min()) * width + (idx + 1)
    order = _sort_order(person, key)
    if tiebreak is None or len(order) < 2:
        return order
    p, k = person[order], key[order]
    same = (p[1:] == p[:-1]) & (k[1:] == k[:-1])
    if not same.any():
        return order
    # reorder inside each run of tied rows by message id; the runs are contiguous and usually tiny
    tied = np.zeros(len(order), dtype=bool)
    tied[1:] |= same
    tied[:-1] |= same
    run_start = tied & ~np.r_[False, same]
    pos = np.flatnonzero(tied)
    run = np.cumsum(run_start)[pos]
    keys = _take(tiebreak, order[pos])
    msg_rank = np.empty(len(keys), dtype=np.int64)
    msg_rank[np.argsort(keys, kind="stable")] = np.arange(len(keys))
    order[pos] = order[pos][np.lexsort((msg_rank, run))]
    return order


def window_funnel_levels(
    person: np.ndarray,
    ts: np.ndarray,
    match: np.ndarray,
    window: int,
    mode: str = "ordered",
    n_persons: int | None = None,
    tiebreak: np.ndarray | None = None,
    entry_mask: np.ndarray | None = None,
) -> LevelResult:
    """Funnel level and counted chain per person.

    Args:
        person: int codes 0..P-1 per row.
        ts: int64 timestamps per row (any unit; ``window`` in the same unit).
        match: bool matrix (rows, steps): which step conditions each row satisfies.
        window: conversion window, inclusive, measured from the step-1 row.
        mode: ordered | strict | strict_increase | unordered.
        n_persons: P (default: max code + 1).
        tiebreak: per-row values (message ids) ordering rows with equal (person, ts, step).
        entry_mask: rows allowed to start a chain (None: all). A step-1 row outside it is ignored
            as a step 1 (it neither starts a chain nor, in strict mode, breaks one): this is how a
            run reads past its end date so that late chains complete without new entries.
    """
    if mode not in MODES:
        raise ValueError(f"unknown funnel mode {mode!r}")
    person = np.asarray(person, dtype=np.int64)
    ts = np.asarray(ts, dtype=np.int64)
    match = np.asarray(match, dtype=bool)
    n_rows, n_steps = match.shape
    n_p = int(n_persons if n_persons is not None else (person.max() + 1 if n_rows else 0))
    if mode == "unordered":
        return _unordered_levels(person, ts, match, int(window), n_p, tiebreak, entry_mask)
    # pairs (row, step index); strict mode keeps non-matching rows as step -1 (they break chains)
    row_ix, step_ix = np.nonzero(match)
    if entry_mask is not None:
        keep = (step_ix != 0) | np.asarray(entry_mask, dtype=bool)[row_ix]
        row_ix, step_ix = row_ix[keep], step_ix[keep]
    if mode == "strict":
        none = np.flatnonzero(~match.any(axis=1))
        row_ix = np.concatenate([row_ix, none])
        step_ix = np.concatenate([step_ix, np.full(len(none), -1)])
    order = _order_pairs(person[row_ix], ts[row_ix], step_ix, None if tiebreak is None else _Rows(tiebreak, row_ix))
    return _slot_engine(
        person[row_ix][order], ts[row_ix][order], step_ix[order], row_ix[order], n_steps, int(window), mode, n_p
    )


def _slot_engine(
    p_person: np.ndarray,
    p_ts: np.ndarray,
    p_step: np.ndarray,
    p_row: np.ndarray,
    n_steps: int,
    window: int,
    mode: str,
    n_p: int,
) -> LevelResult:
    level = np.zeros(n_p, dtype=np.int64)
    if len(p_person) == 0:
        return LevelResult(level, np.full((n_p, n_steps), NONE, dtype=_IDX))
    counts = np.bincount(p_person, minlength=n_p)
    # relabel persons by descending pair count: the persons active at rank j are a prefix 0..m_j-1
    perm = np.argsort(-counts, kind="stable")
    inv = np.empty(n_p, dtype=np.int64)
    inv[perm] = np.arange(n_p)
    q = inv[p_person]
    starts = np.concatenate([[0], np.cumsum(counts)])[:-1]
    rank = np.arange(len(p_person)) - starts[p_person]
    sorted_counts = counts[perm]
    max_count = int(sorted_counts[0])
    hist = np.bincount(sorted_counts, minlength=max_count + 1)
    active = n_p - np.cumsum(hist)[:max_count]  # persons with more than j pairs, j = 0..max_count-1
    slice_start = np.concatenate([[0], np.cumsum(active)])
    pos = slice_start[rank] + q
    r_ts = np.empty_like(p_ts)
    r_step = np.empty_like(p_step)
    r_row = np.empty_like(p_row)
    r_ts[pos], r_step[pos], r_row[pos] = p_ts, p_step, p_row

    # state per (relabelled) person
    slot_first = np.full((n_p, n_steps), NONE, dtype=np.int64)  # chain start ts per level slot
    increase = mode == "strict_increase"
    slot_last = np.full((n_p, n_steps) if increase else (0, 0), NONE, dtype=np.int64)  # last step ts per slot
    chain_start = np.full((n_p, n_steps), NONE, dtype=_IDX)  # pair id of the chain start per slot
    chain = np.full((n_p, n_steps, n_steps), NONE, dtype=_IDX)  # row index per step per slot chain
    lvl = np.zeros(n_p, dtype=np.int64)
    bst = np.full((n_p, n_steps), NONE, dtype=_IDX)
    strict = mode == "strict"
    alive = np.ones(n_p, dtype=bool)
    started = np.zeros(n_p, dtype=bool)
    for j in range(max_count):
        m = int(active[j])
        lo = int(slice_start[j])
        ts_j, step_j, row_j = r_ts[lo : lo + m], r_step[lo : lo + m], r_row[lo : lo + m]
        ar = np.arange(m)
        live = alive[:m] if strict else None
        if strict:
            # a non-matching row after the first step-1 row, or a step whose previous level was never
            # reached, ends the scan (ClickHouse strict_order); before step 1 they are skipped
            breaks = live & started[:m] & ((step_j < 0) | ((step_j >= 1) & (lvl[:m] < step_j)))
            alive[:m] &= ~breaks
            live = alive[:m]
        # step 1: a new chain in slot 0
        s0 = step_j == 0
        if strict:
            s0 &= live
            started[:m] |= s0
        i0 = ar[s0]
        if len(i0):
            t0 = ts_j[i0]
            slot_first[i0, 0] = t0
            if increase:
                slot_last[i0, 0] = t0
            chain_start[i0, 0] = lo + i0
            chain[i0, 0, 0] = row_j[i0]
            new = i0[lvl[i0] < 1]
            lvl[new] = 1
            bst[new, 0] = row_j[new]
        # step k >= 1: advance slot k-1 into slot k
        adv = step_j >= 1
        if strict:
            adv &= live
        ia = ar[adv]
        if len(ia):
            k = step_j[ia]
            pf = slot_first[ia, k - 1]
            ok = (pf != NONE) & (ts_j[ia] <= pf + window)
            if increase:
                ok &= slot_last[ia, k - 1] < ts_j[ia]
            ia, k, pf = ia[ok], k[ok], pf[ok]
            if len(ia):
                slot_first[ia, k] = pf
                if increase:
                    slot_last[ia, k] = ts_j[ia]
                # chain bookkeeping: a slot already holding the same chain keeps its first row
                prev_chain = chain_start[ia, k - 1]
                fresh = chain_start[ia, k] != prev_chain
                iu, ku = ia[fresh], k[fresh]
                if len(iu):
                    chain[iu, ku, :] = chain[iu, ku - 1, :]
                    chain[iu, ku, ku] = row_j[iu]
                    chain_start[iu, ku] = prev_chain[fresh]
                up = lvl[ia] < k + 1
                iw, kw = ia[up], k[up]
                if len(iw):
                    lvl[iw] = kw + 1
                    bst[iw, :] = chain[iw, kw, :]
    level[perm] = lvl
    best = np.empty_like(bst)
    best[perm] = bst
    return LevelResult(level, best)


def _unordered_levels(
    person: np.ndarray,
    ts: np.ndarray,
    match: np.ndarray,
    window: int,
    n_p: int,
    tiebreak: np.ndarray | None,
    entry_mask: np.ndarray | None = None,
) -> LevelResult:
    """Most distinct steps inside one window [t, t + window] that starts at a step row."""
    n_steps = match.shape[1]
    level = np.zeros(n_p, dtype=np.int64)
    best = np.full((n_p, n_steps), NONE, dtype=np.int64)
    anchor_rows = np.flatnonzero(match.any(axis=1))
    if len(anchor_rows) == 0:
        return LevelResult(level, best)
    first_step = np.argmax(match[anchor_rows], axis=1)
    order = _order_pairs(
        person[anchor_rows], ts[anchor_rows], first_step, None if tiebreak is None else _Rows(tiebreak, anchor_rows)
    )
    rows = anchor_rows[order]
    p, t = person[rows], ts[rows]
    n = len(rows)
    # first index of each (person, ts) group: a window starting at t includes rows tied at t
    group_start = np.ones(n, dtype=bool)
    group_start[1:] = (p[1:] != p[:-1]) | (t[1:] != t[:-1])
    gfirst = np.maximum.accumulate(np.where(group_start, np.arange(n), 0))
    found_row = np.full((n, n_steps), NONE, dtype=np.int64)
    found_ts = np.full((n, n_steps), NONE, dtype=np.int64)
    for s in range(n_steps):
        has = match[rows, s]
        # next index >= i holding step s (reverse running minimum)
        nxt = np.where(has, np.arange(n), n)
        nxt = np.minimum.accumulate(nxt[::-1])[::-1]
        cand = nxt[gfirst]
        valid = cand < n
        cs = np.minimum(cand, n - 1)
        valid &= (p[cs] == p) & (t[cs] <= t + window)
        found_row[valid, s] = rows[cs[valid]]
        found_ts[valid, s] = t[cs[valid]]
    counts = (found_row != NONE).sum(axis=1)
    if entry_mask is not None:  # a window may only start at a row allowed to enter
        counts = np.where(np.asarray(entry_mask, dtype=bool)[rows], counts, 0)
    # per person: the first anchor (in row order) with the most steps
    best_per_person = np.full(n_p, -1, dtype=np.int64)
    key_order = np.lexsort((np.arange(n), -counts, p))
    first_of_person = np.ones(n, dtype=bool)
    sp = p[key_order]
    first_of_person[1:] = sp[1:] != sp[:-1]
    chosen = key_order[first_of_person]
    best_per_person[p[chosen]] = chosen
    level[p[chosen]] = counts[chosen]
    # the counted chain, in time order: chain slot k = the k-th distinct step reached
    ch_ts = found_ts[chosen]
    ch_row = found_row[chosen]
    big = np.iinfo(np.int64).max
    sort_key = np.where(ch_row == NONE, big, ch_ts)
    within = np.argsort(sort_key, axis=1, kind="stable")
    ordered_rows = np.take_along_axis(ch_row, within, axis=1)
    entered = counts[chosen] > 0
    best[p[chosen[entered]]] = ordered_rows[entered]
    level[p[chosen[~entered]]] = 0
    return LevelResult(level, best)


# ---------------------------------------------------------------------------------------------
# per-person funnel table


def _codes(values: pa.ChunkedArray | pa.Array) -> tuple[np.ndarray, pa.Array]:
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    encoded = pc.dictionary_encode(values)
    return encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64), encoded.dictionary


def _tenant_codes(values: pa.ChunkedArray | pa.Array) -> tuple[np.ndarray, pa.Array]:
    """Codes of the tenant column without hashing every row when each chunk holds one tenant.

    That is the usual shape: a lake file (a chunk) is one tenant's partition, and a pipeline
    bucket is one tenant. One comparison pass per chunk replaces a hash per row.
    """
    chunks = values.chunks if isinstance(values, pa.ChunkedArray) else [values]
    firsts = []
    for chunk in chunks:
        if len(chunk) == 0:
            firsts.append(None)
            continue
        if chunk.null_count or not pc.all(pc.equal(chunk, chunk[0])).as_py():
            return _codes(values)
        firsts.append(chunk[0].as_py())
    names = sorted({f for f in firsts if f is not None})
    code_of = {name: i for i, name in enumerate(names)}
    codes = np.concatenate(
        [np.full(len(c), code_of.get(f, 0), dtype=np.int64) for c, f in zip(chunks, firsts, strict=True)]
        or [np.zeros(0, dtype=np.int64)]
    )
    return codes, pa.array(names, pa.string())


def _person_keys(tenant_codes: np.ndarray, n_tenants: int, person_codes: np.ndarray, n_persons: int):
    """Dense codes of (tenant, person): the same person id in two tenants is two people."""
    if n_tenants == 1:  # the pipeline's case (one tenant per bucket): person codes are already dense
        return person_codes, n_persons
    combined = tenant_codes * n_persons + person_codes
    present = np.zeros(n_tenants * n_persons, dtype=bool)
    present[combined] = True
    dense = np.cumsum(present) - 1
    return dense[combined], int(present.sum())


def _ts_us(table: pa.Table) -> np.ndarray:
    col = table.column("timestamp")
    if pa.types.is_timestamp(col.type):
        col = pc.cast(col, pa.timestamp("us", tz=col.type.tz))
        col = col.cast(pa.int64())
    return col.to_numpy(zero_copy_only=False).astype(np.int64)


PERSON_FUNNEL_FIELDS = ("tenant_id", "person_id", "level", "excluded", "breakdown_value", "entry_ts")


def person_funnel(table: pa.Table, definition: FunnelDefinition, entry_before: dt.datetime | None = None) -> pa.Table:
    """One row per (tenant, person) with level >= 1: level, exclusion, breakdown, step timestamps.

    ``table`` holds the person's events (all of them for ``strict``; only the steps' and exclusions'
    events otherwise) with at least ``funnel_input_columns([definition])``. With ``entry_before``,
    only rows before it may start a chain (rows after it only complete chains).
    """
    n_steps = len(definition.steps)
    step_cols = [f"step_{k + 1}_ts" for k in range(n_steps)]
    schema = person_funnel_schema(n_steps)
    if table.num_rows == 0:
        return schema.empty_table()
    tenant_codes, tenants = _tenant_codes(table.column("tenant_id"))
    person_codes, persons = _codes(table.column("person_id"))
    key_codes, n_p = _person_keys(tenant_codes, len(tenants), person_codes, len(persons))
    ts = _ts_us(table)
    match = np.column_stack([condition_mask(table, s.event, s.filters) for s in definition.steps])
    tiebreak = table.column("message_id")
    entry_mask = None if entry_before is None else ts < int(entry_before.timestamp() * _US)
    result = window_funnel_levels(
        key_codes, ts, match, definition.window_us, definition.mode, n_p, tiebreak, entry_mask
    )
    persons_in = np.flatnonzero(result.level >= 1)
    chain = result.chain_rows[persons_in]
    lvl = result.level[persons_in]
    first_row = chain[:, 0]
    chain_ts = np.where(chain >= 0, ts[np.maximum(chain, 0)], NONE)
    excluded = _excluded(table, definition, key_codes, ts, persons_in, chain_ts, lvl)
    breakdown = _breakdown_values(table, definition, chain, lvl)
    columns = {
        "tenant_id": tenants.take(pa.array(tenant_codes[first_row])),
        "person_id": persons.take(pa.array(person_codes[first_row])),
        "level": pa.array(lvl, pa.int32()),
        "excluded": pa.array(excluded, pa.bool_()),
        "breakdown_value": pa.array(breakdown, pa.string()),
        "entry_ts": pa.array(chain_ts[:, 0], pa.int64()).cast(pa.timestamp("us", tz="UTC")),
    }
    for k, name in enumerate(step_cols):
        columns[name] = pa.array(chain_ts[:, k], pa.int64(), mask=chain_ts[:, k] == NONE).cast(
            pa.timestamp("us", tz="UTC")
        )
    out = pa.table(columns, schema=schema)
    return out.sort_by([("tenant_id", "ascending"), ("person_id", "ascending")])


def person_funnel_schema(n_steps: int) -> pa.Schema:
    return pa.schema(
        [
            pa.field("tenant_id", pa.string()),
            pa.field("person_id", pa.string()),
            pa.field("level", pa.int32()),
            pa.field("excluded", pa.bool_()),
            pa.field("breakdown_value", pa.string()),
            pa.field("entry_ts", pa.timestamp("us", tz="UTC")),
            *[pa.field(f"step_{k + 1}_ts", pa.timestamp("us", tz="UTC")) for k in range(n_steps)],
        ]
    )


def _excluded(
    table: pa.Table,
    definition: FunnelDefinition,
    key_codes: np.ndarray,
    ts: np.ndarray,
    persons_in: np.ndarray,
    chain_ts: np.ndarray,
    lvl: np.ndarray,
) -> np.ndarray:
    """Person removed when an exclusion row lies strictly between its from-step and to-step times.

    When the counted chain never reached ``to_step`` the interval ends at the window's end.
    """
    out = np.zeros(len(persons_in), dtype=bool)
    slot_of = np.full(int(key_codes.max()) + 1 if len(key_codes) else 0, -1, dtype=np.int64)
    slot_of[persons_in] = np.arange(len(persons_in))
    for ex in definition.exclusions:
        mask = condition_mask(table, ex.event, ex.filters)
        rows = np.flatnonzero(mask)
        if len(rows) == 0:
            continue
        who = slot_of[key_codes[rows]]
        keep = who >= 0
        rows, who = rows[keep], who[keep]
        lo = chain_ts[who, ex.from_step - 1]
        reached_to = lvl[who] >= ex.to_step
        hi_open = np.where(reached_to, chain_ts[who, ex.to_step - 1], NONE)
        window_end = chain_ts[who, 0] + definition.window_us
        t = ts[rows]
        hit = (lo != NONE) & (t > lo) & np.where(reached_to, t < hi_open, t <= window_end)
        out[who[hit]] = True
    return out


def _breakdown_values(table: pa.Table, definition: FunnelDefinition, chain: np.ndarray, lvl: np.ndarray) -> list:
    if not definition.breakdown:
        return [None] * len(lvl)
    if definition.attribution == "first_touch":
        rows = chain[:, 0]
    elif definition.attribution == "last_touch":
        rows = chain[np.arange(len(lvl)), lvl - 1]
    else:
        rows = chain[:, int(definition.attribution[5:]) - 1]
    has = rows >= 0
    values = [None] * len(lvl)
    picked = property_values(table, definition.breakdown, rows[has])
    for i, v in zip(np.flatnonzero(has), picked, strict=True):
        values[i] = None if v is None else (json.dumps(v) if isinstance(v, dict | list) else str(v))
    return values


# ---------------------------------------------------------------------------------------------
# aggregation


def _quantiles(values: np.ndarray) -> tuple[float | None, float | None, float | None]:
    if len(values) == 0:
        return None, None, None
    return float(values.mean()), float(np.quantile(values, 0.5)), float(np.quantile(values, 0.9))


def aggregate_funnel(persons: pa.Table, definition: FunnelDefinition, tenants: Sequence[str] = ()) -> pa.Table:
    """``funnel_steps`` rows from per-person results (excluded persons dropped).

    ``tenants`` lists tenants that get rows even with no person in the funnel (zeros).
    Times to convert are exact (mean, median and p90 with linear interpolation, like
    ``quantile_cont``) over the persons who reached the step, from the previous step of their
    counted chain.
    """
    with_bd = definition.breakdown is not None
    persons = persons.filter(pc.invert(persons.column("excluded")))
    n_steps = len(definition.steps)
    level = persons.column("level").to_numpy(zero_copy_only=False)
    step_ts = [
        persons.column(f"step_{k + 1}_ts").cast(pa.int64()).fill_null(-1).to_numpy(zero_copy_only=False)
        for k in range(n_steps)
    ]
    # group persons by (tenant, breakdown value) on dictionary codes: no per-person Python
    groups: dict[tuple, np.ndarray] = {}
    if persons.num_rows:
        t_codes, t_values = _codes(persons.column("tenant_id"))
        if with_bd:
            b_codes, b_values = _codes(pc.fill_null(persons.column("breakdown_value"), "\x00"))
        else:
            b_codes, b_values = np.zeros(persons.num_rows, dtype=np.int64), pa.array(["\x00"])
        combined = t_codes * (len(b_values) + 1) + b_codes
        by_group = np.argsort(combined, kind="stable")
        cuts = np.flatnonzero(np.diff(combined[by_group])) + 1
        t_list, b_list = t_values.to_pylist(), b_values.to_pylist()
        for part in np.split(by_group, cuts):
            bd = b_list[b_codes[part[0]]]
            groups[(t_list[t_codes[part[0]]], None if bd == "\x00" else bd)] = part
    for t in tenants:
        if not any(g[0] == t for g in groups):
            groups[(t, None)] = np.zeros(0, dtype=np.int64)
    rows: list[dict] = []
    for tenant, bd in sorted(groups, key=lambda g: (g[0], g[1] is not None, g[1] or "")):
        ix = groups[(tenant, bd)]
        lv = level[ix] if len(ix) else np.zeros(0, dtype=np.int64)
        first = int((lv >= 1).sum())
        prev = None
        for k in range(n_steps):
            reached = lv >= k + 1
            count = int(reached.sum())
            if k == 0:
                avg = med = p90 = None
            else:
                dt_s = (step_ts[k][ix][reached] - step_ts[k - 1][ix][reached]) / _US
                avg, med, p90 = _quantiles(dt_s)
            row = {
                "tenant_id": tenant,
                "funnel": definition.name,
                "step": k + 1,
                "step_event": definition.steps[k].event,
                "persons": count,
                "conversion_from_previous": (count / prev if prev else None) if k else (1.0 if count else None),
                "conversion_overall": count / first if first else None,
                "avg_time_to_convert_s": avg,
                "median_time_to_convert_s": med,
                "p90_time_to_convert_s": p90,
            }
            if with_bd:
                row["breakdown_value"] = bd
            rows.append(row)
            prev = count
    return pa.Table.from_pylist(rows, schema=funnel_steps_schema(with_bd))


def local_dates(ts: pa.Array | pa.ChunkedArray, timezone: str) -> pa.Array:
    """Calendar date of UTC timestamps on the wall clock of ``timezone`` (not the UTC date)."""
    local = pc.local_timestamp(pc.cast(ts, pa.timestamp("us", tz=timezone)))
    return pc.cast(local, pa.date32())


def aggregate_entry_days(persons: pa.Table, definition: FunnelDefinition) -> pa.Table:
    """Persons per step by the local date of their counted chain's step-1 row (cohort-style view)."""
    persons = persons.filter(pc.invert(persons.column("excluded")))
    if persons.num_rows == 0:
        return ENTRY_DAYS_SCHEMA.empty_table()
    days = local_dates(persons.column("entry_ts"), definition.timezone)
    base = pa.table({"tenant_id": persons.column("tenant_id"), "entry_date": days, "level": persons.column("level")})
    parts = []
    for k, step in enumerate(definition.steps):
        reached = base.filter(pc.greater_equal(base.column("level"), k + 1))
        if reached.num_rows == 0:
            continue
        counted = reached.group_by(["tenant_id", "entry_date"]).aggregate([("level", "count")])
        n = counted.num_rows
        parts.append(
            pa.table(
                {
                    "tenant_id": counted.column("tenant_id"),
                    "funnel": pa.array([definition.name] * n, pa.string()),
                    "entry_date": counted.column("entry_date"),
                    "step": pa.array([k + 1] * n, pa.int32()),
                    "step_event": pa.array([step.event] * n, pa.string()),
                    "persons": counted.column("level_count").cast(pa.int64()),
                },
                schema=ENTRY_DAYS_SCHEMA,
            )
        )
    out = pa.concat_tables(parts)
    return out.sort_by([("tenant_id", "ascending"), ("entry_date", "ascending"), ("step", "ascending")])


def relevant_rows(table: pa.Table, definitions: Sequence[FunnelDefinition]) -> pa.Table:
    """Drop rows no funnel looks at (all rows stay when a funnel is strict: they can break chains)."""
    if any(d.mode == "strict" for d in definitions) or table.num_rows == 0:
        return table
    names = sorted({c.event for d in definitions for c in [*d.steps, *d.exclusions]})
    return table.filter(pc.fill_null(pc.is_in(table.column("event"), pa.array(names, pa.string())), False))


def utc_day(value: dt.date) -> int:
    return (value - dt.date(1970, 1, 1)).days


# ---------------------------------------------------------------------------------------------
# Beam: lake batches -> person buckets -> funnel tables (shared with pipelines.retention)

_PARTITION_IN_PATH = re.compile(r"tenant_id=([^/]+)/event_date=(\d{4}-\d{2}-\d{2})")


def partition_of_path(path: str) -> tuple[str, dt.date]:
    """(tenant_id, event_date) of a lake events file from its Hive path."""
    found = _PARTITION_IN_PATH.search(path.replace("\\", "/"))
    if not found:
        raise ValueError(f"not a lake events file (no tenant_id=.../event_date=... in the path): {path}")
    return urllib.parse.unquote(found.group(1)), dt.date.fromisoformat(found.group(2))


def person_buckets(person_ids: pa.Array | pa.ChunkedArray, buckets: int) -> np.ndarray:
    """Stable bucket per person id (CRC-32 of the UTF-8 id): the same on every worker and run.

    A null id has no bucket (its dictionary index is null, which numpy cannot index with): callers drop
    those rows first (:func:`bucket_lake_batch`)."""
    if person_ids.null_count:
        raise ValueError(f"{person_ids.null_count} null person id(s): drop rows without a person first")
    if isinstance(person_ids, pa.ChunkedArray):
        person_ids = person_ids.combine_chunks()
    encoded = pc.dictionary_encode(person_ids)
    hashes = np.fromiter(
        (zlib.crc32(v.encode()) for v in encoded.dictionary.to_pylist()), dtype=np.int64, count=len(encoded.dictionary)
    )
    return (hashes % buckets)[encoded.indices.to_numpy(zero_copy_only=False)]


def bucket_lake_batch(
    path: str,
    batch: pa.Table | pa.RecordBatch,
    buckets: int,
    events: Sequence[str] | None = None,
    events_from: dict[str, dt.date] | None = None,
    without_person: Callable[[int], None] | None = None,
) -> list[tuple[tuple[str, int], pa.Table]]:
    """Split one lake file batch by (tenant, person bucket), keeping only the rows a job needs.

    Rows without a ``person_id`` (the lake's contract forbids them, but ``--quality-gate warn|off`` lets a
    partition that has them through) belong to no person: they are left out of every person-based metric
    and their number is passed to ``without_person``, not lost silently.

    Args:
        events: keep only these event names (None: every row, as strict funnels need).
        events_from: event name -> first partition date from which rows of that event are kept.
        without_person: called with the number of needed rows dropped for a null ``person_id`` (when > 0).
    """
    tenant, day = partition_of_path(path)
    table = batch if isinstance(batch, pa.Table) else pa.Table.from_batches([batch])
    if events is not None:
        wanted = [e for e in events if not (events_from and e in events_from and day < events_from[e])]
        table = table.filter(pc.fill_null(pc.is_in(table.column("event"), pa.array(wanted, pa.string())), False))
    if table.num_rows == 0:
        return []
    missing = table.column("person_id").null_count
    if missing:
        table = table.filter(pc.is_valid(table.column("person_id")))
        if without_person is not None:
            without_person(missing)
        if table.num_rows == 0:
            return []
    if "tenant_id" not in table.column_names:
        table = table.append_column("tenant_id", pa.array([tenant] * table.num_rows, pa.string()))
    bucket = person_buckets(table.column("person_id"), buckets)
    order = np.argsort(bucket, kind="stable")
    sorted_buckets = bucket[order]
    cuts = np.flatnonzero(np.diff(sorted_buckets)) + 1
    out = []
    for lo, hi in zip(np.r_[0, cuts], np.r_[cuts, len(order)], strict=True):
        out.append(((tenant, int(sorted_buckets[lo])), table.take(pa.array(order[lo:hi]))))
    return out


class _BucketFn(beam.DoFn):
    def __init__(self, buckets: int, events: Sequence[str] | None, events_from: dict[str, dt.date] | None):
        self.buckets, self.events, self.events_from = buckets, events, events_from
        self.rows = Metrics.counter("analytics", "lake_rows_kept")
        self.without_person = Metrics.counter("analytics", "rows_without_person")

    def process(self, element):
        path, batch = element

        def dropped(n: int) -> None:
            self.without_person.inc(n)
            log.warning(
                "%s: %d row(s) without a person_id left out of person-based metrics",
                path,
                n,
                extra={"rows_without_person": n, "path": path},
            )

        for key, table in bucket_lake_batch(path, batch, self.buckets, self.events, self.events_from, dropped):
            self.rows.inc(table.num_rows)
            yield key, table


class BucketLakeBatches(beam.PTransform):
    """(file path, Arrow batch) from ``ReadAllFromParquetBatched(with_filename=True)`` ->
    ((tenant_id, bucket), Arrow table): a person's rows all land in one bucket."""

    def __init__(
        self, buckets: int, events: Sequence[str] | None = None, events_from: dict[str, dt.date] | None = None
    ):
        super().__init__()
        if buckets < 1:
            raise ValueError("buckets must be >= 1")
        self.buckets, self.events, self.events_from = buckets, events, events_from

    def expand(self, batches):
        return batches | "Bucket" >> beam.ParDo(_BucketFn(self.buckets, self.events, self.events_from))


def funnel_events(definitions: Sequence[FunnelDefinition]) -> list[str] | None:
    """Event names to read for these funnels (None = all rows: a strict funnel needs them)."""
    if any(d.mode == "strict" for d in definitions):
        return None
    return sorted({c.event for d in definitions for c in [*d.steps, *d.exclusions]})


class _PersonFunnelFn(beam.DoFn):
    def __init__(self, definitions: Sequence[FunnelDefinition], entry_before: dt.datetime | None = None):
        self.definitions, self.entry_before = list(definitions), entry_before
        self.persons = Metrics.counter("funnels", "persons_in_funnel")
        self.excluded = Metrics.counter("funnels", "persons_excluded")

    def process(self, element):
        _key, tables = element
        table = pa.concat_tables(list(tables), promote_options="permissive")
        for d in self.definitions:
            persons = person_funnel(relevant_rows(table, [d]), d, self.entry_before)
            self.persons.inc(persons.num_rows)
            self.excluded.inc(int(pc.sum(persons.column("excluded")).as_py() or 0))
            yield d.name, persons


class _AggregateFunnelFn(beam.DoFn):
    def __init__(self, definitions: Sequence[FunnelDefinition]):
        self.definitions = {d.name: d for d in definitions}

    def process(self, element):
        name, tables = element
        d = self.definitions[name]
        persons = pa.concat_tables(list(tables))
        yield name, aggregate_funnel(persons, d), aggregate_entry_days(persons, d)


class ComputeFunnels(beam.PTransform):
    """Lake batches -> (funnel name, funnel_steps table, funnel_entry_days table), one per funnel.

    Levels are computed per (tenant, person bucket) on Arrow/numpy; the per-person results
    (a few columns per person) are then gathered per funnel, so medians and p90s are exact.
    """

    def __init__(
        self, definitions: Sequence[FunnelDefinition], buckets: int = 64, entry_before: dt.datetime | None = None
    ):
        super().__init__()
        names = [d.name for d in definitions]
        if not definitions or len(set(names)) != len(names):
            raise ValueError(f"need at least one funnel and unique names, got {names}")
        self.definitions, self.buckets, self.entry_before = list(definitions), buckets, entry_before

    def expand(self, batches):
        persons = (
            batches
            | "ByPersonBucket" >> BucketLakeBatches(self.buckets, funnel_events(self.definitions))
            | "GroupBuckets" >> beam.GroupByKey()
            | "PersonLevels" >> beam.ParDo(_PersonFunnelFn(self.definitions, self.entry_before))
        )
        return (
            persons
            | "GroupFunnels" >> beam.GroupByKey()
            | "Aggregate" >> beam.ParDo(_AggregateFunnelFn(self.definitions))
        )


def combine_funnel_outputs(
    results: Sequence[tuple[str, pa.Table, pa.Table]], definitions: Sequence[FunnelDefinition]
) -> tuple[pa.Table, pa.Table]:
    """One funnel_steps and one funnel_entry_days table for all funnels, in definition order."""
    with_bd = any(d.breakdown for d in definitions)
    schema = funnel_steps_schema(with_bd)
    by_name = {name: (steps, days) for name, steps, days in results}
    steps_parts, day_parts = [], []
    for d in definitions:
        if d.name not in by_name:
            continue
        steps, days = by_name[d.name]
        if with_bd and "breakdown_value" not in steps.column_names:
            steps = steps.add_column(2, "breakdown_value", pa.nulls(steps.num_rows, pa.string()))
        steps_parts.append(steps.select(schema.names).cast(schema))
        day_parts.append(days)
    steps_table = pa.concat_tables(steps_parts) if steps_parts else schema.empty_table()
    days_table = pa.concat_tables(day_parts) if day_parts else ENTRY_DAYS_SCHEMA.empty_table()
    return steps_table, days_table
