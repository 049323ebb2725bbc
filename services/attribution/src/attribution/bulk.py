"""Bulk path: a full roster reload and a years-long claims backfill at bulk speed.

Both run the facts through the same domain functions as the live handlers
(:func:`attribution.domain.claim_contribution` for netting,
:func:`attribution.domain.attribute` for the rule), with batched writes (COPY into
temporary tables, then set-based upserts), and emit ``attribution.changed`` only for
members whose outcome changed (net changes), through the outbox (the running service's
relay publishes them).

Usage (DATABASE_URL and the ATTRIBUTION_* rule settings from the environment)::

    python -m attribution.bulk roster roster.csv --as-of 2026-03-01
    python -m attribution.bulk claims claim_lines.csv --as-of 2026-03-01

File formats (CSV with a header row):

* roster: ``member_id,plan_id,network_id,virtual_first,v1c_group_npi,effective_date,
  termination_date,care_manager_id,selected_pcp_npi``
* claims (one row per line): ``claim_id,member_id,status,replaces_claim_id,line_number,
  procedure_code,rendering_npi,rendering_tin,service_from,allowed_amount``

Effective dates are ``--as-of`` (the load's business date; default today), made monotone per
member like the live path. Claim ids already stored are skipped by a backfill (corrections
of known claims go through the live topic). The service schema must exist (start the
service once, or pass ``--migrate``).
"""

from __future__ import annotations

import asyncio
import csv
import hashlib
import json
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import asyncpg
from cth_shared.contracts import topic_name, type_of
from cth_shared.contracts.events import AttributionChanged

from .domain import (
    NOBODY,
    AttributionRules,
    ClaimFact,
    Enrollment,
    MemberFacts,
    ProspectivePcp,
    ProviderFacts,
    ServiceLine,
    attribute,
    claim_contribution,
)
from .store import care_team_from_json, care_team_json, explanation_dict

SOURCE = "urn:cth:attribution:bulk"
CHUNK_MEMBERS = 20_000
CHUNK_CLAIM_LINES = 100_000


@dataclass
class BulkReport:
    """What a bulk run did."""

    kind: str
    rows: int
    members_recomputed: int
    changes_emitted: int
    seconds: float

    def as_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "rows": self.rows, "members_recomputed": self.members_recomputed,
                "changes_emitted": self.changes_emitted, "seconds": round(self.seconds, 3)}


# --------------------------------------------------------------------------- roster


async def load_roster(conn: asyncpg.Connection, path: str, rules: AttributionRules, as_of: date,
                      tenant: str = "payer-demo", topic_prefix: str = "") -> BulkReport:
    """Reload the roster from ``path`` and recompute every member it names."""
    started = time.perf_counter()
    async with conn.transaction():
        await conn.execute(
            "CREATE TEMP TABLE roster_stage (member_id text, plan_id text, network_id text, virtual_first boolean,"
            " v1c_group_npi text, effective_date date, termination_date date, care_manager_id text,"
            " selected_pcp_npi text) ON COMMIT DROP"
        )
        await conn.copy_to_table("roster_stage", source=path, format="csv", header=True)
        rows = await conn.fetchval("SELECT count(*) FROM roster_stage")
        await conn.execute(
            """
            INSERT INTO members AS m (member_id, plan_id, network_id, virtual_first, v1c_group_npi, effective_date,
                                      termination_date, care_manager_id, selected_pcp_npi, selection,
                                      selection_effective)
            SELECT DISTINCT ON (member_id) member_id, plan_id, nullif(network_id, ''), coalesce(virtual_first, false),
                   nullif(v1c_group_npi, ''), effective_date, termination_date, nullif(care_manager_id, ''),
                   nullif(selected_pcp_npi, ''),
                   CASE WHEN nullif(selected_pcp_npi, '') IS NOT NULL THEN 'member_selected' END,
                   CASE WHEN nullif(selected_pcp_npi, '') IS NOT NULL THEN effective_date END
            FROM roster_stage ORDER BY member_id
            ON CONFLICT (member_id) DO UPDATE SET
                plan_id = excluded.plan_id, network_id = excluded.network_id, virtual_first = excluded.virtual_first,
                v1c_group_npi = excluded.v1c_group_npi, effective_date = excluded.effective_date,
                termination_date = excluded.termination_date, care_manager_id = excluded.care_manager_id,
                disenrolled_on = CASE WHEN m.disenrolled_on IS NOT NULL AND excluded.effective_date > m.disenrolled_on
                                      THEN NULL ELSE m.disenrolled_on END,
                selected_pcp_npi = coalesce(excluded.selected_pcp_npi, m.selected_pcp_npi),
                selection = CASE WHEN excluded.selected_pcp_npi IS DISTINCT FROM m.selected_pcp_npi
                                  AND excluded.selected_pcp_npi IS NOT NULL THEN excluded.selection
                                 ELSE m.selection END,
                selection_effective = CASE WHEN excluded.selected_pcp_npi IS DISTINCT FROM m.selected_pcp_npi
                                            AND excluded.selected_pcp_npi IS NOT NULL
                                           THEN excluded.selection_effective ELSE m.selection_effective END,
                updated_at = now()
            """
        )
        member_ids = [r[0] for r in await conn.fetch("SELECT DISTINCT member_id FROM roster_stage ORDER BY 1")]
        recomputed, emitted = await recompute_members(conn, member_ids, rules, as_of, tenant, topic_prefix)
    return BulkReport("roster", rows, recomputed, emitted, time.perf_counter() - started)


# --------------------------------------------------------------------------- claims


def _read_claim_rows(path: str) -> Iterator[dict[str, str]]:
    with open(path, newline="") as handle:
        yield from csv.DictReader(handle)


def _claims_in_chunks(path: str, chunk_lines: int) -> Iterator[dict[str, list[dict[str, str]]]]:
    """Claims grouped by id, in chunks of about ``chunk_lines`` lines (a claim's lines are contiguous)."""
    chunk: dict[str, list[dict[str, str]]] = {}
    count = 0
    for row in _read_claim_rows(path):
        claim_id = row["claim_id"]
        if count >= chunk_lines and claim_id not in chunk:
            yield chunk
            chunk, count = {}, 0
        chunk.setdefault(claim_id, []).append(row)
        count += 1
    if chunk:
        yield chunk


async def backfill_claims(conn: asyncpg.Connection, path: str, rules: AttributionRules, as_of: date,
                          tenant: str = "payer-demo", topic_prefix: str = "") -> BulkReport:
    """Apply a claims file (paid, denied, reversed, adjusted) and recompute the members it touches."""
    started = time.perf_counter()
    voided_in_file: dict[str, str] = {}
    for row in _read_claim_rows(path):  # first pass: what the file voids, wherever it sits in the file
        if row["status"] in ("reversed", "adjusted") and row["replaces_claim_id"]:
            voided_in_file.setdefault(row["replaces_claim_id"], row["claim_id"])
    lines_total = 0
    touched: set[str] = set()
    async with conn.transaction():
        already_voided = {r[0] for r in await conn.fetch(
            "SELECT claim_id FROM voided_claims WHERE claim_id = ANY($1::text[])", list(voided_in_file))}
        newly_voided = {k: v for k, v in voided_in_file.items() if k not in already_voided}
        await conn.copy_records_to_table("voided_claims", records=list(newly_voided.items()),
                                         columns=["claim_id", "voided_by"])
        voided = set(voided_in_file) | already_voided
        # Claims stored before this backfill that it now voids: take their lines back out.
        for row in await conn.fetch("SELECT claim_id, member_id, status, replaces_claim_id, lines FROM claims"
                                    " WHERE claim_id = ANY($1::text[])", list(newly_voided)):
            lines = tuple(ServiceLine(n, t, date.fromisoformat(d), c, Decimal(a)) for n, t, d, c, a in
                          json.loads(row["lines"]))
            fact = ClaimFact(row["claim_id"], row["status"], row["replaces_claim_id"], lines)
            await _apply_deltas(conn, _deltas({row["member_id"]: list(claim_contribution(fact, False))}, -1))
            touched.add(row["member_id"])
        for chunk in _claims_in_chunks(path, CHUNK_CLAIM_LINES):
            known = {r[0] for r in await conn.fetch("SELECT claim_id FROM claims WHERE claim_id = ANY($1::text[])",
                                                    list(chunk))}
            claim_rows = []
            contributions: dict[str, list[ServiceLine]] = {}
            for claim_id, rows in chunk.items():
                lines_total += len(rows)
                if claim_id in known:
                    continue
                head = rows[0]
                member_id = head["member_id"]
                touched.add(member_id)
                tuples = [(r["rendering_npi"], r["rendering_tin"] or None, r["service_from"], r["procedure_code"],
                           r["allowed_amount"]) for r in rows]
                replaces = head["replaces_claim_id"] or None
                fact = ClaimFact(claim_id, head["status"], replaces, tuple(
                    ServiceLine(n, t, date.fromisoformat(d), c, Decimal(a)) for n, t, d, c, a in tuples))
                contributions.setdefault(member_id, []).extend(claim_contribution(fact, claim_id in voided))
                payload = json.dumps(tuples)
                sha = hashlib.sha256(json.dumps([member_id, head["status"], replaces, tuples],
                                                separators=(",", ":")).encode()).hexdigest()
                claim_rows.append((claim_id, member_id, head["status"], replaces, sha, payload))
            await conn.copy_records_to_table(
                "claims", records=claim_rows,
                columns=["claim_id", "member_id", "status", "replaces_claim_id", "content_sha256", "lines"],
            )
            await _apply_deltas(conn, _deltas(contributions, +1))
        recomputed, emitted = await recompute_members(conn, sorted(touched), rules, as_of, tenant, topic_prefix)
    return BulkReport("claims", lines_total, recomputed, emitted, time.perf_counter() - started)


Delta = tuple[str, str, date, str, bool, str | None, Decimal, int]


def _deltas(contributions: dict[str, list[ServiceLine]], sign: int) -> list[Delta]:
    grouped: dict[tuple[str, str, date, str, bool], list[Any]] = {}
    for member_id, lines in contributions.items():
        for ln in lines:
            entry = grouped.setdefault((member_id, ln.npi, ln.service_date, ln.procedure_code, ln.virtual_visit),
                                       [ln.tin, Decimal(0), 0])
            entry[1] += ln.allowed_amount * sign
            entry[2] += ln.line_count * sign
    return [(*key, tin, amount, count) for key, (tin, amount, count) in grouped.items()]


async def _apply_deltas(conn: asyncpg.Connection, deltas: Sequence[Delta]) -> None:
    if not deltas:
        return
    await conn.execute(
        "CREATE TEMP TABLE IF NOT EXISTS delta_stage (member_id text, npi text, service_date date,"
        " procedure_code text, virtual_visit boolean, tin text, allowed_total numeric, line_count int)"
        " ON COMMIT DROP"
    )
    await conn.execute("TRUNCATE delta_stage")
    await conn.copy_records_to_table("delta_stage", records=deltas)
    await conn.execute(
        """
        INSERT INTO service_days AS s SELECT * FROM delta_stage
        ON CONFLICT (member_id, npi, service_date, procedure_code, virtual_visit) DO UPDATE SET
            tin = coalesce(excluded.tin, s.tin), allowed_total = s.allowed_total + excluded.allowed_total,
            line_count = s.line_count + excluded.line_count
        """
    )


# --------------------------------------------------------------------------- recompute


async def load_providers(conn: asyncpg.Connection) -> dict[str, ProviderFacts]:
    return {r["npi"]: ProviderFacts(r["tin"], r["pc"]) for r in
            await conn.fetch("SELECT npi, tin, primary_care AND active AS pc FROM providers")}


async def recompute_members(conn: asyncpg.Connection, member_ids: Sequence[str], rules: AttributionRules, as_of: date,
                            tenant: str, topic_prefix: str) -> tuple[int, int]:
    """Run the rule for ``member_ids`` in chunks; write current/history/outbox rows in batches.

    Returns (members recomputed, changes emitted)."""
    providers = await load_providers(conn)
    await conn.execute(
        "CREATE TEMP TABLE IF NOT EXISTS current_stage (LIKE attribution_current INCLUDING DEFAULTS) ON COMMIT DROP"
    )
    emitted = 0
    event_time = datetime(as_of.year, as_of.month, as_of.day, tzinfo=UTC)
    for offset in range(0, len(member_ids), CHUNK_MEMBERS):
        chunk = list(member_ids[offset: offset + CHUNK_MEMBERS])
        emitted += await _recompute_chunk(conn, chunk, providers, rules, as_of, event_time, tenant, topic_prefix)
    return len(member_ids), emitted


async def _recompute_chunk(conn: asyncpg.Connection, chunk: list[str], providers: dict[str, ProviderFacts],
                           rules: AttributionRules, as_of: date, event_time: datetime, tenant: str,
                           topic_prefix: str) -> int:
    members = {r["member_id"]: r for r in await conn.fetch(
        "SELECT m.*, c.method AS c_method, c.pcp_npi AS c_npi, c.pcp_tin AS c_tin, c.care_team AS c_team,"
        " c.as_of AS c_as_of, c.effective_from AS c_effective FROM unnest($1::text[]) AS u(member_id)"
        " LEFT JOIN members m USING (member_id) LEFT JOIN attribution_current c USING (member_id)", chunk)}
    lines_by_member: dict[str, list[ServiceLine]] = {}
    for r in await conn.fetch(
        "SELECT member_id, npi, tin, service_date, procedure_code, allowed_total, line_count, virtual_visit"
        " FROM service_days WHERE member_id = ANY($1::text[]) AND service_date >= $2",
        chunk, rules.lookback_start(as_of),
    ):
        lines_by_member.setdefault(r[0], []).append(ServiceLine(r[1], r[2], r[3], r[4], r[5], r[6], r[7]))
    current_rows, history_rows, outbox_rows = [], [], []
    topic = topic_name(type_of(AttributionChanged).topic, topic_prefix)
    for member_id in chunk:
        row = members[member_id]
        enrollment = prospective = None
        if row["plan_id"] is not None:
            enrollment = Enrollment(row["plan_id"], row["effective_date"], row["termination_date"],
                                    row["virtual_first"], row["v1c_group_npi"], row["care_manager_id"],
                                    row["disenrolled_on"])
            if row["selected_pcp_npi"]:
                prospective = ProspectivePcp(row["selected_pcp_npi"], row["selected_pcp_tin"],
                                             row["selection"] or "member_selected", row["selection_effective"])
        member_as_of = max(as_of, row["c_as_of"]) if row["c_as_of"] else as_of
        result = attribute(MemberFacts(member_id, enrollment, prospective), lines_by_member.get(member_id, ()),
                           providers, rules, member_as_of)
        previous_outcome = (
            (row["c_method"], row["c_npi"], row["c_tin"], care_team_from_json(row["c_team"]))
            if row["c_method"] else NOBODY.outcome
        )
        changed = result.outcome != previous_outcome
        explanation = explanation_dict(result.explanation)
        team = care_team_json(result.care_team)
        explanation_json = json.dumps(explanation)
        effective_from = member_as_of if changed else row["c_effective"]
        current_rows.append((member_id, result.method.value, result.pcp_npi, result.pcp_tin, team, explanation_json,
                             member_as_of, effective_from))
        if changed:
            history_rows.append((member_id, member_as_of, result.method.value, result.pcp_npi, result.pcp_tin, team,
                                 explanation_json))
            event_id = uuid.uuid4().hex
            outbox_rows.append((topic, member_id.encode(), changed_event_json(
                event_id, member_id, member_as_of, event_time, tenant, result.method.value, result.pcp_npi,
                result.pcp_tin, row["c_npi"], json.loads(team), explanation),
                json.dumps({"ce_type": "attribution.changed", "ce_id": event_id})))
    await conn.execute("TRUNCATE current_stage")
    await conn.copy_records_to_table(
        "current_stage", records=current_rows,
        columns=["member_id", "method", "pcp_npi", "pcp_tin", "care_team", "explanation", "as_of", "effective_from"],
    )
    await conn.execute(
        """
        INSERT INTO attribution_current AS c (member_id, method, pcp_npi, pcp_tin, care_team, explanation, as_of,
                                              effective_from)
        SELECT member_id, method, pcp_npi, pcp_tin, care_team, explanation, as_of, effective_from FROM current_stage
        ON CONFLICT (member_id) DO UPDATE SET method = excluded.method, pcp_npi = excluded.pcp_npi,
            pcp_tin = excluded.pcp_tin, care_team = excluded.care_team, explanation = excluded.explanation,
            as_of = excluded.as_of, effective_from = excluded.effective_from, updated_at = now()
        """
    )
    if history_rows:
        await conn.execute(
            "UPDATE attribution_history h SET effective_to = u.day FROM unnest($1::text[], $2::date[]) AS u(m, day)"
            " WHERE h.member_id = u.m AND h.effective_to IS NULL AND h.effective_from < u.day",
            [r[0] for r in history_rows], [r[1] for r in history_rows],
        )
        await conn.execute("DELETE FROM attribution_history h USING unnest($1::text[], $2::date[]) AS u(m, day)"
                           " WHERE h.member_id = u.m AND h.effective_from = u.day",
                           [r[0] for r in history_rows], [r[1] for r in history_rows])
        await conn.copy_records_to_table(
            "attribution_history", records=history_rows,
            columns=["member_id", "effective_from", "method", "pcp_npi", "pcp_tin", "care_team", "explanation"],
        )
        await conn.copy_records_to_table("outbox", records=outbox_rows, columns=["topic", "key", "payload", "headers"])
    return len(history_rows)


def changed_event_json(event_id: str, member_id: str, effective: date, event_time: datetime, tenant: str,
                       method: str, pcp_npi: str | None, pcp_tin: str | None, previous_pcp_npi: str | None,
                       care_team: list[dict[str, Any]], explanation: dict[str, Any]) -> bytes:
    """The ``attribution.changed`` CloudEvent as wire bytes, built without per-event model validation
    (bulk speed); its shape is checked against the contract by the unit tests (``parse_event``)."""
    entry = type_of(AttributionChanged)
    data: dict[str, Any] = {"member_id": member_id, "effective_date": effective.isoformat(), "method": method,
                            "care_team": [{k: v for k, v in m.items() if v is not None} for m in care_team],
                            "explanation": {k: v for k, v in explanation.items() if v is not None}}
    data["explanation"]["candidates"] = [{k: v for k, v in c.items() if v is not None}
                                         for c in explanation["candidates"]]
    for key, value in (("pcp_npi", pcp_npi), ("pcp_tin", pcp_tin), ("previous_pcp_npi", previous_pcp_npi)):
        if value is not None:
            data[key] = value
    envelope = {"specversion": "1.0", "id": event_id, "type": entry.name, "source": SOURCE, "subject": member_id,
                "time": event_time.isoformat(), "datacontenttype": "application/json",
                "dataschema": entry.dataschema, "tenant": tenant, "data": data}
    return json.dumps(envelope, separators=(",", ":")).encode()


# --------------------------------------------------------------------------- CLI


async def run(kind: str, path: str, as_of: date, migrate: bool) -> BulkReport:
    """Connect with the service settings and run one bulk job (composition root of the CLI)."""
    from cth_shared.db import create_pool, run_migrations

    from .settings import AttributionSettings

    settings = AttributionSettings()
    pool = await create_pool(settings.database_url.get_secret_value(), schema="attribution",
                             application_name="attribution-bulk", min_size=1, max_size=2)
    try:
        if migrate:
            await run_migrations(pool, "attribution", "attribution")
        async with pool.acquire() as conn:
            job = load_roster if kind == "roster" else backfill_claims
            return await job(conn, path, settings.rules(), as_of, settings.tenant, settings.topic_prefix)
    finally:
        await pool.close()


def main(argv: Sequence[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m attribution.bulk", description=__doc__.split("\n\n")[0])
    parser.add_argument("kind", choices=["roster", "claims"])
    parser.add_argument("file")
    parser.add_argument("--as-of", type=date.fromisoformat, default=date.today(),
                        help="business date of the load (effective date of changes); default today")
    parser.add_argument("--migrate", action="store_true", help="apply the service migrations first")
    args = parser.parse_args(argv)
    report = asyncio.run(run(args.kind, args.file, args.as_of, args.migrate))
    sys.stdout.write(json.dumps(report.as_dict()) + "\n")


if __name__ == "__main__":
    main()

