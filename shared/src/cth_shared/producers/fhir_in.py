"""FHIR R4 Encounter and ServiceRequest (alone, or in Bundles) to encounter and referral events.

Resources are validated with the ``fhir.resources`` R4B models (``fhir.resources.R4B``):
fhir.resources 8.x ships R5 at the top level, R4B and STU3; R4B is the R4 technical correction
and is identical to R4 for Encounter, ServiceRequest, Patient, Organization, Practitioner,
Condition and Coverage, so R4 payloads validate as they are.

Mapping (the Da Vinci Unsolicited Notifications shape: a Bundle carrying the Encounter with its
Patient, Organization, Practitioner, Condition and Coverage resources):

=================================  ===========================================================
Encounter.status                   ``in-progress``/``arrived``/``triaged``/``onleave`` ->
                                   ``encounter.admitted``; ``finished`` -> ``encounter.discharged``;
                                   ``cancelled``/``entered-in-error`` -> ``encounter.cancelled``;
                                   ``planned`` (nothing happened yet) is refused
Encounter.class                    v3 ActCode IMP/ACUTE/NONAC inpatient, EMER emergency, OBSENC
                                   observation, AMB/HH/VR/FLD outpatient
Encounter.period                   start -> ``admitted_at``; end -> ``discharged_at``
hospitalization.dischargeDisposition  NUBC (``nubc-UB92``/``PatDischargeStatus``, ``1`` -> ``01``)
                                   or HL7 ``discharge-disposition`` codes (mapped to NUBC)
serviceProvider                    Organization with an NPI identifier (in the Bundle, contained,
                                   or a logical identifier reference) -> ``facility``
Encounter.identifier[0] / id       visit number, qualified by the facility NPI -> ``encounter_id``
subject -> Patient.identifier      the hospital's identifiers, resolved through the roster's
                                   :class:`~cth_shared.producers.hl7_adt.MemberIndex`; a Coverage
                                   whose subscriberId/identifier is a roster member id wins
participant (ATND) -> Practitioner ``attending_npi``
diagnosis.condition -> Condition   ICD-10-CM codes; rank 1 is the principal diagnosis
ServiceRequest                     ``referral.requested``: identifier/id -> ``referral_id``,
                                   performerType/code/category (NUCC taxonomy, or the
                                   ``urn:cth:service-category`` system, or a configured map) ->
                                   ``service_category``, priority -> ``urgency``, requester ->
                                   ``ordering_npi`` (and TIN from its Organization),
                                   authoredOn -> ``requested_at``, reasonCode ICD-10 ->
                                   ``reason_codes``, encounter -> ``encounter_id``
=================================  ===========================================================

Every failure is a :class:`FhirError` with a stable ``reason`` and a ``detail`` naming paths,
never values (no PHI). In a Bundle each Encounter/ServiceRequest entry succeeds or fails on
its own (:meth:`FhirTranslator.translate` returns one result per entry). A patient who is not
a member is a :class:`FhirUnmatched` result (reported, not dropped). The event id derives from
the encounter/referral identity, the event type and its time, so a resent resource yields the
same event id.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, time
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from fhir.resources.R4B import get_fhir_model_class
from pydantic import ValidationError

from cth_shared.contracts import CloudEvent, PatientClass, new_event, npi_check_digit_ok
from cth_shared.contracts.codes import ServiceCategory
from cth_shared.contracts.events import (
    Diagnosis,
    EncounterAdmitted,
    EncounterCancelled,
    EncounterDischarged,
    Facility,
    Identifier,
    ReferralRequested,
)

from .hl7_adt import MemberIndex

__all__ = [
    "CTH_SERVICE_CATEGORY_SYSTEM",
    "FhirError",
    "FhirEvent",
    "FhirSettings",
    "FhirTranslator",
    "FhirUnmatched",
    "iter_fhir_documents",
]

NPI_SYSTEM = "http://hl7.org/fhir/sid/us-npi"
TIN_SYSTEMS = frozenset({"urn:oid:2.16.840.1.113883.4.4", "http://hl7.org/fhir/sid/us-tin"})
ICD10_SYSTEMS = frozenset({"http://hl7.org/fhir/sid/icd-10-cm", "http://hl7.org/fhir/sid/icd-10"})
NUCC_SYSTEM = "http://nucc.org/provider-taxonomy"
CTH_SERVICE_CATEGORY_SYSTEM = "urn:cth:service-category"
NUBC_SYSTEMS = frozenset(
    {
        "http://terminology.hl7.org/CodeSystem/nubc-UB92",
        "https://www.nubc.org/CodeSystem/PatDischargeStatus",
        "http://www.nubc.org/patient-discharge",
    }
)
HL7_DISPOSITION_SYSTEM = "http://terminology.hl7.org/CodeSystem/discharge-disposition"
#: HL7 discharge-disposition codes to NUBC patient discharge status.
HL7_DISPOSITION_TO_NUBC = {
    "home": "01",
    "alt-home": "01",
    "other-hcf": "05",
    "hosp": "02",
    "long": "63",
    "aadvice": "07",
    "exp": "20",
    "psy": "65",
    "rehab": "62",
    "snf": "03",
    "oth": "70",
}
CLASS_TO_PATIENT_CLASS = {
    "IMP": PatientClass.INPATIENT,
    "ACUTE": PatientClass.INPATIENT,
    "NONAC": PatientClass.INPATIENT,
    "EMER": PatientClass.EMERGENCY,
    "OBSENC": PatientClass.OBSERVATION,
    "AMB": PatientClass.OUTPATIENT,
    "HH": PatientClass.OUTPATIENT,
    "VR": PatientClass.OUTPATIENT,
    "FLD": PatientClass.OUTPATIENT,
    "SS": PatientClass.OUTPATIENT,
    "PRENC": PatientClass.OUTPATIENT,
}
ADMITTED_STATUSES = frozenset({"in-progress", "arrived", "triaged", "onleave"})
CANCELLED_STATUSES = frozenset({"cancelled", "entered-in-error"})
ORDER_INTENTS = frozenset({"order", "original-order", "reflex-order", "filler-order", "instance-order", "plan"})
#: NUCC taxonomy -> service category (the specialties and post-acute kinds the hub routes).
TAXONOMY_TO_CATEGORY: dict[str, ServiceCategory] = {
    "207RC0000X": ServiceCategory.CARDIOLOGY,
    "207RP1001X": ServiceCategory.PULMONOLOGY,
    "207RE0101X": ServiceCategory.ENDOCRINOLOGY,
    "207RN0300X": ServiceCategory.NEPHROLOGY,
    "207X00000X": ServiceCategory.ORTHOPEDICS,
    "2084N0400X": ServiceCategory.NEUROLOGY,
    "207RX0202X": ServiceCategory.ONCOLOGY,
    "2084P0800X": ServiceCategory.BEHAVIORAL_HEALTH,
    "103T00000X": ServiceCategory.BEHAVIORAL_HEALTH,
    "225100000X": ServiceCategory.PHYSICAL_THERAPY,
    "207Q00000X": ServiceCategory.PRIMARY_CARE,
    "207R00000X": ServiceCategory.PRIMARY_CARE,
    "208D00000X": ServiceCategory.PRIMARY_CARE,
    "251E00000X": ServiceCategory.HOME_HEALTH,
    "314000000X": ServiceCategory.SNF,
    "283X00000X": ServiceCategory.INPATIENT_REHAB,
    "251G00000X": ServiceCategory.HOSPICE,
}
_SAFE_CHARS_RE = re.compile(r"[^A-Za-z0-9._:\-]")
_SAFE_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:\-]{0,63}$")


class FhirError(ValueError):
    """A FHIR resource we cannot turn into an event.

    ``reason``: ``not_json``, ``not_fhir``, ``unsupported_resource``, ``invalid_resource``,
    ``unsupported_status``, ``missing_field``, ``invalid_field``, ``unresolved_reference``,
    ``unknown_facility``, ``invalid_event``. ``detail`` names paths, never values.
    ``location`` says which resource (``entry[3] Encounter/abc``) when known.
    """

    def __init__(self, reason: str, detail: str, *, location: str = "") -> None:
        super().__init__(f"{location + ': ' if location else ''}{reason}: {detail}")
        self.reason = reason
        self.detail = detail
        self.location = location

    def at(self, location: str) -> FhirError:
        return FhirError(self.reason, self.detail, location=location)


@dataclass(frozen=True)
class FhirEvent:
    """A translated resource: the event to publish, where it came from, what was skipped."""

    event: CloudEvent[Any]
    location: str
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True)
class FhirUnmatched:
    """A valid resource whose patient is not (unambiguously) a member. No PHI."""

    location: str
    resource_type: str
    identifier_systems: tuple[str, ...]
    reason: str

    def __str__(self) -> str:
        systems = ",".join(self.identifier_systems) or "none"
        return f"{self.location}: unmatched patient ({self.reason}); identifier systems tried: {systems}"


FhirResult = FhirEvent | FhirUnmatched | FhirError


@dataclass
class FhirSettings:
    """How to read one sender's FHIR resources. Every field has a working default.

    ``facilities`` maps an Organization reference (``Organization/123``) or display name to a
    facility when the sender's Organization carries no NPI. ``service_categories`` maps
    ``(system, code)`` (e.g. a SNOMED "referral to ... service" code) to a category.
    ``member_id_systems`` are identifier systems whose value *is* the payer member id.
    """

    tenant: str = "payer-demo"
    facility_timezone: str = "America/New_York"
    facilities: Mapping[str, Facility] = field(default_factory=dict)
    service_categories: Mapping[tuple[str, str], ServiceCategory] = field(default_factory=dict)
    member_id_systems: frozenset[str] = frozenset()
    default_disposition: str | None = None


def _describe(error: ValidationError) -> str:
    parts = []
    for item in error.errors(include_input=False, include_url=False)[:5]:
        location = ".".join(str(p) for p in item["loc"]) or "<root>"
        parts.append(f"{location}: {item['msg']}")
    return "; ".join(parts)


def _safe(value: str) -> str:
    return _SAFE_CHARS_RE.sub("-", value).strip("-.:_")[:64]


def _codings(concepts: Any) -> Iterator[Any]:
    """Every Coding of a CodeableConcept or a list of them."""
    if concepts is None:
        return
    for concept in concepts if isinstance(concepts, list) else [concepts]:
        yield from concept.coding or []


def _identifier_value(identifiers: Any, systems: frozenset[str] | set[str]) -> str | None:
    for ident in identifiers or []:
        if ident.system in systems and ident.value:
            return str(ident.value)
    return None


class _Context:
    """The resources a Bundle (or a resource's ``contained``) offers for references."""

    def __init__(self) -> None:
        self._by_key: dict[str, dict[str, Any]] = {}

    def add(self, resource: dict[str, Any], full_url: str | None = None) -> None:
        kind, rid = resource.get("resourceType"), resource.get("id")
        if full_url:
            self._by_key[full_url] = resource
        if kind and rid:
            self._by_key[f"{kind}/{rid}"] = resource

    def resolve(self, reference: str | None, contained: dict[str, dict[str, Any]]) -> dict[str, Any] | None:
        if not reference:
            return None
        if reference.startswith("#"):
            return contained.get(reference[1:])
        if reference in self._by_key:
            return self._by_key[reference]
        tail = "/".join(reference.rstrip("/").split("/")[-2:])  # absolute URL -> Type/id
        return self._by_key.get(tail)

    def coverages(self) -> Iterator[dict[str, Any]]:
        seen: set[int] = set()
        for resource in self._by_key.values():
            if resource.get("resourceType") == "Coverage" and id(resource) not in seen:
                seen.add(id(resource))
                yield resource


class FhirTranslator:
    """Turns FHIR Encounter / ServiceRequest resources (or Bundles) into events."""

    def __init__(self, index: MemberIndex, settings: FhirSettings | None = None) -> None:
        self.index = index
        self.settings = settings or FhirSettings()
        self._zone = ZoneInfo(self.settings.facility_timezone)

    # -- entry points --------------------------------------------------------------------
    def translate(self, document: bytes | str | dict[str, Any], *, location: str = "") -> list[FhirResult]:
        """One result per Encounter/ServiceRequest in ``document`` (a resource or a Bundle).

        Raises :class:`FhirError` only when the document as a whole is unusable (not JSON,
        not a FHIR resource, an unsupported resource type); a bad entry of a Bundle is
        returned as a :class:`FhirError` result and the other entries still translate.
        """
        resource = self._load(document, location)
        kind = resource.get("resourceType")
        context = _Context()
        if kind == "Bundle":
            entries = resource.get("entry") or []
            if not isinstance(entries, list):
                raise FhirError("invalid_resource", "Bundle.entry must be a list", location=location)
            targets: list[tuple[str, dict[str, Any]]] = []
            for number, entry in enumerate(entries):
                if not isinstance(entry, dict) or not isinstance(entry.get("resource"), dict):
                    continue
                request = entry.get("request") or {}
                if isinstance(request, dict) and str(request.get("method", "")).upper() == "DELETE":
                    continue
                inner = entry["resource"]
                context.add(inner, entry.get("fullUrl"))
                if inner.get("resourceType") in ("Encounter", "ServiceRequest"):
                    where = f"entry[{number}] {inner.get('resourceType')}/{_safe(str(inner.get('id', '')))}"
                    targets.append(((location + " " if location else "") + where, inner))
            if not targets:
                raise FhirError(
                    "unsupported_resource", "the Bundle has no Encounter or ServiceRequest entry", location=location
                )
            results: list[FhirResult] = []
            for where, inner in targets:
                try:
                    results.append(self._one(inner, context, where))
                except FhirError as error:
                    results.append(error.at(where))
            return results
        if kind not in ("Encounter", "ServiceRequest"):
            raise FhirError(
                "unsupported_resource",
                "resourceType must be Encounter, ServiceRequest or a Bundle of them",
                location=location,
            )
        where = location or f"{kind}/{_safe(str(resource.get('id', '')))}"
        try:
            return [self._one(resource, context, where)]
        except FhirError as error:
            return [error.at(where)]

    def translate_resource(self, resource: bytes | str | dict[str, Any]) -> FhirEvent | FhirUnmatched:
        """Translate a single Encounter or ServiceRequest; raises :class:`FhirError`."""
        results = self.translate(resource)
        if len(results) != 1:
            raise FhirError("unsupported_resource", "expected a single Encounter or ServiceRequest")
        result = results[0]
        if isinstance(result, FhirError):
            raise result
        return result

    # -- plumbing ------------------------------------------------------------------------
    def _load(self, document: bytes | str | dict[str, Any], location: str) -> dict[str, Any]:
        if isinstance(document, dict):
            resource = document
        else:
            try:
                resource = json.loads(document)
            except (ValueError, UnicodeDecodeError) as exc:
                raise FhirError(
                    "not_json", f"the document is not JSON ({type(exc).__name__})", location=location
                ) from None
        if not isinstance(resource, dict) or not isinstance(resource.get("resourceType"), str):
            raise FhirError("not_fhir", "a FHIR resource is a JSON object with a resourceType", location=location)
        return resource

    def _model(self, resource: dict[str, Any], path: str = "") -> Any:
        kind = resource.get("resourceType", "")
        try:
            model = get_fhir_model_class(kind)
        except (KeyError, ValueError, AttributeError, ImportError):
            raise FhirError("invalid_resource", f"{path or 'resource'}: unknown resourceType") from None
        try:
            return model.model_validate(resource)
        except ValidationError as exc:
            raise FhirError("invalid_resource", f"{path + ' ' if path else ''}{kind}: {_describe(exc)}") from None

    def _one(self, resource: dict[str, Any], context: _Context, where: str) -> FhirEvent | FhirUnmatched:
        model = self._model(resource)
        contained = {str(c.get("id")): c for c in resource.get("contained") or [] if isinstance(c, dict)}
        if model.get_resource_type() == "Encounter":
            return self._encounter(model, context, contained, where)
        return self._service_request(model, context, contained, where)

    def _moment(self, value: Any, path: str) -> datetime | None:
        if value is None:
            return None
        if isinstance(value, datetime):
            if value.tzinfo is None:
                return value.replace(tzinfo=self._zone)
            return value
        if isinstance(value, date):
            return datetime.combine(value, time(0), tzinfo=self._zone)
        raise FhirError("invalid_field", f"{path} is not a date-time")

    def _referenced(self, reference: Any, context: _Context, contained: dict[str, Any], path: str) -> Any | None:
        """The model of the resource ``reference`` points at, or None when it is not available."""
        if reference is None or not reference.reference:
            return None
        target = context.resolve(reference.reference, contained)
        if target is None:
            return None
        return self._model(target, path)

    # -- patient -------------------------------------------------------------------------
    def _member(
        self, subject: Any, context: _Context, contained: dict[str, Any], kind: str, where: str
    ) -> tuple[str | None, list[Identifier], str]:
        if subject is None:
            raise FhirError("missing_field", f"{kind}.subject is required")
        identifiers: list[Identifier] = []
        raw = []
        patient = self._referenced(subject, context, contained, f"{kind}.subject")
        if patient is not None:
            if patient.get_resource_type() != "Patient":
                raise FhirError("invalid_field", f"{kind}.subject must reference a Patient")
            raw.extend(patient.identifier or [])
        if subject.identifier is not None:
            raw.append(subject.identifier)
        if not raw:
            if subject.reference and patient is None:
                raise FhirError(
                    "unresolved_reference",
                    f"{kind}.subject references a Patient that is neither in the Bundle nor contained, "
                    "and carries no identifier",
                )
            raise FhirError("missing_field", f"{kind}.subject has no Patient identifier")
        for ident in raw:
            if not ident.system or not ident.value:
                continue
            if ident.system in self.settings.member_id_systems and self.index.is_member(str(ident.value)):
                return str(ident.value), identifiers, "matched"
            type_codes = {c.code for c in _codings(ident.type)}
            if "SS" in type_codes or ident.system == "http://hl7.org/fhir/sid/us-ssn":
                continue  # never carry social security numbers
            value = str(ident.value)
            if _SAFE_ID_RE.match(value) and len(ident.system) <= 128:
                identifiers.append(Identifier(system=ident.system, value=value))
        # a Coverage of this patient whose subscriber id / identifier is a roster member id
        patient_refs = {subject.reference} if subject.reference else set()
        if patient is not None and patient.id:
            patient_refs.add(f"Patient/{patient.id}")
        for coverage in context.coverages():
            beneficiary = (coverage.get("beneficiary") or {}).get("reference")
            if beneficiary not in patient_refs:
                continue
            candidates = [coverage.get("subscriberId")] + [
                i.get("value") for i in coverage.get("identifier") or [] if isinstance(i, dict)
            ]
            for candidate in candidates:
                if isinstance(candidate, str) and self.index.is_member(candidate):
                    return candidate, identifiers, "matched"
        member, reason = self.index.lookup(identifiers)
        return member, identifiers, reason

    # -- providers -----------------------------------------------------------------------
    def _npi_of(self, reference: Any, context: _Context, contained: dict[str, Any], path: str) -> str | None:
        if reference is None:
            return None
        if reference.identifier is not None and reference.identifier.system == NPI_SYSTEM:
            return str(reference.identifier.value or "") or None
        target = self._referenced(reference, context, contained, path)
        if target is None:
            return None
        npi = _identifier_value(getattr(target, "identifier", None), {NPI_SYSTEM})
        if npi is None and target.get_resource_type() == "PractitionerRole":
            return self._npi_of(target.practitioner, context, contained, f"{path}.practitioner")
        return npi

    def _checked_npi(self, npi: str | None, path: str, warnings: list[str]) -> str | None:
        if npi is None:
            return None
        if npi_check_digit_ok(npi):
            return npi
        warnings.append(f"{path} is not a valid NPI; ignored")
        return None

    def _facility(self, encounter: Any, context: _Context, contained: dict[str, Any]) -> Facility:
        provider = encounter.serviceProvider
        configured = None
        if provider is not None:
            configured = self.settings.facilities.get(provider.reference or "") or self.settings.facilities.get(
                provider.display or ""
            )
        npi = None
        name = ""
        tin = None
        if provider is not None:
            if provider.identifier is not None and provider.identifier.system == NPI_SYSTEM:
                npi = str(provider.identifier.value or "")
            organization = self._referenced(provider, context, contained, "Encounter.serviceProvider")
            if organization is not None:
                npi = npi or _identifier_value(organization.identifier, {NPI_SYSTEM})
                tin = _identifier_value(organization.identifier, set(TIN_SYSTEMS))
                name = organization.name or ""
            name = name or provider.display or ""
        if npi:
            if not npi_check_digit_ok(npi):
                raise FhirError("invalid_field", "Encounter.serviceProvider NPI fails the NPI check digit")
        elif configured is not None:
            npi = configured.npi
            tin = tin or configured.tin
            name = name or configured.name
        else:
            raise FhirError(
                "unknown_facility",
                "Encounter.serviceProvider has no Organization with an NPI identifier "
                f"({NPI_SYSTEM}) and is not a configured facility",
            )
        name = re.sub(r"[\x00-\x1f\x7f]", " ", name or npi)[:200]
        try:
            return Facility(npi=npi, name=name, tin=tin if tin and re.fullmatch(r"[0-9]{9}", tin) else None)
        except ValidationError as exc:
            raise FhirError("invalid_field", f"Encounter.serviceProvider: {_describe(exc)}") from None

    # -- Encounter -----------------------------------------------------------------------
    def _patient_class(self, encounter: Any) -> PatientClass:
        coding = encounter.class_fhir
        code = (coding.code or "").upper() if coding is not None else ""
        if not code:
            raise FhirError("missing_field", "Encounter.class is required")
        mapped = CLASS_TO_PATIENT_CLASS.get(code)
        if mapped is None:
            raise FhirError(
                "invalid_field", "Encounter.class is not a v3 ActCode encounter class (IMP, EMER, OBSENC, AMB, ...)"
            )
        return mapped

    def _disposition(self, encounter: Any) -> str:
        hospitalization = encounter.hospitalization
        concept = hospitalization.dischargeDisposition if hospitalization is not None else None
        for coding in _codings(concept):
            code = str(coding.code or "")
            if coding.system in NUBC_SYSTEMS or (coding.system is None and code.isdigit()):
                if code.isdigit() and len(code) == 1:
                    code = "0" + code
                return code
            if coding.system == HL7_DISPOSITION_SYSTEM and code in HL7_DISPOSITION_TO_NUBC:
                return HL7_DISPOSITION_TO_NUBC[code]
        if concept is not None:
            raise FhirError(
                "invalid_field",
                "Encounter.hospitalization.dischargeDisposition has no NUBC or HL7 discharge-disposition coding",
            )
        if self.settings.default_disposition is not None:
            return self.settings.default_disposition
        raise FhirError(
            "missing_field", "Encounter.hospitalization.dischargeDisposition is required for a finished encounter"
        )

    def _diagnoses(
        self, encounter: Any, context: _Context, contained: dict[str, Any], warnings: list[str]
    ) -> list[Diagnosis]:
        found: list[tuple[int, str]] = []
        for number, item in enumerate(encounter.diagnosis or []):
            condition = self._referenced(item.condition, context, contained, f"Encounter.diagnosis[{number}]")
            if condition is None:
                warnings.append(f"Encounter.diagnosis[{number}] condition is not in the Bundle; skipped")
                continue
            for coding in _codings(condition.code):
                if coding.system in ICD10_SYSTEMS and coding.code:
                    found.append((item.rank or 99, str(coding.code)))
                    break
        for coding in _codings(encounter.reasonCode):
            if coding.system in ICD10_SYSTEMS and coding.code:
                found.append((100, str(coding.code)))
        result: list[Diagnosis] = []
        seen: set[str] = set()
        for rank, code in sorted(found, key=lambda pair: pair[0]):
            if code in seen:
                continue
            try:
                result.append(Diagnosis(code=code, primary=rank == 1))
            except ValidationError:
                warnings.append("a diagnosis code is not a valid ICD-10-CM code; skipped")
                continue
            seen.add(code)
        return result[:50]

    def _attending(
        self, encounter: Any, context: _Context, contained: dict[str, Any], warnings: list[str]
    ) -> str | None:
        participants = encounter.participant or []
        ranked = sorted(
            participants, key=lambda p: 0 if any(c.code in ("ATND", "PPRF") for c in _codings(p.type)) else 1
        )
        for number, participant in enumerate(ranked):
            npi = self._npi_of(participant.individual, context, contained, f"Encounter.participant[{number}]")
            if npi:
                return self._checked_npi(npi, "Encounter.participant NPI", warnings)
        return None

    def _encounter(
        self, encounter: Any, context: _Context, contained: dict[str, Any], where: str
    ) -> FhirEvent | FhirUnmatched:
        warnings: list[str] = []
        status = encounter.status
        if status not in ADMITTED_STATUSES | CANCELLED_STATUSES | {"finished"}:
            raise FhirError(
                "unsupported_status",
                "Encounter.status must be in-progress, arrived, triaged, onleave, finished, cancelled "
                "or entered-in-error (planned encounters are not events)",
            )
        facility = self._facility(encounter, context, contained)
        member_id, identifiers, reason = self._member(encounter.subject, context, contained, "Encounter", where)
        if member_id is None:
            return FhirUnmatched(
                location=where,
                resource_type="Encounter",
                identifier_systems=tuple(dict.fromkeys(i.system for i in identifiers)),
                reason=reason,
            )
        visit = next((str(i.value) for i in encounter.identifier or [] if i.value), None) or encounter.id
        if not visit:
            raise FhirError("missing_field", "Encounter.identifier or Encounter.id is required")
        encounter_id = _safe(f"{facility.npi}-{visit}")
        if not _SAFE_ID_RE.match(encounter_id):
            raise FhirError("invalid_field", "Encounter.identifier has no usable characters")
        period = encounter.period
        start = self._moment(period.start if period else None, "Encounter.period.start")
        end = self._moment(period.end if period else None, "Encounter.period.end")
        common: dict[str, Any] = {
            "encounter_id": encounter_id,
            "member_id": member_id,
            "facility": facility,
            "patient_class": self._patient_class(encounter),
            "trigger": "FHIR",
            "patient_identifiers": identifiers[:20],
            "attending_npi": self._attending(encounter, context, contained, warnings),
        }
        data: Any
        if status in ADMITTED_STATUSES:
            if start is None:
                raise FhirError("missing_field", "Encounter.period.start is required for an encounter in progress")
            at = start
            data = self._build(
                EncounterAdmitted,
                common,
                admitted_at=start,
                diagnoses=self._diagnoses(encounter, context, contained, warnings),
            )
        elif status == "finished":
            if end is None:
                raise FhirError("missing_field", "Encounter.period.end is required for a finished encounter")
            at = end
            destination = encounter.hospitalization.destination if encounter.hospitalization else None
            data = self._build(
                EncounterDischarged,
                common,
                admitted_at=start,
                discharged_at=end,
                disposition=self._disposition(encounter),
                diagnoses=self._diagnoses(encounter, context, contained, warnings),
                discharged_to_npi=self._checked_npi(
                    self._npi_of(destination, context, contained, "Encounter.hospitalization.destination"),
                    "Encounter.hospitalization.destination NPI",
                    warnings,
                ),
            )
        else:
            updated = self._moment(encounter.meta.lastUpdated if encounter.meta else None, "Encounter.meta.lastUpdated")
            at = updated or end or start
            if at is None:
                raise FhirError("missing_field", "a cancelled Encounter needs meta.lastUpdated or a period")
            data = self._build(EncounterCancelled, common, cancels="admit", cancelled_at=at)
        return self._event(data, member_id, at, encounter_id, f"fhir:{facility.npi}", where, warnings)

    # -- ServiceRequest ------------------------------------------------------------------
    def _category(self, request: Any) -> tuple[ServiceCategory, str | None]:
        taxonomy = None
        category = None
        for coding in [*_codings(request.performerType), *_codings(request.code), *_codings(request.category)]:
            system, code = coding.system or "", str(coding.code or "")
            if system == NUCC_SYSTEM and code:
                taxonomy = taxonomy or code
                category = category or TAXONOMY_TO_CATEGORY.get(code)
            elif system == CTH_SERVICE_CATEGORY_SYSTEM and category is None:
                try:
                    category = ServiceCategory(code)
                except ValueError:
                    raise FhirError(
                        "invalid_field", f"{CTH_SERVICE_CATEGORY_SYSTEM} code is not a service category"
                    ) from None
            elif (system, code) in self.settings.service_categories and category is None:
                category = self.settings.service_categories[(system, code)]
        if category is None:
            raise FhirError(
                "missing_field",
                "ServiceRequest performerType/code/category has no NUCC taxonomy, "
                f"{CTH_SERVICE_CATEGORY_SYSTEM} or configured service code",
            )
        return category, taxonomy

    def _service_request(
        self, request: Any, context: _Context, contained: dict[str, Any], where: str
    ) -> FhirEvent | FhirUnmatched:
        warnings: list[str] = []
        if request.status != "active":
            raise FhirError("unsupported_status", "ServiceRequest.status must be active to request a referral")
        if request.intent not in ORDER_INTENTS:
            raise FhirError("unsupported_status", "ServiceRequest.intent must be an order or a plan")
        member_id, identifiers, reason = self._member(request.subject, context, contained, "ServiceRequest", where)
        if member_id is None:
            return FhirUnmatched(
                location=where,
                resource_type="ServiceRequest",
                identifier_systems=tuple(dict.fromkeys(i.system for i in identifiers)),
                reason=reason,
            )
        reference = next((str(i.value) for i in request.identifier or [] if i.value), None) or request.id
        if not reference:
            raise FhirError("missing_field", "ServiceRequest.identifier or ServiceRequest.id is required")
        referral_id = _safe(f"SR-{reference}")
        category, taxonomy = self._category(request)
        requested_at = self._moment(request.authoredOn, "ServiceRequest.authoredOn")
        if requested_at is None:
            raise FhirError("missing_field", "ServiceRequest.authoredOn is required")
        ordering = self._npi_of(request.requester, context, contained, "ServiceRequest.requester")
        if ordering is None:
            raise FhirError(
                "missing_field", f"ServiceRequest.requester has no Practitioner(Role) with an NPI ({NPI_SYSTEM})"
            )
        if not npi_check_digit_ok(ordering):
            raise FhirError("invalid_field", "ServiceRequest.requester NPI fails the NPI check digit")
        tin = None
        requester = self._referenced(request.requester, context, contained, "ServiceRequest.requester")
        if requester is not None and requester.get_resource_type() == "PractitionerRole":
            organization = self._referenced(requester.organization, context, contained, "PractitionerRole.organization")
            if organization is not None:
                tin = _identifier_value(organization.identifier, set(TIN_SYSTEMS))
        reasons = []
        for coding in _codings(request.reasonCode):
            if coding.system in ICD10_SYSTEMS and coding.code and str(coding.code) not in reasons:
                reasons.append(str(coding.code))
        encounter_id = None
        encounter = self._referenced(request.encounter, context, contained, "ServiceRequest.encounter")
        if encounter is not None and encounter.get_resource_type() == "Encounter":
            try:
                facility = self._facility(encounter, context, contained)
                visit = next((str(i.value) for i in encounter.identifier or [] if i.value), None) or encounter.id
                encounter_id = _safe(f"{facility.npi}-{visit}") if visit else None
            except FhirError:
                warnings.append("ServiceRequest.encounter could not be identified; left out")
        data = self._build(
            ReferralRequested,
            {},
            referral_id=referral_id,
            member_id=member_id,
            service_category=category,
            specialty_taxonomy=taxonomy,
            urgency=request.priority or "routine",
            ordering_npi=ordering,
            ordering_tin=tin if tin and re.fullmatch(r"[0-9]{9}", tin) else None,
            requested_at=requested_at,
            reason_codes=reasons[:10],
            encounter_id=encounter_id,
        )
        return self._event(data, member_id, requested_at, referral_id, f"fhir:{_safe(ordering)}", where, warnings)

    # -- shared --------------------------------------------------------------------------
    def _build(self, model: type[Any], common: dict[str, Any], **fields: Any) -> Any:
        try:
            return model(**common, **fields)
        except ValidationError as exc:
            raise FhirError("invalid_event", _describe(exc)) from None

    def _event(
        self,
        data: Any,
        member_id: str,
        at: datetime,
        correlation: str,
        source: str,
        where: str,
        warnings: list[str],
    ) -> FhirEvent:
        kind = type(data).__name__
        event_id = "fhir-" + hashlib.sha256(f"{correlation}|{kind}|{at.isoformat()}".encode()).hexdigest()[:40]
        try:
            event = new_event(
                data,
                subject=member_id,
                source=source,
                tenant=self.settings.tenant,
                time=at,
                event_id=event_id,
                correlation_id=correlation,
            )
        except ValidationError as exc:
            raise FhirError("invalid_event", _describe(exc)) from None
        return FhirEvent(event=event, location=where, warnings=tuple(warnings))


def iter_fhir_documents(path: Path) -> Iterator[tuple[int, bytes]]:
    """The FHIR documents of a file as ``(line, bytes)``: a ``.json`` file is one document
    (line 1); an ``.ndjson`` file (FHIR bulk data) has one resource per line."""
    if path.suffix.lower() == ".ndjson":
        with path.open("rb") as handle:
            for number, line in enumerate(handle, start=1):
                if line.strip():
                    yield number, line
        return
    yield 1, path.read_bytes()
