"""Use cases: one function per consumed event type, each inside the batch transaction.

Every handler records the fact, then recomputes only the touched member(s) through the
pure rule (:func:`attribution.domain.attribute`) and publishes ``attribution.changed``
when the outcome changed. Facts arriving again under new event ids (resends) are no-ops;
reversals and adjustments are order independent (see :func:`attribution.domain.net_claims`).

Dates: a change takes effect on the date of the fact that caused it (the event ``time``),
never the wall clock, so a replay produces the same history. Recomputation per member is
monotone: a late fact applies from the member's latest computed date (history is "as
known", never rewritten).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping, Sequence
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from cth_shared.contracts import CloudEvent
from cth_shared.contracts.events import (
    AttributionCandidate,
    AttributionChanged,
    AttributionExplanation,
    AttributionMethod,
    CareTeamMember,
    ClaimAdjudicated,
    MemberDisenrolled,
    MemberPcpSelected,
    MemberSnapshot,
    ProviderRole,
    ProviderUpserted,
    VirtualVisitCompleted,
)
from cth_shared.messaging.consumer import Handler, Rejected
from cth_shared.messaging.outbox import UnitOfWork
from opentelemetry import trace

from . import store
from .domain import Attribution, AttributionRules, ClaimFact, ServiceLine, attribute, claim_contribution, has_changed

_log = logging.getLogger(__name__)
_tracer = trace.get_tracer("attribution")

PRIMARY_CARE_ROLES = frozenset({ProviderRole.PCP, ProviderRole.V1C})


def to_contract(
    member_id: str, effective: date, result: Attribution, previous: Attribution | None
) -> AttributionChanged:
    """The ``attribution.changed`` payload for a result."""
    explanation = store.explanation_dict(result.explanation)
    return AttributionChanged(
        member_id=member_id,
        effective_date=effective,
        method=AttributionMethod(result.method.value),
        pcp_npi=result.pcp_npi,
        pcp_tin=result.pcp_tin,
        previous_pcp_npi=previous.pcp_npi if previous else None,
        care_team=[CareTeamMember(role=m.role, id=m.id, tin=m.tin) for m in result.care_team],  # type: ignore[arg-type]
        explanation=AttributionExplanation(
            reason_code=explanation["reason_code"], tie_break=explanation["tie_break"],
            lookback_start=explanation["lookback_start"], lookback_end=explanation["lookback_end"],
            rules_version=explanation["rules_version"],
            candidates=[AttributionCandidate(**c) for c in explanation["candidates"]],
        ),
    )


def changed_event_id(cause_id: str, member_id: str) -> str:
    """Deterministic id of the change a cause produced for a member (a reprocessed cause yields the same id)."""
    return "attr-" + hashlib.sha256(f"{cause_id}|{member_id}".encode()).hexdigest()[:40]


async def recompute_member(uow: UnitOfWork, member_id: str, fact_time: datetime, rules: AttributionRules,
                           cause_id: str | None) -> Attribution:
    """Recompute one member from its stored aggregates; persist; publish when the outcome changed."""
    with _tracer.start_as_current_span("attribution.recompute member", attributes={"cth.member_id": member_id}):
        fact_day = fact_time.date()
        inputs = await store.load_member_inputs(uow.conn, member_id, rules.lookback_start(fact_day))
        as_of = max(fact_day, inputs.current_as_of) if inputs.current_as_of else fact_day
        result = attribute(inputs.facts, inputs.lines, inputs.providers, rules, as_of)
        changed = has_changed(inputs.current, result)
        await store.save_current(uow.conn, member_id, result, as_of, changed)
        if changed:
            await store.append_history(uow.conn, member_id, as_of, result, cause_id)
            uow.publish(
                to_contract(member_id, as_of, result, inputs.current), subject=member_id, time=fact_time,
                event_id=changed_event_id(cause_id, member_id) if cause_id else None,
            )
            trace.get_current_span().set_attribute("cth.attribution.method", result.method.value)
        return result


def _content_sha256(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, default=str, separators=(",", ":")).encode()).hexdigest()


def _require_subject(event: CloudEvent[Any], member_id: str) -> None:
    if event.subject != member_id:
        raise Rejected("subject_mismatch", "envelope subject is not data.member_id")


def line_from_tuple(line: store.LineTuple) -> ServiceLine:
    npi, tin, service_date, code, amount = line
    return ServiceLine(npi, tin, date.fromisoformat(service_date), code, Decimal(amount))


def _claim_fact(claim_id: str, status: str, replaces: str | None, lines: Sequence[store.LineTuple]) -> ClaimFact:
    return ClaimFact(claim_id, status, replaces, tuple(line_from_tuple(x) for x in lines))


def make_handlers(rules: AttributionRules) -> Mapping[str, Handler]:
    """The handler mapping of the service, closed over the rule configuration."""

    async def on_member_snapshot(uow: UnitOfWork, event: CloudEvent[Any]) -> None:
        snapshot: MemberSnapshot = event.data
        _require_subject(event, snapshot.member_id)
        await store.upsert_member(uow.conn, snapshot)
        await recompute_member(uow, snapshot.member_id, event.time, rules, event.id)

    async def on_pcp_selected(uow: UnitOfWork, event: CloudEvent[Any]) -> None:
        selected: MemberPcpSelected = event.data
        _require_subject(event, selected.member_id)
        known = await store.set_prospective_pcp(uow.conn, selected.member_id, selected.pcp_npi, selected.pcp_tin,
                                                selected.selection, selected.effective_date)
        if not known:
            raise Rejected("member_not_enrolled", "pcp selection for a member without an enrollment record")
        await recompute_member(uow, selected.member_id, event.time, rules, event.id)

    async def on_disenrolled(uow: UnitOfWork, event: CloudEvent[Any]) -> None:
        ended: MemberDisenrolled = event.data
        _require_subject(event, ended.member_id)
        # The event reports that coverage has ended: attribution ends on the fact's date.
        if not await store.mark_disenrolled(uow.conn, ended.member_id, event.time.date(), ended.termination_date):
            raise Rejected("member_not_enrolled", "disenrollment of a member without an enrollment record")
        await recompute_member(uow, ended.member_id, event.time, rules, event.id)

    async def on_claim(uow: UnitOfWork, event: CloudEvent[Any]) -> None:
        claim: ClaimAdjudicated = event.data
        _require_subject(event, claim.member_id)
        if claim.replaces_claim_id == claim.claim_id:
            raise Rejected("claim_replaces_itself", "replaces_claim_id equals claim_id")
        conn = uow.conn
        lines: list[store.LineTuple] = [
            (ln.rendering_npi, ln.rendering_tin, ln.service_from.isoformat(), ln.procedure_code, str(ln.allowed_amount))
            for ln in claim.lines
        ]
        sha = _content_sha256(claim.member_id, claim.status, claim.replaces_claim_id, lines)
        existing = await store.get_claim(conn, claim.claim_id)
        if existing is not None and existing.content_sha256 == sha:
            return  # the same claim again under another event id: nothing new
        voided = await store.is_voided(conn, claim.claim_id)
        if existing is not None:
            old = _claim_fact(existing.claim_id, existing.status, existing.replaces_claim_id, existing.lines)
            await store.add_to_service_days(conn, claim.member_id, claim_contribution(old, voided), -1)
        await store.save_claim(conn, claim.member_id, claim.claim_id, claim.status, claim.replaces_claim_id, sha, lines)
        new = _claim_fact(claim.claim_id, claim.status, claim.replaces_claim_id, lines)
        await store.add_to_service_days(conn, claim.member_id, claim_contribution(new, voided), +1)
        replaces = claim.replaces_claim_id
        voids_another = claim.status in ("reversed", "adjusted") and replaces is not None
        if voids_another and replaces and await store.void_claim(conn, replaces, claim.claim_id):
            target = await store.get_claim(conn, replaces)
            if target is not None:
                fact = _claim_fact(target.claim_id, target.status, target.replaces_claim_id, target.lines)
                await store.add_to_service_days(conn, claim.member_id, claim_contribution(fact, False), -1)
        await recompute_member(uow, claim.member_id, event.time, rules, event.id)

    async def on_virtual_visit(uow: UnitOfWork, event: CloudEvent[Any]) -> None:
        visit: VirtualVisitCompleted = event.data
        _require_subject(event, visit.member_id)
        conn = uow.conn
        service_date = visit.started_at.date()
        code = visit.procedure_codes[0]
        sha = _content_sha256(visit.member_id, visit.provider_npi, visit.organization_tin, service_date, code,
                              str(visit.allowed_amount))
        existing = await store.get_virtual_visit(conn, visit.visit_id)
        if existing is not None and existing["content_sha256"] == sha:
            return
        if existing is not None:
            old = ServiceLine(existing["npi"], existing["tin"], existing["service_date"], existing["procedure_code"],
                              existing["allowed_amount"], 1, True)
            await store.add_to_service_days(conn, existing["member_id"], [old], -1)
        await store.save_virtual_visit(conn, visit.visit_id, visit.member_id, visit.provider_npi,
                                       visit.organization_tin, service_date, code, visit.allowed_amount, sha)
        line = ServiceLine(visit.provider_npi, visit.organization_tin, service_date, code, visit.allowed_amount,
                           1, True)
        await store.add_to_service_days(conn, visit.member_id, [line], +1)
        await recompute_member(uow, visit.member_id, event.time, rules, event.id)

    async def on_provider(uow: UnitOfWork, event: CloudEvent[Any]) -> None:
        provider: ProviderUpserted = event.data
        if event.subject != provider.npi:
            raise Rejected("subject_mismatch", "envelope subject is not data.npi")
        changed = await store.upsert_provider(uow.conn, provider.npi, provider.tin, provider.role.value,
                                              provider.role in PRIMARY_CARE_ROLES, provider.active)
        if not changed:
            return
        # A new primary-care status or TIN can move members who saw this provider: recompute them.
        for member_id in await store.members_touching_provider(uow.conn, provider.npi):
            await recompute_member(uow, member_id, event.time, rules, event.id)

    return {
        "member.enrolled": on_member_snapshot,
        "member.updated": on_member_snapshot,
        "member.pcp_selected": on_pcp_selected,
        "member.disenrolled": on_disenrolled,
        "claim.adjudicated": on_claim,
        "virtual_visit.completed": on_virtual_visit,
        "provider.upserted": on_provider,
    }
