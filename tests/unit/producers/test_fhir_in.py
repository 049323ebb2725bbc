"""FHIR R4 Encounter / ServiceRequest (and Bundles) to encounter and referral events."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime
from typing import Any

import pytest
from cth_shared.contracts import parse_event
from cth_shared.producers.fhir_in import (
    CTH_SERVICE_CATEGORY_SYSTEM,
    FhirError,
    FhirEvent,
    FhirSettings,
    FhirTranslator,
    FhirUnmatched,
    iter_fhir_documents,
)
from cth_shared.producers.hl7_adt import MemberIndex
from producer_samples import member

MRN_SYSTEM = "http://hospital.example.org/fhir/mrn"
HOSPITAL_NPI = "1234567893"
ATTENDING_NPI = "1987654328"
PCP_NPI = "1555555550"
SNF_NPI = "1666666668"
V3 = "http://terminology.hl7.org/CodeSystem/v3-ActCode"


@pytest.fixture
def fhir_index() -> MemberIndex:
    return MemberIndex.from_members(
        [member("M000001", (MRN_SYSTEM, "MRN-77001")), member("M000002", (MRN_SYSTEM, "MRN-77002"))]
    )


@pytest.fixture
def fhir(fhir_index: MemberIndex) -> FhirTranslator:
    return FhirTranslator(fhir_index, FhirSettings(facility_timezone="America/Chicago"))


def patient(pid: str = "pat-1", mrn: str = "MRN-77001") -> dict[str, Any]:
    return {
        "resourceType": "Patient",
        "id": pid,
        "identifier": [
            {"system": "http://hl7.org/fhir/sid/us-ssn", "value": "999-12-3456"},
            {
                "system": MRN_SYSTEM,
                "value": mrn,
                "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MR"}]},
            },
        ],
        "name": [{"family": "Halvorson", "given": ["Elden"]}],
        "gender": "male",
        "birthDate": "1950-10-15",
    }


def organization() -> dict[str, Any]:
    return {
        "resourceType": "Organization",
        "id": "org-1",
        "identifier": [
            {"system": "http://hl7.org/fhir/sid/us-npi", "value": HOSPITAL_NPI},
            {"system": "urn:oid:2.16.840.1.113883.4.4", "value": "123456789"},
        ],
        "name": "Holy Family Hospital",
    }


def practitioner(pid: str, npi: str) -> dict[str, Any]:
    return {
        "resourceType": "Practitioner",
        "id": pid,
        "identifier": [{"system": "http://hl7.org/fhir/sid/us-npi", "value": npi}],
        "name": [{"family": "Jakubowski", "given": ["Janeth"]}],
    }


def condition(cid: str, code: str) -> dict[str, Any]:
    return {
        "resourceType": "Condition",
        "id": cid,
        "subject": {"reference": "urn:uuid:pat-1"},
        "code": {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10-cm", "code": code}]},
    }


def encounter(**overrides: Any) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "Encounter",
        "id": "enc-1",
        "meta": {"lastUpdated": "2026-03-04T17:00:00+00:00"},
        "identifier": [{"system": "http://hospital.example.org/visit", "value": "V2026-0001"}],
        "status": "finished",
        "class": {"system": V3, "code": "IMP"},
        "subject": {"reference": "urn:uuid:pat-1"},
        "participant": [
            {
                "type": [
                    {
                        "coding": [
                            {"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "code": "ATND"}
                        ]
                    }
                ],
                "individual": {"reference": "urn:uuid:prac-1"},
            }
        ],
        "period": {"start": "2026-03-01T21:22:15-06:00", "end": "2026-03-04T10:05:00-06:00"},
        "diagnosis": [
            {"condition": {"reference": "urn:uuid:cond-2"}, "rank": 2},
            {"condition": {"reference": "urn:uuid:cond-1"}, "rank": 1},
        ],
        "hospitalization": {
            "dischargeDisposition": {
                "coding": [{"system": "http://terminology.hl7.org/CodeSystem/nubc-UB92", "code": "3"}],
                "text": "Discharged to SNF",
            },
            "destination": {"identifier": {"system": "http://hl7.org/fhir/sid/us-npi", "value": SNF_NPI}},
        },
        "serviceProvider": {"reference": "urn:uuid:org-1", "display": "Holy Family Hospital"},
    }
    resource.update(overrides)
    return resource


def bundle(*resources: dict[str, Any], kind: str = "transaction") -> dict[str, Any]:
    entries = []
    for r in resources:
        entry: dict[str, Any] = {"fullUrl": f"urn:uuid:{r['id']}", "resource": r}
        if kind == "transaction":
            entry["request"] = {"method": "POST", "url": r["resourceType"]}
        entries.append(entry)
    return {"resourceType": "Bundle", "id": "b-1", "type": kind, "entry": entries}


def supporting() -> list[dict[str, Any]]:
    return [
        patient(),
        organization(),
        practitioner("prac-1", ATTENDING_NPI),
        condition("cond-1", "I50.9"),
        condition("cond-2", "E11.9"),
    ]


def only_event(results: list[Any]) -> FhirEvent:
    assert len(results) == 1
    assert isinstance(results[0], FhirEvent), results[0]
    return results[0]


def test_davinci_style_discharge_message_bundle(fhir):
    header = {
        "resourceType": "MessageHeader",
        "id": "mh-1",
        "eventCoding": {"code": "notification-discharge"},
        "source": {"endpoint": "http://example.org"},
        "focus": [{"reference": "urn:uuid:enc-1"}],
    }
    result = only_event(fhir.translate(bundle(header, encounter(), *supporting(), kind="message")))
    event = result.event
    assert event.type == "encounter.discharged" and event.subject == "M000001"
    data = event.data
    assert data.trigger == "FHIR" and data.patient_class == "inpatient"
    assert data.encounter_id == f"{HOSPITAL_NPI}-V2026-0001"
    assert data.facility.npi == HOSPITAL_NPI and data.facility.tin == "123456789"
    assert data.facility.name == "Holy Family Hospital"
    assert data.disposition == "03"  # nubc-UB92 "3" gets its leading zero
    assert data.discharged_to_npi == SNF_NPI and data.attending_npi == ATTENDING_NPI
    assert data.admitted_at == datetime(2026, 3, 2, 3, 22, 15, tzinfo=UTC)
    assert data.discharged_at == datetime(2026, 3, 4, 16, 5, tzinfo=UTC)
    assert [(d.code, d.primary) for d in data.diagnoses] == [("I50.9", True), ("E11.9", False)]
    # the SSN is never carried; the MRN is
    assert [(i.system, i.value) for i in data.patient_identifiers] == [(MRN_SYSTEM, "MRN-77001")]
    assert parse_event(event.to_json_bytes()).id == event.id


@pytest.mark.parametrize(
    ("klass", "status", "expected_type", "expected_class"),
    [
        ("IMP", "in-progress", "encounter.admitted", "inpatient"),
        ("EMER", "arrived", "encounter.admitted", "emergency"),
        ("OBSENC", "in-progress", "encounter.admitted", "observation"),
        ("AMB", "finished", "encounter.discharged", "outpatient"),
        ("EMER", "entered-in-error", "encounter.cancelled", "emergency"),
    ],
)
def test_class_codes_and_statuses(fhir, klass, status, expected_type, expected_class):
    resource = encounter(status=status, **{"class": {"system": V3, "code": klass}})
    if status != "finished":
        resource["period"] = {"start": "2026-03-01T21:22:15-06:00"}
    event = only_event(fhir.translate(bundle(resource, *supporting()))).event
    assert event.type == expected_type
    assert event.data.patient_class == expected_class
    if expected_type == "encounter.cancelled":
        assert event.data.cancels == "admit"
        assert event.data.cancelled_at == datetime(2026, 3, 4, 17, tzinfo=UTC)


def test_hl7_discharge_disposition_codes_map_to_nubc(fhir):
    resource = encounter(
        hospitalization={
            "dischargeDisposition": {
                "coding": [{"system": "http://terminology.hl7.org/CodeSystem/discharge-disposition", "code": "home"}]
            }
        }
    )
    assert only_event(fhir.translate(bundle(resource, *supporting()))).event.data.disposition == "01"


def test_standalone_encounter_with_contained_patient_and_identifier_references(fhir):
    resource = encounter(
        contained=[patient("p")],
        subject={"reference": "#p"},
        serviceProvider={
            "identifier": {"system": "http://hl7.org/fhir/sid/us-npi", "value": HOSPITAL_NPI},
            "display": "Holy Family Hospital",
        },
        participant=[],
        diagnosis=[],
        reasonCode=[{"coding": [{"system": "http://hl7.org/fhir/sid/icd-10-cm", "code": "J18.9"}]}],
    )
    result = fhir.translate_resource(json.dumps(resource).encode())
    assert isinstance(result, FhirEvent)
    assert result.event.subject == "M000001"
    assert [d.code for d in result.event.data.diagnoses] == ["J18.9"]
    assert result.event.data.attending_npi is None


def test_coverage_subscriber_id_identifies_the_member(fhir):
    stranger = patient(mrn="UNKNOWN-1")
    coverage = {
        "resourceType": "Coverage",
        "id": "cov-1",
        "status": "active",
        "beneficiary": {"reference": "urn:uuid:pat-1"},
        "subscriberId": "M000002",
        "payor": [{"display": "Demo Health Plan"}],
    }
    others = [r for r in supporting() if r["resourceType"] != "Patient"]
    event = only_event(fhir.translate(bundle(encounter(), stranger, coverage, *others))).event
    assert event.subject == "M000002"


def test_unmatched_patient_is_reported_not_dropped(fhir):
    others = [r for r in supporting() if r["resourceType"] != "Patient"]
    results = fhir.translate(bundle(encounter(), patient(mrn="NOT-ON-ROSTER"), *others))
    assert len(results) == 1 and isinstance(results[0], FhirUnmatched)
    assert results[0].reason == "no_matching_member"
    assert results[0].identifier_systems == (MRN_SYSTEM,)
    assert "NOT-ON-ROSTER" not in str(results[0])


def test_resending_the_same_resource_gives_the_same_event_id(fhir):
    doc = bundle(encounter(), *supporting())
    assert only_event(fhir.translate(doc)).event.id == only_event(fhir.translate(copy.deepcopy(doc))).event.id


def service_request(**overrides: Any) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "ServiceRequest",
        "id": "sr-1",
        "identifier": [{"system": "http://clinic.example.org/referrals", "value": "R-55012"}],
        "status": "active",
        "intent": "order",
        "priority": "urgent",
        "category": [{"coding": [{"system": "http://snomed.info/sct", "code": "3457005", "display": "Referral"}]}],
        "code": {"text": "Referral to cardiology"},
        "performerType": {"coding": [{"system": "http://nucc.org/provider-taxonomy", "code": "207RC0000X"}]},
        "subject": {"reference": "urn:uuid:pat-1"},
        "encounter": {"reference": "urn:uuid:enc-1"},
        "authoredOn": "2026-03-04T09:30:00-06:00",
        "requester": {"reference": "urn:uuid:role-1"},
        "reasonCode": [{"coding": [{"system": "http://hl7.org/fhir/sid/icd-10-cm", "code": "I50.9"}]}],
    }
    resource.update(overrides)
    return resource


def requester_role() -> list[dict[str, Any]]:
    role = {
        "resourceType": "PractitionerRole",
        "id": "role-1",
        "practitioner": {"reference": "urn:uuid:prac-pcp"},
        "organization": {"reference": "urn:uuid:org-clinic"},
    }
    clinic = {
        "resourceType": "Organization",
        "id": "org-clinic",
        "name": "Lakeside Primary Care",
        "identifier": [{"system": "urn:oid:2.16.840.1.113883.4.4", "value": "987654321"}],
    }
    return [role, practitioner("prac-pcp", PCP_NPI), clinic]


def test_transaction_bundle_with_encounter_and_referral(fhir):
    doc = bundle(encounter(), service_request(), *supporting(), *requester_role())
    results = fhir.translate(doc)
    assert [type(r) for r in results] == [FhirEvent, FhirEvent]
    referral = results[1].event
    assert referral.type == "referral.requested" and referral.subject == "M000001"
    data = referral.data
    assert data.referral_id == "SR-R-55012"
    assert data.service_category == "cardiology" and data.specialty_taxonomy == "207RC0000X"
    assert data.urgency == "urgent" and data.ordering_npi == PCP_NPI and data.ordering_tin == "987654321"
    assert data.requested_at == datetime(2026, 3, 4, 15, 30, tzinfo=UTC)
    assert data.reason_codes == ["I50.9"]
    assert data.encounter_id == results[0].event.data.encounter_id


def test_referral_service_category_from_the_cth_system_or_a_configured_code(fhir_index):
    translator = FhirTranslator(
        fhir_index, FhirSettings(service_categories={("http://snomed.info/sct", "306206005"): "home_health"})
    )
    snomed = service_request(
        performerType=None, code={"coding": [{"system": "http://snomed.info/sct", "code": "306206005"}]}
    )
    cth = service_request(performerType={"coding": [{"system": CTH_SERVICE_CATEGORY_SYSTEM, "code": "snf"}]})
    for resource, expected in ((snomed, "home_health"), (cth, "snf")):
        results = translator.translate(bundle(resource, patient(), *requester_role()))
        assert only_event(results).event.data.service_category == expected


def test_bad_entries_fail_alone_with_clear_reasons(fhir):
    bad_date = encounter(id="enc-bad", period={"start": "yesterday"})
    planned = encounter(id="enc-planned", status="planned")
    no_disposition = encounter(id="enc-nodisp", hospitalization=None)
    doc = bundle(encounter(), bad_date, planned, no_disposition, *supporting())
    results = fhir.translate(doc)
    assert isinstance(results[0], FhirEvent)
    errors = results[1:]
    assert all(isinstance(e, FhirError) for e in errors)
    assert [e.reason for e in errors] == ["invalid_resource", "unsupported_status", "missing_field"]
    assert "period.start" in errors[0].detail and "yesterday" not in str(errors[0])
    assert errors[0].location == "entry[1] Encounter/enc-bad"
    assert "dischargeDisposition" in errors[2].detail


@pytest.mark.parametrize(
    ("document", "reason"),
    [
        (b"{not json", "not_json"),
        (b"[1, 2]", "not_fhir"),
        (json.dumps({"resourceType": "Patient", "id": "x"}).encode(), "unsupported_resource"),
        (json.dumps({"resourceType": "Bundle", "type": "transaction", "entry": []}).encode(), "unsupported_resource"),
    ],
)
def test_unusable_documents_raise_typed_errors(fhir, document, reason):
    with pytest.raises(FhirError) as caught:
        fhir.translate(document)
    assert caught.value.reason == reason


@pytest.mark.parametrize(
    ("change", "reason", "needle"),
    [
        ({"subject": {"reference": "Patient/elsewhere"}}, "unresolved_reference", "subject"),
        ({"class": {"system": V3, "code": "XYZ"}}, "invalid_field", "Encounter.class"),
        ({"serviceProvider": {"display": "Somewhere"}}, "unknown_facility", "serviceProvider"),
        (
            {"serviceProvider": {"identifier": {"system": "http://hl7.org/fhir/sid/us-npi", "value": "1234567890"}}},
            "invalid_field",
            "check digit",
        ),
        ({"period": {"start": "2026-03-01T10:00:00Z"}}, "missing_field", "period.end"),
    ],
)
def test_invalid_encounters_give_clear_errors(fhir, change, reason, needle):
    [result] = fhir.translate(bundle(encounter(**change), *supporting()))
    assert isinstance(result, FhirError)
    assert result.reason == reason and needle in result.detail


def test_referral_without_requester_npi_or_category_is_rejected(fhir):
    [missing_requester] = fhir.translate(bundle(service_request(requester=None), patient()))
    assert isinstance(missing_requester, FhirError) and "requester" in missing_requester.detail
    uncategorised = service_request(performerType=None)
    [no_category] = fhir.translate(bundle(uncategorised, patient(), *requester_role()))
    assert isinstance(no_category, FhirError) and no_category.reason == "missing_field"
    [draft] = fhir.translate(bundle(service_request(status="draft"), patient(), *requester_role()))
    assert isinstance(draft, FhirError) and draft.reason == "unsupported_status"


def test_fhir_ndjson_documents_carry_line_numbers(tmp_path):
    path = tmp_path / "encounters.ndjson"
    path.write_text(json.dumps(encounter()) + "\n\n" + json.dumps(service_request()) + "\n")
    assert [line for line, _ in iter_fhir_documents(path)] == [1, 3]
    single = tmp_path / "bundle.json"
    single.write_text(json.dumps(bundle(encounter(), *supporting()), indent=2))
    assert [line for line, _ in iter_fhir_documents(single)] == [1]
