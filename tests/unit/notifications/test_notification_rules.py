"""Alert rules: kinds, readmissions, recipients by role, organization subscriptions."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from notifications.domain.rules import (
    CareTeamEntry,
    EventParties,
    Kind,
    Subscription,
    encounter_alert_kind,
    plan_alerts,
    rule_set,
)

RULES = rule_set("alerts-2026.1")
TEAM = (
    CareTeamEntry("pcp", "1234567893", "987654321"),
    CareTeamEntry("v1c_provider", "1003000126", "555666777"),
    CareTeamEntry("care_manager", "CM-17"),
)
ADMITTED = datetime(2026, 3, 2, 13, 15, tzinfo=UTC)


def test_an_a08_update_never_raises_an_alert() -> None:
    assert encounter_alert_kind("encounter.admitted", "inpatient", "A08") is None
    assert encounter_alert_kind("encounter.discharged", "inpatient", "A08") is None


def test_an_emergency_admission_is_an_ed_visit() -> None:
    assert encounter_alert_kind("encounter.admitted", "emergency", "A04") is Kind.ED_VISIT


def test_an_admission_29_days_after_a_discharge_is_a_readmission() -> None:
    kind = encounter_alert_kind("encounter.admitted", "inpatient", "A01", admitted_at=ADMITTED,
                                previous_discharges=[ADMITTED - timedelta(days=29)])
    assert kind is Kind.READMISSION


def test_an_admission_31_days_after_a_discharge_is_a_plain_admit() -> None:
    kind = encounter_alert_kind("encounter.admitted", "inpatient", "A01", admitted_at=ADMITTED,
                                previous_discharges=[ADMITTED - timedelta(days=31)])
    assert kind is Kind.ADMIT


def test_a_discharge_after_the_admission_does_not_make_it_a_readmission() -> None:
    kind = encounter_alert_kind("encounter.admitted", "inpatient", "A01", admitted_at=ADMITTED,
                                previous_discharges=[ADMITTED + timedelta(days=2)])
    assert kind is Kind.ADMIT


def test_an_admit_alerts_the_pcp_the_v1c_provider_and_the_care_manager_with_high_priority() -> None:
    planned = plan_alerts(RULES, Kind.ADMIT, "inpatient", TEAM, EventParties(), [], "payer")
    assert [(a.recipient.role, a.recipient.recipient_id, a.recipient.organization_id) for a in planned] == [
        ("pcp", "1234567893", "987654321"),
        ("v1c_provider", "1003000126", "555666777"),
        ("care_manager", "CM-17", "payer"),
    ]
    assert {a.priority for a in planned} == {"high"}


def test_an_ed_visit_is_urgent_for_the_pcp_and_v1c_provider_only() -> None:
    planned = plan_alerts(RULES, Kind.ED_VISIT, "emergency", TEAM, EventParties(), [], "payer")
    assert [a.recipient.role for a in planned] == ["pcp", "v1c_provider"]
    assert {a.priority for a in planned} == {"urgent"}


def test_a_discharge_also_alerts_the_provider_the_member_is_discharged_to() -> None:
    planned = plan_alerts(RULES, Kind.DISCHARGE, "inpatient", TEAM, EventParties(receiving_npi="1982736450"), [],
                          "payer")
    assert ("receiving_provider", "1982736450") in [(a.recipient.role, a.recipient.recipient_id) for a in planned]


def test_a_gap_goes_to_its_owner_and_an_unassigned_gap_to_the_care_manager() -> None:
    owned = plan_alerts(RULES, Kind.GAP_OPENED, None, TEAM, EventParties(gap_owner=("pcp", "1234567893")), [], "payer")
    assert [(a.recipient.role, a.recipient.organization_id) for a in owned] == [("pcp", "987654321")]
    unassigned = plan_alerts(RULES, Kind.GAP_OVERDUE, None, TEAM, EventParties(gap_owner=("unassigned", None)), [],
                             "payer")
    assert [(a.recipient.recipient_id, a.priority) for a in unassigned] == [("CM-17", "high")]


def test_a_routed_referral_alerts_the_ordering_provider_and_the_pcp_once_when_they_are_the_same() -> None:
    planned = plan_alerts(RULES, Kind.REFERRAL_ROUTED, None, TEAM, EventParties(ordering_npi="1234567893"), [],
                          "payer")
    assert [a.recipient.recipient_id for a in planned] == ["1234567893"]


def test_an_organization_subscribed_to_admits_gets_admits_and_readmissions_of_its_attributed_members() -> None:
    subscription = Subscription("S-1", "987654321", kinds=frozenset({"admit"}))
    for kind in (Kind.ADMIT, Kind.READMISSION):
        planned = plan_alerts(RULES, kind, "inpatient", TEAM, EventParties(), [subscription], "payer")
        assert planned[-1].recipient.role == "organization"
        assert planned[-1].recipient.organization_id == "987654321"
    discharge = plan_alerts(RULES, Kind.DISCHARGE, "inpatient", TEAM, EventParties(), [subscription], "payer")
    assert all(a.recipient.role != "organization" for a in discharge)


@pytest.mark.parametrize(("organization", "patient_class", "expected"), [
    ("987654321", "inpatient", True),
    ("987654321", "emergency", False),  # filtered out by setting
    ("111222333", "inpatient", False),  # member not attributed to that TIN
])
def test_organization_subscriptions_filter_by_attribution_and_setting(
    organization: str, patient_class: str, expected: bool
) -> None:
    subscription = Subscription("S-1", organization, patient_classes=frozenset({"inpatient", "observation"}))
    planned = plan_alerts(RULES, Kind.ADMIT, patient_class, TEAM, EventParties(), [subscription], "payer")
    assert any(a.recipient.role == "organization" for a in planned) is expected


def test_an_unknown_rules_version_fails_loudly() -> None:
    with pytest.raises(ValueError, match="unknown alert rules version"):
        rule_set("alerts-1999")


def test_a_clinicians_alert_goes_to_their_organizations_care_team_endpoints_only() -> None:
    from notifications.domain.rules import Recipient, delivery_subscriptions

    pcp = Recipient("1234567893", "pcp", "987654321")
    subscriptions = [
        Subscription("S-all", "987654321", audience="care_team", channel="webhook"),
        Subscription("S-other-doc", "987654321", audience="care_team", channel="webhook", recipient_id="1003000126"),
        Subscription("S-org", "987654321", audience="organization", channel="webhook"),
        Subscription("S-elsewhere", "555666777", audience="care_team", channel="webhook"),
        Subscription("S-fhir", "987654321", audience="care_team", channel="fhir_message"),
        Subscription("S-inbox", "987654321", audience="care_team", channel="inbox"),
    ]
    chosen = delivery_subscriptions(pcp, Kind.ADMIT, "inpatient", subscriptions)
    assert [s.subscription_id for s in chosen] == ["S-all", "S-fhir"]
    gap = delivery_subscriptions(pcp, Kind.GAP_OPENED, None, subscriptions)
    assert [s.subscription_id for s in gap] == ["S-all"], "FHIR message subscriptions carry encounter alerts only"
