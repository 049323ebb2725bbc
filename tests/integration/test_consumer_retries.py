"""Transient failures in ``BatchProcessor`` against the real PostgreSQL: the partition waits and the
batch is retried, and every retry is visible (a warning naming the step, the attempt and the error's
type, never its message) instead of a silent stall; a pool that hands out no connection is such a
failure too."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import pytest
from cth_shared.db import create_pool, run_migrations
from cth_shared.messaging import consumer
from cth_shared.messaging.consumer import BatchProcessor
from cth_shared.telemetry import JsonLogFormatter
from cth_shared.testing import consumer_record, member_enrolled

pytestmark = pytest.mark.integration

SECRET = "Jane Q Patient 1970-01-01"  # stands for event values an exception message could quote


@pytest.fixture
async def pool(isolated: Any) -> Any:
    pool = await create_pool(isolated.database_url, schema="retry_probe", application_name="retry-probe",
                             max_size=1)
    await run_migrations(pool, "retry_probe", "attribution")  # inbox, outbox, dead_letters
    await pool.execute("CREATE TABLE trail(event_id text PRIMARY KEY)")
    yield pool
    await pool.close()


def retries(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    formatter = JsonLogFormatter()
    return [json.loads(formatter.format(r)) for r in caplog.records
            if r.name == consumer.__name__ and r.getMessage() == "transient failure; retrying"]


async def test_a_transient_handler_failure_is_retried_and_each_retry_is_logged_without_its_message(
    isolated: Any, pool: Any, caplog: pytest.LogCaptureFixture
) -> None:
    failures = [ConnectionResetError(SECRET), ConnectionResetError(SECRET)]

    async def on_member(uow: Any, event: Any) -> None:
        await uow.conn.execute("INSERT INTO trail VALUES ($1)", event.id)
        if failures:
            raise failures.pop()

    processor = BatchProcessor(service="echo", pool=pool, tenant="t", topic_prefix=isolated.topic_prefix,
                               handlers={"member.enrolled": on_member})
    topic = isolated.topic("enrollment")
    with caplog.at_level(logging.WARNING, logger=consumer.__name__):
        await processor.process([consumer_record(topic, 0, "M1", member_enrolled("M1", "M1-e")),
                                 consumer_record(topic, 1, "M2", member_enrolled("M2", "M2-e"))])

    assert sorted(await pool.fetch("SELECT event_id FROM trail")) == [("M1-e",), ("M2-e",)]
    assert await pool.fetchval("SELECT count(*) FROM dead_letters") == 0, "transient: retried, not parked"
    logged = retries(caplog)
    assert [(r["step"], r["attempt"], r["reason"], r["service"]) for r in logged] == [
        ("lane", 1, "ConnectionResetError", "echo"), ("lane", 2, "ConnectionResetError", "echo")]
    assert all(r["retry_in_s"] > 0 for r in logged)
    assert SECRET not in caplog.text and all(SECRET not in json.dumps(r) for r in logged)


async def test_a_pool_that_hands_out_no_connection_is_a_logged_transient_failure_not_a_silent_stall(
    isolated: Any, pool: Any, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(consumer, "ACQUIRE_TIMEOUT_S", 0.2)

    async def on_member(uow: Any, event: Any) -> None:
        await uow.conn.execute("INSERT INTO trail VALUES ($1)", event.id)

    processor = BatchProcessor(service="echo", pool=pool, tenant="t", topic_prefix=isolated.topic_prefix,
                               handlers={"member.enrolled": on_member})
    topic = isolated.topic("enrollment")
    with caplog.at_level(logging.WARNING, logger=consumer.__name__):
        async with pool.acquire():  # the pool's only connection is taken
            record = consumer_record(topic, 0, "M1", member_enrolled("M1", "M1-e"))
            batch = asyncio.create_task(processor.process([record]))
            for _ in range(100):
                if retries(caplog):
                    break
                await asyncio.sleep(0.05)
            assert not batch.done(), "the partition waits for a connection"
        await asyncio.wait_for(batch, 30)

    assert await pool.fetchval("SELECT count(*) FROM trail") == 1
    logged = retries(caplog)
    assert logged and logged[0]["reason"] == "TimeoutError" and logged[0]["step"] == "lane"
