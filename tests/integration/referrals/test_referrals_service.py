"""The referrals service as a process against the real broker and PostgreSQL.

A discharge to home health (NUBC 06) is routed to the best preferred agency near the member;
an out-of-network home health claim afterwards is leakage; resends change nothing.
"""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from cth_shared.auth import issue_token
from cth_shared.contracts import EXAMPLES, EventData, new_event, npi_with_check_digit, registered_types
from cth_shared.embedded import free_port
from cth_shared.testing.infra import ServiceProcess

pytestmark = pytest.mark.integration

MEMBER = "M000001"
FACILITY_TIN = "123456789"  # the discharging hospital: the referral's organization
HOME_LAT, HOME_LON = 39.7817, -89.6501  # EXAMPLES member address
BEST_PREFERRED = npi_with_check_digit("198273645")
OTHER_PREFERRED = npi_with_check_digit("198273646")
STANDARD_TIER = npi_with_check_digit("198273647")
OUT_OF_NETWORK = npi_with_check_digit("198273648")


def event(event_type: str, data: dict[str, Any], subject: str, event_id: str | None = None) -> bytes:
    model: type[EventData] = registered_types()[event_type].model
    return new_event(model.model_validate(data), subject=subject, source="urn:test", tenant="payer-demo",
                     event_id=event_id).to_json_bytes()


def agency(npi: str, tin: str, networks: list[dict[str, str]], lat_offset: float, quality: float) -> dict[str, Any]:
    return dict(EXAMPLES["provider.upserted"], npi=npi, tin=tin, networks=networks, latitude=HOME_LAT + lat_offset,
                longitude=HOME_LON, quality_score=quality, capacity=5)


async def read_topic(env: Any, topic: str, count: int, timeout: float) -> list[dict[str, Any]]:
    consumer = AIOKafkaConsumer(env.topic(topic), bootstrap_servers=env.kafka_bootstrap_servers,
                                group_id=f"reader-{time.monotonic_ns()}", auto_offset_reset="earliest",
                                **env.consumer_overrides())
    await consumer.start()
    found: list[dict[str, Any]] = []
    try:
        deadline = time.monotonic() + timeout
        while len(found) < count and time.monotonic() < deadline:
            for batch in (await consumer.getmany(timeout_ms=300)).values():
                found.extend(json.loads(r.value) for r in batch)
    finally:
        await consumer.stop()
    return found


async def wait_for(conn: asyncpg.Connection, sql: str, expected: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    value = None
    while time.monotonic() < deadline:
        value = await conn.fetchval(sql)
        if value is not None and value >= expected:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"{sql!r} stayed at {value}, expected {expected}")


async def publish_directory_and_member(isolated: Any, producer: AIOKafkaProducer, conn: asyncpg.Connection,
                                      providers: list[dict[str, Any]]) -> None:
    """The agencies and the example member, applied by the service before the test goes on."""
    for provider in providers:
        await producer.send(isolated.topic("provider-directory"),
                            event("provider.upserted", provider, provider["npi"]), key=provider["npi"].encode())
    await producer.send(isolated.topic("enrollment"), event("member.enrolled", EXAMPLES["member.enrolled"], MEMBER),
                        key=MEMBER.encode())
    await producer.flush()
    await wait_for(conn, "SELECT count(*) FROM referrals.providers", len(providers))
    await wait_for(conn, "SELECT count(*) FROM referrals.members", 1)


@pytest.fixture
async def referrals_service(isolated: Any, tmp_path: Path) -> Any:
    service = ServiceProcess(
        "referrals", isolated.service_env(HTTP_PORT=str(free_port()), OTEL_INSTRUMENT_ASYNCPG="false",
                                          DIRECTORY_REFRESH_INTERVAL_S="0.5"),
        log_dir=tmp_path,
    )
    await service.wait_healthy(timeout=60)
    yield service
    assert service.terminate(timeout=20) == 0, service.log_tail()


async def test_an_admission_at_a_listed_agency_is_care_evidence_and_one_at_an_unlisted_hospital_is_none(
    isolated: Any, referrals_service: Any
) -> None:
    # The facility of an encounter is looked up in the directory the process holds (kept in step by the
    # provider.upserted events it handles and by polling), not in the table.
    discharged_at = datetime.now(UTC).replace(microsecond=0) - timedelta(days=2)
    providers = [agency(BEST_PREFERRED, "222333444", [{"network_id": "NET-A", "tier": "preferred"}], 0.02, 4.5),
                 agency(OUT_OF_NETWORK, "555444333", [{"network_id": "NET-B", "tier": "preferred"}], 0.01, 5.0)]
    discharge = dict(EXAMPLES["encounter.discharged"], admitted_at=(discharged_at - timedelta(days=4)).isoformat(),
                     discharged_at=discharged_at.isoformat(), attending_npi="1234567893")
    admitted_now = datetime.now(UTC).replace(microsecond=0).isoformat()
    at_hospital = dict(EXAMPLES["encounter.admitted"], encounter_id="SEG-V0100", admitted_at=admitted_now)
    at_agency = dict(EXAMPLES["encounter.admitted"], encounter_id="SEG-V0101", admitted_at=admitted_now,
                     facility={"npi": OUT_OF_NETWORK, "name": "Agency out of network", "tin": "555444333"})
    producer = AIOKafkaProducer(bootstrap_servers=isolated.kafka_bootstrap_servers)
    conn = await asyncpg.connect(isolated.database_url)
    await producer.start()
    try:
        await publish_directory_and_member(isolated, producer, conn, providers)
        await producer.send(isolated.topic("encounters"), event("encounter.discharged", discharge, MEMBER),
                            key=MEMBER.encode())
        await producer.flush()
        assert [e["type"] for e in await read_topic(isolated, "referrals", 1, timeout=20)] == ["referral.routed"]

        await producer.send(isolated.topic("encounters"), event("encounter.admitted", at_hospital, MEMBER,
                                                                event_id="adm-hospital"), key=MEMBER.encode())
        await producer.flush()
        await wait_for(conn, "SELECT count(*) FROM referrals.inbox WHERE event_id = 'adm-hospital'", 1)
        assert await conn.fetchval("SELECT status FROM referrals.referrals") == "open"  # a hospital: no evidence

        await producer.send(isolated.topic("encounters"), event("encounter.admitted", at_agency, MEMBER),
                            key=MEMBER.encode())
        await producer.flush()
        produced = await read_topic(isolated, "referrals", 2, timeout=20)
        leakage = [e["data"] for e in produced if e["type"] == "referral.leakage_detected"]
        assert [(x["actual_npi"], x["leakage_kind"], x["evidence_kind"]) for x in leakage] == [
            (OUT_OF_NETWORK, "out_of_network", "encounter")]
    finally:
        await producer.stop()
        await conn.close()


async def test_discharge_to_home_health_routes_once_to_the_best_preferred_agency_and_an_out_of_network_claim_is_leakage(
    isolated: Any, referrals_service: Any
) -> None:
    discharged_at = datetime.now(UTC).replace(microsecond=0) - timedelta(days=2)
    providers = [
        agency(BEST_PREFERRED, "222333444", [{"network_id": "NET-A", "tier": "preferred"}], 0.02, 4.5),
        agency(OTHER_PREFERRED, "222333445", [{"network_id": "NET-A", "tier": "preferred"}], 0.05, 3.5),
        agency(STANDARD_TIER, "222333446", [{"network_id": "NET-A", "tier": "standard"}], 0.01, 5.0),
        agency(OUT_OF_NETWORK, "555444333", [{"network_id": "NET-B", "tier": "preferred"}], 0.01, 5.0),
    ]
    discharge = dict(EXAMPLES["encounter.discharged"], admitted_at=(discharged_at - timedelta(days=4)).isoformat(),
                     discharged_at=discharged_at.isoformat(), attending_npi="1234567893")
    producer = AIOKafkaProducer(bootstrap_servers=isolated.kafka_bootstrap_servers)
    conn = await asyncpg.connect(isolated.database_url)
    await producer.start()
    try:
        await publish_directory_and_member(isolated, producer, conn, providers)

        first = event("encounter.discharged", discharge, MEMBER, event_id="adt-a03-1")
        resend = event("encounter.discharged", discharge, MEMBER, event_id="adt-a03-resend")
        a08_update = event("encounter.discharged", dict(discharge, trigger="A08"), MEMBER, event_id="adt-a08-1")
        for payload in (first, first, resend, a08_update):  # a redelivery, an HL7 resend, an A08 update
            await producer.send(isolated.topic("encounters"), payload, key=MEMBER.encode())
        await producer.flush()

        routed = await read_topic(isolated, "referrals", 1, timeout=20)
        assert [e["type"] for e in routed] == ["referral.routed"]
        decision = routed[0]["data"]
        assert decision["origin"] == "discharge" and decision["service_category"] == "home_health"
        assert decision["chosen"]["npi"] == BEST_PREFERRED
        assert decision["chosen"]["tier"] == "preferred"
        assert set(decision["chosen"]["components"]) == {"tier", "quality", "cost", "distance", "capacity"}
        assert [a["npi"] for a in decision["alternatives"]] == [OTHER_PREFERRED, STANDARD_TIER]
        assert OUT_OF_NETWORK not in {a["npi"] for a in decision["alternatives"]}

        claim_line = dict(EXAMPLES["claim.adjudicated"]["lines"][0], procedure_code="G0151", place_of_service="12",
                          rendering_npi=OUT_OF_NETWORK, rendering_tin="555444333", rendering_taxonomy="251E00000X",
                          service_from=datetime.now(UTC).date().isoformat(),
                          service_to=datetime.now(UTC).date().isoformat())
        claim = dict(EXAMPLES["claim.adjudicated"], claim_id="CLM-HH-1", billing_tin="555444333", lines=[claim_line])
        for event_id in ("claim-1", "claim-1-resent"):  # the same claim fact under two event ids
            await producer.send(isolated.topic("claims"), event("claim.adjudicated", claim, MEMBER, event_id=event_id),
                                key=MEMBER.encode())
        await producer.flush()

        produced = await read_topic(isolated, "referrals", 2, timeout=20)
        leakage = [e["data"] for e in produced if e["type"] == "referral.leakage_detected"]
        assert len(leakage) == 1
        assert leakage[0]["referral_id"] == decision["referral_id"]
        assert leakage[0]["routed_npi"] == BEST_PREFERRED and leakage[0]["actual_npi"] == OUT_OF_NETWORK
        assert leakage[0]["leakage_kind"] == "out_of_network" and leakage[0]["evidence_kind"] == "claim"

        await wait_for(conn, "SELECT count(*) FROM referrals.inbox", 4 + 1 + 3 + 2)  # every event consumed
        assert await conn.fetchval("SELECT count(*) FROM referrals.referrals") == 1
        row = await conn.fetchrow("SELECT status, organization_id, leakage_kind FROM referrals.referrals")
        assert dict(row) == {"status": "leaked", "organization_id": FACILITY_TIN, "leakage_kind": "out_of_network"}
        assert await conn.fetchval("SELECT count(*) FROM referrals.dead_letters") == 0
        assert len(await read_topic(isolated, "referrals", 3, timeout=3)) == 2, "duplicates produced nothing more"

        await conn.execute("SET search_path TO referrals")
        token = await issue_token(conn, FACILITY_TIN, label="discharging hospital")
        other = await issue_token(conn, "999999999", label="another organization")
    finally:
        await producer.stop()
        await conn.close()

    async with httpx.AsyncClient(base_url=referrals_service.base_url, timeout=5) as http:
        auth = {"Authorization": f"Bearer {token}"}
        detail = (await http.get(f"/referrals/{decision['referral_id']}", headers=auth)).json()
        assert detail["chosen"]["npi"] == BEST_PREFERRED and len(detail["alternatives"]) == 2
        assert detail["explanation"]["weights"]["tier"] == 0.40
        assert detail["leakage"]["kind"] == "out_of_network"
        report = (await http.get(f"/organizations/{FACILITY_TIN}/leakage", headers=auth, params={
            "start": (discharged_at.date() - timedelta(days=1)).isoformat(),
            "end": datetime.now(UTC).date().isoformat()})).json()
        assert (report["routed"], report["leaked"], report["leakage_rate"]) == (1, 1, 1.0)
        assert report["by_ordering_provider"][0]["ordering_npi"] == "1234567893"
        listing = (await http.get(f"/organizations/{FACILITY_TIN}/referrals", headers=auth,
                                  params={"status": "leaked"})).json()
        assert listing["total"] == 1
        assert (await http.get(f"/referrals/{decision['referral_id']}", headers={
            "Authorization": f"Bearer {other}"})).status_code == 404
        assert (await http.get(f"/organizations/{FACILITY_TIN}/referrals", headers={
            "Authorization": f"Bearer {other}"})).status_code == 403
        assert (await http.get(f"/organizations/{FACILITY_TIN}/referrals")).status_code == 401
