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
of known claims go through the live topic). A member named twice in a roster file takes
its last row. The service schema must exist (start the service once, or pass ``--migrate``).

A run is one transaction that first takes the bulk lock (:func:`lock_out_live_writers`): the
running service's handlers wait for it (their events queue as consumer lag and are applied
afterwards, nothing is lost), so a 1M-member roster pauses live attribution for 15-20 s on 2 cores.
"""

from __future__ import annotations

import asyncio
import csv
import gc
import hashlib
import json
import os
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import asyncpg
from cth_shared.contracts import topic_name, type_of
from cth_shared.contracts.events import AttributionChanged

from .domain import (
    NOBODY,
    Attribution,
    AttributionRules,
    CareTeamEntry,
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
ROSTER_COLUMNS = ("member_id", "plan_id", "network_id", "virtual_first", "v1c_group_npi", "effective_date",
                  "termination_date", "care_manager_id", "selected_pcp_npi")
CHUNK_CLAIM_LINES = 100_000
BULK_WORK_MEM = "128MB"


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


# --------------------------------------------------------------------------- the bulk lock

#: Every table a bulk run writes, except the outbox (inserts only, never a conflict).
BULK_LOCKED_TABLES = ("members", "claims", "voided_claims", "service_days", "attribution_current",
                      "attribution_history")
LOCK_ATTEMPTS = 5


async def lock_out_live_writers(conn: asyncpg.Connection) -> None:
    """Hold off the live handlers' writes (and other bulk runs) until this transaction ends.

    SHARE ROW EXCLUSIVE lets readers (the HTTP API) through and makes writers wait, so the live
    service's events queue in their topics (consumer lag) for the run's duration and are applied
    after it: a bulk result is never computed from facts a live handler is changing, and neither
    side overwrites the other. Holding every table first means the run itself never waits on a
    live transaction (no deadlock later); a deadlock while acquiring them is retried.
    """
    for attempt in range(1, LOCK_ATTEMPTS + 1):
        try:
            async with conn.transaction():  # a savepoint: a lost deadlock leaves the outer transaction usable
                await conn.execute(f"LOCK TABLE {', '.join(BULK_LOCKED_TABLES)} IN SHARE ROW EXCLUSIVE MODE")
            return
        except asyncpg.exceptions.DeadlockDetectedError:
            if attempt == LOCK_ATTEMPTS:
                raise
            await asyncio.sleep(0.2 * attempt)


@contextmanager
def _cyclic_gc_paused() -> Iterator[None]:
    """Pause CPython's cyclic garbage collector for a bulk run (reference counting still frees everything).

    A run allocates millions of short-lived tuples and records; every few thousand allocations the collector
    walks the young objects, and every so often all objects of the process. Measured on a 1M-member roster:
    the client's CPU 11.2 / 10.3 s -> 8.0 / 6.9 s, the load 19.5 / 18.3 s -> 16.9 / 15.3 s; and in a process
    that already holds a large heap (3M objects, as the benchmark harness after its other parts) 27.8 / 24.1 s
    -> 17.1 / 18.1 s. Nothing a run allocates forms reference cycles at scale, so nothing piles up meanwhile.
    Process-wide: the previous state is restored afterwards."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


# --------------------------------------------------------------------------- roster


async def load_roster(conn: asyncpg.Connection, path: str, rules: AttributionRules, as_of: date,
                      tenant: str = "payer-demo", topic_prefix: str = "") -> BulkReport:
    """Reload the roster from ``path`` and recompute every member it names."""
    started = time.perf_counter()
    with _cyclic_gc_paused():
        return await _load_roster(conn, path, rules, as_of, tenant, topic_prefix, started)


async def _load_roster(conn: asyncpg.Connection, path: str, rules: AttributionRules, as_of: date, tenant: str,
                       topic_prefix: str, started: float) -> BulkReport:
    async with conn.transaction():
        await lock_out_live_writers(conn)
        # ``line`` numbers the rows in file order: when a member appears more than once, the last row wins.
        await conn.execute(
            "CREATE TEMP TABLE roster_stage (member_id text, plan_id text, network_id text, virtual_first boolean,"
            " v1c_group_npi text, effective_date date, termination_date date, care_manager_id text,"
            " selected_pcp_npi text, line bigint GENERATED ALWAYS AS IDENTITY) ON COMMIT DROP"
        )
        status = await conn.copy_to_table("roster_stage", source=path, format="csv", header=True,
                                          columns=list(ROSTER_COLUMNS))
        rows = int(status.split()[-1])  # "COPY <n>"
        await conn.execute(f"SET LOCAL work_mem = '{BULK_WORK_MEM}'")  # in-memory hashes and sorts from here on
        # Keyed, so the recompute reads members and results as one merge join over the primary keys (no sort);
        # filled from the upsert's own (distinct) output rather than a second sort of the stage.
        await conn.execute("CREATE TEMP TABLE roster_ids (member_id text PRIMARY KEY) ON COMMIT DROP")
        # Under the bulk lock the members table holds still: existing members are updated, new ones get a plain
        # insert (no conflict arbitration; a first load is all inserts).
        await conn.execute(
            """
            WITH roster AS MATERIALIZED (
                SELECT DISTINCT ON (member_id) member_id, plan_id, nullif(network_id, '') AS network_id,
                       coalesce(virtual_first, false) AS virtual_first, nullif(v1c_group_npi, '') AS v1c_group_npi,
                       effective_date, termination_date, nullif(care_manager_id, '') AS care_manager_id,
                       nullif(selected_pcp_npi, '') AS selected_pcp_npi
                FROM roster_stage ORDER BY member_id, line DESC
            ), updated AS (
                UPDATE members m SET
                    plan_id = r.plan_id, network_id = r.network_id, virtual_first = r.virtual_first,
                    v1c_group_npi = r.v1c_group_npi, effective_date = r.effective_date,
                    termination_date = r.termination_date, care_manager_id = r.care_manager_id,
                    disenrolled_on = CASE WHEN m.disenrolled_on IS NOT NULL AND r.effective_date > m.disenrolled_on
                                          THEN NULL ELSE m.disenrolled_on END,
                    selected_pcp_npi = coalesce(r.selected_pcp_npi, m.selected_pcp_npi),
                    -- as the live path (store.upsert_member): a newly selected PCP's TIN is not the old one's
                    selected_pcp_tin = CASE WHEN r.selected_pcp_npi IS NULL OR r.selected_pcp_npi = m.selected_pcp_npi
                                            THEN m.selected_pcp_tin ELSE NULL END,
                    selection = CASE WHEN r.selected_pcp_npi IS DISTINCT FROM m.selected_pcp_npi
                                      AND r.selected_pcp_npi IS NOT NULL THEN 'member_selected'
                                     ELSE m.selection END,
                    selection_effective = CASE WHEN r.selected_pcp_npi IS DISTINCT FROM m.selected_pcp_npi
                                                AND r.selected_pcp_npi IS NOT NULL
                                               THEN r.effective_date ELSE m.selection_effective END,
                    updated_at = now()
                FROM roster r WHERE m.member_id = r.member_id
                RETURNING m.member_id
            ), inserted AS (
                INSERT INTO members (member_id, plan_id, network_id, virtual_first, v1c_group_npi, effective_date,
                                     termination_date, care_manager_id, selected_pcp_npi, selection,
                                     selection_effective)
                SELECT member_id, plan_id, network_id, virtual_first, v1c_group_npi, effective_date, termination_date,
                       care_manager_id, selected_pcp_npi,
                       CASE WHEN selected_pcp_npi IS NOT NULL THEN 'member_selected' END,
                       CASE WHEN selected_pcp_npi IS NOT NULL THEN effective_date END
                FROM roster r WHERE NOT EXISTS (SELECT FROM members x WHERE x.member_id = r.member_id)
                RETURNING member_id
            )
            INSERT INTO roster_ids SELECT member_id FROM updated UNION ALL SELECT member_id FROM inserted
            """
        )
        await conn.execute("ANALYZE roster_ids")
        recomputed, emitted = await _recompute(conn, "roster_ids", "r.member_id", rules, as_of, tenant, topic_prefix)
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
    with _cyclic_gc_paused():
        return await _backfill_claims(conn, path, rules, as_of, tenant, topic_prefix, started)


async def _backfill_claims(conn: asyncpg.Connection, path: str, rules: AttributionRules, as_of: date, tenant: str,
                           topic_prefix: str, started: float) -> BulkReport:
    voided_in_file: dict[str, str] = {}
    for row in _read_claim_rows(path):  # first pass: what the file voids, wherever it sits in the file
        if row["status"] in ("reversed", "adjusted") and row["replaces_claim_id"]:
            voided_in_file.setdefault(row["replaces_claim_id"], row["claim_id"])
    lines_total = 0
    touched: set[str] = set()
    async with conn.transaction():
        await lock_out_live_writers(conn)
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
    """Run the rule for ``member_ids`` (in that order) and write current/history/outbox rows in batches.

    Call inside a transaction that holds :func:`lock_out_live_writers`.

    Returns (members recomputed, changes emitted)."""
    await conn.execute("CREATE TEMP TABLE IF NOT EXISTS recompute_ids (pos int PRIMARY KEY, member_id text)"
                       " ON COMMIT DROP")
    await conn.execute("TRUNCATE recompute_ids")
    await conn.copy_records_to_table("recompute_ids", records=enumerate(member_ids), columns=["pos", "member_id"])
    await conn.execute("ANALYZE recompute_ids")
    return await _recompute(conn, "recompute_ids", "r.pos", rules, as_of, tenant, topic_prefix)


#: Columns the rule reads, in the order :class:`_Recomputer` indexes them (members, then attribution_current).
_INPUT_COLUMNS = (
    "r.member_id, m.plan_id, m.effective_date, m.termination_date, m.virtual_first, m.v1c_group_npi,"
    " m.care_manager_id, m.disenrolled_on, m.selected_pcp_npi, m.selected_pcp_tin, m.selection,"
    " m.selection_effective, c.method, c.pcp_npi, c.pcp_tin, c.care_team, c.as_of, c.effective_from"
)


async def _recompute(conn: asyncpg.Connection, ids_table: str, order_by: str, rules: AttributionRules, as_of: date,
                     tenant: str, topic_prefix: str) -> tuple[int, int]:
    """Recompute every member of ``ids_table`` (distinct ``member_id``), streamed in ``order_by`` order.

    The rule runs in a worker thread on chunk *k* while this connection writes chunk *k-1* and
    reads chunk *k+1* (members are independent, and nothing read here is written here)."""
    computer = _Recomputer(await load_providers(conn), rules, as_of, tenant, topic_prefix)
    await _create_write_stages(conn)
    cursor = await conn.cursor(
        f"SELECT {_INPUT_COLUMNS} FROM {ids_table} r LEFT JOIN members m USING (member_id)"
        f" LEFT JOIN attribution_current c USING (member_id) ORDER BY {order_by}"
    )
    lookback_start = rules.lookback_start(as_of)

    async def read() -> tuple[list[asyncpg.Record], dict[str, list[ServiceLine]]] | None:
        rows = await cursor.fetch(CHUNK_MEMBERS)
        if not rows:
            return None
        lines: dict[str, list[ServiceLine]] = {}
        for r in await conn.fetch(
            "SELECT member_id, npi, tin, service_date, procedure_code, allowed_total, line_count, virtual_visit"
            " FROM service_days WHERE member_id = ANY($1::text[]) AND service_date >= $2",
            [r[0] for r in rows], lookback_start,
        ):
            lines.setdefault(r[0], []).append(ServiceLine(r[1], r[2], r[3], r[4], r[5], r[6], r[7]))
        return rows, lines

    loop = asyncio.get_running_loop()
    recomputed = emitted = 0
    pending: _ChunkResult | None = None
    batch = await read()
    with _short_gil_switches():
        while batch is not None:
            computing = loop.run_in_executor(None, computer.chunk, *batch)
            try:
                if pending is not None:
                    await _write_chunk(conn, pending)
                batch = await read()
            finally:
                pending = await computing
            recomputed += pending.members
            emitted += len(pending.outbox)
    if pending is not None:
        await _write_chunk(conn, pending)
    return recomputed, emitted


#: GIL switch interval while the rule thread runs (CPython's default is 5 ms).
GIL_SWITCH_INTERVAL_S = 0.0002


@contextmanager
def _short_gil_switches() -> Iterator[None]:
    """Let the event loop thread take the GIL back from the rule thread within 0.2 ms instead of 5 ms.

    Each reply from PostgreSQL wakes the loop thread, which then waits for the rule thread to give up the
    GIL; with ~10 round trips per chunk, the default interval leaves the server idle for up to 5 ms each
    (paired A/B, 3 rounds, 1M members: 44.0/47.2/43.8k -> 50.4/45.9/53.7k members/s). Process-wide, so
    restored after."""
    previous = sys.getswitchinterval()
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
    try:
        yield
    finally:
        sys.setswitchinterval(previous)


@dataclass
class _ChunkResult:
    members: int
    docs: list[tuple[int, str, str]]  # new (doc, care_team, explanation) documents
    current: list[tuple[Any, ...]]    # current_stage rows
    reattributed: list[tuple[str, date]]  # changed members that had a current row (may have history)
    outbox: list[tuple[str, bytes, bytes, str]]
    existing: int = 0  # members that already had an attribution_current row


@dataclass
class _Computed:
    """One rule result with its serialised forms (shared by every member with the same facts)."""

    result: Attribution
    method: str
    team_json: str
    explanation_json: str
    templates: dict[tuple[date, str | None], tuple[bytes, bytes, bytes, bytes] | None]
    doc: int | None = None  # row of bulk_docs holding team_json and explanation_json (parsed once)


_EVENT_ID_MARK = "\x00event-id\x00"  # NUL cannot occur in PostgreSQL text, so never in real values
_MEMBER_MARK = "\x00member-id\x00"
_MEMO_LIMIT = 100_000


class _Recomputer:
    """Runs :func:`attribute` per member, memoised on the member's facts when the member has no service
    lines (the result does not depend on the member id: a first roster load is mostly such members)."""

    def __init__(self, providers: dict[str, ProviderFacts], rules: AttributionRules, as_of: date, tenant: str,
                 topic_prefix: str) -> None:
        self.providers, self.rules, self.as_of, self.tenant = providers, rules, as_of, tenant
        self.event_time = datetime(as_of.year, as_of.month, as_of.day, tzinfo=UTC)
        self.topic = topic_name(type_of(AttributionChanged).topic, topic_prefix)
        self.memo: dict[tuple[Any, ...], _Computed] = {}
        self.teams: dict[str, tuple[CareTeamEntry, ...]] = {}
        self.docs = 0
        self.event_ids = _EventIds()

    def _compute(self, row: asyncpg.Record, lines: Sequence[ServiceLine], member_as_of: date) -> _Computed:
        enrollment = prospective = None
        if row[1] is not None:
            enrollment = Enrollment(row[1], row[2], row[3], row[4], row[5], row[6], row[7])
            if row[8]:
                prospective = ProspectivePcp(row[8], row[9], row[10] or "member_selected", row[11])
        result = attribute(MemberFacts(row[0], enrollment, prospective), lines, self.providers, self.rules,
                           member_as_of)
        return _Computed(result, result.method.value, care_team_json(result.care_team),
                         json.dumps(explanation_dict(result.explanation)), {})

    def _previous_team(self, raw: str) -> tuple[CareTeamEntry, ...]:
        team = self.teams.get(raw)
        if team is None:
            if len(self.teams) >= _MEMO_LIMIT:
                self.teams.clear()
            team = self.teams[raw] = care_team_from_json(raw)
        return team

    def _payload(self, computed: _Computed, event_id: str, member_id: str, effective: date,
                 previous_npi: str | None) -> bytes:
        """The event bytes of :func:`changed_event_json`, from a per-result template (ids spliced in)."""
        key = (effective, previous_npi)
        if key not in computed.templates:
            raw = self._event(computed, _EVENT_ID_MARK, _MEMBER_MARK, effective, previous_npi)
            head, sep, rest = raw.partition(json.dumps(_EVENT_ID_MARK).encode())
            parts = rest.split(json.dumps(_MEMBER_MARK).encode())
            computed.templates[key] = (head, *parts) if sep and len(parts) == 3 else None  # type: ignore[assignment]
        template = computed.templates[key]
        if template is None:
            return self._event(computed, event_id, member_id, effective, previous_npi)
        quoted = json.dumps(member_id).encode()
        return b"".join((template[0], b'"', event_id.encode(), b'"', template[1], quoted, template[2], quoted,
                         template[3]))

    def _event(self, computed: _Computed, event_id: str, member_id: str, effective: date,
               previous_npi: str | None) -> bytes:
        result = computed.result
        return changed_event_json(event_id, member_id, effective, self.event_time, self.tenant, computed.method,
                                  result.pcp_npi, result.pcp_tin, previous_npi, json.loads(computed.team_json),
                                  explanation_dict(result.explanation))

    def chunk(self, rows: list[asyncpg.Record], lines_by_member: dict[str, list[ServiceLine]]) -> _ChunkResult:
        as_of, memo = self.as_of, self.memo
        docs: list[tuple[int, str, str]] = []
        current = []
        outbox = []
        reattributed: list[tuple[str, date]] = []
        existing = 0
        nobody = NOBODY.outcome
        for row in rows:
            member_id = row[0]
            c_as_of = row[16]
            member_as_of = max(as_of, c_as_of) if c_as_of else as_of
            lines = lines_by_member.get(member_id)
            if lines:
                computed = self._compute(row, lines, member_as_of)
            else:
                key = (row[1], row[2], row[3], row[4], row[5], row[6], row[7], row[8], row[9], row[10], row[11],
                       member_as_of)
                computed = memo.get(key)  # type: ignore[assignment]
                if computed is None:
                    if len(memo) >= _MEMO_LIMIT:
                        memo.clear()
                    computed = memo[key] = self._compute(row, (), member_as_of)
            if computed.doc is None:
                self.docs += 1
                computed.doc = self.docs
                docs.append((self.docs, computed.team_json, computed.explanation_json))
            result = computed.result
            c_method = row[12]
            previous = (c_method, row[13], row[14], self._previous_team(row[15])) if c_method else nobody
            changed = result.outcome != previous
            existing += c_method is not None
            current.append((member_id, computed.method, result.pcp_npi, result.pcp_tin, computed.doc, member_as_of,
                            member_as_of if changed else row[17], changed, c_method is not None))
            if changed:
                if c_method:
                    reattributed.append((member_id, member_as_of))
                event_id = self.event_ids()
                outbox.append((self.topic, member_id.encode(),
                               self._payload(computed, event_id, member_id, member_as_of, row[13]),
                               '{"ce_type": "attribution.changed", "ce_id": "' + event_id + '"}'))
        return _ChunkResult(len(rows), docs, current, reattributed, outbox, existing)


_ID_MASK = ~(0xF000 << 64) & ~(0xC000 << 48)
_ID_BITS = (0x4000 << 64) | (0x8000 << 48)
_ID_BUFFER = 16 * 4096


class _EventIds:
    """``uuid.uuid4().hex`` without the UUID object (random version-4, RFC 4122 variant ids), from one
    ``os.urandom`` call per 4,096 ids: each call releases the GIL, and the rule's worker thread then
    waits for the writer to hand it back (measured: the per-id call was 14% of the bulk run's samples)."""

    def __init__(self) -> None:
        self._buffer = b""
        self._at = 0

    def __call__(self) -> str:
        if self._at >= len(self._buffer):
            self._buffer, self._at = os.urandom(_ID_BUFFER), 0
        value = int.from_bytes(self._buffer[self._at:self._at + 16], "big")
        self._at += 16
        return "%032x" % ((value & _ID_MASK) | _ID_BITS)


async def _create_write_stages(conn: asyncpg.Connection) -> None:
    """Temporary tables of one recompute: the distinct result documents and one chunk of results."""
    await conn.execute("CREATE TEMP TABLE IF NOT EXISTS bulk_docs (doc int PRIMARY KEY, care_team jsonb NOT NULL,"
                       " explanation jsonb NOT NULL) ON COMMIT DROP")
    await conn.execute("CREATE TEMP TABLE IF NOT EXISTS current_stage (member_id text, method text, pcp_npi text,"
                       " pcp_tin text, doc int, as_of date, effective_from date, changed boolean, existed boolean)"
                       " ON COMMIT DROP")
    await conn.execute("TRUNCATE bulk_docs, current_stage")


async def _write_chunk(conn: asyncpg.Connection, chunk: _ChunkResult) -> None:
    if chunk.docs:
        await conn.copy_records_to_table("bulk_docs", records=chunk.docs)
    await conn.execute("TRUNCATE current_stage")
    await conn.copy_records_to_table("current_stage", records=chunk.current)
    # The bulk lock (:func:`lock_out_live_writers`) keeps the rows the chunk read as they were: members without a
    # current row get a plain insert (no conflict arbitration, ~40% cheaper), the others an update.
    if chunk.existing < chunk.members:
        await conn.execute(
            "INSERT INTO attribution_current (member_id, method, pcp_npi, pcp_tin, care_team, explanation, as_of,"
            " effective_from) SELECT s.member_id, s.method, s.pcp_npi, s.pcp_tin, d.care_team, d.explanation, s.as_of,"
            " s.effective_from FROM current_stage s JOIN bulk_docs d USING (doc) WHERE NOT s.existed"
        )
    if chunk.existing:
        await conn.execute(
            """
            INSERT INTO attribution_current AS c (member_id, method, pcp_npi, pcp_tin, care_team, explanation, as_of,
                                                  effective_from)
            SELECT s.member_id, s.method, s.pcp_npi, s.pcp_tin, d.care_team, d.explanation, s.as_of, s.effective_from
            FROM current_stage s JOIN bulk_docs d USING (doc) WHERE s.existed
            ON CONFLICT (member_id) DO UPDATE SET method = excluded.method, pcp_npi = excluded.pcp_npi,
                pcp_tin = excluded.pcp_tin, care_team = excluded.care_team, explanation = excluded.explanation,
                as_of = excluded.as_of, effective_from = excluded.effective_from, updated_at = now()
            """
        )
    if not chunk.outbox:
        return
    if chunk.reattributed:
        # History rows are only written with the member's attribution_current row, so only members that had one
        # can have a period to close or a same-day row to replace. unnest keeps these index nested loops on the
        # history key (a join to the stage plans a full scan of the history per chunk).
        members, days = [m for m, _ in chunk.reattributed], [d for _, d in chunk.reattributed]
        await conn.execute(
            "UPDATE attribution_history h SET effective_to = u.day FROM unnest($1::text[], $2::date[]) AS u(m, day)"
            " WHERE h.member_id = u.m AND h.effective_to IS NULL AND h.effective_from < u.day",
            members, days,
        )
        await conn.execute("DELETE FROM attribution_history h USING unnest($1::text[], $2::date[]) AS u(m, day)"
                           " WHERE h.member_id = u.m AND h.effective_from = u.day", members, days)
    await conn.execute(
        "INSERT INTO attribution_history (member_id, effective_from, method, pcp_npi, pcp_tin, care_team,"
        " explanation) SELECT s.member_id, s.as_of, s.method, s.pcp_npi, s.pcp_tin, d.care_team, d.explanation"
        " FROM current_stage s JOIN bulk_docs d USING (doc) WHERE s.changed"
    )
    await conn.copy_records_to_table("outbox", records=chunk.outbox, columns=["topic", "key", "payload", "headers"])


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

