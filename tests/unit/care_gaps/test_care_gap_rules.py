"""Readmissions, priority, ownership, overdue clocks, code sets and gap ids."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta, timezone

import pytest
from care_gaps.domain.clock import advance_event_clock, is_live, overdue_at, wall_clock_applies
from care_gaps.domain.codesets import expand_code_set
from care_gaps.domain.identity import gap_id
from care_gaps.domain.measures import MeasureConfig
from care_gaps.domain.ownership import CareTeam, gap_owner, member_organization
from care_gaps.domain.priority import age_65_date, gap_priority
from care_gaps.domain.readmission import PriorDischarge, index_discharge_for, is_planned
from cth_shared.contracts.events import GapMeasure

CONFIG = MeasureConfig()
EST = timezone(timedelta(hours=-5))
INDEX = PriorDischarge("ENC-1", datetime(2026, 3, 6, 14, 30, tzinfo=EST), "01")


# --------------------------------------------------------------------------- readmission (PCR)
def test_an_admission_on_day_30_after_discharge_is_a_readmission() -> None:
    admitted = datetime(2026, 4, 5, 23, 0, tzinfo=EST)
    assert index_discharge_for("ENC-2", admitted, [INDEX], CONFIG) == INDEX


def test_an_admission_on_day_31_after_discharge_is_not_a_readmission() -> None:
    admitted = datetime(2026, 4, 6, 0, 30, tzinfo=EST)
    assert index_discharge_for("ENC-2", admitted, [INDEX], CONFIG) is None


def test_the_readmission_counts_against_the_last_discharge_before_it() -> None:
    later = PriorDischarge("ENC-3", datetime(2026, 3, 20, 10, 0, tzinfo=EST), "01")
    admitted = datetime(2026, 3, 25, 9, 0, tzinfo=EST)
    assert index_discharge_for("ENC-4", admitted, [INDEX, later], CONFIG) == later


def test_an_admission_before_the_discharge_or_of_the_same_encounter_is_no_readmission() -> None:
    assert index_discharge_for("ENC-2", datetime(2026, 3, 6, 9, 0, tzinfo=EST), [INDEX], CONFIG) is None
    assert index_discharge_for("ENC-1", datetime(2026, 3, 8, 9, 0, tzinfo=EST), [INDEX], CONFIG) is None


def test_planned_readmission_dispositions_81_to_95_are_planned() -> None:
    assert is_planned(PriorDischarge("E", INDEX.discharged_at, "81"), CONFIG)
    assert is_planned(PriorDischarge("E", INDEX.discharged_at, "95"), CONFIG)
    assert not is_planned(INDEX, CONFIG)


# --------------------------------------------------------------------------- priority
def test_priority_adds_risk_age_and_open_gaps_with_the_configured_weights() -> None:
    assert gap_priority(72.5, True, 3, CONFIG) == 7.25 + 2.0 + 1.5
    assert gap_priority(0, False, 0, CONFIG) == 0
    assert gap_priority(10, False, 50, CONFIG) == 1.0 + 0.5 * CONFIG.priority_open_gap_cap


def test_priority_weights_are_configuration() -> None:
    config = MeasureConfig(priority_risk_weight=0, priority_age_65_weight=10, priority_open_gap_weight=0)
    assert gap_priority(99, True, 4, config) == 10


def test_a_member_turns_65_on_the_birthday_and_leap_day_births_on_march_first() -> None:
    assert age_65_date(date(1961, 5, 2)) == date(2026, 5, 2)
    assert age_65_date(date(1960, 2, 29)) == date(2025, 3, 1)


# --------------------------------------------------------------------------- ownership
def test_the_pcp_owns_gaps_then_the_v1c_provider_then_the_care_manager() -> None:
    full = CareTeam("1234567893", "987654321", "1003000126", "555666777", "CM-17")
    assert gap_owner(full).role == "pcp" and gap_owner(full).organization_id == "987654321"
    no_pcp = CareTeam(None, None, "1003000126", "555666777", "CM-17")
    assert gap_owner(no_pcp).role == "v1c_provider" and member_organization(no_pcp) == "555666777"
    assert gap_owner(CareTeam(care_manager_id="CM-17")).role == "care_manager"
    assert gap_owner(CareTeam()).role == "unassigned"


# --------------------------------------------------------------------------- clocks
def test_a_gap_is_overdue_at_local_midnight_after_its_due_date() -> None:
    assert overdue_at(date(2026, 3, 13), EST) == datetime(2026, 3, 14, 5, 0, tzinfo=UTC)


def test_the_event_clock_only_moves_forward_and_never_past_wall_time_plus_skew() -> None:
    wall = datetime(2026, 3, 10, tzinfo=UTC)
    skew = timedelta(hours=1)
    clock = advance_event_clock(None, datetime(2026, 3, 5, tzinfo=UTC), wall, skew)
    assert advance_event_clock(clock, datetime(2026, 3, 4, tzinfo=UTC), wall, skew) == clock
    assert advance_event_clock(clock, datetime(2030, 1, 1, tzinfo=UTC), wall, skew) == wall + skew


def test_the_wall_clock_pauses_for_a_tenant_that_is_replaying_in_both_mode() -> None:
    consumed = datetime(2026, 6, 1, tzinfo=UTC)
    assert not is_live(datetime(2026, 3, 1, tzinfo=UTC), consumed, timedelta(hours=24))
    assert is_live(consumed - timedelta(minutes=5), consumed, timedelta(hours=24))
    assert wall_clock_applies("both", tenant_live=False) is False
    assert wall_clock_applies("both", tenant_live=True) is True
    assert wall_clock_applies("both", tenant_live=None) is True
    assert wall_clock_applies("wall", tenant_live=False) is True
    assert wall_clock_applies("event", tenant_live=True) is False


# --------------------------------------------------------------------------- code sets and ids
def test_code_set_ranges_keep_their_width_and_letters() -> None:
    assert expand_code_set("99202-99204, G0438,H0035-H0036") == {
        "99202", "99203", "99204", "G0438", "H0035", "H0036"}
    with pytest.raises(ValueError):
        expand_code_set("99215-99202")


def test_gap_ids_are_deterministic_per_encounter_and_measure() -> None:
    first = gap_id("SEG-V0001", GapMeasure.FUH_7_DAY)
    assert first == gap_id("SEG-V0001", GapMeasure.FUH_7_DAY)
    assert first != gap_id("SEG-V0001", GapMeasure.FUH_30_DAY)
    assert first != gap_id("SEG-V0002", GapMeasure.FUH_7_DAY)
    assert len(first) <= 64
