"""The notifications service as a process, through the real broker and Postgres, with a real webhook receiver."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from cth_shared.auth import issue_token
from cth_shared.contracts import EXAMPLES, npi_with_check_digit
from notification_support import (
    CARE_MANAGER,
    PCP_NPI,
    PCP_TIN,
    V1C_NPI,
    V1C_TIN,
    WebhookReceiver,
    event_bytes,
    eventually,
    publish,
    schema_connection,
    start_notifications,
)
from notifications.domain.signing import verify

pytestmark = pytest.mark.integration

LATER_PCP = npi_with_check_digit("192837465")


@pytest.fixture
async def service(isolated: Any, tmp_path: Path) -> Any:
    process = start_notifications(isolated, tmp_path)
    await process.wait_healthy(timeout=60)
    yield process
    assert process.terminate(timeout=20) == 0, process.log_tail()


async def alerts(conn: Any) -> list[Any]:
    return await conn.fetch("SELECT * FROM notifications ORDER BY organization_id, recipient_id, sequence")


async def test_admission_alerts_the_care_team_in_force_with_signed_retried_webhooks_dead_letters_and_retraction(
    isolated: Any, service: Any
) -> None:
    conn = await schema_connection(isolated)
    pcp_org_token = await issue_token(conn, PCP_TIN, label="pcp practice")
    v1c_org_token = await issue_token(conn, V1C_TIN, label="v1c group")
    outsider_token = await issue_token(conn, "111222333", label="another practice")
    base = service.base_url
    async with WebhookReceiver({"/pcp": [500, 200], "/v1c": [410]}) as receiver, httpx.AsyncClient(
        base_url=base, timeout=10
    ) as api:
        created = await api.post("/subscriptions", headers={"Authorization": f"Bearer {pcp_org_token}"}, json={
            "audience": "care_team", "channel": "webhook", "endpoint_url": receiver.url("/pcp")})
        assert created.status_code == 201, created.text
        pcp_secret = created.json()["secret"]
        assert (await api.post("/subscriptions", headers={"Authorization": f"Bearer {v1c_org_token}"}, json={
            "audience": "care_team", "channel": "webhook", "endpoint_url": receiver.url("/v1c")})).status_code == 201

        # The care team changes on 2026-03-05 (arriving first); the admission on 2026-03-02
        # must alert the team in force on 2026-03-02, not the one known at processing time.
        later_team = dict(EXAMPLES["attribution.changed"], effective_date="2026-03-05", pcp_npi=LATER_PCP,
                          care_team=[{"role": "pcp", "id": LATER_PCP, "tin": PCP_TIN},
                                     {"role": "care_manager", "id": CARE_MANAGER}])
        await publish(isolated, "attribution", event_bytes("attribution.changed", **later_team),
                      event_bytes("attribution.changed"))
        await eventually(lambda: _care_team_snapshots(conn, 2), what="care-team read model")
        admit = event_bytes("encounter.admitted", event_id="adt-1")
        await publish(isolated, "encounters", admit)

        rows = await eventually(lambda: _at_least(conn, 3), what="three admit alerts")
        assert sorted((r["recipient_role"], r["recipient_id"], r["kind"], r["priority"]) for r in rows) == [
            ("care_manager", CARE_MANAGER, "admit", "high"),
            ("pcp", PCP_NPI, "admit", "high"),
            ("v1c_provider", V1C_NPI, "admit", "high"),
        ]
        assert {r["sequence"] for r in rows} == {1}
        care_manager_content = json.loads(next(r for r in rows if r["recipient_role"] == "care_manager")["content"])
        assert "diagnoses" not in care_manager_content and care_manager_content["facility_name"]

        # 500 then 200: one delivery, two attempts, receipt recorded, same idempotency key, valid signatures.
        pcp_alert = next(r for r in rows if r["recipient_role"] == "pcp")
        pcp_headers = {"Authorization": f"Bearer {pcp_org_token}"}

        async def pcp_evidence() -> Any:
            url = f"/notifications/{pcp_alert['notification_id']}/evidence"
            body = (await api.get(url, headers=pcp_headers)).json()
            return body if body["deliveries"] and body["deliveries"][0]["status"] == "delivered" else None

        evidence = await eventually(pcp_evidence, what="PCP webhook delivered")
        [delivery] = evidence["deliveries"]
        assert delivery["attempts"] == 2 and delivery["receipt_at"] is not None
        assert [a["status_code"] for a in delivery["attempt_log"]] == [500, 200]
        assert [a["outcome"] for a in delivery["attempt_log"]] == ["retry", "delivered"]
        requests = receiver.received["/pcp"]
        assert len(requests) == 2
        for headers, body in requests:
            assert headers["idempotency-key"] == pcp_alert["notification_id"]
            assert verify(pcp_secret, headers["x-cth-signature"], body, now=int(time.time()))
            assert headers["x-cth-signature"].startswith(f"t={headers['x-cth-timestamp']},v1=")
        assert json.loads(requests[0][1])["sequence"] == 1

        # 410 Gone: not retried, dead-lettered, listed, and replayable.
        v1c_alert = next(r for r in rows if r["recipient_role"] == "v1c_provider")
        v1c_headers = {"Authorization": f"Bearer {v1c_org_token}"}

        async def dead_letters() -> Any:
            return (await api.get("/dead-letters", headers=v1c_headers)).json()

        [dead] = await eventually(dead_letters, what="V1C delivery dead-lettered")
        assert dead["notification_id"] == v1c_alert["notification_id"]
        assert dead["attempts"] == 1 and dead["last_error"] == "HTTP 410"
        assert len(receiver.received["/v1c"]) == 1
        replayed = await api.post(f"/dead-letters/{dead['delivery_id']}/replay", headers=v1c_headers)
        assert replayed.status_code == 200 and replayed.json()["status"] == "pending"
        await eventually(lambda: _received(receiver, "/v1c", 2), what="replayed delivery attempted")

        # A resend of the same ADT (new event id) and an A08 update: no second alert.
        await publish(isolated, "encounters", event_bytes("encounter.admitted", event_id="adt-1-resend"),
                      event_bytes("encounter.admitted", event_id="adt-1-a08", trigger="A08"))
        await eventually(lambda: _consumed(conn, "adt-1-resend", "adt-1-a08"), what="resend and A08 consumed")
        assert len(await alerts(conn)) == 3

        # A11: a retraction to everyone alerted, with the next sequence number.
        cancel = event_bytes("encounter.cancelled", event_id="adt-1-a11", trigger="A11", cancels="admit",
                             cancelled_at="2026-03-02T09:00:00-05:00")
        await publish(isolated, "encounters", cancel)
        rows = await eventually(lambda: _at_least(conn, 6), what="three retractions")
        retractions = [r for r in rows if r["retraction"]]
        assert sorted(r["recipient_id"] for r in retractions) == sorted([PCP_NPI, V1C_NPI, CARE_MANAGER])
        assert {r["sequence"] for r in retractions} == {2}
        assert {r["retracts_id"] for r in retractions} == {r["notification_id"] for r in rows if not r["retraction"]}
        await eventually(lambda: _received(receiver, "/pcp", 3), what="retraction delivered to the PCP")
        assert json.loads(receiver.received["/pcp"][-1][1])["retraction"] is True

        # Access: 401 without a token; another organization's alert is 404; acknowledge is recorded.
        assert (await api.get("/inbox")).status_code == 401
        outsider = {"Authorization": f"Bearer {outsider_token}"}
        assert (await api.get(f"/inbox/{pcp_alert['notification_id']}", headers=outsider)).status_code == 404
        inbox = (await api.get("/inbox", headers=pcp_headers, params={"status": "new"})).json()
        assert {item["recipient"]["id"] for item in inbox["items"]} == {PCP_NPI}
        acked = await api.post(f"/inbox/{pcp_alert['notification_id']}/ack", headers=pcp_headers)
        assert acked.status_code == 200 and acked.json()["status"] == "acknowledged"
        url = f"/notifications/{pcp_alert['notification_id']}/evidence"
        evidence = (await api.get(url, headers=pcp_headers)).json()
        assert evidence["acknowledged_at"] is not None
        bundle = (await api.get(f"/notifications/{pcp_alert['notification_id']}/fhir", headers=pcp_headers)).json()
        assert bundle["entry"][0]["resource"]["eventCoding"]["code"] == "notification-admit"
    await conn.close()


async def test_an_admission_within_30_days_of_a_discharge_is_a_readmission_and_subscribed_organizations_hear_of_it(
    isolated: Any, service: Any
) -> None:
    conn = await schema_connection(isolated)
    token = await issue_token(conn, PCP_TIN)
    async with httpx.AsyncClient(base_url=service.base_url, timeout=10) as api:
        response = await api.post("/subscriptions", headers={"Authorization": f"Bearer {token}"}, json={
            "audience": "organization", "channel": "inbox", "kinds": ["admit"], "patient_classes": ["inpatient"]})
        assert response.status_code == 201, response.text
    await publish(isolated, "attribution", event_bytes("attribution.changed"))
    await eventually(lambda: _care_team_snapshots(conn, 1), what="care-team read model")
    await publish(isolated, "encounters",
                  event_bytes("encounter.discharged"),
                  event_bytes("encounter.admitted", encounter_id="SEG-V0002", admitted_at="2026-03-20T10:00:00-05:00"))
    rows = await eventually(lambda: _at_least(conn, 7), what="3 discharge alerts + 4 readmission alerts")
    readmissions = [r for r in rows if r["kind"] == "readmission"]
    assert sorted(r["recipient_role"] for r in readmissions) == ["care_manager", "organization", "pcp", "v1c_provider"]
    organization_content = json.loads(next(r for r in readmissions if r["recipient_role"] == "organization")["content"])
    assert "diagnoses" not in organization_content and "previous_encounter_id" not in organization_content
    pcp_content = json.loads(next(r for r in readmissions if r["recipient_role"] == "pcp")["content"])
    assert pcp_content["previous_encounter_id"] == "SEG-V0001"
    assert {r["priority"] for r in readmissions} == {"urgent"}
    await conn.close()


async def test_an_encounter_handled_before_its_care_team_is_known_alerts_that_team_once_it_arrives(
    isolated: Any, service: Any
) -> None:
    # Topics are not ordered with each other: the attribution of a new member can arrive after
    # the member's admission. The team in force at the admission is alerted when it becomes known,
    # once; a cancelled encounter alerts nobody late.
    conn = await schema_connection(isolated)
    await publish(isolated, "encounters", event_bytes("encounter.admitted", event_id="late-1"),
                  event_bytes("encounter.admitted", event_id="late-2", encounter_id="SEG-V0009",
                              admitted_at="2026-03-04T08:00:00-05:00"),
                  event_bytes("encounter.cancelled", event_id="late-3", encounter_id="SEG-V0009", trigger="A11",
                              cancels="admit", cancelled_at="2026-03-04T09:00:00-05:00"))
    await eventually(lambda: _consumed(conn, "late-1", "late-2", "late-3"), what="encounters consumed")
    assert await alerts(conn) == []
    await publish(isolated, "attribution", event_bytes("attribution.changed", event_id="team-1"))
    rows = await eventually(lambda: _at_least(conn, 3), what="the late team's admit alerts")
    assert sorted((r["recipient_role"], r["encounter_id"], r["kind"], r["source_event_id"]) for r in rows) == [
        ("care_manager", "SEG-V0001", "admit", "late-1"),
        ("pcp", "SEG-V0001", "admit", "late-1"),
        ("v1c_provider", "SEG-V0001", "admit", "late-1"),
    ]
    # The same team again (a resend) or a change effective later re-alerts nobody.
    await publish(isolated, "attribution", event_bytes("attribution.changed", event_id="team-1-resend"),
                  event_bytes("attribution.changed", event_id="team-2", effective_date="2026-06-01"))
    await eventually(lambda: _consumed(conn, "team-1-resend", "team-2"), what="attribution consumed")
    assert len(await alerts(conn)) == 3
    await conn.close()


async def _at_least(conn: Any, count: int) -> list[Any] | None:
    rows = await alerts(conn)
    return rows if len(rows) >= count else None


async def _care_team_snapshots(conn: Any, count: int) -> bool:
    # Topics are not ordered with each other: the test lets attribution land before the ADT.
    return await conn.fetchval("SELECT count(*) FROM care_team_history") >= count


async def _consumed(conn: Any, *event_ids: str) -> bool:
    found = await conn.fetchval("SELECT count(*) FROM inbox WHERE event_id = ANY($1::text[])", list(event_ids))
    return found == len(event_ids)


async def _received(receiver: WebhookReceiver, path: str, count: int) -> bool:
    return len(receiver.received.get(path, [])) >= count


