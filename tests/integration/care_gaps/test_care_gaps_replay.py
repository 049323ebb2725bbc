"""Replay semantics through the real broker and PostgreSQL: the event clock flags overdue
gaps at event time, and a readmission that arrives as a discharge before its admit is
flagged against the last discharge (HEDIS PCR) and retires its follow-up gaps (HEDIS TRC)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiokafka import AIOKafkaProducer
from cth_shared.embedded import free_port
from cth_shared.testing.infra import ServiceProcess
from test_care_gaps_service import MEMBER, event, read_gap_events, wait_for

pytestmark = pytest.mark.integration


async def test_a_readmission_closes_the_watch_of_the_last_discharge_and_the_event_clock_flags_overdue_gaps(
    isolated: Any, tmp_path: Path
) -> None:
    service = ServiceProcess(
        "care_gaps",
        isolated.service_env(HTTP_PORT=str(free_port()), OTEL_INSTRUMENT_ASYNCPG="false", CLOCK="event"),
        log_dir=tmp_path,
    )
    await service.wait_healthy(timeout=60)
    producer = AIOKafkaProducer(bootstrap_servers=isolated.kafka_bootstrap_servers)
    await producer.start()
    conn = await asyncpg.connect(isolated.database_url, server_settings={"search_path": "care_gaps"})
    try:
        async def send(topic: str, payload: bytes) -> None:
            await producer.send_and_wait(isolated.topic(topic), payload, key=MEMBER.encode())

        await send("encounters", event("encounter.discharged", "a03-first", encounter_id="SEG-FIRST"))
        # The readmission arrives only as its discharge (no A01 seen): admitted on day 14.
        await send("encounters", event(
            "encounter.discharged", "a03-second", encounter_id="SEG-SECOND",
            admitted_at="2026-03-20T08:00:00-05:00", discharged_at="2026-03-25T11:00:00-05:00", disposition="01",
        ))
        # Topics are not ordered with each other: let both discharges be consumed first (the
        # reverse order is the next test's subject).
        assert await wait_for(conn, "SELECT count(*) FROM gaps WHERE encounter_id = 'SEG-SECOND'", 5) == 5
        # A later event moves the event clock to 2026-03-31: SEG-SECOND's 2-business-day contact is overdue.
        await send("virtual-visits", event(
            "virtual_visit.completed", "vv-later", visit_id="VV-LATER", procedure_codes=["99499"],
            started_at="2026-03-31T09:00:00-05:00", ended_at="2026-03-31T09:10:00-05:00",
            medication_reconciliation=False, interactive_contact=False,
        ))
        events = await read_gap_events(isolated, 16)
        first = [e for e in events if e["data"]["encounter_id"] == "SEG-FIRST"]
        second = [e for e in events if e["data"]["encounter_id"] == "SEG-SECOND"]
        watch = next(e["data"] for e in first if e["type"] == "care_gap.closed")
        assert watch["measure"] == "readmission_watch"
        assert watch["closing_rule"] == "unplanned_readmission"
        assert watch["closing_event_id"] == "a03-second"
        retired = [e["data"] for e in first if e["type"] == "care_gap.not_applicable"]
        assert len(retired) == 4 and {r["reason"] for r in retired} == {"readmitted"}
        assert sum(e["type"] == "care_gap.opened" for e in second) == 5
        overdue = [e["data"] for e in events if e["type"] == "care_gap.overdue"]
        assert [(o["encounter_id"], o["measure"], o["due_date"]) for o in overdue] == [
            ("SEG-SECOND", "tcm_interactive_contact", "2026-03-27")]
        assert len(events) == 16
    finally:
        await conn.close()
        await producer.stop()
        assert service.terminate(timeout=20) == 0, service.log_tail()


async def test_a_discharge_consumed_after_a_later_event_on_another_topic_is_flagged_overdue_at_once(
    isolated: Any, tmp_path: Path
) -> None:
    """Topics are not ordered with each other: when the event clock is already past a
    discharge's due date by the time the discharge is consumed, its open gap is overdue
    once that batch is applied (the sweep after its lanes), not only after some later event
    moves the clock again."""
    service = ServiceProcess(
        "care_gaps",
        isolated.service_env(HTTP_PORT=str(free_port()), OTEL_INSTRUMENT_ASYNCPG="false", CLOCK="event"),
        log_dir=tmp_path,
    )
    await service.wait_healthy(timeout=60)
    producer = AIOKafkaProducer(bootstrap_servers=isolated.kafka_bootstrap_servers)
    await producer.start()
    conn = await asyncpg.connect(isolated.database_url, server_settings={"search_path": "care_gaps"})
    try:
        async def send(topic: str, payload: bytes) -> None:
            await producer.send_and_wait(isolated.topic(topic), payload, key=MEMBER.encode())

        await send("virtual-visits", event(
            "virtual_visit.completed", "vv-later", visit_id="VV-LATER", procedure_codes=["99499"],
            started_at="2026-03-31T09:00:00-05:00", ended_at="2026-03-31T09:10:00-05:00",
            medication_reconciliation=False, interactive_contact=False,
        ))
        assert await wait_for(conn, "SELECT count(*) FROM event_clocks WHERE clock_time >= '2026-03-31T14:00Z'",
                              1) == 1
        await send("encounters", event(
            "encounter.discharged", "a03-late", encounter_id="SEG-LATE",
            admitted_at="2026-03-20T08:00:00-05:00", discharged_at="2026-03-25T11:00:00-05:00", disposition="01",
        ))
        events = await read_gap_events(isolated, 6)
        overdue = [e["data"] for e in events if e["type"] == "care_gap.overdue"]
        assert [(o["encounter_id"], o["measure"], o["due_date"]) for o in overdue] == [
            ("SEG-LATE", "tcm_interactive_contact", "2026-03-27")]
        assert sum(e["type"] == "care_gap.opened" for e in events) == 5
        assert await conn.fetchval(
            "SELECT status FROM gaps WHERE encounter_id = 'SEG-LATE' AND measure = 'tcm_interactive_contact'"
        ) == "overdue"
    finally:
        await conn.close()
        await producer.stop()
        assert service.terminate(timeout=20) == 0, service.log_tail()
