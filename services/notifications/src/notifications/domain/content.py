"""Minimum-necessary alert content per recipient role.

HIPAA's minimum-necessary standard (45 CFR 164.502(b), 164.514(d)) applies to uses for
payment and health-care operations (payer care management, organization subscriptions)
but not to disclosures to a provider for treatment (164.502(b)(2)(i)). So treating
clinicians (PCP, V1C provider, receiving provider, ordering provider, gap owner) get the
clinical facts; the payer's care manager gets what coordination needs without diagnoses;
an organization subscription gets only who/where/when.

The matrix (``FIELDS_BY_ROLE``), documented in the service README as well:

| field                                   | clinician | care_manager | organization |
|-----------------------------------------|-----------|--------------|--------------|
| member_id, kind, priority, event_time   | yes       | yes          | yes          |
| encounter_id, facility, patient_class   | yes       | yes          | yes          |
| admitted/transferred/discharged/cancelled times | yes | yes       | yes          |
| gap_id, measure, due_date, window_start | yes       | yes          | yes          |
| referral_id, service_category           | yes       | yes          | yes          |
| disposition, discharged_to_npi, to_unit | yes       | yes          | no           |
| previous discharge (readmission)        | yes       | yes          | no           |
| routed/chosen/actual provider, leakage  | yes       | yes          | no           |
| attending_npi                           | yes       | yes          | no           |
| diagnoses (ICD-10)                      | yes       | no           | no           |
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

_WHO_WHERE_WHEN = frozenset({
    "member_id", "kind", "priority", "event_time", "encounter_id", "facility_name", "facility_npi",
    "patient_class", "admitted_at", "transferred_at", "discharged_at", "cancelled_at",
    "gap_id", "measure", "due_date", "window_start", "referral_id", "service_category",
})
_COORDINATION = _WHO_WHERE_WHEN | frozenset({
    "disposition", "discharged_to_npi", "to_unit", "previous_discharged_at", "previous_encounter_id",
    "chosen_npi", "chosen_tin", "routed_npi", "actual_npi", "leakage_kind", "occurred_on", "attending_npi",
    "origin",
})
_CLINICAL = _COORDINATION | frozenset({"diagnoses"})

FIELDS_BY_ROLE: dict[str, frozenset[str]] = {
    "pcp": _CLINICAL,
    "v1c_provider": _CLINICAL,
    "receiving_provider": _CLINICAL,
    "ordering_provider": _CLINICAL,
    "care_manager": _COORDINATION,
    "organization": _WHO_WHERE_WHEN,
}

#: Fields that hold PHI beyond identifiers: never logged, never in span attributes.
CLINICAL_ONLY_FIELDS = _CLINICAL - _COORDINATION


def allows_diagnoses(role: str) -> bool:
    """True when the role's content includes diagnoses."""
    return "diagnoses" in FIELDS_BY_ROLE.get(role, frozenset())


def content_for(role: str, facts: Mapping[str, Any]) -> dict[str, Any]:
    """The facts this role may see (unknown roles see the organization's minimum); None values dropped."""
    allowed = FIELDS_BY_ROLE.get(role, FIELDS_BY_ROLE["organization"])
    return {name: value for name, value in facts.items() if name in allowed and value is not None}
