"""`make demo`: a synthetic payer's month through the four services, live, then a summary.

What happens (see README.md):

1. the embedded stack starts (Tansu broker + PostgreSQL; or external ``--kafka``/``--postgres``),
   the catalog topics are created and attribution, referrals, care-gaps and notifications start
   as separate OS processes (:mod:`cth_shared.orchestrate`);
2. a webhook receiver starts on 127.0.0.1; every provider organization and the payer's care
   management get an API token and a ``care_team`` webhook subscription pointing at it; the
   receiver verifies each ``X-CTH-Signature`` (HMAC-SHA256) before counting an alert;
3. a seeded synthetic payer (:class:`~cth_shared.producers.synthetic.Population`) is replayed:
   the provider directory, the roster and a year of claims history as fast as possible, then
   the month of claims, V1C visits, referral requests and HL7 v2 ADT at accelerated time. ADT
   goes over MLLP to an in-process listener that ACKs after the broker ack; each accepted
   message starts the trace of its care transition (span ``mllp accept ...``);
4. alerts are shown as the receiver gets them (time, kind, priority, recipient role, member
   id: no names); simulated clinicians acknowledge the urgent and high ones through the API;
5. when every service is idle, the summary: events in, attribution changes, gaps, referrals,
   alerts delivered and acknowledged, and the end-to-end latency from ADT acceptance to the
   alert at the receiver (p50/p99). Exit 0 when every stage did its part.

:func:`run_scenario` is the same scenario without the terminal UI (the e2e tests use it).
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import hashlib
import hmac
import itertools
import json
import os
import statistics
import sys
import tempfile
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import typer
import uvicorn
from fastapi import FastAPI, Request, Response
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.sampling import ALWAYS_ON
from opentelemetry.trace import SpanKind, Tracer
from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from .auth import issue_token
from .broker import make_broker
from .contracts import CloudEvent, registered_types
from .contracts.events import ClaimAdjudicated
from .orchestrate import SERVICES, Fleet, LagProbe, ServiceCounters, ServiceDied, Stack, all_counters
from .producers.hl7_adt import AdtTranslator, MemberIndex
from .producers.mllp import MllpListener, MllpSettings
from .producers.publish import EventPublisher, connect_broker
from .producers.replay import ReplaySummary, open_publisher, replay
from .producers.synthetic import Population, PopulationConfig, TimelineItem
from .settings import StackSettings
from .telemetry import JsonLinesSpanExporter

console = Console(stderr=True)
app = typer.Typer(add_completion=False, help=__doc__.split("\n\n")[0])

#: Fast retries in the demo (the production defaults back off for minutes).
SERVICE_ENV = {
    "OTEL_INSTRUMENT_ASYNCPG": "false",
    "DELIVERY_POLL_INTERVAL_MS": "100",
    "DELIVERY_INITIAL_BACKOFF_S": "0.5",
    "DELIVERY_MAX_BACKOFF_S": "2",
    "RELAY_POLL_INTERVAL_MS": "100",
    # Each idle consumer asks the broker every fetch wait; 100 ms instead of 20 ms halves the idle
    # CPU of the broker and the services on 2 cores, for at most 0.1 s more per hop.
    "KAFKA_FETCH_MAX_WAIT_MS": "100",
    # Every trace that starts at the MLLP gateway is kept (its context says "sampled"); of the
    # traces that start inside a service (the bulk history has no parent) 1 in 100.
    "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
    "OTEL_TRACES_SAMPLER_ARG": "0.01",
}
PER_SERVICE_ENV: dict[str, dict[str, str]] = {}
GATEWAY = "mllp-gateway"
KIND_TO_EVENT = {
    "admit": "encounter.admitted",
    "readmission": "encounter.admitted",
    "ed_visit": "encounter.admitted",
    "transfer": "encounter.transferred",
    "discharge": "encounter.discharged",
}
ACK_PRIORITIES = ("urgent", "high")


# --------------------------------------------------------------------------------------------
# the webhook receiver


@dataclass
class ReceivedAlert:
    """One verified webhook delivery, as the demo shows it (ids and codes only)."""

    received_at: float
    notification_id: str
    organization_id: str
    kind: str
    priority: str
    recipient_role: str
    recipient_id: str
    member_id: str
    encounter_id: str | None
    retraction: bool
    latency_ms: float | None  # ADT accepted by the MLLP listener -> alert at the receiver


def verify_signature(secret: str, header: str, body: bytes, now: int, tolerance_s: int = 300) -> bool:
    """Check ``X-CTH-Signature: t=<unix>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>``."""
    try:
        parts = dict(item.split("=", 1) for item in header.split(","))
        timestamp = int(parts["t"])
        given = parts["v1"]
    except (KeyError, ValueError):
        return False
    if abs(now - timestamp) > tolerance_s:
        return False
    expected = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, given)


class WebhookReceiver:
    """An HTTP server on 127.0.0.1: one path per subscribing organization, signatures verified."""

    def __init__(self, accepted_at: dict[tuple[str, str], float]) -> None:
        self.port = 0  # bound by uvicorn at start (no race for a "free" port)
        self.secrets: dict[str, str] = {}
        self.alerts: list[ReceivedAlert] = []
        self.recent: deque[ReceivedAlert] = deque(maxlen=12)
        self.duplicates = 0
        self.bad_signatures = 0
        self._seen: set[str] = set()
        self._accepted_at = accepted_at
        self._server: uvicorn.Server | None = None
        self._task: asyncio.Task[Any] | None = None

    def url(self, organization_id: str) -> str:
        """One endpoint for every organization (one delivery lane, batched claims); the body's
        ``recipient.organization_id`` picks the secret that must verify the signature."""
        return f"http://127.0.0.1:{self.port}/hooks"

    def _app(self) -> FastAPI:
        api = FastAPI()

        @api.post("/hooks")
        async def receive(request: Request) -> Response:
            body = await request.body()
            try:
                organization_id = str(json.loads(body)["recipient"]["organization_id"])
            except (ValueError, KeyError, TypeError):
                self.bad_signatures += 1
                return Response(status_code=400)
            secret = self.secrets.get(organization_id)
            signature = request.headers.get("x-cth-signature", "")
            if secret is None or not verify_signature(secret, signature, body, int(time.time())):
                self.bad_signatures += 1
                return Response(status_code=401)
            self.record(organization_id, json.loads(body))
            return Response(status_code=204)

        return api

    def record(self, organization_id: str, alert: dict[str, Any]) -> None:
        now = time.time()
        if alert["id"] in self._seen:  # at-least-once delivery: the Idempotency-Key repeats
            self.duplicates += 1
            return
        self._seen.add(alert["id"])
        event_type = KIND_TO_EVENT.get(alert["kind"])
        accepted = self._accepted_at.get((alert.get("encounter_id") or "", event_type or ""))
        item = ReceivedAlert(
            received_at=now,
            notification_id=alert["id"],
            organization_id=organization_id,
            kind=alert["kind"],
            priority=alert["priority"],
            recipient_role=alert["recipient"]["role"],
            recipient_id=alert["recipient"]["id"],
            member_id=alert["member_id"],
            encounter_id=alert.get("encounter_id"),
            retraction=bool(alert.get("retraction")),
            latency_ms=(now - accepted) * 1000 if accepted is not None and not alert.get("retraction") else None,
        )
        self.alerts.append(item)
        self.recent.append(item)

    async def start(self) -> None:
        config = uvicorn.Config(self._app(), host="127.0.0.1", port=0, log_level="warning", lifespan="off")
        self._server = uvicorn.Server(config)
        self._task = asyncio.create_task(self._server.serve(), name="webhook-receiver")
        deadline = time.monotonic() + 10
        while not self._server.started:
            if self._task.done() or time.monotonic() > deadline:
                raise RuntimeError("the demo's webhook receiver did not start")
            await asyncio.sleep(0.02)
        self.port = int(self._server.servers[0].sockets[0].getsockname()[1])

    async def stop(self) -> None:
        if self._server is not None and self._task is not None:
            self._server.should_exit = True
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._task, 5)


# --------------------------------------------------------------------------------------------
# the MLLP gateway: where each care transition's trace starts


class TracedGateway:
    """The MLLP listener's sink: one span per accepted ADT message, then the acknowledged publish."""

    def __init__(self, publisher: EventPublisher, tracer: Tracer) -> None:
        self.publisher = publisher
        self.tracer = tracer
        self.accepted_at: dict[tuple[str, str], float] = {}
        self.accepted: Counter[str] = Counter()

    async def __call__(self, event: CloudEvent[Any]) -> None:
        attributes = {"cth.event_id": event.id, "cth.event_type": event.type, "cth.member_id": event.subject}
        name = f"mllp accept {event.type}"
        with self.tracer.start_as_current_span(name, kind=SpanKind.SERVER, attributes=attributes):
            await self.publisher.publish(event)
        encounter_id = getattr(event.data, "encounter_id", None)
        if encounter_id:
            self.accepted_at.setdefault((encounter_id, event.type), time.time())
        self.accepted[event.type] += 1


# --------------------------------------------------------------------------------------------
# the scenario


@dataclass
class ScenarioOptions:
    """Size and pace of the replayed month."""

    members: int = 5000
    seed: int = 1
    days: int = 30
    #: Simulated seconds per wall second during the month (history is sent as fast as possible).
    speed: float | None = 86_400.0  # None: as fast as possible
    acknowledge: bool = True
    settle_timeout: float = 120.0


@dataclass
class Outcomes:
    """What the services did, read from their schemas after the run."""

    counters: dict[str, ServiceCounters]
    attribution_changes: int
    gaps: Counter[str]
    referrals_routed: int
    referrals_unroutable: int
    leakage: int
    alerts_created: int
    alerts_delivered: int
    alerts_acknowledged: int
    deliveries_pending: int
    deliveries_dead: int


@dataclass
class ScenarioResult:
    """Everything the summary (and the e2e tests) look at."""

    options: ScenarioOptions
    population: Population
    replay: ReplaySummary
    gateway_accepted: Counter[str]
    backfill: dict[str, Any]
    mllp_stats: dict[str, int]
    outcomes: Outcomes
    alerts: list[ReceivedAlert]
    bad_signatures: int
    spans_dir: Path
    run_dir: Path
    inbox_url: str | None
    pcp_example: str | None
    acknowledged_by_demo: int
    elapsed: dict[str, float] = field(default_factory=dict)

    def latencies_ms(self) -> list[float]:
        return [a.latency_ms for a in self.alerts if a.latency_ms is not None]

    def percentile(self, q: float) -> float | None:
        values = sorted(self.latencies_ms())
        if not values:
            return None
        if len(values) == 1:
            return values[0]
        return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


async def read_outcomes(database_url: str) -> Outcomes:
    """Count the business outcomes in the services' schemas."""
    counters = await all_counters(database_url)
    conn = await asyncpg.connect(database_url)
    try:
        changes = await conn.fetchval(
            "SELECT coalesce(sum(published), 0) FROM attribution.outbox_published WHERE topic LIKE '%attribution'"
        )
        gaps = Counter({r["status"]: r["n"] for r in await conn.fetch(
            "SELECT status, count(*) AS n FROM care_gaps.gaps GROUP BY status")})
        gaps["opened"] = sum(v for k, v in gaps.items() if k != "opened")
        referrals = await conn.fetchrow(
            "SELECT count(*) FILTER (WHERE chosen_npi IS NOT NULL) AS routed,"
            " count(*) FILTER (WHERE status = 'unroutable') AS unroutable,"
            " count(*) FILTER (WHERE leakage_detected_at IS NOT NULL) AS leakage FROM referrals.referrals"
        )
        alerts = await conn.fetchrow(
            "SELECT count(*) FILTER (WHERE NOT retraction) AS created,"
            " count(*) FILTER (WHERE acknowledged_at IS NOT NULL) AS acknowledged FROM notifications.notifications"
        )
        deliveries = await conn.fetchrow(
            "SELECT count(*) FILTER (WHERE status = 'delivered') AS delivered,"
            " count(*) FILTER (WHERE status = 'pending') AS pending,"
            " count(*) FILTER (WHERE status = 'dead') AS dead FROM notifications.deliveries"
        )
    finally:
        await conn.close()
    return Outcomes(
        counters=counters,
        attribution_changes=int(changes),
        gaps=gaps,
        referrals_routed=int(referrals["routed"]),
        referrals_unroutable=int(referrals["unroutable"]),
        leakage=int(referrals["leakage"]),
        alerts_created=int(alerts["created"]),
        alerts_delivered=int(deliveries["delivered"]),
        alerts_acknowledged=int(alerts["acknowledged"]),
        deliveries_pending=int(deliveries["pending"]),
        deliveries_dead=int(deliveries["dead"]),
    )


async def _register_subscriptions(
    stack: Stack, fleet: Fleet, receiver: WebhookReceiver, organizations: list[str]
) -> dict[str, str]:
    """Token + care_team webhook subscription per organization; returns the org tokens."""
    conn = await asyncpg.connect(stack.database_url, server_settings={"search_path": "notifications"})
    try:
        tokens = {org: await issue_token(conn, org, label="demo organization") for org in organizations}
    finally:
        await conn.close()
    async with httpx.AsyncClient(base_url=fleet["notifications"].base_url, timeout=10) as api:
        for org, token in tokens.items():
            response = await api.post(
                "/subscriptions",
                headers={"Authorization": f"Bearer {token}"},
                json={"audience": "care_team", "channel": "webhook", "endpoint_url": receiver.url(org)},
            )
            if response.status_code != 201:
                raise RuntimeError(f"subscription for {org} refused: HTTP {response.status_code} {response.text}")
            receiver.secrets[org] = response.json()["secret"]
    return tokens


async def _inbox_link(stack: Stack, fleet: Fleet, population: Population) -> tuple[str, str]:
    """A recipient-scoped token for one PCP and the inbox page URL that signs in with it."""
    pcp = next(p for p in population.providers if p.role == "pcp")
    conn = await asyncpg.connect(stack.database_url, server_settings={"search_path": "notifications"})
    try:
        token = await issue_token(conn, pcp.tin, recipient_id=pcp.npi, label="demo PCP inbox")
    finally:
        await conn.close()
    return f"{fleet['notifications'].base_url}/inbox/page#token={token}", pcp.npi


class Acknowledger:
    """Simulated clinicians: acknowledge urgent and high encounter alerts through the inbox API."""

    def __init__(self, base_url: str, tokens: dict[str, str]) -> None:
        self.base_url = base_url
        self.tokens = tokens
        self.done = 0
        self.failed = 0
        self._next = 0

    async def run_once(self, alerts: list[ReceivedAlert]) -> None:
        """Acknowledge the urgent and high alerts received since the last call (errors are counted)."""
        pending = alerts[self._next:]
        self._next = len(alerts)
        wanted = [a for a in pending if a.priority in ACK_PRIORITIES and a.kind in KIND_TO_EVENT and not a.retraction]
        if not wanted:
            return
        async with httpx.AsyncClient(base_url=self.base_url, timeout=30) as api:
            for alert in wanted:
                token = self.tokens.get(alert.organization_id)
                try:
                    response = await api.post(
                        f"/inbox/{alert.notification_id}/ack", headers={"Authorization": f"Bearer {token}"}
                    )
                except httpx.HTTPError:
                    self.failed += 1
                    continue
                if response.status_code < 300:
                    self.done += 1
                else:
                    self.failed += 1


ProgressHook = Callable[[str, dict[str, Any]], None]


async def run_scenario(
    stack: Stack,
    run_dir: Path,
    options: ScenarioOptions,
    *,
    on_update: ProgressHook | None = None,
    keep_running: Callable[[Fleet, ScenarioResult], Any] | None = None,
) -> ScenarioResult:
    """Run the whole scenario against ``stack``; stops the services before returning."""
    notify = on_update or (lambda _stage, _info: None)
    timings: dict[str, float] = {}
    started = time.monotonic()
    population = Population(PopulationConfig(members=options.members, seed=options.seed, days=options.days))
    await stack.create_topics()
    fleet = Fleet(stack, run_dir, env=SERVICE_ENV, per_service_env=PER_SERVICE_ENV)
    fleet.start()
    receiver: WebhookReceiver | None = None
    listener: MllpListener | None = None
    gateway_provider = TracerProvider(resource=Resource.create({"service.name": GATEWAY}), sampler=ALWAYS_ON)
    gateway_provider.add_span_processor(
        BatchSpanProcessor(JsonLinesSpanExporter(fleet.spans_dir / f"{GATEWAY}.jsonl"), schedule_delay_millis=500)
    )
    adt_broker = None
    try:
        notify("services", {"state": "starting", "log_dir": str(run_dir)})
        # while the services start: read the timeline up to the month (claims history to a CSV)
        period_start = datetime.combine(population.config.start, datetime.min.time(), tzinfo=UTC)
        timeline = population.timeline()
        history, claims_file, claim_lines, first_live = _split_history(timeline, period_start, run_dir)
        await fleet.wait_healthy()
        timings["services healthy"] = time.monotonic() - started
        notify("services", {"state": "healthy"})

        settings = StackSettings(kafka_bootstrap_servers=stack.kafka_bootstrap_servers, topic_prefix=stack.topic_prefix)
        adt_broker = make_broker(settings, client_id=GATEWAY, tracer_provider=gateway_provider)
        await connect_broker(adt_broker)
        adt_publisher = EventPublisher(adt_broker, topic_prefix=stack.topic_prefix)
        gateway = TracedGateway(adt_publisher, gateway_provider.get_tracer(GATEWAY))
        receiver = WebhookReceiver(gateway.accepted_at)
        await receiver.start()
        organizations = sorted({p.tin for p in population.providers} | {"payer"})
        tokens = await _register_subscriptions(stack, fleet, receiver, organizations)
        inbox_url, pcp_npi = await _inbox_link(stack, fleet, population)
        notify("ready", {"inbox_url": inbox_url, "pcp": pcp_npi, "spans_dir": str(fleet.spans_dir),
                         "subscriptions": len(organizations)})

        index = MemberIndex()
        listener = MllpListener(AdtTranslator(index, population.adt_settings()), gateway, MllpSettings(port=0))
        await listener.start()
        acknowledger = Acknowledger(fleet["notifications"].base_url, tokens)

        async def watch() -> None:
            while True:
                fleet.check_alive()
                if options.acknowledge:
                    await acknowledger.run_once(receiver.alerts)
                notify("tick", {"alerts": receiver.recent})
                await asyncio.sleep(0.3)

        watcher = asyncio.create_task(watch(), name="demo-watch")

        async def guarded(coro: Any) -> Any:
            """Await ``coro`` unless a service dies first (then raise ServiceDied)."""
            task = asyncio.ensure_future(coro)
            done, _ = await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
            if task not in done:
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task
                watcher.result()
            return task.result()

        try:
            async with open_publisher(settings, client_id="cth-demo-producer") as publisher:
                # 1. directory and roster as events (every service needs them)
                notify("history", {"stage": "directory + roster", "total": len(history)})
                first = await guarded(replay(history, publisher=publisher, index=index,
                                             on_progress=lambda s: notify("history", {"summary": s})))
                for_attribution = sum(1 for item in history if _topic(item) in SERVICES[0].topics)
                await guarded(_wait_consumed(stack, "attribution", for_attribution))
                timings["directory + roster"] = time.monotonic() - started
                # 2. a year of claims history: attribution's bulk backfill (COPY + set-based recompute)
                notify("backfill", {"claims": claim_lines})
                backfill = await guarded(_bulk_backfill(fleet, claims_file, population.config.start.isoformat()))
                # the services take in the history (attribution changes -> care-gaps, notifications)
                # before the month starts, so the month's latencies are not queued behind it
                await _settle(stack, receiver, options.settle_timeout,
                              lambda _stage, info: notify("history-settle", info), watcher)
                timings["history loaded"] = time.monotonic() - started
                notify("backfill-done", {"report": backfill})
                # 3. the month at accelerated time; ADT over MLLP
                month = itertools.chain([first_live] if first_live else [], timeline)
                summary = await guarded(replay(
                    month,
                    publisher=publisher,
                    mllp=("127.0.0.1", listener.port),
                    index=index,
                    speed=options.speed,
                    on_progress=lambda s: notify("replay", {"summary": s, "period_start": period_start}),
                ))
            summary.items += first.items
            summary.events.update(first.events)
            timings["month replayed"] = time.monotonic() - started
            notify("replay-done", {"summary": summary})
            await _settle(stack, receiver, options.settle_timeout, notify, watcher)
            timings["settled"] = time.monotonic() - started
            if options.acknowledge:
                await acknowledger.run_once(receiver.alerts)
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError, ServiceDied):
                await watcher
        outcomes = await read_outcomes(stack.database_url)
        result = ScenarioResult(
            options=options, population=population, replay=summary, gateway_accepted=gateway.accepted,
            mllp_stats={k: v for k, v in vars(listener.stats).items() if isinstance(v, int)},
            backfill=backfill, outcomes=outcomes, alerts=list(receiver.alerts), bad_signatures=receiver.bad_signatures,
            spans_dir=fleet.spans_dir, run_dir=run_dir, inbox_url=inbox_url, pcp_example=pcp_npi,
            acknowledged_by_demo=acknowledger.done, elapsed=timings,
        )
        if keep_running is not None:
            await keep_running(fleet, result)
        return result
    finally:
        if listener is not None:
            await listener.stop()
        if adt_broker is not None:
            with contextlib.suppress(Exception):
                await adt_broker.stop()
        codes = await fleet.stop()
        if receiver is not None:
            await receiver.stop()
        gateway_provider.shutdown()
        notify("stopped", {"codes": codes})


def _topic(item: TimelineItem) -> str | None:
    payload = item.payload
    return registered_types()[payload.type].topic if isinstance(payload, CloudEvent) else None


CLAIM_COLUMNS = ("claim_id", "member_id", "status", "replaces_claim_id", "line_number", "procedure_code",
                 "rendering_npi", "rendering_tin", "service_from", "allowed_amount")


def _split_history(
    timeline: Iterator[TimelineItem], period_start: datetime, run_dir: Path
) -> tuple[list[TimelineItem], Path, int, TimelineItem | None]:
    """Read the timeline up to ``period_start``: claims go to a CSV for the bulk backfill,
    everything else (directory, roster) is returned; also the first item of the period."""
    history: list[TimelineItem] = []
    path = run_dir / "claims-history.csv"
    lines = 0
    with path.open("w", newline="") as handle:
        out = csv.writer(handle)
        out.writerow(CLAIM_COLUMNS)
        for item in timeline:
            if item.at >= period_start:
                return history, path, lines, item
            payload = item.payload
            if isinstance(payload, CloudEvent) and isinstance(payload.data, ClaimAdjudicated):
                claim = payload.data
                for line in claim.lines:
                    out.writerow((claim.claim_id, claim.member_id, claim.status, claim.replaces_claim_id or "",
                                  line.line_number, line.procedure_code, line.rendering_npi, line.rendering_tin,
                                  line.service_from.isoformat(), line.allowed_amount))
                    lines += 1
            else:
                history.append(item)
    return history, path, lines, None


async def _wait_consumed(stack: Stack, service: str, count: int, timeout: float = 120.0) -> None:
    """Wait until ``service`` has consumed at least ``count`` events (its inbox)."""
    schema = next(spec.schema for spec in SERVICES if spec.name == service)
    deadline = time.monotonic() + timeout
    conn = await asyncpg.connect(stack.database_url)
    try:
        while await conn.fetchval(f"SELECT count(*) FROM {schema}.inbox") < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{service} did not consume {count} events within {timeout:.0f} s")
            await asyncio.sleep(0.5)
    finally:
        await conn.close()


async def _bulk_backfill(fleet: Fleet, claims_file: Path, as_of: str) -> dict[str, Any]:
    """``python -m attribution.bulk claims FILE --as-of DATE`` with the attribution service's env."""
    attribution = fleet["attribution"]
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "attribution.bulk", "claims", str(claims_file), "--as-of", as_of,
        env=attribution.env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await process.communicate()
    if process.returncode != 0:
        raise RuntimeError(f"attribution bulk backfill failed (exit {process.returncode}):\n{err.decode()[-3000:]}")
    report: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
    return report


async def _settle(
    stack: Stack, receiver: WebhookReceiver, timeout: float, notify: ProgressHook, watcher: asyncio.Task[None]
) -> None:
    """Wait until no consumer lags, no outbox holds rows and no delivery is pending (twice in a row)."""
    deadline = time.monotonic() + timeout
    quiet = 0
    lag: dict[str, int] = {}
    backlog = 0
    outboxes = " + ".join(f"(SELECT count(*) FROM {spec.schema}.outbox)" for spec in SERVICES)
    conn = await asyncpg.connect(stack.database_url)
    try:
        async with LagProbe(stack) as probe:
            while time.monotonic() < deadline:
                if watcher.done():
                    watcher.result()
                lag = await probe.lag()
                row = await conn.fetchrow(  # cheap: small tables, no scan of the inboxes
                    f"SELECT {outboxes} AS backlog,"
                    " (SELECT count(*) FROM notifications.deliveries WHERE status = 'pending') AS pending"
                )
                backlog, pending = int(row["backlog"]), int(row["pending"])
                notify("settle", {"lag": lag, "backlog": backlog, "pending": pending})
                if sum(lag.values()) == 0 and backlog == 0 and pending == 0:
                    quiet += 1
                    if quiet >= 2:
                        return
                else:
                    quiet = 0
                await asyncio.sleep(0.5)
    finally:
        await conn.close()
    raise TimeoutError(f"the services did not catch up within {timeout:.0f} s (lag {lag}, outbox {backlog})")


# --------------------------------------------------------------------------------------------
# the terminal UI


class DemoView:
    """Progress bars, the live alert panel and the per-service table."""

    def __init__(self, options: ScenarioOptions) -> None:
        self.options = options
        self.progress = Progress(
            TextColumn("{task.description:<26}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[note]}"),
            TimeElapsedColumn(), console=console,
        )
        self.history = self.progress.add_task("directory + roster", total=None, note="", start=False)
        self.backfill = self.progress.add_task("claims history (bulk)", total=None, note="", start=False)
        self.month = self.progress.add_task("month (accelerated days)", total=options.days, note="", start=False)
        self.settle = self.progress.add_task("services catching up", total=None, note="", start=False, visible=False)
        self.alerts: list[Any] = []
        self.alert_count = 0
        self.service_rows: dict[str, ServiceCounters] = {}
        self.live = Live(self.render(), console=console, refresh_per_second=4, transient=False)

    def render(self) -> Group:
        table = Table(title="alerts delivered to the webhook (no names)", expand=True, title_justify="left")
        for column in ("received", "kind", "priority", "recipient role", "member"):
            table.add_column(column)
        for alert in list(self.alerts)[-10:]:
            colour = {"urgent": "red", "high": "yellow"}.get(alert.priority, "white")
            table.add_row(
                datetime.fromtimestamp(alert.received_at).strftime("%H:%M:%S.%f")[:-3],
                alert.kind + (" (retraction)" if alert.retraction else ""),
                f"[{colour}]{alert.priority}[/{colour}]",
                alert.recipient_role,
                alert.member_id,
            )
        return Group(self.progress, Panel(table, border_style="cyan"))

    def update(self, stage: str, info: dict[str, Any]) -> None:
        if stage == "services" and info["state"] == "starting":
            console.print(f"[bold]services[/bold] starting (logs in {info['log_dir']})")
        elif stage == "ready":
            console.print(f"{info['subscriptions']} webhook subscriptions registered (one per organization)")
            console.print(f"[bold]inbox page[/bold] (PCP {info['pcp']}): {info['inbox_url']}")
        elif stage == "history":
            if "total" in info:
                self.progress.update(self.history, total=info["total"])
                self.progress.start_task(self.history)
            else:
                history: ReplaySummary = info["summary"]
                self.progress.update(self.history, completed=history.items, note=f"{history.published} acked")
        elif stage == "backfill":
            self.progress.update(self.history, completed=self.progress.tasks[self.history].total)
            self.progress.update(self.backfill, note=f"{info['claims']} claim lines → attribution.bulk")
            self.progress.start_task(self.backfill)
        elif stage == "backfill-done":
            report = info["report"]
            self.progress.update(self.backfill, total=1, completed=1,
                                 note=f"{report['rows']} lines, {report['changes_emitted']} attribution changes")
        elif stage == "history-settle":
            lag = ", ".join(f"{k} {v}" for k, v in info["lag"].items() if v) or "none"
            self.progress.update(self.backfill, note=f"services taking it in: lag {lag}, outbox {info['backlog']}")
        elif stage == "replay":
            summary: ReplaySummary = info["summary"]
            start: datetime = info["period_start"]
            at = summary.last_item_at
            if at is not None:
                self.progress.start_task(self.month)
                day = min(self.options.days, max(0.0, (at - start) / timedelta(days=1)))
                self.progress.update(self.month, completed=round(day, 1),
                                     note=f"{at:%b %d}  {summary.items} items, {sum(summary.hl7.values())} ADT")
        elif stage == "replay-done":
            self.progress.update(self.month, completed=self.options.days)
            self.progress.start_task(self.settle)
            self.progress.update(self.settle, visible=True)
        elif stage == "settle":
            lag = ", ".join(f"{k} {v}" for k, v in info["lag"].items() if v) or "none"
            self.progress.update(self.settle, note=f"lag: {lag}; outbox {info['backlog']},"
                                 f" deliveries pending {info['pending']}")
        elif stage == "tick":
            self.alerts = list(info["alerts"])
        self.live.update(self.render())


def print_summary(result: ScenarioResult, total_s: float) -> None:
    o = result.outcomes
    out = Console()
    table = Table(title=f"Summary: {result.options.members} members, {result.options.days} days, "
                        f"seed {result.options.seed}", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    hl7 = sum(result.replay.hl7.values())
    mllp = result.mllp_stats
    table.add_row("events in", f"{result.replay.items} items: {result.replay.published} events published, "
                  f"{hl7} HL7 ADT over MLLP ({mllp.get('accepted', 0)} accepted, "
                  f"{mllp.get('unmatched', 0)} non-members, {mllp.get('rejected', 0)} rejected), "
                  f"{result.backfill.get('rows', 0)} claim lines of history by bulk backfill")
    table.add_row("attribution changes", str(o.attribution_changes))
    table.add_row("care gaps", f"{o.gaps['opened']} opened, {o.gaps['closed']} closed, {o.gaps['overdue']} overdue, "
                  f"{o.gaps['open']} still open, {o.gaps['not_applicable']} not applicable")
    table.add_row("referrals", f"{o.referrals_routed} routed, {o.referrals_unroutable} unroutable, "
                  f"{o.leakage} leakage detected")
    table.add_row("alerts", f"{o.alerts_created} created, {o.alerts_delivered} delivered by webhook "
                  f"({len(result.alerts)} verified at the receiver, {result.bad_signatures} bad signatures), "
                  f"{o.alerts_acknowledged} acknowledged")
    p50, p99 = result.percentile(50), result.percentile(99)
    latency = "n/a" if p50 is None or p99 is None else f"p50 {p50:.0f} ms, p99 {p99:.0f} ms"
    table.add_row("ADT accepted → alert received", f"{latency} over {len(result.latencies_ms())} encounter alerts")
    dlq = {name: c.dead_letters for name, c in o.counters.items() if c.dead_letters}
    table.add_row("dead letters", ", ".join(f"{k} {v}" for k, v in dlq.items()) or "none")
    table.add_row("took", f"{total_s:.1f} s (" + ", ".join(f"{k} at {v:.1f} s" for k, v in result.elapsed.items())
                  + ")")
    out.print(table)
    services = Table(title="per service", title_justify="left")
    for column in ("service", "events consumed", "events produced", "outbox backlog", "dead letters"):
        services.add_column(column, justify="right" if column != "service" else "left")
    for name, c in o.counters.items():
        services.add_row(name, str(c.inbox), str(c.published), str(c.outbox_backlog), str(c.dead_letters))
    out.print(services)
    member = next((a.member_id for a in result.alerts if a.kind == "discharge"), None)
    if member:
        out.print(f"trace of a discharge: [bold]cth-trace --spans {result.spans_dir} --member {member}[/bold]")
    out.print(f"logs and spans: {result.run_dir}")


def check(result: ScenarioResult) -> list[str]:
    """What must have happened for the demo to count as a success."""
    problems = []
    o = result.outcomes
    if result.replay.failed or not result.replay.published:
        problems.append(f"replay: {result.replay.failed} events not acknowledged by the broker")
    if not result.mllp_stats.get("accepted"):
        problems.append("no ADT message was accepted over MLLP")
    if not o.attribution_changes:
        problems.append("no attribution change")
    if not o.gaps["opened"]:
        problems.append("no care gap opened")
    if not result.alerts:
        problems.append("no alert reached the webhook receiver")
    if result.bad_signatures:
        problems.append(f"{result.bad_signatures} webhook deliveries had a bad signature")
    return problems


async def _fresh_slice(stack: Stack) -> Stack:
    """On external infrastructure: a new database and topic prefix for this run (ids repeat per seed)."""
    from urllib.parse import urlsplit, urlunsplit

    token = f"{int(time.time())}{os.getpid() % 1000:03d}"
    database = f"cth_demo_{token}"
    admin = await asyncpg.connect(stack.database_url)
    try:
        await admin.execute(f'CREATE DATABASE "{database}"')
    finally:
        await admin.close()
    parts = urlsplit(stack.database_url)
    url = urlunsplit((parts.scheme, parts.netloc, f"/{database}", parts.query, parts.fragment))
    console.print(f"external infrastructure: database {database}, topic prefix demo{token}.")
    return Stack(stack.kafka_bootstrap_servers, url, f"demo{token}.", env=stack.env)


async def _main(options: ScenarioOptions, kafka: str | None, postgres: str | None, keep: bool) -> int:
    started = time.monotonic()
    run_dir = Path(tempfile.mkdtemp(prefix="cth-demo-"))
    console.rule("[bold]Care Transitions Hub demo")
    view = DemoView(options)

    async def hold(fleet: Fleet, result: ScenarioResult) -> None:
        view.live.stop()
        print_summary(result, time.monotonic() - started)
        console.print("[bold]--keep-running[/bold]: everything stays up; Ctrl-C stops it")
        for name, service in fleet.members.items():
            console.print(f"  {name}: {service.base_url}")
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        import signal

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()

    stack = Stack.start(kafka=kafka, postgres=postgres, use_env=False)
    if stack.kind == "external":
        stack = await _fresh_slice(stack)
    try:
        where = "embedded" if stack.kind == "embedded" else "external"
        console.print(f"{where} stack: Kafka {stack.kafka_bootstrap_servers}, "
                      f"PostgreSQL {stack.database_url.rsplit('@', 1)[-1]}  ({time.monotonic() - started:.1f} s)")
        with view.live:
            try:
                result = await run_scenario(stack, run_dir, options, on_update=view.update,
                                            keep_running=hold if keep else None)
            except ServiceDied as exc:
                view.live.stop()
                console.print(f"\n[red]service {exc.name} died[/red] (exit code {exc.returncode}); log {exc.log_path}:")
                console.print(exc.tail, markup=False, highlight=False)
                return 1
            except TimeoutError as exc:
                view.live.stop()
                console.print(f"[red]{exc}[/red]; logs in {run_dir}")
                return 1
    finally:
        stack.close()
    if not keep:
        print_summary(result, time.monotonic() - started)
    problems = check(result)
    for problem in problems:
        console.print(f"[red]✗ {problem}")
    console.print(f"demo took {time.monotonic() - started:.1f} s")
    return 1 if problems else 0


@app.command()
def main(
    members: int = typer.Option(5000, help="Synthetic members"),
    seed: int = typer.Option(1, help="Seed: same seed, same population and timeline"),
    days: int = typer.Option(30, help="Days of the replayed period"),
    speed: float = typer.Option(86_400.0, help="Simulated seconds per wall second in the month; 0 = max"),
    keep_running: bool = typer.Option(False, "--keep-running", help="Leave everything up until Ctrl-C"),
    kafka: str | None = typer.Option(None, envvar="KAFKA_BOOTSTRAP_SERVERS", help="External Kafka (else embedded)"),
    postgres: str | None = typer.Option(None, envvar="DATABASE_URL", help="External PostgreSQL URL (else embedded)"),
) -> None:
    """Replay a synthetic payer's month through the four services and show what happened."""
    options = ScenarioOptions(members=members, seed=seed, days=days, speed=speed or None)
    os.environ.pop("OTEL_SPANS_FILE", None)
    raise typer.Exit(asyncio.run(_main(options, kafka, postgres, keep_running)))


if __name__ == "__main__":
    app()
