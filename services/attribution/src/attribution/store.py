"""asyncpg repository of the attribution schema (search_path is the service schema)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from typing import Any

import asyncpg

from .domain import (
    Attribution,
    CareTeamEntry,
    Enrollment,
    Explanation,
    MemberFacts,
    Method,
    ProspectivePcp,
    ProviderFacts,
    ServiceLine,
    TieBreak,
)
from .domain.rules import Candidate

Conn = asyncpg.Connection | asyncpg.pool.PoolConnectionProxy


# --------------------------------------------------------------------------- (de)serialising results


def care_team_json(team: Iterable[CareTeamEntry]) -> str:
    return json.dumps([{"role": m.role, "id": m.id, "tin": m.tin} for m in team])


def care_team_from_json(raw: str) -> tuple[CareTeamEntry, ...]:
    return tuple(CareTeamEntry(m["role"], m["id"], m.get("tin")) for m in json.loads(raw))


def explanation_dict(explanation: Explanation) -> dict[str, Any]:
    """The explanation in the shape of the contract's ``AttributionExplanation``."""
    return {
        "reason_code": explanation.reason_code,
        "tie_break": explanation.tie_break.value if explanation.tie_break else None,
        "lookback_start": explanation.lookback_start.isoformat() if explanation.lookback_start else None,
        "lookback_end": explanation.lookback_end.isoformat() if explanation.lookback_end else None,
        "rules_version": explanation.rules_version,
        "candidates": [
            {"npi": c.npi, "tin": c.tin, "allowed_total": str(c.allowed_total), "visit_count": c.visit_count,
             "last_service_date": c.last_service_date.isoformat() if c.last_service_date else None}
            for c in explanation.candidates
        ],
    }


def explanation_from_dict(raw: dict[str, Any]) -> Explanation:
    def day(value: str | None) -> date | None:
        return date.fromisoformat(value) if value else None

    return Explanation(
        reason_code=raw["reason_code"], rules_version=raw["rules_version"],
        tie_break=TieBreak(raw["tie_break"]) if raw.get("tie_break") else None,
        lookback_start=day(raw.get("lookback_start")), lookback_end=day(raw.get("lookback_end")),
        candidates=tuple(
            Candidate(c["npi"], c.get("tin"), Decimal(c["allowed_total"]), c["visit_count"],
                      day(c.get("last_service_date")))
            for c in raw.get("candidates", ())
        ),
    )


def attribution_from_row(row: asyncpg.Record) -> Attribution:
    return Attribution(
        method=Method(row["method"]), pcp_npi=row["pcp_npi"], pcp_tin=row["pcp_tin"],
        care_team=care_team_from_json(row["care_team"]),
        explanation=explanation_from_dict(json.loads(row["explanation"])),
    )


# --------------------------------------------------------------------------- enrollment


async def upsert_member(conn: Conn, snapshot: Any) -> None:
    """Apply a member.enrolled/updated snapshot. A later effective date re-enrolls a disenrolled member;
    a selected PCP on the snapshot becomes the member-selected PCP (from the coverage effective date)."""
    await conn.execute(
        """
        INSERT INTO members AS m (member_id, plan_id, network_id, virtual_first, v1c_group_npi, effective_date,
                                  termination_date, care_manager_id, selected_pcp_npi, selection, selection_effective)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, CASE WHEN $9::text IS NULL THEN NULL ELSE 'member_selected' END,
                CASE WHEN $9::text IS NULL THEN NULL ELSE $6::date END)
        ON CONFLICT (member_id) DO UPDATE SET
            plan_id = excluded.plan_id, network_id = excluded.network_id, virtual_first = excluded.virtual_first,
            v1c_group_npi = excluded.v1c_group_npi, effective_date = excluded.effective_date,
            termination_date = excluded.termination_date, care_manager_id = excluded.care_manager_id,
            disenrolled_on = CASE WHEN m.disenrolled_on IS NOT NULL AND excluded.effective_date > m.disenrolled_on
                                  THEN NULL ELSE m.disenrolled_on END,
            selected_pcp_npi = coalesce(excluded.selected_pcp_npi, m.selected_pcp_npi),
            selected_pcp_tin = CASE WHEN excluded.selected_pcp_npi IS NULL
                                      OR excluded.selected_pcp_npi = m.selected_pcp_npi
                                    THEN m.selected_pcp_tin ELSE NULL END,
            selection = coalesce(CASE WHEN excluded.selected_pcp_npi IS DISTINCT FROM m.selected_pcp_npi
                                      THEN excluded.selection END, m.selection),
            selection_effective = coalesce(CASE WHEN excluded.selected_pcp_npi IS DISTINCT FROM m.selected_pcp_npi
                                                THEN excluded.selection_effective END, m.selection_effective),
            updated_at = now()
        """,
        snapshot.member_id, snapshot.plan_id, snapshot.network_id, snapshot.virtual_first, snapshot.v1c_group_npi,
        snapshot.effective_date, snapshot.termination_date, snapshot.care_manager_id, snapshot.selected_pcp_npi,
    )


async def set_prospective_pcp(conn: Conn, member_id: str, npi: str, tin: str | None, selection: str,
                              effective: date) -> bool:
    """Record a member-selected / payer-assigned PCP; False when the member is not known yet."""
    result = await conn.execute(
        "UPDATE members SET selected_pcp_npi = $2, selected_pcp_tin = $3, selection = $4, selection_effective = $5,"
        " updated_at = now() WHERE member_id = $1",
        member_id, npi, tin, selection, effective,
    )
    return bool(result != "UPDATE 0")


async def mark_disenrolled(conn: Conn, member_id: str, disenrolled_on: date, termination_date: date) -> bool:
    result = await conn.execute(
        "UPDATE members SET disenrolled_on = $2, termination_date = least(coalesce(termination_date, $3), $3),"
        " updated_at = now() WHERE member_id = $1",
        member_id, disenrolled_on, termination_date,
    )
    return bool(result != "UPDATE 0")


# --------------------------------------------------------------------------- provider directory


async def upsert_provider(conn: Conn, npi: str, tin: str, role: str, primary_care: bool, active: bool) -> bool:
    """Upsert a directory entry; True when what attribution uses (TIN, primary-care status) changed."""
    previous = await conn.fetchrow("SELECT tin, primary_care, active FROM providers WHERE npi = $1", npi)
    await conn.execute(
        "INSERT INTO providers(npi, tin, role, primary_care, active) VALUES ($1, $2, $3, $4, $5)"
        " ON CONFLICT (npi) DO UPDATE SET tin = excluded.tin, role = excluded.role,"
        " primary_care = excluded.primary_care, active = excluded.active, updated_at = now()",
        npi, tin, role, primary_care, active,
    )
    return previous is None or (previous["tin"], previous["primary_care"], previous["active"]) != (
        tin, primary_care, active)


async def members_touching_provider(conn: Conn, npi: str) -> list[str]:
    rows = await conn.fetch(
        "SELECT member_id FROM service_days WHERE npi = $1"
        " UNION SELECT member_id FROM members WHERE selected_pcp_npi = $1 OR v1c_group_npi = $1"
        " ORDER BY 1",
        npi,
    )
    return [r["member_id"] for r in rows]


# --------------------------------------------------------------------------- claims and visits

LineTuple = tuple[str, str | None, str, str, str]  # npi, tin, service_date ISO, procedure_code, allowed_amount


@dataclass(frozen=True)
class StoredClaim:
    claim_id: str
    status: str
    replaces_claim_id: str | None
    content_sha256: str
    lines: list[LineTuple]
    voided: bool


async def get_claim(conn: Conn, claim_id: str) -> StoredClaim | None:
    row = await conn.fetchrow(
        "SELECT c.claim_id, c.status, c.replaces_claim_id, c.content_sha256, c.lines,"
        " (v.claim_id IS NOT NULL) AS voided FROM claims c LEFT JOIN voided_claims v USING (claim_id)"
        " WHERE c.claim_id = $1",
        claim_id,
    )
    if row is None:
        return None
    return StoredClaim(row["claim_id"], row["status"], row["replaces_claim_id"], row["content_sha256"],
                       [tuple(x) for x in json.loads(row["lines"])], row["voided"])  # type: ignore[misc]


async def is_voided(conn: Conn, claim_id: str) -> bool:
    return bool(await conn.fetchval("SELECT true FROM voided_claims WHERE claim_id = $1", claim_id))


async def save_claim(conn: Conn, member_id: str, claim_id: str, status: str, replaces: str | None,
                     content_sha256: str, lines: Sequence[LineTuple]) -> None:
    await conn.execute(
        "INSERT INTO claims(claim_id, member_id, status, replaces_claim_id, content_sha256, lines)"
        " VALUES ($1, $2, $3, $4, $5, $6::jsonb) ON CONFLICT (claim_id) DO UPDATE SET member_id = excluded.member_id,"
        " status = excluded.status, replaces_claim_id = excluded.replaces_claim_id,"
        " content_sha256 = excluded.content_sha256, lines = excluded.lines, received_at = now()",
        claim_id, member_id, status, replaces, content_sha256, json.dumps(list(lines)),
    )


async def void_claim(conn: Conn, claim_id: str, voided_by: str) -> bool:
    """Record that ``claim_id`` is voided; True the first time."""
    result = await conn.execute(
        "INSERT INTO voided_claims(claim_id, voided_by) VALUES ($1, $2) ON CONFLICT DO NOTHING", claim_id, voided_by
    )
    return bool(result == "INSERT 0 1")


async def get_virtual_visit(conn: Conn, visit_id: str) -> asyncpg.Record | None:
    return await conn.fetchrow("SELECT * FROM virtual_visits WHERE visit_id = $1", visit_id)


async def save_virtual_visit(conn: Conn, visit_id: str, member_id: str, npi: str, tin: str, service_date: date,
                             procedure_code: str, allowed: Decimal, content_sha256: str) -> None:
    await conn.execute(
        "INSERT INTO virtual_visits(visit_id, member_id, npi, tin, service_date, procedure_code, allowed_amount,"
        " content_sha256) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (visit_id) DO UPDATE SET"
        " member_id = excluded.member_id, npi = excluded.npi, tin = excluded.tin,"
        " service_date = excluded.service_date, procedure_code = excluded.procedure_code,"
        " allowed_amount = excluded.allowed_amount, content_sha256 = excluded.content_sha256",
        visit_id, member_id, npi, tin, service_date, procedure_code, allowed, content_sha256,
    )


async def add_to_service_days(conn: Conn, member_id: str, lines: Sequence[ServiceLine], sign: int) -> None:
    """Add (``sign=1``) or remove (``sign=-1``) lines from the member's netted aggregates in one statement."""
    if not lines:
        return
    grouped: dict[tuple[str, date, str, bool], list[Any]] = {}
    for line in lines:
        key = (line.npi, line.service_date, line.procedure_code, line.virtual_visit)
        entry = grouped.setdefault(key, [line.tin, Decimal(0), 0])
        entry[0] = line.tin or entry[0]
        entry[1] += line.allowed_amount * sign
        entry[2] += line.line_count * sign
    keys = list(grouped)
    await conn.execute(
        """
        INSERT INTO service_days AS s (member_id, npi, service_date, procedure_code, virtual_visit, tin,
                                       allowed_total, line_count)
        SELECT $1, * FROM unnest($2::text[], $3::date[], $4::text[], $5::boolean[], $6::text[], $7::numeric[],
                                 $8::int[])
        ON CONFLICT (member_id, npi, service_date, procedure_code, virtual_visit) DO UPDATE SET
            tin = coalesce(excluded.tin, s.tin),
            allowed_total = s.allowed_total + excluded.allowed_total,
            line_count = s.line_count + excluded.line_count
        """,
        member_id, [k[0] for k in keys], [k[1] for k in keys], [k[2] for k in keys], [k[3] for k in keys],
        [grouped[k][0] for k in keys], [grouped[k][1] for k in keys], [grouped[k][2] for k in keys],
    )
    if sign < 0:
        await conn.execute(
            "DELETE FROM service_days WHERE member_id = $1 AND line_count <= 0 AND allowed_total = 0", member_id
        )


# --------------------------------------------------------------------------- what the rule reads


@dataclass(frozen=True)
class MemberInputs:
    facts: MemberFacts
    lines: list[ServiceLine]
    providers: dict[str, ProviderFacts]
    current: Attribution | None
    current_as_of: date | None


async def load_member_inputs(conn: Conn, member_id: str, lines_since: date) -> MemberInputs:
    """Everything the rule needs for one member: three queries, whatever the history size."""
    member = await conn.fetchrow("SELECT * FROM members WHERE member_id = $1", member_id)
    line_rows = await conn.fetch(
        "SELECT s.npi, s.tin, s.service_date, s.procedure_code, s.allowed_total, s.line_count, s.virtual_visit,"
        " p.tin AS directory_tin, p.primary_care AND p.active AS primary_care"
        " FROM service_days s LEFT JOIN providers p USING (npi)"
        " WHERE s.member_id = $1 AND s.service_date >= $2",
        member_id, lines_since,
    )
    current = await conn.fetchrow("SELECT * FROM attribution_current WHERE member_id = $1", member_id)
    providers: dict[str, ProviderFacts] = {}
    lines = []
    for r in line_rows:
        lines.append(ServiceLine(r["npi"], r["tin"], r["service_date"], r["procedure_code"], r["allowed_total"],
                                 r["line_count"], r["virtual_visit"]))
        if r["directory_tin"] is not None:
            providers[r["npi"]] = ProviderFacts(r["directory_tin"], bool(r["primary_care"]))
    enrollment = prospective = None
    if member is not None:
        enrollment = Enrollment(
            plan_id=member["plan_id"], effective_date=member["effective_date"],
            termination_date=member["termination_date"], virtual_first=member["virtual_first"],
            v1c_group_npi=member["v1c_group_npi"], care_manager_id=member["care_manager_id"],
            disenrolled_on=member["disenrolled_on"],
        )
        if member["selected_pcp_npi"]:
            prospective = ProspectivePcp(member["selected_pcp_npi"], member["selected_pcp_tin"],
                                         member["selection"] or "member_selected", member["selection_effective"])
        extra = [n for n in (member["selected_pcp_npi"], member["v1c_group_npi"]) if n and n not in providers]
        if extra:
            for r in await conn.fetch("SELECT npi, tin, primary_care AND active AS primary_care FROM providers"
                                      " WHERE npi = ANY($1::text[])", extra):
                providers[r["npi"]] = ProviderFacts(r["tin"], bool(r["primary_care"]))
    return MemberInputs(
        facts=MemberFacts(member_id, enrollment, prospective), lines=lines, providers=providers,
        current=attribution_from_row(current) if current else None,
        current_as_of=current["as_of"] if current else None,
    )


# --------------------------------------------------------------------------- results


async def save_current(conn: Conn, member_id: str, result: Attribution, as_of: date, changed: bool) -> None:
    await conn.execute(
        """
        INSERT INTO attribution_current AS c (member_id, method, pcp_npi, pcp_tin, care_team, explanation, as_of,
                                              effective_from)
        VALUES ($1, $2, $3, $4, $5::jsonb, $6::jsonb, $7, CASE WHEN $8::boolean THEN $7::date END)
        ON CONFLICT (member_id) DO UPDATE SET method = excluded.method, pcp_npi = excluded.pcp_npi,
            pcp_tin = excluded.pcp_tin, care_team = excluded.care_team, explanation = excluded.explanation,
            as_of = excluded.as_of, effective_from = CASE WHEN $8::boolean THEN $7::date ELSE c.effective_from END,
            updated_at = now()
        """,
        member_id, result.method.value, result.pcp_npi, result.pcp_tin, care_team_json(result.care_team),
        json.dumps(explanation_dict(result.explanation)), as_of, changed,
    )


async def append_history(conn: Conn, member_id: str, effective_from: date, result: Attribution,
                         cause_event_id: str | None) -> None:
    """Close the open period at ``effective_from`` and open a new one (same-day changes replace the day's row)."""
    await conn.execute(
        "UPDATE attribution_history SET effective_to = $2"
        " WHERE member_id = $1 AND effective_to IS NULL AND effective_from < $2",
        member_id, effective_from,
    )
    await conn.execute(
        """
        INSERT INTO attribution_history(member_id, effective_from, method, pcp_npi, pcp_tin, care_team, explanation,
                                        cause_event_id)
        VALUES ($1, $2, $3, $4, $5, $6::jsonb, $7::jsonb, $8)
        ON CONFLICT (member_id, effective_from) DO UPDATE SET method = excluded.method, pcp_npi = excluded.pcp_npi,
            pcp_tin = excluded.pcp_tin, care_team = excluded.care_team, explanation = excluded.explanation,
            cause_event_id = excluded.cause_event_id, recorded_at = now()
        """,
        member_id, effective_from, result.method.value, result.pcp_npi, result.pcp_tin,
        care_team_json(result.care_team), json.dumps(explanation_dict(result.explanation)), cause_event_id,
    )
