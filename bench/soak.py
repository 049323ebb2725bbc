"""Crash soak: the crash-safety scenario (tests/reliability/test_crash_safety.py) at a larger scale.

The same input runs twice, concurrently, in two isolated environments of one embedded stack
(or the infrastructure ``cth_shared.testing.infra.start_infra`` picks): a fault-free reference,
and a faulty run in which every service is SIGKILLed ``--kill-rounds`` times at seeded random
moments (and restarted) and PostgreSQL restarts once. The final states must be equal: nothing
lost, nothing duplicated (tables, consumed input ids, emitted events by id, webhook receipts by
Idempotency-Key). Not run by ``make test``.

Run: ``python -m bench.soak [--members 20000] [--days 20] [--lookback-days 180] [--kill-rounds 5]
[--seed 1] [--no-postgres-restart] [--trace]``. Exit status 0 when the states are equal.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "reliability"))

from crash_scenario import compare, fault_plan, faulty_run, reference_run
from cth_shared.testing.infra import start_infra
from reliability_support import build_scenario, crash_population, logical_duplicates, summary


async def soak(args: argparse.Namespace) -> dict[str, object]:
    started = time.monotonic()
    scenario = build_scenario(crash_population(members=args.members, seed=args.seed, days=args.days,
                                               lookback_days=args.lookback_days), chunk_days=1)
    built = time.monotonic() - started
    print(f"scenario: {len(scenario)} events in {len(scenario.phases)} phases ({built:.1f}s to build)",
          file=sys.stderr)
    infra = await asyncio.to_thread(start_infra)
    try:
        restart_postgres = args.postgres_restart and infra.can_restart_postgres
        plan = fault_plan(scenario, args.seed, args.kill_rounds, restart_postgres)
        reference_done = asyncio.Event()
        log_dir = Path(tempfile.mkdtemp(prefix="cth-soak-"))

        async def reference() -> object:
            try:
                return await reference_run(infra, scenario, log_dir)
            finally:
                reference_done.set()

        ref, got = await asyncio.gather(
            reference(),
            faulty_run(infra, scenario, log_dir, plan, seed=args.seed, postgres_allowed=reference_done,
                       log=lambda line: print(line, file=sys.stderr)),
        )
    finally:
        infra.close()
    numbers = compare(ref, got)
    return {
        "events": len(scenario),
        "phases": len(scenario.phases),
        "kinds": dict(scenario.kinds()),
        "faults": got.faults,
        "postgres_restarted": restart_postgres,
        "reference_seconds": round(ref.seconds, 1),
        "faulty_seconds": round(got.seconds, 1),
        "logical_duplicates": logical_duplicates(got.snapshot),
        "rows": summary(ref.snapshot)["rows"],
        "logs": str(log_dir),
        **numbers,
        "equal": not numbers["differences"] and set(got.receipts) == set(ref.receipts)
        and got.delivered_ids == ref.delivered_ids,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, default=20_000)
    parser.add_argument("--days", type=int, default=20)
    parser.add_argument("--lookback-days", type=int, default=180)
    parser.add_argument("--kill-rounds", type=int, default=5, help="rounds in which every service is killed")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--no-postgres-restart", dest="postgres_restart", action="store_false")
    parser.add_argument("--trace", action="store_true", help="progress per phase on stderr")
    args = parser.parse_args()
    if args.trace:
        os.environ["CTH_RELIABILITY_TRACE"] = "1"
    result = asyncio.run(soak(args))
    print(json.dumps(result, indent=2, default=str))
    sys.exit(0 if result["equal"] else 1)


if __name__ == "__main__":
    main()
