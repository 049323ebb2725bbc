"""Inbox retention against the real PostgreSQL: consumed event ids older than the window are pruned in
batches and newer ones kept (a kept id still stops a redelivery, a pruned one no longer does), the job
survives a failing run, and a running service prunes its own inbox."""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from cth_shared.db import create_pool, run_migrations
from cth_shared.messaging import inbox
from cth_shared.messaging.consumer import BatchProcessor
from cth_shared.testing import ServiceProcess, consumer_record, free_port, member_enrolled

pytestmark = pytest.mark.integration

WINDOW = timedelta(days=30)


@pytest.fixture
async def pool(isolated: Any) -> Any:
    pool = await create_pool(isolated.database_url, schema="inbox_probe", application_name="inbox-probe")
    await run_migrations(pool, "inbox_probe", "attribution")  # inbox, outbox, dead_letters
    yield pool
    await pool.close()


async def add_ids(pool: asyncpg.Pool, prefix: str, count: int, age: timedelta) -> None:
    await pool.execute(
        "INSERT INTO inbox(event_id, topic, received_at)"
        " SELECT $1 || n, 'enrollment', now() - $3::interval FROM generate_series(1, $2) AS n", prefix, count, age)


async def test_ids_older_than_the_window_are_pruned_in_batches_and_newer_ones_kept(pool: Any) -> None:
    await add_ids(pool, "old-", 2_500, WINDOW + timedelta(hours=1))
    await add_ids(pool, "new-", 100, WINDOW - timedelta(hours=1))

    assert await inbox.prune_inbox(pool, older_than=WINDOW, batch=1_000) == 2_500
    assert await pool.fetchval("SELECT count(*) FROM inbox") == 100
    assert await pool.fetchval("SELECT count(*) FROM inbox WHERE event_id LIKE 'old-%'") == 0
    assert await inbox.prune_inbox(pool, older_than=WINDOW, batch=1_000) == 0, "nothing left to prune"
    with pytest.raises(ValueError, match="batch"):
        await inbox.prune_inbox(pool, older_than=WINDOW, batch=0)


async def test_a_kept_id_still_stops_a_redelivery_and_a_pruned_one_no_longer_does(pool: Any) -> None:
    applied: list[str] = []

    async def on_member(uow: Any, event: Any) -> None:
        applied.append(event.id)

    processor = BatchProcessor(service="echo", pool=pool, tenant="t", handlers={"member.enrolled": on_member})
    batch = [consumer_record("enrollment", i, m, member_enrolled(m, f"{m}-e")) for i, m in enumerate(["M1", "M2"])]
    await processor.process(batch)
    await pool.execute("UPDATE inbox SET received_at = now() - interval '31 days' WHERE event_id = 'M1-e'")
    assert await inbox.prune_inbox(pool, older_than=WINDOW) == 1

    await processor.process(batch)  # a redelivery of both
    assert applied == ["M1-e", "M2-e", "M1-e"]


async def test_the_job_logs_a_failed_run_by_type_and_prunes_at_the_next(
    pool: Any, caplog: pytest.LogCaptureFixture
) -> None:
    await pool.execute("ALTER TABLE inbox RENAME TO inbox_away")  # the first runs fail
    job = asyncio.create_task(inbox.keep_inbox_pruned(pool, service="echo", retention=WINDOW, interval_s=0.05))
    try:
        with caplog.at_level(logging.WARNING, logger=inbox.__name__):
            for _ in range(100):
                if any(r.getMessage().startswith("inbox pruning failed") for r in caplog.records):
                    break
                await asyncio.sleep(0.05)
            failures = [r for r in caplog.records if r.getMessage().startswith("inbox pruning failed")]
            assert failures and failures[0].reason == "UndefinedTableError"
        await pool.execute("ALTER TABLE inbox_away RENAME TO inbox")
        await add_ids(pool, "old-", 10, WINDOW + timedelta(days=1))
        for _ in range(100):
            if not await pool.fetchval("SELECT count(*) FROM inbox"):
                break
            await asyncio.sleep(0.05)
        assert await pool.fetchval("SELECT count(*) FROM inbox") == 0
        assert not job.done(), "the job keeps running"
    finally:
        job.cancel()
        with pytest.raises(asyncio.CancelledError):
            await job


async def test_a_running_service_prunes_its_own_inbox(isolated: Any, tmp_path: Path) -> None:
    env = isolated.service_env(HTTP_PORT=str(free_port()), INBOX_RETENTION_DAYS="30", INBOX_PRUNE_INTERVAL_S="0.2",
                               OTEL_INSTRUMENT_ASYNCPG="false")
    service = ServiceProcess("attribution", env, log_dir=tmp_path)
    conn = await asyncpg.connect(isolated.database_url)
    try:
        await service.wait_healthy_on_a_free_port(timeout=60)
        await conn.execute("SET search_path TO attribution")
        await conn.execute(
            "INSERT INTO inbox(event_id, topic, received_at) VALUES"
            " ('aged', 'enrollment', now() - interval '31 days'), ('fresh', 'enrollment', now() - interval '29 days')")
        for _ in range(100):
            if await conn.fetchval("SELECT count(*) FROM inbox WHERE event_id = 'aged'") == 0:
                break
            await asyncio.sleep(0.1)
        assert [r["event_id"] for r in await conn.fetch("SELECT event_id FROM inbox")] == ["fresh"]
    finally:
        await conn.close()
        service.terminate(timeout=20)
