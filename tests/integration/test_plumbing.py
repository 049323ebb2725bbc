"""The delivery mechanism of DESIGN.md section 4, through a real service process.

The echo service (``cth_shared.testing.echo_service``) counts admissions per member
(its effect) and produces one ``notification.created`` per admission (its outbox).
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from cth_shared.contracts import EXAMPLES, EncounterAdmitted, new_event
from cth_shared.embedded import free_port
from cth_shared.testing.infra import ServiceProcess

pytestmark = pytest.mark.integration

PRODUCER_TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def admission(member_id: str, facility_name: str = "St. Example General Hospital") -> bytes:
    data = dict(EXAMPLES["encounter.admitted"], member_id=member_id)
    data["facility"] = dict(data["facility"], name=facility_name)
    event = new_event(EncounterAdmitted.model_validate(data), subject=member_id, source="urn:test", tenant="p1")
    return event.to_json_bytes()


async def read_topics(env: Any, topics: list[str], count: int, timeout: float = 30) -> list[Any]:
    consumer = AIOKafkaConsumer(
        *(env.topic(t) for t in topics),
        bootstrap_servers=env.kafka_bootstrap_servers,
        group_id=f"reader-{time.monotonic_ns()}",
        auto_offset_reset="earliest",
        **env.consumer_overrides(),
    )
    await consumer.start()
    records: list[Any] = []
    try:
        deadline = time.monotonic() + timeout
        while len(records) < count and time.monotonic() < deadline:
            for batch in (await consumer.getmany(timeout_ms=300)).values():
                records.extend(batch)
    finally:
        await consumer.stop()
    return records


@pytest.fixture
async def echo(isolated: Any, tmp_path: Path) -> Any:
    port = free_port()
    spans = tmp_path / "spans.jsonl"
    service = ServiceProcess(
        "cth_shared.testing.echo_service",
        isolated.service_env(HTTP_PORT=str(port), OTEL_SPANS_FILE=str(spans), OTEL_INSTRUMENT_ASYNCPG="false"),
        log_dir=tmp_path,
    )
    await service.wait_healthy(timeout=60)
    service.spans_file = spans
    yield service
    assert service.terminate(timeout=20) == 0, service.log_tail()


async def test_event_delivered_twice_is_applied_once_and_its_outbox_row_carries_the_trace(
    isolated: Any, echo: Any
) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=isolated.kafka_bootstrap_servers)
    await producer.start()
    try:
        payload = admission("M-1")
        for _ in range(2):  # the same event id twice: a redelivery
            await producer.send_and_wait(
                isolated.topic("encounters"),
                payload,
                key=b"M-1",
                headers=[("traceparent", PRODUCER_TRACEPARENT.encode())],
            )
    finally:
        await producer.stop()

    produced = await read_topics(isolated, ["notifications"], 1)
    assert len(produced) == 1
    headers = {k: v.decode() for k, v in produced[0].headers}
    assert headers["traceparent"].split("-")[1] == PRODUCER_TRACEPARENT.split("-")[1], (
        "trace id must survive the outbox"
    )
    assert json.loads(produced[0].value)["type"] == "notification.created"

    await asyncio.sleep(1.0)  # time for a wrong second application to show up
    conn = await asyncpg.connect(isolated.database_url)
    try:
        assert await conn.fetchval("SELECT count FROM echo.admissions_seen WHERE member_id = 'M-1'") == 1
        assert await conn.fetchval("SELECT count(*) FROM echo.inbox") == 1
        assert await conn.fetchval("SELECT count(*) FROM echo.outbox") == 0, "relay deletes what it published"
    finally:
        await conn.close()
    assert len(await read_topics(isolated, ["notifications"], 2, timeout=3)) == 1, "no duplicate produced"


async def test_invalid_messages_go_to_the_dlq_with_a_reason_and_the_next_valid_one_is_processed(
    isolated: Any, echo: Any
) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=isolated.kafka_bootstrap_servers)
    await producer.start()
    topic = isolated.topic("encounters")
    try:  # same key: same partition, in this order
        await producer.send_and_wait(topic, b"{not json", key=b"M-2")
        await producer.send_and_wait(topic, admission("M-2", facility_name="REJECT"), key=b"M-2")
        await producer.send_and_wait(topic, b'{"type": "encounter.exploded"}', key=b"M-2")
        await producer.send_and_wait(topic, admission("M-2"), key=b"M-2")
    finally:
        await producer.stop()

    dead = await read_topics(isolated, ["echo.dlq"], 3)
    reasons = sorted(json.loads(r.value)["reason"] for r in dead)
    assert reasons == ["facility_not_contracted", "invalid_json", "unknown_type"]
    first = next(json.loads(r.value) for r in dead if json.loads(r.value)["reason"] == "invalid_json")
    import base64

    assert base64.b64decode(first["original_base64"]) == b"{not json", "the original bytes are kept"
    assert len(await read_topics(isolated, ["notifications"], 1)) == 1, "the valid event behind them was processed"


async def test_service_shuts_down_gracefully_on_sigterm_and_resumes_where_it_left_off(
    isolated: Any, tmp_path: Path
) -> None:
    port = free_port()
    env = isolated.service_env(HTTP_PORT=str(port), OTEL_INSTRUMENT_ASYNCPG="false")
    service = ServiceProcess("cth_shared.testing.echo_service", env, log_dir=tmp_path)
    await service.wait_healthy(timeout=60)
    producer = AIOKafkaProducer(bootstrap_servers=isolated.kafka_bootstrap_servers)
    await producer.start()
    try:
        for i in range(50):
            await producer.send(isolated.topic("encounters"), admission(f"M-{i % 7}"), key=f"M-{i % 7}".encode())
        await producer.flush()
        assert service.terminate(timeout=20) == 0, service.log_tail()
        for i in range(50, 100):
            await producer.send(isolated.topic("encounters"), admission(f"M-{i % 7}"), key=f"M-{i % 7}".encode())
        await producer.flush()
    finally:
        await producer.stop()
    service.start()
    await service.wait_healthy(timeout=60)
    conn = await asyncpg.connect(isolated.database_url)
    try:
        deadline = time.monotonic() + 30
        total = 0
        while time.monotonic() < deadline:
            total = await conn.fetchval("SELECT coalesce(sum(count), 0) FROM echo.admissions_seen")
            if total >= 100:
                break
            await asyncio.sleep(0.2)
        assert total == 100
    finally:
        await conn.close()
        assert service.terminate(timeout=20) == 0
    assert len(await read_topics(isolated, ["notifications"], 101, timeout=5)) == 100


async def test_a_pooled_connection_comes_back_without_the_reset_round_trip_and_without_an_open_transaction(
    isolated: Any,
) -> None:
    from cth_shared.db import create_pool
    from cth_shared.testing import statements_sent

    pool = await create_pool(isolated.database_url, schema="pool_probe", application_name="pool-probe", max_size=1)
    try:
        await pool.execute("CREATE TABLE IF NOT EXISTS probe(n int)")
        async with statements_sent(pool) as sent:
            async with pool.acquire() as conn:
                tx = conn.transaction()
                await tx.start()
                await conn.execute("INSERT INTO probe VALUES (1)")
                # released with the transaction still open (a handler that forgot it)
            async with pool.acquire() as conn:
                assert not conn.is_in_transaction()
                assert await conn.fetchval("SELECT count(*) FROM probe") == 0, "rolled back on release"
                assert await conn.fetchval("SHOW search_path") == "pool_probe,public"
        assert "ROLLBACK" in sent
        assert not [q for q in sent if q.startswith("RESET ALL")], sent
    finally:
        await pool.close()
