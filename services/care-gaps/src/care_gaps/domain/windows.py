"""Which gaps a discharge opens, and their windows (HEDIS TRC, FUH, FMC, PCR; CMS TCM).

All windows are in the facility's local calendar: the local discharge date is the date
of ``discharged_at`` in its own UTC offset (an HL7 TS or FHIR instant carries the
facility's offset), so a discharge at 23:59-05:00 is that day, not the next UTC day.
Windows are inclusive date ranges ``[window_start, due_date]``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta

from cth_shared.contracts.codes import PatientClass
from cth_shared.contracts.events import GapMeasure

from .calendar import add_business_days
from .codesets import matches_prefix
from .measures import MeasureConfig


@dataclass(frozen=True)
class DischargeFacts:
    """What the rules need to know about one discharge (no PHI beyond codes)."""

    encounter_id: str
    patient_class: PatientClass
    discharged_at: datetime
    disposition: str
    primary_diagnosis: str | None = None


@dataclass(frozen=True)
class MemberFacts:
    """What the rules need to know about the member at discharge."""

    risk_score: float = 0.0
    termination_date: date | None = None


@dataclass(frozen=True)
class GapWindow:
    """One gap to open: its measure and inclusive local-date window."""

    measure: GapMeasure
    window_start: date
    due_date: date


@dataclass(frozen=True)
class DischargePlan:
    """The gaps a discharge opens, or why it opens none (``exclusion``)."""

    windows: tuple[GapWindow, ...]
    exclusion: str | None = None


def local_discharge_date(discharged_at: datetime) -> date:
    """The facility-local calendar date of a discharge (its own UTC offset, never UTC)."""
    if discharged_at.tzinfo is None:
        raise ValueError("discharged_at must carry its UTC offset")
    return discharged_at.date()


def is_mental_health_diagnosis(code: str | None, config: MeasureConfig) -> bool:
    """HEDIS FUH denominator: a principal diagnosis in the mental-illness value set (approximated)."""
    return code is not None and matches_prefix(code, config.mental_health_diagnosis_prefixes)


def exclusion_for(discharge: DischargeFacts, member: MemberFacts, config: MeasureConfig) -> str | None:
    """Why a discharge opens no gaps: expired, acute transfer, hospice, or not enrolled.

    HEDIS TRC/FUH and CMS TCM exclude members who died, were transferred to another
    acute setting (the later discharge counts instead) or entered hospice; HEDIS also
    requires enrollment through the follow-up period.
    """
    if discharge.disposition in config.expired_dispositions:
        return "expired"
    if discharge.disposition in config.acute_transfer_dispositions:
        return "acute_transfer"
    if discharge.disposition in config.hospice_dispositions:
        return "hospice"
    if member.termination_date is not None and member.termination_date < local_discharge_date(discharge.discharged_at):
        return "disenrolled"
    return None


def plan_discharge_gaps(discharge: DischargeFacts, member: MemberFacts, config: MeasureConfig) -> DischargePlan:
    """The gaps one discharge opens under ``config``.

    Inpatient and observation discharges (HEDIS TRC, CMS TCM):
      * TRC patient engagement: discharge day + 1 .. + 30 (the discharge day is excluded);
      * TRC medication reconciliation: discharge day .. + 30;
      * TCM interactive contact: discharge day + 1 .. the 2nd business day after discharge;
      * TCM face-to-face: discharge day + 1 .. + 7 when the risk score reaches the high-
        complexity threshold (99496), else .. + 14 (99495).
    Inpatient discharges with a mental-health principal diagnosis (HEDIS FUH): follow-up
    discharge day + 1 .. + 7 and .. + 30 (visits on the discharge day do not count).
    Inpatient discharges (HEDIS PCR): a readmission watch, discharge day + 1 .. + 30,
    unless the disposition announces a planned readmission (NUBC 81-95).
    Emergency discharges of members at or above the ED risk threshold (HEDIS FMC):
    follow-up on the ED visit day .. + 7 (8 days in all).
    """
    exclusion = exclusion_for(discharge, member, config)
    if exclusion is not None:
        return DischargePlan(windows=(), exclusion=exclusion)
    day = local_discharge_date(discharge.discharged_at)
    after = day + timedelta(days=1)
    windows: list[GapWindow] = []
    if discharge.patient_class in (PatientClass.INPATIENT, PatientClass.OBSERVATION):
        face_to_face_days = (
            config.tcm_face_to_face_high_complexity_days
            if member.risk_score >= config.tcm_high_complexity_risk_threshold
            else config.tcm_face_to_face_moderate_complexity_days
        )
        windows += [
            GapWindow(GapMeasure.TRC_PATIENT_ENGAGEMENT, after, day + timedelta(days=config.trc_engagement_days)),
            GapWindow(GapMeasure.TRC_MEDICATION_RECONCILIATION, day,
                      day + timedelta(days=config.trc_medication_reconciliation_days)),
            GapWindow(GapMeasure.TCM_INTERACTIVE_CONTACT, after,
                      add_business_days(day, config.tcm_interactive_contact_business_days)),
            GapWindow(GapMeasure.TCM_FACE_TO_FACE, after, day + timedelta(days=face_to_face_days)),
        ]
    if discharge.patient_class == PatientClass.INPATIENT:
        if is_mental_health_diagnosis(discharge.primary_diagnosis, config):
            windows += [
                GapWindow(GapMeasure.FUH_7_DAY, after, day + timedelta(days=config.fuh_short_days)),
                GapWindow(GapMeasure.FUH_30_DAY, after, day + timedelta(days=config.fuh_long_days)),
            ]
        if discharge.disposition not in config.planned_readmission_dispositions:
            windows.append(GapWindow(GapMeasure.READMISSION_WATCH, after,
                                     day + timedelta(days=config.readmission_window_days)))
    if discharge.patient_class == PatientClass.EMERGENCY and member.risk_score >= config.ed_high_risk_threshold:
        windows.append(GapWindow(GapMeasure.ED_FOLLOW_UP_7_DAY, day, day + timedelta(days=config.ed_follow_up_days)))
    return DischargePlan(windows=tuple(windows))
