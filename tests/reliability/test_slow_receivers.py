"""Slow and failing webhook receivers: the notifications service as a process, real HTTP receivers.

Four members; each has a PCP in a practice whose endpoint misbehaves (times out, answers 500,
answers 429, or is down: connection refused) and a V1C clinician in a practice whose endpoint is
healthy. Each member goes through two stays (admit, transfer, discharge, readmission), so every
endpoint is owed several alerts per member.

1. While the bad endpoints keep failing, the healthy endpoint receives all of its alerts (and each
   bad endpoint has been tried and retried, with no receipt): one bad receiver does not hold up
   the others. This is checked as causality (everything healthy delivered, nothing bad delivered,
   at the same moment), never as a duration.
2. The bad endpoints recover (the down one starts listening): every alert owed to them arrives,
   in order per member (sequence numbers increase, creation order kept), none is lost.

Backoffs and the circuit breaker are shortened through the service's settings (environment).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
from cth_shared.auth import issue_token
from cth_shared.contracts import npi_with_check_digit
from poison_support import (
    Receiver,
    astop_services,
    connect,
    event_bytes,
    eventually,
    log_text,
    producer,
    send,
    start_services,
)

pytestmark = [pytest.mark.integration, pytest.mark.reliability]

HEALTHY_TIN = "500000001"
BAD = {  # mode -> practice TIN
    "timeout": "510000001",
    "500": "520000001",
    "429": "530000001",
    "down": "540000001",
}
V1C_NPI = npi_with_check_digit("500000001")
SLOW_ENV = {
    "DELIVERY_TIMEOUT_S": "0.5", "DELIVERY_INITIAL_BACKOFF_S": "0.2", "DELIVERY_MAX_BACKOFF_S": "1",
    "DELIVERY_POLL_INTERVAL_MS": "50", "CIRCUIT_FAILURE_THRESHOLD": "3", "CIRCUIT_OPEN_S": "1",
}


def member_id(index: int) -> str:
    return f"M-SLOW-{index}"


def stays(member: str) -> list[bytes]:
    """Two inpatient stays of ``member`` (the second a readmission): several alerts per recipient."""
    out = []
    for n, (admit, transfer, discharge) in enumerate([
        ("2026-03-02T08:00:00-05:00", "2026-03-03T08:00:00-05:00", "2026-03-05T12:00:00-05:00"),
        ("2026-03-12T08:00:00-05:00", "2026-03-13T08:00:00-05:00", "2026-03-15T12:00:00-05:00"),
    ]):
        encounter = f"ENC-{member}-{n}"
        out.append(event_bytes("encounter.admitted", member_id=member, encounter_id=encounter, admitted_at=admit))
        out.append(event_bytes("encounter.transferred", member_id=member, encounter_id=encounter,
                               transferred_at=transfer))
        out.append(event_bytes("encounter.discharged", member_id=member, encounter_id=encounter,
                               admitted_at=admit, discharged_at=discharge))
    return out


async def test_failing_receivers_get_everything_in_order_on_recovery_without_holding_up_healthy_ones(
    isolated: Any, tmp_path: Path
) -> None:
    async with Receiver({"/healthy": "ok", "/timeout": "timeout", "/500": "500", "/429": "429"},
                        hang_s=2.0) as receiver:
        down = Receiver({"/down": "ok"})  # its port is reserved, nothing listens yet: connection refused
        processes = await start_services(isolated, tmp_path, names=["notifications"], **SLOW_ENV)
        try:
            await _run(isolated, processes["notifications"], receiver, down)
        finally:
            codes = await astop_services(processes)
            if down._server is not None:
                await down.__aexit__(None, None, None)
    assert codes == {"notifications": 0}, log_text(processes)[-4000:]


async def _run(isolated: Any, service: Any, receiver: Receiver, down: Receiver) -> None:
    conn = await connect(isolated, "notifications")
    endpoints = {HEALTHY_TIN: receiver.url("/healthy"), **{tin: receiver.url(f"/{mode}") for mode, tin in BAD.items()}}
    endpoints[BAD["down"]] = down.url("/down")
    async with httpx.AsyncClient(base_url=service.base_url, timeout=10) as api:
        for tin, url in endpoints.items():
            token = await issue_token(conn, tin)
            created = await api.post("/subscriptions", headers={"Authorization": f"Bearer {token}"},
                                     json={"audience": "care_team", "channel": "webhook", "endpoint_url": url})
            assert created.status_code == 201, created.text

    members = [member_id(i) for i in range(len(BAD))]
    async with producer(isolated) as client:
        for index, (member, tin) in enumerate(zip(members, BAD.values(), strict=True)):
            pcp = npi_with_check_digit(f"51{index}000001")
            team = [{"role": "pcp", "id": pcp, "tin": tin}, {"role": "v1c_provider", "id": V1C_NPI,
                                                               "tin": HEALTHY_TIN}]
            await send(client, isolated, "attribution", member,
                       event_bytes("attribution.changed", member_id=member, effective_date="2026-01-01",
                                   pcp_npi=pcp, pcp_tin=tin, care_team=team))
        await eventually(lambda: _count(conn, "SELECT count(*) FROM care_team_history", len(members)),
                         what="care teams known")
        for member in members:
            for value in stays(member):
                await send(client, isolated, "encounters", member, value)

    # All alerts exist: per member, the same number to its PCP practice and to the healthy practice.
    per_org = await eventually(lambda: _alerts_settled(conn, members), what="alerts created")
    owed_healthy = per_org[HEALTHY_TIN]
    assert len(owed_healthy) == sum(len(per_org[tin]) for tin in BAD.values()) >= 4 * len(members)

    # 1. The healthy endpoint gets everything while every bad one is still failing.
    await eventually(lambda: _delivered_ids(receiver, "/healthy", owed_healthy), what="healthy endpoint served")
    for mode, tin in BAD.items():
        await eventually(lambda tin=tin: _failed_attempts(conn, endpoints[tin], 2), what=f"{mode} endpoint retried")
    snapshot_healthy = {b["id"] for b in receiver.delivered("/healthy")}
    snapshot_bad = {mode: receiver.delivered(f"/{mode}") for mode in ("timeout", "500", "429")}
    down_receipts = await conn.fetchval(
        "SELECT count(*) FROM deliveries WHERE endpoint_url = $1 AND status = 'delivered'", endpoints[BAD["down"]])
    assert snapshot_healthy == owed_healthy
    assert snapshot_bad == {"timeout": [], "500": [], "429": []} and down_receipts == 0, \
        "a bad endpoint must not have been served before it recovered"
    attempted = {code for _p, code, _h, _b in receiver.requests}
    assert {500, 429} <= attempted and 200 not in {c for p, c, _h, _b in receiver.requests if p != "/healthy"}
    errors = await conn.fetch(
        "SELECT DISTINCT d.endpoint_url, a.error_class FROM delivery_attempts a JOIN deliveries d USING (delivery_id)"
        " WHERE a.outcome = 'retry'")
    error_by_endpoint = {}
    for row in errors:
        error_by_endpoint.setdefault(row["endpoint_url"], set()).add(row["error_class"])
    assert error_by_endpoint[endpoints[BAD["down"]]] & {"ConnectError", "ConnectTimeout"}, error_by_endpoint
    assert "ReadTimeout" in error_by_endpoint[endpoints[BAD["timeout"]]], error_by_endpoint
    assert "HTTP 500" in error_by_endpoint[endpoints[BAD["500"]]] and "HTTP 429" in error_by_endpoint[
        endpoints[BAD["429"]]]
    # Still pending, not dead: failures are retried, nothing was given up.
    assert await conn.fetchval("SELECT count(*) FROM deliveries WHERE status = 'dead'") == 0

    # 2. Recovery: everything owed arrives, in order per member, nothing lost.
    for mode in ("timeout", "500", "429"):
        receiver.modes[f"/{mode}"] = "ok"
    await down.__aenter__()
    for mode, tin in BAD.items():
        path_receiver = down if mode == "down" else receiver
        await eventually(lambda r=path_receiver, m=mode, t=tin: _delivered_ids(r, f"/{m}", per_org[t]),
                         timeout=60, what=f"{mode} endpoint caught up")
    pending = await conn.fetchval("SELECT count(*) FROM deliveries WHERE status <> 'delivered'")
    assert pending == 0

    for path, source in [("/healthy", receiver), *((f"/{m}", down if m == "down" else receiver) for m in BAD)]:
        bodies = source.delivered(path)
        first_seen: dict[str, dict[str, Any]] = {}
        for body in bodies:
            first_seen.setdefault(body["id"], body)
        by_member: dict[str, list[dict[str, Any]]] = {}
        for body in first_seen.values():
            by_member.setdefault(body["member_id"], []).append(body)
        for member, alerts in by_member.items():
            sequences = [a["sequence"] for a in alerts]
            assert sequences == sorted(sequences), (path, member, sequences)
            created = [a["created_at"] for a in alerts]
            assert created == sorted(created), (path, member, "creation order")
    # Evidence: each recovered delivery shows its failed attempts before the receipt.
    rows = await conn.fetch(
        "SELECT d.endpoint_url, array_agg(a.outcome ORDER BY a.attempt_id) AS outcomes FROM deliveries d"
        " JOIN delivery_attempts a USING (delivery_id) GROUP BY d.delivery_id, d.endpoint_url")
    for row in rows:
        assert row["outcomes"][-1] == "delivered" and "delivered" not in row["outcomes"][:-1], dict(row)
    assert any(len(r["outcomes"]) > 1 for r in rows if r["endpoint_url"] != endpoints[HEALTHY_TIN])
    await conn.close()


async def _count(conn: Any, sql: str, at_least: int) -> bool:
    return await conn.fetchval(sql) >= at_least


async def _alerts_settled(conn: Any, members: list[str]) -> dict[str, set[str]] | None:
    """Alerts per organization once every encounter of every member was consumed."""
    consumed = await conn.fetchval("SELECT count(*) FROM inbox WHERE topic LIKE '%encounters'")
    if consumed < 6 * len(members):
        return None
    rows = await conn.fetch("SELECT organization_id, notification_id FROM notifications WHERE NOT retraction")
    per_org: dict[str, set[str]] = {}
    for row in rows:
        per_org.setdefault(row["organization_id"], set()).add(row["notification_id"])
    return per_org if per_org.get(HEALTHY_TIN) and all(per_org.get(t) for t in BAD.values()) else None


async def _delivered_ids(receiver: Receiver, path: str, owed: set[str]) -> bool:
    return {body["id"] for body in receiver.delivered(path)} >= owed


async def _failed_attempts(conn: Any, endpoint: str, at_least: int) -> bool:
    count = await conn.fetchval(
        "SELECT count(*) FROM delivery_attempts a JOIN deliveries d USING (delivery_id)"
        " WHERE d.endpoint_url = $1 AND a.outcome = 'retry'", endpoint)
    return count >= at_least
