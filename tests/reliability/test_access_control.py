"""Access control of every HTTP API of the four services, against the running processes.

The routes are enumerated from each service's FastAPI app (built from its composition root),
so a new route is covered without editing this test; a route whose path parameter this test
cannot map to another organization's resource fails the test until it is added to ``OWNED_BY_B``.

- no token (and a wrong token) -> 401 on every route outside the small public list (health,
  OpenAPI docs, the inbox page shell, which holds no data);
- organization A's token on organization B's member, alert, referral, worklist, export,
  subscription or dead letter -> 403/404, while B's own token gets 200 on the same reads;
  A's lists never show B's members or alerts;
- webhook signatures verify with the receiver helper and a replayed old signature is rejected;
- tokens, webhook secrets and stream tickets never appear in the services' logs or spans.
"""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any, get_args

import httpx
import pytest
from cth_shared.auth import issue_token
from fastapi import FastAPI
from fastapi.routing import APIRoute
from notifications.domain.signing import sign, verify
from poison_support import (
    SERVICES,
    Receiver,
    connect,
    event_bytes,
    eventually,
    log_text,
    producer,
    send,
    start_services,
    stop_services,
)

pytestmark = [pytest.mark.integration, pytest.mark.reliability]

ORG_A, ORG_B = "111222333", "987654321"  # B is the PCP practice of the contract examples
PCP_NPI = "1234567893"
MEMBER_B = "M-ACC-B"
REFERRAL_B = "REF-ACC-B"
#: Routes that answer without a token, and why that is safe.
PUBLIC = {
    "/healthz": "liveness only",
    "/openapi.json": "API description, no data",
    "/docs": "API description, no data",
    "/docs/oauth2-redirect": "API description, no data",
    "/redoc": "API description, no data",
    "/inbox/page": "static page shell; it asks for a token and holds no data",
}


def service_apps() -> dict[str, FastAPI]:
    """Each service's FastAPI app, built the way its composition root builds it (no I/O)."""
    import attribution.main
    import care_gaps.main
    import notifications.main
    import referrals.main
    from attribution.settings import AttributionSettings
    from care_gaps.settings import CareGapsSettings
    from notifications.settings import NotificationSettings
    from referrals.settings import ReferralsSettings

    definitions = {
        "attribution": (attribution.main.build_definition(AttributionSettings()), AttributionSettings()),
        "care-gaps": (care_gaps.main.build(CareGapsSettings()), CareGapsSettings()),
        "referrals": (referrals.main.DEFINITION, ReferralsSettings()),
        "notifications": (notifications.main.build_definition(NotificationSettings()), NotificationSettings()),
    }
    assert set(definitions) == set(SERVICES)
    apps = {}
    for name, (definition, settings) in definitions.items():
        assert definition.api is not None
        ctx = SimpleNamespace(name=name, schema=definition.schema, settings=settings, pool=None, extras={})
        apps[name] = definition.api(ctx)  # type: ignore[arg-type]
    return apps


def routes(app: FastAPI) -> list[tuple[str, str, APIRoute | None]]:
    """(method, path template, route) of every route of ``app``; docs routes have no APIRoute."""
    out: list[tuple[str, str, APIRoute | None]] = []
    for route in app.routes:
        if isinstance(route, APIRoute):
            out += [(method, route.path, route) for method in sorted(route.methods)]
        else:
            out += [(method, route.path, None) for method in sorted(getattr(route, "methods", None) or {"GET"})
                    if method != "HEAD"]
    return out


def query_for(route: APIRoute | None) -> dict[str, str]:
    """Values for the route's required query parameters."""
    params: dict[str, str] = {}
    for field in route.dependant.query_params if route else []:
        if not field.field_info.is_required():
            continue
        annotation = field.field_info.annotation
        kinds = get_args(annotation) or (annotation,)
        if date in kinds:
            params[field.alias] = "2026-01-01" if field.alias != "end" else "2026-12-31"
        elif int in kinds:
            params[field.alias] = "1"
        else:
            params[field.alias] = "x"
    return params


def body_for(method: str, path: str) -> dict[str, Any] | None:
    if method == "POST" and path == "/subscriptions":
        return {"audience": "organization", "channel": "inbox"}
    return None


async def call(api: httpx.AsyncClient, method: str, path: str, token: str | None, route: APIRoute | None,
               values: dict[str, str]) -> httpx.Response:
    url = path.format(**values)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    request = api.build_request(method, url, params=query_for(route), headers=headers, json=body_for(method, path))
    response = await api.send(request, stream=True)
    try:
        if response.headers.get("content-type", "").startswith("text/event-stream"):
            return response  # a live stream: the status and headers are what we check
        await response.aread()
        return response
    finally:
        await response.aclose()


async def test_every_route_checks_who_is_asking_and_secrets_stay_out_of_logs(isolated: Any, tmp_path: Path) -> None:
    spans = tmp_path / "spans.jsonl"
    apps = service_apps()
    processes = await start_services(isolated, tmp_path, OTEL_SPANS_FILE=str(spans))
    try:
        secrets_seen = await _run(isolated, processes, apps)
    finally:
        codes = stop_services(processes)
    assert codes == dict.fromkeys(SERVICES, 0), log_text(processes)[-4000:]

    logs = log_text(processes)
    span_text = spans.read_text() if spans.exists() else ""
    assert "service ready" in logs and span_text, "the logs and spans of the run were captured"
    for label, secret in secrets_seen.items():
        assert secret not in logs, f"{label} appears in a service log"
        assert secret not in span_text, f"{label} appears in a span"


async def _run(isolated: Any, processes: dict[str, Any], apps: dict[str, FastAPI]) -> dict[str, str]:
    conns = {name: await connect(isolated, schema) for name, (_m, schema, _t) in SERVICES.items()}
    tokens_a = {name: await issue_token(conn, ORG_A, label="org A") for name, conn in conns.items()}
    tokens_b = {name: await issue_token(conn, ORG_B, label="org B") for name, conn in conns.items()}
    # A token of B scoped to another clinician: sees none of the PCP's alerts.
    other_clinician = await issue_token(conns["notifications"], ORG_B, recipient_id="1003000126", label="B, other")
    secrets_seen = {f"token A {n}": t for n, t in tokens_a.items()} | {f"token B {n}": t for n, t in tokens_b.items()}
    secrets_seen["token B other clinician"] = other_clinician

    async with Receiver({"/b-ok": "ok", "/b-gone": "410"}) as receiver:
        notifications = processes["notifications"].base_url
        async with httpx.AsyncClient(base_url=notifications, timeout=10) as api:
            auth_b = {"Authorization": f"Bearer {tokens_b['notifications']}"}
            ok = await api.post("/subscriptions", headers=auth_b, json={
                "audience": "care_team", "channel": "webhook", "endpoint_url": receiver.url("/b-ok")})
            gone = await api.post("/subscriptions", headers=auth_b, json={
                "audience": "organization", "channel": "webhook", "endpoint_url": receiver.url("/b-gone")})
            assert ok.status_code == gone.status_code == 201, (ok.text, gone.text)
            secret = ok.json()["secret"]
            secrets_seen["webhook secret"] = secret
            secrets_seen["webhook secret 2"] = gone.json()["secret"]
            ticket = (await api.post("/inbox/stream-ticket", headers=auth_b)).json()["ticket"]
            secrets_seen["stream ticket"] = ticket
        # Live streams open before anything happens: A's (token header) and B's (ticket, as the page does).
        stream_a: list[str] = []
        stream_b: list[str] = []
        readers = [
            asyncio.create_task(_read_stream(notifications, {"Authorization": f"Bearer {tokens_a['notifications']}"},
                                             {}, stream_a)),
            asyncio.create_task(_read_stream(notifications, {}, {"ticket": ticket}, stream_b)),
        ]
        await eventually(lambda: asyncio.sleep(0, bool(stream_a) and bool(stream_b)), what="streams connected")

        # B's member: enrolled, PCP selected (attribution computes B's attribution and tells the others),
        # admitted and discharged (gaps, alerts), and a referral ordered by B.
        async with producer(isolated) as client:
            await send(client, isolated, "enrollment", MEMBER_B, event_bytes("member.enrolled", member_id=MEMBER_B))
            await send(client, isolated, "enrollment", MEMBER_B,
                       event_bytes("member.pcp_selected", member_id=MEMBER_B, pcp_npi=PCP_NPI, pcp_tin=ORG_B,
                                   effective_date="2026-01-15"))
            await send(client, isolated, "referral-requests", MEMBER_B,
                       event_bytes("referral.requested", member_id=MEMBER_B, referral_id=REFERRAL_B,
                                   ordering_npi=PCP_NPI, ordering_tin=ORG_B))
        await eventually(lambda: conns["notifications"].fetchval(
            "SELECT count(*) FROM care_team_history WHERE member_id = $1 AND care_team::text LIKE $2",
            MEMBER_B, f"%{PCP_NPI}%"), what="B's PCP attribution reached notifications")
        await eventually(lambda: conns["care-gaps"].fetchval(
            "SELECT count(*) FROM members WHERE member_id = $1 AND pcp_tin = $2", MEMBER_B, ORG_B),
            what="B's PCP attribution reached care-gaps")
        # Attribution takes effect when computed (today): the stay happens after that.
        admitted, discharged = datetime.now(UTC) + timedelta(minutes=1), datetime.now(UTC) + timedelta(minutes=2)
        async with producer(isolated) as client:
            await send(client, isolated, "encounters", MEMBER_B,
                       event_bytes("encounter.admitted", member_id=MEMBER_B, encounter_id="ENC-ACC-B",
                                   admitted_at=admitted.isoformat()))
            await send(client, isolated, "encounters", MEMBER_B,
                       event_bytes("encounter.discharged", member_id=MEMBER_B, encounter_id="ENC-ACC-B",
                                   admitted_at=admitted.isoformat(), discharged_at=discharged.isoformat()))

        alert = await eventually(lambda: conns["notifications"].fetchrow(
            "SELECT notification_id FROM notifications WHERE organization_id = $1 AND recipient_id = $2"
            " AND kind = 'admit'",
            ORG_B, PCP_NPI), what="an alert for B's PCP")
        dead = await eventually(lambda: conns["notifications"].fetchrow(
            "SELECT delivery_id FROM deliveries WHERE status = 'dead'"), what="B's dead-lettered delivery")
        delivered = await eventually(lambda: _first_delivered(receiver, "/b-ok"), what="a webhook to B")
        await eventually(lambda: conns["care-gaps"].fetchval("SELECT count(*) FROM gaps WHERE member_id = $1",
                                                             MEMBER_B), what="B's member has gaps")
        await eventually(lambda: conns["referrals"].fetchval(
            "SELECT count(*) FROM referrals WHERE referral_id = $1 AND organization_id = $2", REFERRAL_B, ORG_B),
            what="B's referral")
        await eventually(lambda: conns["attribution"].fetchval(
            "SELECT count(*) FROM attribution_current WHERE member_id = $1 AND pcp_tin = $2", MEMBER_B, ORG_B),
            what="B's attribution")
        # The live stream: B hears of its alert, A hears nothing of B's.
        await eventually(lambda: asyncio.sleep(0, any(alert["notification_id"] in line for line in stream_b)),
                         what="B's alert on B's live stream")
        for reader in readers:
            reader.cancel()
        await asyncio.gather(*readers, return_exceptions=True)
        assert not [line for line in stream_a if MEMBER_B in line or line.startswith("data:")], stream_a[:5]

    owned_by_b = {
        "member_id": MEMBER_B, "organization_id": ORG_B, "notification_id": alert["notification_id"],
        "referral_id": REFERRAL_B, "subscription_id": ok.json()["subscription_id"],
        "delivery_id": str(dead["delivery_id"]),
    }
    b_markers = [MEMBER_B, alert["notification_id"], ok.json()["subscription_id"], receiver.url("/b-ok")]

    checked = 0
    for name, app in apps.items():
        async with httpx.AsyncClient(base_url=processes[name].base_url, timeout=10) as api:
            for method, path, route in routes(app):
                params = [p.name for p in route.dependant.path_params] if route else []
                unknown = [p for p in params if p not in owned_by_b]
                assert not unknown, f"{name} {method} {path}: map {unknown} to a resource of organization B"
                values = {p: owned_by_b[p] for p in params}
                where = f"{name} {method} {path}"
                if path in PUBLIC:
                    assert (await call(api, method, path, None, route, values)).status_code < 400, where
                    continue
                checked += 1
                # 1. who are you?
                for token in (None, "cth_not-a-token", tokens_a[name] + "x"):
                    response = await call(api, method, path, token, route, values)
                    assert response.status_code == 401, (where, token is None, response.status_code)
                    assert response.headers.get("www-authenticate", "").lower().startswith("bearer"), where
                # 2. B's own token reads B's resources (the resources exist, so a 404 below means "not yours").
                if params and method == "GET":
                    response = await call(api, method, path, tokens_b[name], route, values)
                    assert response.status_code == 200, (where, "B", response.status_code)
                # 3. A's token on B's resources: forbidden or not found; on lists: none of B's data.
                response = await call(api, method, path, tokens_a[name], route, values)
                if params:
                    assert response.status_code in (403, 404), (where, "A", response.status_code)
                else:
                    assert response.status_code < 400, (where, "A", response.status_code)
                    if not response.headers.get("content-type", "").startswith("text/event-stream"):
                        text = response.text
                        assert not any(marker in text for marker in b_markers), (where, "A sees B's data")
    assert checked >= 15, f"only {checked} protected routes found"

    # Within B, a token scoped to one clinician sees none of another clinician's alerts.
    async with httpx.AsyncClient(base_url=processes["notifications"].base_url, timeout=10) as api:
        narrow = {"Authorization": f"Bearer {other_clinician}"}
        assert (await api.get(f"/inbox/{alert['notification_id']}", headers=narrow)).status_code == 404
        listing = (await api.get("/inbox", headers=narrow)).json()
        assert alert["notification_id"] not in {item["id"] for item in listing["items"]}
        assert (await api.get("/inbox/stream", params={"ticket": ticket + "0"})).status_code == 401

    # Webhook signatures: valid as sent; a replay outside the tolerance, a changed body or
    # another secret is rejected by the receiver helper documented in the notifications README.
    headers, body = delivered
    header = headers["x-cth-signature"]
    sent_at = int(headers["x-cth-timestamp"])
    assert verify(secret, header, body, now=sent_at)
    assert verify(secret, header, body, now=sent_at + 300)
    assert not verify(secret, header, body, now=sent_at + 301), "a replayed old signature must be rejected"
    assert not verify(secret, header, body, now=sent_at - 301)
    assert not verify(secret, header, body + b" ", now=sent_at)
    assert not verify(secret + "x", header, body, now=sent_at)
    forged = sign(secret, sent_at + 3600, body)  # only the secret holder can make a fresh one
    assert verify(secret, forged, body, now=sent_at + 3600)
    assert not verify(secret, header.replace(f"t={sent_at}", f"t={sent_at + 3600}"), body, now=sent_at + 3600)
    assert json.loads(body)["id"]

    # Only hashes are stored; a revoked token is refused everywhere.
    for name, conn in conns.items():
        stored = [r["token_sha256"] for r in await conn.fetch("SELECT token_sha256 FROM api_tokens")]
        assert tokens_b[name] not in stored and all(len(h) == 64 for h in stored)
        await conn.execute("UPDATE api_tokens SET revoked_at = now()")
        async with httpx.AsyncClient(base_url=processes[name].base_url, timeout=10) as api:
            path = {"attribution": f"/members/{MEMBER_B}/attribution", "care-gaps": f"/members/{MEMBER_B}/gaps",
                    "referrals": f"/referrals/{REFERRAL_B}", "notifications": "/inbox"}[name]
            response = await api.get(path, headers={"Authorization": f"Bearer {tokens_b[name]}"})
            assert response.status_code == 401, (name, "revoked token")
    for conn in conns.values():
        await conn.close()
    return secrets_seen


async def _read_stream(base_url: str, headers: dict[str, str], params: dict[str, str], lines: list[str]) -> None:
    async with httpx.AsyncClient(base_url=base_url, timeout=httpx.Timeout(10, read=None)) as api, api.stream(
        "GET", "/inbox/stream", headers=headers, params=params
    ) as response:
        assert response.status_code == 200
        async for line in response.aiter_lines():
            lines.append(line)


async def _first_delivered(receiver: Receiver, path: str) -> tuple[dict[str, str], bytes] | None:
    for p, code, headers, body in receiver.requests:
        if p == path and code == 200:
            return headers, body
    return None


def test_the_signature_helper_is_documented_for_receivers() -> None:
    readme = (Path(__file__).resolve().parents[2] / "services" / "notifications" / "README.md").read_text()
    assert "notifications.domain.signing" in readme and "verify(" in readme
    now = int(time.time())
    assert verify("s", sign("s", now, b"{}"), b"{}", now=now)
