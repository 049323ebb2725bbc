"""The attribution service as a process against the real broker and PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from cth_shared.auth import issue_token
from cth_shared.contracts import EXAMPLES, new_event, npi_with_check_digit, registered_types
from cth_shared.embedded import free_port
from cth_shared.testing.infra import ServiceProcess

pytestmark = pytest.mark.integration

PCP_A, TIN_A = npi_with_check_digit("110000001"), "111111111"
V1C_CLINICIAN, TIN_V = npi_with_check_digit("330000001"), "555666777"
MEMBER = "M-ATTR-1"


def event(kind: str, data: dict[str, Any], when: str, subject: str = MEMBER, event_id: str | None = None) -> bytes:
    model = registered_types()[kind].model.model_validate(data)
    return new_event(model, subject=subject, source="urn:test", tenant="p1", time=datetime.fromisoformat(when),
                     event_id=event_id).to_json_bytes()


def provider(npi: str, tin: str, role: str) -> bytes:
    data = dict(EXAMPLES["provider.upserted"], npi=npi, tin=tin, role=role, services=[], taxonomy="207Q00000X")
    return event("provider.upserted", data, "2026-01-01T00:00:00+00:00", subject=npi)


def claim(claim_id: str, status: str = "paid", replaces: str | None = None, amount: str = "92.50") -> dict[str, Any]:
    line = dict(EXAMPLES["claim.adjudicated"]["lines"][0], rendering_npi=PCP_A, rendering_tin=TIN_A,
                allowed_amount=amount, service_from="2026-02-10", service_to="2026-02-10")
    return dict(EXAMPLES["claim.adjudicated"], claim_id=claim_id, member_id=MEMBER, status=status,
                replaces_claim_id=replaces, billing_tin=TIN_A, lines=[line])


async def read_all(env: Any, topic: str, quiet_s: float = 2.0, timeout: float = 20) -> list[Any]:
    """Everything on ``topic`` until it has been quiet for ``quiet_s``."""
    consumer = AIOKafkaConsumer(env.topic(topic), bootstrap_servers=env.kafka_bootstrap_servers,
                                group_id=f"reader-{time.monotonic_ns()}", auto_offset_reset="earliest",
                                **env.consumer_overrides())
    await consumer.start()
    records: list[Any] = []
    try:
        deadline = time.monotonic() + timeout
        last_seen = time.monotonic()
        while time.monotonic() < deadline and time.monotonic() - last_seen < quiet_s:
            for batch in (await consumer.getmany(timeout_ms=300)).values():
                records.extend(batch)
                last_seen = time.monotonic()
    finally:
        await consumer.stop()
    return records


async def wait_for_inbox(conn: asyncpg.Connection, count: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while await conn.fetchval("SELECT count(*) FROM attribution.inbox") < count:
        assert time.monotonic() < deadline, "the service did not consume what was sent"
        await asyncio.sleep(0.1)
    while await conn.fetchval("SELECT count(*) FROM attribution.outbox") > 0:  # relay done
        assert time.monotonic() < deadline
        await asyncio.sleep(0.1)


@pytest.fixture
async def service(isolated: Any, tmp_path: Path) -> Any:
    port = free_port()
    process = ServiceProcess("attribution", isolated.service_env(HTTP_PORT=str(port), OTEL_INSTRUMENT_ASYNCPG="false"),
                             log_dir=tmp_path)
    await process.wait_healthy(timeout=60)
    yield process
    assert process.terminate(timeout=20) == 0, process.log_tail()


async def test_claims_and_visits_change_attribution_once_each_replays_change_nothing_and_history_answers_as_of(
    isolated: Any, service: Any
) -> None:
    conn = await asyncpg.connect(isolated.database_url)
    producer = AIOKafkaProducer(bootstrap_servers=isolated.kafka_bootstrap_servers)
    await producer.start()

    async def send(topic: str, payload: bytes, key: str = MEMBER) -> None:
        await producer.send_and_wait(isolated.topic(topic), payload, key=key.encode())

    try:
        await send("provider-directory", provider(PCP_A, TIN_A, "pcp"), key=PCP_A)
        await send("provider-directory", provider(V1C_CLINICIAN, TIN_V, "v1c"), key=V1C_CLINICIAN)
        await wait_for_inbox(conn, 2)
        enrolled = dict(EXAMPLES["member.enrolled"], member_id=MEMBER, virtual_first=False, v1c_group_npi=None,
                        care_manager_id=None, effective_date="2026-01-01")
        visit = dict(EXAMPLES["virtual_visit.completed"], member_id=MEMBER, provider_npi=V1C_CLINICIAN,
                     organization_tin=TIN_V, started_at="2026-02-01T09:00:00-05:00",
                     ended_at="2026-02-01T09:20:00-05:00", allowed_amount="40.00")
        inputs = [
            ("enrollment", event("member.enrolled", enrolled, "2026-01-02T08:00:00+00:00", event_id="e-enr")),
            ("virtual-visits", event("virtual_visit.completed", visit, "2026-02-01T10:00:00-05:00", event_id="e-vv")),
            ("claims", event("claim.adjudicated", claim("C1"), "2026-02-20T12:00:00+00:00", event_id="e-c1")),
        ]
        for applied, (topic, payload) in enumerate(inputs, start=3):
            await send(topic, payload)
            await wait_for_inbox(conn, applied)  # topics are not ordered with each other: one fact at a time
        dead = await conn.fetch("SELECT reason, detail FROM attribution.dead_letters")
        assert not dead, (dead, service.log_tail())
        changes = [json.loads(r.value) for r in await read_all(isolated, "attribution")]
        assert [(c["data"]["method"], c["data"].get("pcp_npi"), c["data"]["effective_date"]) for c in changes] == [
            ("plurality_primary_care", V1C_CLINICIAN, "2026-02-01"),
            ("plurality_primary_care", PCP_A, "2026-02-20"),
        ], "the enrollment alone changes nothing; the visit and the claim change it once each"
        assert changes[1]["time"].startswith("2026-02-20T12:00:00"), "event time is the fact's time, not the clock"
        assert changes[1]["data"]["previous_pcp_npi"] == V1C_CLINICIAN
        assert {(m["role"], m["id"]) for m in changes[1]["data"]["care_team"]} == {
            ("pcp", PCP_A), ("v1c_provider", V1C_CLINICIAN)}
        assert changes[1]["data"]["explanation"]["candidates"][0]["allowed_total"] == "92.50"

        # Replays: the same events again, and the same facts under new event ids.
        for topic, payload in inputs:
            await send(topic, payload)
        await send("claims", event("claim.adjudicated", claim("C1"), "2026-02-21T12:00:00+00:00", event_id="e-c1b"))
        await send("virtual-visits", event("virtual_visit.completed", visit, "2026-02-22T10:00:00-05:00",
                                           event_id="e-vvb"))
        await wait_for_inbox(conn, 7)
        assert len(await read_all(isolated, "attribution")) == 2, "replayed duplicates change nothing"
        assert await conn.fetchval("SELECT count(*) FROM attribution.attribution_history") == 2

        # A reversal of the claim hands the member back to the V1C clinician.
        await send("claims", event("claim.adjudicated", claim("C1-R", "reversed", "C1", "-92.50"),
                                   "2026-03-05T12:00:00+00:00", event_id="e-c1r"))
        await wait_for_inbox(conn, 8)
        changes = [json.loads(r.value) for r in await read_all(isolated, "attribution")]
        assert [(c["data"].get("pcp_npi"), c["data"]["effective_date"]) for c in changes][-1] == (
            V1C_CLINICIAN, "2026-03-05")
        assert len(changes) == 3

        await conn.execute("SET search_path TO attribution")
        token_a = await issue_token(conn, TIN_A, label="test")
        token_v = await issue_token(conn, TIN_V, label="test")
        async with httpx.AsyncClient(base_url=service.base_url, timeout=10) as http:
            def auth(token: str) -> dict[str, str]:
                return {"Authorization": f"Bearer {token}"}

            assert (await http.get(f"/members/{MEMBER}/attribution")).status_code == 401
            assert (await http.get(f"/members/{MEMBER}/attribution", headers=auth(token_a))).status_code == 404
            now = (await http.get(f"/members/{MEMBER}/attribution", headers=auth(token_v))).json()
            assert (now["pcp_npi"], now["effective_from"]) == (V1C_CLINICIAN, "2026-03-05")

            history = {}
            for day in ("2026-01-15", "2026-02-01", "2026-02-19", "2026-02-20", "2026-03-04", "2026-03-05"):
                response = await http.get(f"/members/{MEMBER}/attribution", params={"as_of": day},
                                          headers=auth(token_v))
                assert response.status_code == 200, response.text
                history[day] = response.json()["pcp_npi"]
            assert history == {"2026-01-15": None, "2026-02-01": V1C_CLINICIAN, "2026-02-19": V1C_CLINICIAN,
                               "2026-02-20": PCP_A, "2026-03-04": PCP_A, "2026-03-05": V1C_CLINICIAN}
            then = (await http.get(f"/members/{MEMBER}/attribution", params={"as_of": "2026-02-25"},
                                   headers=auth(token_a))).json()
            assert then["explanation"]["reason_code"] == "plurality_of_allowed_charges", "org A sees its own period"

            panel = (await http.get(f"/organizations/{TIN_V}/panel", headers=auth(token_v))).json()
            assert [m["member_id"] for m in panel["members"]] == [MEMBER] and panel["total"] == 1
            assert (await http.get(f"/organizations/{TIN_V}/panel", headers=auth(token_a))).status_code == 403

            first = (await http.get(f"/organizations/{TIN_A}/Group", params={"since": "2026-02-25"},
                                    headers=auth(token_a))).json()
            assert first["resourceType"] == "Group" and first["quantity"] == 0
            assert [m["extension"][0]["valueCode"] for m in first["member"]] == ["dropped"]
            group = (await http.get(f"/organizations/{TIN_V}/Group", headers=auth(token_v))).json()
            assert group["member"][0]["extension"][0]["valueCode"] == "new"
            again = (await http.get(f"/organizations/{TIN_V}/Group", params={"since": group["meta"]["versionId"]},
                                    headers=auth(token_v))).json()
            assert again["member"][0]["extension"][0]["valueCode"] == "nochange"
            assert int(again["meta"]["versionId"]) == int(group["meta"]["versionId"]) + 1
    finally:
        await producer.stop()
        await conn.close()
