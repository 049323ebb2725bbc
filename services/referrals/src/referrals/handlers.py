"""Use cases of the referrals service; each runs inside the consumed batch's transaction.

Event types handled: ``provider.upserted`` (directory read model), ``member.enrolled`` /
``member.updated`` / ``member.disenrolled`` (coverage read model), ``referral.requested`` and
``encounter.discharged`` (create and route referrals), ``encounter.cancelled`` (a cancelled
discharge cancels its referrals), ``encounter.admitted`` / ``encounter.discharged`` and
``claim.adjudicated`` (care evidence: completion or leakage).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict
from datetime import date, datetime
from typing import Any

from cth_shared.contracts import (
    POST_ACUTE_SERVICE_BY_DISCHARGE,
    ClaimAdjudicated,
    CloudEvent,
    EncounterAdmitted,
    EncounterCancelled,
    EncounterDischarged,
    MemberDisenrolled,
    MemberSnapshot,
    ProviderUpserted,
    ReferralLeakageDetected,
    ReferralRequested,
    ReferralRouted,
    ReferralUnroutable,
    RoutingCandidate,
    discharge_category,
)
from cth_shared.messaging.consumer import Handler
from cth_shared.messaging.outbox import UnitOfWork
from opentelemetry import trace

from . import store
from .directory import DirectoryCache
from .domain.leakage import ServiceCodeMap, classify_care, discharge_referral_id, within_leakage_window
from .domain.model import MemberCoverage, Routed, RoutingOutcome, ScoredCandidate, Unroutable
from .domain.routing import RoutingPolicy, route

#: Transaction-scoped advisory lock serialising capacity checks (see ``_decide``).
ROUTING_LOCK_KEY = 0x5245_4652  # "REFR"
_tracer = trace.get_tracer("referrals")

POST_ACUTE_CATEGORIES = frozenset(str(s) for s in POST_ACUTE_SERVICE_BY_DISCHARGE.values())


def _candidate(candidate: ScoredCandidate) -> RoutingCandidate:
    return RoutingCandidate(npi=candidate.npi, tin=candidate.tin, tier=candidate.tier, score=candidate.score,
                            components=candidate.components,  # type: ignore[arg-type]
                            distance_km=candidate.distance_km, virtual=candidate.virtual)


#: Memo: per encounter of the lane's discharges and cancels, whether it may have an open or unroutable
#: discharge referral (read once for all of them at the first need; a referral the lane creates or reopens
#: sets its encounter's entry), so a discharge with nothing to cancel sends no UPDATE.
_CANCELLABLE = "cancellable_encounters"


def _discharge_encounters(events: Sequence[CloudEvent[Any]]) -> set[str]:
    return {e.data.encounter_id for e in events if e.type in ("encounter.discharged", "encounter.cancelled")}


async def _cancel_discharge_referrals(uow: UnitOfWork, encounter_id: str, member_id: str, keep: str | None,
                                      at: datetime, reason: str) -> None:
    cancellable = await uow.read_for_lane(
        _CANCELLABLE, encounter_id, _discharge_encounters,
        lambda ids: store.encounters_with_cancellable_referrals(uow.conn, ids), lambda: False)
    if cancellable:
        await store.cancel_discharge_referrals(uow.conn, encounter_id, member_id, keep, at, reason)


def _may_cancel(uow: UnitOfWork, encounter_id: str) -> None:
    uow.memo.setdefault(_CANCELLABLE, {})[encounter_id] = True


class ReferralHandlers:
    """The handler mapping of the service, closed over its rule configuration and directory."""

    def __init__(self, policy: RoutingPolicy, code_map: ServiceCodeMap, directory: DirectoryCache,
                 leakage_window_days: int) -> None:
        self.policy = policy
        self.code_map = code_map
        self.directory = directory
        self.leakage_window_days = leakage_window_days

    def mapping(self) -> dict[str, Handler]:
        """Event type -> handler."""
        return {
            "provider.upserted": self.provider_upserted,
            "member.enrolled": self.member_changed,
            "member.updated": self.member_changed,
            "member.disenrolled": self.member_disenrolled,
            "referral.requested": self.referral_requested,
            "encounter.discharged": self.encounter_discharged,
            "encounter.admitted": self.encounter_admitted,
            "encounter.cancelled": self.encounter_cancelled,
            "claim.adjudicated": self.claim_adjudicated,
        }

    # ------------------------------------------------------------------ read models
    async def provider_upserted(self, uow: UnitOfWork, event: CloudEvent[Any]) -> None:
        """Directory record -> table and in-memory index (takes effect for the next referral)."""
        provider: ProviderUpserted = event.data
        if await store.upsert_provider(uow.conn, provider, event.time):
            self.directory.apply(store.profile_of(provider), event.time)

    async def member_changed(self, uow: UnitOfWork, event: CloudEvent[Any]) -> None:
        """Enrollment record -> the member's network and home coordinates."""
        member: MemberSnapshot = event.data
        await store.upsert_member(uow.conn, member, event.time)

    async def member_disenrolled(self, uow: UnitOfWork, event: CloudEvent[Any]) -> None:
        """Coverage ended: later referrals are unroutable as member_not_enrolled."""
        ended: MemberDisenrolled = event.data
        await store.disenroll_member(uow.conn, ended.member_id, ended.plan_id, ended.termination_date, event.time)

    # ------------------------------------------------------------------ creating referrals
    async def referral_requested(self, uow: UnitOfWork, event: CloudEvent[Any]) -> None:
        """An explicit referral: routed once per referral id (a resend changes nothing).

        It belongs to the ordering provider's organization: ``ordering_tin``, else the TIN the
        directory holds for ``ordering_npi``.
        """
        request: ReferralRequested = event.data
        organization = request.ordering_tin or await store.tin_of(uow.conn, request.ordering_npi)
        referral = store.NewReferral(
            referral_id=request.referral_id, member_id=request.member_id,
            service_category=str(request.service_category), origin="request", organization_id=organization,
            ordering_npi=request.ordering_npi, encounter_id=request.encounter_id, urgency=request.urgency,
            requested_at=request.requested_at, source_event_id=event.id,
        )
        if await store.insert_referral(uow.conn, referral):
            await self._route(uow, referral)

    async def encounter_discharged(self, uow: UnitOfWork, event: CloudEvent[Any]) -> None:
        """A discharge whose disposition needs post-acute care creates a referral (origin discharge).

        The referral id is derived from the encounter and the service, so resends and A08 updates
        do not route twice; an A08 that changes the disposition cancels the referral for the old
        service. The referral belongs to the discharging facility's TIN (the facility's, else the
        directory's). The discharge is also care evidence for earlier referrals.
        """
        discharge: EncounterDischarged = event.data
        service = POST_ACUTE_SERVICE_BY_DISCHARGE.get(discharge_category(discharge.disposition))
        keep = str(service) if service is not None else None
        await _cancel_discharge_referrals(uow, discharge.encounter_id, discharge.member_id, keep, event.time,
                                          "disposition_changed")
        await self._facility_evidence(uow, event, discharge.member_id, discharge.facility.npi,
                                      discharge.facility.tin, discharge.discharged_at.date(), discharge.encounter_id)
        if keep is None:
            return
        organization = discharge.facility.tin or await store.tin_of(uow.conn, discharge.facility.npi)
        referral = store.NewReferral(
            referral_id=discharge_referral_id(discharge.encounter_id, keep), member_id=discharge.member_id,
            service_category=keep, origin="discharge", organization_id=organization,
            ordering_npi=discharge.attending_npi, encounter_id=discharge.encounter_id, urgency="routine",
            requested_at=discharge.discharged_at, source_event_id=event.id,
        )
        if await store.insert_referral(uow.conn, referral):
            _may_cancel(uow, discharge.encounter_id)
            await self._route(uow, referral)
            return
        state = await store.referral_state(uow.conn, referral.referral_id)
        reopened = state is not None and state["status"] == "cancelled" and state["closed_at"] is not None
        if reopened and event.time > state["closed_at"]:  # type: ignore[index]
            await store.reopen_referral(uow.conn, referral)  # discharged again after an A13 cancel
            _may_cancel(uow, discharge.encounter_id)
            await self._route(uow, referral)

    async def encounter_cancelled(self, uow: UnitOfWork, event: CloudEvent[Any]) -> None:
        """A cancelled discharge (A13) cancels the referrals it created and releases their capacity."""
        cancelled: EncounterCancelled = event.data
        if cancelled.cancels == "discharge":
            await _cancel_discharge_referrals(uow, cancelled.encounter_id, cancelled.member_id, None,
                                              cancelled.cancelled_at, "discharge_cancelled")

    async def _route(self, uow: UnitOfWork, referral: store.NewReferral) -> None:
        service = referral.service_category
        with _tracer.start_as_current_span("referrals.route", attributes={
            "cth.referral_id": referral.referral_id, "cth.service_category": service, "cth.origin": referral.origin,
        }) as span:
            member = await store.get_member(uow.conn, referral.member_id)
            outcome: RoutingOutcome
            if member is None or not member.covered_on(referral.requested_at.date()):
                outcome = Unroutable("member_not_enrolled", "no coverage known for the member on the referral date")
            else:
                outcome = await self._decide(uow, service, member)
                if isinstance(outcome, Routed):
                    span.set_attribute("cth.candidates", outcome.candidates_considered)
            network_id = member.network_id if member else None
            common = {"referral_id": referral.referral_id, "member_id": referral.member_id,
                      "service_category": service, "origin": referral.origin}
            if isinstance(outcome, Routed):
                chosen = outcome.chosen
                span.set_attribute("cth.chosen_npi", chosen.npi)
                decision = self._explanation(outcome)
                await store.record_routed(uow.conn, referral.referral_id, network_id or "", chosen.npi, chosen.tin,
                                          chosen.tier, decision, self.policy.routing_version)
                uow.publish(ReferralRouted(
                    **common, ordering_npi=referral.ordering_npi, encounter_id=referral.encounter_id,
                    chosen=_candidate(chosen), alternatives=[_candidate(a) for a in outcome.alternatives],
                    routing_version=self.policy.routing_version,
                ), subject=referral.member_id, time=referral.requested_at)
            else:
                span.set_attribute("cth.unroutable_reason", outcome.reason)
                await store.record_unroutable(uow.conn, referral.referral_id, network_id, outcome.reason,
                                              {"reason": outcome.reason, "detail": outcome.detail},
                                              self.policy.routing_version)
                uow.publish(ReferralUnroutable(**common, reason=outcome.reason, detail=outcome.detail),  # type: ignore[arg-type]
                            subject=referral.member_id, time=referral.requested_at)

    async def _decide(self, uow: UnitOfWork, service: str, member: MemberCoverage) -> RoutingOutcome:
        limit_km = self.policy.distance_limit_km(service)
        candidates, counts = self.directory.index.lookup(
            service, member.network_id, member.latitude, member.longitude, limit_km,
            self.policy.allows_virtual(service),
        )
        worth_checking = [p.npi for p in candidates if p.accepting and p.capacity > 0]
        # Reserved counts are read, then a slot is taken by inserting the referral: concurrent
        # lanes route one at a time (until their transaction ends) so no slot is given twice.
        await uow.conn.execute("SELECT pg_advisory_xact_lock($1)", ROUTING_LOCK_KEY)
        reserved = await store.reserved_counts(uow.conn, worth_checking)
        return route(service, member, candidates, self.policy, reserved, narrowed=counts)

    def _explanation(self, outcome: Routed) -> dict[str, Any]:
        return {
            "chosen": asdict(outcome.chosen),
            "alternatives": [asdict(a) for a in outcome.alternatives],
            "candidates_considered": outcome.candidates_considered,
            "weights": dict(self.policy.weights),
            "tie_break": "lowest_npi",
        }

    # ------------------------------------------------------------------ care evidence
    async def encounter_admitted(self, uow: UnitOfWork, event: CloudEvent[Any]) -> None:
        """An admission to a post-acute facility is care evidence for the member's referrals."""
        admitted: EncounterAdmitted = event.data
        await self._facility_evidence(uow, event, admitted.member_id, admitted.facility.npi, admitted.facility.tin,
                                      admitted.admitted_at.date(), admitted.encounter_id)

    async def _facility_evidence(self, uow: UnitOfWork, event: CloudEvent[Any], member_id: str, facility_npi: str,
                                 facility_tin: str | None, care_on: date, encounter_id: str) -> None:
        # An encounter says nothing about the service category by itself: the facility's
        # directory services do (a facility the directory does not know gives no evidence).
        # The directory this process holds, kept in step for routing, answers without a read (most
        # encounters are at hospitals, which it does not list). A directory write by another instance
        # reaches it within the poll interval, as for routing; until loaded, the table answers.
        if self.directory.loaded:
            facility = self.directory.record(facility_npi)
        else:
            facility = await store.get_provider(uow.conn, facility_npi)
        if facility is None:
            return
        categories = facility.services & POST_ACUTE_CATEGORIES
        if categories:
            await self._care_evidence(uow, event, "encounter", member_id,
                                      [(facility_npi, facility_tin or facility.tin, c, care_on) for c in categories],
                                      exclude_encounter_id=encounter_id)

    async def claim_adjudicated(self, uow: UnitOfWork, event: CloudEvent[Any]) -> None:
        """Paid or adjusted claim lines mapped to service categories are care evidence.

        Denied and reversed claims are not evidence of care.
        """
        claim: ClaimAdjudicated = event.data
        if claim.status not in ("paid", "adjusted"):
            return
        earliest: dict[tuple[str, str, str], date] = {}
        for line in claim.lines:
            if line.units <= 0:
                continue
            for category in self.code_map.categories_of_line(line.procedure_code, line.place_of_service,
                                                             line.rendering_taxonomy):
                key = (line.rendering_npi, line.rendering_tin, category)
                if key not in earliest or line.service_from < earliest[key]:
                    earliest[key] = line.service_from
        if earliest:
            await self._care_evidence(uow, event, "claim", claim.member_id,
                                      [(npi, tin, category, day) for (npi, tin, category), day in earliest.items()])

    async def _care_evidence(self, uow: UnitOfWork, event: CloudEvent[Any], kind: str, member_id: str,
                             care: Iterable[tuple[str, str | None, str, date]],
                             exclude_encounter_id: str | None = None) -> None:
        """Apply care (npi, tin, category, day) to the member's referrals: completion or leakage.

        Rule: leakage.classify_care within leakage.within_leakage_window; leakage is emitted once
        per referral.
        """
        care = sorted(care, key=lambda c: (c[3], c[0], c[2]))
        referrals = await store.referrals_awaiting_care(uow.conn, member_id, sorted({c[2] for c in care}))
        if not referrals:
            return
        member = await store.get_member(uow.conn, member_id)
        providers = await store.get_providers(uow.conn, sorted({c[0] for c in care}))
        leaked: set[str] = set()
        for referral in referrals:
            if exclude_encounter_id is not None and referral["encounter_id"] == exclude_encounter_id:
                continue
            network_id = referral["network_id"] or (member.network_id if member else "")
            status = referral["status"]
            for npi, tin, category, care_on in care:
                if category != referral["service_category"] or not within_leakage_window(
                        referral["requested_at"].date(), care_on, self.leakage_window_days):
                    continue
                verdict = classify_care(referral["chosen_npi"], referral["chosen_tin"], npi, tin, providers.get(npi),
                                        network_id)
                if verdict in ("completed", "preferred_elsewhere"):
                    if status == "open":
                        reason = "care_at_routed_provider" if verdict == "completed" else "care_at_other_preferred"
                        await store.close_referral(uow.conn, referral["referral_id"], "completed", event.time, reason)
                        status = "completed"
                    continue
                if referral["leakage_kind"] is not None or referral["referral_id"] in leaked:
                    continue
                evidence = {"event_id": event.id, "kind": kind, "npi": npi, "tin": tin,
                            "occurred_on": care_on.isoformat()}
                if await store.record_leakage(uow.conn, referral["referral_id"], verdict, event.time, evidence):
                    leaked.add(referral["referral_id"])
                    uow.publish(ReferralLeakageDetected(
                        referral_id=referral["referral_id"], member_id=member_id,
                        service_category=referral["service_category"], ordering_npi=referral["ordering_npi"],
                        routed_npi=referral["chosen_npi"], actual_npi=npi, actual_tin=tin, leakage_kind=verdict,
                        evidence_event_id=event.id, evidence_kind=kind,  # type: ignore[arg-type]
                        occurred_on=care_on,
                    ), subject=member_id, time=event.time)
                    break
