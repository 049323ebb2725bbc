"""Crash safety: SIGKILL every service several times and restart PostgreSQL during a 20,000-event run.

The promise (DESIGN.md section 4): at-least-once consumption, effects exactly once; killing any
service at any moment loses no event and duplicates no alert. The test runs the same input
twice, concurrently, in two isolated environments: a fault-free reference and a faulty run,
then compares the services' final states table by table (attributions current and history,
gaps and evidence, referrals, alerts by idempotency key, care-team read models, dead letters),
the input ids every service consumed, the events each service emitted (distinct ids and their
content) and the webhook receipts (by Idempotency-Key).

Why phases: a member's events are ordered within one topic only; results that depend on the
order of facts across topics (a care team known before an admission, the tenant-wide event
clock, capacity shared by members) are not promised by the design, so the input is published in
phases and the whole system settles between phases (see ``reliability_support``). Faults land
inside phases, while events are being consumed, relayed and delivered.

Left out of the comparison, because they record processing rather than facts
(``reliability_support.VOLATILE_*``): row write times, database sequences, ids of events
produced by services (random UUIDs; the events are compared by content and counted by distinct
id instead), per-recipient alert sequence numbers (gapless per recipient, interleaved across
members), the event-clock instant at which a gap was detected overdue, the owner recorded on a
gap when it closed, capacity left at routing time, and webhook attempt counts and times.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import pytest
from crash_scenario import compare, fault_plan, faulty_run, reference_run
from reliability_support import build_scenario, crash_population, logical_duplicates, summary

pytestmark = [pytest.mark.integration, pytest.mark.reliability]

SEED = int(os.environ.get("CTH_CRASH_SEED", "20261123"))
MEMBERS = int(os.environ.get("CTH_CRASH_MEMBERS", "5000"))
MIN_EVENTS = int(os.environ.get("CTH_CRASH_MIN_EVENTS", "20000"))  # lowered only to debug at small scale
KILLS_PER_SERVICE = 3


@pytest.fixture(scope="module")
def scenario() -> Any:
    return build_scenario(crash_population(members=MEMBERS, seed=SEED), chunk_days=1)


async def test_kills_and_a_database_restart_lose_nothing_and_duplicate_nothing(
    infra: Any, scenario: Any, tmp_path: Path
) -> None:
    assert len(scenario) >= MIN_EVENTS, len(scenario)
    kinds = scenario.kinds()
    for kind in ("member.enrolled", "claim.adjudicated", "virtual_visit.completed", "referral.requested",
                 "encounter.admitted", "encounter.discharged", "provider.upserted"):
        assert kinds[kind] > 0, kind
    restart_postgres = infra.can_restart_postgres
    plan = fault_plan(scenario, SEED, KILLS_PER_SERVICE, restart_postgres)
    reference_done = asyncio.Event()

    async def reference() -> Any:
        try:
            return await reference_run(infra, scenario, tmp_path)
        finally:
            reference_done.set()

    ref, got = await asyncio.gather(
        reference(), faulty_run(infra, scenario, tmp_path, plan, seed=SEED, postgres_allowed=reference_done))
    numbers = compare(ref, got)
    print(f"\ncrash safety: {len(scenario)} input events, {numbers['faults']} faults"
          f" (reference {ref.seconds:.0f}s, faulty {got.seconds:.0f}s)\n{summary(got.snapshot)}\n{numbers}")

    # Every fault actually happened.
    assert sum(f.count("SIGKILL") for f in got.faults) == KILLS_PER_SERVICE * 4, got.faults
    assert any("PostgreSQL" in f for f in got.faults) == restart_postgres, got.faults
    # The reference did real work in every service.
    rows = summary(ref.snapshot)["rows"]
    for table in ("attribution.attribution_current", "attribution.attribution_history", "care_gaps.gaps",
                  "referrals.referrals", "notifications.notifications", "notifications.care_team_history"):
        assert rows[table] > 0, table
    assert ref.receipts, "the reference delivered no webhook"
    # Nothing lost, nothing duplicated: identical final state and identical emitted facts.
    assert numbers["differences"] == [], "\n".join(numbers["differences"])
    assert got.snapshot.output_ids == ref.snapshot.output_ids
    assert logical_duplicates(got.snapshot) == {topic: 0 for topic in got.snapshot.outputs}
    # Webhooks: every alert with a delivery was received (at least once), none twice as distinct alerts.
    assert set(got.receipts) == got.delivered_ids == ref.delivered_ids == set(ref.receipts)
    if not restart_postgres:
        pytest.skip("PostgreSQL is external to this session: the database-restart part did not run")
