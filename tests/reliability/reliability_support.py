"""Shared helpers of the crash, duplicate/order and shutdown reliability tests (and bench/soak.py).

* :func:`build_scenario`: a deterministic input (synthetic population, HL7 v2 ADT translated
  in-process) cut into *phases*. Kafka orders a member's events within one topic only; the
  services' results legitimately depend on the order of facts across topics (a care team known
  before or after an admission, a tenant-wide event clock, provider capacity shared by members).
  Publishing phase by phase and letting the whole system settle between phases makes the final
  state a function of the input alone, so a faulty run can be compared with a fault-free one.
* :class:`Hub`: the four services as OS processes against one isolated environment, with
  kill/restart, and :meth:`Hub.settle`, a barrier that waits until every event published so far
  (and every event the services produced from it) has been consumed by every subscriber, every
  outbox is empty and every webhook delivery is settled. It counts, it never sleeps a fixed time.
* :func:`snapshot`: the comparable state of each service schema (processing timestamps, random
  ids and arrival-order artefacts excluded) plus the events the services emitted, by id.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import uvicorn
from aiokafka import AIOKafkaConsumer
from cth_shared.auth import issue_token
from cth_shared.contracts import CloudEvent
from cth_shared.contracts.events import MemberEnrolled
from cth_shared.embedded import free_port
from cth_shared.producers.hl7_adt import AdtEvent, AdtTranslator, MemberIndex
from cth_shared.producers.publish import EventPublisher, connect_broker, topic_for
from cth_shared.producers.synthetic import Population, PopulationConfig
from cth_shared.testing.infra import ServiceProcess
from fastapi import FastAPI, Request, Response
from faststream.kafka import KafkaBroker

# --------------------------------------------------------------------------------------------
# the services

#: module -> (schema, catalog topics it consumes, topic it produces to)
SERVICES: dict[str, tuple[str, tuple[str, ...], str]] = {
    "attribution": ("attribution", ("enrollment", "claims", "virtual-visits", "provider-directory"), "attribution"),
    "referrals": (
        "referrals", ("referral-requests", "encounters", "provider-directory", "enrollment", "claims"), "referrals"),
    "care_gaps": ("care_gaps", ("encounters", "virtual-visits", "claims", "enrollment", "attribution"), "care-gaps"),
    "notifications": ("notifications", ("encounters", "attribution", "care-gaps", "referrals"), "notifications"),
}
OUTPUT_TOPICS = tuple(spec[2] for spec in SERVICES.values())
PAYER_ORG = "payer"

#: Settings that make a run reproducible and quick: the overdue clock runs on event time only
#: (the synthetic timeline is in the past, so the wall clock would flag everything), fast
#: webhook retries and a short delivery lease (a killed worker's claim expires quickly).
SERVICE_ENV = {
    "CLOCK": "event",
    "OTEL_INSTRUMENT_ASYNCPG": "false",
    "LOG_LEVEL": "WARNING",
    "DELIVERY_INITIAL_BACKOFF_S": "0.2",
    "DELIVERY_MAX_BACKOFF_S": "1",
    "DELIVERY_POLL_INTERVAL_MS": "50",
    "DELIVERY_LEASE_S": "3",
    "DELIVERY_BATCH_PER_ENDPOINT": "50",
    "CIRCUIT_FAILURE_THRESHOLD": "1000",
    "CIRCUIT_OPEN_S": "1",
    "DB_POOL_MAX_SIZE": "4",
    "SHUTDOWN_GRACE_S": "20",
    # Reservation expiry runs on wall time (the synthetic period is in the past): keep it out.
    "RESERVATION_EXPIRY_DAYS": "36500",
}


def trace(message: str) -> None:
    """Progress lines on stderr when CTH_RELIABILITY_TRACE is set (long runs, the soak)."""
    if os.environ.get("CTH_RELIABILITY_TRACE"):
        print(f"{time.strftime('%H:%M:%S')} {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------
# the input


@dataclass
class Scenario:
    """Input events (already translated from HL7) in phases, plus what was skipped."""

    phases: list[list[CloudEvent[Any]]]
    skipped: Counter[str] = field(default_factory=Counter)

    @property
    def events(self) -> list[CloudEvent[Any]]:
        return [event for phase in self.phases for event in phase]

    def kinds(self) -> Counter[str]:
        return Counter(event.type for event in self.events)

    def __len__(self) -> int:
        return sum(len(phase) for phase in self.phases)


#: Within a live chunk, facts are published in this order of topic groups, settling between:
#: the member and provider facts, then the care facts that move attribution, then the
#: requests and hospital events whose alerts use the care team in force.
KIND_GROUPS: tuple[frozenset[str], ...] = (
    frozenset({"provider.upserted", "member.enrolled", "member.updated", "member.pcp_selected",
               "member.disenrolled"}),
    frozenset({"claim.adjudicated"}),
    frozenset({"virtual_visit.completed"}),
    frozenset({"referral.requested"}),
)


def crash_population(members: int = 5000, seed: int = 20261123, days: int = 12, lookback_days: int = 130,
                     ) -> PopulationConfig:
    """A population whose timeline exercises all four services (higher clinical rates than default)."""
    return PopulationConfig(
        members=members, seed=seed, days=days, lookback_days=lookback_days, admissions_per_year=0.8,
        ed_visits_per_year=1.2, observation_per_year=0.3, referrals_per_year=1.5, v1c_visits_per_year=6.0,
    )


def build_scenario(config: PopulationConfig, *, chunk_days: int = 1) -> Scenario:
    """Generate and translate the timeline; cut it into settle-between phases.

    Phases 1 and 2: directory, then roster. Phase 3: the claims history before the live period. Then
    the live period in chunks of ``chunk_days``, each chunk split by :data:`KIND_GROUPS`
    (ADT events last).
    """
    population = Population(config)
    index = MemberIndex()
    translator = AdtTranslator(index, population.adt_settings())
    origin: datetime | None = None
    setup: list[CloudEvent[Any]] = []
    history: list[CloudEvent[Any]] = []
    chunks: dict[int, list[list[CloudEvent[Any]]]] = defaultdict(lambda: [[] for _ in range(len(KIND_GROUPS) + 1)])
    skipped: Counter[str] = Counter()
    seen_ids: set[str] = set()
    setup_done = False
    for item in population.timeline():
        if item.kind == "event":
            event = item.payload
            assert isinstance(event, CloudEvent)
            if isinstance(event.data, MemberEnrolled):
                index.add(event.data)
        else:
            result = translator.translate(item.payload)
            if not isinstance(result, AdtEvent):
                skipped[result.reason] += 1
                continue
            event = result.event
        if event.id in seen_ids:
            skipped["duplicate_id"] += 1
            continue
        seen_ids.add(event.id)
        origin = origin or item.at
        if not setup_done and event.type in ("provider.upserted", "member.enrolled") and item.at == origin:
            setup.append(event)
            continue
        setup_done = True
        if item.at.date() < config.start:
            history.append(event)
            continue
        chunk = (item.at.date() - config.start).days // chunk_days
        group = next((i for i, kinds in enumerate(KIND_GROUPS) if event.type in kinds), len(KIND_GROUPS))
        chunks[chunk][group].append(event)
    directory = [event for event in setup if event.type == "provider.upserted"]
    roster = [event for event in setup if event.type != "provider.upserted"]
    phases = [directory, roster, history]
    for chunk in sorted(chunks):
        phases.extend(group for group in chunks[chunk] if group)
    return Scenario([phase for phase in phases if phase], skipped)


# --------------------------------------------------------------------------------------------
# a webhook receiver that records receipts by idempotency key


@dataclass
class Receiver:
    """A real HTTP endpoint on 127.0.0.1 recording every POST by its Idempotency-Key."""

    port: int = field(default_factory=free_port)
    receipts: list[str] = field(default_factory=list)
    _server: uvicorn.Server | None = None
    _task: asyncio.Task[Any] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/alerts"

    @property
    def keys(self) -> set[str]:
        return set(self.receipts)

    async def __aenter__(self) -> Receiver:
        app = FastAPI()

        @app.post("/alerts")
        async def receive(request: Request) -> Response:
            await request.body()
            self.receipts.append(request.headers.get("idempotency-key", ""))
            return Response(status_code=200)

        self._server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning",
                                                     lifespan="off"))
        self._task = asyncio.create_task(self._server.serve())
        deadline = time.monotonic() + 10
        while not self._server.started:
            assert time.monotonic() < deadline, "webhook receiver did not start"
            await asyncio.sleep(0.05)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None and self._task is not None
        self._server.should_exit = True
        await self._task


# --------------------------------------------------------------------------------------------
# the hub: four service processes on one isolated environment


class NotSettled(AssertionError):
    """The system did not reach a consistent, idle state in time."""


class Hub:
    """The four services of one isolated environment, the input publisher and the settle barrier."""

    def __init__(self, env: Any, log_dir: Path, *, extra_env: dict[str, str] | None = None,
                 services: Sequence[str] = tuple(SERVICES)) -> None:
        self.env = env
        self.label = log_dir.name
        self.log_dir = log_dir
        self.processes: dict[str, ServiceProcess] = {}
        for module in services:
            service_env = env.service_env(HTTP_PORT=str(free_port()), **{**SERVICE_ENV, **(extra_env or {})})
            self.processes[module] = ServiceProcess(module, service_env, log_dir=log_dir, autostart=False)
        self.published: Counter[str] = Counter()  # distinct input ids per physical topic
        self._ids: set[str] = set()
        self._broker: KafkaBroker | None = None
        self._publisher: EventPublisher | None = None
        self.subscription_secret: str | None = None
        self.phase_seconds: list[tuple[int, float]] = []
        self._probe: asyncpg.Connection | None = None

    # ---------------------------------------------------------------- lifecycle
    async def start(self) -> None:
        await asyncio.gather(*(self._launch(module) for module in self.processes))
        self._broker = KafkaBroker(self.env.kafka_bootstrap_servers)
        await connect_broker(self._broker)
        self._publisher = EventPublisher(self._broker, topic_prefix=self.env.topic_prefix, window=1000)

    async def stop(self) -> None:
        if self._probe is not None:
            self._probe.terminate()
            self._probe = None
        await asyncio.gather(*(p.aterminate(timeout=20) for p in self.processes.values()))
        if self._broker is not None:
            with contextlib.suppress(Exception):
                await self._broker.stop()

    async def restart(self, module: str) -> None:
        await self._launch(module)

    async def _launch(self, module: str) -> None:
        """Start and wait until healthy; a port taken meanwhile by another process gets a new one."""
        process = self.processes[module]
        process.start()
        await process.wait_healthy_on_a_free_port(timeout=240)  # a loaded machine (CI) can be slow to answer

    def logs(self) -> str:
        return "\n".join(p.log_tail(30) for p in self.processes.values())

    async def subscribe_webhook(self, url: str, kinds: Sequence[str] | None = None) -> None:
        """A webhook of the payer organization for its care managers' alerts (through the API)."""
        conn = await asyncpg.connect(self.env.database_url, server_settings={"search_path": "notifications"})
        try:
            token = await issue_token(conn, PAYER_ORG, label="reliability test")
        finally:
            await conn.close()
        body: dict[str, Any] = {"audience": "care_team", "channel": "webhook", "endpoint_url": url}
        if kinds is not None:
            body["kinds"] = list(kinds)
        async with httpx.AsyncClient(base_url=self.processes["notifications"].base_url, timeout=10) as api:
            response = await api.post("/subscriptions", json=body, headers={"Authorization": f"Bearer {token}"})
        assert response.status_code == 201, response.text
        self.subscription_secret = response.json()["secret"]

    # ---------------------------------------------------------------- input
    async def publish(self, events: Iterable[CloudEvent[Any]]) -> int:
        """Publish ``events`` (pipelined, acknowledged before returning); returns how many."""
        assert self._publisher is not None
        count = 0
        for event in events:
            await self._publisher.send(event)
            count += 1
            if event.id not in self._ids:
                self._ids.add(event.id)
                self.published[topic_for(event, self.env.topic_prefix)] += 1
        await self._publisher.flush()
        return count

    async def publish_raw(self, topic: str, key: str, payload: bytes) -> None:
        """One already-serialised record (no accounting: for poison input)."""
        assert self._broker is not None
        await self._broker.publish(payload, topic=self.env.topic(topic), key=key.encode())

    # ---------------------------------------------------------------- the barrier
    async def connect(self) -> asyncpg.Connection:
        return await asyncpg.connect(self.env.database_url, timeout=5)

    async def progress(self, conn: asyncpg.Connection) -> dict[str, Any]:
        """Counts the barrier compares (one consistent read per schema)."""
        state: dict[str, Any] = {"outbox": {}, "published": Counter(), "inbox": {}, "pending_deliveries": 0}
        for module, (schema, _topics, _out) in SERVICES.items():
            if module not in self.processes:
                continue
            if not await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", f"{schema}.outbox_published"):
                state["outbox"][schema] = -1  # not migrated yet
                continue
            state["outbox"][schema] = await conn.fetchval(f"SELECT count(*) FROM {schema}.outbox")
            for row in await conn.fetch(f"SELECT topic, published FROM {schema}.outbox_published"):
                state["published"][row["topic"]] += row["published"]
            state["inbox"][schema] = {
                row["topic"]: row["n"]
                for row in await conn.fetch(f"SELECT topic, count(*) AS n FROM {schema}.inbox GROUP BY topic")
            }
        if "notifications" in self.processes and state["outbox"].get("notifications", -1) >= 0:
            state["pending_deliveries"] = await conn.fetchval(
                "SELECT count(*) FROM notifications.deliveries WHERE status = 'pending'")
        return state

    def backlog(self, state: dict[str, Any]) -> int:
        """Records published (input and produced) that subscribers have not consumed yet."""
        missing = 0
        for module, (schema, topics, _out) in SERVICES.items():
            if module not in self.processes:
                continue
            inbox = state["inbox"].get(schema, {})
            for name in topics:
                topic = self.env.topic(name)
                missing += max(0, self.published[topic] + state["published"][topic] - inbox.get(topic, 0))
        return missing

    def _consistent(self, state: dict[str, Any]) -> list[str]:
        problems = []
        for schema, pending in state["outbox"].items():
            if pending:
                problems.append(f"{schema}: {pending} outbox rows")
        for module, (schema, topics, _out) in SERVICES.items():
            if module not in self.processes:
                continue
            inbox = state["inbox"].get(schema, {})
            for name in topics:
                topic = self.env.topic(name)
                expected = self.published[topic] + state["published"][topic]
                if inbox.get(topic, 0) != expected:
                    problems.append(f"{schema} consumed {inbox.get(topic, 0)}/{expected} of {name}")
        if state["pending_deliveries"]:
            problems.append(f"{state['pending_deliveries']} webhook deliveries pending")
        return problems

    async def settle(self, timeout: float = 120.0, on_wait: Callable[[], Awaitable[None]] | None = None) -> None:
        """Wait until everything published so far went through every service (see module doc)."""
        deadline = time.monotonic() + timeout
        previous: dict[str, Any] | None = None
        problems: list[str] = ["not checked"]
        while True:
            try:
                if self._probe is None or self._probe.is_closed():
                    self._probe = await self.connect()
                state = await self.progress(self._probe)
                problems = self._consistent(state)
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
                state, problems = {}, [f"database unavailable ({type(exc).__name__})"]
                if self._probe is not None:
                    self._probe.terminate()
                    self._probe = None
            if not problems and state == previous:
                return  # consistent twice in a row with no movement in between
            previous = state if not problems else None
            if time.monotonic() > deadline:
                raise NotSettled(f"not settled after {timeout:.0f}s: {problems[:8]}\n{self.logs()}")
            if on_wait is not None:
                await on_wait()
            await asyncio.sleep(0.1 if problems else 0.05)

    async def run(self, scenario: Scenario, *, on_phase: Callable[[int], Awaitable[None]] | None = None,
                  settle_timeout: float = 180.0) -> None:
        """Publish phase by phase, settling after each (``on_phase(i)`` runs after publishing phase i)."""
        for number, phase in enumerate(scenario.phases):
            started = time.monotonic()
            await self.publish(phase)
            if on_phase is not None:
                await on_phase(number)
            await self.settle(max(settle_timeout, len(phase) * 0.1))
            self.phase_seconds.append((len(phase), time.monotonic() - started))
            trace(f"{self.label} phase {number}: {len(phase)} events in {time.monotonic() - started:.1f}s")


# --------------------------------------------------------------------------------------------
# comparable state

#: Columns that record processing, not facts: when a row was written, database-generated ids,
#: random ids of produced events, secrets, retry bookkeeping and arrival-order artefacts
#: (per-recipient sequence numbers are gapless per recipient but interleave across members;
#: the event clock's detection instant is whichever event moved the tenant clock first).
VOLATILE_COLUMNS = frozenset({"updated_at", "created_at", "received_at", "recorded_at", "exported_at"})
VOLATILE_BY_TABLE: dict[str, frozenset[str]] = {
    "dead_letters": frozenset({"id", "partition", "offset", "original", "key"}),
    "providers": frozenset({"change_seq"}),
    "notifications": frozenset({"sequence", "source_event_id"}),
    "subscriptions": frozenset({"subscription_id", "secret", "endpoint_url"}),
    "deliveries": frozenset({"delivery_id", "subscription_id", "attempts", "next_attempt_at", "leased_until",
                             "first_attempt_at", "delivered_at", "dead_at", "last_error", "endpoint_url",
                             "traceparent"}),
    "gaps": frozenset({"overdue_detected_at"}),
    "alert_facts": frozenset({"source_event_id"}),
}
#: Tables compared by other means (inbox: ids per input topic; outbox: empty) or not facts.
SKIPPED_TABLES = frozenset({"inbox", "outbox", "outbox_published", "api_tokens", "group_exports",
                            "delivery_attempts", "endpoint_circuits", "schema_migrations", "endpoint_state"})


async def schema_state(conn: asyncpg.Connection, schema: str, prefix: str) -> dict[str, list[tuple[str, ...]]]:
    """Every table of ``schema`` (minus :data:`SKIPPED_TABLES`) as sorted text tuples."""
    tables = [r["table_name"] for r in await conn.fetch(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = $1 AND table_type = 'BASE TABLE'"
        " ORDER BY table_name", schema)]
    state: dict[str, list[tuple[str, ...]]] = {}
    for table in tables:
        if table in SKIPPED_TABLES or table.startswith("_"):
            continue
        drop = VOLATILE_COLUMNS | VOLATILE_BY_TABLE.get(table, frozenset())
        columns = [r["column_name"] for r in await conn.fetch(
            "SELECT column_name FROM information_schema.columns WHERE table_schema = $1 AND table_name = $2"
            " ORDER BY ordinal_position", schema, table) if r["column_name"] not in drop]
        select = ", ".join(f'"{c}"::text' for c in columns)
        rows = await conn.fetch(f'SELECT {select} FROM "{schema}"."{table}"')
        state[table] = sorted(
            tuple(_canonical_text(table, columns, row)) for row in rows
        )
    return state


def _canonical_text(table: str, columns: list[str], row: asyncpg.Record) -> list[str]:
    values = dict(zip(columns, ("NULL" if value is None else value for value in row), strict=True))
    if table == "gaps" and values.get("closing_event_id", "").startswith("event-clock-"):
        values["closing_event_id"] = "event-clock"  # which event moved the tenant clock past the window
    if table == "gaps" and values.get("status") in ("closed", "not_applicable"):
        # The owner of a closed gap is whoever owned it when it closed. A visit both closes gaps
        # (care-gaps reads it) and moves attribution (care-gaps hears of that through the
        # attribution topic): which of the two arrives first is not ordered by the design.
        values["owner_role"] = values["owner_id"] = "at-closing"
    if values.get("kind") == "gap_overdue":
        # An overdue alert happens at the event clock's detection instant (see VOLATILE_BY_TABLE).
        values["event_time"] = "detected"
        for column in ("content", "facts"):
            if column in values:
                values[column] = json.dumps({k: v for k, v in json.loads(values[column]).items()
                                             if k not in ("event_time", "detected_at")}, sort_keys=True)
    if table == "referrals" and values.get("decision", "NULL") != "NULL":
        values["decision"] = json.dumps(_without(json.loads(values["decision"]), "spare_capacity"), sort_keys=True)
    return [values[c] for c in columns]


def _without(value: Any, key: str) -> Any:
    """``value`` with ``key`` removed at every depth (capacity left at routing time depends on
    which other members' referrals were routed first, an order Kafka does not define)."""
    if isinstance(value, dict):
        return {k: _without(v, key) for k, v in value.items() if k != key}
    if isinstance(value, list):
        return [_without(v, key) for v in value]
    return value


@dataclass
class Snapshot:
    """The comparable final state of one run."""

    tables: dict[str, dict[str, list[tuple[str, ...]]]]
    input_ids: dict[str, dict[str, list[str]]]  # schema -> topic -> sorted consumed input ids
    outputs: dict[str, Counter[str]]  # output topic -> canonical event -> how many distinct ids
    output_records: Counter[str]  # output topic -> records on the topic (redeliveries included)
    output_ids: Counter[str]  # output topic -> distinct ids
    published: dict[str, dict[str, int]]  # schema -> topic -> rows the relay published (exactly once)

    def differences(self, other: Snapshot, limit: int = 6) -> list[str]:
        """Human-readable differences (empty when equal)."""
        found: list[str] = []
        for schema in sorted(set(self.tables) | set(other.tables)):
            mine, theirs = self.tables.get(schema, {}), other.tables.get(schema, {})
            for table in sorted(set(mine) | set(theirs)):
                a, b = Counter(mine.get(table, [])), Counter(theirs.get(table, []))
                if a != b:
                    only_a, only_b = list((a - b).elements()), list((b - a).elements())
                    found.append(f"{schema}.{table}: {len(only_a)} rows only here, {len(only_b)} only there;"
                                 f" here {only_a[:limit]} there {only_b[:limit]}")
        for label, mine_d, theirs_d in (("consumed input ids", self.input_ids, other.input_ids),
                                        ("published", self.published, other.published)):
            if mine_d != theirs_d:
                found.append(f"{label} differ: {_dict_diff(mine_d, theirs_d)}")
        for topic in sorted(set(self.outputs) | set(other.outputs)):
            a, b = self.outputs.get(topic, Counter()), other.outputs.get(topic, Counter())
            if a != b:
                only_a, only_b = list((a - b).elements()), list((b - a).elements())
                found.append(f"emitted {topic}: {len(only_a)} only here, {len(only_b)} only there;"
                             f" here {only_a[:limit]} there {only_b[:limit]}")
        return found


def _dict_diff(a: dict[str, Any], b: dict[str, Any]) -> str:
    keys = sorted(set(a) | set(b))
    return "; ".join(f"{k}: {a.get(k)!r} != {b.get(k)!r}" for k in keys if a.get(k) != b.get(k))[:2000]


#: Fields of emitted events that are processing artefacts (see VOLATILE_BY_TABLE); delivery
#: receipts happen on wall time, and a delivery interrupted by a crash is attempted again.
VOLATILE_EVENT_FIELDS = frozenset({"sequence", "source_event_id", "detected_at", "delivered_at", "attempts"})
WALL_TIME_EVENTS = frozenset({"notification.delivered", "notification.failed", "notification.acknowledged"})


def canonical_event(value: bytes) -> tuple[str, str, str]:
    """``(id, type, canonical content)`` of an emitted CloudEvent: envelope id, time and
    causation/correlation left out (ids of other services' events are random)."""
    envelope = json.loads(value)
    data = {k: v for k, v in (envelope.get("data") or {}).items() if k not in VOLATILE_EVENT_FIELDS}
    overdue = envelope.get("type") == "care_gap.overdue" or data.get("kind") == "gap_overdue"
    stable_time = None if overdue or envelope.get("type") in WALL_TIME_EVENTS else envelope.get("time")
    content = json.dumps({"type": envelope.get("type"), "subject": envelope.get("subject"), "time": stable_time,
                          "data": data}, sort_keys=True)
    return envelope["id"], envelope.get("type", ""), content


async def read_topic(env: Any, topic: str, timeout: float = 180) -> list[bytes]:
    """Every record value on a (catalog) topic, read up to its end offsets.

    Callers read after the services settled, so the end offsets are final. No consumer group
    (no join to wait for) and no "idle for a while" heuristic (on a loaded machine the first
    fetch can be slower than any idle window, which once read an empty topic); the end offsets
    come from ``log_end_offsets`` (the embedded broker's ListOffsets answer is short)."""
    from aiokafka import TopicPartition
    from cth_shared.broker import log_end_offsets

    consumer = AIOKafkaConsumer(bootstrap_servers=env.kafka_bootstrap_servers, group_id=None,
                                enable_auto_commit=False, max_partition_fetch_bytes=4 * 1024 * 1024,
                                **env.consumer_overrides())
    await consumer.start()
    values: list[bytes] = []
    try:
        name = env.topic(topic)
        deadline = time.monotonic() + timeout
        partitions = consumer.partitions_for_topic(name)
        while not partitions:
            assert time.monotonic() < deadline, f"no metadata for {topic}"
            await consumer.topics()
            partitions = consumer.partitions_for_topic(name)
        ends = await log_end_offsets(consumer, [TopicPartition(name, p) for p in sorted(partitions)])
        remaining = {tp for tp, end in ends.items() if end > 0}
        consumer.assign(sorted(remaining, key=lambda tp: tp.partition))
        if remaining:
            await consumer.seek_to_beginning(*remaining)
        while remaining:
            assert time.monotonic() < deadline, f"reading {topic} did not finish: {len(values)} records so far"
            for tp, batch in (await consumer.getmany(*remaining, timeout_ms=300, max_records=5000)).items():
                values.extend(r.value for r in batch if r.value is not None and r.offset < ends[tp])
                if batch and batch[-1].offset >= ends[tp] - 1:
                    remaining.discard(tp)
    finally:
        await consumer.stop()
    return values


async def snapshot(hub: Hub, *, read_outputs: bool = True) -> Snapshot:
    """The comparable state of ``hub``'s environment after :meth:`Hub.settle`."""
    env = hub.env
    prefix = env.topic_prefix
    conn = await hub.connect()
    try:
        tables: dict[str, dict[str, list[tuple[str, ...]]]] = {}
        input_ids: dict[str, dict[str, list[str]]] = {}
        published: dict[str, dict[str, int]] = {}
        for module, (schema, _topics, _out) in SERVICES.items():
            if module not in hub.processes:
                continue
            tables[schema] = await schema_state(conn, schema, prefix)
            rows = await conn.fetch(f"SELECT topic, event_id FROM {schema}.inbox ORDER BY event_id")
            by_topic: dict[str, list[str]] = defaultdict(list)
            for row in rows:
                name = row["topic"].removeprefix(prefix)
                if name not in OUTPUT_TOPICS:
                    by_topic[name].append(row["event_id"])
            input_ids[schema] = dict(by_topic)
            published[schema] = {row["topic"].removeprefix(prefix): row["published"]
                                 for row in await conn.fetch(f"SELECT topic, published FROM {schema}.outbox_published")}
    finally:
        await conn.close()
    outputs: dict[str, Counter[str]] = {}
    records: Counter[str] = Counter()
    ids: Counter[str] = Counter()
    if read_outputs:
        values = await asyncio.gather(*(read_topic(env, topic) for topic in OUTPUT_TOPICS))
        for topic, topic_values in zip(OUTPUT_TOPICS, values, strict=True):
            distinct: dict[str, str] = {}
            for value in topic_values:
                event_id, _kind, content = canonical_event(value)
                previous = distinct.setdefault(event_id, content)
                assert previous == content, f"{topic}: event id {event_id} carried two different contents"
            records[topic] = len(topic_values)
            ids[topic] = len(distinct)
            outputs[topic] = Counter(distinct.values())
    return Snapshot(tables, input_ids, outputs, records, ids, published)


def logical_duplicates(snap: Snapshot) -> dict[str, int]:
    """Per output topic: distinct event ids that repeat an already emitted fact."""
    return {topic: sum(n - 1 for n in counts.values() if n > 1) for topic, counts in snap.outputs.items()}


def summary(snap: Snapshot) -> dict[str, Any]:
    """Row counts per table and events per output topic (for reports)."""
    return {
        "rows": {f"{s}.{t}": len(rows) for s, tables in snap.tables.items() for t, rows in tables.items()},
        "emitted_ids": dict(snap.output_ids),
        "emitted_records": dict(snap.output_records),
    }


# --------------------------------------------------------------------------------------------
# faults


@dataclass
class FaultPlan:
    """Seeded fault moments: (phase index, service) kills and one PostgreSQL restart phase."""

    kills: list[tuple[int, str]]
    postgres_phase: int | None

    @classmethod
    def random(cls, seed: int, phases: int, services: Sequence[str], kills_per_service: int,
               restart_postgres: bool) -> FaultPlan:
        """``kills_per_service`` rounds in which every service is killed (each at its own random
        moment; restarts overlap, which keeps the run short). The first round lands in the bulk
        history phase (2: big batches in flight), the others in distinct random live phases.
        PostgreSQL restarts once, in the last quarter of the run, away from the kill rounds."""
        rng = random.Random(seed)
        rounds = [2, *rng.sample(range(3, max(4, phases * 3 // 4)), kills_per_service - 1)]
        kills = [(phase, module) for phase in rounds for module in services]
        postgres = rng.randrange(max(3, phases * 3 // 4), phases) if restart_postgres else None
        return cls(sorted(kills), postgres)


def memory_mib(pid: int) -> float:
    """Resident set size of a process (psutil)."""
    import psutil

    return psutil.Process(pid).memory_info().rss / (1024 * 1024)


def env_int(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


def as_date(value: str) -> date:
    return date.fromisoformat(value)
