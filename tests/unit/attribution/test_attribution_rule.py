"""The pure attribution rule (DESIGN.md section 3), called with plain values."""

from __future__ import annotations

from datetime import date, timedelta
from decimal import Decimal

from attribution.domain import (
    AttributionRules,
    ClaimFact,
    Enrollment,
    MemberFacts,
    Method,
    ProspectivePcp,
    ProviderFacts,
    ServiceLine,
    Step,
    TieBreak,
    attribute,
    has_changed,
    net_claims,
)
from cth_shared.contracts import npi_with_check_digit

AS_OF = date(2026, 3, 1)
RULES = AttributionRules()
PCP_A = npi_with_check_digit("100000001")
PCP_B = npi_with_check_digit("100000002")
SPECIALIST = npi_with_check_digit("200000001")
SURGEON = npi_with_check_digit("200000002")
V1C_GROUP = npi_with_check_digit("300000001")
V1C_CLINICIAN = npi_with_check_digit("300000002")
PROVIDERS = {
    PCP_A: ProviderFacts(tin="111111111", primary_care=True),
    PCP_B: ProviderFacts(tin="222222222", primary_care=True),
    SPECIALIST: ProviderFacts(tin="333333333", primary_care=False),
    SURGEON: ProviderFacts(tin="444444444", primary_care=False),
    V1C_GROUP: ProviderFacts(tin="555555555", primary_care=True),
}
ENROLLED = Enrollment(plan_id="PLAN-1", effective_date=date(2020, 1, 1), care_manager_id="CM-1")
VIRTUAL_FIRST = Enrollment(plan_id="PLAN-VF", effective_date=date(2026, 2, 1), virtual_first=True,
                           v1c_group_npi=V1C_GROUP)


def member(enrollment: Enrollment | None = ENROLLED, pcp: ProspectivePcp | None = None) -> MemberFacts:
    return MemberFacts(member_id="M-1", enrollment=enrollment, prospective_pcp=pcp)


def line(npi: str, day: date, amount: str, code: str = "99213", *, virtual: bool = False, count: int = 1,
         ) -> ServiceLine:
    return ServiceLine(npi=npi, tin=None, service_date=day, procedure_code=code, allowed_amount=Decimal(amount),
                       line_count=count, virtual_visit=virtual)


def test_plurality_of_allowed_charges_picks_the_primary_care_provider_with_the_most_dollars() -> None:
    lines = [line(PCP_A, date(2025, 5, 1), "100"), line(PCP_A, date(2025, 6, 1), "100"),
             line(PCP_B, date(2026, 2, 1), "150")]
    result = attribute(member(), lines, PROVIDERS, RULES, AS_OF)
    assert (result.method, result.pcp_npi, result.pcp_tin) == (Method.PLURALITY_PRIMARY_CARE, PCP_A, "111111111")
    assert result.explanation.reason_code == "plurality_of_allowed_charges"
    assert result.explanation.tie_break is None
    assert [(c.npi, c.allowed_total, c.visit_count) for c in result.explanation.candidates] == [
        (PCP_A, Decimal("200"), 2), (PCP_B, Decimal("150"), 1)]


def test_specialist_primary_care_codes_do_not_count_in_step_one_when_a_pcp_has_any() -> None:
    lines = [line(PCP_A, date(2025, 5, 1), "50"), line(SPECIALIST, date(2025, 6, 1), "900")]
    result = attribute(member(), lines, PROVIDERS, RULES, AS_OF)
    assert (result.method, result.pcp_npi) == (Method.PLURALITY_PRIMARY_CARE, PCP_A)


def test_equal_charges_are_broken_by_the_most_recent_service() -> None:
    lines = [line(PCP_A, date(2025, 5, 1), "100"), line(PCP_B, date(2025, 7, 1), "100")]
    result = attribute(member(), lines, PROVIDERS, RULES, AS_OF)
    assert result.pcp_npi == PCP_B
    assert result.explanation.tie_break is TieBreak.MOST_RECENT_SERVICE


def test_equal_charges_and_last_service_are_broken_by_the_visit_count() -> None:
    lines = [line(PCP_A, date(2025, 7, 1), "100"),
             line(PCP_B, date(2025, 5, 1), "40"), line(PCP_B, date(2025, 7, 1), "60")]
    result = attribute(member(), lines, PROVIDERS, RULES, AS_OF)
    assert result.pcp_npi == PCP_B
    assert result.explanation.tie_break is TieBreak.VISIT_COUNT


def test_a_complete_tie_is_broken_by_the_lowest_npi() -> None:
    lines = [line(PCP_B, date(2025, 7, 1), "100"), line(PCP_A, date(2025, 7, 1), "100")]
    result = attribute(member(), lines, PROVIDERS, RULES, AS_OF)
    assert result.pcp_npi == min(PCP_A, PCP_B)
    assert result.explanation.tie_break is TieBreak.STABLE_ID
    assert attribute(member(), list(reversed(lines)), PROVIDERS, RULES, AS_OF).pcp_npi == result.pcp_npi


def test_step_two_uses_all_providers_when_no_primary_care_service_exists() -> None:
    lines = [line(SPECIALIST, date(2025, 5, 1), "300", code="93000"), line(SURGEON, date(2025, 9, 1), "1200", "27447")]
    result = attribute(member(), lines, PROVIDERS, RULES, AS_OF)
    assert (result.method, result.pcp_npi, result.pcp_tin) == (Method.PLURALITY_ALL_PROVIDERS, SURGEON, "444444444")
    assert result.explanation.reason_code == "plurality_all_providers_no_primary_care"


def test_step_two_can_be_configured_to_primary_care_codes_only_as_in_mssp() -> None:
    rules = AttributionRules(step_two_scope="primary_care_services", rules_version="attr-test")
    lines = [line(SPECIALIST, date(2025, 5, 1), "100", code="99214"), line(SURGEON, date(2025, 9, 1), "1200", "27447")]
    result = attribute(member(), lines, PROVIDERS, rules, AS_OF)
    assert (result.method, result.pcp_npi) == (Method.PLURALITY_ALL_PROVIDERS, SPECIALIST)
    assert result.explanation.rules_version == "attr-test"


def test_member_selected_pcp_overrides_the_plurality() -> None:
    selected = ProspectivePcp(npi=PCP_B, tin=None, selection="member_selected", effective_date=date(2026, 2, 1))
    lines = [line(PCP_A, date(2025, 5, 1), "900")]
    result = attribute(member(pcp=selected), lines, PROVIDERS, RULES, AS_OF)
    assert (result.method, result.pcp_npi, result.pcp_tin) == (Method.MEMBER_SELECTED, PCP_B, "222222222")
    assert result.explanation.reason_code == "member_selected_pcp"
    assert result.explanation.candidates[0].npi == PCP_A, "the plurality stays in the explanation"


def test_a_selection_that_is_not_yet_effective_does_not_override() -> None:
    selected = ProspectivePcp(npi=PCP_B, tin="999999999", selection="payer_assigned", effective_date=date(2026, 4, 1))
    lines = [line(PCP_A, date(2025, 5, 1), "90")]
    assert attribute(member(pcp=selected), lines, PROVIDERS, RULES, AS_OF).pcp_npi == PCP_A
    later = attribute(member(pcp=selected), lines, PROVIDERS, RULES, date(2026, 4, 1))
    assert (later.method, later.pcp_npi, later.pcp_tin) == (Method.PAYER_ASSIGNED, PCP_B, "999999999")


def test_precedence_is_configuration() -> None:
    selected = ProspectivePcp(npi=PCP_B, tin=None, selection="member_selected", effective_date=date(2026, 2, 1))
    plurality_first = AttributionRules(precedence=(Step.PLURALITY_PRIMARY_CARE, Step.PROSPECTIVE))
    lines = [line(PCP_A, date(2025, 5, 1), "90")]
    assert attribute(member(pcp=selected), lines, PROVIDERS, plurality_first, AS_OF).pcp_npi == PCP_A


def test_new_member_in_a_virtual_first_plan_is_attributed_to_the_plans_v1c_group() -> None:
    result = attribute(member(VIRTUAL_FIRST), [], PROVIDERS, RULES, AS_OF)
    assert (result.method, result.pcp_npi, result.pcp_tin) == (Method.VIRTUAL_FIRST_DEFAULT, V1C_GROUP, "555555555")
    assert ("v1c_provider", V1C_GROUP) in [(m.role, m.id) for m in result.care_team]


def test_new_member_in_an_ordinary_plan_is_unattributed_with_a_reason() -> None:
    result = attribute(member(), [], PROVIDERS, RULES, AS_OF)
    assert (result.method, result.pcp_npi) == (Method.UNATTRIBUTED, None)
    assert result.explanation.reason_code == "no_qualifying_services_not_virtual_first"
    assert [(m.role, m.id) for m in result.care_team] == [("care_manager", "CM-1")]


def test_a_v1c_visit_counts_as_a_primary_care_service_by_the_v1c_clinician() -> None:
    lines = [line(V1C_CLINICIAN, date(2026, 2, 10), "110", code="99214", virtual=True),
             line(SPECIALIST, date(2026, 1, 10), "500", code="93000")]
    result = attribute(member(VIRTUAL_FIRST), lines, PROVIDERS, RULES, AS_OF)
    assert (result.method, result.pcp_npi) == (Method.PLURALITY_PRIMARY_CARE, V1C_CLINICIAN)
    roles = {(m.role, m.id) for m in result.care_team}
    assert ("v1c_provider", V1C_CLINICIAN) in roles
    assert ("receiving_provider", SPECIALIST) in roles


def test_disenrollment_ends_attribution() -> None:
    lines = [line(PCP_A, date(2025, 5, 1), "100")]
    ended = Enrollment(plan_id="PLAN-1", effective_date=date(2020, 1, 1), disenrolled_on=date(2026, 2, 15))
    result = attribute(member(ended), lines, PROVIDERS, RULES, AS_OF)
    assert (result.method, result.pcp_npi, result.care_team) == (Method.DISENROLLED, None, ())
    assert attribute(member(ended), lines, PROVIDERS, RULES, date(2026, 2, 14)).pcp_npi == PCP_A


def test_coverage_past_its_termination_date_ends_attribution() -> None:
    lapsed = Enrollment(plan_id="PLAN-1", effective_date=date(2020, 1, 1), termination_date=date(2026, 2, 28))
    lines = [line(PCP_A, date(2025, 5, 1), "100")]
    assert attribute(member(lapsed), lines, PROVIDERS, RULES, date(2026, 2, 28)).pcp_npi == PCP_A
    assert attribute(member(lapsed), lines, PROVIDERS, RULES, AS_OF).method is Method.DISENROLLED


def test_a_visit_on_the_first_day_of_the_lookback_counts() -> None:
    first_day = RULES.lookback_start(AS_OF)
    assert first_day == date(2024, 3, 1)
    result = attribute(member(), [line(PCP_A, first_day, "100")], PROVIDERS, RULES, AS_OF)
    assert result.pcp_npi == PCP_A
    assert result.explanation.lookback_start == first_day


def test_a_visit_one_day_before_the_lookback_does_not_count() -> None:
    outside = RULES.lookback_start(AS_OF) - timedelta(days=1)
    result = attribute(member(), [line(PCP_A, outside, "100")], PROVIDERS, RULES, AS_OF)
    assert (result.method, result.pcp_npi) == (Method.UNATTRIBUTED, None)


def test_the_lookback_window_is_configuration() -> None:
    short = AttributionRules(lookback_months=12)
    lines = [line(PCP_A, date(2025, 2, 28), "100")]
    assert attribute(member(), lines, PROVIDERS, short, AS_OF).pcp_npi is None
    assert attribute(member(), lines, PROVIDERS, RULES, AS_OF).pcp_npi == PCP_A


def claim(claim_id: str, status: str, lines: list[ServiceLine], replaces: str | None = None) -> ClaimFact:
    return ClaimFact(claim_id=claim_id, status=status, replaces_claim_id=replaces, lines=tuple(lines))


def test_a_reversed_claim_no_longer_counts_toward_the_plurality() -> None:
    claims = [
        claim("C1", "paid", [line(PCP_A, date(2025, 5, 1), "300")]),
        claim("C2", "paid", [line(PCP_B, date(2025, 6, 1), "100")]),
        claim("C3", "reversed", [line(PCP_A, date(2025, 5, 1), "-300")], replaces="C1"),
    ]
    assert attribute(member(), net_claims(claims), PROVIDERS, RULES, AS_OF).pcp_npi == PCP_B


def test_an_adjusted_claim_replaces_the_amounts_of_the_claim_it_names() -> None:
    claims = [
        claim("C1", "paid", [line(PCP_A, date(2025, 5, 1), "300")]),
        claim("C2", "paid", [line(PCP_B, date(2025, 6, 1), "100")]),
        claim("C1-A", "adjusted", [line(PCP_A, date(2025, 5, 1), "80")], replaces="C1"),
    ]
    result = attribute(member(), net_claims(claims), PROVIDERS, RULES, AS_OF)
    assert result.pcp_npi == PCP_B
    assert [(c.npi, c.allowed_total) for c in result.explanation.candidates] == [(PCP_B, 100), (PCP_A, 80)]


def test_claim_netting_does_not_depend_on_arrival_order_or_duplicates() -> None:
    original = claim("C1", "paid", [line(PCP_A, date(2025, 5, 1), "300")])
    reversal = claim("C9", "reversed", [line(PCP_A, date(2025, 5, 1), "-300")], replaces="C1")
    denied = claim("C5", "denied", [line(PCP_B, date(2025, 5, 1), "500")])
    assert net_claims([reversal, original, original, denied]) == net_claims([original, reversal]) == []


def test_a_changed_explanation_alone_is_not_a_change_but_a_new_care_team_member_is() -> None:
    before = attribute(member(), [line(PCP_A, date(2025, 5, 1), "100")], PROVIDERS, RULES, AS_OF)
    more_dollars = attribute(member(), [line(PCP_A, date(2025, 5, 1), "100"), line(PCP_A, date(2025, 6, 1), "5")],
                             PROVIDERS, RULES, AS_OF)
    assert not has_changed(before, more_dollars)
    with_specialist = attribute(member(), [line(PCP_A, date(2025, 5, 1), "100"),
                                           line(SPECIALIST, date(2026, 2, 1), "50", code="93000")],
                                PROVIDERS, RULES, AS_OF)
    assert has_changed(before, with_specialist)
    assert has_changed(None, before)
