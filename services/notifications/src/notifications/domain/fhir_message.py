"""Da Vinci Unsolicited Notifications (HL7 Da Vinci Alerts IG, FHIR R4) message Bundles.

The shape follows the IG's example bundles (../shared/reference/davinci-alerts): a
``Bundle`` of type ``message`` whose first entry is a ``MessageHeader`` with an
``eventCoding`` from the notification-event CodeSystem and ``focus`` pointing at the
``Encounter``; then Encounter, Patient, Location, Practitioner (attending), Organization
(the facility) and Conditions (only for roles allowed diagnoses, see ``content.py``).

Resources are validated with ``fhir.resources.R4B`` (the R4B models of fhir.resources 8;
R4B is wire-identical to R4 for every resource used here).
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

from fhir.resources.R4B.bundle import Bundle

EVENT_SYSTEM = "http://hl7.org/fhir/us/davinci-alerts/CodeSystem/notification-event"
NPI_SYSTEM = "http://hl7.org/fhir/sid/us-npi"
ICD10_SYSTEM = "http://hl7.org/fhir/sid/icd-10-cm"
MEMBER_ID_SYSTEM = "urn:cth:member-id"
NOTIFICATION_ID_SYSTEM = "urn:cth:notification-id"
_PROFILE = "http://hl7.org/fhir/us/davinci-alerts/StructureDefinition/"

#: Alert kind -> (event code, display, kind-specific MessageHeader profile) from CodeSystem-notification-event.
EVENT_CODING: dict[str, tuple[str, str, str | None]] = {
    "admit": ("notification-admit", "Admit Notification", "admit-notification-messageheader"),
    "ed_visit": ("notification-admit", "Admit Notification", "admit-notification-messageheader"),
    "readmission": ("notification-admit", "Admit Notification", "admit-notification-messageheader"),
    "transfer": ("notification-transfer", "Transfer Notification", "transfer-notification-messageheader"),
    "discharge": ("notification-discharge", "Discharge Notification", "discharge-notification-messageheader"),
    "referral_routed": ("notification-referral", "Referral Notification", None),
    "leakage": ("notification-referral", "Referral Notification", None),
}
#: HL7 v2 PV1-2 patient class -> v3 ActCode encounter class.
ENCOUNTER_CLASS: dict[str, tuple[str, str]] = {
    "inpatient": ("IMP", "inpatient encounter"),
    "observation": ("OBSENC", "observation encounter"),
    "emergency": ("EMER", "emergency"),
    "outpatient": ("AMB", "ambulatory"),
}


def renders_as_fhir(kind: str) -> bool:
    """Only encounter alerts have a Da Vinci Unsolicited Notification form."""
    return kind in ("admit", "ed_visit", "readmission", "transfer", "discharge")


def _urn(notification_id: str, part: str) -> str:
    return f"urn:uuid:{uuid.uuid5(uuid.NAMESPACE_URL, f'cth:{notification_id}:{part}')}"


def _ref(full_url: str, display: str | None = None) -> dict[str, str]:
    return {"reference": full_url, **({"display": display} if display else {})}


def build_notification_bundle(
    *,
    notification_id: str,
    kind: str,
    retraction: bool,
    created_at: str,
    content: Mapping[str, Any],
    destination_endpoint: str,
    destination_name: str,
) -> dict[str, Any]:
    """The Bundle (as JSON-ready dict) for one alert; raises ValueError for non-encounter kinds.

    ``content`` is the role-limited fact dict from :func:`content.content_for`: what the
    recipient may not see is simply absent, so it is absent from the Bundle too.
    """
    if not renders_as_fhir(kind):
        raise ValueError(f"{kind} alerts have no Da Vinci notification form")
    code, display, header_profile = EVENT_CODING[kind]
    urls = {name: _urn(notification_id, name) for name in
            ("header", "encounter", "patient", "location", "practitioner", "organization")}
    facility_name = content.get("facility_name") or "Unknown facility"
    entries: list[tuple[str, dict[str, Any]]] = []

    header: dict[str, Any] = {
        "resourceType": "MessageHeader",
        "id": urls["header"].removeprefix("urn:uuid:"),
        "meta": {"profile": [_PROFILE + "notifications-messageheader"]
                 + ([_PROFILE + header_profile] if header_profile else [])},
        "eventCoding": {"system": EVENT_SYSTEM, "code": code, "display": display},
        "destination": [{"endpoint": destination_endpoint, "name": destination_name}],
        "sender": _ref(urls["organization"], facility_name),
        "source": {"name": "Care Transitions Hub notifications", "software": "cth-notifications",
                   "endpoint": "urn:cth:notifications"},
        "responsible": _ref(urls["organization"], facility_name),
        "focus": [_ref(urls["encounter"], display)],
    }
    entries.append((urls["header"], header))

    patient_class = content.get("patient_class", "inpatient")
    class_code, class_display = ENCOUNTER_CLASS.get(patient_class, ENCOUNTER_CLASS["inpatient"])
    if retraction:
        status = "entered-in-error"
    elif kind == "discharge":
        status = "finished"
    else:
        status = "in-progress"
    encounter: dict[str, Any] = {
        "resourceType": "Encounter",
        "id": urls["encounter"].removeprefix("urn:uuid:"),
        "meta": {"profile": [_PROFILE + "adt-notification-encounter"]},
        "status": status,
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": class_code,
                  "display": class_display},
        "subject": _ref(urls["patient"]),
        "serviceProvider": _ref(urls["organization"], facility_name),
        "location": [{"location": _ref(urls["location"], content.get("to_unit") or facility_name)}],
    }
    if content.get("encounter_id"):
        encounter["identifier"] = [{"system": "urn:cth:encounter-id", "value": content["encounter_id"]}]
    period = {k: v for k, v in (("start", content.get("admitted_at")), ("end", content.get("discharged_at"))) if v}
    if period:
        encounter["period"] = period
    if content.get("attending_npi"):
        encounter["participant"] = [{"individual": _ref(urls["practitioner"])}]
    if content.get("disposition"):
        encounter["hospitalization"] = {"dischargeDisposition": {"coding": [{
            "system": "http://terminology.hl7.org/CodeSystem/nubc-UB92", "code": content["disposition"]}]}}
    entries.append((urls["encounter"], encounter))

    entries.append((urls["patient"], {
        "resourceType": "Patient",
        "id": urls["patient"].removeprefix("urn:uuid:"),
        "identifier": [{"system": MEMBER_ID_SYSTEM, "value": content["member_id"]}],
    }))
    entries.append((urls["location"], {
        "resourceType": "Location",
        "id": urls["location"].removeprefix("urn:uuid:"),
        "name": content.get("to_unit") or facility_name,
        "managingOrganization": _ref(urls["organization"], facility_name),
    }))
    if content.get("attending_npi"):
        entries.append((urls["practitioner"], {
            "resourceType": "Practitioner",
            "id": urls["practitioner"].removeprefix("urn:uuid:"),
            "identifier": [{"system": NPI_SYSTEM, "value": content["attending_npi"]}],
        }))
    organization: dict[str, Any] = {
        "resourceType": "Organization",
        "id": urls["organization"].removeprefix("urn:uuid:"),
        "name": facility_name,
    }
    if content.get("facility_npi"):
        organization["identifier"] = [{"system": NPI_SYSTEM, "value": content["facility_npi"]}]
    entries.append((urls["organization"], organization))
    for index, diagnosis in enumerate(content.get("diagnoses") or ()):
        condition_url = _urn(notification_id, f"condition-{index}")
        entries.append((condition_url, {
            "resourceType": "Condition",
            "id": condition_url.removeprefix("urn:uuid:"),
            "meta": {"profile": [_PROFILE + "adt-notification-condition"]},
            "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-category",
                                      "code": "encounter-diagnosis"}]}],
            "code": {"coding": [{"system": ICD10_SYSTEM, "code": diagnosis["code"]}]},
            "subject": _ref(urls["patient"]),
            "encounter": _ref(urls["encounter"]),
        }))

    bundle = {
        "resourceType": "Bundle",
        "id": _urn(notification_id, "bundle").removeprefix("urn:uuid:"),
        "meta": {"profile": [_PROFILE + "notifications-bundle"]},
        "identifier": {"system": NOTIFICATION_ID_SYSTEM, "value": notification_id},
        "type": "message",
        "timestamp": created_at,
        "entry": [{"fullUrl": url, "resource": resource} for url, resource in entries],
    }
    # Fails loudly (pydantic ValidationError) if we ever build something FHIR R4 rejects.
    Bundle.model_validate(bundle)
    return bundle
