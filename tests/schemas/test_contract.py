"""The generated forms of the contract agree: pydantic ↔ Avro (fastavro) ↔ Arrow ↔ JSON Schema."""

from __future__ import annotations

import datetime as dt
import io
import json
from decimal import Decimal

import fastavro
import jsonschema
import pyarrow as pa
import pytest

from schemas import SCHEMA_VERSION
from schemas.codegen import arrow_schema, avro_schema, json_schema
from schemas.events import Event
from schemas.export import CONTRACTS, avro_datum, export, main
from schemas.failures import FailedEvent, Reason, Stage
from schemas.lake import EVENTS_FILE_SCHEMA, EVENTS_SCHEMA, PARTITION_COLUMNS, LakeEvent
from transforms.decode import decode_record

UTC = dt.UTC

SDK_EVENT = {
    "type": "track",
    "event": "Order Completed",
    "messageId": "ajs-next-1a2b3c",
    "tenantId": "acme-in",
    "anonymousId": "anon-77",
    "userId": "user-42",
    "properties": {
        "order_id": "ord-1",
        "revenue": 2950.48,
        "currency": "INR",
        "products": [{"product_id": "p", "quantity": 2}],
    },
    "traits": {},
    "context": {
        "ip": "49.36.112.20",
        "userAgent": "Mozilla/5.0",
        "locale": "en-IN",
        "timezone": "Asia/Kolkata",
        "page": {"url": "https://www.acme.in/thank-you", "path": "/thank-you", "referrer": "https://www.google.com/"},
        "campaign": {"source": "google", "medium": "cpc", "name": "diwali"},
        "library": {"name": "analytics.js", "version": "4.1.0"},
        "device": {"type": "mobile"},
        "os": {"name": "Android", "version": "14"},
    },
    "timestamp": "2026-10-14T14:12:11.123456Z",
    "originalTimestamp": "2026-10-14T14:12:10Z",
    "sentAt": "2026-10-14T14:12:11Z",
    "receivedAt": "2026-10-14T14:12:12.5Z",
}


def avro_round_trip(schema: dict, records: list[dict]) -> list[dict]:
    parsed = fastavro.parse_schema(schema)
    buffer = io.BytesIO()
    fastavro.writer(buffer, parsed, records)
    buffer.seek(0)
    return list(fastavro.reader(buffer))


def from_avro(model, record: dict):
    """Rebuild a model from an Avro record: JSON-text maps parsed back."""
    fixed = dict(record)
    for name in ("properties", "traits"):
        if isinstance(fixed.get(name), str):
            fixed[name] = json.loads(fixed[name])
    return model.model_validate(fixed)


def lake_row() -> dict:
    ts = dt.datetime(2026, 10, 14, 14, 12, 11, 123456, tzinfo=UTC)
    return LakeEvent(
        tenant_id="acme-in",
        event_date=ts.date(),
        message_id="m-1",
        type="track",
        event="Order Completed",
        user_id="user-42",
        anonymous_id="anon-77",
        person_id="p_abc",
        session_id="s_def",
        timestamp=ts,
        original_timestamp=ts,
        sent_at=ts,
        received_at=ts + dt.timedelta(seconds=1),
        properties='{"order_id":"ord-1"}',
        is_bot=False,
        geo_latitude=18.5204,
        geo_longitude=73.8567,
        order_id="ord-1",
        currency="USD",
        revenue=Decimal("35.5000"),
        revenue_inr=Decimal("2950.4800"),
        fx_rate=83.11,
        fx_rate_date=dt.date(2026, 10, 14),
        plan_violations='["properties.x: y"]',
        pipeline_version="0.1.0",
    ).model_dump()


# --- Avro ----------------------------------------------------------------------------------------


def test_event_round_trips_through_fastavro():
    event = Event.model_validate(SDK_EVENT)
    datum = avro_datum(event)
    assert datum["type"] == "track" and json.loads(datum["properties"]) == SDK_EVENT["properties"]
    [back] = avro_round_trip(avro_schema(Event), [datum])
    assert back == datum
    assert from_avro(Event, back) == event
    assert back["timestamp"] == dt.datetime(2026, 10, 14, 14, 12, 11, 123456, tzinfo=UTC)
    assert back["context"]["page"]["url"] == "https://www.acme.in/thank-you"


def test_minimal_event_round_trips():
    event = Event.model_validate({"type": "page", "messageId": "m", "tenantId": "t", "anonymousId": "a"})
    [back] = avro_round_trip(avro_schema(Event), [avro_datum(event)])
    assert from_avro(Event, back) == event


def test_failed_event_round_trips_through_fastavro():
    failures = decode_record(b"\xff\xfe not utf-8", source_ref="file:x:3") + decode_record(b'{"messageId": "m", "a": ')
    assert [f.reason for f in failures] == [Reason.NOT_UTF8, Reason.MALFORMED_JSON]
    records = [avro_datum(f) for f in failures]
    back = avro_round_trip(avro_schema(FailedEvent), records)
    assert [FailedEvent.model_validate(r) for r in back] == failures
    assert back[0]["payload"] == b"\xff\xfe not utf-8" and back[0]["stage"] == Stage.DECODE.value


def test_lake_event_round_trips_through_fastavro():
    row = lake_row()
    [back] = avro_round_trip(avro_schema(LakeEvent), [avro_datum(LakeEvent.model_validate(row))])
    assert back == row


# --- Arrow ---------------------------------------------------------------------------------------


def test_lake_row_fits_the_arrow_schema():
    row = lake_row()
    table = pa.Table.from_pylist([row], schema=EVENTS_SCHEMA)
    assert table.schema.equals(EVENTS_SCHEMA, check_metadata=True)
    assert table.to_pylist() == [row]
    assert table.schema.metadata[b"schema_version"] == SCHEMA_VERSION.encode()
    file_row = {k: v for k, v in row.items() if k not in PARTITION_COLUMNS}
    assert pa.Table.from_pylist([file_row], schema=EVENTS_FILE_SCHEMA).to_pylist() == [file_row]


def test_arrow_rejects_a_row_that_breaks_the_contract():
    row = lake_row()
    row["revenue_inr"] = Decimal("1e20")  # beyond decimal(18, 4)
    with pytest.raises((pa.ArrowInvalid, ValueError)):
        pa.Table.from_pylist([row], schema=EVENTS_SCHEMA)


def test_event_fits_its_arrow_schema():
    event = Event.model_validate(SDK_EVENT)
    table = pa.Table.from_pylist([avro_datum(event)], schema=arrow_schema(Event))
    assert table.column("context").to_pylist()[0]["campaign"]["medium"] == "cpc"


# --- the forms name the same fields ----------------------------------------------------------------


@pytest.mark.parametrize("model", list(CONTRACTS.values()), ids=list(CONTRACTS))
def test_forms_name_the_same_fields(model):
    names = list(model.model_fields)
    assert [f["name"] for f in avro_schema(model)["fields"]] == names
    assert arrow_schema(model).names == names
    aliases = {info.alias or name for name, info in model.model_fields.items()}
    assert set(json_schema(model)["properties"]) == aliases


def test_nullability_agrees_between_avro_and_arrow():
    avro_fields = {f["name"]: f for f in avro_schema(LakeEvent)["fields"]}
    for field in EVENTS_SCHEMA:
        avro_nullable = isinstance(avro_fields[field.name]["type"], list)
        assert avro_nullable == field.nullable, field.name


# --- JSON Schema ---------------------------------------------------------------------------------


def test_json_schema_accepts_what_pydantic_accepts_and_rejects_missing_fields():
    schema = json_schema(Event)
    jsonschema.validate(SDK_EVENT, schema)
    for required in ("messageId", "tenantId", "type"):
        broken = {k: v for k, v in SDK_EVENT.items() if k != required}
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(broken, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**SDK_EVENT, "type": "trak"}, schema)


# --- the export command --------------------------------------------------------------------------


def test_export_writes_every_form(tmp_path, capsys):
    main([str(tmp_path)])
    printed = capsys.readouterr().out.split()
    for name in CONTRACTS:
        schema = json.loads((tmp_path / f"{name}.avsc").read_text())
        fastavro.parse_schema(schema)
        assert schema == avro_schema(CONTRACTS[name])
        assert json.loads((tmp_path / f"{name}.schema.json").read_text()) == json_schema(CONTRACTS[name])
        assert (tmp_path / f"{name}.arrow.txt").read_text().startswith(arrow_schema(CONTRACTS[name]).names[0] + ":")
    assert "tenant_id: string not null" in (tmp_path / "lake_event.arrow.txt").read_text()
    assert "tenant_id" not in (tmp_path / "lake_event_file.arrow.txt").read_text().split("\n")[0]
    assert json.loads((tmp_path / "tracking_plan.schema.json").read_text())["title"] == "TrackingPlan"
    assert (tmp_path / "VERSION").read_text().strip() == SCHEMA_VERSION
    assert sorted(printed) == sorted(str(p) for p in export(tmp_path))
