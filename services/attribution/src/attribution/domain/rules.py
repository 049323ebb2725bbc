"""The attribution rule: who is responsible for a member on a date, and why.

Pure Python over plain values (no I/O). Implements DESIGN.md section 3 "attribution",
modelled on CMS Medicare Shared Savings Program (MSSP) assignment (42 CFR 425.402):

1. prospective alignment: a member-selected PCP (MSSP "voluntary alignment",
   42 CFR 425.402(e)) or a payer-assigned PCP, effective from its effective date;
2. step one: plurality of allowed charges for primary-care services (E&M office, home,
   TCM, AWV, CCM, V1C visits) furnished by primary-care providers in the lookback
   (42 CFR 425.402(b)(3)(i));
3. step two: when no primary-care service by a primary-care provider exists in the
   lookback, plurality of allowed charges over all providers (42 CFR 425.402(b)(3)(ii),
   widened by configuration to all services);
4. new members with no history: the plan's V1C group when the plan is virtual-first,
   else unattributed with a reason.

Ties on allowed charges are broken by the most recent service, then the visit count,
then the stable id (lowest NPI), and the explanation names the tie-break used.
Disenrollment ends attribution. The code list, windows and precedence are versioned
configuration (:class:`AttributionRules`).
"""

from __future__ import annotations

import calendar
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date, timedelta
from decimal import Decimal
from enum import StrEnum

# --------------------------------------------------------------------------- configuration

#: E&M office/outpatient visits (new 99202-99205, established 99211-99215).
OFFICE_EM_CODES = frozenset({f"{c}" for c in range(99202, 99206)} | {f"{c}" for c in range(99211, 99216)})
#: Home or residence E&M visits 99341-99350.
HOME_EM_CODES = frozenset(str(c) for c in range(99341, 99351))
#: Transitional care management (CMS TCM) 99495/99496.
TCM_CODES = frozenset({"99495", "99496"})
#: Medicare annual wellness visit G0438 (initial) / G0439 (subsequent).
AWV_CODES = frozenset({"G0438", "G0439"})
#: Chronic care management 99490.
CCM_CODES = frozenset({"99490"})
DEFAULT_PRIMARY_CARE_CODES = OFFICE_EM_CODES | HOME_EM_CODES | TCM_CODES | AWV_CODES | CCM_CODES


class Step(StrEnum):
    """The precedence steps, in the order configuration lists them."""

    PROSPECTIVE = "prospective"
    PLURALITY_PRIMARY_CARE = "plurality_primary_care"
    PLURALITY_ALL_PROVIDERS = "plurality_all_providers"
    VIRTUAL_FIRST_DEFAULT = "virtual_first_default"


class Method(StrEnum):
    """Mirrors ``AttributionMethod`` of the contracts (kept here so the domain has no imports)."""

    MEMBER_SELECTED = "member_selected"
    PAYER_ASSIGNED = "payer_assigned"
    PLURALITY_PRIMARY_CARE = "plurality_primary_care"
    PLURALITY_ALL_PROVIDERS = "plurality_all_providers"
    VIRTUAL_FIRST_DEFAULT = "virtual_first_default"
    UNATTRIBUTED = "unattributed"
    DISENROLLED = "disenrolled"


class TieBreak(StrEnum):
    MOST_RECENT_SERVICE = "most_recent_service"
    VISIT_COUNT = "visit_count"
    STABLE_ID = "stable_id"


@dataclass(frozen=True)
class AttributionRules:
    """Versioned rule configuration. Change ``rules_version`` whenever a value changes."""

    rules_version: str = "attr-2026.1"
    lookback_months: int = 24
    primary_care_codes: frozenset[str] = DEFAULT_PRIMARY_CARE_CODES
    #: ``all_services``: step two weighs every service line of any provider (DESIGN.md);
    #: ``primary_care_services``: MSSP step two (primary-care codes by any provider).
    step_two_scope: str = "all_services"
    precedence: tuple[Step, ...] = (
        Step.PROSPECTIVE, Step.PLURALITY_PRIMARY_CARE, Step.PLURALITY_ALL_PROVIDERS, Step.VIRTUAL_FIRST_DEFAULT,
    )
    receiving_provider_days: int = 90
    max_receiving_providers: int = 10
    max_candidates_explained: int = 20

    def lookback_start(self, as_of: date) -> date:
        """First day inside the lookback: ``as_of`` minus ``lookback_months`` (inclusive)."""
        return add_months(as_of, -self.lookback_months)


def add_months(day: date, months: int) -> date:
    """Calendar month arithmetic, clamping to the month's last day (2024-02-29 - 12 months = 2023-02-28)."""
    month_index = day.year * 12 + day.month - 1 + months
    year, month = divmod(month_index, 12)
    last = calendar.monthrange(year, month + 1)[1]
    return date(year, month + 1, min(day.day, last))


# --------------------------------------------------------------------------- inputs


@dataclass(frozen=True)
class Enrollment:
    """What enrollment says about a member (no PHI: ids, dates and flags only)."""

    plan_id: str
    effective_date: date
    termination_date: date | None = None
    virtual_first: bool = False
    v1c_group_npi: str | None = None
    care_manager_id: str | None = None
    disenrolled_on: date | None = None


@dataclass(frozen=True)
class ProspectivePcp:
    """A member-selected or payer-assigned PCP (member.pcp_selected / selected_pcp_npi)."""

    npi: str
    tin: str | None
    selection: str  # "member_selected" | "payer_assigned"
    effective_date: date


@dataclass(frozen=True)
class ServiceLine:
    """A netted service line: one provider, one day, one code (claims net of reversals; V1C visits).

    ``allowed_amount`` and ``line_count`` are already netted: a fully reversed service
    has ``line_count == 0`` and does not count as a visit.
    """

    npi: str
    tin: str | None
    service_date: date
    procedure_code: str
    allowed_amount: Decimal
    line_count: int = 1
    virtual_visit: bool = False


@dataclass(frozen=True)
class ProviderFacts:
    """What the provider directory says about an NPI."""

    tin: str | None
    primary_care: bool  # directory role pcp or v1c


@dataclass(frozen=True)
class MemberFacts:
    member_id: str
    enrollment: Enrollment | None
    prospective_pcp: ProspectivePcp | None = None


# --------------------------------------------------------------------------- outputs


@dataclass(frozen=True)
class Candidate:
    npi: str
    tin: str | None
    allowed_total: Decimal
    visit_count: int
    last_service_date: date | None


@dataclass(frozen=True)
class CareTeamEntry:
    role: str  # pcp | v1c_provider | care_manager | receiving_provider
    id: str
    tin: str | None = None


@dataclass(frozen=True)
class Explanation:
    reason_code: str
    rules_version: str
    tie_break: TieBreak | None = None
    lookback_start: date | None = None
    lookback_end: date | None = None
    candidates: tuple[Candidate, ...] = ()


@dataclass(frozen=True)
class Attribution:
    """The result: who, how, the care team, and why."""

    method: Method
    pcp_npi: str | None
    pcp_tin: str | None
    care_team: tuple[CareTeamEntry, ...]
    explanation: Explanation = field(compare=False)

    @property
    def outcome(self) -> tuple[object, ...]:
        """What counts as "the result" for change detection (the explanation does not)."""
        return (self.method, self.pcp_npi, self.pcp_tin, self.care_team)


# --------------------------------------------------------------------------- claims netting


@dataclass(frozen=True)
class ClaimFact:
    """An adjudicated claim as attribution needs it (claim.adjudicated)."""

    claim_id: str
    status: str  # paid | denied | reversed | adjusted
    replaces_claim_id: str | None
    lines: tuple[ServiceLine, ...]


def net_claims(claims: Iterable[ClaimFact]) -> list[ServiceLine]:
    """Service lines that count after reversals and adjustments (X12 835 CLP02 claim status).

    A ``reversed`` claim voids the claim it names and contributes nothing itself (whether
    the payer sends the reversal with negated or copied lines); an ``adjusted`` claim
    voids the claim it names and its own lines replace them; ``denied`` claims count
    nothing. The result does not depend on arrival order: a reversal seen before the
    claim it voids still voids it. A claim id seen twice counts once (the later copy).
    """
    by_id: dict[str, ClaimFact] = {}
    for claim in claims:
        by_id[claim.claim_id] = claim
    voided = {
        c.replaces_claim_id for c in by_id.values() if c.replaces_claim_id and c.status in ("reversed", "adjusted")
    }
    lines: list[ServiceLine] = []
    for claim in by_id.values():
        if claim.claim_id in voided or claim.status in ("denied", "reversed"):
            continue
        lines.extend(claim.lines)
    return lines


def claim_contribution(claim: ClaimFact, voided: bool) -> tuple[ServiceLine, ...]:
    """The lines one stored claim adds to the member's netted aggregates (see :func:`net_claims`)."""
    if voided or claim.status in ("denied", "reversed"):
        return ()
    return claim.lines


# --------------------------------------------------------------------------- the rule


def _candidates(lines: Sequence[ServiceLine], providers: dict[str, ProviderFacts]) -> list[Candidate]:
    totals: dict[str, Decimal] = {}
    days: dict[str, set[date]] = {}
    last: dict[str, date] = {}
    tin_by_date: dict[str, tuple[date, str | None]] = {}
    for line in lines:
        totals[line.npi] = totals.get(line.npi, Decimal(0)) + line.allowed_amount
        if line.line_count > 0:
            days.setdefault(line.npi, set()).add(line.service_date)
            if line.npi not in last or line.service_date > last[line.npi]:
                last[line.npi] = line.service_date
            seen = tin_by_date.get(line.npi)
            if line.tin and (seen is None or line.service_date >= seen[0]):
                tin_by_date[line.npi] = (line.service_date, line.tin)
    result = []
    for npi, total in totals.items():
        visits = len(days.get(npi, ()))
        if visits == 0:
            continue  # everything for this provider was reversed
        directory = providers.get(npi)
        tin = directory.tin if directory and directory.tin else (tin_by_date.get(npi) or (None, None))[1]
        result.append(Candidate(npi=npi, tin=tin, allowed_total=total, visit_count=visits,
                                last_service_date=last.get(npi)))
    return result


def _rank_key(candidate: Candidate) -> tuple[Decimal, int, int, str]:
    last = candidate.last_service_date.toordinal() if candidate.last_service_date else 0
    return (-candidate.allowed_total, -last, -candidate.visit_count, candidate.npi)


def rank_candidates(candidates: Iterable[Candidate]) -> tuple[list[Candidate], TieBreak | None]:
    """Plurality order with the tie-break of DESIGN.md: allowed charges, then most recent
    service, then visit count, then stable id (lowest NPI). Returns the order and which
    tie-break decided first place (None when allowed charges alone decided)."""
    ranked = sorted(candidates, key=_rank_key)
    if len(ranked) < 2 or ranked[0].allowed_total != ranked[1].allowed_total:
        return ranked, None
    first, second = ranked[0], ranked[1]
    if first.last_service_date != second.last_service_date:
        return ranked, TieBreak.MOST_RECENT_SERVICE
    if first.visit_count != second.visit_count:
        return ranked, TieBreak.VISIT_COUNT
    return ranked, TieBreak.STABLE_ID


def is_enrolled(enrollment: Enrollment | None, as_of: date) -> bool:
    """Covered on ``as_of``: effective, not past the termination date, not disenrolled."""
    if enrollment is None:
        return False
    if enrollment.disenrolled_on is not None and enrollment.disenrolled_on <= as_of:
        return False
    if enrollment.effective_date > as_of:
        return False
    return enrollment.termination_date is None or as_of <= enrollment.termination_date


def attribute(
    member: MemberFacts,
    service_lines: Sequence[ServiceLine],
    providers: dict[str, ProviderFacts],
    rules: AttributionRules,
    as_of: date,
) -> Attribution:
    """Attribute ``member`` on ``as_of`` (DESIGN.md section 3; MSSP-style, see module docstring).

    ``service_lines`` may include lines outside the lookback (they are filtered here);
    ``providers`` maps NPIs to directory facts (unknown NPIs are not primary-care
    providers, except V1C visit providers, who are by definition).
    """
    start = rules.lookback_start(as_of)
    enrollment = member.enrollment

    def explain(reason: str, candidates: Sequence[Candidate] = (), tie: TieBreak | None = None) -> Explanation:
        return Explanation(reason_code=reason, rules_version=rules.rules_version, tie_break=tie,
                           lookback_start=start, lookback_end=as_of,
                           candidates=tuple(candidates[: rules.max_candidates_explained]))

    if enrollment is None:
        return Attribution(Method.UNATTRIBUTED, None, None, (), explain("no_enrollment_record"))
    if not is_enrolled(enrollment, as_of):
        reason = "not_yet_effective" if enrollment.effective_date > as_of else "disenrolled"
        method = Method.UNATTRIBUTED if reason == "not_yet_effective" else Method.DISENROLLED
        return Attribution(method, None, None, (), explain(reason))

    in_window = [ln for ln in service_lines if start <= ln.service_date <= as_of]
    def by_primary_care_provider(ln: ServiceLine) -> bool:
        facts = providers.get(ln.npi)
        return facts is not None and facts.primary_care

    primary_lines = [
        ln for ln in in_window
        if ln.virtual_visit or (ln.procedure_code in rules.primary_care_codes and by_primary_care_provider(ln))
    ]
    if rules.step_two_scope == "primary_care_services":
        step_two_lines = [ln for ln in in_window if ln.virtual_visit or ln.procedure_code in rules.primary_care_codes]
    else:
        step_two_lines = in_window
    step_one, step_one_tie = rank_candidates(_candidates(primary_lines, providers))
    step_two, step_two_tie = rank_candidates(_candidates(step_two_lines, providers))

    chosen: tuple[Method, str, str | None, Explanation] | None = None
    for step in rules.precedence:
        if step is Step.PROSPECTIVE:
            pcp = member.prospective_pcp
            if pcp is not None and pcp.effective_date <= as_of:
                method = Method.PAYER_ASSIGNED if pcp.selection == "payer_assigned" else Method.MEMBER_SELECTED
                tin = pcp.tin or (providers[pcp.npi].tin if pcp.npi in providers else None)
                chosen = (method, pcp.npi, tin, explain(f"{method.value}_pcp", step_one or step_two))
        elif step is Step.PLURALITY_PRIMARY_CARE and step_one:
            top = step_one[0]
            chosen = (Method.PLURALITY_PRIMARY_CARE, top.npi, top.tin,
                      explain("plurality_of_allowed_charges", step_one, step_one_tie))
        elif step is Step.PLURALITY_ALL_PROVIDERS and step_two:
            top = step_two[0]
            chosen = (Method.PLURALITY_ALL_PROVIDERS, top.npi, top.tin,
                      explain("plurality_all_providers_no_primary_care", step_two, step_two_tie))
        elif step is Step.VIRTUAL_FIRST_DEFAULT and enrollment.virtual_first and enrollment.v1c_group_npi:
            npi = enrollment.v1c_group_npi
            tin = providers[npi].tin if npi in providers else None
            chosen = (Method.VIRTUAL_FIRST_DEFAULT, npi, tin, explain("virtual_first_plan_v1c_group"))
        if chosen is not None:
            break

    if chosen is None:
        reason = "no_qualifying_services_not_virtual_first"
        return Attribution(Method.UNATTRIBUTED, None, None,
                           care_team(None, None, enrollment, in_window, rules, as_of), explain(reason))
    method, npi, tin, explanation = chosen
    return Attribution(method, npi, tin, care_team(npi, tin, enrollment, in_window, rules, as_of, providers),
                       explanation)


def care_team(
    pcp_npi: str | None,
    pcp_tin: str | None,
    enrollment: Enrollment,
    lines_in_window: Sequence[ServiceLine],
    rules: AttributionRules,
    as_of: date,
    providers: dict[str, ProviderFacts] | None = None,
) -> tuple[CareTeamEntry, ...]:
    """The care-team snapshot: PCP (+ TIN), V1C provider, care manager, active receiving providers.

    V1C provider: the member's most recent V1C visit provider in the lookback, else the
    plan's V1C group for virtual-first plans. Active receiving providers: rendering
    providers with a non-reversed service in the last ``receiving_provider_days`` who are
    neither the PCP nor the V1C provider (most recent first, capped).
    """
    providers = providers or {}
    team: list[CareTeamEntry] = []
    if pcp_npi:
        team.append(CareTeamEntry("pcp", pcp_npi, pcp_tin))
    visits = [ln for ln in lines_in_window if ln.virtual_visit and ln.line_count > 0]
    v1c: CareTeamEntry | None = None
    if visits:
        latest = max(visits, key=lambda ln: (ln.service_date, ln.npi))
        v1c = CareTeamEntry("v1c_provider", latest.npi, latest.tin)
    elif enrollment.virtual_first and enrollment.v1c_group_npi:
        npi = enrollment.v1c_group_npi
        v1c = CareTeamEntry("v1c_provider", npi, providers[npi].tin if npi in providers else None)
    if v1c is not None:
        team.append(v1c)
    if enrollment.care_manager_id:
        team.append(CareTeamEntry("care_manager", enrollment.care_manager_id))
    since = as_of - timedelta(days=rules.receiving_provider_days)
    recent: dict[str, tuple[date, str | None]] = {}
    for line in lines_in_window:
        if line.line_count <= 0 or line.service_date < since or line.virtual_visit:
            continue
        if line.npi in (pcp_npi, v1c.id if v1c else None):
            continue
        seen = recent.get(line.npi)
        if seen is None or line.service_date > seen[0]:
            recent[line.npi] = (line.service_date, line.tin)
    ordered = sorted(recent.items(), key=lambda item: (-item[1][0].toordinal(), item[0]))
    team.extend(
        CareTeamEntry("receiving_provider", npi, tin) for npi, (_, tin) in ordered[: rules.max_receiving_providers]
    )
    return tuple(team)


#: The state before any fact: nobody responsible, no care team (first results compare to it).
NOBODY = Attribution(Method.UNATTRIBUTED, None, None, (), Explanation("no_facts", "none"))


def has_changed(previous: Attribution | None, current: Attribution) -> bool:
    """True when the outcome (method, PCP, TIN, care team) differs; explanations alone never emit."""
    return (previous or NOBODY).outcome != current.outcome
