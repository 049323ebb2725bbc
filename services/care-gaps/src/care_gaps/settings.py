"""care-gaps settings: the stack plus the measure configuration (every window and weight).

Environment variables use the field names in upper case (``TRC_ENGAGEMENT_DAYS=30``).
Code sets use the notation of ``domain.codesets`` (``"99202-99215,G0438"``); disposition
sets are comma-separated NUBC codes. ``MEASURES_VERSION`` names the rule version stamped
on every produced event: change it whenever a rule value changes.
"""

from __future__ import annotations

from cth_shared.settings import ServiceSettings
from pydantic import Field

from .domain import measures as m
from .domain.clock import ClockMode
from .domain.codesets import expand_code_set

_DEFAULTS = m.MeasureConfig()


def _codes(values: frozenset[str]) -> str:
    return ",".join(sorted(values))


class CareGapsSettings(ServiceSettings):
    """Measure configuration (defaults: HEDIS TRC/FUH/FMC/PCR, CMS TCM) and overdue clocks."""

    measures_version: str = Field(_DEFAULTS.version, max_length=32)
    trc_engagement_days: int = Field(_DEFAULTS.trc_engagement_days, ge=1, le=365)
    trc_medication_reconciliation_days: int = Field(_DEFAULTS.trc_medication_reconciliation_days, ge=0, le=365)
    tcm_interactive_contact_business_days: int = Field(_DEFAULTS.tcm_interactive_contact_business_days, ge=1, le=30)
    tcm_face_to_face_high_complexity_days: int = Field(_DEFAULTS.tcm_face_to_face_high_complexity_days, ge=1)
    tcm_face_to_face_moderate_complexity_days: int = Field(_DEFAULTS.tcm_face_to_face_moderate_complexity_days, ge=1)
    tcm_high_complexity_risk_threshold: float = Field(_DEFAULTS.tcm_high_complexity_risk_threshold, ge=0, le=100)
    fuh_short_days: int = Field(_DEFAULTS.fuh_short_days, ge=1)
    fuh_long_days: int = Field(_DEFAULTS.fuh_long_days, ge=1)
    ed_follow_up_days: int = Field(_DEFAULTS.ed_follow_up_days, ge=1)
    ed_high_risk_threshold: float = Field(_DEFAULTS.ed_high_risk_threshold, ge=0, le=100)
    readmission_window_days: int = Field(_DEFAULTS.readmission_window_days, ge=1)
    expired_dispositions: str = _codes(_DEFAULTS.expired_dispositions)
    acute_transfer_dispositions: str = _codes(_DEFAULTS.acute_transfer_dispositions)
    hospice_dispositions: str = Field(_codes(_DEFAULTS.hospice_dispositions),
                                      description="Empty to keep gaps for hospice discharges")
    planned_readmission_dispositions: str = _codes(_DEFAULTS.planned_readmission_dispositions)
    engagement_codes: str = m.ENGAGEMENT_CODES
    medication_reconciliation_codes: str = m.MEDICATION_RECONCILIATION_CODES
    face_to_face_codes: str = m.FACE_TO_FACE_CODES
    mental_health_visit_codes: str = m.MENTAL_HEALTH_VISIT_CODES
    mental_health_diagnosis_prefixes: str = ",".join(m.MENTAL_HEALTH_DIAGNOSIS_PREFIXES)
    mental_health_taxonomy_prefixes: str = ",".join(m.MENTAL_HEALTH_TAXONOMY_PREFIXES)
    priority_risk_weight: float = Field(_DEFAULTS.priority_risk_weight, ge=0)
    priority_age_65_weight: float = Field(_DEFAULTS.priority_age_65_weight, ge=0)
    priority_open_gap_weight: float = Field(_DEFAULTS.priority_open_gap_weight, ge=0)
    priority_open_gap_cap: int = Field(_DEFAULTS.priority_open_gap_cap, ge=0)

    clock: ClockMode = Field("both", description="Overdue clock: event | wall | both (see domain.clock)")
    overdue_sweep_interval_s: float = Field(60.0, gt=0, description="Wall-clock overdue sweep period")
    replay_lag_hours: float = Field(24.0, gt=0, description="Events older than this when consumed are a replay")
    max_future_skew_minutes: float = Field(60.0, ge=0, description="Event clock never runs ahead of wall + this")

    def measure_config(self) -> m.MeasureConfig:
        """The frozen rule set these settings describe."""

        def split(value: str) -> tuple[str, ...]:
            return tuple(part.strip() for part in value.split(",") if part.strip())

        return m.MeasureConfig(
            version=self.measures_version,
            trc_engagement_days=self.trc_engagement_days,
            trc_medication_reconciliation_days=self.trc_medication_reconciliation_days,
            tcm_interactive_contact_business_days=self.tcm_interactive_contact_business_days,
            tcm_face_to_face_high_complexity_days=self.tcm_face_to_face_high_complexity_days,
            tcm_face_to_face_moderate_complexity_days=self.tcm_face_to_face_moderate_complexity_days,
            tcm_high_complexity_risk_threshold=self.tcm_high_complexity_risk_threshold,
            fuh_short_days=self.fuh_short_days,
            fuh_long_days=self.fuh_long_days,
            ed_follow_up_days=self.ed_follow_up_days,
            ed_high_risk_threshold=self.ed_high_risk_threshold,
            readmission_window_days=self.readmission_window_days,
            expired_dispositions=frozenset(split(self.expired_dispositions)),
            acute_transfer_dispositions=frozenset(split(self.acute_transfer_dispositions)),
            hospice_dispositions=frozenset(split(self.hospice_dispositions)),
            planned_readmission_dispositions=frozenset(split(self.planned_readmission_dispositions)),
            engagement_codes=expand_code_set(self.engagement_codes),
            medication_reconciliation_codes=expand_code_set(self.medication_reconciliation_codes),
            face_to_face_codes=expand_code_set(self.face_to_face_codes),
            mental_health_visit_codes=expand_code_set(self.mental_health_visit_codes),
            mental_health_diagnosis_prefixes=split(self.mental_health_diagnosis_prefixes),
            mental_health_taxonomy_prefixes=split(self.mental_health_taxonomy_prefixes),
            priority_risk_weight=self.priority_risk_weight,
            priority_age_65_weight=self.priority_age_65_weight,
            priority_open_gap_weight=self.priority_open_gap_weight,
            priority_open_gap_cap=self.priority_open_gap_cap,
        )
