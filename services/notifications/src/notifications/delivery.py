"""The delivery worker: webhooks and FHIR ``$process-message`` with retries, durable in Postgres.

Work lives in the ``deliveries`` table (``next_attempt_at``, a lease), so it survives
restarts: a crashed instance's leases expire and another claims the rows
(``FOR UPDATE SKIP LOCKED``). Each endpoint gets its own lane (a task): a slow or dead
endpoint only blocks its own lane, and its circuit breaker makes the dispatcher skip it
until a probe may go. Within a lane, deliveries for one member go out in creation order
(a delivery waits while an earlier one for the same member and subscription is pending).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from datetime import UTC, datetime, timedelta

import asyncpg
import httpx
from cth_shared.contracts.events import NotificationDelivered, NotificationFailed
from cth_shared.runtime import ServiceContext
from opentelemetry import metrics, propagate, trace

from .domain.delivery_policy import Circuit, CircuitState, Outcome, RetrySchedule, classify_status
from .domain.signing import sign
from .endpoints import EndpointForbidden, check_endpoint
from .rendering import notification_bundle, notification_json
from .settings import NotificationSettings

_log = logging.getLogger(__name__)
_tracer = trace.get_tracer("notifications.delivery")
_meter = metrics.get_meter("notifications.delivery")
_attempts_counter = _meter.create_counter("notifications.delivery.attempts", unit="{attempt}")
_alert_latency = _meter.create_histogram(
    "alert.end_to_end.duration", unit="ms", description="Event time (e.g. the ADT event) to webhook/FHIR receipt"
)
_webhook_deliveries = _meter.create_counter(
    "webhook.deliveries", unit="{attempt}", description="Delivery attempts by outcome (delivered, retry, dead)"
)


class DeliveryWorker:
    """Dispatches due deliveries into per-endpoint lanes."""

    def __init__(self, ctx: ServiceContext, settings: NotificationSettings, client: httpx.AsyncClient) -> None:
        self.ctx = ctx
        self.pool: asyncpg.Pool = ctx.pool
        self.settings = settings
        self.client = client
        self.schedule = RetrySchedule(
            initial=timedelta(seconds=settings.delivery_initial_backoff_s),
            maximum=timedelta(seconds=settings.delivery_max_backoff_s),
            give_up_after=timedelta(seconds=settings.delivery_give_up_after_s),
        )
        self.lanes: dict[str, asyncio.Task[None]] = {}

    async def run(self) -> None:
        """Background job: until cancelled, start a lane for every endpoint with due work."""
        try:
            while True:
                try:
                    for endpoint in await self._due_endpoints():
                        if endpoint not in self.lanes:
                            self.lanes[endpoint] = asyncio.create_task(self._lane(endpoint), name=f"lane:{endpoint}")
                except Exception as exc:  # e.g. InterfaceError while PostgreSQL restarts: never stop dispatching
                    _log.warning("delivery dispatch failed; retrying", extra={"reason": type(exc).__name__})
                await asyncio.sleep(self.settings.delivery_poll_interval_ms / 1000)
        finally:
            for lane in self.lanes.values():
                lane.cancel()
            await asyncio.gather(*self.lanes.values(), return_exceptions=True)

    async def _due_endpoints(self) -> list[str]:
        rows = await self.pool.fetch(
            "SELECT DISTINCT d.endpoint_url FROM deliveries d"
            " LEFT JOIN endpoint_circuits c ON c.endpoint_url = d.endpoint_url"
            " WHERE d.status = 'pending' AND d.next_attempt_at <= now()"
            " AND (d.leased_until IS NULL OR d.leased_until < now())"
            " AND (c.state IS DISTINCT FROM 'open' OR c.open_until <= now())"
            " AND NOT d.endpoint_url = ANY($1::text[]) LIMIT 200",
            list(self.lanes),
        )
        return [r["endpoint_url"] for r in rows]

    async def _lane(self, endpoint: str) -> None:
        try:
            while True:
                circuit = await self._circuit(endpoint)
                now = datetime.now(UTC)
                if not circuit.allows(now):
                    return
                probing = circuit.state is CircuitState.OPEN  # expired open circuit: one probe only
                batch = await self._claim(endpoint, 1 if probing else self.settings.delivery_batch_per_endpoint)
                if not batch:
                    return
                for index, delivery in enumerate(batch):
                    outcome = await self.attempt(delivery)
                    if outcome is Outcome.RETRY:
                        # Keep order and let the circuit decide: give the rest of the batch back.
                        await self.pool.execute(
                            "UPDATE deliveries SET leased_until = NULL WHERE delivery_id = ANY($1::bigint[])",
                            [d["delivery_id"] for d in batch[index + 1:]],
                        )
                        break
        except asyncio.CancelledError:
            raise
        except Exception:
            _log.exception("delivery lane failed", extra={"reason": "lane_error"})
        finally:
            self.lanes.pop(endpoint, None)

    async def _circuit(self, endpoint: str, conn: asyncpg.Connection | None = None) -> Circuit:
        # Inside a transaction, pass its connection: a second pool connection per lane would
        # exhaust the pool when many lanes record at once (and stall the consumer too).
        row = await (conn or self.pool).fetchrow(
            "SELECT state, consecutive_failures, open_until FROM endpoint_circuits WHERE endpoint_url = $1", endpoint
        )
        if row is None:
            return Circuit()
        return Circuit(CircuitState(row["state"]), row["consecutive_failures"], row["open_until"])

    async def _claim(self, endpoint: str, limit: int) -> list[asyncpg.Record]:
        rows = await self.pool.fetch(
            "UPDATE deliveries SET leased_until = now() + make_interval(secs => $3) WHERE delivery_id IN ("
            "  SELECT d.delivery_id FROM deliveries d"
            "  WHERE d.endpoint_url = $1 AND d.status = 'pending' AND d.next_attempt_at <= now()"
            "  AND (d.leased_until IS NULL OR d.leased_until < now())"
            "  AND NOT EXISTS (SELECT 1 FROM deliveries e WHERE e.subscription_id = d.subscription_id"
            "                  AND e.member_id = d.member_id AND e.status = 'pending'"
            "                  AND e.delivery_id < d.delivery_id)"
            "  ORDER BY d.delivery_id LIMIT $2 FOR UPDATE SKIP LOCKED)"
            " RETURNING delivery_id, notification_id, subscription_id, channel, endpoint_url, attempts,"
            " first_attempt_at, member_id, traceparent",
            endpoint, limit, self.settings.delivery_lease_s,
        )
        return sorted(rows, key=lambda r: r["delivery_id"])

    async def attempt(self, delivery: asyncpg.Record) -> Outcome:
        """One HTTP attempt, then its evidence, the delivery's next state and the circuit, in one transaction."""
        row = await self.pool.fetchrow(
            "SELECT n.*, s.secret FROM notifications n JOIN subscriptions s ON s.subscription_id = $2"
            " WHERE n.notification_id = $1",
            delivery["notification_id"], delivery["subscription_id"],
        )
        assert row is not None  # foreign keys guarantee both rows
        if delivery["channel"] == "fhir_message":
            body = json.dumps(notification_bundle(row, delivery["endpoint_url"], delivery["subscription_id"]),
                              separators=(",", ":")).encode()
            content_type = "application/fhir+json"
        else:
            body = json.dumps(notification_json(row), separators=(",", ":")).encode()
            content_type = "application/json"
        timestamp = int(time.time())
        headers = {
            "Content-Type": content_type,
            "X-CTH-Signature": sign(row["secret"] or "", timestamp, body),
            "X-CTH-Timestamp": str(timestamp),
            "Idempotency-Key": row["notification_id"],
            "X-CTH-Sequence": str(row["sequence"]),
        }
        attempted_at = datetime.now(UTC)
        started = time.perf_counter()
        status_code: int | None = None
        error_class: str | None = None
        # Continue the trace of the event that created the alert (queued with the delivery).
        parent = propagate.extract({"traceparent": delivery["traceparent"]}) if delivery["traceparent"] else None
        with _tracer.start_as_current_span(
            "notifications.deliver", context=parent, kind=trace.SpanKind.CLIENT,
            attributes={"cth.notification_id": row["notification_id"], "cth.channel": delivery["channel"],
                        "cth.member_id": row["member_id"]},
        ) as span:
            try:
                await check_endpoint(delivery["endpoint_url"],
                                     allow_private=self.settings.webhook_allow_private_networks)
                response = await self.client.post(delivery["endpoint_url"], content=body, headers=headers,
                                                  timeout=self.settings.delivery_timeout_s)
                status_code = response.status_code
                span.set_attribute("http.response.status_code", status_code)
            except EndpointForbidden:
                error_class = "endpoint_forbidden"
                span.set_attribute("error.type", error_class)
            except httpx.HTTPError as exc:
                error_class = type(exc).__name__
                span.set_attribute("error.type", error_class)
        latency_ms = (time.perf_counter() - started) * 1000
        # A forbidden endpoint is not retried: it dead-letters at once (replayable after a fix).
        outcome = Outcome.DEAD if error_class == "endpoint_forbidden" else classify_status(status_code)
        if status_code is not None and outcome is not Outcome.DELIVERED:
            error_class = f"HTTP {status_code}"
        _attempts_counter.add(1, {"channel": delivery["channel"], "outcome": outcome.value})
        _webhook_deliveries.add(1, {"channel": delivery["channel"], "outcome": outcome.value})
        await self._record(delivery, row, attempted_at, status_code, latency_ms, error_class, outcome)
        return outcome

    async def _record(
        self, delivery: asyncpg.Record, row: asyncpg.Record, attempted_at: datetime, status_code: int | None,
        latency_ms: float, error_class: str | None, outcome: Outcome,
    ) -> None:
        now = datetime.now(UTC)
        attempts = delivery["attempts"] + 1
        first_attempt_at = delivery["first_attempt_at"] or attempted_at
        if outcome is Outcome.RETRY:
            next_at = self.schedule.next_attempt_at(first_attempt_at, now, attempts)
            outcome_state = "dead" if next_at is None else "pending"  # None: 24 h of failures, give up
        else:
            next_at = None
            outcome_state = "delivered" if outcome is Outcome.DELIVERED else "dead"
        async with self.ctx.unit_of_work() as uow:
            conn = uow.conn
            await conn.execute(
                "INSERT INTO delivery_attempts(delivery_id, notification_id, attempted_at, status_code, latency_ms,"
                " error_class, outcome) VALUES ($1, $2, $3, $4, $5, $6, $7)",
                delivery["delivery_id"], row["notification_id"], attempted_at, status_code, latency_ms, error_class,
                outcome.value,
            )
            await conn.execute(
                "UPDATE deliveries SET status = $2, attempts = $3, first_attempt_at = $4,"
                " next_attempt_at = coalesce($5, next_attempt_at), leased_until = NULL,"
                " delivered_at = CASE WHEN $2 = 'delivered' THEN $6 ELSE delivered_at END,"
                " dead_at = CASE WHEN $2 = 'dead' THEN $6 ELSE dead_at END, last_error = $7"
                " WHERE delivery_id = $1",
                delivery["delivery_id"], outcome_state, attempts, first_attempt_at, next_at, now, error_class,
            )
            circuit = (await self._circuit(delivery["endpoint_url"], conn)).after(
                outcome, now, self.settings.circuit_failure_threshold, timedelta(seconds=self.settings.circuit_open_s)
            )
            await conn.execute(
                "INSERT INTO endpoint_circuits(endpoint_url, state, consecutive_failures, open_until)"
                " VALUES ($1, $2, $3, $4) ON CONFLICT (endpoint_url) DO UPDATE SET state = excluded.state,"
                " consecutive_failures = excluded.consecutive_failures, open_until = excluded.open_until,"
                " updated_at = now()",
                delivery["endpoint_url"], circuit.state.value, circuit.consecutive_failures, circuit.open_until,
            )
            if outcome_state == "delivered":
                _alert_latency.record((now - row["event_time"]).total_seconds() * 1000, {"kind": row["kind"]})
                uow.publish(NotificationDelivered(
                    notification_id=row["notification_id"], member_id=row["member_id"],
                    recipient_id=row["recipient_id"], channel=delivery["channel"], delivered_at=now, attempts=attempts,
                ), subject=row["member_id"], time=now)
            elif outcome_state == "dead":
                reason = error_class or "gave up"
                if outcome is Outcome.RETRY:
                    reason = f"gave up after {attempts} attempts; last: {reason}"
                uow.publish(NotificationFailed(
                    notification_id=row["notification_id"], member_id=row["member_id"],
                    recipient_id=row["recipient_id"], channel=delivery["channel"], reason=reason[:500],
                    attempts=attempts, dead_lettered=True,
                ), subject=row["member_id"], time=now)


async def delivery_job(ctx: ServiceContext) -> None:
    """The ``background`` job wired by main.py."""
    settings = ctx.settings
    assert isinstance(settings, NotificationSettings)
    limits = httpx.Limits(max_connections=200, max_keepalive_connections=50)
    async with httpx.AsyncClient(limits=limits, follow_redirects=False) as client:
        worker = DeliveryWorker(ctx, settings, client)
        ctx.extras["delivery_worker"] = worker
        await worker.run()


