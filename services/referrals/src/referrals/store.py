"""asyncpg repository for the ``referrals`` schema (providers, members, referrals)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

import asyncpg
from cth_shared.contracts import MemberSnapshot, ProviderUpserted

from .domain.model import MemberCoverage, ProviderProfile

Executor = asyncpg.Connection | asyncpg.Pool

_PROVIDER_COLUMNS = ("npi, tin, taxonomy, services, networks, latitude, longitude, accepting, capacity,"
                     " quality_score, cost_index, virtual_capable, active, as_of, change_seq")


def _profile(row: asyncpg.Record) -> ProviderProfile:
    return ProviderProfile(
        npi=row["npi"], tin=row["tin"], services=frozenset(row["services"]), networks=json.loads(row["networks"]),
        latitude=row["latitude"], longitude=row["longitude"], accepting=row["accepting"], capacity=row["capacity"],
        quality_score=row["quality_score"], cost_index=row["cost_index"], virtual_capable=row["virtual_capable"],
        active=row["active"], taxonomy=row["taxonomy"],
    )


def profile_of(provider: ProviderUpserted) -> ProviderProfile:
    """The routing view of a directory record."""
    return ProviderProfile(
        npi=provider.npi, tin=provider.tin, services=frozenset(str(s) for s in provider.services),
        networks={n.network_id: str(n.tier) for n in provider.networks}, latitude=provider.latitude,
        longitude=provider.longitude, accepting=provider.accepting, capacity=provider.capacity,
        quality_score=provider.quality_score, cost_index=provider.cost_index,
        virtual_capable=provider.virtual_capable, active=provider.active, taxonomy=provider.taxonomy,
    )


# ----------------------------------------------------------------------------- providers
async def upsert_provider(conn: asyncpg.Connection, provider: ProviderUpserted, as_of: datetime) -> bool:
    """Store the directory record unless a newer one is already held; True when applied."""
    profile = profile_of(provider)
    applied = await conn.fetchval(
        "INSERT INTO providers(npi, tin, taxonomy, role, services, networks, latitude, longitude, accepting,"
        " capacity, quality_score, cost_index, virtual_capable, active, as_of)"
        " VALUES ($1, $2, $3, $4, $5, $6::jsonb, $7, $8, $9, $10, $11, $12, $13, $14, $15)"
        " ON CONFLICT (npi) DO UPDATE SET tin = excluded.tin, taxonomy = excluded.taxonomy, role = excluded.role,"
        " services = excluded.services, networks = excluded.networks, latitude = excluded.latitude,"
        " longitude = excluded.longitude, accepting = excluded.accepting, capacity = excluded.capacity,"
        " quality_score = excluded.quality_score, cost_index = excluded.cost_index,"
        " virtual_capable = excluded.virtual_capable, active = excluded.active, as_of = excluded.as_of,"
        " change_seq = nextval('provider_change_seq'), updated_at = now()"
        " WHERE providers.as_of <= excluded.as_of"
        " RETURNING true",
        profile.npi, profile.tin, provider.taxonomy, str(provider.role), sorted(profile.services),
        json.dumps(profile.networks), profile.latitude, profile.longitude, profile.accepting, profile.capacity,
        profile.quality_score, profile.cost_index, profile.virtual_capable, profile.active, as_of,
    )
    return bool(applied)


async def providers_changed_since(db: Executor, after_seq: int) -> list[tuple[int, datetime, ProviderProfile]]:
    """Directory rows written after ``after_seq`` (all of them for 0), in write order."""
    rows = await db.fetch(f"SELECT {_PROVIDER_COLUMNS} FROM providers WHERE change_seq > $1 ORDER BY change_seq",
                          after_seq)
    return [(row["change_seq"], row["as_of"], _profile(row)) for row in rows]


async def get_provider(db: Executor, npi: str) -> ProviderProfile | None:
    """One directory record, active or not."""
    row = await db.fetchrow(f"SELECT {_PROVIDER_COLUMNS} FROM providers WHERE npi = $1", npi)
    return _profile(row) if row else None


async def get_providers(db: Executor, npis: Sequence[str]) -> dict[str, ProviderProfile]:
    """Directory records of ``npis`` that exist."""
    rows = await db.fetch(f"SELECT {_PROVIDER_COLUMNS} FROM providers WHERE npi = ANY($1::text[])", list(npis))
    return {row["npi"]: _profile(row) for row in rows}


async def tin_of(db: Executor, npi: str | None) -> str | None:
    """The TIN the directory holds for ``npi``."""
    if npi is None:
        return None
    value = await db.fetchval("SELECT tin FROM providers WHERE npi = $1", npi)
    return str(value) if value is not None else None


# ----------------------------------------------------------------------------- members
async def upsert_member(conn: asyncpg.Connection, member: MemberSnapshot, as_of: datetime) -> None:
    """Keep the member's network and home coordinates (newest record wins)."""
    await conn.execute(
        "INSERT INTO members(member_id, plan_id, network_id, latitude, longitude, enrolled, termination_date, as_of)"
        " VALUES ($1, $2, $3, $4, $5, true, $6, $7)"
        " ON CONFLICT (member_id) DO UPDATE SET plan_id = excluded.plan_id, network_id = excluded.network_id,"
        " latitude = excluded.latitude, longitude = excluded.longitude, enrolled = true,"
        " termination_date = excluded.termination_date, as_of = excluded.as_of, updated_at = now()"
        " WHERE members.as_of <= excluded.as_of",
        member.member_id, member.plan_id, member.network_id, member.address.latitude, member.address.longitude,
        member.termination_date, as_of,
    )


async def disenroll_member(conn: asyncpg.Connection, member_id: str, plan_id: str, termination_date: date,
                           as_of: datetime) -> None:
    """Coverage in ``plan_id`` ends on ``termination_date``."""
    await conn.execute(
        "UPDATE members SET enrolled = false, termination_date = $3, as_of = $4, updated_at = now()"
        " WHERE member_id = $1 AND plan_id = $2 AND as_of <= $4",
        member_id, plan_id, termination_date, as_of,
    )


async def get_member(db: Executor, member_id: str) -> MemberCoverage | None:
    """The member's coverage, or None when enrollment has not been seen."""
    row = await db.fetchrow(
        "SELECT member_id, network_id, latitude, longitude, enrolled, termination_date FROM members"
        " WHERE member_id = $1", member_id,
    )
    if row is None:
        return None
    return MemberCoverage(member_id=row["member_id"], network_id=row["network_id"], latitude=row["latitude"],
                          longitude=row["longitude"], enrolled=row["enrolled"],
                          termination_date=row["termination_date"])


# ----------------------------------------------------------------------------- referrals
@dataclass(frozen=True)
class NewReferral:
    """A referral as it enters the service, before routing."""

    referral_id: str
    member_id: str
    service_category: str
    origin: str
    organization_id: str | None
    ordering_npi: str | None
    encounter_id: str | None
    urgency: str | None
    requested_at: datetime
    source_event_id: str


async def insert_referral(conn: asyncpg.Connection, referral: NewReferral) -> bool:
    """Create the referral; False when the id already exists (a resend: nothing changes)."""
    created = await conn.fetchval(
        "INSERT INTO referrals(referral_id, member_id, service_category, origin, organization_id, ordering_npi,"
        " encounter_id, urgency, requested_at, status, source_event_id)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 'unroutable', $10)"
        " ON CONFLICT (referral_id) DO NOTHING RETURNING true",
        referral.referral_id, referral.member_id, referral.service_category, referral.origin,
        referral.organization_id, referral.ordering_npi, referral.encounter_id, referral.urgency,
        referral.requested_at, referral.source_event_id,
    )
    return bool(created)


async def reopen_referral(conn: asyncpg.Connection, referral: NewReferral) -> None:
    """A cancelled discharge happened after all (A13 then a new A03): the referral routes again."""
    await conn.execute(
        "UPDATE referrals SET status = 'unroutable', organization_id = $2, ordering_npi = $3, requested_at = $4,"
        " source_event_id = $5, closed_at = NULL, close_reason = NULL, updated_at = now() WHERE referral_id = $1",
        referral.referral_id, referral.organization_id, referral.ordering_npi, referral.requested_at,
        referral.source_event_id,
    )


async def referral_state(db: Executor, referral_id: str) -> asyncpg.Record | None:
    """Status and close time of one referral."""
    return await db.fetchrow("SELECT status, closed_at FROM referrals WHERE referral_id = $1", referral_id)


async def reserved_counts(db: Executor, npis: Sequence[str]) -> dict[str, int]:
    """Capacity reserved at each of ``npis`` by open referrals."""
    if not npis:
        return {}
    rows = await db.fetch(
        "SELECT chosen_npi, count(*) AS reserved FROM referrals WHERE status = 'open'"
        " AND chosen_npi = ANY($1::text[]) GROUP BY chosen_npi", list(npis),
    )
    return {row["chosen_npi"]: row["reserved"] for row in rows}


async def record_routed(conn: asyncpg.Connection, referral_id: str, network_id: str, chosen_npi: str,
                        chosen_tin: str, chosen_tier: str, decision: dict[str, Any], routing_version: str) -> None:
    """The referral is open and reserves one slot at ``chosen_npi``."""
    await conn.execute(
        "UPDATE referrals SET status = 'open', network_id = $2, chosen_npi = $3, chosen_tin = $4, chosen_tier = $5,"
        " unroutable_reason = NULL, decision = $6::jsonb, routing_version = $7, updated_at = now()"
        " WHERE referral_id = $1",
        referral_id, network_id, chosen_npi, chosen_tin, chosen_tier, json.dumps(decision), routing_version,
    )


async def record_unroutable(conn: asyncpg.Connection, referral_id: str, network_id: str | None, reason: str,
                            decision: dict[str, Any], routing_version: str) -> None:
    """Nobody qualified; the reason is kept for the API."""
    await conn.execute(
        "UPDATE referrals SET status = 'unroutable', network_id = $2, chosen_npi = NULL, chosen_tin = NULL,"
        " chosen_tier = NULL, unroutable_reason = $3, decision = $4::jsonb, routing_version = $5, updated_at = now()"
        " WHERE referral_id = $1",
        referral_id, network_id, reason, json.dumps(decision), routing_version,
    )


async def encounters_with_cancellable_referrals(conn: asyncpg.Connection, encounter_ids: Sequence[str]
                                                ) -> dict[str, bool]:
    """Of ``encounter_ids``, those with an open or unroutable discharge referral (-> True), in one read."""
    rows = await conn.fetch(
        "SELECT DISTINCT encounter_id FROM referrals WHERE origin = 'discharge' AND encounter_id = ANY($1::text[])"
        " AND status IN ('open', 'unroutable')",
        list(encounter_ids),
    )
    return {row["encounter_id"]: True for row in rows}


async def cancel_discharge_referrals(conn: asyncpg.Connection, encounter_id: str, member_id: str,
                                     keep_service: str | None, at: datetime, reason: str) -> list[str]:
    """Cancel the open/unroutable discharge referrals of an encounter (except ``keep_service``);
    an open one's reserved slot is released. Returns the cancelled ids."""
    rows = await conn.fetch(
        "UPDATE referrals SET status = 'cancelled', closed_at = $4, close_reason = $5, updated_at = now()"
        " WHERE origin = 'discharge' AND encounter_id = $1 AND member_id = $2"
        " AND status IN ('open', 'unroutable') AND ($3::text IS NULL OR service_category <> $3)"
        " RETURNING referral_id",
        encounter_id, member_id, keep_service, at, reason,
    )
    return [row["referral_id"] for row in rows]


async def referrals_awaiting_care(conn: asyncpg.Connection, member_id: str, categories: Sequence[str]
                                  ) -> list[asyncpg.Record]:
    """The member's routed referrals in ``categories`` that care could still complete or leak."""
    return await conn.fetch(
        "SELECT referral_id, service_category, origin, ordering_npi, encounter_id, requested_at, status, network_id,"
        " chosen_npi, chosen_tin, leakage_kind FROM referrals"
        " WHERE member_id = $1 AND service_category = ANY($2::text[])"
        " AND status IN ('open', 'completed', 'expired') ORDER BY requested_at, referral_id",
        member_id, list(categories),
    )


async def close_referral(conn: asyncpg.Connection, referral_id: str, status: str, at: datetime, reason: str) -> None:
    """Close an open referral (releasing its reserved slot)."""
    await conn.execute(
        "UPDATE referrals SET status = $2, closed_at = $3, close_reason = $4, updated_at = now()"
        " WHERE referral_id = $1 AND status = 'open'",
        referral_id, status, at, reason,
    )


async def record_leakage(conn: asyncpg.Connection, referral_id: str, kind: str, at: datetime,
                         evidence: dict[str, Any]) -> bool:
    """Mark the referral as leaked (once); an open one is closed and its slot released."""
    updated = await conn.fetchval(
        "UPDATE referrals SET leakage_kind = $2, leakage_detected_at = $3, leakage_evidence = $4::jsonb,"
        " status = CASE WHEN status = 'open' THEN 'leaked' ELSE status END,"
        " closed_at = CASE WHEN status = 'open' THEN $3 ELSE closed_at END,"
        " close_reason = CASE WHEN status = 'open' THEN 'care_elsewhere' ELSE close_reason END,"
        " updated_at = now() WHERE referral_id = $1 AND leakage_kind IS NULL RETURNING true",
        referral_id, kind, at, json.dumps(evidence),
    )
    return bool(updated)


async def expire_open_referrals(conn: asyncpg.Connection, requested_before: datetime) -> int:
    """Release the reserved slot of open referrals requested before ``requested_before``."""
    status = await conn.execute(
        "UPDATE referrals SET status = 'expired', closed_at = now(), close_reason = 'reservation_expired',"
        " updated_at = now() WHERE status = 'open' AND requested_at < $1",
        requested_before,
    )
    return int(status.split()[-1])


# ----------------------------------------------------------------------------- API reads
_API_COLUMNS = ("referral_id, member_id, service_category, origin, organization_id, ordering_npi, encounter_id,"
                " urgency, requested_at, status, chosen_npi, chosen_tin, chosen_tier, unroutable_reason, decision,"
                " routing_version, closed_at, close_reason, leakage_kind, leakage_detected_at, leakage_evidence")


async def get_referral(db: Executor, referral_id: str) -> asyncpg.Record | None:
    """One referral with its explanation."""
    return await db.fetchrow(f"SELECT {_API_COLUMNS} FROM referrals WHERE referral_id = $1", referral_id)


async def organization_referrals(db: Executor, organization_id: str, status: str | None, limit: int, offset: int
                                 ) -> tuple[int, list[asyncpg.Record]]:
    """A page of an organization's referrals, newest first, and the total."""
    total = await db.fetchval(
        "SELECT count(*) FROM referrals WHERE organization_id = $1 AND ($2::text IS NULL OR status = $2)",
        organization_id, status,
    )
    rows = await db.fetch(
        f"SELECT {_API_COLUMNS} FROM referrals WHERE organization_id = $1 AND ($2::text IS NULL OR status = $2)"
        " ORDER BY requested_at DESC, referral_id LIMIT $3 OFFSET $4",
        organization_id, status, limit, offset,
    )
    return int(total), rows


async def leakage_by_ordering_provider(db: Executor, organization_id: str, start: date, end: date
                                       ) -> list[asyncpg.Record]:
    """Per ordering NPI: routed referrals requested in [start, end] and how many leaked, by kind."""
    return await db.fetch(
        "SELECT ordering_npi, count(*) AS routed,"
        " count(*) FILTER (WHERE leakage_kind IS NOT NULL) AS leaked,"
        " count(*) FILTER (WHERE leakage_kind = 'out_of_network') AS out_of_network,"
        " count(*) FILTER (WHERE leakage_kind = 'non_preferred') AS non_preferred"
        " FROM referrals WHERE organization_id = $1 AND chosen_npi IS NOT NULL AND status <> 'cancelled'"
        " AND requested_at >= $2::date AND requested_at < ($3::date + 1)"
        " GROUP BY ordering_npi ORDER BY ordering_npi NULLS LAST",
        organization_id, start, end,
    )
