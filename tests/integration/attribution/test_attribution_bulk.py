"""attribution's bulk roster load against the real PostgreSQL (the path the 1M-member benchmark times).

A first load attributes and emits once per changed member, a member named twice takes its last
row, an unchanged reload emits nothing, a changed selection closes the history period, and the
bulk lock holds off live writers (readers pass) until the run commits.
"""

from __future__ import annotations

import asyncio
import csv
import json
from collections.abc import AsyncIterator
from datetime import date
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from attribution.bulk import load_roster, lock_out_live_writers
from attribution.domain import AttributionRules
from cth_shared.contracts import npi_with_check_digit
from cth_shared.db import create_pool, run_migrations

pytestmark = pytest.mark.integration

PCP_A, PCP_B = npi_with_check_digit("110000001"), npi_with_check_digit("110000002")
V1C = npi_with_check_digit("330000001")
HEADER = ["member_id", "plan_id", "network_id", "virtual_first", "v1c_group_npi", "effective_date",
          "termination_date", "care_manager_id", "selected_pcp_npi"]


def write_roster(path: Path, rows: list[list[str]]) -> str:
    with path.open("w", newline="") as handle:
        out = csv.writer(handle)
        out.writerow(HEADER)
        out.writerows(rows)
    return str(path)


def roster_rows(selected_for_m1: str = PCP_A) -> list[list[str]]:
    return [
        ["M1", "PLAN-A", "NET-A", "false", "", "2026-01-01", "", "", selected_for_m1],
        ["M2", "PLAN-VF", "NET-A", "true", V1C, "2026-01-01", "", "", ""],
        ["M3", "PLAN-A", "NET-A", "false", "", "2026-01-01", "", "", ""],
        ["M4", "PLAN-A", "NET-A", "false", "", "2026-01-01", "", "", ""],
        ["M4", "PLAN-B", "NET-B", "false", "", "2026-02-01", "", "", PCP_B],  # later row: wins
    ]


@pytest.fixture
async def pool(isolated: Any) -> AsyncIterator[asyncpg.Pool]:
    pool = await create_pool(isolated.database_url, schema="attribution", application_name="bulk-test")
    await run_migrations(pool, "attribution", "attribution")
    async with pool.acquire() as conn:
        await conn.executemany(
            "INSERT INTO providers(npi, tin, role, primary_care, active) VALUES ($1, $2, $3, $4, true)",
            [(PCP_A, "111111111", "pcp", True), (PCP_B, "222222222", "pcp", True), (V1C, "555666777", "v1c", True)],
        )
    yield pool
    await pool.close()


async def outbox_events(conn: asyncpg.Connection) -> list[dict[str, Any]]:
    return [json.loads(r[0]) for r in await conn.fetch("SELECT payload FROM outbox ORDER BY seq")]


async def test_roster_load_attributes_once_last_row_wins_reload_emits_nothing_and_changes_close_history(
    pool: asyncpg.Pool, tmp_path: Path
) -> None:
    rules = AttributionRules()
    async with pool.acquire() as conn:
        first = await load_roster(conn, write_roster(tmp_path / "r1.csv", roster_rows()), rules, date(2026, 3, 1))
        assert (first.rows, first.members_recomputed) == (5, 4)
        current = {r["member_id"]: r for r in await conn.fetch("SELECT * FROM attribution_current")}
        assert {m: (r["method"], r["pcp_npi"]) for m, r in current.items()} == {
            "M1": ("member_selected", PCP_A), "M2": ("virtual_first_default", V1C),
            "M3": ("unattributed", None), "M4": ("member_selected", PCP_B)}
        member4 = await conn.fetchrow("SELECT plan_id, network_id, effective_date FROM members WHERE member_id = 'M4'")
        assert tuple(member4) == ("PLAN-B", "NET-B", date(2026, 2, 1))
        events = await outbox_events(conn)
        assert first.changes_emitted == len(events) == 3
        assert sorted(e["subject"] for e in events) == ["M1", "M2", "M4"]
        assert all(e["type"] == "attribution.changed" for e in events)
        assert len({e["id"] for e in events}) == 3
        assert await conn.fetchval("SELECT count(*) FROM attribution_history") == 3

        again = await load_roster(conn, write_roster(tmp_path / "r2.csv", roster_rows()), rules, date(2026, 3, 2))
        assert (again.members_recomputed, again.changes_emitted) == (4, 0)
        assert len(await outbox_events(conn)) == 3
        assert await conn.fetchval("SELECT count(*) FROM attribution_history") == 3

        # A TIN the live path recorded for the old selection must not follow the new one.
        await conn.execute("UPDATE members SET selected_pcp_tin = '111111111' WHERE member_id = 'M1'")
        changed = await load_roster(conn, write_roster(tmp_path / "r3.csv", roster_rows(PCP_B)), rules,
                                    date(2026, 4, 1))
        assert changed.changes_emitted == 1
        events = await outbox_events(conn)
        assert events[-1]["subject"] == "M1" and events[-1]["data"]["pcp_npi"] == PCP_B
        assert events[-1]["data"]["previous_pcp_npi"] == PCP_A
        history = [tuple(r) for r in await conn.fetch(
            "SELECT pcp_npi, effective_from, effective_to FROM attribution_history WHERE member_id = 'M1'"
            " ORDER BY effective_from")]
        assert history == [(PCP_A, date(2026, 3, 1), date(2026, 4, 1)), (PCP_B, date(2026, 4, 1), None)]
        assert await conn.fetchval("SELECT pcp_npi FROM attribution_current WHERE member_id = 'M1'") == PCP_B
        assert await conn.fetchval("SELECT selected_pcp_tin FROM members WHERE member_id = 'M1'") is None


async def test_the_bulk_lock_holds_off_live_writers_until_commit_and_lets_readers_through(
    pool: asyncpg.Pool, tmp_path: Path
) -> None:
    async with pool.acquire() as bulk, pool.acquire() as live:
        await load_roster(bulk, write_roster(tmp_path / "r.csv", roster_rows()), AttributionRules(), date(2026, 3, 1))
        transaction = bulk.transaction()
        await transaction.start()
        await lock_out_live_writers(bulk)
        assert await live.fetchval("SELECT count(*) FROM attribution_current") == 4  # readers pass
        for statement in ("UPDATE members SET care_manager_id = 'CM-1' WHERE member_id = 'M3'",
                          "DELETE FROM attribution_current WHERE member_id = 'M3'",
                          "INSERT INTO service_days(member_id, npi, service_date, procedure_code, virtual_visit, tin,"
                          " allowed_total, line_count) VALUES ('M3', '" + PCP_A + "', '2026-02-01', '99213', false,"
                          " '111111111', 10, 1)"):
            async with live.transaction():
                await live.execute("SET LOCAL lock_timeout = '300ms'")
                with pytest.raises(asyncpg.exceptions.LockNotAvailableError):
                    await live.execute(statement)
        update = "UPDATE members SET care_manager_id = 'CM-1' WHERE member_id = 'M3'"
        waiting = asyncio.create_task(live.execute(update))
        await asyncio.sleep(0.3)
        assert not waiting.done()  # a live write waits for the run ...
        await transaction.commit()
        assert await asyncio.wait_for(waiting, 10) == "UPDATE 1"  # ... and is applied after it
