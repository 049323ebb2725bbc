"""Attribution bulk benchmark: roster reload and claims backfill against a fresh embedded stack.

    .venv/bin/python bench/attribution_bulk.py --members 1000000 --claim-members 200000

Generates a deterministic synthetic roster (CSV) and claims file, starts
``cth_shared.embedded.EmbeddedStack`` (Tansu + PostgreSQL), applies the attribution
migrations, preloads a provider directory, then times through the same code the CLI
(``python -m attribution.bulk``) runs:

1. roster load of N members (first load: every member is new);
2. the same roster again (a reload with no changes: must emit nothing);
3. a claims backfill (paid lines over ~2 years plus reversals and adjustments).

Prints members/s, claim lines/s, changes emitted, and peak RSS of this process (the
Python side) and of the PostgreSQL processes.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import random
import resource
import tempfile
import time
from datetime import date, timedelta
from pathlib import Path

import psutil
from attribution.bulk import backfill_claims, load_roster
from attribution.domain import AttributionRules
from cth_shared.contracts import npi_with_check_digit
from cth_shared.db import create_pool, run_migrations
from cth_shared.embedded import EmbeddedStack

AS_OF = date(2026, 3, 1)
PC_CODES = ["99213", "99214", "99215", "99203", "G0439", "99495", "99490"]
OTHER_CODES = ["93000", "71046", "27447", "80053"]


def providers(count: int) -> list[tuple[str, str, str, bool]]:
    rows = []
    for i in range(count):
        npi = npi_with_check_digit(f"{100000000 + i:09d}")
        role = "pcp" if i % 3 == 0 else ("v1c" if i % 10 == 1 else "specialist")
        rows.append((npi, f"{200000000 + i // 20:09d}", role, role in ("pcp", "v1c")))
    return rows


def write_roster(path: Path, members: int, provider_rows: list[tuple[str, str, str, bool]]) -> None:
    rng = random.Random(7)
    v1c = [p[0] for p in provider_rows if p[2] == "v1c"]
    pcps = [p[0] for p in provider_rows if p[2] == "pcp"]
    with path.open("w", newline="") as handle:
        out = csv.writer(handle)
        out.writerow(["member_id", "plan_id", "network_id", "virtual_first", "v1c_group_npi", "effective_date",
                      "termination_date", "care_manager_id", "selected_pcp_npi"])
        for i in range(members):
            virtual_first = i % 4 == 0
            out.writerow([f"M{i:08d}", "PLAN-VF" if virtual_first else "PLAN-A", "NET-A", virtual_first,
                          rng.choice(v1c) if virtual_first else "", "2024-01-01", "",
                          f"CM-{i % 500}" if i % 5 == 0 else "", rng.choice(pcps) if i % 25 == 0 else ""])


def write_claims(path: Path, claim_members: int, member_stride: int,
                 provider_rows: list[tuple[str, str, str, bool]]) -> int:
    rng = random.Random(11)
    lines = 0
    with path.open("w", newline="") as handle:
        out = csv.writer(handle)
        out.writerow(["claim_id", "member_id", "status", "replaces_claim_id", "line_number", "procedure_code",
                      "rendering_npi", "rendering_tin", "service_from", "allowed_amount"])
        claim_no = 0
        for m in range(claim_members):
            member_id = f"M{m * member_stride:08d}"
            doctors = rng.sample(provider_rows, 3)
            for _ in range(rng.randint(2, 8)):
                claim_no += 1
                claim_id = f"C{claim_no:09d}"
                npi, tin, role, _pc = rng.choice(doctors)
                day = AS_OF - timedelta(days=rng.randint(0, 760))
                claim_lines = []
                for line_number in range(1, rng.randint(1, 3) + 1):
                    code = rng.choice(PC_CODES if role != "specialist" or rng.random() < 0.3 else OTHER_CODES)
                    claim_lines.append([line_number, code, npi, tin, day.isoformat(),
                                        f"{rng.uniform(40, 400):.2f}"])
                status = "paid" if rng.random() > 0.03 else "denied"
                for ln in claim_lines:
                    out.writerow([claim_id, member_id, status, "", *ln])
                lines += len(claim_lines)
                roll = rng.random()
                if roll < 0.04:  # reversal
                    claim_no += 1
                    for ln in claim_lines:
                        out.writerow([f"C{claim_no:09d}", member_id, "reversed", claim_id, ln[0], ln[1], ln[2], ln[3],
                                      ln[4], f"-{ln[5]}"])
                    lines += len(claim_lines)
                elif roll < 0.08:  # adjustment
                    claim_no += 1
                    for ln in claim_lines:
                        out.writerow([f"C{claim_no:09d}", member_id, "adjusted", claim_id, ln[0], ln[1], ln[2], ln[3],
                                      ln[4], f"{float(ln[5]) * 0.8:.2f}"])
                    lines += len(claim_lines)
    return lines


def postgres_rss_mb(stack_pid: int) -> float:
    total = 0
    for proc in psutil.Process(stack_pid).children(recursive=True):
        try:
            if "postgres" in proc.name():
                total += proc.memory_info().rss
        except psutil.Error:
            continue
    return total / 1e6


async def bench(members: int, claim_members: int, provider_count: int, workdir: Path,
                reload: bool = True) -> dict[str, object]:
    provider_rows = providers(provider_count)
    roster = workdir / "roster.csv"
    claims = workdir / "claims.csv"
    t0 = time.perf_counter()
    write_roster(roster, members, provider_rows)
    claim_lines = write_claims(claims, claim_members, max(1, members // max(claim_members, 1)), provider_rows)
    generated_s = time.perf_counter() - t0
    rules = AttributionRules()
    results: dict[str, object] = {"members": members, "claim_lines": claim_lines, "generate_s": round(generated_s, 1)}
    async with EmbeddedStack() as stack:
        pool = await create_pool(stack.database_url, schema="attribution", application_name="bench")
        await run_migrations(pool, "attribution", "attribution")
        async with pool.acquire() as conn:
            directory = [(n, t, r, pc, True) for n, t, r, pc in provider_rows]
            await conn.copy_records_to_table("providers", records=directory,
                                             columns=["npi", "tin", "role", "primary_care", "active"])
            first = await load_roster(conn, str(roster), rules, AS_OF)
            results["roster_first_load"] = first.as_dict() | {"members_per_s": round(first.rows / first.seconds)}
            if reload:
                again = await load_roster(conn, str(roster), rules, AS_OF)
                results["roster_reload_unchanged"] = again.as_dict() | {
                    "members_per_s": round(again.rows / again.seconds)}
            backfill = await backfill_claims(conn, str(claims), rules, AS_OF)
            results["claims_backfill"] = backfill.as_dict() | {
                "claim_lines_per_s": round(backfill.rows / backfill.seconds)}
            results["outbox_rows"] = await conn.fetchval("SELECT count(*) FROM outbox")
            results["methods"] = {r[0]: r[1] for r in await conn.fetch(
                "SELECT method, count(*) FROM attribution_current GROUP BY 1 ORDER BY 2 DESC")}
        results["postgres_rss_mb_end"] = round(postgres_rss_mb(__import__("os").getpid()), 1)
        await pool.close()
    results["python_peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--members", type=int, default=1_000_000)
    parser.add_argument("--claim-members", type=int, default=200_000)
    parser.add_argument("--providers", type=int, default=5_000)
    parser.add_argument("--no-reload", dest="reload", action="store_false",
                        help="skip the unchanged reload of the same roster")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="attr-bench-") as workdir:
        results = asyncio.run(bench(args.members, args.claim_members, args.providers, Path(workdir),
                                    reload=args.reload))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

