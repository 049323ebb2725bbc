"""Typed ``data`` models for every event type in DESIGN.md's topic table.

Each class is registered with :func:`event_type` under its CloudEvents ``type``,
version and topic. Validation is strict: unknown fields are rejected, codes are
checked (NPI check digit, NUBC disposition, CPT/HCPCS and ICD-10 shape), strings
and lists are bounded. ``EXAMPLES`` holds one valid ``data`` payload per type.
"""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import AwareDatetime, Field, model_validator

from .codes import (
    FreeText,
    Icd10Code,
    Modifier,
    Npi,
    NubcDisposition,
    PatientClass,
    PlaceOfService,
    ProcedureCode,
    SafeId,
    ServiceCategory,
    ShortText,
    TaxonomyCode,
    Tin,
)
from .envelope import EventData, event_type, register_upcaster

Latitude = Annotated[float, Field(ge=-90, le=90)]
Longitude = Annotated[float, Field(ge=-180, le=180)]
RiskScore = Annotated[float, Field(ge=0, le=100, description="Payer risk score, 0-100")]


# --------------------------------------------------------------------------- shared parts
class Identifier(EventData):
    """A patient identifier as a hospital knows it (HL7 PID-3 / FHIR Identifier)."""

    system: Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[^\x00-\x1f\x7f\s]+$")]
    value: SafeId


class Address(EventData):
    """A postal address with coordinates (PHI: never logged)."""

    line: ShortText
    city: ShortText
    state: Annotated[str, Field(pattern=r"^[A-Z]{2}$")]
    postal_code: Annotated[str, Field(pattern=r"^[0-9]{5}(-[0-9]{4})?$")]
    latitude: Latitude
    longitude: Longitude


class Diagnosis(EventData):
    """A coded diagnosis (HL7 DG1-3 / FHIR Condition.code)."""

    code: Icd10Code
    primary: bool = False


class Facility(EventData):
    """The facility where an encounter happens (HL7 MSH-4 / PV1-3 / FHIR Encounter.serviceProvider)."""

    npi: Npi
    name: ShortText
    tin: Tin | None = None


class Product(StrEnum):
    COMMERCIAL = "commercial"
    MEDICARE_ADVANTAGE = "medicare_advantage"
    MEDICAID = "medicaid"


class Sex(StrEnum):
    FEMALE = "female"
    MALE = "male"
    OTHER = "other"
    UNKNOWN = "unknown"


# --------------------------------------------------------------------------- enrollment
class MemberSnapshot(EventData):
    """A member's enrollment record as the payer's eligibility system holds it."""

    member_id: SafeId
    plan_id: SafeId
    network_id: SafeId
    product: Product
    virtual_first: bool = False
    v1c_group_npi: Npi | None = Field(None, description="The plan's V1C group, for virtual-first plans")
    effective_date: date
    termination_date: date | None = None
    given_name: ShortText
    family_name: ShortText
    birth_date: date
    sex: Sex = Sex.UNKNOWN
    address: Address
    risk_score: RiskScore = 0.0
    care_manager_id: SafeId | None = None
    selected_pcp_npi: Npi | None = None
    identifiers: list[Identifier] = Field(default_factory=list, max_length=20)

    @model_validator(mode="after")
    def _dates_in_order(self) -> MemberSnapshot:
        if self.termination_date is not None and self.termination_date < self.effective_date:
            raise ValueError("termination_date is before effective_date")
        if self.birth_date.year < 1900:
            raise ValueError("birth_date is before 1900")
        return self


@event_type("member.enrolled", version=1, topic="enrollment")
class MemberEnrolled(MemberSnapshot):
    """A member joined a plan."""


@event_type("member.updated", version=1, topic="enrollment")
class MemberUpdated(MemberSnapshot):
    """Any change to an enrolled member (address, risk score, care manager, plan, network)."""


@event_type("member.pcp_selected", version=1, topic="enrollment")
class MemberPcpSelected(EventData):
    """The member selected, or the payer assigned, a primary care provider (prospective alignment)."""

    member_id: SafeId
    pcp_npi: Npi
    pcp_tin: Tin | None = None
    selection: Literal["member_selected", "payer_assigned"]
    effective_date: date


@event_type("member.disenrolled", version=1, topic="enrollment")
class MemberDisenrolled(EventData):
    """Coverage ended; attribution ends with it."""

    member_id: SafeId
    plan_id: SafeId
    termination_date: date
    reason: Literal["voluntary", "non_payment", "moved", "deceased", "other"] = "other"


# --------------------------------------------------------------------------- encounters
HL7_TRIGGERS = ("A01", "A02", "A03", "A04", "A06", "A08", "A11", "A13")


class EncounterBase(EventData):
    """Fields every encounter event carries (HL7 v2 ADT / FHIR Encounter)."""

    encounter_id: SafeId = Field(description="PV1-19 visit number, qualified by the facility")
    member_id: SafeId
    facility: Facility
    patient_class: PatientClass
    trigger: Literal["A01", "A02", "A03", "A04", "A06", "A08", "A11", "A13", "FHIR"] = Field(
        description="The source trigger; A08 marks an update of an already known state"
    )
    source_message_id: Annotated[str, Field(min_length=1, max_length=64)] | None = Field(
        None, description="MSH-10 message control id"
    )
    patient_identifiers: list[Identifier] = Field(default_factory=list, max_length=20)
    attending_npi: Npi | None = None
    reported_pcp_npi: Npi | None = Field(None, description="PD1-4 / ROL PCP as the hospital knows it")


@event_type("encounter.admitted", version=1, topic="encounters")
class EncounterAdmitted(EncounterBase):
    """Admission (A01), registration (A04, emergency/observation) or an A08 update of one."""

    admitted_at: AwareDatetime
    diagnoses: list[Diagnosis] = Field(default_factory=list, max_length=50)


@event_type("encounter.transferred", version=1, topic="encounters")
class EncounterTransferred(EncounterBase):
    """Transfer (A02) or patient-class change (A06 outpatient to inpatient)."""

    transferred_at: AwareDatetime
    from_patient_class: PatientClass | None = None
    to_unit: ShortText | None = None


@event_type("encounter.discharged", version=1, topic="encounters")
class EncounterDischarged(EncounterBase):
    """Discharge (A03) with its NUBC disposition and diagnoses."""

    admitted_at: AwareDatetime | None = None
    discharged_at: AwareDatetime
    disposition: NubcDisposition
    diagnoses: list[Diagnosis] = Field(default_factory=list, max_length=50)
    discharged_to_npi: Npi | None = None

    @model_validator(mode="after")
    def _discharge_after_admit(self) -> EncounterDischarged:
        if self.admitted_at is not None and self.discharged_at < self.admitted_at:
            raise ValueError("discharged_at is before admitted_at")
        return self


@event_type("encounter.cancelled", version=1, topic="encounters")
class EncounterCancelled(EncounterBase):
    """A cancelled admit (A11) or discharge (A13): what it set in motion is retracted."""

    cancels: Literal["admit", "discharge"]
    cancelled_at: AwareDatetime


# --------------------------------------------------------------------------- virtual visits
@event_type("virtual_visit.completed", version=1, topic="virtual-visits")
class VirtualVisitCompleted(EventData):
    """A completed V1C visit: evidence for attribution and for closing care gaps."""

    visit_id: SafeId
    member_id: SafeId
    provider_npi: Npi
    organization_tin: Tin
    modality: Literal["video", "audio", "async", "chat", "in_home"]
    started_at: AwareDatetime
    ended_at: AwareDatetime
    procedure_codes: list[ProcedureCode] = Field(min_length=1, max_length=20)
    diagnoses: list[Diagnosis] = Field(default_factory=list, max_length=20)
    medication_reconciliation: bool = False
    interactive_contact: bool = True
    allowed_amount: Decimal = Field(Decimal("0"), ge=0, le=Decimal("100000"), decimal_places=2)

    @model_validator(mode="after")
    def _ended_after_start(self) -> VirtualVisitCompleted:
        if self.ended_at < self.started_at:
            raise ValueError("ended_at is before started_at")
        return self


# --------------------------------------------------------------------------- claims
class ClaimLine(EventData):
    """One adjudicated service line (837/835 SV1)."""

    line_number: Annotated[int, Field(ge=1, le=999)]
    procedure_code: ProcedureCode
    modifiers: list[Modifier] = Field(default_factory=list, max_length=4)
    rendering_npi: Npi
    rendering_tin: Tin
    rendering_taxonomy: TaxonomyCode | None = None
    place_of_service: PlaceOfService
    service_from: date
    service_to: date
    units: Annotated[int, Field(ge=-999, le=999)] = 1
    allowed_amount: Decimal = Field(ge=Decimal("-1000000"), le=Decimal("1000000"), decimal_places=2)
    diagnoses: list[Icd10Code] = Field(default_factory=list, max_length=12)

    @model_validator(mode="after")
    def _dates_in_order(self) -> ClaimLine:
        if self.service_to < self.service_from:
            raise ValueError("service_to is before service_from")
        return self


@event_type("claim.adjudicated", version=1, topic="claims")
class ClaimAdjudicated(EventData):
    """A claim after adjudication. ``reversed`` negates a prior claim; ``adjusted`` replaces it."""

    claim_id: SafeId
    member_id: SafeId
    status: Literal["paid", "denied", "reversed", "adjusted"]
    replaces_claim_id: SafeId | None = Field(None, description="For reversals and adjustments")
    billing_tin: Tin
    adjudicated_on: date
    lines: list[ClaimLine] = Field(min_length=1, max_length=200)

    @model_validator(mode="after")
    def _replacement_named(self) -> ClaimAdjudicated:
        if self.status in ("reversed", "adjusted") and self.replaces_claim_id is None:
            raise ValueError("a reversed or adjusted claim names the claim it replaces")
        return self


# --------------------------------------------------------------------------- referral requests
@event_type("referral.requested", version=1, topic="referral-requests")
class ReferralRequested(EventData):
    """An explicit referral (FHIR ServiceRequest) from an ordering provider."""

    referral_id: SafeId
    member_id: SafeId
    service_category: ServiceCategory
    specialty_taxonomy: TaxonomyCode | None = None
    urgency: Literal["routine", "urgent", "asap", "stat"] = "routine"
    ordering_npi: Npi
    ordering_tin: Tin | None = None
    requested_at: AwareDatetime
    reason_codes: list[Icd10Code] = Field(default_factory=list, max_length=10)
    encounter_id: SafeId | None = None


# --------------------------------------------------------------------------- provider directory
class NetworkTier(StrEnum):
    PREFERRED = "preferred"
    STANDARD = "standard"


class NetworkParticipation(EventData):
    network_id: SafeId
    tier: NetworkTier


class ProviderRole(StrEnum):
    PCP = "pcp"
    SPECIALIST = "specialist"
    POST_ACUTE = "post_acute"
    HOSPITAL = "hospital"
    V1C = "v1c"


@event_type("provider.upserted", version=1, topic="provider-directory")
class ProviderUpserted(EventData):
    """The payer's current record of a provider (compacted topic keyed by NPI)."""

    npi: Npi
    name: ShortText
    organization_name: ShortText
    tin: Tin
    taxonomy: TaxonomyCode
    role: ProviderRole
    services: list[ServiceCategory] = Field(default_factory=list, max_length=20)
    networks: list[NetworkParticipation] = Field(default_factory=list, max_length=20)
    latitude: Latitude
    longitude: Longitude
    accepting: bool = True
    capacity: Annotated[int, Field(ge=0, le=100_000)] = 0
    quality_score: Annotated[float, Field(ge=0, le=5)] = 3.0
    cost_index: Annotated[float, Field(gt=0, le=10)] = 1.0
    virtual_capable: bool = False
    active: bool = True


# --------------------------------------------------------------------------- attribution
class AttributionMethod(StrEnum):
    MEMBER_SELECTED = "member_selected"
    PAYER_ASSIGNED = "payer_assigned"
    PLURALITY_PRIMARY_CARE = "plurality_primary_care"
    PLURALITY_ALL_PROVIDERS = "plurality_all_providers"
    VIRTUAL_FIRST_DEFAULT = "virtual_first_default"
    UNATTRIBUTED = "unattributed"
    DISENROLLED = "disenrolled"


class AttributionCandidate(EventData):
    npi: Npi
    tin: Tin | None = None
    allowed_total: Decimal
    visit_count: Annotated[int, Field(ge=0)]
    last_service_date: date | None = None


class AttributionExplanation(EventData):
    reason_code: Annotated[str, Field(min_length=1, max_length=64)]
    tie_break: Literal["most_recent_service", "visit_count", "stable_id"] | None = None
    lookback_start: date | None = None
    lookback_end: date | None = None
    candidates: list[AttributionCandidate] = Field(default_factory=list, max_length=50)
    rules_version: Annotated[str, Field(min_length=1, max_length=32)]


class CareTeamMember(EventData):
    role: Literal["pcp", "v1c_provider", "care_manager", "receiving_provider"]
    id: SafeId = Field(description="NPI for clinicians, care manager id for care managers")
    tin: Tin | None = None


@event_type("attribution.changed", version=1, topic="attribution")
class AttributionChanged(EventData):
    """Who is responsible for the member from ``effective_date``, the care team, and why."""

    member_id: SafeId
    effective_date: date
    method: AttributionMethod
    pcp_npi: Npi | None = None
    pcp_tin: Tin | None = None
    previous_pcp_npi: Npi | None = None
    care_team: list[CareTeamMember] = Field(default_factory=list, max_length=50)
    explanation: AttributionExplanation


# --------------------------------------------------------------------------- referrals
class RoutingCandidate(EventData):
    npi: Npi
    tin: Tin
    tier: NetworkTier
    score: float
    components: dict[Literal["tier", "quality", "cost", "distance", "capacity"], float]
    distance_km: Annotated[float, Field(ge=0)] | None = None
    virtual: bool = False


@event_type("referral.routed", version=1, topic="referrals")
class ReferralRouted(EventData):
    """The chosen in-network provider for a referral, with ranked alternatives and score parts."""

    referral_id: SafeId
    member_id: SafeId
    service_category: ServiceCategory
    origin: Literal["request", "discharge"]
    ordering_npi: Npi | None = None
    encounter_id: SafeId | None = None
    chosen: RoutingCandidate
    alternatives: list[RoutingCandidate] = Field(default_factory=list, max_length=10)
    routing_version: Annotated[str, Field(min_length=1, max_length=32)]


@event_type("referral.unroutable", version=1, topic="referrals")
class ReferralUnroutable(EventData):
    """Nobody qualifies; ``reason`` says which filter emptied the candidate list."""

    referral_id: SafeId
    member_id: SafeId
    service_category: ServiceCategory
    origin: Literal["request", "discharge"]
    reason: Literal[
        "no_provider_offers_service", "none_in_network", "none_accepting", "no_capacity",
        "none_within_distance", "member_not_enrolled",
    ]
    detail: FreeText = ""


@event_type("referral.leakage_detected", version=1, topic="referrals")
class ReferralLeakageDetected(EventData):
    """Care for a routed referral happened at an out-of-network or non-preferred provider."""

    referral_id: SafeId
    member_id: SafeId
    service_category: ServiceCategory
    ordering_npi: Npi | None = None
    routed_npi: Npi
    actual_npi: Npi
    actual_tin: Tin | None = None
    leakage_kind: Literal["out_of_network", "non_preferred"]
    evidence_event_id: SafeId
    evidence_kind: Literal["claim", "encounter"]
    occurred_on: date


# --------------------------------------------------------------------------- care gaps
class GapMeasure(StrEnum):
    """Transition-of-care measures (HEDIS TRC, FUH, FUM/ED follow-up, CMS TCM, PCR)."""

    TRC_PATIENT_ENGAGEMENT = "trc_patient_engagement"
    TRC_MEDICATION_RECONCILIATION = "trc_medication_reconciliation"
    TCM_INTERACTIVE_CONTACT = "tcm_interactive_contact"
    TCM_FACE_TO_FACE = "tcm_face_to_face"
    FUH_7_DAY = "fuh_7_day"
    FUH_30_DAY = "fuh_30_day"
    ED_FOLLOW_UP_7_DAY = "ed_follow_up_7_day"
    READMISSION_WATCH = "readmission_watch"


class GapOwner(EventData):
    role: Literal["pcp", "v1c_provider", "care_manager", "unassigned"]
    id: SafeId | None = None


@event_type("care_gap.opened", version=1, topic="care-gaps")
class CareGapOpened(EventData):
    gap_id: SafeId
    member_id: SafeId
    measure: GapMeasure
    encounter_id: SafeId
    discharged_at: AwareDatetime
    window_start: date
    due_date: date
    owner: GapOwner
    priority: Annotated[float, Field(ge=0)]
    measure_version: Annotated[str, Field(min_length=1, max_length=32)]


@event_type("care_gap.closed", version=1, topic="care-gaps")
class CareGapClosed(EventData):
    gap_id: SafeId
    member_id: SafeId
    measure: GapMeasure
    encounter_id: SafeId
    closed_at: AwareDatetime
    closing_event_id: SafeId
    closing_rule: Annotated[str, Field(min_length=1, max_length=64)]


@event_type("care_gap.overdue", version=1, topic="care-gaps")
class CareGapOverdue(EventData):
    gap_id: SafeId
    member_id: SafeId
    measure: GapMeasure
    encounter_id: SafeId
    due_date: date
    detected_at: AwareDatetime
    owner: GapOwner


@event_type("care_gap.not_applicable", version=1, topic="care-gaps")
class CareGapNotApplicable(EventData):
    gap_id: SafeId
    member_id: SafeId
    measure: GapMeasure
    encounter_id: SafeId
    reason: Literal["encounter_cancelled", "expired", "acute_transfer", "hospice", "disenrolled", "readmitted"]


# --------------------------------------------------------------------------- notifications
class NotificationKind(StrEnum):
    ADMIT = "admit"
    TRANSFER = "transfer"
    DISCHARGE = "discharge"
    ED_VISIT = "ed_visit"
    READMISSION = "readmission"
    GAP_OPENED = "gap_opened"
    GAP_OVERDUE = "gap_overdue"
    REFERRAL_ROUTED = "referral_routed"
    LEAKAGE = "leakage"


@event_type("notification.created", version=1, topic="notifications")
class NotificationCreated(EventData):
    notification_id: SafeId
    member_id: SafeId
    recipient_id: SafeId
    recipient_role: Literal["pcp", "v1c_provider", "care_manager", "receiving_provider", "organization"]
    organization_id: SafeId
    kind: NotificationKind
    priority: Literal["routine", "high", "urgent"]
    encounter_id: SafeId | None = None
    sequence: Annotated[int, Field(ge=1)]
    retraction: bool = False
    source_event_id: SafeId


@event_type("notification.delivered", version=1, topic="notifications")
class NotificationDelivered(EventData):
    notification_id: SafeId
    member_id: SafeId
    recipient_id: SafeId
    channel: Literal["webhook", "fhir_message", "inbox"]
    delivered_at: AwareDatetime
    attempts: Annotated[int, Field(ge=1)]


@event_type("notification.failed", version=1, topic="notifications")
class NotificationFailed(EventData):
    notification_id: SafeId
    member_id: SafeId
    recipient_id: SafeId
    channel: Literal["webhook", "fhir_message", "inbox"]
    reason: FreeText
    attempts: Annotated[int, Field(ge=1)]
    dead_lettered: bool


@event_type("notification.acknowledged", version=1, topic="notifications")
class NotificationAcknowledged(EventData):
    notification_id: SafeId
    member_id: SafeId
    recipient_id: SafeId
    acknowledged_at: AwareDatetime


# --------------------------------------------------------------------------- upcasters
# encounter.discharged v0 (pre-release producers) sent ``discharge_disposition``;
# v1 calls it ``disposition``. Kept as the worked example of the upcaster mechanism.
def _discharged_v0_to_v1(data: dict[str, Any]) -> dict[str, Any]:
    upgraded = dict(data)
    if "discharge_disposition" in upgraded:
        upgraded["disposition"] = upgraded.pop("discharge_disposition")
    return upgraded


register_upcaster("encounter.discharged", 0, _discharged_v0_to_v1)


# --------------------------------------------------------------------------- examples
_FACILITY = {"npi": "1245319599", "name": "St. Example General Hospital", "tin": "123456789"}
_ADDRESS = {
    "line": "12 Elm St", "city": "Springfield", "state": "IL", "postal_code": "62701",
    "latitude": 39.7817, "longitude": -89.6501,
}
_MEMBER = {
    "member_id": "M000001", "plan_id": "PLAN-VF", "network_id": "NET-A", "product": "medicare_advantage",
    "virtual_first": True, "v1c_group_npi": "1003000126", "effective_date": "2026-01-01",
    "given_name": "Ada", "family_name": "Example", "birth_date": "1950-04-02", "sex": "female",
    "address": _ADDRESS, "risk_score": 72.5, "care_manager_id": "CM-17",
    "identifiers": [{"system": "urn:oid:2.16.840.1.113883.3.72.5.9.1", "value": "MRN12345"}],
}
_ENCOUNTER = {
    "encounter_id": "SEG-V0001", "member_id": "M000001", "facility": _FACILITY,
    "patient_class": "inpatient", "source_message_id": "MSG00001",
}

#: One valid ``data`` payload per event type (used in docs, tests and the demo).
EXAMPLES: dict[str, dict[str, Any]] = {
    "member.enrolled": _MEMBER,
    "member.updated": {**_MEMBER, "risk_score": 80.0},
    "member.pcp_selected": {
        "member_id": "M000001", "pcp_npi": "1234567893", "pcp_tin": "987654321",
        "selection": "member_selected", "effective_date": "2026-02-01",
    },
    "member.disenrolled": {
        "member_id": "M000001", "plan_id": "PLAN-VF", "termination_date": "2026-12-31", "reason": "moved",
    },
    "encounter.admitted": {
        **_ENCOUNTER, "trigger": "A01", "admitted_at": "2026-03-02T08:15:00-05:00",
        "diagnoses": [{"code": "I50.9", "primary": True}],
    },
    "encounter.transferred": {
        **_ENCOUNTER, "trigger": "A02", "transferred_at": "2026-03-03T10:00:00-05:00", "to_unit": "ICU",
    },
    "encounter.discharged": {
        **_ENCOUNTER, "trigger": "A03", "admitted_at": "2026-03-02T08:15:00-05:00",
        "discharged_at": "2026-03-06T14:30:00-05:00", "disposition": "06",
        "diagnoses": [{"code": "I50.9", "primary": True}, {"code": "E11.9"}],
    },
    "encounter.cancelled": {
        **_ENCOUNTER, "trigger": "A13", "cancels": "discharge", "cancelled_at": "2026-03-06T15:00:00-05:00",
    },
    "virtual_visit.completed": {
        "visit_id": "VV-1", "member_id": "M000001", "provider_npi": "1003000126",
        "organization_tin": "555666777", "modality": "video",
        "started_at": "2026-03-08T09:00:00-05:00", "ended_at": "2026-03-08T09:25:00-05:00",
        "procedure_codes": ["99214", "1111F"], "medication_reconciliation": True,
        "interactive_contact": True, "allowed_amount": "110.00",
    },
    "claim.adjudicated": {
        "claim_id": "CLM-1", "member_id": "M000001", "status": "paid", "billing_tin": "987654321",
        "adjudicated_on": "2026-02-20",
        "lines": [{
            "line_number": 1, "procedure_code": "99213", "rendering_npi": "1234567893",
            "rendering_tin": "987654321", "rendering_taxonomy": "207Q00000X", "place_of_service": "11",
            "service_from": "2026-02-10", "service_to": "2026-02-10", "units": 1,
            "allowed_amount": "92.50", "diagnoses": ["E11.9"],
        }],
    },
    "referral.requested": {
        "referral_id": "REF-1", "member_id": "M000001", "service_category": "cardiology",
        "urgency": "routine", "ordering_npi": "1234567893", "requested_at": "2026-03-09T11:00:00-05:00",
        "reason_codes": ["I50.9"],
    },
    "provider.upserted": {
        "npi": "1982736450", "name": "Home Health Partners", "organization_name": "HHP LLC",
        "tin": "222333444", "taxonomy": "251E00000X", "role": "post_acute", "services": ["home_health"],
        "networks": [{"network_id": "NET-A", "tier": "preferred"}], "latitude": 39.80, "longitude": -89.64,
        "accepting": True, "capacity": 25, "quality_score": 4.5, "cost_index": 0.9, "virtual_capable": False,
    },
    "attribution.changed": {
        "member_id": "M000001", "effective_date": "2026-02-20", "method": "plurality_primary_care",
        "pcp_npi": "1234567893", "pcp_tin": "987654321",
        "care_team": [
            {"role": "pcp", "id": "1234567893", "tin": "987654321"},
            {"role": "v1c_provider", "id": "1003000126", "tin": "555666777"},
            {"role": "care_manager", "id": "CM-17"},
        ],
        "explanation": {
            "reason_code": "plurality_of_allowed_charges", "lookback_start": "2024-02-20",
            "lookback_end": "2026-02-20", "rules_version": "attr-2026.1",
            "candidates": [{"npi": "1234567893", "tin": "987654321", "allowed_total": "92.50",
                            "visit_count": 1, "last_service_date": "2026-02-10"}],
        },
    },
    "referral.routed": {
        "referral_id": "REF-1", "member_id": "M000001", "service_category": "home_health",
        "origin": "discharge", "encounter_id": "SEG-V0001",
        "chosen": {"npi": "1982736450", "tin": "222333444", "tier": "preferred", "score": 0.91,
                   "components": {"tier": 0.4, "quality": 0.27, "cost": 0.11, "distance": 0.09, "capacity": 0.04},
                   "distance_km": 2.1},
        "alternatives": [], "routing_version": "route-2026.1",
    },
    "referral.unroutable": {
        "referral_id": "REF-2", "member_id": "M000001", "service_category": "hospice",
        "origin": "discharge", "reason": "none_within_distance", "detail": "no hospice within 50 km",
    },
    "referral.leakage_detected": {
        "referral_id": "REF-1", "member_id": "M000001", "service_category": "home_health",
        "routed_npi": "1982736450", "actual_npi": "1234567893", "leakage_kind": "out_of_network",
        "evidence_event_id": "evt-claim-9", "evidence_kind": "claim", "occurred_on": "2026-03-20",
    },
    "care_gap.opened": {
        "gap_id": "GAP-1", "member_id": "M000001", "measure": "fuh_7_day", "encounter_id": "SEG-V0001",
        "discharged_at": "2026-03-06T14:30:00-05:00", "window_start": "2026-03-07", "due_date": "2026-03-13",
        "owner": {"role": "pcp", "id": "1234567893"}, "priority": 3.5, "measure_version": "tocm-2026.1",
    },
    "care_gap.closed": {
        "gap_id": "GAP-1", "member_id": "M000001", "measure": "fuh_7_day", "encounter_id": "SEG-V0001",
        "closed_at": "2026-03-12T09:25:00-05:00", "closing_event_id": "VV-1",
        "closing_rule": "virtual_visit_qualifying_code",
    },
    "care_gap.overdue": {
        "gap_id": "GAP-1", "member_id": "M000001", "measure": "fuh_7_day", "encounter_id": "SEG-V0001",
        "due_date": "2026-03-13", "detected_at": "2026-03-14T00:00:00+00:00",
        "owner": {"role": "pcp", "id": "1234567893"},
    },
    "care_gap.not_applicable": {
        "gap_id": "GAP-1", "member_id": "M000001", "measure": "fuh_7_day", "encounter_id": "SEG-V0001",
        "reason": "encounter_cancelled",
    },
    "notification.created": {
        "notification_id": "N-1", "member_id": "M000001", "recipient_id": "1234567893",
        "recipient_role": "pcp", "organization_id": "987654321", "kind": "admit", "priority": "high",
        "encounter_id": "SEG-V0001", "sequence": 1, "source_event_id": "evt-1",
    },
    "notification.delivered": {
        "notification_id": "N-1", "member_id": "M000001", "recipient_id": "1234567893",
        "channel": "webhook", "delivered_at": "2026-03-02T08:15:02+00:00", "attempts": 1,
    },
    "notification.failed": {
        "notification_id": "N-1", "member_id": "M000001", "recipient_id": "1234567893",
        "channel": "webhook", "reason": "HTTP 410 Gone", "attempts": 1, "dead_lettered": True,
    },
    "notification.acknowledged": {
        "notification_id": "N-1", "member_id": "M000001", "recipient_id": "1234567893",
        "acknowledged_at": "2026-03-02T08:20:00+00:00",
    },
}

#: Fields that hold PHI in any event (used by redaction and the PHI-discipline tests).
PHI_FIELDS = frozenset({"given_name", "family_name", "birth_date", "address", "diagnoses", "reason_codes", "line"})

__all__ = [name for name in dir() if not name.startswith("_")]
_unused: tuple[Any, ...] = (datetime,)
