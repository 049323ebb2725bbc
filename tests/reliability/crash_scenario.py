"""The crash scenario shared by the crash-safety test and bench/soak.py.

Two runs of the same input in two isolated environments (own database, own topics), run
concurrently: a fault-free reference and a faulty run in which every service is SIGKILLed
several times at seeded random moments (and restarted), and PostgreSQL is restarted once.
Their comparable states (:func:`reliability_support.snapshot`) must be equal.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cth_shared.testing.infra import Infra, isolated_env
from reliability_support import SERVICES, FaultPlan, Hub, Receiver, Scenario, Snapshot, snapshot, trace

#: Alert kinds the payer's webhook subscribes to (keeps the delivery volume moderate).
WEBHOOK_KINDS = ("admit", "discharge", "readmission", "ed_visit", "transfer")


@dataclass
class RunResult:
    snapshot: Snapshot
    receipts: list[str]
    delivered_ids: set[str]
    seconds: float
    faults: list[str] = field(default_factory=list)


async def _delivered(hub: Hub) -> set[str]:
    conn = await hub.connect()
    try:
        rows = await conn.fetch(
            "SELECT DISTINCT notification_id FROM notifications.deliveries WHERE status = 'delivered'")
    finally:
        await conn.close()
    return {r["notification_id"] for r in rows}


async def reference_run(infra: Infra, scenario: Scenario, log_dir: Path) -> RunResult:
    """Publish phase by phase with no faults; the state to compare against."""
    started = time.monotonic()
    async with isolated_env(infra) as env, Receiver() as receiver:
        hub = Hub(env, log_dir / "reference")
        await hub.start()
        try:
            await hub.subscribe_webhook(receiver.url, WEBHOOK_KINDS)
            await hub.run(scenario)
            snap = await snapshot(hub)
            delivered = await _delivered(hub)
        finally:
            await hub.stop()
        return RunResult(snap, list(receiver.receipts), delivered, time.monotonic() - started)


async def faulty_run(
    infra: Infra,
    scenario: Scenario,
    log_dir: Path,
    plan: FaultPlan,
    *,
    seed: int,
    postgres_allowed: asyncio.Event | None = None,
    log: Callable[[str], None] = print,
) -> RunResult:
    """The same input while services are SIGKILLed and restarted, and PostgreSQL restarts once.

    A kill lands a seeded random delay after a phase was published, i.e. while the services
    are consuming it, relaying their outboxes or delivering webhooks. ``postgres_allowed`` is
    awaited before restarting PostgreSQL (the reference run shares the server: it must have
    finished first).
    """
    rng = random.Random(seed)
    started = time.monotonic()
    faults: list[str] = []
    async with isolated_env(infra) as env, Receiver() as receiver:
        hub = Hub(env, log_dir / "faulty")
        await hub.start()
        try:
            await hub.subscribe_webhook(receiver.url, WEBHOOK_KINDS)

            async def crash(module: str, phase: int, delay: float) -> None:
                await asyncio.sleep(delay)
                process = hub.processes[module]
                code = process.kill()
                faults.append(f"phase {phase}: SIGKILL {module} (exit {code})")
                trace(faults[-1])
                await asyncio.sleep(rng.uniform(0.0, 0.5))
                await hub.restart(module)

            async def restart_postgres(phase: int) -> None:
                if postgres_allowed is not None:
                    await postgres_allowed.wait()
                await asyncio.sleep(rng.uniform(0.0, 0.3))
                await infra.arestart_postgres()
                faults.append(f"phase {phase}: PostgreSQL restarted")
                trace(faults[-1])

            for number, phase in enumerate(scenario.phases):
                phase_started = time.monotonic()
                await hub.publish(phase)
                tasks = [crash(module, number, rng.uniform(0.0, 1.5)) for p, module in plan.kills if p == number]
                if plan.postgres_phase == number:
                    tasks.append(restart_postgres(number))
                if tasks:
                    await asyncio.gather(*tasks)
                await hub.settle(max(180, len(phase) * 0.1))
                trace(f"faulty phase {number}: {len(phase)} events in {time.monotonic() - phase_started:.1f}s")
            for module, process in hub.processes.items():
                assert process.running, f"{module} died unexpectedly\n{process.log_tail()}"
            snap = await snapshot(hub)
            delivered = await _delivered(hub)
        finally:
            await hub.stop()
        for fault in faults:
            log(fault)
        return RunResult(snap, list(receiver.receipts), delivered, time.monotonic() - started, faults)


def fault_plan(scenario: Scenario, seed: int, kills_per_service: int, restart_postgres: bool) -> FaultPlan:
    """Seeded kill phases spread over the run (the large history phase included)."""
    return FaultPlan.random(seed, len(scenario.phases), tuple(SERVICES), kills_per_service, restart_postgres)


def compare(reference: RunResult, faulty: RunResult) -> dict[str, Any]:
    """What the assertions check, as numbers (also printed by the soak)."""
    ref, got = reference.snapshot, faulty.snapshot
    return {
        "differences": got.differences(ref),
        "emitted_distinct": dict(got.output_ids),
        "emitted_records": dict(got.output_records),
        "reference_emitted_distinct": dict(ref.output_ids),
        "receipts": len(faulty.receipts),
        "receipt_keys": len(set(faulty.receipts)),
        "redelivered_receipts": sum(n - 1 for n in Counter(faulty.receipts).values() if n > 1),
        "reference_receipt_keys": len(set(reference.receipts)),
        "faults": len(faulty.faults),
    }
