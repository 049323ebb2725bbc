"""Duplicates and order: every input delivered twice, part of it out of order within a member.

What the design promises (DESIGN.md section 4 and the services' handler docs), and so what
this test asserts:

* **Duplicates change nothing.** Consumption is at least once and effects exactly once: the
  inbox keys on the CloudEvent id, so a second delivery of an event, whenever it arrives (right
  away, or late, after newer events of the same member), is skipped. The run below delivers
  every event twice, the second copy at a random later point of its phase.
* **Order within a member is Kafka's to keep, and most facts are also order tolerant.** Kafka
  orders a member's events within one topic partition; a producer that resends (or two feeds of
  one hospital) can still deliver a member's facts out of order. The services state which
  results do not depend on arrival order, and those are asserted to be *identical*:
  attribution's *current* outcome (net claims, "reversals and adjustments are order
  independent"), provider and member records (the latest fact by event time wins), care gaps by
  id with their measure, window, due date and status ("the latest ADT fact by event time wins",
  "evidence counts whether it arrives before or after the discharge"), referrals by id with
  their routing and status, and alerts by idempotency key (one per recipient, subject and kind).
* **Not promised, so not asserted** (they record *what was known when*): attribution history
  ("as known, never rewritten": a late claim applies from the latest computed date) and the
  ``attribution.changed`` events it emits, the care-team read models fed from those events,
  which piece of evidence closed a gap when several qualify (the earliest *known* one), per-
  recipient sequence numbers, and the per-member ordering of emitted events.

Reordering here swaps a member's consecutive facts within a day (claims, visits and referral
requests among themselves; ADT messages among themselves); the day-by-day phases keep the
cross-topic order the design leaves undefined out of the comparison (see reliability_support).
"""

from __future__ import annotations

import asyncio
import random
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
from cth_shared.contracts import CloudEvent
from cth_shared.testing.infra import isolated_env
from reliability_support import Hub, Scenario, Snapshot, build_scenario, crash_population, snapshot

pytestmark = [pytest.mark.integration, pytest.mark.reliability]

SEED = 7
#: Tables (schema.table -> columns kept) whose content the design makes order independent.
ORDER_INDEPENDENT: dict[str, tuple[str, ...] | None] = {
    "attribution.attribution_current": ("member_id", "method", "pcp_npi", "pcp_tin", "care_team"),
    "attribution.members": None,
    "attribution.providers": None,
    "attribution.claims": None,
    "attribution.virtual_visits": None,
    "attribution.service_days": None,
    "referrals.providers": None,
    "referrals.members": None,
    "referrals.referrals": ("referral_id", "member_id", "service_category", "origin", "status", "chosen_npi",
                            "chosen_tier", "unroutable_reason", "leakage_kind"),
    "care_gaps.gaps": ("gap_id", "member_id", "encounter_id", "measure", "window_start", "due_date", "status"),
    "care_gaps.evidence": None,
    "care_gaps.encounters": ("encounter_id", "member_id", "patient_class", "admitted_at", "discharged_at",
                             "disposition"),
    "notifications.notifications": ("notification_id", "organization_id", "recipient_id", "member_id", "kind",
                                    "retraction", "subject_key"),
}


def delivered_twice_partly_out_of_order(scenario: Scenario, seed: int) -> tuple[Scenario, int]:
    """Every event twice (the copy at a random later position of its phase); in the live
    phases half of the members get their consecutive facts of the same topic swapped.
    Returns the new scenario and how many swaps were made."""
    rng = random.Random(seed)
    phases: list[list[CloudEvent[Any]]] = []
    swaps = 0
    for number, phase in enumerate(scenario.phases):
        events = list(phase)
        if number >= 3:  # live period: reorder within a member
            positions: dict[tuple[str, str], list[int]] = defaultdict(list)
            for i, event in enumerate(events):
                positions[(event.subject, event.type.split(".")[0])].append(i)
            for where in positions.values():
                if len(where) < 2 or rng.random() > 1 / 2:
                    continue
                a, b = where[0], where[1]
                events[a], events[b] = events[b], events[a]
                swaps += 1
        # the original at its place, the copy at a random later place
        keyed = [(float(i), 0, event) for i, event in enumerate(events)]
        keyed += [(rng.uniform(i, len(events)), 1, event) for i, event in enumerate(events)]
        keyed.sort(key=lambda item: (item[0], item[1]))
        phases.append([event for _key, _copy, event in keyed])
    return Scenario(phases, scenario.skipped), swaps


def projected(snap: Snapshot, columns_of: dict[str, tuple[str, ...] | None], all_columns: dict[str, list[str]],
              ) -> dict[str, list[tuple[str, ...]]]:
    out = {}
    for name, keep in columns_of.items():
        schema, table = name.split(".")
        rows = snap.tables[schema][table]
        if keep is None:
            out[name] = sorted(rows)
        else:
            index = [all_columns[name].index(c) for c in keep]
            out[name] = sorted(tuple(row[i] for i in index) for row in rows)
    return out


async def columns(hub: Hub) -> dict[str, list[str]]:
    from reliability_support import VOLATILE_BY_TABLE, VOLATILE_COLUMNS

    conn = await hub.connect()
    try:
        found = {}
        for name in ORDER_INDEPENDENT:
            schema, table = name.split(".")
            drop = VOLATILE_COLUMNS | VOLATILE_BY_TABLE.get(table, frozenset())
            found[name] = [r["column_name"] for r in await conn.fetch(
                "SELECT column_name FROM information_schema.columns WHERE table_schema = $1 AND table_name = $2"
                " ORDER BY ordinal_position", schema, table) if r["column_name"] not in drop]
        return found
    finally:
        await conn.close()


async def run(infra: Any, scenario: Scenario, log_dir: Path) -> tuple[Snapshot, dict[str, list[str]], int]:
    async with isolated_env(infra) as env:
        hub = Hub(env, log_dir)
        await hub.start()
        try:
            await hub.run(scenario)
            sent = sum(len(phase) for phase in scenario.phases)
            return await snapshot(hub), await columns(hub), sent
        finally:
            await hub.stop()


async def test_every_input_twice_and_partly_out_of_order_gives_the_promised_same_state(
    infra: Any, tmp_path: Path
) -> None:
    once = build_scenario(crash_population(members=600, seed=SEED, days=10, lookback_days=45), chunk_days=1)
    twice, swaps = delivered_twice_partly_out_of_order(once, SEED)
    assert swaps >= 10 and len(twice) == 2 * len(once)
    (ref, cols, sent_once), (got, _, sent_twice) = await asyncio.gather(
        run(infra, once, tmp_path / "once"), run(infra, twice, tmp_path / "twice"))
    print(f"\n{sent_once} events once in order vs {sent_twice} deliveries ({swaps} member-level swaps)")

    # Every distinct event consumed once by every service, and nothing dead-lettered.
    assert got.input_ids == ref.input_ids
    for schema, tables in got.tables.items():
        assert tables["dead_letters"] == [], f"{schema} dead-lettered input"
    # The order-independent state is identical.
    mine, theirs = projected(got, ORDER_INDEPENDENT, cols), projected(ref, ORDER_INDEPENDENT, cols)
    for name in ORDER_INDEPENDENT:
        assert mine[name] == theirs[name], f"{name} differs:\n{_diff(mine[name], theirs[name])}"
    assert len(theirs["notifications.notifications"]) > 0 and len(theirs["care_gaps.gaps"]) > 0
    # No alert twice: one per (recipient, subject, kind) by construction of the id, and the
    # emitted notification.created events are exactly the reference's alerts.
    alerts = {row[0] for row in theirs["notifications.notifications"]}
    assert got.output_ids["notifications"] == ref.output_ids["notifications"] == len(alerts)
    for topic in ("referrals", "care-gaps"):
        assert got.output_ids[topic] == ref.output_ids[topic], topic


def _diff(a: list[tuple[str, ...]], b: list[tuple[str, ...]], limit: int = 5) -> str:
    only_a = [row for row in a if row not in set(b)]
    only_b = [row for row in b if row not in set(a)]
    return f"only in twice/out-of-order run: {only_a[:limit]}\nonly in reference: {only_b[:limit]}"
