"""Minimum-necessary content per role and the Da Vinci notification Bundles."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from fhir.resources.R4B.bundle import Bundle
from notifications.domain.content import content_for
from notifications.domain.fhir_message import EVENT_SYSTEM, build_notification_bundle

REFERENCE = Path("/work/shared/reference/davinci-alerts")
if not REFERENCE.exists():  # the reference folder sits beside the repository
    REFERENCE = Path(__file__).resolve().parents[4] / "shared" / "reference" / "davinci-alerts"

FACTS: dict[str, Any] = {
    "member_id": "M000001", "kind": "discharge", "priority": "high", "event_time": "2026-03-06T19:30:00+00:00",
    "encounter_id": "SEG-V0001", "facility_name": "St. Example General Hospital", "facility_npi": "1245319599",
    "patient_class": "inpatient", "admitted_at": "2026-03-02T13:15:00+00:00",
    "discharged_at": "2026-03-06T19:30:00+00:00", "disposition": "06", "attending_npi": "1234567893",
    "diagnoses": [{"code": "I50.9", "primary": True}, {"code": "E11.9", "primary": False}],
}


def test_clinicians_see_diagnoses_and_care_managers_and_organizations_do_not() -> None:
    assert "diagnoses" in content_for("pcp", FACTS)
    care_manager = content_for("care_manager", FACTS)
    assert "diagnoses" not in care_manager
    assert {"member_id", "facility_name", "kind", "admitted_at", "discharged_at", "disposition"} <= set(care_manager)
    organization = content_for("organization", FACTS)
    assert not {"diagnoses", "disposition", "attending_npi"} & set(organization)
    assert organization["facility_name"] == "St. Example General Hospital"


def bundle_for(kind: str, role: str, retraction: bool = False) -> dict[str, Any]:
    return build_notification_bundle(
        notification_id="N-1", kind=kind, retraction=retraction, created_at="2026-03-06T19:30:02+00:00",
        content=content_for(role, FACTS), destination_endpoint="https://ehr.example/fhir/$process-message",
        destination_name="EHR",
    )


def resource_types(bundle: dict[str, Any]) -> list[str]:
    return [entry["resource"]["resourceType"] for entry in bundle["entry"]]


def in_reference_order(ours: list[str], reference: list[str]) -> bool:
    """Our resource types appear in the same relative order as in the reference bundle."""
    positions = [reference.index(t) for t in dict.fromkeys(ours)]
    return positions == sorted(positions)


@pytest.mark.parametrize(("kind", "reference_file", "event_code"), [
    ("admit", "admit-notification-message-bundle-01.json", "notification-admit"),
    ("discharge", "discharge-notification-message-bundle-01.json", "notification-discharge"),
    ("transfer", "transfer-notification-message-bundle-01.json", "notification-transfer"),
])
def test_generated_bundles_parse_and_are_shaped_like_the_da_vinci_examples(
    kind: str, reference_file: str, event_code: str
) -> None:
    reference = json.loads((REFERENCE / reference_file).read_text())
    ours = bundle_for(kind, "pcp")
    parsed = Bundle.model_validate(ours)  # the FHIR library accepts it
    assert parsed.type == reference["type"] == "message"
    assert resource_types(ours)[:3] == resource_types(reference)[:3] == ["MessageHeader", "Encounter", "Patient"]
    assert in_reference_order(resource_types(ours), resource_types(reference))
    header, reference_header = ours["entry"][0]["resource"], reference["entry"][0]["resource"]
    assert header["eventCoding"]["system"] == reference_header["eventCoding"]["system"] == EVENT_SYSTEM
    assert header["eventCoding"]["code"] == reference_header["eventCoding"]["code"] == event_code
    # MessageHeader.focus -> the Encounter entry, as in the examples
    assert header["focus"][0]["reference"] == ours["entry"][1]["fullUrl"]
    assert reference_header["focus"][0]["reference"] == reference["entry"][1]["fullUrl"]
    assert ours["entry"][2]["resource"]["identifier"][0]["value"] == "M000001"


def test_the_bundle_of_a_care_manager_carries_no_conditions_and_a_clinicians_does() -> None:
    assert "Condition" not in resource_types(bundle_for("discharge", "care_manager"))
    assert resource_types(bundle_for("discharge", "pcp")).count("Condition") == 2


def test_a_retraction_bundle_marks_the_encounter_entered_in_error() -> None:
    bundle = bundle_for("admit", "pcp", retraction=True)
    assert bundle["entry"][1]["resource"]["status"] == "entered-in-error"


def test_ed_visits_render_as_admit_notifications_of_an_emergency_encounter() -> None:
    facts = dict(FACTS, patient_class="emergency")
    bundle = build_notification_bundle(notification_id="N-2", kind="ed_visit", retraction=False,
                                       created_at="2026-03-06T19:30:02+00:00", content=content_for("pcp", facts),
                                       destination_endpoint="urn:x", destination_name="x")
    assert bundle["entry"][0]["resource"]["eventCoding"]["code"] == "notification-admit"
    assert bundle["entry"][1]["resource"]["class"]["code"] == "EMER"


def test_gap_alerts_have_no_da_vinci_form() -> None:
    with pytest.raises(ValueError, match="no Da Vinci"):
        build_notification_bundle(notification_id="N-3", kind="gap_opened", retraction=False, created_at="x",
                                  content={}, destination_endpoint="urn:x", destination_name="x")
