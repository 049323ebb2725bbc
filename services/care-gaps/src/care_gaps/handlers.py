"""Use cases of the care-gaps service, one per consumed event type, each inside the batch
transaction (``uow.conn``) with its produced events queued on the outbox (``uow.publish``).

Idempotency beyond the inbox: gap ids are deterministic per (encounter, measure); the
latest ADT fact by event time wins (an older resend or A08 never overwrites a newer one);
cancels compare instants (an A13 at T cancels discharges at or before T, whatever the
arrival order); evidence is stored so it counts whether it arrives before or after the
discharge; every state change is a guarded UPDATE, so a repeated fact changes nothing and
emits nothing.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta, timezone
from typing import Any

import asyncpg
from cth_shared.contracts import CloudEvent
from cth_shared.contracts.codes import PatientClass
from cth_shared.contracts.events import (
    AttributionChanged,
    CareGapClosed,
    CareGapNotApplicable,
    CareGapOpened,
    CareGapOverdue,
    ClaimAdjudicated,
    EncounterAdmitted,
    EncounterCancelled,
    EncounterDischarged,
    EncounterTransferred,
    GapMeasure,
    GapOwner,
    MemberDisenrolled,
    MemberSnapshot,
    VirtualVisitCompleted,
)
from cth_shared.messaging.consumer import Rejected
from cth_shared.messaging.outbox import UnitOfWork, subjects

from . import store
from .domain.clock import ClockMode, advance_event_clock, event_clock_applies, is_live, overdue_at
from .domain.evidence import Evidence, evidence_closes
from .domain.identity import gap_id
from .domain.measures import MeasureConfig
from .domain.ownership import CareTeam, Owner, gap_owner, member_organization
from .domain.priority import age_65_date, gap_priority
from .domain.readmission import (
    NO_READMISSION_RULE,
    UNPLANNED_READMISSION_RULE,
    PriorDischarge,
    index_discharge_for,
    is_planned,
)
from .domain.windows import DischargeFacts, MemberFacts, plan_discharge_gaps

Handler = Callable[[UnitOfWork, CloudEvent[Any]], Awaitable[None]]

#: not_applicable reasons the contract allows; a local reason outside it is published as the
#: closest contract value (see the report's contract wish for ``criteria_no_longer_met``).
_CONTRACT_REASONS = {"encounter_cancelled", "expired", "acute_transfer", "hospice", "disenrolled", "readmitted"}
FOLLOW_UP_MEASURES = tuple(m for m in GapMeasure if m != GapMeasure.READMISSION_WATCH)


@dataclass(frozen=True)
class ClockPolicy:
    """How consumed events drive the overdue clock (see ``domain.clock``)."""

    mode: ClockMode = "both"
    replay_lag: timedelta = timedelta(hours=24)
    max_future_skew: timedelta = timedelta(hours=1)


def _offset_of(discharged_at: datetime) -> timezone:
    offset = discharged_at.utcoffset() or timedelta(0)
    return timezone(offset)


def _care_team(member: asyncpg.Record | None) -> CareTeam:
    if member is None:
        return CareTeam()
    return CareTeam(
        pcp_npi=member["pcp_npi"], pcp_tin=member["pcp_tin"], v1c_npi=member["v1c_npi"],
        v1c_tin=member["v1c_tin"],
        care_manager_id=member["team_care_manager_id"] or member["enrollment_care_manager_id"],
    )


#: The lane's encounter rows (memo key): the encounters of the lane's events and its members' other encounters
#: near the lane's instants, read at the first need and kept current by each update, so readmission checks
#: read them from memory.
_ENCOUNTER_ROWS = "encounter_rows"
#: The same rows (the same dicts) by member id (memo key).
_ENCOUNTERS_BY_MEMBER = "encounters_by_member"
#: Per member, the span whose discharges and inpatient admissions are all in ``_ENCOUNTER_ROWS`` (memo key;
#: ``None``: every encounter of the member is).
_ENCOUNTERS_OF = "encounters_of_members"

_INSTANTS = ("admitted_at", "transferred_at", "discharged_at", "cancelled_at")
#: Deferred work (see ``UnitOfWork.defer``): encounter rows changed in the lane.
_ENCOUNTER_WRITES = "encounter-writes"


async def _save_encounters(uow: UnitOfWork, rows: list[dict[str, Any]]) -> None:
    latest = {row["encounter_id"]: row for row in rows}  # each changed row once, as it ends up
    await store.save_encounters(uow.conn, list(latest.values()))


def _lane_spans(events: Iterable[CloudEvent[Any]], margin: timedelta) -> dict[str, tuple[datetime, datetime]]:
    """Per member of the lane's encounter events: from its earliest to its latest instant, widened by
    ``margin`` on both sides."""
    spans: dict[str, tuple[datetime, datetime]] = {}
    for event in events:
        data = event.data
        if not event.type.startswith("encounter.") or event.subject != getattr(data, "member_id", None):
            continue
        for name in _INSTANTS:
            instant = getattr(data, name, None)
            if instant is not None:
                lo, hi = spans.get(event.subject, (instant, instant))
                spans[event.subject] = (min(lo, instant), max(hi, instant))
    return {member: (lo - margin, hi + margin) for member, (lo, hi) in spans.items()}


async def _load_encounters(uow: UnitOfWork, first_seen: dict[str, tuple[str, str, str]],
                           spans: dict[str, tuple[datetime, datetime] | None]) -> dict[str, dict[str, Any]]:
    known: dict[str, dict[str, Any]] = uow.memo.setdefault(_ENCOUNTER_ROWS, {})
    by_member: dict[str, dict[str, dict[str, Any]]] = uow.memo.setdefault(_ENCOUNTERS_BY_MEMBER, {})
    for encounter_id, row in (await store.lane_encounters(uow.conn, first_seen, spans)).items():
        # A row already in memory is the same as the database's (every update writes both): keep the one
        # the lane's handlers hold.
        row = known.setdefault(encounter_id, row)
        by_member.setdefault(row["member_id"], {})[encounter_id] = row
    uow.memo.setdefault(_ENCOUNTERS_OF, {}).update(spans)
    return known


async def _member_encounters(uow: UnitOfWork, member_id: str, since: datetime,
                             until: datetime) -> list[dict[str, Any]]:
    """The member's encounter rows, as this transaction has them, including every one discharged or made
    inpatient from ``since`` to ``until`` (see ``_ENCOUNTER_ROWS``); a need outside what the lane read
    reads all of the member's."""
    covered = uow.memo.get(_ENCOUNTERS_OF, {})
    span = covered.get(member_id, ())
    if span == () or (span is not None and not span[0] <= since <= until <= span[1]):
        await _load_encounters(uow, {}, {member_id: None})
    return list(uow.memo[_ENCOUNTERS_BY_MEMBER].get(member_id, {}).values())


@dataclass
class _Unheld:
    """What the lane knows of a member's active gaps that it does not hold (read as counts, not rows)."""

    active: int  # open and overdue
    open_count: int  # of those, the ones the priority counts (not readmission watches)
    lowest: float | None  # their priorities' range
    highest: float | None


class _LaneGaps:
    """The lane's gap rows (memo ``_GAP_ROWS``), kept current by every write (each returns the rows it
    changed; the lane writes only rows it holds).

    It holds every gap of the encounters in ``encounters``, and every active gap of the members in
    ``full``. Of the other active gaps of the members in ``unheld`` it holds only counts and the range of
    their priorities (:class:`_Unheld`): a member's overdue gaps pile up over the years, and a discharge
    needs their number, not their rows. The first need reads the gaps of all of the lane's encounters and
    the counts of all of its members at once."""

    def __init__(self) -> None:
        self.rows: dict[str, dict[str, Any]] = {}
        self.by_encounter: dict[str, dict[str, dict[str, Any]]] = {}
        self.by_member: dict[str, dict[str, dict[str, Any]]] = {}
        self.encounters: set[str] = set()
        self.full: set[str] = set()
        self.unheld: dict[str, _Unheld] = {}
        #: Priorities set in the lane and not written yet (see :func:`_save_priorities`): of held gaps (gap
        #: id -> priority), and of the members' active gaps the lane does not hold (member -> priority).
        self.priorities: dict[str, float] = {}
        self.member_priorities: dict[str, float] = {}

    def put(self, row: Mapping[str, Any], *, written: bool) -> dict[str, Any]:
        """Hold ``row``; a read does not replace a row the lane holds (its writes keep that one current)."""
        gap_id = row["gap_id"]
        held = self.rows.get(gap_id)
        if held is not None and not written:
            return held
        kept = dict(row)
        member_id = kept["member_id"]
        if held is None and not written and kept["status"] in store.ACTIVE:
            unheld = self.unheld.get(member_id)
            if unheld is not None:  # counted there until now
                unheld.active -= 1
                if kept["measure"] != GapMeasure.READMISSION_WATCH.value:
                    unheld.open_count -= 1
            pending = self.member_priorities.get(member_id)
            if pending is not None:  # the member's write would have given it this priority
                self.priorities.setdefault(gap_id, pending)
        if gap_id in self.priorities:  # the row predates the priority set since
            kept["priority"] = self.priorities[gap_id]
        self.rows[gap_id] = kept
        self.by_encounter.setdefault(kept["encounter_id"], {})[gap_id] = kept
        self.by_member.setdefault(member_id, {})[gap_id] = kept
        return kept

    def of_encounter(self, encounter_id: str) -> dict[str, dict[str, Any]]:
        return {row["measure"]: row for row in self.by_encounter.get(encounter_id, {}).values()}

    def active_of(self, member_id: str) -> list[dict[str, Any]]:
        """The member's active gaps the lane holds (all of them once the member is in ``full``)."""
        return sorted((row for row in self.by_member.get(member_id, {}).values() if row["status"] in store.ACTIVE),
                      key=lambda row: (row["due_date"], row["gap_id"]))


_GAP_ROWS = "gap_rows"


async def _lane_gaps(uow: UnitOfWork, encounter_id: str | None = None, member_id: str | None = None) -> _LaneGaps:
    """The lane's gaps, with ``encounter_id``'s gaps among them and ``member_id``'s active ones counted."""
    gaps: _LaneGaps | None = uow.memo.get(_GAP_ROWS)
    encounters: set[str] = set()
    members: set[str] = set()
    if gaps is None:
        gaps = uow.memo[_GAP_ROWS] = _LaneGaps()
        encounters = {e.data.encounter_id for e in uow.events
                      if e.type.startswith("encounter.") and getattr(e.data, "encounter_id", None)}
        members = subjects(uow.events)
    if encounter_id is not None and encounter_id not in gaps.encounters:
        encounters.add(encounter_id)
    if member_id is not None and member_id not in gaps.unheld and member_id not in gaps.full:
        members.add(member_id)
    if encounters:
        for row in await store.gaps_of_encounters(uow.conn, sorted(encounters)):
            gaps.put(row, written=False)
        gaps.encounters |= encounters
    if members:
        held = [gap_id for member in members for gap_id in gaps.by_member.get(member, {})]
        found = await store.active_gap_counts(uow.conn, sorted(members), held)
        for member in members:
            gaps.unheld[member] = _Unheld(*found.get(member, (0, 0, None, None)))
    return gaps


async def _gaps_of_encounter(uow: UnitOfWork, encounter_id: str) -> dict[str, dict[str, Any]]:
    """Every gap of the encounter (measure -> row), as this transaction has them."""
    return (await _lane_gaps(uow, encounter_id=encounter_id)).of_encounter(encounter_id)


async def _active_gaps(uow: UnitOfWork, member_id: str) -> list[dict[str, Any]]:
    """All of the member's open and overdue gaps by due date, as this transaction has them."""
    gaps = await _lane_gaps(uow)
    if member_id not in gaps.full:
        held = list(gaps.by_member.get(member_id, {}))
        for row in await store.active_gaps_of_member(uow.conn, member_id, held):
            gaps.put(row, written=False)
        gaps.full.add(member_id)
        gaps.unheld.pop(member_id, None)
    return gaps.active_of(member_id)


async def _open_gap_count(uow: UnitOfWork, member_id: str) -> int:
    """How many open and overdue gaps (not readmission watches) the member has, as this transaction has them."""
    gaps = await _lane_gaps(uow, member_id=member_id)
    unheld = gaps.unheld.get(member_id)
    return (unheld.open_count if unheld is not None else 0) + sum(
        1 for g in gaps.active_of(member_id) if g["measure"] != GapMeasure.READMISSION_WATCH.value)


_PRIORITY_WRITES = "gap-priorities"


def _set_priority(uow: UnitOfWork, member_id: str, priority: float) -> None:
    """Give the member's active gaps ``priority``. The lane writes the priorities it set in one statement at
    its end (in the isolated pass, at the end of each event): each held gap's last one, and each member's
    last one to its active gaps the lane does not hold (those cannot change in the lane)."""
    gaps: _LaneGaps = uow.memo[_GAP_ROWS]
    changed = False
    for gap in gaps.active_of(member_id):
        if gap["priority"] != priority:
            gap["priority"] = gaps.priorities[gap["gap_id"]] = priority
            changed = True
    unheld = gaps.unheld.get(member_id)
    if unheld is not None and unheld.active and not unheld.lowest == unheld.highest == priority:
        gaps.member_priorities[member_id] = priority
        unheld.lowest = unheld.highest = priority
        changed = True
    if changed:
        uow.defer(_PRIORITY_WRITES, member_id, _save_priorities, per_event_when_isolated=True)


async def _save_priorities(uow: UnitOfWork, _: list[str]) -> None:
    gaps: _LaneGaps | None = uow.memo.get(_GAP_ROWS)
    if gaps is None or not (gaps.priorities or gaps.member_priorities):
        return
    held = [gap_id for member in gaps.member_priorities for gap_id in gaps.by_member.get(member, {})]
    await store.set_priorities(uow.conn, gaps.priorities, gaps.member_priorities, held)
    gaps.priorities.clear()
    gaps.member_priorities.clear()


def _written(uow: UnitOfWork, rows: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Rows a write returned: the lane holds them from now on (when it holds gaps at all)."""
    gaps: _LaneGaps | None = uow.memo.get(_GAP_ROWS)
    return [gaps.put(row, written=True) if gaps is not None else dict(row) for row in rows]


#: The lane's evidence (memo key): ``(first day, last day, member -> [(evidence, occurred_at)])`` for the
#: members the lane discharges, over the days their gaps' windows can cover. A handler that stores or
#: removes evidence drops it.
_EVIDENCE = "evidence"
#: How far after a discharge day a gap's window can end (the longest window is 30 days).
_EVIDENCE_DAYS_AFTER = timedelta(days=45)


async def _evidence(uow: UnitOfWork, member_id: str, start: date, end: date) -> list[tuple[Evidence, datetime]]:
    """The member's evidence with service dates from ``start`` to ``end``, ordered as
    :func:`store.member_evidence` orders it. The first need in a lane reads it for every member the lane
    discharges, over every window the lane's discharges can open."""
    held = uow.memo.get(_EVIDENCE)
    if held is None:
        days = [e.data.discharged_at.date() for e in uow.events if e.type == "encounter.discharged"]
        members = {e.subject for e in uow.events if e.type == "encounter.discharged"} | {member_id}
        first, last = (min(days) - timedelta(days=1), max(days) + _EVIDENCE_DAYS_AFTER) if days else (start, end)
        first, last = min(first, start), max(last, end)
        found = await store.members_evidence(uow.conn, sorted(members), first, last)
        held = uow.memo[_EVIDENCE] = (first, last, {m: found.get(m, []) for m in members})
    first, last, by_member = held
    if member_id not in by_member or not first <= start <= end <= last:
        return await store.member_evidence(uow.conn, member_id, start, end)
    return [(item, at) for item, at in by_member[member_id] if start <= item.service_date <= end]


#: The lane's member rows (memo key), read for every member of the lane at the first need.
_MEMBER_ROWS = "member_rows"


async def _member(uow: UnitOfWork, member_id: str) -> asyncpg.Record | None:
    """The member's row (None: not enrolled yet). The first need in a lane reads the rows of every member
    of the lane's events at once; a handler that writes a member's row first drops it (:func:`_forget_member`)."""
    row: asyncpg.Record | None = await uow.read_for_lane(
        _MEMBER_ROWS, member_id, subjects,
        lambda members: store.get_members(uow.conn, members), lambda: None)
    return row


def _forget_member(uow: UnitOfWork, member_id: str) -> None:
    uow.memo.get(_MEMBER_ROWS, {}).pop(member_id, None)


def _owner_model(owner_role: str, owner_id: str | None) -> GapOwner:
    return GapOwner(role=owner_role, id=owner_id)  # type: ignore[arg-type]  # role checked by the model


class CareGapsUseCases:
    """The handlers, closed over the measure configuration and the clock policy."""

    def __init__(self, config: MeasureConfig, clock: ClockPolicy,
                 wall_clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self.config = config
        self.clock = clock
        self._now = wall_clock
        # How far apart a discharge and an admission that readmits after it can be, as instants: the window
        # is in local dates, so two more days cover any pair of UTC offsets.
        self._history_margin = timedelta(days=config.readmission_window_days + 2)

    def mapping(self) -> Mapping[str, Handler]:
        """Event type -> handler, each followed by the event-clock step."""
        routes: dict[str, Handler] = {
            "encounter.admitted": self.on_admitted,
            "encounter.transferred": self.on_transferred,
            "encounter.discharged": self.on_discharged,
            "encounter.cancelled": self.on_cancelled,
            "virtual_visit.completed": self.on_virtual_visit,
            "claim.adjudicated": self.on_claim,
            "member.enrolled": self.on_member_snapshot,
            "member.updated": self.on_member_snapshot,
            "member.disenrolled": self.on_disenrolled,
            "attribution.changed": self.on_attribution_changed,
        }
        return {name: self._with_event_clock(handler) for name, handler in routes.items()}

    def _with_event_clock(self, handler: Handler) -> Handler:
        async def handle(uow: UnitOfWork, event: CloudEvent[Any]) -> None:
            await handler(uow, event)
            # The clock moves once per lane transaction (one statement, atomic with the events'
            # effects); an event whose handler rejects it is rolled back with its savepoint and
            # does not move the clock. Every lane moves the tenant's one clock row, and waits for
            # the lanes that moved it before until they commit: the move comes last.
            uow.defer("event-clock", event, self._advance_event_clocks, last=True)

        handle.__name__ = getattr(handler, "__name__", "handle")
        return handle

    # ----------------------------------------------------------------------- encounters
    async def on_discharged(self, uow: UnitOfWork, event: CloudEvent[Any]) -> None:
        """A discharge (A03, or its A08 update) opens, re-windows or retracts the encounter's gaps."""
        discharge: EncounterDischarged = event.data
        encounter = await self._encounter(uow, event, discharge.encounter_id, discharge.member_id,
                                          discharge.patient_class)
        if encounter["discharge_fact_time"] is not None and event.time < encounter["discharge_fact_time"]:
            return  # an older version of this discharge than the one applied: stale resend
        cancelled_at = encounter["discharge_cancelled_at"]
        if cancelled_at is not None and discharge.discharged_at > cancelled_at:
            cancelled_at = None  # a new discharge after the A13: the encounter is discharged again
        columns: dict[str, Any] = {
            "patient_class": discharge.patient_class.value,
            "discharged_at": discharge.discharged_at,
            "discharge_offset_min": int((discharge.discharged_at.utcoffset() or timedelta(0)).total_seconds() // 60),
            "disposition": discharge.disposition,
            "discharge_event_id": event.id,
            "discharge_fact_time": event.time,
            "discharge_cancelled_at": cancelled_at,
        }
        if discharge.admitted_at is not None and encounter["admitted_at"] is None:
            columns["admitted_at"] = discharge.admitted_at
            if discharge.patient_class == PatientClass.INPATIENT:
                columns["inpatient_since"] = discharge.admitted_at
                columns["admit_event_id"] = event.id
        await self._update_encounter(uow, discharge.encounter_id, **columns)

        if encounter["admit_cancelled_at"] is not None or cancelled_at is not None:
            await self._retract_encounter(uow, event, discharge.encounter_id, "encounter_cancelled")
            return
        member = await _member(uow, discharge.member_id)
        primary = next((d.code for d in discharge.diagnoses if d.primary), None)
        facts = DischargeFacts(discharge.encounter_id, discharge.patient_class, discharge.discharged_at,
                               discharge.disposition, primary)
        member_facts = MemberFacts(
            risk_score=member["risk_score"] if member else 0.0,
            termination_date=member["termination_date"] if member else None,
        )
        plan = plan_discharge_gaps(facts, member_facts, self.config)
        await self._reconcile_gaps(uow, event, discharge.member_id, facts, plan.windows,
                                            plan.exclusion or "criteria_no_longer_met", member)
        # Later admissions already known (out-of-order arrival) may readmit after this discharge,
        # and this encounter's own admission may readmit after an earlier one.
        # (An admission later than the readmission window can not have this discharge as its index.)
        until = discharge.discharged_at + self._history_margin
        nearby = await _member_encounters(uow, discharge.member_id, discharge.discharged_at, until)
        for admission in store.inpatient_admissions_after(nearby, discharge.discharged_at, until):
            await self._apply_readmission(uow, event, discharge.member_id, admission["encounter_id"],
                                          admission["inpatient_since"], admission["admit_event_id"] or event.id)
        if discharge.patient_class == PatientClass.INPATIENT:
            since = columns.get("inpatient_since") or encounter["inpatient_since"]
            if since is not None:
                await self._apply_readmission(uow, event, discharge.member_id, discharge.encounter_id, since,
                                              encounter["admit_event_id"] or event.id)

    async def on_admitted(self, uow: UnitOfWork, event: CloudEvent[Any]) -> None:
        """An admission (A01/A04/A08) is recorded; an inpatient one may be a 30-day readmission."""
        admitted: EncounterAdmitted = event.data
        encounter = await self._encounter(uow, event, admitted.encounter_id, admitted.member_id,
                                          admitted.patient_class)
        if encounter["admit_fact_time"] is not None and event.time < encounter["admit_fact_time"]:
            return
        columns: dict[str, Any] = {"admitted_at": admitted.admitted_at, "admit_fact_time": event.time,
                                   "patient_class": admitted.patient_class.value}
        if encounter["discharged_at"] is not None:
            columns.pop("patient_class")  # the discharge's class is the later fact
        elif (admitted.patient_class != PatientClass.INPATIENT and encounter["inpatient_since"] is not None
              and encounter["inpatient_since"] >= admitted.admitted_at):
            columns.pop("patient_class")  # a later conversion to inpatient (A06) that arrived first stands
        reinstated = (encounter["admit_cancelled_at"] is not None and admitted.trigger != "A08"
                      and event.time > encounter["admit_cancelled_at"])
        if reinstated:
            columns["admit_cancelled_at"] = None
        if admitted.patient_class == PatientClass.INPATIENT:
            if encounter["inpatient_since"] is None or encounter["admit_event_id"] is None or reinstated:
                columns["admit_event_id"] = event.id
            columns["inpatient_since"] = admitted.admitted_at
        await self._update_encounter(uow, admitted.encounter_id, **columns)
        if (encounter["admit_cancelled_at"] is None or reinstated) and admitted.patient_class == PatientClass.INPATIENT:
            await self._apply_readmission(uow, event, admitted.member_id, admitted.encounter_id,
                                          admitted.admitted_at, columns.get("admit_event_id")
                                          or encounter["admit_event_id"] or event.id)

    async def on_transferred(self, uow: UnitOfWork, event: CloudEvent[Any]) -> None:
        """A transfer; an A06 conversion to inpatient counts as an inpatient admission at its time."""
        transfer: EncounterTransferred = event.data
        encounter = await self._encounter(uow, event, transfer.encounter_id, transfer.member_id,
                                          transfer.patient_class)
        converted = (transfer.patient_class == PatientClass.INPATIENT
                     and encounter["inpatient_since"] is None
                     and (transfer.from_patient_class is None or transfer.from_patient_class != PatientClass.INPATIENT))
        if not converted or encounter["admit_cancelled_at"] is not None:
            return
        await self._update_encounter(uow, transfer.encounter_id, inpatient_since=transfer.transferred_at,
                                     admit_event_id=event.id, patient_class=PatientClass.INPATIENT.value)
        await self._apply_readmission(uow, event, transfer.member_id, transfer.encounter_id,
                                      transfer.transferred_at, event.id)

    async def on_cancelled(self, uow: UnitOfWork, event: CloudEvent[Any]) -> None:
        """A13 (cancel discharge): that discharge's gaps become not applicable; A11 (cancel
        admit): everything the encounter opened becomes not applicable."""
        cancel: EncounterCancelled = event.data
        encounter = await self._encounter(uow, event, cancel.encounter_id, cancel.member_id, cancel.patient_class)
        if cancel.cancels == "admit":
            if encounter["admit_cancelled_at"] is None or cancel.cancelled_at > encounter["admit_cancelled_at"]:
                await self._update_encounter(uow, cancel.encounter_id, admit_cancelled_at=cancel.cancelled_at)
            await self._retract_encounter(uow, event, cancel.encounter_id, "encounter_cancelled")
            return
        previous = encounter["discharge_cancelled_at"]
        if previous is None or cancel.cancelled_at > previous:
            await self._update_encounter(uow, cancel.encounter_id, discharge_cancelled_at=cancel.cancelled_at)
        discharged_at = encounter["discharged_at"]
        if discharged_at is not None and discharged_at <= cancel.cancelled_at:
            await self._retract_encounter(uow, event, cancel.encounter_id, "encounter_cancelled")

    # ----------------------------------------------------------------------- evidence
    async def on_virtual_visit(self, uow: UnitOfWork, event: CloudEvent[Any]) -> None:
        """A completed V1C visit is closing evidence on its local start date."""
        visit: VirtualVisitCompleted = event.data
        evidence = Evidence(
            evidence_id=f"visit:{visit.visit_id}", source_event_id=event.id, source="virtual_visit",
            service_date=visit.started_at.date(), procedure_codes=frozenset(visit.procedure_codes),
            diagnosis_codes=frozenset(d.code for d in visit.diagnoses),
            medication_reconciliation=visit.medication_reconciliation,
            interactive_contact=visit.interactive_contact,
            face_to_face_modality=visit.modality in ("video", "in_home"),
        )
        await store.add_evidence(uow.conn, visit.member_id, None, visit.started_at, [evidence])
        uow.memo.pop(_EVIDENCE, None)
        await self._close_with_evidence(uow, event, visit.member_id)

    async def on_claim(self, uow: UnitOfWork, event: CloudEvent[Any]) -> None:
        """Paid and adjusted claim lines are closing evidence on their service date; a reversal or
        adjustment withdraws the replaced claim's evidence (gaps it already closed stay closed)."""
        claim: ClaimAdjudicated = event.data
        if claim.replaces_claim_id is not None:
            await store.remove_claim_evidence(uow.conn, claim.replaces_claim_id)
            uow.memo.pop(_EVIDENCE, None)
        if claim.status not in ("paid", "adjusted"):
            return
        items = [
            Evidence(
                evidence_id=f"claim:{claim.claim_id}:{line.line_number}", source_event_id=event.id, source="claim",
                service_date=line.service_from, procedure_codes=frozenset([line.procedure_code]),
                diagnosis_codes=frozenset(line.diagnoses), rendering_taxonomy=line.rendering_taxonomy,
            )
            for line in claim.lines if line.units > 0 and line.allowed_amount >= 0
        ]
        for item in items:
            occurred = datetime.combine(item.service_date, datetime.min.time(), tzinfo=UTC)
            await store.add_evidence(uow.conn, claim.member_id, claim.claim_id, occurred, [item])
            uow.memo.pop(_EVIDENCE, None)
        if items:
            await self._close_with_evidence(uow, event, claim.member_id)

    # ----------------------------------------------------------------------- members
    async def on_member_snapshot(self, uow: UnitOfWork, event: CloudEvent[Any]) -> None:
        """Enrollment: risk score, the date the member turns 65, termination, care manager."""
        member: MemberSnapshot = event.data
        _forget_member(uow, member.member_id)
        applied = await store.upsert_enrollment(
            uow.conn, member.member_id, event.tenant, risk_score=member.risk_score,
            turns_65_on=age_65_date(member.birth_date), termination_date=member.termination_date,
            care_manager_id=member.care_manager_id, fact_time=event.time,
        )
        if not applied:
            return
        if member.termination_date is not None:
            await self._disenroll(uow, event, member.member_id, member.termination_date)
        await self._refresh_owner(uow, member.member_id)
        await self._refresh_priority(uow, member.member_id, event.time.date())

    async def on_disenrolled(self, uow: UnitOfWork, event: CloudEvent[Any]) -> None:
        """HEDIS continuous enrollment: gaps due after the termination date are not applicable."""
        ended: MemberDisenrolled = event.data
        _forget_member(uow, ended.member_id)
        await store.set_termination(uow.conn, ended.member_id, event.tenant, ended.termination_date)
        await self._disenroll(uow, event, ended.member_id, ended.termination_date)
        await self._refresh_priority(uow, ended.member_id, event.time.date())

    async def on_attribution_changed(self, uow: UnitOfWork, event: CloudEvent[Any]) -> None:
        """The care team (gap owner) and the member's organization (worklist scope)."""
        change: AttributionChanged = event.data
        by_role: dict[str, Any] = {}
        for member in change.care_team:
            by_role.setdefault(member.role, member)
        pcp = by_role.get("pcp")
        v1c = by_role.get("v1c_provider")
        manager = by_role.get("care_manager")
        team = CareTeam(
            pcp_npi=change.pcp_npi or (pcp.id if pcp else None),
            pcp_tin=change.pcp_tin or (pcp.tin if pcp else None),
            v1c_npi=v1c.id if v1c else None, v1c_tin=v1c.tin if v1c else None,
            care_manager_id=manager.id if manager else None,
        )
        _forget_member(uow, change.member_id)
        applied = await store.upsert_care_team(
            uow.conn, change.member_id, event.tenant, pcp_npi=team.pcp_npi, pcp_tin=team.pcp_tin,
            v1c_npi=team.v1c_npi, v1c_tin=team.v1c_tin, care_manager_id=team.care_manager_id,
            organization_id=member_organization(team), effective_date=change.effective_date, fact_time=event.time,
        )
        if applied:
            await self._refresh_owner(uow, change.member_id)

    # ----------------------------------------------------------------------- overdue clock
    async def _advance_event_clocks(self, uow: UnitOfWork, events: list[CloudEvent[Any]]) -> None:
        """Move each tenant's event clock to the latest time among ``events`` (capped at wall time
        plus the allowed skew) and record whether the last of them was live traffic."""
        now = self._now()
        latest: dict[str, datetime] = {}
        last: dict[str, CloudEvent[Any]] = {}
        for event in events:
            candidate = advance_event_clock(latest.get(event.tenant), event.time, now, self.clock.max_future_skew)
            latest[event.tenant] = candidate
            last[event.tenant] = event
        for tenant in sorted(latest):  # one order for every lane: no lock-order deadlock
            await store.advance_clock(uow.conn, tenant, latest[tenant],
                                      is_live(last[tenant].time, now, self.clock.replay_lag))

    async def after_batch(self, uow: UnitOfWork, events: Sequence[CloudEvent[Any]]) -> None:
        """After a batch's lanes committed: flag what each tenant's event clock made overdue.

        Topics are not ordered with each other, and lanes commit independently: a discharge can
        be applied after a later event has already moved the clock past its gaps' due dates. So
        the sweep runs once per batch against the clock as it stands, outside the lanes (it
        touches every member's gaps, which the lanes lock), and catches the gaps this batch
        opened as well as those its events made overdue. Redelivered events count too: the
        sweep is idempotent, and a crash after the lanes' commits must not lose it."""
        if not event_clock_applies(self.clock.mode):
            return
        latest: dict[str, CloudEvent[Any]] = {}
        for event in events:
            if event.tenant not in latest or event.time >= latest[event.tenant].time:
                latest[event.tenant] = event
        for tenant, source in sorted(latest.items()):
            clock = await store.event_clock(uow.conn, tenant)
            if clock is None:
                continue
            uow.tenant, uow.cause = tenant, source  # produced events: the tenant's, caused by the latest event
            try:
                await self.sweep(uow, tenant, clock, f"event-clock-{source.id}"[:64])
            finally:
                uow.cause = None

    async def sweep(self, uow: UnitOfWork, tenant: str, clock: datetime, clock_source_id: str) -> int:
        """Flag open gaps whose due date passed at ``clock`` as overdue (once each) and close
        readmission watches whose 30 days passed without a readmission. Returns the count."""
        changed = 0
        for row in await store.flag_overdue(uow.conn, tenant, clock):
            uow.publish(CareGapOverdue(
                gap_id=row["gap_id"], member_id=row["member_id"], measure=GapMeasure(row["measure"]),
                encounter_id=row["encounter_id"], due_date=row["due_date"], detected_at=clock,
                owner=_owner_model(row["owner_role"], row["owner_id"]),
            ), subject=row["member_id"], time=clock)
            changed += 1
        for closed in await store.close_expired_watches(uow.conn, tenant, clock, clock_source_id,
                                                        NO_READMISSION_RULE):
            self._publish_closed(uow, closed)
            changed += 1
        return changed

    # ----------------------------------------------------------------------- internals
    async def _encounter(self, uow: UnitOfWork, event: CloudEvent[Any], encounter_id: str, member_id: str,
                         patient_class: PatientClass) -> dict[str, Any]:
        if event.subject != member_id:
            raise Rejected("subject_mismatch", "the envelope subject is not the encounter's member id")
        known: dict[str, dict[str, Any]] | None = uow.memo.get(_ENCOUNTER_ROWS)
        if known is None or encounter_id not in known:
            # The first need in a lane creates the encounters of the lane's events and reads them with
            # every other encounter of the lane's members, at once (a row created early is invisible:
            # it has no admission or discharge yet).
            first_seen: dict[str, tuple[str, str, str]] = {}
            spans: dict[str, tuple[datetime, datetime] | None] = {}
            if known is None:
                for other in uow.events:
                    data = other.data
                    if other.type.startswith("encounter.") and other.subject == getattr(data, "member_id", None):
                        first_seen.setdefault(data.encounter_id, (data.member_id, other.tenant,
                                                                  data.patient_class.value))
                spans.update(_lane_spans(uow.events, self._history_margin))
            first_seen.setdefault(encounter_id, (member_id, event.tenant, patient_class.value))
            known = await _load_encounters(uow, first_seen, spans)
        encounter = dict(known[encounter_id])
        if encounter["member_id"] != member_id:
            raise Rejected("encounter_member_mismatch", "the encounter id is known for another member")
        return encounter

    async def _update_encounter(self, uow: UnitOfWork, encounter_id: str, **columns: Any) -> None:
        """Change the encounter's row in the lane's memory; the lane writes its changed rows in one statement
        at its end (nothing in the lane reads encounters from the table but the lane's own read, which keeps
        the rows it holds). In the isolated pass the write ends each event's savepoint."""
        row = uow.memo[_ENCOUNTER_ROWS][encounter_id]  # _encounter() put it there
        row.update(columns)
        uow.defer(_ENCOUNTER_WRITES, row, _save_encounters, per_event_when_isolated=True)

    async def _reconcile_gaps(self, uow: UnitOfWork, event: CloudEvent[Any], member_id: str,
                              facts: DischargeFacts, windows: Iterable[Any], retract_reason: str,
                              member: asyncpg.Record | None) -> list[str]:
        """Make the encounter's gaps match the plan: open new ones, re-window changed open ones,
        retract active ones the plan no longer contains. Returns ids to announce as opened."""
        existing = await _gaps_of_encounter(uow, facts.encounter_id)
        owner: Owner = gap_owner(_care_team(member))
        offset = _offset_of(facts.discharged_at)
        to_open: list[store.NewGap] = []
        planned: set[str] = set()
        for window in windows:
            planned.add(window.measure.value)
            row = existing.get(window.measure.value)
            unchanged = (row is not None and row["window_start"] == window.window_start
                         and row["due_date"] == window.due_date and row["discharged_at"] == facts.discharged_at
                         and row["measure_version"] == self.config.version)
            if row is not None and (row["status"] == "closed" or (row["status"] in store.ACTIVE and unchanged)):
                continue  # closed stays closed; an identical resend changes nothing
            if row is not None and row["status"] == "not_applicable" and row["not_applicable_reason"] == "readmitted":
                continue  # a later readmission retired it; HEDIS counts the later discharge
            to_open.append(store.NewGap(
                gap_id=gap_id(facts.encounter_id, window.measure), tenant=event.tenant, member_id=member_id,
                encounter_id=facts.encounter_id, measure=window.measure.value, measure_version=self.config.version,
                discharged_at=facts.discharged_at, window_start=window.window_start, due_date=window.due_date,
                overdue_at=overdue_at(window.due_date, offset), owner_role=owner.role, owner_id=owner.id,
                opened_event_id=event.id,
            ))
        _written(uow, await store.open_gaps(uow.conn, to_open))
        to_announce = [gap.gap_id for gap in to_open]
        stale = [row["gap_id"] for measure, row in existing.items()
                 if measure not in planned and row["status"] in store.ACTIVE]
        if stale:
            await self._retract(uow, event, stale, retract_reason)
        if to_announce:
            await self._close_with_evidence(uow, event, member_id, only=set(to_announce), announce_first=to_announce,
                                            member=member)
        return to_announce

    async def _close_with_evidence(self, uow: UnitOfWork, event: CloudEvent[Any], member_id: str,
                                   only: set[str] | None = None, announce_first: list[str] | None = None,
                                   member: asyncpg.Record | None = None) -> None:
        """Close active gaps of the member that stored evidence satisfies (earliest evidence wins).
        ``announce_first``: gaps just opened, announced with the member's refreshed priority (read
        with ``member``, the member's row as the caller read it in this transaction)."""
        # (Gaps just opened are held: the others need not be read.)
        active = ((await _lane_gaps(uow, member_id=member_id)).active_of(member_id) if only is not None
                  else await _active_gaps(uow, member_id))
        gaps = [g for g in active
                if g["measure"] != GapMeasure.READMISSION_WATCH.value and (only is None or g["gap_id"] in only)]
        announced = False
        if announce_first:
            # The refresh sets this priority on every active gap: these rows, with it, are what it leaves.
            priority = await self._refresh_priority(uow, member_id, event.time.date(), member=member)
            rows = {g["gap_id"]: g for g in active}
            for gid in announce_first:
                if gid in rows:
                    self._publish_opened_row(uow, event, rows[gid], priority)
            announced = True
        if not gaps:
            return
        start = min(g["window_start"] for g in gaps)
        end = max(g["due_date"] for g in gaps)
        evidence = await _evidence(uow, member_id, start, end)
        closed_any = False
        for gap in gaps:
            measure = GapMeasure(gap["measure"])
            for item, occurred_at in evidence:
                rule = evidence_closes(measure, gap["window_start"], gap["due_date"], item, self.config)
                if rule is None:
                    continue
                closed = await store.close_gap(uow.conn, gap["gap_id"], closed_at=occurred_at,
                                               closing_event_id=item.source_event_id, closing_rule=rule)
                if closed is not None:
                    _written(uow, [closed])
                    self._publish_closed(uow, closed)
                    closed_any = True
                break
        if closed_any or not announced:
            await self._refresh_priority(uow, member_id, event.time.date())

    async def _apply_readmission(self, uow: UnitOfWork, event: CloudEvent[Any], member_id: str,
                                 admission_encounter_id: str, admitted_at: datetime, admission_event_id: str) -> None:
        """HEDIS PCR/TRC: an inpatient admission within 30 days of the last discharge closes that
        discharge's watch as a readmission (unless planned) and retires its follow-up gaps."""
        prior = [PriorDischarge(r["encounter_id"], r["discharged_at"], r["disposition"])
                 for r in store.member_discharges(await _member_encounters(
                     uow, member_id, admitted_at - self._history_margin, admitted_at))]
        index = index_discharge_for(admission_encounter_id, admitted_at, prior, self.config)
        if index is None:
            return
        gaps = await _gaps_of_encounter(uow, index.encounter_id)
        follow_ups = [row["gap_id"] for m, row in gaps.items()
                      if m != GapMeasure.READMISSION_WATCH.value and row["status"] in store.ACTIVE]
        if follow_ups:
            await self._retract(uow, event, follow_ups, "readmitted")
        watch = gaps.get(GapMeasure.READMISSION_WATCH.value)
        if watch is None or is_planned(index, self.config):
            return
        if watch["status"] == "closed" and watch["closing_rule"] != NO_READMISSION_RULE:
            return
        closed = await store.close_gap(uow.conn, watch["gap_id"], closed_at=admitted_at,
                                       closing_event_id=admission_event_id, closing_rule=UNPLANNED_READMISSION_RULE,
                                       allowed_statuses=("open", "overdue", "closed"))
        if closed is not None:
            _written(uow, [closed])
            self._publish_closed(uow, closed)
        await self._refresh_priority(uow, member_id, event.time.date())

    async def _retract_encounter(self, uow: UnitOfWork, event: CloudEvent[Any], encounter_id: str,
                                 reason: str) -> None:
        gaps = await _gaps_of_encounter(uow, encounter_id)
        ids = [row["gap_id"] for row in gaps.values() if row["status"] != "not_applicable"]
        if ids:
            await self._retract(uow, event, ids, reason, statuses=("open", "overdue", "closed"))

    async def _retract(self, uow: UnitOfWork, event: CloudEvent[Any], gap_ids: list[str], reason: str,
                       statuses: tuple[str, ...] = store.ACTIVE) -> None:
        rows = _written(uow, await store.mark_not_applicable(uow.conn, gap_ids, reason, statuses))
        published_reason = reason if reason in _CONTRACT_REASONS else "encounter_cancelled"
        member_ids = set()
        for row in sorted(rows, key=lambda r: r["gap_id"]):
            uow.publish(CareGapNotApplicable(
                gap_id=row["gap_id"], member_id=row["member_id"], measure=GapMeasure(row["measure"]),
                encounter_id=row["encounter_id"], reason=published_reason,  # type: ignore[arg-type]
            ), subject=row["member_id"], time=event.time)
            member_ids.add(row["member_id"])
        for member_id in member_ids:
            await self._refresh_priority(uow, member_id, event.time.date())

    async def _disenroll(self, uow: UnitOfWork, event: CloudEvent[Any], member_id: str, termination: date) -> None:
        active = await _active_gaps(uow, member_id)
        ids = [g["gap_id"] for g in active if g["due_date"] > termination]
        if ids:
            await self._retract(uow, event, ids, "disenrolled")

    async def _refresh_owner(self, uow: UnitOfWork, member_id: str) -> None:
        owner = gap_owner(_care_team(await _member(uow, member_id)))
        active = await _active_gaps(uow, member_id)
        if any((g["owner_role"], g["owner_id"]) != (owner.role, owner.id) for g in active):
            await store.set_member_owner(uow.conn, member_id, owner.role, owner.id)
            for g in active:
                g["owner_role"], g["owner_id"] = owner.role, owner.id

    async def _refresh_priority(self, uow: UnitOfWork, member_id: str, as_of: date, *,
                                member: asyncpg.Record | None = None) -> float:
        """Rank the member's active gaps; ``member`` spares the read when the caller just made it in this
        transaction (and did not change it since)."""
        if member is None:
            member = await _member(uow, member_id)
        open_count = await _open_gap_count(uow, member_id)
        turns_65_on = member["turns_65_on"] if member else None
        priority = gap_priority(
            member["risk_score"] if member else 0.0,
            turns_65_on is not None and turns_65_on <= as_of,
            open_count, self.config,
        )
        _set_priority(uow, member_id, priority)
        return priority

    def _publish_opened_row(self, uow: UnitOfWork, event: CloudEvent[Any], row: asyncpg.Record,
                            priority: float) -> None:
        uow.publish(CareGapOpened(
            gap_id=row["gap_id"], member_id=row["member_id"], measure=GapMeasure(row["measure"]),
            encounter_id=row["encounter_id"], discharged_at=row["discharged_at"],
            window_start=row["window_start"], due_date=row["due_date"],
            owner=_owner_model(row["owner_role"], row["owner_id"]), priority=priority,
            measure_version=row["measure_version"],
        ), subject=row["member_id"], time=event.time)

    def _publish_closed(self, uow: UnitOfWork, row: asyncpg.Record) -> None:
        uow.publish(CareGapClosed(
            gap_id=row["gap_id"], member_id=row["member_id"], measure=GapMeasure(row["measure"]),
            encounter_id=row["encounter_id"], closed_at=row["closed_at"],
            closing_event_id=row["closing_event_id"], closing_rule=row["closing_rule"],
        ), subject=row["member_id"], time=row["closed_at"])


__all__ = ["CareGapsUseCases", "ClockPolicy"]
