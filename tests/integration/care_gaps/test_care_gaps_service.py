"""The care-gaps service as a process against the real broker and PostgreSQL.

One care transition end to end: a discharge opens the expected gaps once (resends, a
redelivery and an identical A08 change nothing), a V1C visit on day 6 closes the 7-day
TCM face-to-face gap (and patient engagement), the API shows the worklist, the member's
gaps and a DEQM report, and a cancel (A13) retracts every gap of that discharge.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from cth_shared.auth import issue_token
from cth_shared.contracts import EXAMPLES, new_event, registered_types
from cth_shared.embedded import free_port
from cth_shared.testing.infra import ServiceProcess

pytestmark = pytest.mark.integration

MEMBER = "M-CG-1"
ORG = "987654321"
ENCOUNTER = "SEG-CG-1"


def event(kind: str, event_id: str, **overrides: Any) -> bytes:
    data = {**EXAMPLES[kind], "member_id": MEMBER, **overrides}
    model = registered_types()[kind].model.model_validate(data)
    return new_event(model, subject=MEMBER, source="urn:test", tenant="payer-test", event_id=event_id,
                     time=_time_of(model)).to_json_bytes()


def _time_of(model: Any) -> Any:
    for name in ("discharged_at", "admitted_at", "cancelled_at", "started_at"):
        if getattr(model, name, None) is not None:
            return getattr(model, name)
    from datetime import datetime, timedelta, timezone
    return datetime(2026, 3, 1, 9, 0, tzinfo=timezone(timedelta(hours=-5)))


async def read_gap_events(env: Any, at_least: int, timeout: float = 30) -> list[dict[str, Any]]:
    consumer = AIOKafkaConsumer(
        env.topic("care-gaps"), bootstrap_servers=env.kafka_bootstrap_servers,
        group_id=f"reader-{time.monotonic_ns()}", auto_offset_reset="earliest", **env.consumer_overrides(),
    )
    await consumer.start()
    found: list[dict[str, Any]] = []
    try:
        deadline = time.monotonic() + timeout
        while len(found) < at_least and time.monotonic() < deadline:
            for batch in (await consumer.getmany(timeout_ms=300)).values():
                found.extend(json.loads(r.value) for r in batch)
    finally:
        await consumer.stop()
    return found


async def wait_for(conn: asyncpg.Connection, sql: str, expected: Any, timeout: float = 30) -> Any:
    deadline = time.monotonic() + timeout
    value = None
    while time.monotonic() < deadline:
        value = await conn.fetchval(sql)
        if value == expected:
            return value
        await asyncio.sleep(0.1)
    return value


@pytest.fixture
async def care_gaps(isolated: Any, tmp_path: Path) -> Any:
    port = free_port()
    service = ServiceProcess(
        "care_gaps",
        isolated.service_env(HTTP_PORT=str(port), OTEL_INSTRUMENT_ASYNCPG="false", TENANT="payer-test",
                             CLOCK="wall", OVERDUE_SWEEP_INTERVAL_S="3600"),
        log_dir=tmp_path,
    )
    await service.wait_healthy(timeout=60)
    yield service
    assert service.terminate(timeout=20) == 0, service.log_tail()


async def test_a_discharge_opens_its_gaps_once_a_day_6_visit_closes_the_7_day_gap_and_a_cancel_retracts_them(
    isolated: Any, care_gaps: Any
) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=isolated.kafka_bootstrap_servers)
    await producer.start()
    conn = await asyncpg.connect(isolated.database_url, server_settings={"search_path": "care_gaps"})

    async def send(topic: str, payload: bytes) -> None:
        await producer.send_and_wait(isolated.topic(topic), payload, key=MEMBER.encode())

    try:
        # The member (risk 72.5: high-complexity TCM, 7-day face-to-face) and its PCP organization.
        await send("enrollment", event("member.enrolled", "enr-1"))
        await send("attribution", event("attribution.changed", "attr-1"))
        assert await wait_for(conn, f"SELECT count(*) FROM members WHERE member_id = '{MEMBER}'"
                                    " AND organization_id IS NOT NULL AND risk_score > 0", 1) == 1

        discharge = event("encounter.discharged", "adt-a03-1", encounter_id=ENCOUNTER)
        await send("encounters", discharge)
        await send("encounters", discharge)  # redelivery: same event id
        await send("encounters", event("encounter.discharged", "adt-a03-resend", encounter_id=ENCOUNTER))
        await send("encounters", event("encounter.discharged", "adt-a08-1", encounter_id=ENCOUNTER, trigger="A08"))

        opened = [e for e in await read_gap_events(isolated, 5) if e["type"] == "care_gap.opened"]
        assert sorted(e["data"]["measure"] for e in opened) == [
            "readmission_watch", "tcm_face_to_face", "tcm_interactive_contact",
            "trc_medication_reconciliation", "trc_patient_engagement",
        ]
        by_measure = {e["data"]["measure"]: e["data"] for e in opened}
        assert by_measure["tcm_face_to_face"]["due_date"] == "2026-03-13"
        assert by_measure["tcm_interactive_contact"]["due_date"] == "2026-03-10"
        assert by_measure["trc_patient_engagement"]["window_start"] == "2026-03-07"
        assert by_measure["trc_patient_engagement"]["owner"] == {"role": "pcp", "id": "1234567893"}

        # Day 6 after the 2026-03-06 discharge: a video visit with an office E&M code.
        await send("virtual-visits", event(
            "virtual_visit.completed", "vv-day-6", visit_id="VV-DAY6",
            started_at="2026-03-12T10:00:00-05:00", ended_at="2026-03-12T10:20:00-05:00",
            procedure_codes=["99214"], medication_reconciliation=False, interactive_contact=True,
        ))
        events = await read_gap_events(isolated, 7)
        closed = {e["data"]["measure"]: e["data"] for e in events if e["type"] == "care_gap.closed"}
        assert set(closed) == {"tcm_face_to_face", "trc_patient_engagement"}
        assert closed["tcm_face_to_face"]["closing_event_id"] == "vv-day-6"
        assert closed["tcm_face_to_face"]["closing_rule"] == "virtual_visit_face_to_face_code"

        token = await issue_token(conn, ORG, label="test")
        other = await issue_token(conn, "111111111", label="other")
        async with httpx.AsyncClient(base_url=care_gaps.base_url,
                                     headers={"authorization": f"Bearer {token}"}) as client:
            gaps = (await client.get(f"/members/{MEMBER}/gaps")).json()["gaps"]
            assert {g["measure"]: g["status"] for g in gaps}["tcm_face_to_face"] == "closed"
            worklist = (await client.get(f"/organizations/{ORG}/worklist", params={"page_size": 2})).json()
            assert worklist["total"] == 3 and len(worklist["items"]) == 2
            assert [i["due_date"] for i in worklist["items"]] == ["2026-03-10", "2026-04-05"]
            report = await client.get(f"/members/{MEMBER}/gaps-report",
                                      params={"start": "2026-03-01", "end": "2026-03-31"})
            assert report.status_code == 200
            bundle = report.json()
            assert bundle["resourceType"] == "Bundle" and bundle["type"] == "document"
            assert bundle["entry"][0]["resource"]["resourceType"] == "Composition"
            assert (await client.get(f"/members/{MEMBER}/gaps", headers={"authorization": f"Bearer {other}"})
                    ).status_code == 404
            assert (await client.get(f"/organizations/{ORG}/worklist",
                                     headers={"authorization": f"Bearer {other}"})).status_code == 403
            assert (await client.get(f"/members/{MEMBER}/gaps", headers={"authorization": ""})).status_code == 401

        await send("encounters", event("encounter.cancelled", "adt-a13-1", encounter_id=ENCOUNTER))
        events = await read_gap_events(isolated, 12)
        retracted = [e["data"] for e in events if e["type"] == "care_gap.not_applicable"]
        assert sorted(r["gap_id"] for r in retracted) == sorted(e["data"]["gap_id"] for e in opened)
        assert {r["reason"] for r in retracted} == {"encounter_cancelled"}

        # Duplicates after the fact change nothing: the same cancel and visit again, new ids.
        await send("encounters", event("encounter.cancelled", "adt-a13-resend", encounter_id=ENCOUNTER))
        await send("virtual-visits", event(
            "virtual_visit.completed", "vv-day-6-resend", visit_id="VV-DAY6",
            started_at="2026-03-12T10:00:00-05:00", ended_at="2026-03-12T10:20:00-05:00",
            procedure_codes=["99214"], medication_reconciliation=False, interactive_contact=True,
        ))
        assert await wait_for(conn, "SELECT count(*) FROM inbox", 9) == 9
        assert await wait_for(conn, "SELECT count(*) FROM outbox", 0) == 0
        assert await conn.fetchval("SELECT count(*) FROM gaps") == 5
        assert await conn.fetchval("SELECT count(*) FROM dead_letters") == 0
        assert len(await read_gap_events(isolated, 13, timeout=3)) == 12, "nothing more was produced"
    finally:
        await conn.close()
        await producer.stop()
