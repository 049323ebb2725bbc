"""A member's DEQM-shaped gaps-in-care report (Da Vinci DEQM "Gaps in Care" Bundle).

Shape (DEQM IG, Gaps in Care): a ``document`` Bundle whose first entry is a Composition
(LOINC 96315-7 "Gaps in care report") with one section per measure; each section's
``focus`` is the member's individual MeasureReport for that measure and its entries are
DetectedIssue resources (code ``CAREGAP``), one per gap, carrying the DEQM ``gapStatus``
modifier extension (``open-gap`` / ``closed-gap``) and the gap's window as
``identifiedPeriod``. The MeasureReport counts, for the period, qualifying discharges
(initial population = denominator) and gaps closed (numerator).

Approximations: HEDIS measures publish no FHIR canonicals, so measures are named
``urn:cth:measure:<measure>`` with the rule version; the Patient resource carries only
the member id (no demographics: minimum necessary); not-applicable gaps and the 30-day
readmission watch (a watch, not a care gap) are left out. Built with ``fhir.resources``
(R4B, wire-compatible with R4 for these elements) so the output is validated.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date, datetime
from typing import Any

from fhir.resources.R4B.bundle import Bundle

from .domain.measures import MeasureConfig

GAP_STATUS_EXTENSION = "http://hl7.org/fhir/us/davinci-deqm/StructureDefinition/extension-gapStatus"
GAP_STATUS_SYSTEM = "http://hl7.org/fhir/us/davinci-deqm/CodeSystem/gaps-status"
MEMBER_ID_SYSTEM = "urn:cth:member-id"

MEASURE_TITLES = {
    "trc_patient_engagement": "Transitions of Care: Patient Engagement After Inpatient Discharge (HEDIS TRC)",
    "trc_medication_reconciliation": "Transitions of Care: Medication Reconciliation Post-Discharge (HEDIS TRC)",
    "tcm_interactive_contact": "Transitional Care Management: Interactive Contact in 2 Business Days (CMS TCM)",
    "tcm_face_to_face": "Transitional Care Management: Face-to-Face Visit (CMS TCM)",
    "fuh_7_day": "Follow-Up After Hospitalization for Mental Illness, 7 Days (HEDIS FUH)",
    "fuh_30_day": "Follow-Up After Hospitalization for Mental Illness, 30 Days (HEDIS FUH)",
    "ed_follow_up_7_day": "Follow-Up After ED Visit for High-Risk Members, 7 Days (HEDIS FMC)",
}


def _measure_url(measure: str) -> str:
    return f"urn:cth:measure:{measure}"


def gaps_report(member_id: str, organization_id: str, gaps: Sequence[Any], start: date, end: date,
                config: MeasureConfig, generated_at: datetime) -> dict[str, Any]:
    """The report Bundle as a JSON-ready dict (validated by ``fhir.resources``)."""
    in_scope = [g for g in gaps if g["measure"] in MEASURE_TITLES and g["status"] != "not_applicable"
                and start <= g["discharged_at"].date() <= end]
    patient_ref = f"Patient/{member_id}"
    org_ref = f"Organization/{organization_id}"
    entries: list[dict[str, Any]] = [
        {"fullUrl": f"urn:cth:{patient_ref}", "resource": {
            "resourceType": "Patient", "id": member_id,
            "identifier": [{"system": MEMBER_ID_SYSTEM, "value": member_id}]}},
        {"fullUrl": f"urn:cth:{org_ref}", "resource": {
            "resourceType": "Organization", "id": organization_id,
            "identifier": [{"system": "urn:oid:2.16.840.1.113883.4.4", "value": organization_id}]}},
    ]
    sections: list[dict[str, Any]] = []
    for measure in sorted({g["measure"] for g in in_scope}):
        measure_gaps = sorted((g for g in in_scope if g["measure"] == measure), key=lambda g: g["gap_id"])
        closed = sum(1 for g in measure_gaps if g["status"] == "closed")
        report_id = f"mr-{member_id}-{measure}".replace("_", "-")[:64]
        entries.append({"fullUrl": f"urn:cth:MeasureReport/{report_id}", "resource": {
            "resourceType": "MeasureReport", "id": report_id, "status": "complete", "type": "individual",
            "measure": f"{_measure_url(measure)}|{config.version}", "subject": {"reference": patient_ref},
            "date": generated_at.isoformat(), "reporter": {"reference": org_ref},
            "period": {"start": start.isoformat(), "end": end.isoformat()},
            "improvementNotation": {"coding": [{
                "system": "http://terminology.hl7.org/CodeSystem/measure-improvement-notation",
                "code": "increase"}]},
            "group": [{
                "population": [
                    {"code": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/measure-population",
                                          "code": code}]}, "count": count}
                    for code, count in (("initial-population", len(measure_gaps)),
                                        ("denominator", len(measure_gaps)), ("numerator", closed))
                ],
                "measureScore": {"value": round(closed / len(measure_gaps), 4)},
            }],
        }})
        issue_refs = []
        for gap in measure_gaps:
            issue_id = gap["gap_id"].lower()
            gap_status = "closed-gap" if gap["status"] == "closed" else "open-gap"
            issue: dict[str, Any] = {
                "resourceType": "DetectedIssue", "id": issue_id,
                "modifierExtension": [{"url": GAP_STATUS_EXTENSION, "valueCodeableConcept": {
                    "coding": [{"system": GAP_STATUS_SYSTEM, "code": gap_status}]}}],
                "identifier": [{"system": "urn:cth:gap-id", "value": gap["gap_id"]}],
                "status": "final",
                "code": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
                                     "code": "CAREGAP", "display": "Care Gaps"}]},
                "patient": {"reference": patient_ref},
                "identifiedPeriod": {"start": gap["window_start"].isoformat(), "end": gap["due_date"].isoformat()},
                "evidence": [{"detail": [{"reference": f"MeasureReport/{report_id}"}]}],
                "detail": f"{gap['measure']} {gap['status']} (encounter {gap['encounter_id']})",
            }
            if gap["closing_rule"]:
                issue["mitigation"] = [{"action": {"text": gap["closing_rule"]},
                                        "date": gap["closed_at"].isoformat() if gap["closed_at"] else None}]
                if issue["mitigation"][0]["date"] is None:
                    del issue["mitigation"][0]["date"]
            entries.append({"fullUrl": f"urn:cth:DetectedIssue/{issue_id}", "resource": issue})
            issue_refs.append({"reference": f"DetectedIssue/{issue_id}"})
        sections.append({"title": MEASURE_TITLES[measure], "focus": {"reference": f"MeasureReport/{report_id}"},
                         "entry": issue_refs})
    composition: dict[str, Any] = {
        "resourceType": "Composition", "id": f"gaps-{member_id}"[:64], "status": "final",
        "type": {"coding": [{"system": "http://loinc.org", "code": "96315-7", "display": "Gaps in care report"}]},
        "subject": {"reference": patient_ref}, "date": generated_at.isoformat(), "author": [{"reference": org_ref}],
        "title": "Gaps in Care Report",
    }
    if sections:
        composition["section"] = sections
    bundle = {
        "resourceType": "Bundle", "type": "document", "timestamp": generated_at.isoformat(),
        "identifier": {"system": "urn:cth:gaps-report", "value": f"{member_id}-{start}-{end}"},
        "entry": [{"fullUrl": f"urn:cth:Composition/{composition['id']}", "resource": composition}, *entries],
    }
    return Bundle.model_validate(bundle).model_dump(mode="json", exclude_none=True)
