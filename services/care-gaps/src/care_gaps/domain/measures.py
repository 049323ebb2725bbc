"""The measure configuration: windows, exclusions, code sets and weights, under one version.

Every number and code set the rules use lives in :class:`MeasureConfig`; the service
builds it from its settings (``care_gaps.settings``) and stamps ``version`` on every
produced ``care_gap.*`` event, so a gap always says which rules opened it. The
defaults approximate these specifications (a payer tunes them by configuration):

* HEDIS TRC (Transitions of Care): patient engagement within 30 days after discharge,
  discharge day excluded; medication reconciliation on the discharge day through day 30.
* CMS TCM (Transitional Care Management, CPT 99495/99496): interactive contact within
  2 business days after discharge; face-to-face visit within 7 days (high complexity,
  99496) or 14 days (moderate complexity, 99495).
* HEDIS FUH (Follow-Up After Hospitalization for Mental Illness): follow-up within 7
  and within 30 days after a mental-health discharge; visits on the discharge day do
  not count.
* HEDIS FMC (Follow-Up After ED Visit for People With Multiple High-Risk Chronic
  Conditions): follow-up within 7 days of an ED visit (8 days including the visit day).
* HEDIS PCR (Plan All-Cause Readmissions): unplanned acute readmission within 30 days
  of the index discharge.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from cth_shared.contracts.events import GapMeasure

from .codesets import expand_code_set

# HEDIS TRC patient engagement / FMC follow-up: office, home, e-visit, telephone, AWV, TCM.
ENGAGEMENT_CODES = "99202-99215,99341-99350,99421-99423,99441-99443,G0438,G0439,99495,99496"
# HEDIS TRC medication reconciliation: CPT II 1111F, or a TCM visit (99495/99496).
MEDICATION_RECONCILIATION_CODES = "1111F,99495,99496"
# CMS TCM face-to-face: office/home E&M or the TCM code itself (not phone or e-visits).
FACE_TO_FACE_CODES = "99202-99215,99341-99350,99495,99496"
# HEDIS FUH visit value sets, approximated: psychiatric diagnostic evaluation, psychotherapy,
# crisis and family psychotherapy, group therapy, and behavioral-health HCPCS services.
# These codes count on their own; E&M engagement codes count when the visit carries a
# mental-health diagnosis or the rendering provider has a behavioral-health taxonomy.
MENTAL_HEALTH_VISIT_CODES = (
    "90791,90792,90832-90834,90836-90840,90845-90847,90849,90853,90875,90876,"
    "H0002,H0004,H0031,H0034-H0037,H0039,H0040,H2000,H2010,H2011,H2013-H2020"
)
# HEDIS FUH "Mental Illness" value set approximated by ICD-10-CM F-chapter prefixes:
# schizophrenia/psychotic (F20-F29), mood (F30-F39), anxiety/stress/somatoform (F40-F48),
# eating/sleep/sexual (F50-F53, F59), personality (F60-F69), pervasive developmental and
# childhood-onset (F84, F88-F98), unspecified (F99). Organic (F01-F09), substance use
# (F10-F19, measured by FUA) and intellectual disabilities (F70-F79) are left out.
MENTAL_HEALTH_DIAGNOSIS_PREFIXES = (
    "F2", "F3", "F40", "F41", "F42", "F43", "F44", "F45", "F48", "F50", "F51", "F52", "F53", "F59",
    "F6", "F84", "F88", "F89", "F9",
)
# NUCC taxonomies of behavioral-health clinicians (psychiatry, psychology, counseling,
# clinical social work, marriage/family therapy, psychiatric NPs and CNSs).
MENTAL_HEALTH_TAXONOMY_PREFIXES = ("2084P", "101Y", "103T", "1041C", "106H", "363LP0808X", "364SP0808X")


@dataclass(frozen=True)
class MeasureConfig:
    """One version of the transition-of-care rules. Frozen: a new version is a new object."""

    version: str = "tocm-2026.1"
    # windows (days relative to the local discharge date)
    trc_engagement_days: int = 30
    trc_medication_reconciliation_days: int = 30
    tcm_interactive_contact_business_days: int = 2
    tcm_face_to_face_high_complexity_days: int = 7
    tcm_face_to_face_moderate_complexity_days: int = 14
    tcm_high_complexity_risk_threshold: float = 60.0
    fuh_short_days: int = 7
    fuh_long_days: int = 30
    ed_follow_up_days: int = 7
    ed_high_risk_threshold: float = 60.0
    readmission_window_days: int = 30
    # exclusions (NUBC dispositions)
    expired_dispositions: frozenset[str] = frozenset({"20", "40", "41", "42"})
    acute_transfer_dispositions: frozenset[str] = frozenset({"02", "05", "43", "66", "82", "85", "88", "94"})
    hospice_dispositions: frozenset[str] = frozenset({"50", "51"})
    planned_readmission_dispositions: frozenset[str] = frozenset(str(n) for n in range(81, 96))
    # code sets
    engagement_codes: frozenset[str] = field(default_factory=lambda: expand_code_set(ENGAGEMENT_CODES))
    medication_reconciliation_codes: frozenset[str] = field(
        default_factory=lambda: expand_code_set(MEDICATION_RECONCILIATION_CODES))
    face_to_face_codes: frozenset[str] = field(default_factory=lambda: expand_code_set(FACE_TO_FACE_CODES))
    mental_health_visit_codes: frozenset[str] = field(
        default_factory=lambda: expand_code_set(MENTAL_HEALTH_VISIT_CODES))
    mental_health_diagnosis_prefixes: tuple[str, ...] = MENTAL_HEALTH_DIAGNOSIS_PREFIXES
    mental_health_taxonomy_prefixes: tuple[str, ...] = MENTAL_HEALTH_TAXONOMY_PREFIXES
    # priority weights (see domain.priority)
    priority_risk_weight: float = 1.0
    priority_age_65_weight: float = 2.0
    priority_open_gap_weight: float = 0.5
    priority_open_gap_cap: int = 10

    @property
    def measures(self) -> tuple[GapMeasure, ...]:
        """Every measure these rules can open."""
        return tuple(GapMeasure)
