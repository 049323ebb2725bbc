"""Closing evidence: which V1C visit or claim line closes which gap (HEDIS TRC/FUH/FMC, CMS TCM).

A piece of evidence closes an open gap when its service date (facility-local date of a
visit's start, or a claim line's ``service_from``) falls inside the gap's inclusive
window and it satisfies the measure's rule below. The rule's name is stored with the
closing event id as the gap's closing evidence.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from typing import Literal

from cth_shared.contracts.events import GapMeasure

from .codesets import matches_prefix
from .measures import MeasureConfig

EvidenceSource = Literal["virtual_visit", "claim"]


@dataclass(frozen=True)
class Evidence:
    """A service that may close gaps; codes only, no free text."""

    evidence_id: str
    source_event_id: str
    source: EvidenceSource
    service_date: date
    procedure_codes: frozenset[str]
    diagnosis_codes: frozenset[str] = frozenset()
    rendering_taxonomy: str | None = None
    medication_reconciliation: bool = False
    interactive_contact: bool = False
    face_to_face_modality: bool = False  # video or in-home V1C visit; claims decide by code


def _has_any(codes: frozenset[str], wanted: frozenset[str]) -> bool:
    return not codes.isdisjoint(wanted)


def is_mental_health_visit(evidence: Evidence, config: MeasureConfig) -> bool:
    """HEDIS FUH numerator (approximated): a behavioral-health visit code, or an E&M
    engagement code billed with a mental-health diagnosis or by a behavioral-health clinician."""
    if _has_any(evidence.procedure_codes, config.mental_health_visit_codes):
        return True
    if not _has_any(evidence.procedure_codes, config.engagement_codes):
        return False
    if any(matches_prefix(code, config.mental_health_diagnosis_prefixes) for code in evidence.diagnosis_codes):
        return True
    taxonomy = evidence.rendering_taxonomy
    return taxonomy is not None and matches_prefix(taxonomy, config.mental_health_taxonomy_prefixes)


def closing_rule(measure: GapMeasure, evidence: Evidence, config: MeasureConfig) -> str | None:
    """The name of the rule by which ``evidence`` satisfies ``measure``, or None.

    * TRC patient engagement, FMC ED follow-up: an engagement code (office/home E&M,
      e-visit, telephone, AWV, TCM).
    * TRC medication reconciliation: 1111F or a TCM code, or a V1C visit flagged as
      having reconciled medications.
    * TCM interactive contact: a V1C visit flagged interactive, or a claim with an
      engagement code (a billed visit implies contact).
    * TCM face-to-face: a face-to-face E&M/TCM code; for V1C visits only video or
      in-home modalities (CMS allows audio-video telehealth for TCM).
    * FUH 7/30: a mental-health follow-up visit (see :func:`is_mental_health_visit`).
    * Readmission watch: never closed by visit evidence (see ``domain.readmission``).
    """
    codes = evidence.procedure_codes
    source = evidence.source
    if measure in (GapMeasure.TRC_PATIENT_ENGAGEMENT, GapMeasure.ED_FOLLOW_UP_7_DAY):
        return f"{source}_engagement_code" if _has_any(codes, config.engagement_codes) else None
    if measure == GapMeasure.TRC_MEDICATION_RECONCILIATION:
        if _has_any(codes, config.medication_reconciliation_codes):
            return f"{source}_medication_reconciliation_code"
        if source == "virtual_visit" and evidence.medication_reconciliation:
            return "virtual_visit_medication_reconciliation_flag"
        return None
    if measure == GapMeasure.TCM_INTERACTIVE_CONTACT:
        if source == "virtual_visit" and evidence.interactive_contact:
            return "virtual_visit_interactive_contact"
        if source == "claim" and _has_any(codes, config.engagement_codes):
            return "claim_engagement_code"
        return None
    if measure == GapMeasure.TCM_FACE_TO_FACE:
        if not _has_any(codes, config.face_to_face_codes):
            return None
        if source == "virtual_visit" and not evidence.face_to_face_modality:
            return None
        return f"{source}_face_to_face_code"
    if measure in (GapMeasure.FUH_7_DAY, GapMeasure.FUH_30_DAY):
        return f"{source}_mental_health_follow_up" if is_mental_health_visit(evidence, config) else None
    return None


def evidence_closes(
    measure: GapMeasure, window_start: date, due_date: date, evidence: Evidence, config: MeasureConfig
) -> str | None:
    """The closing rule when ``evidence`` falls in ``[window_start, due_date]`` and satisfies ``measure``."""
    if not window_start <= evidence.service_date <= due_date:
        return None
    return closing_rule(measure, evidence, config)
