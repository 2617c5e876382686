"""Tracking plans: YAML loading, the example plans, rule semantics."""

from __future__ import annotations

from pathlib import Path

import pytest

from schemas.events import Event
from schemas.tracking_plan import EventRule, PropertyRule, TrackingPlan, TrackingPlans

PLANS_DIR = Path(__file__).resolve().parents[2] / "schemas" / "tracking_plans"


def ev(name: str | None = "Order Completed", tenant: str = "t1", type_: str = "track", **props) -> Event:
    data = {"type": type_, "messageId": "m", "tenantId": tenant, "anonymousId": "a", "properties": props}
    if name:
        data["event"] = name
    return Event.model_validate(data)


def plans_of(**plan) -> TrackingPlans:
    return TrackingPlans([TrackingPlan.model_validate({"tenant_id": "t1", **plan})])


def test_example_plans_load():
    plans = TrackingPlans.load(PLANS_DIR)
    assert plans.tenants == ["acme-in", "bloom-in"]
    acme, bloom = plans.for_tenant("acme-in"), plans.for_tenant("bloom-in")
    assert (acme.mode, acme.allow_unplanned_events) == ("block", False)
    assert (bloom.mode, bloom.allow_unplanned_events) == ("warn", True)
    assert acme.events["Order Completed"].required == ["order_id", "revenue", "currency"]
    assert acme.events["Product List Viewed"] == EventRule()  # planned with no rules
    assert plans.for_tenant("nobody") is None


def test_short_forms():
    plan = TrackingPlan.model_validate(
        {
            "tenant_id": "t",
            "events": {
                "E": {
                    "properties": {"a": "string", "b": ["number", "string"], "c": {"type": "integer", "enum": [1, 2]}}
                }
            },
        }
    )
    props = plan.events["E"].properties
    assert props["a"] == PropertyRule(type="string")
    assert props["b"].types == ("number", "string")
    assert props["c"].enum == [1, 2]


@pytest.mark.parametrize(
    ("doc", "needle"),
    [
        ("tenant_id: x\nmode: strict\n", "mode"),
        ("mode: block\n", "tenant_id"),
        ("tenant_id: x\nevents:\n  E:\n    properties:\n      a: decimal\n", "a"),
        ("tenant_id: x\nevents:\n  E:\n    requird: [a]\n", "requird"),
        ("tenant_id: x\nevents: [\n", "yaml"),
    ],
)
def test_invalid_plan_files_name_the_file(tmp_path: Path, doc: str, needle: str):
    (tmp_path / "broken.yaml").write_text(doc)
    with pytest.raises(ValueError, match=r"broken\.yaml") as info:
        TrackingPlans.load(tmp_path)
    assert needle.lower() in str(info.value).lower()


def test_duplicate_tenant_is_rejected(tmp_path: Path):
    (tmp_path / "a.yaml").write_text("tenant_id: x\n")
    (tmp_path / "b.yml").write_text("tenant_id: x\n")
    with pytest.raises(ValueError, match="two tracking plans"):
        TrackingPlans.load(tmp_path)


def test_missing_directory():
    with pytest.raises(FileNotFoundError):
        TrackingPlans.load("/nonexistent/plans")


def test_required_properties():
    plans = plans_of(events={"Order Completed": {"required": ["order_id", "revenue"]}})
    assert plans.check(ev(order_id="o", revenue=1)) == []
    assert plans.check(ev(order_id="o")) == ["properties.revenue: required by the plan for 'Order Completed'"]
    assert plans.check(ev(order_id="o", revenue=None)) == [
        "properties.revenue: required by the plan for 'Order Completed'"
    ]


@pytest.mark.parametrize(
    ("types", "value", "ok"),
    [
        ("string", "x", True),
        ("string", 1, False),
        ("number", 1, True),
        ("number", 1.5, True),
        ("number", True, False),  # a JSON boolean is not a number
        ("integer", 3, True),
        ("integer", 3.0, True),  # JSON does not distinguish 3 and 3.0
        ("integer", 3.5, False),
        ("integer", False, False),
        ("boolean", False, True),
        ("boolean", 0, False),
        ("object", {}, True),
        ("array", [], True),
        ("array", {}, False),
        (["number", "string"], "12.5", True),
        (["number", "string"], [], False),
        ("any", [1], True),
    ],
)
def test_property_types(types, value, ok: bool):
    plans = plans_of(events={"E": {"properties": {"p": types}}})
    assert (plans.check(ev("E", p=value)) == []) is ok


def test_type_violation_message():
    plans = plans_of(events={"E": {"properties": {"p": ["number", "string"]}}})
    assert plans.check(ev("E", p=True)) == ["properties.p: expected number or string, got boolean"]


def test_enum():
    plans = plans_of(events={"E": {"properties": {"method": {"type": "string", "enum": ["upi", "cod"]}}}})
    assert plans.check(ev("E", method="upi")) == []
    assert plans.check(ev("E", method="bitcoin")) == ["properties.method: 'bitcoin' is not one of ['upi', 'cod']"]


def test_absent_optional_property_is_fine():
    plans = plans_of(events={"E": {"properties": {"p": "string"}}})
    assert plans.check(ev("E")) == []


def test_unplanned_events():
    closed = plans_of(allow_unplanned_events=False, events={"E": {}})
    assert closed.check(ev("Other")) == ["event: event 'Other' is not in the tracking plan of t1"]
    assert closed.violations(ev("Other"))[0].field_path == "event"
    opened = plans_of(events={"E": {}})
    assert opened.check(ev("Other")) == []


def test_only_track_events_and_planned_tenants_are_checked():
    closed = plans_of(allow_unplanned_events=False)
    assert closed.check(ev(None, type_="identify")) == []
    assert closed.check(ev("Other", tenant="t2")) == []


def test_check_command(tmp_path: Path, capsys):
    from schemas.tracking_plan import main

    assert main([str(PLANS_DIR)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out == [
        "acme-in: mode=block, 14 planned events, unplanned events violations",
        "bloom-in: mode=warn, 3 planned events, unplanned events allowed",
    ]
    (tmp_path / "bad.yaml").write_text("tenant_id: x\nmode: sometimes\n")
    assert main([str(tmp_path)]) == 1
    assert "bad.yaml" in capsys.readouterr().out
