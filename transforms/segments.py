"""Behavioural segments: rule trees from YAML evaluated per person as of a date.

A segment is a rule tree whose leaves are

- ``event``: the person did track event X at least ``min_count`` (and at most ``max_count``) times in
  the last ``within_days`` days, counting only events whose properties / columns pass ``where`` filters;
- ``rfm``: the person's recency / frequency / monetary scores (1..5, 5 best) fall in given ranges,

combined with ``and`` / ``or`` / ``not``. Evaluation is *as of* a date: only events with
``timestamp < as_of_end`` count, where ``as_of_end`` is the midnight after ``as_of`` in the config's
timezone; "the last d days" is ``[as_of_end - d days, as_of_end)``. The result depends only on the
events and the config (no clock, no arrival order), so a rerun gives the same membership.

Everything here is pure and vectorised with pandas over Arrow tables: per-person counts are one
``groupby`` per leaf, the tree is boolean algebra on aligned Series. The Beam pipeline
(:mod:`pipelines.segments`) runs :func:`person_features` per person bucket, gathers the RFM values per
tenant for the quintile cut points (:func:`rfm_cutpoints`) and then :func:`evaluate` per bucket.
The YAML format and every output column are documented in ``docs/analytics-segments-products.md``.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
from collections.abc import Iterator, Mapping, Sequence
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd
import pyarrow as pa
import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

__all__ = [
    "RFM_METRICS",
    "And",
    "EventCondition",
    "Filter",
    "Not",
    "Or",
    "RfmCondition",
    "RfmSettings",
    "Segment",
    "SegmentsConfig",
    "as_of_end",
    "evaluate",
    "load_config",
    "membership",
    "person_features",
    "rfm_cutpoints",
    "rfm_scores",
    "rfm_table",
]

ORDER_COMPLETED = "Order Completed"
RFM_METRICS = ("recency", "frequency", "monetary")
SEGMENT_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]{0,99}$")
BASE_COLUMNS = ("tenant_id", "person_id", "message_id", "timestamp", "type", "event")
ORDER_COLUMNS = ("order_id", "revenue_inr")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)


# --- config -------------------------------------------------------------------------------


class Filter(_Strict):
    """One condition on an event: a JSON property (dotted path) or a lake column, compared to a value."""

    property: str | None = Field(default=None, description="Property path in `properties`, e.g. `category`.")
    column: str | None = Field(default=None, description="A lake column instead, e.g. `channel`, `geo_country`.")
    op: Literal["eq", "neq", "in", "not_in", "gt", "gte", "lt", "lte", "contains", "exists", "not_exists"] = "eq"
    value: Any = None

    @model_validator(mode="after")
    def _one_target(self) -> Filter:
        if (self.property is None) == (self.column is None):
            raise ValueError("a filter names exactly one of `property` or `column`")
        if self.op in ("in", "not_in") and not isinstance(self.value, list):
            raise ValueError(f"op {self.op} needs a list value")
        if self.op in ("gt", "gte", "lt", "lte") and not isinstance(self.value, int | float):
            raise ValueError(f"op {self.op} needs a number")
        if self.op not in ("exists", "not_exists") and self.value is None:
            raise ValueError(f"op {self.op} needs a value")
        return self


class EventCondition(_Strict):
    """Did track event ``name`` between ``min_count`` and ``max_count`` times in the last ``within_days`` days."""

    name: str | None = Field(description="Track event name; null means any track event.")
    min_count: int = Field(default=1, ge=0)
    max_count: int | None = Field(default=None, ge=0)
    within_days: int | None = Field(default=None, ge=1, description="Look-back in days; null = all history read.")
    where: tuple[Filter, ...] = ()

    @model_validator(mode="after")
    def _counts(self) -> EventCondition:
        if self.max_count is not None and self.max_count < self.min_count:
            raise ValueError("max_count < min_count")
        return self

    def key(self) -> str:
        """A stable id of the leaf: equal leaves in different segments are counted once."""
        text = json.dumps(self.model_dump(mode="json"), sort_keys=True)
        return "ev_" + hashlib.sha1(text.encode()).hexdigest()[:12]


class ScoreRange(_Strict):
    min: int = Field(default=1, ge=1, le=5)
    max: int = Field(default=5, ge=1, le=5)

    @model_validator(mode="after")
    def _order(self) -> ScoreRange:
        if self.min > self.max:
            raise ValueError("min > max")
        return self


class RfmCondition(_Strict):
    """RFM scores (1..5, 5 = best) within ranges; an omitted metric is unconstrained.

    Persons with no order in the RFM look-back have no scores and never match.
    """

    recency: ScoreRange | None = None
    frequency: ScoreRange | None = None
    monetary: ScoreRange | None = None


class EventLeaf(_Strict):
    event: EventCondition


class RfmLeaf(_Strict):
    rfm: RfmCondition


class And(_Strict):
    and_: tuple[Rule, ...] = Field(alias="and", min_length=1)


class Or(_Strict):
    or_: tuple[Rule, ...] = Field(alias="or", min_length=1)


class Not(_Strict):
    not_: Rule = Field(alias="not")


Rule = Annotated[EventLeaf | RfmLeaf | And | Or | Not, Field(union_mode="left_to_right")]
And.model_rebuild()
Or.model_rebuild()
Not.model_rebuild()


class RfmSettings(_Strict):
    """How RFM scores are computed.

    ``quintiles``: per tenant, over persons with at least one order in the look-back, cut points
    ``c_k = sorted(x)[floor((n - 1) * k / 5)]`` for k = 1..4 and score ``1 + #{k : x > c_k}``, with
    ``x = -recency_days``, ``frequency`` or ``monetary`` (so higher is better for all three; ties share a score).
    ``thresholds``: fixed cut points, four ascending numbers per metric: recency score
    ``5 - #{c : recency_days > c}``; frequency / monetary score ``1 + #{c : value >= c}``.
    With ``quintiles``, a metric given cut points uses them instead (useful for frequency, where most
    buyers have one order and the quintiles collapse).
    """

    method: Literal["quintiles", "thresholds"] = "quintiles"
    lookback_days: int | None = Field(default=None, ge=1, description="Orders counted; null = all history read.")
    recency: tuple[float, float, float, float] | None = None
    frequency: tuple[float, float, float, float] | None = None
    monetary: tuple[float, float, float, float] | None = None

    @model_validator(mode="after")
    def _thresholds(self) -> RfmSettings:
        for metric in RFM_METRICS:
            cuts = getattr(self, metric)
            if cuts is None and self.method == "thresholds":
                raise ValueError(f"method thresholds needs four `{metric}` cut points")
            if cuts is not None and list(cuts) != sorted(cuts):
                raise ValueError(f"`{metric}` cut points must be ascending")
        return self


class Segment(_Strict):
    name: str
    description: str | None = None
    rule: Rule

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not SEGMENT_NAME.match(value):
            raise ValueError(f"segment name {value!r}: letters, digits, _ . - only (max 100)")
        return value

    def version(self) -> str:
        """Hash of the rule: tells which definition produced a membership row."""
        text = json.dumps(self.model_dump(mode="json", by_alias=True)["rule"], sort_keys=True)
        return hashlib.sha1(text.encode()).hexdigest()[:12]


class SegmentsConfig(_Strict):
    timezone: str = Field(default="UTC", description="Where `as_of` days end (IANA name).")
    rfm: RfmSettings = RfmSettings()
    segments: tuple[Segment, ...] = Field(min_length=1)

    @field_validator("timezone")
    @classmethod
    def _tz(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (KeyError, ValueError) as err:  # ZoneInfoNotFoundError is a KeyError
            raise ValueError(f"unknown timezone {value!r}") from err
        return value

    @model_validator(mode="after")
    def _unique(self) -> SegmentsConfig:
        names = [s.name for s in self.segments]
        if len(names) != len(set(names)):
            raise ValueError("segment names must be unique")
        return self

    def event_leaves(self) -> dict[str, EventCondition]:
        found: dict[str, EventCondition] = {}
        for segment in self.segments:
            for leaf in _leaves(segment.rule):
                if isinstance(leaf, EventLeaf):
                    found[leaf.event.key()] = leaf.event
        return dict(sorted(found.items()))

    def uses_rfm(self) -> bool:
        return any(isinstance(leaf, RfmLeaf) for s in self.segments for leaf in _leaves(s.rule))

    def required_columns(self) -> list[str]:
        """Lake columns evaluation needs (project the read to these)."""
        cols = list(BASE_COLUMNS) + list(ORDER_COLUMNS)
        for cond in self.event_leaves().values():
            for flt in cond.where:
                if flt.property is not None and "properties" not in cols:
                    cols.append("properties")
                if flt.column is not None and flt.column not in cols:
                    cols.append(flt.column)
        return cols

    def max_lookback_days(self) -> int | None:
        """Days of history evaluation needs before ``as_of``; None when some leaf reads all history."""
        days: list[int | None] = [c.within_days for c in self.event_leaves().values()]
        if self.uses_rfm():
            days.append(self.rfm.lookback_days)
        if not days or any(d is None for d in days):
            return None
        return max(d for d in days if d is not None)


def _leaves(rule) -> Iterator[EventLeaf | RfmLeaf]:
    if isinstance(rule, EventLeaf | RfmLeaf):
        yield rule
    elif isinstance(rule, And):
        for child in rule.and_:
            yield from _leaves(child)
    elif isinstance(rule, Or):
        for child in rule.or_:
            yield from _leaves(child)
    elif isinstance(rule, Not):
        yield from _leaves(rule.not_)


def load_config(source: str | Mapping[str, Any]) -> SegmentsConfig:
    """A validated config from YAML text or an already-parsed mapping."""
    data = yaml.safe_load(source) if isinstance(source, str) else source
    return SegmentsConfig.model_validate(data)


def as_of_end(as_of: dt.date, timezone: str = "UTC") -> dt.datetime:
    """The exclusive end of day ``as_of`` in ``timezone``, as an aware UTC datetime."""
    local = dt.datetime.combine(as_of + dt.timedelta(days=1), dt.time(), tzinfo=ZoneInfo(timezone))
    return local.astimezone(dt.UTC)


# --- per-person features --------------------------------------------------------------------


def _frame(table: pa.Table | pd.DataFrame) -> pd.DataFrame:
    df = table.to_pandas() if isinstance(table, pa.Table) else table.copy()
    ts = pd.to_datetime(df["timestamp"], utc=True)
    df["timestamp"] = ts.dt.as_unit("us")
    return df


def _lookup(props: Any, path: Sequence[str]) -> Any:
    value = props
    for part in path:
        if not isinstance(value, dict) or part not in value:
            return _MISSING
        value = value[part]
    return value


_MISSING = object()


def _filter_mask(df: pd.DataFrame, flt: Filter, parsed: list[Any] | None) -> np.ndarray:
    if flt.column is not None:
        values = df[flt.column].astype(object).where(df[flt.column].notna(), _MISSING).tolist()
    else:
        path = flt.property.split(".")
        values = [_lookup(p, path) for p in parsed]
    present = np.array([v is not _MISSING and v is not None for v in values], dtype=bool)
    if flt.op == "exists":
        return present
    if flt.op == "not_exists":
        return ~present
    want = flt.value
    if flt.op in ("gt", "gte", "lt", "lte"):
        nums = pd.to_numeric(
            pd.Series([v if p else None for v, p in zip(values, present, strict=True)]), errors="coerce"
        )
        arr = nums.to_numpy(dtype=float, na_value=np.nan)
        with np.errstate(invalid="ignore"):
            result = {"gt": arr > want, "gte": arr >= want, "lt": arr < want, "lte": arr <= want}[flt.op]
        return np.nan_to_num(result, nan=False).astype(bool) & present

    def norm(v: Any) -> Any:
        # numbers compare by value (JSON 1 == 1.0); everything else by its text
        if isinstance(v, bool):
            return str(v).lower()
        if isinstance(v, int | float):
            return float(v)
        return v if isinstance(v, str) else json.dumps(v, sort_keys=True)

    if flt.op in ("eq", "neq"):
        target = norm(want)
        hit = np.array([p and norm(v) == target for v, p in zip(values, present, strict=True)], dtype=bool)
        return hit if flt.op == "eq" else ~hit
    if flt.op in ("in", "not_in"):
        targets = {norm(w) for w in want}
        hit = np.array([p and norm(v) in targets for v, p in zip(values, present, strict=True)], dtype=bool)
        return hit if flt.op == "in" else ~hit
    # contains: substring of a text value, or membership in a list value
    hit = np.array(
        [
            p and ((isinstance(v, str) and str(want) in v) or (isinstance(v, list) and want in v))
            for v, p in zip(values, present, strict=True)
        ],
        dtype=bool,
    )
    return hit


def _event_counts(df: pd.DataFrame, cond: EventCondition, end: pd.Timestamp) -> pd.Series:
    mask = (df["type"] == "track").to_numpy() & (df["timestamp"] < end).to_numpy()
    if cond.name is not None:
        mask &= (df["event"] == cond.name).to_numpy()
    if cond.within_days is not None:
        mask &= (df["timestamp"] >= end - pd.Timedelta(days=cond.within_days)).to_numpy()
    sub = df.loc[mask]
    if cond.where and len(sub):
        parsed = None
        if any(f.property is not None for f in cond.where):
            parsed = [json.loads(p) if isinstance(p, str) and p else {} for p in sub["properties"].tolist()]
        keep = np.ones(len(sub), dtype=bool)
        for flt in cond.where:
            keep &= _filter_mask(sub, flt, parsed)
        sub = sub.loc[keep]
    return sub.groupby(["tenant_id", "person_id"], sort=False).size()


def _dedup_orders(df: pd.DataFrame, start: pd.Timestamp | None, end: pd.Timestamp) -> pd.DataFrame:
    """Order Completed rows before ``end`` (and from ``start``), one per (tenant, person, order id)."""
    mask = (df["type"] == "track") & (df["event"] == ORDER_COMPLETED) & (df["timestamp"] < end)
    if start is not None:
        mask &= df["timestamp"] >= start
    orders = df.loc[mask, ["tenant_id", "person_id", "message_id", "timestamp", "order_id", "revenue_inr"]].copy()
    orders["order_key"] = orders["order_id"].where(orders["order_id"].notna(), "msg:" + orders["message_id"])
    orders = orders.sort_values(["timestamp", "message_id"], kind="stable")
    return orders.drop_duplicates(["tenant_id", "person_id", "order_key"], keep="first")


def person_features(table: pa.Table | pd.DataFrame, config: SegmentsConfig, as_of: dt.date) -> pd.DataFrame:
    """One row per person seen before the as-of end: leaf counts and raw RFM values.

    Columns: ``tenant_id, person_id``, one ``ev_<hash>`` count per event leaf, ``orders``,
    ``monetary_inr`` (sum of order ``revenue_inr``, gross), ``last_order_at``, ``recency_days``
    (fractional days from the last order to the as-of end; NaN without orders).
    """
    df = _frame(table)
    end = pd.Timestamp(as_of_end(as_of, config.timezone))
    df = df.loc[df["timestamp"] < end]
    persons = df[["tenant_id", "person_id"]].drop_duplicates().sort_values(["tenant_id", "person_id"])
    out = persons.set_index(["tenant_id", "person_id"])
    for key, cond in config.event_leaves().items():
        out[key] = _event_counts(df, cond, end).reindex(out.index, fill_value=0).astype("int64")
    start = end - pd.Timedelta(days=config.rfm.lookback_days) if config.rfm.lookback_days else None
    orders = _dedup_orders(df, start, end)
    orders["inr"] = pd.to_numeric(orders["revenue_inr"].astype(object), errors="coerce").fillna(0.0).astype(float)
    grouped = orders.groupby(["tenant_id", "person_id"], sort=False)
    out["orders"] = grouped.size().reindex(out.index, fill_value=0).astype("int64")
    out["monetary_inr"] = grouped["inr"].sum().reindex(out.index, fill_value=0.0).astype(float)
    last = grouped["timestamp"].max().reindex(out.index)
    out["last_order_at"] = last
    out["recency_days"] = ((end - last).dt.total_seconds() / 86400.0).astype(float)
    return out.reset_index()


# --- RFM ------------------------------------------------------------------------------------


def _score_values(features: pd.DataFrame, metric: str) -> pd.Series:
    """Higher is better for every metric (recency is negated)."""
    if metric == "recency":
        return -features["recency_days"]
    if metric == "frequency":
        return features["orders"].astype(float)
    return features["monetary_inr"].astype(float)


def quintile_cutpoints(values: np.ndarray) -> list[float]:
    """``c_k = sorted(x)[floor((n - 1) * k / 5)]``, k = 1..4 (empty input: no cut points)."""
    x = np.sort(np.asarray(values, dtype=float))
    if not len(x):
        return []
    return [float(x[((len(x) - 1) * k) // 5]) for k in range(1, 5)]


def rfm_cutpoints(features: pd.DataFrame) -> dict[str, dict[str, list[float]]]:
    """Quintile cut points per tenant and metric over persons with at least one order."""
    buyers = features.loc[features["orders"] > 0]
    cuts: dict[str, dict[str, list[float]]] = {}
    for tenant, group in buyers.groupby("tenant_id", sort=True):
        cuts[str(tenant)] = {m: quintile_cutpoints(_score_values(group, m).to_numpy()) for m in RFM_METRICS}
    return cuts


def rfm_values(features: pd.DataFrame) -> dict[str, dict[str, np.ndarray]]:
    """Per tenant, the score values of persons with orders: what :func:`rfm_cutpoints` needs, in parts."""
    buyers = features.loc[features["orders"] > 0]
    return {
        str(t): {m: _score_values(g, m).to_numpy(dtype=float) for m in RFM_METRICS}
        for t, g in buyers.groupby("tenant_id", sort=True)
    }


def rfm_scores(
    features: pd.DataFrame, settings: RfmSettings, cutpoints: Mapping[str, Mapping[str, Sequence[float]]] | None = None
) -> pd.DataFrame:
    """``r_score, f_score, m_score`` (1..5, 5 best; <NA> for persons without orders) added to ``features``."""
    out = features.copy()
    has = (out["orders"] > 0).to_numpy()
    for metric, col in zip(RFM_METRICS, ("r_score", "f_score", "m_score"), strict=True):
        scores = np.zeros(len(out), dtype="int64")
        if getattr(settings, metric) is not None:  # fixed cut points (method thresholds, or an override)
            cuts = np.asarray(getattr(settings, metric), dtype=float)
            if metric == "recency":
                v = out["recency_days"].to_numpy(dtype=float)
                scores = 5 - (v[:, None] > cuts[None, :]).sum(axis=1)
            else:
                v = _score_values(out, metric).to_numpy(dtype=float)
                scores = 1 + (v[:, None] >= cuts[None, :]).sum(axis=1)
        else:
            if cutpoints is None:
                cutpoints = rfm_cutpoints(out)
            v = _score_values(out, metric).to_numpy(dtype=float)
            tenants = out["tenant_id"].to_numpy()
            for tenant in pd.unique(tenants):
                cuts = (cutpoints.get(str(tenant)) or {}).get(metric) or []
                sel = tenants == tenant
                if cuts:
                    scores[sel] = 1 + (v[sel][:, None] > np.asarray(cuts, dtype=float)[None, :]).sum(axis=1)
        out[col] = pd.array(np.where(has, scores, 0), dtype="Int64")
        out.loc[~has, col] = pd.NA
    return out


RFM_COLUMNS = ("person_id", "recency_days", "orders", "monetary_inr", "r_score", "f_score", "m_score", "rfm_cell")


def rfm_table(
    features: pd.DataFrame, settings: RfmSettings, cutpoints: Mapping[str, Mapping[str, Sequence[float]]] | None = None
) -> pd.DataFrame:
    """Scores of the persons with orders: ``tenant_id`` + :data:`RFM_COLUMNS`; ``rfm_cell`` is e.g. ``"5-4-3"``."""
    scored = rfm_scores(features, settings, cutpoints)
    scored = scored.loc[scored["orders"] > 0].copy()
    for col in ("r_score", "f_score", "m_score"):
        scored[col] = scored[col].astype("int64")
    scored["rfm_cell"] = (
        scored["r_score"].astype(str) + "-" + scored["f_score"].astype(str) + "-" + scored["m_score"].astype(str)
    )
    scored["recency_days"] = scored["recency_days"].round(6)
    scored["monetary_inr"] = scored["monetary_inr"].round(4)
    out = scored[["tenant_id", *RFM_COLUMNS]].sort_values(["tenant_id", "person_id"], kind="stable")
    return out.reset_index(drop=True)


# --- the rule tree --------------------------------------------------------------------------


def _eval(rule, frame: pd.DataFrame) -> np.ndarray:
    if isinstance(rule, EventLeaf):
        counts = frame[rule.event.key()].to_numpy()
        hit = counts >= rule.event.min_count
        if rule.event.max_count is not None:
            hit &= counts <= rule.event.max_count
        return hit
    if isinstance(rule, RfmLeaf):
        hit = (frame["orders"] > 0).to_numpy().copy()
        for metric, col in zip(RFM_METRICS, ("r_score", "f_score", "m_score"), strict=True):
            rng = getattr(rule.rfm, metric)
            if rng is not None:
                s = frame[col].to_numpy(dtype=float, na_value=np.nan)
                with np.errstate(invalid="ignore"):
                    hit &= np.nan_to_num((s >= rng.min) & (s <= rng.max), nan=False).astype(bool)
        return hit
    if isinstance(rule, And):
        hit = np.ones(len(frame), dtype=bool)
        for child in rule.and_:
            hit &= _eval(child, frame)
        return hit
    if isinstance(rule, Or):
        hit = np.zeros(len(frame), dtype=bool)
        for child in rule.or_:
            hit |= _eval(child, frame)
        return hit
    return ~_eval(rule.not_, frame)


def evaluate(
    features: pd.DataFrame,
    config: SegmentsConfig,
    as_of: dt.date,
    cutpoints: Mapping[str, Mapping[str, Sequence[float]]] | None = None,
) -> pd.DataFrame:
    """Membership rows ``tenant_id, person_id, segment, as_of, rule_version`` (members only), sorted."""
    frame = rfm_scores(features, config.rfm, cutpoints) if config.uses_rfm() else features
    parts = []
    for segment in config.segments:
        hit = _eval(segment.rule, frame)
        members = frame.loc[hit, ["tenant_id", "person_id"]].copy()
        members["segment"] = segment.name
        members["rule_version"] = segment.version()
        parts.append(members)
    out = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=["tenant_id", "person_id"])
    out["as_of"] = as_of
    out = out[["tenant_id", "person_id", "segment", "as_of", "rule_version"]]
    return out.sort_values(["tenant_id", "segment", "person_id"], kind="stable").reset_index(drop=True)


def membership(
    table: pa.Table | pd.DataFrame,
    config: SegmentsConfig,
    as_of: dt.date,
) -> pd.DataFrame:
    """All of it on one machine: features, tenant-wide quintiles, rule evaluation."""
    features = person_features(table, config, as_of)
    cutpoints = rfm_cutpoints(features) if config.uses_rfm() and config.rfm.method == "quintiles" else None
    return evaluate(features, config, as_of, cutpoints)


def person_segments(members: pd.DataFrame, persons: pd.DataFrame) -> pd.DataFrame:
    """One row per evaluated person: ``tenant_id, person_id, segments`` (sorted names; empty list if none).

    Every evaluated person gets a row so that the profile store also learns when someone *left*
    all segments.
    """
    lists = members.groupby(["tenant_id", "person_id"], sort=True)["segment"].agg(lambda s: sorted(s))
    base = persons[["tenant_id", "person_id"]].drop_duplicates().set_index(["tenant_id", "person_id"])
    base["segments"] = lists.reindex(base.index)
    base["segments"] = [v if isinstance(v, list) else [] for v in base["segments"].tolist()]
    return base.reset_index().sort_values(["tenant_id", "person_id"], kind="stable").reset_index(drop=True)
