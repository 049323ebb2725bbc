"""HTTP API: inbox (list, acknowledge, live stream), inbox page, subscriptions, evidence, dead letters.

Every route requires a bearer token scoped to an organization (and optionally one
recipient); a token sees only its own alerts, anything else is 404. The SSE stream also
accepts a short-lived signed ``ticket`` query parameter, because browsers' EventSource
cannot set an Authorization header: the page trades its token for a ticket
(``POST /inbox/stream-ticket``, valid ``stream_ticket_ttl_s``) and never puts the token in a URL.
"""


import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import secrets
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from importlib.resources import files
from typing import Annotated, Any, Literal

import asyncpg
from cth_shared.auth import Principal, authenticate
from cth_shared.contracts.codes import PatientClass
from cth_shared.contracts.events import NotificationAcknowledged
from cth_shared.runtime import ServiceContext
from fastapi import Depends, FastAPI, HTTPException, Query, Request, status
from fastapi.responses import HTMLResponse, StreamingResponse
from pydantic import BaseModel, Field, HttpUrl

from . import store
from .domain.fhir_message import renders_as_fhir
from .domain.rules import ENCOUNTER_KINDS, Kind
from .endpoints import EndpointForbidden, check_endpoint
from .rendering import notification_bundle, notification_json
from .settings import NotificationSettings


# --------------------------------------------------------------------------- live fan-out
class AlertHub:
    """One LISTEN connection per process; fans NOTIFY payloads out to the open SSE streams."""

    def __init__(self, dsn: str, schema: str) -> None:
        self._dsn = dsn
        self._schema = schema
        self._conn: asyncpg.Connection | None = None
        self._queues: set[asyncio.Queue[dict[str, Any]]] = set()
        self._lock = asyncio.Lock()

    async def _ensure_listening(self) -> None:
        async with self._lock:
            if self._conn is not None and not self._conn.is_closed():
                return
            self._conn = await asyncpg.connect(self._dsn, server_settings={"application_name": "notifications-sse"})
            await self._conn.add_listener(store.NEW_ALERT_CHANNEL, self._on_notify)

    def _on_notify(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        message = json.loads(payload)
        for queue in list(self._queues):
            with contextlib.suppress(asyncio.QueueFull):
                queue.put_nowait(message)

    async def subscribe(self) -> asyncio.Queue[dict[str, Any]]:
        await self._ensure_listening()
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize=1000)
        self._queues.add(queue)
        return queue

    def unsubscribe(self, queue: asyncio.Queue[dict[str, Any]]) -> None:
        self._queues.discard(queue)

    async def close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):
                await self._conn.close()


# --------------------------------------------------------------------------- stream tickets
def issue_ticket(secret: str, principal: Principal, ttl_s: int) -> str:
    """``base64url(org|recipient|expiry).hex(hmac)``: a bearer for the SSE stream only, for ``ttl_s``."""
    claims = f"{principal.organization_id}|{principal.recipient_id or ''}|{int(time.time()) + ttl_s}"
    encoded = base64.urlsafe_b64encode(claims.encode()).decode().rstrip("=")
    mac = hmac.new(secret.encode(), encoded.encode(), hashlib.sha256).hexdigest()
    return f"{encoded}.{mac}"


def read_ticket(secret: str, ticket: str) -> Principal | None:
    try:
        encoded, mac = ticket.rsplit(".", 1)
        expected = hmac.new(secret.encode(), encoded.encode(), hashlib.sha256).hexdigest()
        if not hmac.compare_digest(mac, expected):
            return None
        claims = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)).decode()
        organization, recipient, expiry = claims.split("|")
    except (ValueError, UnicodeDecodeError):
        return None
    if int(expiry) < time.time():
        return None
    return Principal(organization_id=organization, recipient_id=recipient or None)


# --------------------------------------------------------------------------- request bodies
class SubscriptionIn(BaseModel):
    audience: Literal["organization", "care_team"] = Field(
        "organization", description="organization: alerts on members attributed to your TIN; "
        "care_team: route your clinicians' alerts to this endpoint")
    channel: Literal["webhook", "fhir_message", "inbox"] = "webhook"
    endpoint_url: HttpUrl | None = None
    recipient_id: str | None = Field(None, max_length=64, description="care_team only: one clinician's alerts")
    kinds: list[Kind] | None = Field(None, max_length=20)
    patient_classes: list[PatientClass] | None = Field(None, max_length=10)


SCOPE = "organization_id = $1 AND ($2::text IS NULL OR recipient_id = $2)"


def create_api(ctx: ServiceContext) -> FastAPI:
    settings = ctx.settings
    assert isinstance(settings, NotificationSettings)
    pool = ctx.pool
    hub = AlertHub(settings.database_url.get_secret_value(), ctx.schema)
    ticket_secret = settings.stream_ticket_secret.get_secret_value()

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        await hub.close()

    app = FastAPI(title="Care Transitions Hub — notifications", lifespan=lifespan)

    async def principal(request: Request) -> Principal:
        return await authenticate(pool, request.headers.get("authorization"))

    Caller = Annotated[Principal, Depends(principal)]

    async def owned(caller: Principal, notification_id: str) -> asyncpg.Record:
        row = await pool.fetchrow(f"SELECT * FROM notifications WHERE {SCOPE} AND notification_id = $3",
                                  caller.organization_id, caller.recipient_id, notification_id)
        if row is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, "no such notification")
        return row

    # ------------------------------------------------------------------ inbox
    @app.get("/inbox/page", response_class=HTMLResponse, include_in_schema=False)
    async def inbox_page() -> HTMLResponse:
        html = (files("notifications") / "static" / "inbox.html").read_text(encoding="utf-8")
        return HTMLResponse(html, headers={"Cache-Control": "no-store", "Referrer-Policy": "no-referrer",
                                           "X-Content-Type-Options": "nosniff"})

    @app.get("/inbox")
    async def list_inbox(
        caller: Caller,
        status_filter: Annotated[Literal["new", "acknowledged", "all"], Query(alias="status")] = "all",
        kind: Kind | None = None,
        member_id: Annotated[str | None, Query(max_length=64)] = None,
        order: Literal["recent", "priority"] = "recent",
        page: Annotated[int, Query(ge=1, le=100_000)] = 1,
        page_size: Annotated[int, Query(ge=1)] = 50,
    ) -> dict[str, Any]:
        page_size = min(page_size, settings.inbox_page_size_max)
        where = [SCOPE]
        args: list[Any] = [caller.organization_id, caller.recipient_id]
        if status_filter == "new":
            where.append("acknowledged_at IS NULL")
        elif status_filter == "acknowledged":
            where.append("acknowledged_at IS NOT NULL")
        if kind is not None:
            args.append(kind.value)
            where.append(f"kind = ${len(args)}")
        if member_id is not None:
            args.append(member_id)
            where.append(f"member_id = ${len(args)}")
        order_by = ("CASE priority WHEN 'urgent' THEN 0 WHEN 'high' THEN 1 ELSE 2 END, due_date NULLS LAST,"
                    " created_at DESC" if order == "priority" else "created_at DESC, notification_id")
        clause = " AND ".join(where)
        total = await pool.fetchval(f"SELECT count(*) FROM notifications WHERE {clause}", *args)
        unacknowledged = await pool.fetchval(
            f"SELECT count(*) FROM notifications WHERE {SCOPE} AND acknowledged_at IS NULL",
            caller.organization_id, caller.recipient_id)
        rows = await pool.fetch(
            f"SELECT * FROM notifications WHERE {clause} ORDER BY {order_by}"
            f" LIMIT {page_size} OFFSET {(page - 1) * page_size}", *args)
        return {"items": [notification_json(r) for r in rows], "page": page, "page_size": page_size,
                "total": total, "unacknowledged": unacknowledged}

    @app.post("/inbox/stream-ticket")
    async def stream_ticket(caller: Caller) -> dict[str, Any]:
        return {"ticket": issue_ticket(ticket_secret, caller, settings.stream_ticket_ttl_s),
                "expires_in": settings.stream_ticket_ttl_s}

    @app.get("/inbox/stream")
    async def stream(request: Request, ticket: str | None = None) -> StreamingResponse:
        if ticket is not None:
            caller = read_ticket(ticket_secret, ticket)
            if caller is None:
                raise HTTPException(status.HTTP_401_UNAUTHORIZED, "invalid or expired stream ticket")
        else:
            caller = await authenticate(pool, request.headers.get("authorization"))
        queue = await hub.subscribe()

        async def events() -> AsyncIterator[bytes]:
            try:
                yield b"retry: 2000\n: connected\n\n"
                while True:
                    try:
                        message = await asyncio.wait_for(queue.get(), timeout=settings.stream_keepalive_s)
                    except TimeoutError:
                        if await request.is_disconnected():
                            return
                        yield b": keepalive\n\n"
                        continue
                    if message["org"] != caller.organization_id or (
                        caller.recipient_id is not None and message["recipient"] != caller.recipient_id
                    ):
                        continue
                    row = await pool.fetchrow("SELECT * FROM notifications WHERE notification_id = $1", message["id"])
                    if row is None:
                        continue
                    data = json.dumps(notification_json(row))
                    yield f"event: {message['event']}\nid: {row['notification_id']}\ndata: {data}\n\n".encode()
            finally:
                hub.unsubscribe(queue)

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})

    @app.get("/inbox/{notification_id}")
    async def get_notification(caller: Caller, notification_id: str) -> dict[str, Any]:
        return notification_json(await owned(caller, notification_id))

    @app.post("/inbox/{notification_id}/ack")
    async def acknowledge(caller: Caller, notification_id: str) -> dict[str, Any]:
        row = await owned(caller, notification_id)
        if row["acknowledged_at"] is None:
            now = datetime.now(UTC)
            async with ctx.unit_of_work() as uow:
                updated = await uow.conn.fetchval(
                    "UPDATE notifications SET acknowledged_at = $2 WHERE notification_id = $1"
                    " AND acknowledged_at IS NULL RETURNING acknowledged_at", notification_id, now)
                if updated is not None:
                    await store.announce(uow.conn, "acknowledged", notification_id, row["organization_id"],
                                         row["recipient_id"])
                    uow.publish(NotificationAcknowledged(
                        notification_id=notification_id, member_id=row["member_id"],
                        recipient_id=row["recipient_id"], acknowledged_at=now,
                    ), subject=row["member_id"], time=now)
            row = await owned(caller, notification_id)
        return notification_json(row)

    # ------------------------------------------------------------------ evidence and FHIR
    @app.get("/notifications/{notification_id}/evidence")
    async def evidence(caller: Caller, notification_id: str) -> dict[str, Any]:
        row = await owned(caller, notification_id)
        deliveries = await pool.fetch("SELECT * FROM deliveries WHERE notification_id = $1 ORDER BY delivery_id",
                                      notification_id)
        attempts = await pool.fetch(
            "SELECT * FROM delivery_attempts WHERE notification_id = $1 ORDER BY attempt_id", notification_id)
        by_delivery: dict[int, list[dict[str, Any]]] = {}
        for a in attempts:
            by_delivery.setdefault(a["delivery_id"], []).append({
                "attempted_at": a["attempted_at"].isoformat(), "status_code": a["status_code"],
                "latency_ms": round(a["latency_ms"], 2), "error_class": a["error_class"], "outcome": a["outcome"],
            })
        return {
            "notification_id": notification_id,
            "sequence": row["sequence"],
            "created_at": row["created_at"].isoformat(),
            "acknowledged_at": row["acknowledged_at"].isoformat() if row["acknowledged_at"] else None,
            "deliveries": [_delivery_json(d, by_delivery.get(d["delivery_id"], [])) for d in deliveries],
        }

    @app.get("/notifications/{notification_id}/fhir")
    async def fhir_form(caller: Caller, notification_id: str) -> dict[str, Any]:
        row = await owned(caller, notification_id)
        if not renders_as_fhir(row["kind"]):
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"{row['kind']} alerts have no FHIR form")
        return notification_bundle(row, "urn:cth:inbox", row["organization_id"])

    # ------------------------------------------------------------------ subscriptions
    def org_wide(caller: Principal) -> None:
        if caller.recipient_id is not None:
            raise HTTPException(status.HTTP_403_FORBIDDEN, "an organization-wide token is required")

    @app.post("/subscriptions", status_code=status.HTTP_201_CREATED)
    async def create_subscription(caller: Caller, body: SubscriptionIn) -> dict[str, Any]:
        org_wide(caller)
        if body.channel != "inbox" and body.endpoint_url is None:
            raise HTTPException(status.HTTP_422_UNPROCESSABLE_ENTITY, "webhook and fhir_message need endpoint_url")
        if body.recipient_id is not None and body.audience != "care_team":
            raise HTTPException(status.HTTP_422_UNPROCESSABLE_ENTITY, "recipient_id applies to care_team audience")
        kinds = [k.value for k in body.kinds] if body.kinds is not None else None
        encounter_kinds = {k.value for k in ENCOUNTER_KINDS}
        if body.channel == "fhir_message" and kinds is not None and not set(kinds) <= encounter_kinds:
            raise HTTPException(status.HTTP_422_UNPROCESSABLE_ENTITY,
                                "fhir_message subscriptions carry encounter kinds only")
        if body.endpoint_url is not None:
            try:
                await check_endpoint(str(body.endpoint_url), allow_private=settings.webhook_allow_private_networks)
            except EndpointForbidden as exc:
                raise HTTPException(status.HTTP_422_UNPROCESSABLE_ENTITY, str(exc)) from None
        subscription_id = "S-" + uuid.uuid4().hex[:16]
        secret = "whsec_" + secrets.token_urlsafe(32) if body.channel != "inbox" else None
        await pool.execute(
            "INSERT INTO subscriptions(subscription_id, organization_id, audience, recipient_id, channel,"
            " endpoint_url, secret, kinds, patient_classes) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9)",
            subscription_id, caller.organization_id, body.audience, body.recipient_id, body.channel,
            str(body.endpoint_url) if body.endpoint_url else None, secret, kinds,
            [p.value for p in body.patient_classes] if body.patient_classes is not None else None,
        )
        row = await pool.fetchrow("SELECT * FROM subscriptions WHERE subscription_id = $1", subscription_id)
        return {**_subscription_json(row), "secret": secret}

    @app.get("/subscriptions")
    async def list_subscriptions(caller: Caller) -> list[dict[str, Any]]:
        rows = await pool.fetch("SELECT * FROM subscriptions WHERE organization_id = $1 ORDER BY created_at",
                                caller.organization_id)
        return [_subscription_json(r) for r in rows]

    @app.delete("/subscriptions/{subscription_id}", status_code=status.HTTP_204_NO_CONTENT)
    async def deactivate_subscription(caller: Caller, subscription_id: str) -> None:
        org_wide(caller)
        done = await pool.fetchval(
            "UPDATE subscriptions SET active = false WHERE subscription_id = $1 AND organization_id = $2"
            " RETURNING subscription_id", subscription_id, caller.organization_id)
        if done is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, "no such subscription")

    # ------------------------------------------------------------------ dead letters
    @app.get("/dead-letters")
    async def dead_letters(caller: Caller, page: Annotated[int, Query(ge=1)] = 1) -> list[dict[str, Any]]:
        rows = await pool.fetch(
            "SELECT d.* FROM deliveries d JOIN notifications n USING (notification_id)"
            f" WHERE d.status = 'dead' AND n.{SCOPE.replace('recipient_id', 'n.recipient_id')}"
            " ORDER BY d.dead_at DESC LIMIT 100 OFFSET $3",
            caller.organization_id, caller.recipient_id, (page - 1) * 100)
        return [_delivery_json(r, []) for r in rows]

    @app.post("/dead-letters/{delivery_id}/replay")
    async def replay(caller: Caller, delivery_id: int) -> dict[str, Any]:
        row = await pool.fetchrow(
            "UPDATE deliveries d SET status = 'pending', attempts = 0, first_attempt_at = NULL, dead_at = NULL,"
            " next_attempt_at = now(), leased_until = NULL FROM notifications n"
            " WHERE d.delivery_id = $3 AND d.status = 'dead' AND n.notification_id = d.notification_id"
            " AND n.organization_id = $1 AND ($2::text IS NULL OR n.recipient_id = $2) RETURNING d.*",
            caller.organization_id, caller.recipient_id, delivery_id)
        if row is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, "no such dead-lettered delivery")
        return _delivery_json(row, [])

    return app


def _delivery_json(d: asyncpg.Record, attempts: list[dict[str, Any]]) -> dict[str, Any]:
    def iso(value: datetime | None) -> str | None:
        return value.isoformat() if value else None

    return {
        "delivery_id": d["delivery_id"], "notification_id": d["notification_id"],
        "subscription_id": d["subscription_id"], "channel": d["channel"], "endpoint_url": d["endpoint_url"],
        "status": d["status"], "attempts": d["attempts"], "first_attempt_at": iso(d["first_attempt_at"]),
        "receipt_at": iso(d["delivered_at"]), "dead_at": iso(d["dead_at"]), "last_error": d["last_error"],
        "next_attempt_at": iso(d["next_attempt_at"]) if d["status"] == "pending" else None,
        "attempt_log": attempts,
    }


def _subscription_json(row: asyncpg.Record) -> dict[str, Any]:
    return {
        "subscription_id": row["subscription_id"], "organization_id": row["organization_id"],
        "audience": row["audience"], "recipient_id": row["recipient_id"], "channel": row["channel"],
        "endpoint_url": row["endpoint_url"], "kinds": row["kinds"], "patient_classes": row["patient_classes"],
        "active": row["active"], "created_at": row["created_at"].isoformat(),
    }
