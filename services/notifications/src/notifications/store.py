"""asyncpg repository for the ``notifications`` schema (unqualified names: search_path is set)."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

import asyncpg
from opentelemetry import propagate

from .domain.rules import CareTeamEntry, Subscription

NEW_ALERT_CHANNEL = "cth_notifications"  # LISTEN/NOTIFY channel: delivered to listeners on commit


# --------------------------------------------------------------------------- care team
async def record_care_team(
    conn: asyncpg.Connection, member_id: str, effective_from: date, method: str,
    care_team: Sequence[dict[str, Any]], source_event_id: str,
) -> None:
    """Upsert a snapshot and re-derive every effective_to of the member (order of arrival is irrelevant)."""
    await conn.execute(
        "INSERT INTO care_team_history(member_id, effective_from, method, care_team, source_event_id)"
        " VALUES ($1, $2, $3, $4::jsonb, $5)"
        " ON CONFLICT (member_id, effective_from) DO UPDATE SET method = excluded.method,"
        " care_team = excluded.care_team, source_event_id = excluded.source_event_id, recorded_at = now()",
        member_id, effective_from, method, json.dumps(list(care_team)), source_event_id,
    )
    await conn.execute(
        "UPDATE care_team_history h SET effective_to = n.next_from"
        " FROM (SELECT effective_from, lead(effective_from) OVER (ORDER BY effective_from) AS next_from"
        "       FROM care_team_history WHERE member_id = $1) n"
        " WHERE h.member_id = $1 AND h.effective_from = n.effective_from"
        " AND h.effective_to IS DISTINCT FROM n.next_from",
        member_id,
    )


@dataclass(frozen=True)
class CareTeamSnapshot:
    """One row of a member's care-team history: ``team`` from ``effective_from`` until ``effective_to``."""

    effective_from: date
    effective_to: date | None
    team: tuple[CareTeamEntry, ...]


async def care_team_histories(conn: asyncpg.Connection, member_ids: Sequence[str]) -> dict[str, list[CareTeamSnapshot]]:
    """The care-team histories of ``member_ids`` in one read (members without one are absent)."""
    rows = await conn.fetch(
        "SELECT member_id, effective_from, effective_to, care_team FROM care_team_history"
        " WHERE member_id = ANY($1::text[])",
        list(member_ids),
    )
    found: dict[str, list[CareTeamSnapshot]] = {}
    for row in rows:
        team = tuple(CareTeamEntry(m["role"], m["id"], m.get("tin")) for m in json.loads(row["care_team"]))
        found.setdefault(row["member_id"], []).append(
            CareTeamSnapshot(row["effective_from"], row["effective_to"], team))
    return found


def care_team_in_force(history: Sequence[CareTeamSnapshot], on: date) -> list[CareTeamEntry]:
    """The care team in force on ``on`` (the event's date), empty when none was known then."""
    current = [s for s in history if s.effective_from <= on and (s.effective_to is None or s.effective_to > on)]
    return list(max(current, key=lambda s: s.effective_from).team) if current else []


# --------------------------------------------------------------------------- alert facts
def _json_default(value: Any) -> Any:
    if isinstance(value, datetime | date):
        return value.isoformat()
    raise TypeError(type(value).__name__)


@dataclass(frozen=True)
class AlertFact:
    """What an alert is raised from, kept so a care team learned later can still be alerted."""

    subject_key: str
    kind: str
    member_id: str
    event_time: datetime
    encounter_id: str | None
    patient_class: str | None
    due_date: date | None
    facts: dict[str, Any]
    parties: dict[str, Any]
    source_event_id: str


async def alert_facts_since(conn: asyncpg.Connection, member_id: str, since: date, limit: int) -> list[asyncpg.Record]:
    """A member's alert facts from ``since`` (a care team's effective date) on, oldest first."""
    return await conn.fetch(
        "SELECT * FROM alert_facts WHERE member_id = $1 AND event_time >= $2::date"
        " ORDER BY event_time, subject_key, kind LIMIT $3",
        member_id, since, limit,
    )


async def forget_alert_facts(conn: asyncpg.Connection, subject_key: str, kinds: Sequence[str]) -> None:
    """A cancelled encounter's facts raise no more alerts."""
    await conn.execute("DELETE FROM alert_facts WHERE subject_key = $1 AND kind = ANY($2::text[])",
                       subject_key, list(kinds))


# --------------------------------------------------------------------------- encounters
@dataclass(frozen=True)
class EncounterState:
    """What one ADT event says about an encounter (None: not said by this event)."""

    encounter_id: str
    member_id: str
    facility: dict[str, Any]
    patient_class: str
    admitted_at: datetime | None = None
    discharged_at: datetime | None = None

    def then(self, later: EncounterState) -> EncounterState:
        """This state followed by ``later``, as the upsert would leave it (times kept unless restated)."""
        return dataclasses.replace(
            later, member_id=self.member_id,
            admitted_at=later.admitted_at if later.admitted_at is not None else self.admitted_at,
            discharged_at=later.discharged_at if later.discharged_at is not None else self.discharged_at,
        )


async def upsert_encounters(conn: asyncpg.Connection, states: Sequence[EncounterState]) -> None:
    """Apply ``states`` in order, in one statement (the states of one encounter merged first)."""
    merged: dict[str, EncounterState] = {}
    for state in states:
        known = merged.get(state.encounter_id)
        merged[state.encounter_id] = known.then(state) if known is not None else state
    rows = list(merged.values())
    await conn.execute(
        "INSERT INTO encounters(encounter_id, member_id, facility, patient_class, admitted_at, discharged_at)"
        " SELECT * FROM unnest($1::text[], $2::text[], $3::jsonb[], $4::text[], $5::timestamptz[],"
        " $6::timestamptz[])"
        " ON CONFLICT (encounter_id) DO UPDATE SET facility = excluded.facility,"
        " patient_class = excluded.patient_class,"
        " admitted_at = coalesce(excluded.admitted_at, encounters.admitted_at),"
        " discharged_at = coalesce(excluded.discharged_at, encounters.discharged_at), updated_at = now()",
        [r.encounter_id for r in rows], [r.member_id for r in rows], [json.dumps(r.facility) for r in rows],
        [r.patient_class for r in rows], [r.admitted_at for r in rows], [r.discharged_at for r in rows],
    )


def _nested(rows: Sequence[asyncpg.Record], outer: str, inner: str, value: str) -> dict[str, dict[str, Any]]:
    """``rows`` as ``{row[outer]: {row[inner]: row[value]}}``."""
    found: dict[str, dict[str, Any]] = {}
    for row in rows:
        found.setdefault(row[outer], {})[row[inner]] = row[value]
    return found


async def discharges_of(conn: asyncpg.Connection, member_ids: Sequence[str]) -> dict[str, dict[str, datetime]]:
    """The recorded discharges of ``member_ids`` in one read: member -> {encounter: discharged_at}."""
    rows = await conn.fetch(
        "SELECT member_id, encounter_id, discharged_at FROM member_discharges WHERE member_id = ANY($1::text[])",
        list(member_ids),
    )
    return _nested(rows, "member_id", "encounter_id", "discharged_at")


async def save_discharges(conn: asyncpg.Connection, changes: Mapping[tuple[str, str], datetime | None]) -> None:
    """Record ``(member, encounter) -> discharged_at`` (``None``: forget the discharge), in one statement."""
    if not changes:
        return
    keys = list(changes)
    await conn.execute(
        "WITH s AS (SELECT * FROM unnest($1::text[], $2::text[], $3::timestamptz[])"
        " AS s(member_id, encounter_id, discharged_at)),"
        " forgotten AS (DELETE FROM member_discharges d USING s WHERE s.discharged_at IS NULL"
        " AND d.member_id = s.member_id AND d.encounter_id = s.encounter_id)"
        " INSERT INTO member_discharges(member_id, encounter_id, discharged_at)"
        " SELECT * FROM s WHERE discharged_at IS NOT NULL"
        " ON CONFLICT (member_id, encounter_id) DO UPDATE SET discharged_at = excluded.discharged_at",
        [m for m, _ in keys], [e for _, e in keys], [changes[k] for k in keys],
    )


# --------------------------------------------------------------------------- subscriptions
def _subscription(row: asyncpg.Record) -> Subscription:
    return Subscription(
        subscription_id=row["subscription_id"], organization_id=row["organization_id"],
        kinds=frozenset(row["kinds"]) if row["kinds"] is not None else None,
        patient_classes=frozenset(row["patient_classes"]) if row["patient_classes"] is not None else None,
        audience=row["audience"], channel=row["channel"], recipient_id=row["recipient_id"],
    )


#: A subscription with the key that orders an organization's subscriptions (oldest first).
OrderedSubscription = tuple[tuple[datetime, str], Subscription]


async def active_subscriptions(conn: asyncpg.Connection, organization_ids: Sequence[str]
                               ) -> dict[str, list[OrderedSubscription]]:
    """The active subscriptions of ``organization_ids`` in one read, by organization (every one named is
    a key; those without any map to an empty list), each list oldest first."""
    rows = await conn.fetch(
        "SELECT * FROM subscriptions WHERE active AND organization_id = ANY($1::text[])"
        " ORDER BY created_at, subscription_id",
        list(organization_ids),
    )
    found: dict[str, list[OrderedSubscription]] = {organization: [] for organization in organization_ids}
    for row in rows:
        found[row["organization_id"]].append(((row["created_at"], row["subscription_id"]), _subscription(row)))
    return found


# --------------------------------------------------------------------------- notifications
@dataclass(frozen=True)
class NewNotification:
    notification_id: str
    organization_id: str
    recipient_id: str
    recipient_role: str
    member_id: str
    kind: str
    priority: str
    retraction: bool
    retracts_id: str | None
    subject_key: str
    encounter_id: str | None
    patient_class: str | None
    event_time: datetime
    due_date: date | None
    content: dict[str, Any]
    source_event_id: str
    rules_version: str


_INSERT_ALERTS = (
    # The facts (first per subject and kind wins, like the alerts), the alerts (a duplicate is skipped, so it
    # never consumes a sequence number: numbers come later, see assign_sequences) and one pending delivery
    # per push subscription of each alert actually inserted (endpoint copied: later edits don't reroute
    # history; deliveries in the alerts' order, as delivery ids order a member's deliveries): one round trip.
    "WITH fact AS ("
    " INSERT INTO alert_facts(subject_key, kind, member_id, event_time, encounter_id, patient_class, due_date,"
    " facts, parties, source_event_id)"
    " SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::timestamptz[], $5::text[], $6::text[],"
    " $7::date[], $8::jsonb[], $9::jsonb[], $10::text[])"
    " ON CONFLICT (subject_key, kind) DO NOTHING),"
    " alerts AS ("
    " INSERT INTO notifications(notification_id, organization_id, recipient_id, recipient_role, member_id, kind,"
    " priority, retraction, retracts_id, subject_key, encounter_id, patient_class, event_time, due_date, content,"
    " source_event_id, rules_version)"
    " SELECT * FROM unnest($11::text[], $12::text[], $13::text[], $14::text[], $15::text[], $16::text[],"
    " $17::text[], $18::boolean[], $19::text[], $20::text[], $21::text[], $22::text[], $23::timestamptz[],"
    " $24::date[], $25::jsonb[], $26::text[], $27::text[])"
    " ON CONFLICT DO NOTHING RETURNING notification_id, organization_id, recipient_id, member_id),"
    " queued AS ("
    " INSERT INTO deliveries(notification_id, subscription_id, organization_id, member_id, channel, endpoint_url,"
    " traceparent)"
    " SELECT a.notification_id, s.subscription_id, a.organization_id, a.member_id, s.channel, s.endpoint_url,"
    " w.traceparent"
    " FROM unnest($28::text[], $29::text[], $30::text[]) WITH ORDINALITY AS w(notification_id, subscription_id,"
    " traceparent, ord)"
    " JOIN alerts a ON a.notification_id = w.notification_id"
    " JOIN subscriptions s ON s.subscription_id = w.subscription_id"
    " ORDER BY w.ord ON CONFLICT DO NOTHING),"
    # The live inbox streams hear of each new alert when the transaction commits (see announce).
    " notified AS (SELECT count(pg_notify($31, json_build_object('event', 'created', 'id', notification_id,"
    " 'org', organization_id, 'recipient', recipient_id)::text)) AS n FROM alerts)"
    " SELECT coalesce(array_agg(notification_id), '{}') FROM alerts, notified"
)


@dataclass(frozen=True)
class AlertsToInsert:
    """What one alerting fact inserts: the fact (None for retractions), its alerts, each alert's push
    subscriptions, and the trace context its deliveries continue (the handler's span)."""

    fact: AlertFact | None
    alerts: Sequence[NewNotification]
    subscription_ids: Sequence[Sequence[str]]
    traceparent: str | None


def current_traceparent() -> str | None:
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier.get("traceparent")


async def insert_alerts(conn: asyncpg.Connection, batch: Sequence[AlertsToInsert]) -> set[str]:
    """Record the facts, insert the alerts and queue each new alert's push deliveries, for many facts
    in one statement, with the outcome of inserting them one by one in order (the first of a fact or
    an alert wins; a later duplicate queues nothing), and announce each new alert (``created``) to the
    live inbox streams; returns the alert ids actually inserted."""
    facts: dict[tuple[str, str], AlertFact] = {}
    alerts: dict[str, NewNotification] = {}
    pairs: list[tuple[str, str, str | None]] = []
    for entry in batch:
        if entry.fact is not None:
            facts.setdefault((entry.fact.subject_key, entry.fact.kind), entry.fact)
        for alert, subs in zip(entry.alerts, entry.subscription_ids, strict=True):
            if alert.notification_id in alerts:
                continue
            alerts[alert.notification_id] = alert
            pairs.extend((alert.notification_id, sub, entry.traceparent) for sub in subs)
    if not facts and not alerts:
        return set()
    f = list(facts.values())
    a = list(alerts.values())
    inserted = await conn.fetchval(
        _INSERT_ALERTS,
        [x.subject_key for x in f], [x.kind for x in f], [x.member_id for x in f], [x.event_time for x in f],
        [x.encounter_id for x in f], [x.patient_class for x in f], [x.due_date for x in f],
        [json.dumps(x.facts, default=_json_default) for x in f],
        [json.dumps(x.parties, default=_json_default) for x in f], [x.source_event_id for x in f],
        [x.notification_id for x in a], [x.organization_id for x in a], [x.recipient_id for x in a],
        [x.recipient_role for x in a], [x.member_id for x in a], [x.kind for x in a],
        [x.priority for x in a], [x.retraction for x in a], [x.retracts_id for x in a],
        [x.subject_key for x in a], [x.encounter_id for x in a], [x.patient_class for x in a],
        [x.event_time for x in a], [x.due_date for x in a],
        [json.dumps(x.content, default=str) for x in a], [x.source_event_id for x in a],
        [x.rules_version for x in a],
        [p[0] for p in pairs], [p[1] for p in pairs], [p[2] for p in pairs], NEW_ALERT_CHANNEL,
    )
    return set(inserted)


async def assign_sequences(conn: asyncpg.Connection, notification_ids: Sequence[str]) -> dict[str, int]:
    """Give new alerts their recipients' next sequence numbers, in the given order per recipient.

    One statement per batch: each recipient's counter moves by its count of new alerts. The
    counters are locked in (organization, recipient) order, so concurrent batches that share
    recipients wait for each other instead of deadlocking."""
    rows = await conn.fetch(
        "WITH pending AS ("
        "  SELECT n.notification_id, n.organization_id, n.recipient_id, p.ord"
        "  FROM unnest($1::text[]) WITH ORDINALITY AS p(notification_id, ord)"
        "  JOIN notifications n ON n.notification_id = p.notification_id AND n.sequence IS NULL),"
        " counts AS (SELECT organization_id, recipient_id, count(*) AS added FROM pending GROUP BY 1, 2),"
        " bumped AS ("
        "  INSERT INTO recipient_sequences AS r(organization_id, recipient_id, last_sequence)"
        "  SELECT organization_id, recipient_id, added FROM counts ORDER BY organization_id, recipient_id"
        "  ON CONFLICT (organization_id, recipient_id)"
        "  DO UPDATE SET last_sequence = r.last_sequence + excluded.last_sequence"
        "  RETURNING r.organization_id, r.recipient_id, r.last_sequence),"
        " numbered AS ("
        "  SELECT p.notification_id, b.last_sequence - c.added"
        "   + row_number() OVER (PARTITION BY p.organization_id, p.recipient_id ORDER BY p.ord) AS sequence"
        "  FROM pending p JOIN counts c USING (organization_id, recipient_id)"
        "  JOIN bumped b USING (organization_id, recipient_id))"
        " UPDATE notifications n SET sequence = numbered.sequence FROM numbered"
        " WHERE n.notification_id = numbered.notification_id RETURNING n.notification_id, n.sequence",
        list(notification_ids),
    )
    return {row["notification_id"]: row["sequence"] for row in rows}


async def alerts_to_retract(conn: asyncpg.Connection, subject_key: str, kinds: Sequence[str]) -> list[asyncpg.Record]:
    return await conn.fetch(
        "SELECT * FROM notifications WHERE subject_key = $1 AND kind = ANY($2::text[]) AND NOT retraction"
        " AND retracted_at IS NULL ORDER BY organization_id, recipient_id FOR UPDATE",
        subject_key, list(kinds),
    )


async def remember_cancel(conn: asyncpg.Connection, encounter_id: str, cancels: str, cancelled_at: datetime) -> None:
    """Keep the latest cancel of an encounter's admit or discharge (see migration 0004)."""
    await conn.execute(
        "INSERT INTO encounter_cancels(encounter_id, cancels, cancelled_at) VALUES ($1, $2, $3)"
        " ON CONFLICT (encounter_id, cancels) DO UPDATE"
        " SET cancelled_at = GREATEST(encounter_cancels.cancelled_at, excluded.cancelled_at)",
        encounter_id, cancels, cancelled_at,
    )


async def cancels_of(conn: asyncpg.Connection, encounter_ids: Sequence[str]) -> dict[str, dict[str, datetime]]:
    """The known cancels of ``encounter_ids`` in one read: encounter -> {"admit"/"discharge": latest time}."""
    rows = await conn.fetch(
        "SELECT encounter_id, cancels, cancelled_at FROM encounter_cancels WHERE encounter_id = ANY($1::text[])",
        list(encounter_ids),
    )
    return _nested(rows, "encounter_id", "cancels", "cancelled_at")


async def mark_retracted(conn: asyncpg.Connection, notification_ids: Sequence[str], retracted_at: datetime) -> None:
    await conn.execute("UPDATE notifications SET retracted_at = $2 WHERE notification_id = ANY($1::text[])",
                       list(notification_ids), retracted_at)


async def announce(conn: asyncpg.Connection, event: str, notification_id: str, organization_id: str,
                   recipient_id: str) -> None:
    """NOTIFY listeners (the SSE streams); Postgres delivers it only if and when this transaction commits."""
    payload = json.dumps({"event": event, "id": notification_id, "org": organization_id, "recipient": recipient_id})
    await conn.execute("SELECT pg_notify($1, $2)", NEW_ALERT_CHANNEL, payload)
