"""Whole-pipeline benchmark: the four services as separate processes on the embedded stack.

What runs (all on this machine):

* the embedded stack (Tansu broker + PostgreSQL) and the catalog topics;
* attribution, referrals, care-gaps and notifications, each ``python -m <service>`` (as deployed);
* this process: the load generator (an aiokafka producer, ``acks=all``) and an observer consuming the
  ``notifications`` topic (``notification.created`` = an alert raised and queued for its recipient).

Reference data first: the synthetic population's provider directory, roster (``member.enrolled``) and
claims history go in through the topics; the run waits until attribution has attributed every member
and care-gaps + notifications have read the care teams (``attribution.changed``).

The workload: HL7 v2 ADT messages from :mod:`cth_shared.producers.synthetic`, translated in-process
by :class:`~cth_shared.producers.hl7_adt.AdtTranslator` (what the MLLP listener does) into
``encounter.*`` events, before any timing starts. Each measured phase sends fresh copies of that
stream (event ids and encounter ids suffixed per copy, so every copy is new work: new alerts, new gaps,
new referrals), flat out or at a fixed offered rate. Copy *k* is also moved *k* eras later in time (an era
is the slice's days plus five weeks, whole weeks so weekdays stay), so the members' history grows the way
a plan's does, year after year, instead of every copy landing on the same days as the ones before it
(which piled up to twenty overlapping encounters per member and day window by the end of a run and made
every readmission check and gap read slower than production would see). Later eras lie in the future, so
care-gaps runs with ``MAX_FUTURE_SKEW_MINUTES`` set past the last era: its event clock is otherwise capped
at wall time + 1 hour, and gaps of a future copy would never become overdue.

Measured per phase:

* sustained events/s: encounter events in / (last alert out - first event sent), after the whole
  pipeline drained (every service's inbox holds every input, outboxes empty);
* end-to-end latency: from the broker's acknowledgement of the encounter event ("accepted") to the
  arrival of each ``notification.created`` it caused at the observer (p50/p99/p99.9). Encounter alerts
  name their source event exactly; gap-opened and referral alerts are two hops away and are matched
  to the latest accepted event of the same encounter (the discharge);
* CPU (cores used) and peak RSS of each service, PostgreSQL and the broker (psutil);
* DLQ rows and the peak outbox backlog of each service.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, NamedTuple

import asyncpg
import psutil
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from cth_shared.contracts.topics import all_topic_specs
from cth_shared.embedded import EmbeddedStack, create_catalog_topics, free_port
from cth_shared.producers.hl7_adt import AdtEvent, AdtTranslator, MemberIndex
from cth_shared.producers.publish import record_headers
from cth_shared.producers.synthetic import Population, PopulationConfig
from cth_shared.testing.infra import ServiceProcess

SERVICES = {  # name -> (module, schema)
    "attribution": ("attribution", "attribution"),
    "referrals": ("referrals", "referrals"),
    "care-gaps": ("care_gaps", "care_gaps"),
    "notifications": ("notifications", "notifications"),
}
Progress = Callable[[str], None]


def _quiet(_: str) -> None:
    return None


# --------------------------------------------------------------------------------------------- workload


class SentEvent(NamedTuple):
    """One encounter event as a phase sends it: the record (key, value, and the headers the producer
    toolkit sets on every event, as deployed producers do) and what the latency matching needs."""

    key: bytes
    value: bytes
    event_id: str
    encounter_id: str
    headers: list[tuple[str, bytes]]


@dataclass
class Workload:
    """Reference events (published once) and the ADT-derived encounter events (copied per phase)."""

    reference: list[tuple[str, bytes, bytes]]  # (topic, key, value)
    encounters: list[dict[str, Any]]  # CloudEvent JSON objects
    adt_messages: int
    unmatched: int
    translate_s: float
    members: int
    days: int
    reference_counts: dict[str, int] = field(default_factory=dict)
    copies: int = 0
    #: Copies moved in time so far: the next copy is moved this many eras later.
    eras_used: int = 0

    @property
    def era(self) -> timedelta:
        """How far each copy lands after the one before: the slice plus five weeks, in whole weeks."""
        return timedelta(weeks=-(-(self.days + 35) // 7))

    def copy(self, limit: int | None = None) -> list[SentEvent]:
        """A fresh copy with ids suffixed so all of it is new work,
        and every instant moved ``eras_used`` eras later (see the module docstring)."""
        self.copies += 1
        suffix = f"-c{self.copies}"
        shift = self.era * self.eras_used
        self.eras_used += 1
        out = []
        for event in self.encounters[:limit] if limit else self.encounters:
            data = dict(event["data"], encounter_id=event["data"]["encounter_id"] + suffix)
            for name in _INSTANTS:
                if data.get(name):
                    data[name] = _later(data[name], shift)
            clone = dict(event, id=event["id"] + suffix, data=data, time=_later(event["time"], shift))
            if clone.get("correlationid"):
                clone["correlationid"] = clone["correlationid"] + suffix
            headers = [(k, v.encode()) for k, v in record_headers(clone["id"], clone["type"]).items()]
            out.append(SentEvent(clone["subject"].encode(), json.dumps(clone).encode(), clone["id"],
                                 data["encounter_id"], headers))
        return out


#: The instants of an encounter event's data (besides the envelope's ``time``) that a copy moves.
_INSTANTS = ("admitted_at", "transferred_at", "discharged_at", "cancelled_at")


def _later(instant: str, shift: timedelta) -> str:
    return instant if not shift else (datetime.fromisoformat(instant) + shift).isoformat()


#: care-gaps' event clock may run this far ahead of wall time in the bench (the later eras are future dates).
FUTURE_SKEW_MINUTES = 200 * 366 * 24 * 60


def build_workload(members: int, days: int, seed: int = 9, progress: Progress = _quiet) -> Workload:
    """Generate the population and translate its ADT feed (not timed as pipeline work).

    Claims history is thin (1 claim per member-year over 180 days) to keep the reference load short; it only
    feeds attribution's plurality step.
    """
    config = PopulationConfig(members=members, days=days, seed=seed, lookback_days=180, claims_per_year=1.0)
    population = Population(config)
    index = MemberIndex()
    translator = AdtTranslator(index, population.adt_settings())
    reference: list[tuple[str, bytes, bytes]] = []
    counts: Counter[str] = Counter()
    hl7_messages: list[str] = []
    start = config.start
    for item in population.timeline():
        if item.kind == "hl7":
            hl7_messages.append(str(item.payload))
            continue
        event = item.payload
        assert not isinstance(event, str)
        if event.type == "member.enrolled":
            index.add(event.data)
        if item.at.date() >= start and event.type != "member.enrolled":
            continue  # live-period visits/referrals/claims: the benchmark drives ADT only
        topic = {"provider.upserted": "provider-directory", "member.enrolled": "enrollment",
                 "claim.adjudicated": "claims", "virtual_visit.completed": "virtual-visits",
                 "referral.requested": "referral-requests"}[event.type]
        reference.append((topic, event.subject.encode(), event.to_json_bytes()))
        counts[topic] += 1
    progress(f"population: {members} members, {sum(counts.values())} reference events {dict(counts)}, "
             f"{len(hl7_messages)} ADT messages")
    started = time.perf_counter()
    encounters: list[dict[str, Any]] = []
    unmatched = 0
    for message in hl7_messages:
        result = translator.translate(message)
        if isinstance(result, AdtEvent):
            encounters.append(json.loads(result.event.to_json_bytes()))
        else:
            unmatched += 1
    translate_s = time.perf_counter() - started
    encounters.sort(key=lambda e: e["time"])
    progress(f"translated {len(encounters)} ADT messages to encounter events in {translate_s:.1f}s "
             f"({len(encounters) / max(translate_s, 1e-9):,.0f}/s; {unmatched} unmatched patients)")
    return Workload(reference, encounters, len(hl7_messages), unmatched, translate_s, members, days, dict(counts))


# --------------------------------------------------------------------------------------------- harness


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    rank = min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))
    return round(ordered[rank], 1)


class Observer:
    """Consumes the notifications topic for the whole run; remembers when each alert arrived."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self._consumer = AIOKafkaConsumer(
            topic, bootstrap_servers=bootstrap, group_id=f"bench-observer-{os.getpid()}-{time.time_ns()}",
            auto_offset_reset="earliest", session_timeout_ms=6000, heartbeat_interval_ms=500,
            max_poll_records=2000, fetch_max_bytes=16 * 1024 * 1024, fetch_max_wait_ms=10,
        )
        self.alerts: list[tuple[float, str, str, str]] = []  # (arrival, kind, source_event_id, correlation)
        self.last_arrival = 0.0
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self._consumer.start()
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            batches = await self._consumer.getmany(timeout_ms=100, max_records=2000)
            now = time.perf_counter()
            for records in batches.values():
                for record in records:
                    headers = dict(record.headers or ())
                    if headers.get("ce_type") != b"notification.created":
                        continue
                    event = json.loads(record.value)
                    data = event["data"]
                    self.alerts.append((now, data["kind"], data["source_event_id"], event.get("correlationid") or ""))
                    self.last_arrival = now

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        await self._consumer.stop()


#: The topics each service consumes (by schema): what its ``main`` subscribes to.
SUBSCRIPTIONS: dict[str, tuple[str, ...]] = {
    schema: tuple(importlib.import_module(f"{module}.main").TOPICS) for module, schema in SERVICES.values()
}


class GroupOffsets:
    """How many records of each topic every service's consumer group has consumed: the sum of its
    committed offsets over the topic's partitions (offsets start at 0 and count records).

    The progress probe ``wait_drained`` polls four times a second during every phase. It used to count
    the services' inbox rows, a scan of tables that grow by each consumed event (hundreds of thousands
    of rows by the last phases): PostgreSQL CPU taken from the system under test on a machine whose
    two cores the pipeline keeps busy. An offset fetch is one small broker request per partition.
    """

    def __init__(self, bootstrap: str, topic_prefix: str = "") -> None:
        self._prefix = topic_prefix
        self._partitions = {spec.name: spec.partitions for spec in all_topic_specs(topic_prefix)}
        # No subscription: these consumers never join their group, they only read its commits.
        self._consumers = {
            schema: AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=f"{topic_prefix}{service}",
                                     enable_auto_commit=False)
            for service, (_module, schema) in SERVICES.items()
        }

    async def start(self) -> None:
        await asyncio.gather(*(consumer.start() for consumer in self._consumers.values()))

    async def stop(self) -> None:
        await asyncio.gather(*(consumer.stop() for consumer in self._consumers.values()), return_exceptions=True)

    async def consumed(self, schema: str) -> dict[str, int]:
        """Records consumed by the service of ``schema``, by (unprefixed) topic it subscribes to."""
        consumer = self._consumers[schema]
        partitions = [(topic, TopicPartition(f"{self._prefix}{topic}", p)) for topic in SUBSCRIPTIONS[schema]
                      for p in range(self._partitions[f"{self._prefix}{topic}"])]
        offsets = await asyncio.gather(*(consumer.committed(tp) for _, tp in partitions))
        seen: Counter[str] = Counter()
        for (topic, _), offset in zip(partitions, offsets, strict=True):
            seen[topic] += offset or 0
        return dict(seen)


class Sampler:
    """CPU time and peak RSS of the services, PostgreSQL and the broker; peak outbox backlog."""

    def __init__(self, pids: dict[str, int], db: asyncpg.Pool) -> None:
        self._procs = {name: psutil.Process(pid) for name, pid in pids.items()}
        self._db = db
        self.peak_rss: dict[str, float] = defaultdict(float)
        self.peak_outbox: dict[str, int] = defaultdict(int)
        self._cpu0: dict[str, float] = {}
        self._machine0 = 0.0
        self._t0 = 0.0
        self._task: asyncio.Task[None] | None = None

    def _members(self, name: str) -> list[psutil.Process]:
        proc = self._procs[name]
        try:
            return [proc, *proc.children(recursive=True)] if name in ("postgres",) else [proc]
        except psutil.Error:
            return []

    def _cpu(self, name: str) -> float:
        total = 0.0
        for proc in self._members(name):
            with contextlib.suppress(psutil.Error):
                times = proc.cpu_times()
                total += times.user + times.system
        return total

    def _rss(self, name: str) -> float:
        total = 0
        for proc in self._members(name):
            with contextlib.suppress(psutil.Error):
                total += proc.memory_info().rss
        return total / 1e6

    async def _run(self) -> None:
        while True:
            for name in self._procs:
                self.peak_rss[name] = max(self.peak_rss[name], self._rss(name))
            for schema in (s for _, s in SERVICES.values()):
                with contextlib.suppress(Exception):
                    backlog = await self._db.fetchval(f"SELECT count(*) FROM {schema}.outbox")
                    self.peak_outbox[schema] = max(self.peak_outbox[schema], int(backlog))
            await asyncio.sleep(0.5)

    @staticmethod
    def _machine_busy() -> float:
        """CPU seconds the whole machine spent busy (every process, the kernel's too) since boot."""
        times = psutil.cpu_times()
        return sum(times) - times.idle - getattr(times, "iowait", 0.0)

    def start(self) -> None:
        self._cpu0 = {name: self._cpu(name) for name in self._procs}
        self._machine0 = self._machine_busy()
        self._t0 = time.perf_counter()
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> dict[str, Any]:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        wall = time.perf_counter() - self._t0
        machine = self._machine_busy() - self._machine0
        return {
            name: {
                "cpu_cores": round((self._cpu(name) - self._cpu0[name]) / wall, 2) if wall else None,
                "cpu_s": round(self._cpu(name) - self._cpu0[name], 2),
                "peak_rss_mb": round(self.peak_rss[name], 1),
            }
            for name in self._procs
        } | {"outbox_peak_backlog": dict(self.peak_outbox),
             "machine": {"cpu_cores": round(machine / wall, 2) if wall else None, "cpu_s": round(machine, 2),
                         "cores": psutil.cpu_count()}}


def cpu_ms_per_event(usage: dict[str, Any], events: int) -> dict[str, float]:
    """CPU milliseconds per encounter event, per process and for the whole machine (``machine``: every
    process and the kernel, the harness's own producer and observer included): where the CPU that bounds a
    saturated machine's throughput goes."""
    if not events:
        return {}
    return {name: round(1000 * u["cpu_s"] / events, 3) for name, u in usage.items() if "cpu_s" in u}


class Pipeline:
    """The embedded stack plus the four services; phases of load against it."""

    def __init__(self, workdir: Path, progress: Progress = _quiet, batch_max_records: int = 500) -> None:
        self.workdir = workdir
        self.progress = progress
        self.stack = EmbeddedStack(postgres_settings={
            "max_connections": "300",
            "shared_preload_libraries": "pg_stat_statements",  # statements per event, per phase
            "pg_stat_statements.max": "5000",
        })
        self.statements_available = False
        self.services: dict[str, ServiceProcess] = {}
        self.db: asyncpg.Pool | None = None
        self.observer: Observer | None = None
        self.offsets: GroupOffsets | None = None
        self.accepted: dict[str, float] = {}  # event id -> broker ack time
        self.encounter_accepted: dict[str, float] = {}  # encounter id -> latest ack time of its events
        self.sent_total = 0
        self.batch_max_records = batch_max_records
        self.tracing = False
        self.sql_spans = False
        self._reference_counts: dict[str, int] = {}
        self.caught_up: dict[str, float] = {}  # schema -> when it last caught up (see wait_drained)

    # -------------------------------------------------------------- lifecycle
    async def __aenter__(self) -> Pipeline:
        await self.stack.astart()
        await create_catalog_topics(self.stack.kafka_bootstrap_servers)
        self.db = await asyncpg.create_pool(self.stack.database_url, min_size=1, max_size=4)
        try:
            await self.db.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
            self.statements_available = True
        except asyncpg.PostgresError:
            self.statements_available = False
        self.observer = Observer(self.stack.kafka_bootstrap_servers, "notifications")
        await self.observer.start()
        self.offsets = GroupOffsets(self.stack.kafka_bootstrap_servers)
        await self.offsets.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop_services()
        if self.observer:
            await self.observer.stop()
        if self.offsets:
            await self.offsets.stop()
        if self.db:
            await self.db.close()
        await self.stack.astop()

    def service_env(self, tracing: bool, sql_spans: bool = False) -> dict[str, str]:
        env = {
            "KAFKA_BOOTSTRAP_SERVERS": self.stack.kafka_bootstrap_servers,
            "DATABASE_URL": self.stack.database_url,
            "KAFKA_SESSION_TIMEOUT_MS": "6000",
            "KAFKA_HEARTBEAT_INTERVAL_MS": "500",
            "LOG_LEVEL": "WARNING",
            "BATCH_MAX_RECORDS": str(self.batch_max_records),
            "CLOCK": "event",  # care-gaps: overdue on event time (a replayed feed), no wall sweeps mid-run
            "MAX_FUTURE_SKEW_MINUTES": str(FUTURE_SKEW_MINUTES),  # care-gaps: the later eras are future dates
        }
        if tracing:
            env["OTEL_SPANS_FILE"] = str(self.workdir / f"spans-{int(time.time())}.jsonl")
            env["OTEL_INSTRUMENT_ASYNCPG"] = "true" if sql_spans else "false"
            env["OTEL_SDK_DISABLED"] = "false"
        else:
            env["OTEL_SDK_DISABLED"] = "true"
            env["OTEL_INSTRUMENT_ASYNCPG"] = "false"
        return env

    async def start_services(self, tracing: bool, sql_spans: bool = False) -> None:
        await self.stop_services()
        self.tracing = tracing
        self.sql_spans = tracing and sql_spans
        env = self.service_env(tracing, sql_spans)
        for name, (module, _schema) in SERVICES.items():
            self.services[name] = ServiceProcess(module, {**env, "HTTP_PORT": str(free_port())},
                                                 log_dir=self.workdir / "logs")
        await asyncio.gather(*(svc.wait_healthy_on_a_free_port(timeout=90) for svc in self.services.values()))
        mode = "off"
        if tracing:
            mode = "on: spans to a JSONL file" + (", per-SQL-statement spans" if sql_spans else "")
        self.progress(f"services up (tracing {mode}): "
                      + ", ".join(f"{n} pid {s.pid}" for n, s in self.services.items()))

    async def stop_services(self) -> None:
        await asyncio.gather(*(svc.aterminate(20) for svc in self.services.values()))
        self.services = {}

    def pids(self) -> dict[str, int]:
        pids = {name: svc.pid for name, svc in self.services.items() if svc.pid}
        stack_pids = self.stack.pids()
        if stack_pids.get("postgres"):
            pids["postgres"] = stack_pids["postgres"]
        if stack_pids.get("kafka"):
            pids["broker"] = stack_pids["kafka"]
        pids["harness"] = os.getpid()  # the producer, the observer and these samples
        return pids  # type: ignore[return-value]

    # -------------------------------------------------------------- database probes
    async def inbox_by_topic(self, schema: str) -> dict[str, int]:
        assert self.db
        rows = await self.db.fetch(f"SELECT topic, count(*) AS n FROM {schema}.inbox GROUP BY topic")
        return {r["topic"]: int(r["n"]) for r in rows}

    async def published(self, schema: str) -> dict[str, int]:
        assert self.db
        rows = await self.db.fetch(f"SELECT topic, published FROM {schema}.outbox_published")
        return {r["topic"]: int(r["published"]) for r in rows}

    async def traffic(self) -> tuple[int, int]:
        """Records the services have consumed (their inboxes) and published (not to DLQs), in total."""
        consumed = published = 0
        for _, schema in SERVICES.values():
            consumed += sum((await self.inbox_by_topic(schema)).values())
            published += sum(n for topic, n in (await self.published(schema)).items() if not topic.endswith(".dlq"))
        return consumed, published

    async def backlog(self, schema: str) -> int:
        assert self.db
        return int(await self.db.fetchval(f"SELECT count(*) FROM {schema}.outbox"))

    async def reset_statements(self) -> None:
        if self.statements_available and self.db:
            await self.db.execute("SELECT pg_stat_statements_reset()")

    async def statements(self, events: int, wall_s: float) -> dict[str, Any]:
        """SQL statements the services ran in a phase (the harness's own probes excluded)."""
        if not (self.statements_available and self.db):
            return {}
        rows = await self.db.fetch(
            "SELECT query, calls, total_exec_time FROM pg_stat_statements WHERE query NOT LIKE '%pg_stat_statements%'")
        probes = (".outbox", ".inbox", ".outbox_published", ".dead_letters")
        rows = [r for r in rows if not any(p in r["query"] for p in probes)]
        calls = sum(r["calls"] for r in rows)
        exec_ms = sum(r["total_exec_time"] for r in rows)
        top = sorted(rows, key=lambda r: -r["calls"])[:15]
        return {
            "statements": calls,
            "statements_per_encounter_event": round(calls / events, 1) if events else None,
            "server_exec_ms_total": round(exec_ms),
            "server_exec_share_of_wall_pct": round(100 * exec_ms / 1000 / wall_s, 1) if wall_s else None,
            "top_by_calls": [{"calls": r["calls"], "per_event": round(r["calls"] / events, 2) if events else None,
                              "mean_ms": round(r["total_exec_time"] / max(r["calls"], 1), 3),
                              "query": " ".join(r["query"].split())[:110]} for r in top],
            "top_by_time": [{"calls": r["calls"], "total_ms": round(r["total_exec_time"]),
                             "mean_ms": round(r["total_exec_time"] / max(r["calls"], 1), 3),
                             "query": " ".join(r["query"].split())[:110]}
                            for r in sorted(rows, key=lambda r: -r["total_exec_time"])[:10]],
        }

    async def dead_letters(self) -> dict[str, int]:
        assert self.db
        return {schema: int(await self.db.fetchval(f"SELECT count(*) FROM {schema}.dead_letters"))
                for _, schema in SERVICES.values()}

    async def behind(self) -> dict[str, str]:
        """Each service (by schema) that has not yet consumed everything published to what it subscribes
        to, or not yet relayed everything it wrote to its outbox, with what it is missing."""
        behind: dict[str, str] = {}
        produced: Counter[str] = Counter()
        produced["encounters"] = self.sent_total
        for topic, n in self._reference_counts.items():
            produced[topic] += n
        for _, schema in SERVICES.values():
            for topic, n in (await self.published(schema)).items():
                if not topic.endswith(".dlq"):
                    produced[topic] += n
            if await self.backlog(schema):
                behind[schema] = f"{schema} outbox not empty"
        assert self.offsets
        for schema, topics in SUBSCRIPTIONS.items():
            seen = await self.offsets.consumed(schema)
            for topic in topics:
                if seen.get(topic, 0) < produced[topic] and schema not in behind:
                    behind[schema] = f"{schema} has {seen.get(topic, 0)}/{produced[topic]} of {topic}"
        return behind

    async def wait_drained(self, timeout: float, what: str) -> float:
        """Poll until drained; returns when it became true (perf_counter). :attr:`caught_up` keeps, for
        each service, when it last caught up (consumed and relayed all there was): the last to catch up
        is the one that held the pipeline back."""
        deadline = time.monotonic() + timeout
        last_report = time.monotonic()
        self.caught_up.clear()
        was_behind = {schema for _, schema in SERVICES.values()}
        while True:
            behind = await self.behind()
            now = time.perf_counter()
            for schema in was_behind - set(behind):
                self.caught_up[schema] = now
            was_behind = set(behind)
            if not behind:
                return now
            why = next(iter(behind.values()))
            for name, svc in self.services.items():
                if not svc.running:
                    raise RuntimeError(f"{name} exited during {what}\n{svc.log_tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{what}: pipeline did not drain within {timeout:.0f}s ({why})")
            if time.monotonic() - last_report > 10:
                self.progress(f"  ... {what}: waiting ({why})")
                last_report = time.monotonic()
            await asyncio.sleep(0.25)

    # -------------------------------------------------------------- load
    async def load_reference(self, workload: Workload) -> dict[str, Any]:
        self._reference_counts = dict(workload.reference_counts)
        producer = AIOKafkaProducer(bootstrap_servers=self.stack.kafka_bootstrap_servers, acks="all",
                                    linger_ms=5, max_batch_size=256 * 1024)
        await producer.start()
        started = time.perf_counter()
        try:
            futures = [await producer.send(topic, value, key=key) for topic, key, value in workload.reference]
            await asyncio.gather(*futures)
        finally:
            await producer.stop()
        finished = await self.wait_drained(900, "reference data")
        seconds = finished - started
        assert self.db
        attributed = await self.db.fetchval("SELECT count(*) FROM attribution.attribution_current")
        care_teams = await self.db.fetchval("SELECT count(DISTINCT member_id) FROM notifications.care_team_history")
        result = {"events": len(workload.reference), "seconds": round(seconds, 1),
                  "events_per_s": round(len(workload.reference) / seconds), "attributed_members": attributed,
                  "notifications_care_teams": care_teams}
        self.progress(f"reference data in: {result}")
        return result

    async def run_phase(self, name: str, events: list[SentEvent], rate: float | None,
                        drain_timeout: float = 600) -> dict[str, Any]:
        """Send ``events`` flat out (rate None) or at ``rate``/s; wait for the drain; measure."""
        assert self.observer and self.db
        sampler = Sampler(self.pids(), self.db)
        alerts_before = len(self.observer.alerts)
        dead_before = await self.dead_letters()
        await self.reset_statements()
        consumed_before, published_before = await self.traffic()
        producer = AIOKafkaProducer(bootstrap_servers=self.stack.kafka_bootstrap_servers, acks="all",
                                    linger_ms=2 if rate else 10, max_batch_size=256 * 1024)
        await producer.start()
        self.progress(f"phase {name}: {len(events)} encounter events "
                      + (f"offered at {rate:,.0f}/s" if rate else "flat out"))
        sampler.start()
        started = time.perf_counter()
        futures = []
        try:
            for i, event in enumerate(events):
                if rate:
                    due = started + i / rate
                    delay = due - time.perf_counter()
                    if delay > 0.002:
                        await asyncio.sleep(delay)
                future = await producer.send("encounters", event.value, key=event.key, headers=event.headers)
                future.add_done_callback(self._acked(event.event_id, event.encounter_id))
                futures.append(future)
            await asyncio.gather(*futures)
        finally:
            await producer.stop()
        send_s = time.perf_counter() - started
        self.sent_total += len(events)
        await self.wait_drained(drain_timeout, name)
        await asyncio.sleep(0.5)  # the observer's fetch after the last publish
        usage = await sampler.stop()
        end = self.observer.last_arrival
        alerts = self.observer.alerts[alerts_before:]
        seconds = end - started
        direct: list[float] = []
        chained: list[float] = []
        kinds: Counter[str] = Counter()
        for arrival, kind, source_event_id, correlation in alerts:
            kinds[kind] += 1
            accepted = self.accepted.get(source_event_id)
            if accepted is not None:
                direct.append((arrival - accepted) * 1000)
                continue
            accepted = self.encounter_accepted.get(correlation)
            if accepted is not None:
                chained.append((arrival - accepted) * 1000)
        combined = direct + chained
        dead_after = await self.dead_letters()
        sql = await self.statements(len(events), seconds)
        consumed, published = (n - before for n, before in zip(await self.traffic(),
                                                                (consumed_before, published_before), strict=True))
        # Every record the broker took or handed out for these events: the harness's, the services' (consumed
        # and published) and the alerts the observer read.
        transits = len(events) + published + consumed + len(alerts)
        result = {
            "events": len(events),
            "offered_per_s": rate,
            "send_seconds": round(send_s, 2),
            "seconds": round(seconds, 2),
            "events_per_s": round(len(events) / seconds, 1) if seconds > 0 else None,
            "alerts": len(alerts),
            "alerts_per_s": round(len(alerts) / seconds, 1) if seconds > 0 else None,
            "alert_kinds": dict(kinds),
            "e2e_ms": {"p50": _percentile(combined, 50), "p99": _percentile(combined, 99),
                       "p99.9": _percentile(combined, 99.9), "max": _percentile(combined, 100),
                       "mean": round(statistics.fmean(combined), 1) if combined else None},
            "e2e_ms_encounter_alerts": {"p50": _percentile(direct, 50), "p99": _percentile(direct, 99),
                                        "count": len(direct)},
            "e2e_ms_gap_and_referral_alerts": {"p50": _percentile(chained, 50), "p99": _percentile(chained, 99),
                                               "count": len(chained)},
            "dlq_new": {k: dead_after[k] - dead_before.get(k, 0) for k in dead_after},
            "resources": usage,
            "cpu_ms_per_event": cpu_ms_per_event(usage, len(events)),
            # seconds from the first send until each service last caught up (the largest held the rest back)
            "caught_up_s": {schema: round(at - started, 2) for schema, at in self.caught_up.items()},
            "kafka_records": {"sent": len(events), "consumed_by_services": consumed,
                              "published_by_services": published, "read_by_observer": len(alerts),
                              "transits_per_event": round(transits / len(events), 2) if events else None},
            "sql": sql,
            "tracing": self.tracing,
            "sql_spans": self.sql_spans,
        }
        self.progress(f"phase {name}: {result['events_per_s']} events/s, {len(alerts)} alerts, e2e p50 "
                      f"{result['e2e_ms']['p50']} ms p99 {result['e2e_ms']['p99']} ms, DLQ +"
                      f"{sum(result['dlq_new'].values())}")
        return result

    def _acked(self, event_id: str, encounter_id: str) -> Callable[[asyncio.Future[Any]], None]:
        def done(future: asyncio.Future[Any]) -> None:
            if future.cancelled() or future.exception() is not None:
                return
            now = time.perf_counter()
            self.accepted[event_id] = now
            self.encounter_accepted[encounter_id] = now
        return done


# --------------------------------------------------------------------------------------------- profile


def profile_service(pid: int, seconds: int, out: Path) -> dict[str, Any]:
    """py-spy the running service for ``seconds``; return its top frames (own time and total)."""
    spy = Path(sys.executable).with_name("py-spy")
    if not spy.exists():
        return {"error": "py-spy is not installed (pip install -r requirements-dev.txt)"}
    raw = out.with_suffix(".txt")
    command = [str(spy), "record", "--pid", str(pid), "--duration", str(seconds), "--rate", "50",
               "--format", "raw", "--output", str(raw), "--nonblocking"]
    proc = subprocess.run(command, capture_output=True, text=True, check=False)
    if proc.returncode != 0 or not raw.exists():
        return {"error": (proc.stderr or proc.stdout).strip()[-300:]}
    return summarise_collapsed(raw.read_text().splitlines())


def summarise_collapsed(lines: Iterable[str], top: int = 12) -> dict[str, Any]:
    """Own-time and inclusive-time leaders of py-spy's collapsed stacks."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in lines:
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_text)
        total += count
        frames = stack.split(";")
        own[_short(frames[-1])] += count
        for frame in {_short(f) for f in frames}:
            inclusive[frame] += count
    if not total:
        return {"samples": 0}
    return {
        "samples": total,
        "own_pct": [(f, round(100 * n / total, 1)) for f, n in own.most_common(top)],
        "inclusive_pct": [(f, round(100 * n / total, 1)) for f, n in inclusive.most_common(top * 3)
                          if not is_scaffolding(f)][:top],
    }


SCAFFOLDING = ("run_until_complete", "run_forever", "_run_once", "_run_module_as_main", "_run_code", "Runner.run",
               "run_service", "main (", "<module>", "Handle._run")


def is_scaffolding(frame: str) -> bool:
    """Frames on every stack (event loop, entry point): no information in an inclusive-time list."""
    return any(part in frame for part in SCAFFOLDING)


def _short(frame: str) -> str:
    # "function (path/to/module.py:123)" -> "function (module.py)"
    name, _, where = frame.partition(" (")
    path = where.rstrip(")").rsplit(":", 1)[0]
    return f"{name} ({'/'.join(Path(path).parts[-2:])})"


def default_workdir() -> Path:
    return Path(tempfile.mkdtemp(prefix="cth-bench-"))
