"""asyncpg repository for the ``care_gaps`` schema (members, encounters, gaps, evidence, clocks).

Every function takes the connection of the caller's transaction (``uow.conn`` in a
handler, a pool connection in the API): the repository never commits on its own.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

import asyncpg

from .domain.evidence import Evidence

ACTIVE = ("open", "overdue")
#: ``ACTIVE`` as SQL, written out so that the planner can use the partial index of active gaps by member
#: (a parameter cannot be proven to match its predicate).
_ACTIVE_SQL = f"status IN ({', '.join(repr(status) for status in ACTIVE)})"

_GAP_COLUMNS = (
    "gap_id, tenant, member_id, encounter_id, measure, measure_version, discharged_at, window_start, due_date,"
    " overdue_at, status, owner_role, owner_id, priority, opened_event_id, closed_at, closing_event_id,"
    " closing_rule, overdue_detected_at, not_applicable_reason, updated_at"
)


@dataclass(frozen=True)
class NewGap:
    gap_id: str
    tenant: str
    member_id: str
    encounter_id: str
    measure: str
    measure_version: str
    discharged_at: datetime
    window_start: date
    due_date: date
    overdue_at: datetime
    owner_role: str
    owner_id: str | None
    opened_event_id: str


# --------------------------------------------------------------------------- members
async def get_members(conn: asyncpg.Connection, member_ids: Sequence[str]) -> dict[str, asyncpg.Record]:
    """The rows of ``member_ids`` that exist, in one read."""
    rows = await conn.fetch("SELECT * FROM members WHERE member_id = ANY($1::text[])", list(member_ids))
    return {row["member_id"]: row for row in rows}


async def upsert_enrollment(conn: asyncpg.Connection, member_id: str, tenant: str, *, risk_score: float,
                            turns_65_on: date | None, termination_date: date | None, care_manager_id: str | None,
                            fact_time: datetime) -> bool:
    """Apply an enrollment snapshot unless a newer one was applied; True when applied."""
    status = await conn.execute(
        "INSERT INTO members(member_id, tenant, risk_score, turns_65_on, termination_date,"
        " enrollment_care_manager_id, enrollment_fact_time) VALUES ($1, $2, $3, $4, $5, $6, $7)"
        " ON CONFLICT (member_id) DO UPDATE SET risk_score = excluded.risk_score,"
        " turns_65_on = excluded.turns_65_on, termination_date = excluded.termination_date,"
        " enrollment_care_manager_id = excluded.enrollment_care_manager_id,"
        " enrollment_fact_time = excluded.enrollment_fact_time"
        " WHERE members.enrollment_fact_time IS NULL OR members.enrollment_fact_time <= excluded.enrollment_fact_time",
        member_id, tenant, risk_score, turns_65_on, termination_date, care_manager_id, fact_time,
    )
    return status.endswith(" 1")


async def set_termination(conn: asyncpg.Connection, member_id: str, tenant: str, termination_date: date) -> None:
    await conn.execute(
        "INSERT INTO members(member_id, tenant, termination_date) VALUES ($1, $2, $3)"
        " ON CONFLICT (member_id) DO UPDATE SET termination_date = excluded.termination_date",
        member_id, tenant, termination_date,
    )


async def upsert_care_team(conn: asyncpg.Connection, member_id: str, tenant: str, *, pcp_npi: str | None,
                           pcp_tin: str | None, v1c_npi: str | None, v1c_tin: str | None,
                           care_manager_id: str | None, organization_id: str | None, effective_date: date,
                           fact_time: datetime) -> bool:
    """Apply an attribution snapshot unless a later one (effective date, then event time) is known."""
    status = await conn.execute(
        "INSERT INTO members(member_id, tenant, pcp_npi, pcp_tin, v1c_npi, v1c_tin, team_care_manager_id,"
        " organization_id, attribution_effective_date, attribution_fact_time)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"
        " ON CONFLICT (member_id) DO UPDATE SET pcp_npi = excluded.pcp_npi, pcp_tin = excluded.pcp_tin,"
        " v1c_npi = excluded.v1c_npi, v1c_tin = excluded.v1c_tin,"
        " team_care_manager_id = excluded.team_care_manager_id, organization_id = excluded.organization_id,"
        " attribution_effective_date = excluded.attribution_effective_date,"
        " attribution_fact_time = excluded.attribution_fact_time"
        " WHERE members.attribution_effective_date IS NULL"
        " OR (members.attribution_effective_date, members.attribution_fact_time)"
        " <= (excluded.attribution_effective_date, excluded.attribution_fact_time)",
        member_id, tenant, pcp_npi, pcp_tin, v1c_npi, v1c_tin, care_manager_id, organization_id,
        effective_date, fact_time,
    )
    return status.endswith(" 1")


# --------------------------------------------------------------------------- encounters
async def lane_encounters(conn: asyncpg.Connection, first_seen: dict[str, tuple[str, str, str]],
                          spans: Mapping[str, tuple[datetime, datetime] | None]) -> dict[str, dict[str, Any]]:
    """In one statement: create the missing encounters of ``first_seen`` (``encounter_id -> (member_id,
    tenant, patient_class)``, each with its first known values), lock and return their rows, and return
    the other encounter rows of the members in ``spans`` that were discharged or became inpatient within
    the member's span (``None``: every row of the member), as dicts by encounter id.

    An encounter that already exists is locked (``FOR NO KEY UPDATE``: the lane will write it, and another
    instance working on it during a rebalance waits) without writing a new version of its row, which an
    ``ON CONFLICT DO UPDATE`` would (a dead row and an entry in each index, for every known encounter of
    every lane). One created by another transaction after this statement's snapshot is neither inserted
    nor seen here: a second statement, with a new snapshot, reads and locks it.

    The members' rows are found through their index (``member_id = ANY``): joined to the span list alone,
    the planner scanned the whole table for every lane (6 ms at 17,000 encounters, and growing with it)."""
    ids = list(first_seen)
    members = list(spans)
    rows = await conn.fetch(
        "WITH ensured AS ("
        " INSERT INTO encounters(encounter_id, member_id, tenant, patient_class)"
        " SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[])"
        " ON CONFLICT (encounter_id) DO NOTHING RETURNING *),"
        " existing AS (SELECT e.* FROM encounters e WHERE e.encounter_id = ANY($1::text[]) FOR NO KEY UPDATE)"
        " SELECT * FROM ensured"
        " UNION ALL SELECT * FROM existing"
        " UNION ALL SELECT e.* FROM encounters e"
        " JOIN unnest($5::text[], $6::timestamptz[], $7::timestamptz[]) AS s(member_id, lo, hi)"
        " ON e.member_id = s.member_id"
        " WHERE e.member_id = ANY($5::text[]) AND e.encounter_id <> ALL($1::text[])"
        " AND (s.lo IS NULL OR e.discharged_at BETWEEN s.lo AND s.hi OR e.inpatient_since BETWEEN s.lo AND s.hi)",
        ids, [first_seen[i][0] for i in ids], [first_seen[i][1] for i in ids], [first_seen[i][2] for i in ids],
        members, [(spans[m] or (None, None))[0] for m in members], [(spans[m] or (None, None))[1] for m in members],
    )
    found = {row["encounter_id"]: dict(row) for row in rows}
    if late := [i for i in ids if i not in found]:
        for row in await conn.fetch(
                "SELECT * FROM encounters WHERE encounter_id = ANY($1::text[]) FOR NO KEY UPDATE", late):
            found[row["encounter_id"]] = dict(row)
    return found


def member_discharges(encounters: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """Of a member's encounter rows: the known, not cancelled discharges."""
    return [e for e in encounters if e["discharged_at"] is not None and e["admit_cancelled_at"] is None
            and (e["discharge_cancelled_at"] is None or e["discharged_at"] > e["discharge_cancelled_at"])]


def inpatient_admissions_after(encounters: Iterable[Mapping[str, Any]], after: datetime,
                               until: datetime | None = None) -> list[Mapping[str, Any]]:
    """Of a member's encounter rows: the not cancelled inpatient admissions that started after ``after``
    (and no later than ``until``)."""
    return sorted((e for e in encounters if e["inpatient_since"] is not None and e["inpatient_since"] > after
                   and (until is None or e["inpatient_since"] <= until) and e["admit_cancelled_at"] is None),
                  key=lambda e: e["inpatient_since"])


#: The encounter columns the handlers change (all but the id, the member and the tenant), with their types.
ENCOUNTER_STATE = (
    ("patient_class", "text"), ("admitted_at", "timestamptz"), ("inpatient_since", "timestamptz"),
    ("admit_event_id", "text"), ("admit_fact_time", "timestamptz"), ("admit_cancelled_at", "timestamptz"),
    ("discharged_at", "timestamptz"), ("discharge_offset_min", "integer"), ("disposition", "text"),
    ("discharge_event_id", "text"), ("discharge_fact_time", "timestamptz"), ("discharge_cancelled_at", "timestamptz"),
)


async def save_encounters(conn: asyncpg.Connection, rows: Sequence[Mapping[str, Any]]) -> None:
    """Write the state columns (:data:`ENCOUNTER_STATE`) of existing encounter rows, in one statement."""
    if not rows:
        return
    unnested = ", ".join(f"${i + 2}::{kind}[]" for i, (_, kind) in enumerate(ENCOUNTER_STATE))
    names = ", ".join(name for name, _ in ENCOUNTER_STATE)
    assignments = ", ".join(f"{name} = s.{name}" for name, _ in ENCOUNTER_STATE)
    await conn.execute(
        f"UPDATE encounters e SET {assignments} FROM unnest($1::text[], {unnested}) AS s(encounter_id, {names})"
        " WHERE e.encounter_id = s.encounter_id",
        [row["encounter_id"] for row in rows], *([row[name] for row in rows] for name, _ in ENCOUNTER_STATE),
    )


# --------------------------------------------------------------------------- gaps
async def gaps_of_encounters(conn: asyncpg.Connection, encounter_ids: Sequence[str]) -> list[asyncpg.Record]:
    """Every gap of ``encounter_ids``, in one read."""
    return await conn.fetch(f"SELECT {_GAP_COLUMNS} FROM gaps WHERE encounter_id = ANY($1::text[])",
                            list(encounter_ids))


async def active_gap_counts(conn: asyncpg.Connection, member_ids: Sequence[str], besides: Sequence[str]
                            ) -> dict[str, tuple[int, int, float, float]]:
    """For each of ``member_ids`` with active gaps other than the gaps ``besides``, in one read: how many,
    how many of them are not readmission watches, and the lowest and highest of their priorities."""
    rows = await conn.fetch(
        "SELECT member_id, count(*) AS active, count(*) FILTER (WHERE measure <> 'readmission_watch') AS open_count,"
        " min(priority) AS lowest, max(priority) AS highest FROM gaps"
        f" WHERE member_id = ANY($1::text[]) AND {_ACTIVE_SQL} AND gap_id <> ALL($2::text[])"
        " GROUP BY member_id",
        list(member_ids), list(besides),
    )
    return {r["member_id"]: (r["active"], r["open_count"], r["lowest"], r["highest"]) for r in rows}


async def active_gaps_of_member(conn: asyncpg.Connection, member_id: str, besides: Sequence[str]
                                ) -> list[asyncpg.Record]:
    """The member's active gaps but the gaps ``besides``."""
    return await conn.fetch(
        f"SELECT {_GAP_COLUMNS} FROM gaps WHERE member_id = $1 AND {_ACTIVE_SQL} AND gap_id <> ALL($2::text[])",
        member_id, list(besides),
    )


async def open_gaps(conn: asyncpg.Connection, gaps: Sequence[NewGap]) -> list[asyncpg.Record]:
    """Insert gaps as open, or reopen/re-window existing ones (A08 update, a new discharge after a cancel),
    in one statement; returns the rows as they are now."""
    if not gaps:
        return []
    return await conn.fetch(
        "INSERT INTO gaps(gap_id, tenant, member_id, encounter_id, measure, measure_version, discharged_at,"
        " window_start, due_date, overdue_at, status, owner_role, owner_id, opened_event_id)"
        " SELECT g, t, m, e, ms, v, d, ws, dd, o, 'open', r, oi, ev FROM unnest($1::text[], $2::text[], $3::text[],"
        " $4::text[], $5::text[], $6::text[], $7::timestamptz[], $8::date[], $9::date[], $10::timestamptz[],"
        " $11::text[], $12::text[], $13::text[]) AS s(g, t, m, e, ms, v, d, ws, dd, o, r, oi, ev)"
        " ON CONFLICT (gap_id) DO UPDATE SET measure_version = excluded.measure_version,"
        " discharged_at = excluded.discharged_at, window_start = excluded.window_start,"
        " due_date = excluded.due_date, overdue_at = excluded.overdue_at, status = 'open',"
        " owner_role = excluded.owner_role, owner_id = excluded.owner_id,"
        " opened_event_id = excluded.opened_event_id, closed_at = NULL, closing_event_id = NULL,"
        " closing_rule = NULL, overdue_detected_at = NULL, not_applicable_reason = NULL, updated_at = now()"
        f" RETURNING {_GAP_COLUMNS}",
        *([getattr(gap, name) for gap in gaps] for name in (
            "gap_id", "tenant", "member_id", "encounter_id", "measure", "measure_version", "discharged_at",
            "window_start", "due_date", "overdue_at", "owner_role", "owner_id", "opened_event_id")),
    )


async def close_gap(conn: asyncpg.Connection, gap_id: str, *, closed_at: datetime, closing_event_id: str,
                    closing_rule: str, allowed_statuses: Sequence[str] = ACTIVE) -> asyncpg.Record | None:
    """Close a gap if it is in ``allowed_statuses``; returns the closed row, or None."""
    return await conn.fetchrow(
        f"UPDATE gaps SET status = 'closed', closed_at = $2, closing_event_id = $3, closing_rule = $4,"
        f" updated_at = now() WHERE gap_id = $1 AND status = ANY($5::text[]) RETURNING {_GAP_COLUMNS}",
        gap_id, closed_at, closing_event_id, closing_rule, list(allowed_statuses),
    )


async def mark_not_applicable(conn: asyncpg.Connection, gap_ids: Sequence[str], reason: str,
                              statuses: Sequence[str] = ACTIVE) -> list[asyncpg.Record]:
    return await conn.fetch(
        f"UPDATE gaps SET status = 'not_applicable', not_applicable_reason = $2, updated_at = now()"
        f" WHERE gap_id = ANY($1::text[]) AND status = ANY($3::text[]) RETURNING {_GAP_COLUMNS}",
        list(gap_ids), reason, list(statuses),
    )


async def set_priorities(conn: asyncpg.Connection, gaps: Mapping[str, float], members: Mapping[str, float],
                         besides: Sequence[str]) -> None:
    """In one statement: each of ``gaps`` (gap id -> priority) gets its priority, and the active gaps of
    each of ``members`` (member id -> priority) but the gaps ``besides`` get their member's."""
    await conn.execute(
        "WITH by_gap AS (UPDATE gaps g SET priority = s.priority"
        " FROM unnest($1::text[], $2::float8[]) AS s(gap_id, priority)"
        " WHERE g.gap_id = s.gap_id AND g.priority <> s.priority)"
        " UPDATE gaps g SET priority = s.priority FROM unnest($3::text[], $4::float8[]) AS s(member_id, priority)"
        # (member_id = ANY and the written-out statuses: the active gaps of these members by their index, not
        # a scan of every gap joined to the list; 33 ms a lane when the planner chose the scan.)
        f" WHERE g.member_id = ANY($3::text[]) AND g.{_ACTIVE_SQL} AND g.member_id = s.member_id"
        " AND g.priority <> s.priority AND g.gap_id <> ALL($5::text[]) AND g.gap_id <> ALL($1::text[])",
        list(gaps), list(gaps.values()), list(members), list(members.values()), list(besides),
    )


async def set_member_owner(conn: asyncpg.Connection, member_id: str, owner_role: str, owner_id: str | None) -> None:
    await conn.execute(
        "UPDATE gaps SET owner_role = $2, owner_id = $3, updated_at = now() WHERE member_id = $1"
        " AND status = ANY($4::text[]) AND (owner_role, owner_id) IS DISTINCT FROM ($2, $3)",
        member_id, owner_role, owner_id, list(ACTIVE),
    )


async def flag_overdue(conn: asyncpg.Connection, tenant: str, clock: datetime) -> list[asyncpg.Record]:
    """Open gaps (not readmission watches) whose due date is over at ``clock``: now overdue, once."""
    return await conn.fetch(
        f"UPDATE gaps SET status = 'overdue', overdue_detected_at = $2, updated_at = now()"
        f" WHERE tenant = $1 AND status = 'open' AND overdue_at <= $2 AND measure <> 'readmission_watch'"
        f" RETURNING {_GAP_COLUMNS}",
        tenant, clock,
    )


async def close_expired_watches(conn: asyncpg.Connection, tenant: str, clock: datetime, closing_event_id: str,
                                closing_rule: str) -> list[asyncpg.Record]:
    """Close, in one statement, the open readmission watches whose 30 days passed at ``clock`` (closed at
    the end of their window); returns the closed rows by gap id."""
    rows = await conn.fetch(
        f"UPDATE gaps SET status = 'closed', closed_at = overdue_at, closing_event_id = $3, closing_rule = $4,"
        f" updated_at = now() WHERE tenant = $1 AND status = 'open' AND overdue_at <= $2"
        f" AND measure = 'readmission_watch' RETURNING {_GAP_COLUMNS}",
        tenant, clock, closing_event_id, closing_rule,
    )
    return sorted(rows, key=lambda row: row["gap_id"])


async def tenants_with_open_gaps(conn: asyncpg.Connection | asyncpg.Pool) -> list[asyncpg.Record]:
    return await conn.fetch(
        "SELECT g.tenant, c.live FROM (SELECT DISTINCT tenant FROM gaps WHERE status = 'open') g"
        " LEFT JOIN event_clocks c ON c.tenant = g.tenant"
    )


# --------------------------------------------------------------------------- evidence
async def add_evidence(conn: asyncpg.Connection, member_id: str, claim_id: str | None, occurred_at: datetime,
                       items: Sequence[Evidence]) -> None:
    """Store evidence; a resend of the same visit or claim line keeps the first copy."""
    if not items:
        return
    await conn.executemany(
        "INSERT INTO evidence(evidence_id, member_id, source, source_event_id, claim_id, service_date, occurred_at,"
        " procedure_codes, diagnosis_codes, rendering_taxonomy, medication_reconciliation, interactive_contact,"
        " face_to_face_modality) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)"
        " ON CONFLICT (evidence_id) DO NOTHING",
        [(e.evidence_id, member_id, e.source, e.source_event_id, claim_id, e.service_date, occurred_at,
          sorted(e.procedure_codes), sorted(e.diagnosis_codes), e.rendering_taxonomy, e.medication_reconciliation,
          e.interactive_contact, e.face_to_face_modality) for e in items],
    )


async def remove_claim_evidence(conn: asyncpg.Connection, claim_id: str) -> None:
    await conn.execute("DELETE FROM evidence WHERE claim_id = $1", claim_id)


async def member_evidence(conn: asyncpg.Connection, member_id: str, start: date, end: date
                          ) -> list[tuple[Evidence, datetime]]:
    rows = await conn.fetch(
        "SELECT * FROM evidence WHERE member_id = $1 AND service_date BETWEEN $2 AND $3"
        " ORDER BY service_date, occurred_at, evidence_id",
        member_id, start, end,
    )
    return [_evidence(r) for r in rows]


async def members_evidence(conn: asyncpg.Connection, member_ids: Sequence[str], start: date, end: date
                           ) -> dict[str, list[tuple[Evidence, datetime]]]:
    """:func:`member_evidence` of several members over one span, in one read (members without any: absent)."""
    rows = await conn.fetch(
        "SELECT * FROM evidence WHERE member_id = ANY($1::text[]) AND service_date BETWEEN $2 AND $3"
        " ORDER BY member_id, service_date, occurred_at, evidence_id",
        list(member_ids), start, end,
    )
    found: dict[str, list[tuple[Evidence, datetime]]] = {}
    for r in rows:
        found.setdefault(r["member_id"], []).append(_evidence(r))
    return found


def _evidence(r: asyncpg.Record) -> tuple[Evidence, datetime]:
    return (
        Evidence(
            evidence_id=r["evidence_id"], source_event_id=r["source_event_id"], source=r["source"],
            service_date=r["service_date"], procedure_codes=frozenset(r["procedure_codes"]),
            diagnosis_codes=frozenset(r["diagnosis_codes"]), rendering_taxonomy=r["rendering_taxonomy"],
            medication_reconciliation=r["medication_reconciliation"], interactive_contact=r["interactive_contact"],
            face_to_face_modality=r["face_to_face_modality"],
        ),
        r["occurred_at"],
    )


# --------------------------------------------------------------------------- event clock
async def advance_clock(conn: asyncpg.Connection, tenant: str, clock_time: datetime, live: bool) -> None:
    """Move the tenant's event clock forward (never back) and record live/replay."""
    await conn.execute(
        "INSERT INTO event_clocks AS c(tenant, clock_time, live) VALUES ($1, $2, $3)"
        " ON CONFLICT (tenant) DO UPDATE SET clock_time = greatest(c.clock_time, excluded.clock_time),"
        " live = excluded.live, updated_at = now()"
        " WHERE c.clock_time < excluded.clock_time OR c.live <> excluded.live",
        tenant, clock_time, live,
    )


async def event_clock(conn: asyncpg.Connection, tenant: str) -> datetime | None:
    """The tenant's event clock as it stands (None before its first event)."""
    value: datetime | None = await conn.fetchval("SELECT clock_time FROM event_clocks WHERE tenant = $1", tenant)
    return value


# --------------------------------------------------------------------------- API reads
async def gaps_of_member(conn: asyncpg.Connection | asyncpg.Pool, member_id: str) -> list[asyncpg.Record]:
    return await conn.fetch(
        f"SELECT {_GAP_COLUMNS} FROM gaps WHERE member_id = $1 ORDER BY discharged_at DESC, measure", member_id)


async def member_organization(conn: asyncpg.Connection | asyncpg.Pool, member_id: str) -> str | None:
    return await conn.fetchval("SELECT organization_id FROM members WHERE member_id = $1", member_id)


async def worklist(conn: asyncpg.Connection | asyncpg.Pool, organization_id: str, *, statuses: Sequence[str],
                   measure: str | None, limit: int, offset: int) -> tuple[int, list[asyncpg.Record]]:
    """An organization's gaps ranked by priority (desc), then due date, then gap id."""
    columns = ", ".join(f"g.{c.strip()}" for c in _GAP_COLUMNS.split(","))
    where = ("m.organization_id = $1 AND g.status = ANY($2::text[]) AND ($3::text IS NULL OR g.measure = $3)")
    total = await conn.fetchval(
        f"SELECT count(*) FROM gaps g JOIN members m ON m.member_id = g.member_id WHERE {where}",
        organization_id, list(statuses), measure)
    rows = await conn.fetch(
        f"SELECT {columns} FROM gaps g JOIN members m ON m.member_id = g.member_id WHERE {where}"
        " ORDER BY g.priority DESC, g.due_date, g.gap_id LIMIT $4 OFFSET $5",
        organization_id, list(statuses), measure, limit, offset)
    return total, rows
