"""The care team read once per batch lane stays right when the lane itself changes the team.

Against the real PostgreSQL: a lane's cached care team is dropped when the lane records a new
snapshot for the member, and when a savepoint that wrote one is rolled back.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import date
from typing import Any

import asyncpg
import pytest
from cth_shared.db import create_pool, run_migrations
from cth_shared.messaging.outbox import UnitOfWork
from notifications.handlers import _care_team_at, _record_care_team

pytestmark = pytest.mark.integration

MEMBER = "M-TEAM-1"
TEAM_A = [{"role": "pcp", "id": "1111111112", "tin": "111111111"}]
TEAM_B = [{"role": "pcp", "id": "2222222224", "tin": "222222222"}]


@pytest.fixture
async def pool(isolated: Any) -> AsyncIterator[asyncpg.Pool]:
    pool = await create_pool(isolated.database_url, schema="notifications", application_name="care-team-test")
    await run_migrations(pool, "notifications", "notifications")
    yield pool
    await pool.close()


def ids(team: list[Any]) -> list[str]:
    return [member.id for member in team]


async def test_a_lane_rereads_the_care_team_after_recording_one_and_after_a_rolled_back_savepoint(
    pool: asyncpg.Pool,
) -> None:
    async with pool.acquire() as conn, conn.transaction():
        uow = UnitOfWork(conn=conn, source="urn:test", tenant="p1")
        on = date(2026, 3, 10)
        assert await _care_team_at(uow, MEMBER, on) == []  # nobody known yet (and cached)

        await _record_care_team(uow, MEMBER, date(2026, 3, 1), "pcp_plurality", TEAM_A, "team-a")
        assert ids(await _care_team_at(uow, MEMBER, on)) == ["1111111112"]

        mark = uow.mark()
        savepoint = conn.transaction()
        await savepoint.start()
        await _record_care_team(uow, MEMBER, date(2026, 3, 5), "pcp_plurality", TEAM_B, "team-b")
        assert ids(await _care_team_at(uow, MEMBER, on)) == ["2222222224"]
        await savepoint.rollback()  # the event that wrote team B failed
        uow.rollback_to(mark)
        assert ids(await _care_team_at(uow, MEMBER, on)) == ["1111111112"]
        assert ids(await _care_team_at(uow, MEMBER, date(2026, 3, 2))) == ["1111111112"]
