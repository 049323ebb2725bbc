"""Windows of every measure at their boundaries (HEDIS TRC, FUH, FMC, PCR; CMS TCM)."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta, timezone

import pytest
from care_gaps.domain.calendar import add_business_days, is_business_day
from care_gaps.domain.evidence import Evidence, evidence_closes
from care_gaps.domain.measures import MeasureConfig
from care_gaps.domain.windows import (
    DischargeFacts,
    MemberFacts,
    local_discharge_date,
    plan_discharge_gaps,
)
from cth_shared.contracts.codes import PatientClass
from cth_shared.contracts.events import GapMeasure

CONFIG = MeasureConfig()
EST = timezone(timedelta(hours=-5))
PST = timezone(timedelta(hours=-8))
IST = timezone(timedelta(hours=5, minutes=30))


def discharge(at: datetime, *, patient_class: PatientClass = PatientClass.INPATIENT, disposition: str = "01",
              diagnosis: str | None = "I50.9") -> DischargeFacts:
    return DischargeFacts("ENC-1", patient_class, at, disposition, diagnosis)


def windows(facts: DischargeFacts, risk: float = 10.0) -> dict[GapMeasure, tuple[date, date]]:
    plan = plan_discharge_gaps(facts, MemberFacts(risk_score=risk), CONFIG)
    return {w.measure: (w.window_start, w.due_date) for w in plan.windows}


def visit(on: date, *codes: str, med_rec: bool = False, interactive: bool = True, f2f: bool = True,
          diagnoses: tuple[str, ...] = ()) -> Evidence:
    return Evidence(f"visit:{on}", f"evt-{on}", "virtual_visit", on, frozenset(codes), frozenset(diagnoses),
                    None, med_rec, interactive, f2f)


# --------------------------------------------------------------------------- local discharge date
def test_a_discharge_at_23_59_is_dated_in_its_own_offset_not_in_utc() -> None:
    at = datetime(2026, 3, 6, 23, 59, tzinfo=EST)  # 04:59 UTC on March 7
    assert local_discharge_date(at) == date(2026, 3, 6)
    assert windows(discharge(at))[GapMeasure.TRC_PATIENT_ENGAGEMENT] == (date(2026, 3, 7), date(2026, 4, 5))


def test_a_discharge_at_00_00_in_another_offset_is_dated_on_that_local_day() -> None:
    at = datetime(2026, 3, 7, 0, 0, tzinfo=IST)  # 18:30 UTC on March 6
    assert local_discharge_date(at) == date(2026, 3, 7)
    assert windows(discharge(at))[GapMeasure.TRC_MEDICATION_RECONCILIATION] == (date(2026, 3, 7), date(2026, 4, 6))


def test_the_same_instant_in_two_offsets_can_fall_on_two_local_days() -> None:
    instant = datetime(2026, 3, 7, 7, 30, tzinfo=UTC)
    assert local_discharge_date(instant.astimezone(PST)) == date(2026, 3, 6)
    assert local_discharge_date(instant.astimezone(EST)) == date(2026, 3, 7)


def test_a_naive_discharge_time_is_refused() -> None:
    with pytest.raises(ValueError):
        local_discharge_date(datetime(2026, 3, 6, 12, 0))


# --------------------------------------------------------------------------- TRC
def test_trc_patient_engagement_excludes_the_discharge_day_and_ends_on_day_30() -> None:
    facts = discharge(datetime(2026, 3, 6, 14, 30, tzinfo=EST))
    start, due = windows(facts)[GapMeasure.TRC_PATIENT_ENGAGEMENT]
    assert (start, due) == (date(2026, 3, 7), date(2026, 4, 5))
    def closes(on: date) -> bool:
        return evidence_closes(GapMeasure.TRC_PATIENT_ENGAGEMENT, start, due, visit(on, "99214"), CONFIG) is not None

    assert not closes(date(2026, 3, 6)), "the discharge day is excluded"
    assert closes(date(2026, 3, 7))
    assert closes(date(2026, 4, 5))
    assert not closes(date(2026, 4, 6))


def test_trc_medication_reconciliation_counts_from_the_discharge_day_through_day_30() -> None:
    facts = discharge(datetime(2026, 3, 6, 14, 30, tzinfo=EST))
    start, due = windows(facts)[GapMeasure.TRC_MEDICATION_RECONCILIATION]
    assert (start, due) == (date(2026, 3, 6), date(2026, 4, 5))
    rule = evidence_closes(GapMeasure.TRC_MEDICATION_RECONCILIATION, start, due,
                           visit(date(2026, 3, 6), "99213", med_rec=True), CONFIG)
    assert rule == "virtual_visit_medication_reconciliation_flag"
    assert evidence_closes(GapMeasure.TRC_MEDICATION_RECONCILIATION, start, due,
                           visit(date(2026, 3, 5), "1111F"), CONFIG) is None
    assert evidence_closes(GapMeasure.TRC_MEDICATION_RECONCILIATION, start, due,
                           visit(date(2026, 4, 6), "1111F"), CONFIG) is None


# --------------------------------------------------------------------------- TCM
def test_tcm_contact_after_a_friday_discharge_before_a_monday_federal_holiday_is_due_wednesday() -> None:
    friday = datetime(2026, 9, 4, 16, 0, tzinfo=EST)  # Labor Day is Monday 2026-09-07
    assert not is_business_day(date(2026, 9, 7))
    start, due = windows(discharge(friday))[GapMeasure.TCM_INTERACTIVE_CONTACT]
    assert (start, due) == (date(2026, 9, 5), date(2026, 9, 9))


def test_tcm_contact_after_an_ordinary_friday_discharge_is_due_tuesday() -> None:
    friday = datetime(2026, 3, 6, 16, 0, tzinfo=EST)
    assert windows(discharge(friday))[GapMeasure.TCM_INTERACTIVE_CONTACT][1] == date(2026, 3, 10)


def test_tcm_business_days_skip_an_observed_holiday() -> None:
    # Independence Day 2026 falls on a Saturday and is observed on Friday July 3.
    assert add_business_days(date(2026, 7, 1), 2) == date(2026, 7, 6)


def test_tcm_contact_on_the_last_business_day_closes_and_the_next_day_does_not() -> None:
    start, due = windows(discharge(datetime(2026, 9, 4, 16, 0, tzinfo=EST)))[GapMeasure.TCM_INTERACTIVE_CONTACT]
    assert evidence_closes(GapMeasure.TCM_INTERACTIVE_CONTACT, start, due, visit(date(2026, 9, 9), "99441"), CONFIG)
    assert evidence_closes(GapMeasure.TCM_INTERACTIVE_CONTACT, start, due,
                           visit(date(2026, 9, 10), "99441"), CONFIG) is None


def test_tcm_face_to_face_is_due_in_7_days_for_high_complexity_and_14_otherwise() -> None:
    facts = discharge(datetime(2026, 3, 6, 14, 30, tzinfo=EST))
    assert windows(facts, risk=CONFIG.tcm_high_complexity_risk_threshold)[GapMeasure.TCM_FACE_TO_FACE] == (
        date(2026, 3, 7), date(2026, 3, 13))
    assert windows(facts, risk=CONFIG.tcm_high_complexity_risk_threshold - 0.1)[GapMeasure.TCM_FACE_TO_FACE] == (
        date(2026, 3, 7), date(2026, 3, 20))


def test_tcm_face_to_face_is_not_closed_by_an_audio_only_visit_or_a_phone_code() -> None:
    start, due = date(2026, 3, 7), date(2026, 3, 13)
    assert evidence_closes(GapMeasure.TCM_FACE_TO_FACE, start, due, visit(date(2026, 3, 9), "99214", f2f=False),
                           CONFIG) is None
    assert evidence_closes(GapMeasure.TCM_FACE_TO_FACE, start, due, visit(date(2026, 3, 9), "99441"), CONFIG) is None
    assert evidence_closes(GapMeasure.TCM_FACE_TO_FACE, start, due, visit(date(2026, 3, 13), "99496"), CONFIG)


# --------------------------------------------------------------------------- FUH
def test_a_mental_health_discharge_opens_fuh_7_and_30_day_gaps_that_exclude_the_discharge_day() -> None:
    facts = discharge(datetime(2026, 3, 6, 14, 30, tzinfo=EST), diagnosis="F32.2")
    found = windows(facts)
    assert found[GapMeasure.FUH_7_DAY] == (date(2026, 3, 7), date(2026, 3, 13))
    assert found[GapMeasure.FUH_30_DAY] == (date(2026, 3, 7), date(2026, 4, 5))
    start, due = found[GapMeasure.FUH_7_DAY]
    assert evidence_closes(GapMeasure.FUH_7_DAY, start, due, visit(date(2026, 3, 6), "90832"), CONFIG) is None
    assert evidence_closes(GapMeasure.FUH_7_DAY, start, due, visit(date(2026, 3, 13), "90832"), CONFIG)
    assert evidence_closes(GapMeasure.FUH_7_DAY, start, due, visit(date(2026, 3, 14), "90832"), CONFIG) is None


def test_fuh_needs_a_mental_health_visit_not_any_office_visit() -> None:
    start, due = date(2026, 3, 7), date(2026, 3, 13)
    assert evidence_closes(GapMeasure.FUH_7_DAY, start, due, visit(date(2026, 3, 9), "99213"), CONFIG) is None
    assert evidence_closes(GapMeasure.FUH_7_DAY, start, due,
                           visit(date(2026, 3, 9), "99213", diagnoses=("F32.2",)), CONFIG)


def test_substance_use_and_non_mental_health_discharges_open_no_fuh_gaps() -> None:
    for code in ("F10.20", "I50.9", None):
        found = windows(discharge(datetime(2026, 3, 6, 14, 30, tzinfo=EST), diagnosis=code))
        assert GapMeasure.FUH_7_DAY not in found and GapMeasure.FUH_30_DAY not in found


# --------------------------------------------------------------------------- ED follow-up (FMC)
def test_an_ed_discharge_of_a_high_risk_member_opens_only_a_7_day_follow_up() -> None:
    facts = discharge(datetime(2026, 3, 6, 22, 0, tzinfo=EST), patient_class=PatientClass.EMERGENCY)
    assert windows(facts, risk=CONFIG.ed_high_risk_threshold) == {
        GapMeasure.ED_FOLLOW_UP_7_DAY: (date(2026, 3, 6), date(2026, 3, 13))}
    assert windows(facts, risk=CONFIG.ed_high_risk_threshold - 1) == {}


# --------------------------------------------------------------------------- exclusions
@pytest.mark.parametrize(("disposition", "reason"), [
    ("20", "expired"), ("41", "expired"), ("02", "acute_transfer"), ("66", "acute_transfer"),
    ("82", "acute_transfer"), ("50", "hospice"), ("51", "hospice"),
])
def test_excluded_dispositions_open_no_gaps_and_say_why(disposition: str, reason: str) -> None:
    plan = plan_discharge_gaps(discharge(datetime(2026, 3, 6, 14, 30, tzinfo=EST), disposition=disposition),
                               MemberFacts(risk_score=90), CONFIG)
    assert plan.windows == ()
    assert plan.exclusion == reason


def test_hospice_exclusion_is_configurable() -> None:
    config = MeasureConfig(hospice_dispositions=frozenset())
    plan = plan_discharge_gaps(discharge(datetime(2026, 3, 6, 14, 30, tzinfo=EST), disposition="50"),
                               MemberFacts(), config)
    assert plan.exclusion is None and plan.windows


def test_a_member_terminated_before_the_discharge_gets_no_gaps() -> None:
    plan = plan_discharge_gaps(discharge(datetime(2026, 3, 6, 14, 30, tzinfo=EST)),
                               MemberFacts(termination_date=date(2026, 3, 5)), CONFIG)
    assert plan.exclusion == "disenrolled"


def test_an_inpatient_home_discharge_opens_the_transition_gaps_and_a_readmission_watch() -> None:
    found = windows(discharge(datetime(2026, 3, 6, 14, 30, tzinfo=EST)))
    assert set(found) == {
        GapMeasure.TRC_PATIENT_ENGAGEMENT, GapMeasure.TRC_MEDICATION_RECONCILIATION,
        GapMeasure.TCM_INTERACTIVE_CONTACT, GapMeasure.TCM_FACE_TO_FACE, GapMeasure.READMISSION_WATCH,
    }
    assert found[GapMeasure.READMISSION_WATCH] == (date(2026, 3, 7), date(2026, 4, 5))


def test_a_discharge_announcing_a_planned_readmission_opens_no_watch() -> None:
    found = windows(discharge(datetime(2026, 3, 6, 14, 30, tzinfo=EST), disposition="81"))
    assert GapMeasure.READMISSION_WATCH not in found
    assert GapMeasure.TRC_PATIENT_ENGAGEMENT in found


def test_an_observation_discharge_opens_trc_and_tcm_but_no_readmission_watch() -> None:
    found = windows(discharge(datetime(2026, 3, 6, 14, 30, tzinfo=EST), patient_class=PatientClass.OBSERVATION))
    assert GapMeasure.TRC_PATIENT_ENGAGEMENT in found
    assert GapMeasure.READMISSION_WATCH not in found
