"""Every registered event type has a valid example that survives the wire round trip."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from cth_shared.contracts import (
    CloudEvent,
    EventData,
    all_topic_specs,
    new_event,
    parse_event,
    registered_types,
    type_of,
)
from cth_shared.contracts.events import EXAMPLES

from ._support import envelope, example, wire

TYPES = sorted(registered_types())
WHEN = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def wrap(name: str) -> CloudEvent[EventData]:
    entry = registered_types()[name]
    data = entry.model.model_validate(example(name))
    return new_event(
        data,
        subject="M000001",
        source="urn:cth:test",
        tenant="payer-a",
        time=WHEN,
        event_id=f"evt-{name}",
        correlation_id="corr-1",
        causation_id="cause-1",
    )


def test_the_catalog_registers_the_design_event_types() -> None:
    assert len(TYPES) == 24
    assert {name.split(".")[0] for name in TYPES} == {
        "member", "encounter", "virtual_visit", "claim", "referral", "provider",
        "attribution", "care_gap", "notification",
    }


def test_every_registered_type_has_an_example() -> None:
    assert set(EXAMPLES) == set(TYPES)


@pytest.mark.parametrize("name", TYPES)
def test_the_example_validates_against_its_model(name: str) -> None:
    entry = registered_types()[name]
    data = entry.model.model_validate(example(name))
    assert type_of(type(data)) is entry


@pytest.mark.parametrize("name", TYPES)
def test_the_wrapped_example_round_trips_through_the_wire_form(name: str) -> None:
    event = wrap(name)
    parsed = parse_event(event.to_json_bytes())
    assert parsed == event
    assert parsed.data == event.data
    assert type(parsed.data) is registered_types()[name].model


@pytest.mark.parametrize("name", TYPES)
def test_the_envelope_carries_type_schema_version_and_extensions(name: str) -> None:
    entry = registered_types()[name]
    event = wrap(name)
    assert event.specversion == "1.0"
    assert event.type == name
    assert event.dataschema == entry.dataschema == f"urn:cth:event:{name}:v{entry.version}"
    assert event.version == entry.version >= 1
    assert event.time == WHEN
    document = json.loads(event.to_json_bytes())
    for attribute in ("id", "type", "source", "subject", "time", "specversion", "dataschema",
                      "tenant", "correlationid", "causationid", "data"):
        assert attribute in document


@pytest.mark.parametrize("name", TYPES)
def test_a_hand_written_envelope_of_the_example_parses(name: str) -> None:
    event = parse_event(wire(envelope(name, example(name))))
    assert event.type == name
    assert event.tenant == "payer-a"
    assert event.correlationid is None


@pytest.mark.parametrize("name", TYPES)
def test_the_wire_form_is_accepted_as_text_as_well_as_bytes(name: str) -> None:
    event = wrap(name)
    assert parse_event(event.to_json_bytes().decode()) == event


@pytest.mark.parametrize("name", TYPES)
def test_every_type_publishes_to_a_catalog_topic(name: str) -> None:
    topics = {spec.name for spec in all_topic_specs()}
    assert registered_types()[name].topic in topics


def test_every_non_dlq_catalog_topic_carries_at_least_one_event_type() -> None:
    used = {entry.topic for entry in registered_types().values()}
    catalog = {spec.name for spec in all_topic_specs() if not spec.name.endswith(".dlq")}
    assert catalog == used


def test_member_keyed_topics_are_co_partitioned() -> None:
    specs = all_topic_specs()
    assert len({spec.partitions for spec in specs}) == 1
    directory = next(spec for spec in specs if spec.name == "provider-directory")
    assert directory.key == "npi"
    assert directory.configs.get("cleanup.policy") == "compact"


def test_a_topic_prefix_applies_to_every_topic_including_dlqs() -> None:
    plain = [spec.name for spec in all_topic_specs()]
    prefixed = [spec.name for spec in all_topic_specs("t1.")]
    assert prefixed == [f"t1.{name}" for name in plain]
    assert {"attribution.dlq", "referrals.dlq", "care-gaps.dlq", "notifications.dlq"} <= set(plain)


def test_events_are_immutable() -> None:
    event = wrap("member.enrolled")
    with pytest.raises(ValueError, match="frozen"):
        event.data.member_id = "M2"  # type: ignore[misc]
