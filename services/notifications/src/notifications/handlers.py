"""Use cases: each runs once per consumed event inside the batch transaction (a batch lane).

The flow for every alerting event: resolve the care team in force at the EVENT's time
(not processing time), decide kind + recipients with the versioned rules
(``domain.rules``), cut the content to each recipient's role (``domain.content``), and queue
the fact, one alert per (recipient, subject, kind) and its push deliveries. The lane writes
what it queued in one statement (``UnitOfWork.defer``), at its end or before a read that must
see it (late care teams, cancels), and the same statement NOTIFYs the live inbox streams; then,
once per lane and last (other lanes with the same recipients wait for it to commit), it gives the
new alerts their recipients' next sequence numbers in one statement (counters locked in a fixed
order, so concurrent lanes never deadlock) and publishes ``notification.created``. The care
teams, cancels and earlier discharges of the lane's members and encounters are read once, for
all of them, on the first need; the encounter rows (a read model nothing in a lane reads back)
are written with the lane's others in one statement."""

from __future__ import annotations

import dataclasses
import json
import logging
import uuid
from collections.abc import Mapping, Sequence
from datetime import date, datetime, timedelta
from typing import Any

from cth_shared.contracts import CloudEvent
from cth_shared.contracts.events import (
    AttributionChanged,
    CareGapOpened,
    CareGapOverdue,
    EncounterAdmitted,
    EncounterCancelled,
    EncounterDischarged,
    EncounterTransferred,
    NotificationCreated,
    NotificationKind,
    ReferralLeakageDetected,
    ReferralRouted,
)
from cth_shared.messaging.consumer import Handler, Rejected
from cth_shared.messaging.outbox import UnitOfWork, subjects
from opentelemetry import context as otel_context
from opentelemetry import trace

from . import store
from .domain.content import content_for
from .domain.rules import (
    RETRACTED_BY_CANCEL,
    CareTeamEntry,
    EventParties,
    Kind,
    PlannedAlert,
    Recipient,
    RuleSet,
    delivery_subscriptions,
    encounter_alert_kind,
    plan_alerts,
)

_log = logging.getLogger(__name__)

_ALERTS = "notifications.alerts"
_NEW_ALERTS = "notifications.new_alerts"


@dataclasses.dataclass(frozen=True)
class _NewAlert:
    """An inserted alert waiting for its sequence number (see ``_finish_new_alerts``)."""

    notification_id: str
    organization_id: str
    recipient_id: str
    member_id: str
    event_time: datetime
    created: dict[str, Any]  # NotificationCreated fields but the sequence
    cause: CloudEvent[Any] | None
    context: otel_context.Context  # the handler's span: the published event continues its trace


_SUBSCRIPTIONS = "subscriptions"


async def _subscriptions(uow: UnitOfWork, organizations: Sequence[str]) -> list[Any]:
    """Active subscriptions of ``organizations``, oldest first. The first need in a transaction (a batch
    lane) reads those of every organization in the care teams it has read (the lane's members') at once;
    an organization it did not hold yet (a care team recorded in the lane) is read when first needed.

    Subscriptions change only through the API, in transactions of their own; a batch sees
    them as of its first read, as if it had started a moment earlier."""
    held: dict[str, list[store.OrderedSubscription]] | None = uow.memo.get(_SUBSCRIPTIONS)
    missing = set(organizations)
    if held is None:
        held = uow.memo[_SUBSCRIPTIONS] = {}
        for history in uow.memo.get(_CARE_TEAMS, {}).values():
            missing.update(entry.tin for snapshot in history for entry in snapshot.team if entry.tin)
    missing.difference_update(held)
    if missing:
        held.update(await store.active_subscriptions(uow.conn, sorted(missing)))
    return [subscription for _, subscription in sorted(
        (entry for organization in set(organizations) for entry in held[organization]), key=lambda e: e[0])]


_CARE_TEAMS = "care_team_histories"
_CANCELS = "encounter_cancels"
_DISCHARGES = "member_discharges"
#: Deferred work (see ``UnitOfWork.defer``): discharges recorded or forgotten in the lane.
_DISCHARGE_WRITES = "discharge-writes"
_ENCOUNTERS = "notifications.encounters"


def _encounters(events: Sequence[CloudEvent[Any]]) -> set[str]:
    return {e.data.encounter_id for e in events if e.type.startswith("encounter.") and e.data.encounter_id}


async def _care_team_at(uow: UnitOfWork, member_id: str, on: date) -> list[CareTeamEntry]:
    """The member's care team in force on ``on``; the first need in a lane reads the care-team histories
    of all the lane's members at once. :func:`_record_care_team`, the only writer, drops the member's."""
    history = await uow.read_for_lane(_CARE_TEAMS, member_id, subjects,
                                      lambda members: store.care_team_histories(uow.conn, members), list)
    return store.care_team_in_force(history, on)


async def _record_care_team(uow: UnitOfWork, member_id: str, effective_from: date, method: str,
                            care_team: list[dict[str, Any]], source_event_id: str) -> None:
    uow.memo.get(_CARE_TEAMS, {}).pop(member_id, None)
    await store.record_care_team(uow.conn, member_id, effective_from, method, care_team, source_event_id)


async def _cancel_covering(uow: UnitOfWork, encounter_id: str, cancels: str, at: datetime) -> datetime | None:
    """When a known cancel covers the encounter's admit/discharge at ``at``: its time, else None. Read
    like the care teams, for every encounter of the lane; :func:`_remember_cancel` keeps the entry current."""
    known = await uow.read_for_lane(_CANCELS, encounter_id, _encounters,
                                    lambda encounters: store.cancels_of(uow.conn, encounters), dict)
    cancelled_at: datetime | None = known.get(cancels)
    return cancelled_at if cancelled_at is not None and cancelled_at >= at else None


async def _remember_cancel(uow: UnitOfWork, encounter_id: str, cancels: str, cancelled_at: datetime) -> None:
    await store.remember_cancel(uow.conn, encounter_id, cancels, cancelled_at)
    known = uow.memo.get(_CANCELS, {}).get(encounter_id)
    if known is not None:
        known[cancels] = max(known.get(cancels, cancelled_at), cancelled_at)


def _save_encounter(uow: UnitOfWork, state: store.EncounterState) -> None:
    """The encounter's read-model row, written with the lane's others in one statement (nothing in a
    lane reads it back)."""
    uow.defer(_ENCOUNTERS, state, _upsert_encounters, per_event_when_isolated=True)


async def _upsert_encounters(uow: UnitOfWork, states: list[store.EncounterState]) -> None:
    await store.upsert_encounters(uow.conn, states)


async def _discharges(uow: UnitOfWork, member_id: str) -> dict[str, datetime]:
    """The member's recorded discharges (encounter -> time); read like the care teams, kept current by
    :func:`_record_discharge` / :func:`_forget_discharge`."""
    discharges: dict[str, datetime] = await uow.read_for_lane(
        _DISCHARGES, member_id, subjects, lambda members: store.discharges_of(uow.conn, members), dict)
    return discharges


async def _record_discharge(uow: UnitOfWork, member_id: str, encounter_id: str, discharged_at: datetime) -> None:
    (await _discharges(uow, member_id))[encounter_id] = discharged_at
    uow.defer(_DISCHARGE_WRITES, (member_id, encounter_id, discharged_at), _save_discharges,
              per_event_when_isolated=True)


async def _forget_discharge(uow: UnitOfWork, member_id: str, encounter_id: str) -> None:
    (await _discharges(uow, member_id)).pop(encounter_id, None)
    uow.defer(_DISCHARGE_WRITES, (member_id, encounter_id, None), _save_discharges, per_event_when_isolated=True)


async def _save_discharges(uow: UnitOfWork, changes: list[tuple[str, str, datetime | None]]) -> None:
    """The lane's recorded and forgotten discharges in one statement (the last change of each wins); the
    lane reads them from :func:`_discharges`, which holds them since the first need."""
    await store.save_discharges(uow.conn, {(member, encounter): at for member, encounter, at in changes})


async def _finish_new_alerts(uow: UnitOfWork, alerts: list[_NewAlert]) -> None:
    """Sequence numbers and ``notification.created`` for a batch's new alerts at once (their insert
    announced them). The numbering locks the recipients' counters until the transaction commits, and
    other lanes with the same recipients wait for them: it is the last statement before the outbox's."""
    sequences = await store.assign_sequences(uow.conn, [a.notification_id for a in alerts])
    for alert in alerts:
        token = otel_context.attach(alert.context)
        uow.cause = alert.cause
        try:
            uow.publish(NotificationCreated(**alert.created, sequence=sequences[alert.notification_id]),
                        subject=alert.member_id, time=alert.event_time)
        finally:
            uow.cause = None
            otel_context.detach(token)


#: Most alert facts one attribution change re-examines (its member's events from its effective date on).
LATE_TEAM_FACTS_MAX = 200


def notification_id_for(organization_id: str, recipient_id: str, subject_key: str, kind: str, retraction: bool) -> str:
    """Deterministic id: the same fact always names the same alert (also the webhook Idempotency-Key)."""
    name = f"{organization_id}|{recipient_id}|{subject_key}|{kind}|{int(retraction)}"
    return "N-" + uuid.uuid5(uuid.NAMESPACE_URL, f"cth:notification:{name}").hex


class AlertHandlers:
    """The handler mapping of the service, closed over its rule set and settings."""

    def __init__(self, rules: RuleSet, *, payer_organization_id: str, readmission_window_days: int) -> None:
        self.rules = rules
        self.payer_organization_id = payer_organization_id
        self.readmission_window = timedelta(days=readmission_window_days)

    def mapping(self) -> Mapping[str, Handler]:
        return {
            "attribution.changed": self.on_attribution_changed,
            "encounter.admitted": self.on_encounter,
            "encounter.transferred": self.on_encounter,
            "encounter.discharged": self.on_encounter,
            "encounter.cancelled": self.on_encounter_cancelled,
            "care_gap.opened": self.on_care_gap,
            "care_gap.overdue": self.on_care_gap,
            "referral.routed": self.on_referral_routed,
            "referral.leakage_detected": self.on_leakage,
        }

    # ------------------------------------------------------------------- read model
    async def on_attribution_changed(self, uow: UnitOfWork, event: CloudEvent[Any]) -> None:
        changed: AttributionChanged = event.data
        _check_subject(event, changed.member_id)
        care_team = [m.model_dump(mode="json") for m in changed.care_team]
        await _record_care_team(uow, changed.member_id, changed.effective_date, changed.method.value, care_team,
                                event.id)
        # Events handled before this team was known (the attribution topic may lag the others): the
        # team in force at their time gets its alerts now; recipients already alerted are skipped.
        await uow.run_deferred((_ALERTS,))  # this lane's facts so far, too
        for fact in await store.alert_facts_since(uow.conn, changed.member_id, changed.effective_date,
                                                  LATE_TEAM_FACTS_MAX):
            parties = json.loads(fact["parties"])
            owner = parties.get("gap_owner")
            await self._raise(
                uow, event, Kind(fact["kind"]), fact["member_id"], fact["event_time"], fact["subject_key"],
                fact["encounter_id"], fact["patient_class"], json.loads(fact["facts"]),
                EventParties(gap_owner=tuple(owner) if owner else None, ordering_npi=parties.get("ordering_npi"),
                             receiving_npi=parties.get("receiving_npi")),
                due_date=fact["due_date"], source_event_id=fact["source_event_id"],
            )

    # ------------------------------------------------------------------- encounters
    async def on_encounter(self, uow: UnitOfWork, event: CloudEvent[Any]) -> None:
        data: EncounterAdmitted | EncounterTransferred | EncounterDischarged = event.data
        _check_subject(event, data.member_id)
        facility = data.facility.model_dump(mode="json")
        facts: dict[str, Any] = {
            "member_id": data.member_id, "encounter_id": data.encounter_id, "facility_name": data.facility.name,
            "facility_npi": data.facility.npi, "patient_class": data.patient_class.value,
            "attending_npi": data.attending_npi,
        }
        parties = EventParties()
        previous: list[datetime] = []
        if isinstance(data, EncounterAdmitted):
            event_time = data.admitted_at
            _save_encounter(uow, store.EncounterState(data.encounter_id, data.member_id, facility,
                                                      data.patient_class.value, admitted_at=data.admitted_at))
            discharges = await _discharges(uow, data.member_id)
            previous = [at for encounter, at in discharges.items() if encounter != data.encounter_id]
            facts.update(admitted_at=data.admitted_at, diagnoses=_diagnoses(data.diagnoses))
        elif isinstance(data, EncounterTransferred):
            event_time = data.transferred_at
            _save_encounter(uow, store.EncounterState(data.encounter_id, data.member_id, facility,
                                                      data.patient_class.value))
            facts.update(transferred_at=data.transferred_at, to_unit=data.to_unit)
        else:
            event_time = data.discharged_at
            _save_encounter(uow, store.EncounterState(data.encounter_id, data.member_id, facility,
                                                      data.patient_class.value, admitted_at=data.admitted_at,
                                                      discharged_at=data.discharged_at))
            if data.trigger != "A08":
                await _record_discharge(uow, data.member_id, data.encounter_id, data.discharged_at)
            facts.update(admitted_at=data.admitted_at, discharged_at=data.discharged_at,
                         disposition=data.disposition, discharged_to_npi=data.discharged_to_npi,
                         diagnoses=_diagnoses(data.diagnoses))
            parties = EventParties(receiving_npi=data.discharged_to_npi)

        kind = encounter_alert_kind(event.type, data.patient_class.value, data.trigger,
                                    admitted_at=getattr(data, "admitted_at", None), previous_discharges=previous,
                                    readmission_window=self.readmission_window)
        if kind is None:
            return  # A08: the state is updated above; an update never re-alerts
        if kind is Kind.READMISSION:
            earlier = [(at, encounter) for encounter, at in (await _discharges(uow, data.member_id)).items()
                       if encounter != data.encounter_id and at <= event_time]
            if earlier:
                discharged_at, encounter_id = max(earlier)
                facts.update(previous_encounter_id=encounter_id, previous_discharged_at=discharged_at)
        await self._raise(uow, event, kind, data.member_id, event_time, data.encounter_id, data.encounter_id,
                          data.patient_class.value, facts, parties)
        cancels = next((c for c, kinds in RETRACTED_BY_CANCEL.items() if kind in kinds), None)
        if cancels is not None:
            # The cancel of this admit/discharge may have arrived first: retract right away.
            cancelled_at = await _cancel_covering(uow, data.encounter_id, cancels, event_time)
            if cancelled_at is not None:
                await self._retract(uow, event, data.member_id, data.encounter_id, cancels, cancelled_at)

    async def on_encounter_cancelled(self, uow: UnitOfWork, event: CloudEvent[Any]) -> None:
        """A11/A13: retract, to everyone alerted, the admit- or discharge-alerts of the encounter.

        The cancel is remembered: when the event it cancels arrives later, its alerts are
        retracted as soon as they are raised (see :meth:`on_encounter`)."""
        cancelled: EncounterCancelled = event.data
        _check_subject(event, cancelled.member_id)
        await _remember_cancel(uow, cancelled.encounter_id, cancelled.cancels, cancelled.cancelled_at)
        await self._retract(uow, event, cancelled.member_id, cancelled.encounter_id, cancelled.cancels,
                            cancelled.cancelled_at)

    async def _retract(self, uow: UnitOfWork, event: CloudEvent[Any], member_id: str, encounter_id: str,
                       cancels: str, cancelled_at: datetime) -> None:
        await uow.run_deferred((_ALERTS,))  # the alerts this lane raised so far are retracted too
        await store.forget_alert_facts(uow.conn, encounter_id, sorted(k.value for k in RETRACTED_BY_CANCEL[cancels]))
        if cancels == "discharge":
            await _forget_discharge(uow, member_id, encounter_id)
        originals = await store.alerts_to_retract(uow.conn, encounter_id, sorted(RETRACTED_BY_CANCEL[cancels]))
        if not originals:
            return
        organizations = sorted({o["organization_id"] for o in originals})
        subscriptions = await _subscriptions(uow, organizations)
        retractions = []
        for original in originals:
            content = dict(_json(original["content"]), cancelled_at=cancelled_at.isoformat(), retraction=True)
            recipient = Recipient(original["recipient_id"], original["recipient_role"], original["organization_id"])
            retractions.append(self._new_alert(
                PlannedAlert(recipient, Kind(original["kind"]), original["priority"], retraction=True),
                member_id=original["member_id"], subject_key=original["subject_key"],
                encounter_id=original["encounter_id"], patient_class=original["patient_class"],
                event_time=cancelled_at, due_date=None, content=content, source_event_id=event.id,
                retracts_id=original["notification_id"],
            ))
        await self._store(uow, None, retractions, subscriptions)
        await store.mark_retracted(uow.conn, [o["notification_id"] for o in originals], cancelled_at)

    # ------------------------------------------------------------------- gaps and referrals
    async def on_care_gap(self, uow: UnitOfWork, event: CloudEvent[Any]) -> None:
        gap: CareGapOpened | CareGapOverdue = event.data
        _check_subject(event, gap.member_id)
        kind = Kind.GAP_OPENED if isinstance(gap, CareGapOpened) else Kind.GAP_OVERDUE
        facts: dict[str, Any] = {
            "member_id": gap.member_id, "encounter_id": gap.encounter_id, "gap_id": gap.gap_id,
            "measure": gap.measure.value, "due_date": gap.due_date.isoformat(),
        }
        if isinstance(gap, CareGapOpened):
            facts.update(window_start=gap.window_start.isoformat(), discharged_at=gap.discharged_at)
        parties = EventParties(gap_owner=(gap.owner.role, gap.owner.id))
        await self._raise(uow, event, kind, gap.member_id, event.time, f"gap:{gap.gap_id}", gap.encounter_id, None,
                          facts, parties, due_date=gap.due_date)

    async def on_referral_routed(self, uow: UnitOfWork, event: CloudEvent[Any]) -> None:
        routed: ReferralRouted = event.data
        _check_subject(event, routed.member_id)
        facts = {
            "member_id": routed.member_id, "referral_id": routed.referral_id,
            "service_category": routed.service_category.value, "origin": routed.origin,
            "encounter_id": routed.encounter_id, "chosen_npi": routed.chosen.npi, "chosen_tin": routed.chosen.tin,
        }
        await self._raise(uow, event, Kind.REFERRAL_ROUTED, routed.member_id, event.time,
                          f"referral:{routed.referral_id}", routed.encounter_id, None, facts,
                          EventParties(ordering_npi=routed.ordering_npi))

    async def on_leakage(self, uow: UnitOfWork, event: CloudEvent[Any]) -> None:
        leak: ReferralLeakageDetected = event.data
        _check_subject(event, leak.member_id)
        facts = {
            "member_id": leak.member_id, "referral_id": leak.referral_id,
            "service_category": leak.service_category.value, "routed_npi": leak.routed_npi,
            "actual_npi": leak.actual_npi, "leakage_kind": leak.leakage_kind, "occurred_on": leak.occurred_on,
        }
        await self._raise(uow, event, Kind.LEAKAGE, leak.member_id, event.time, f"referral:{leak.referral_id}", None,
                          None, facts, EventParties(ordering_npi=leak.ordering_npi))

    # ------------------------------------------------------------------- common path
    async def _raise(
        self, uow: UnitOfWork, event: CloudEvent[Any], kind: Kind, member_id: str, event_time: datetime,
        subject_key: str, encounter_id: str | None, patient_class: str | None, facts: dict[str, Any],
        parties: EventParties, due_date: date | None = None, source_event_id: str | None = None,
    ) -> None:
        source_event_id = source_event_id or event.id
        fact = store.AlertFact(
            subject_key=subject_key, kind=kind.value, member_id=member_id, event_time=event_time,
            encounter_id=encounter_id, patient_class=patient_class, due_date=due_date, facts=facts,
            parties=dataclasses.asdict(parties), source_event_id=source_event_id,
        )
        care_team = await _care_team_at(uow, member_id, event_time.date())
        organizations = _organizations(care_team, self.payer_organization_id)
        subscriptions = await _subscriptions(uow, organizations)
        planned = plan_alerts(self.rules, kind, patient_class, care_team, parties, subscriptions,
                              self.payer_organization_id)
        # On the event's own span (a child span per alerting fact cost more than the planning it timed).
        span = trace.get_current_span()
        span.set_attribute("cth.alert_kind", kind.value)
        span.set_attribute("cth.alerts_planned", len(planned))
        alerts = []
        for alert in planned:
            all_facts = dict(facts, kind=kind.value, priority=alert.priority, event_time=event_time)
            alerts.append(self._new_alert(
                alert, member_id=member_id, subject_key=subject_key, encounter_id=encounter_id,
                patient_class=patient_class, event_time=event_time, due_date=due_date,
                content=_jsonable(content_for(alert.recipient.role, all_facts)), source_event_id=source_event_id,
            ))
        await self._store(uow, fact, alerts, subscriptions)

    def _new_alert(
        self, alert: PlannedAlert, *, member_id: str, subject_key: str, encounter_id: str | None,
        patient_class: str | None, event_time: datetime, due_date: date | None, content: dict[str, Any],
        source_event_id: str, retracts_id: str | None = None,
    ) -> tuple[PlannedAlert, store.NewNotification]:
        recipient = alert.recipient
        return alert, store.NewNotification(
            notification_id=notification_id_for(recipient.organization_id, recipient.recipient_id, subject_key,
                                                alert.kind.value, alert.retraction),
            organization_id=recipient.organization_id, recipient_id=recipient.recipient_id,
            recipient_role=recipient.role, member_id=member_id, kind=alert.kind.value, priority=alert.priority,
            retraction=alert.retraction, retracts_id=retracts_id, subject_key=subject_key, encounter_id=encounter_id,
            patient_class=patient_class, event_time=event_time, due_date=due_date, content=content,
            source_event_id=source_event_id, rules_version=self.rules.version,
        )

    async def _store(
        self, uow: UnitOfWork, fact: store.AlertFact | None,
        alerts: Sequence[tuple[PlannedAlert, store.NewNotification]], subscriptions: Sequence[Any],
    ) -> None:
        """Queue the fact, the alerts and their push deliveries for the lane's one insert
        (:func:`_insert_alerts`, at the transaction's end or before a read that needs them)."""
        targets = [[t.subscription_id for t in delivery_subscriptions(
            alert.recipient, alert.kind, n.patient_class, subscriptions)] for alert, n in alerts]
        uow.defer(_ALERTS, _QueuedAlerts(
            store.AlertsToInsert(fact, [n for _, n in alerts], targets, store.current_traceparent()),
            cause=uow.cause, context=otel_context.get_current(),
        ), _insert_alerts, per_event_when_isolated=True)


@dataclasses.dataclass(frozen=True)
class _QueuedAlerts:
    """One fact's alerts waiting for the lane's insert, with the event and span that raised them."""

    rows: store.AlertsToInsert
    cause: CloudEvent[Any] | None
    context: otel_context.Context


async def _insert_alerts(uow: UnitOfWork, queued: list[_QueuedAlerts]) -> None:
    """The queued facts, alerts and deliveries in one statement; each alert inserted now (not one this
    recipient already had: a resend, a replay or a second instance of the fact) waits for its sequence
    number and its ``notification.created`` (:func:`_finish_new_alerts`)."""
    inserted = await store.insert_alerts(uow.conn, [q.rows for q in queued])
    for q in queued:
        for n in q.rows.alerts:
            if n.notification_id not in inserted:
                continue
            inserted.discard(n.notification_id)  # a later copy of it in this lane was skipped
            uow.defer(_NEW_ALERTS, _NewAlert(
                notification_id=n.notification_id, organization_id=n.organization_id,
                recipient_id=n.recipient_id, member_id=n.member_id, event_time=n.event_time,
                created={
                    "notification_id": n.notification_id, "member_id": n.member_id,
                    "recipient_id": n.recipient_id, "recipient_role": _contract_role(n.recipient_role),
                    "organization_id": n.organization_id, "kind": NotificationKind(n.kind),
                    "priority": n.priority, "encounter_id": n.encounter_id, "retraction": n.retraction,
                    "source_event_id": n.source_event_id,
                },
                cause=q.cause, context=q.context,
            ), _finish_new_alerts, last=True)


def _check_subject(event: CloudEvent[Any], member_id: str) -> None:
    if event.subject != member_id:
        # The subject is the partition key: a mismatch would break per-member ordering.
        raise Rejected("subject_mismatch", "envelope subject differs from data.member_id")


def _organizations(care_team: Sequence[CareTeamEntry], payer_organization_id: str) -> list[str]:
    return sorted({e.tin for e in care_team if e.tin} | {payer_organization_id})


def _diagnoses(diagnoses: Sequence[Any]) -> list[dict[str, Any]]:
    return [{"code": d.code, "primary": d.primary} for d in diagnoses]


def _contract_role(role: str) -> Any:
    # The contract has no "ordering_provider" role: the ordering clinician is a treating provider.
    return "receiving_provider" if role == "ordering_provider" else role


def _jsonable(content: dict[str, Any]) -> dict[str, Any]:
    return {k: (v.isoformat() if isinstance(v, datetime | date) else v) for k, v in content.items()}


def _json(raw: Any) -> dict[str, Any]:
    return json.loads(raw) if isinstance(raw, str) else dict(raw)
