"""Run the whole hub locally: the stack, the catalog topics and the four services as processes.

Used by the demo (``cth_shared.demo``), the end-to-end tests and the benchmarks. Nothing here
is service logic; it only starts, watches and stops things, and reads the counters every
service keeps in its own schema (``inbox``, ``outbox``, ``outbox_published``, ``dead_letters``).

Typical use::

    with Stack.start() as stack:                      # embedded, or external via env/arguments
        await stack.create_topics()
        fleet = Fleet(stack, run_dir)                 # four services, each its own process,
        fleet.start()                                 # port, log file and span file
        await fleet.wait_healthy()
        ...                                           # publish, watch fleet.check_alive()
        counters = await service_counters(stack.database_url, "care_gaps")
        await fleet.stop()                            # SIGTERM, graceful drain, SIGKILL on timeout

``Stack.start(kafka=..., postgres=...)`` connects to external infrastructure instead of
starting the embedded one (also from ``KAFKA_BOOTSTRAP_SERVERS`` + ``DATABASE_URL`` when
``use_env=True``). The span files of all services land in ``run_dir/spans/``, which
``cth-trace --spans run_dir/spans`` reads.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import asyncpg
import httpx

from .broker import log_end_offsets
from .embedded import EmbeddedStack, create_catalog_topics, pdeathsig_preexec

__all__ = [
    "SERVICES",
    "Fleet",
    "LagProbe",
    "ManagedService",
    "ServiceCounters",
    "ServiceDied",
    "ServiceSpec",
    "Stack",
    "all_counters",
    "consumer_lag",
    "service_counters",
]


@dataclass(frozen=True)
class ServiceSpec:
    """One deployable service: its name (consumer group), module, schema and input topics."""

    name: str
    module: str
    schema: str
    topics: tuple[str, ...]


SERVICES: tuple[ServiceSpec, ...] = (
    ServiceSpec(
        "attribution", "attribution", "attribution", ("enrollment", "claims", "virtual-visits", "provider-directory")
    ),
    ServiceSpec(
        "referrals", "referrals", "referrals",
        ("referral-requests", "encounters", "provider-directory", "enrollment", "claims"),
    ),
    ServiceSpec(
        "care-gaps", "care_gaps", "care_gaps", ("encounters", "virtual-visits", "claims", "enrollment", "attribution")
    ),
    ServiceSpec(
        "notifications", "notifications", "notifications", ("encounters", "attribution", "care-gaps", "referrals")
    ),
)


class ServiceDied(RuntimeError):
    """A service process exited (or never became healthy); carries its log tail."""

    def __init__(self, name: str, returncode: int | None, log_path: Path, tail: str, what: str = "exited") -> None:
        super().__init__(f"{name} {what} (exit code {returncode}); log {log_path}:\n{tail}")
        self.name = name
        self.returncode = returncode
        self.log_path = log_path
        self.tail = tail


# --------------------------------------------------------------------------------------------
# the stack


@dataclass
class Stack:
    """Where the broker and PostgreSQL are; owns the embedded stack when it started one."""

    kafka_bootstrap_servers: str
    database_url: str
    topic_prefix: str = ""
    embedded: EmbeddedStack | None = None
    #: Extra environment for every service (e.g. consumer timeouts a test broker needs).
    env: dict[str, str] = field(default_factory=dict)

    @property
    def kind(self) -> str:
        """``embedded`` or ``external``."""
        return "embedded" if self.embedded is not None else "external"

    @classmethod
    def start(
        cls, *, kafka: str | None = None, postgres: str | None = None, topic_prefix: str = "", use_env: bool = True
    ) -> Stack:
        """Connect to ``kafka`` + ``postgres`` (or the env's), else start the embedded stack.

        Call from a long-lived thread (the main thread): the embedded servers die with the
        thread that spawned them (see :mod:`cth_shared.embedded`).
        """
        if use_env:
            kafka = kafka or os.environ.get("KAFKA_BOOTSTRAP_SERVERS") or None
            postgres = postgres or os.environ.get("DATABASE_URL") or None
        if bool(kafka) != bool(postgres):
            raise ValueError("external infrastructure needs both Kafka bootstrap servers and a PostgreSQL URL")
        if kafka and postgres:
            return cls(kafka, postgres, topic_prefix)
        embedded = EmbeddedStack().start()
        return cls(embedded.kafka_bootstrap_servers, embedded.database_url, topic_prefix, embedded)

    async def create_topics(self) -> list[str]:
        """Create the catalog topics (and DLQs) under the prefix; existing ones are kept."""
        return list(await create_catalog_topics(self.kafka_bootstrap_servers, self.topic_prefix))

    def service_env(self) -> dict[str, str]:
        """Environment pointing a service process at this stack."""
        env = {
            "KAFKA_BOOTSTRAP_SERVERS": self.kafka_bootstrap_servers,
            "DATABASE_URL": self.database_url,
            "TOPIC_PREFIX": self.topic_prefix,
            # The demo's and benchmarks' webhook receivers listen on 127.0.0.1 (see notifications.endpoints).
            "WEBHOOK_ALLOW_PRIVATE_NETWORKS": "true",
        }
        if self.embedded is not None:  # Tansu makes every group join wait half the session timeout
            env["KAFKA_SESSION_TIMEOUT_MS"] = "2000"
            env["KAFKA_HEARTBEAT_INTERVAL_MS"] = "300"
        env.update(self.env)
        return env

    def close(self) -> None:
        """Stop the embedded stack (no-op for external infrastructure)."""
        if self.embedded is not None:
            self.embedded.stop()
            self.embedded = None

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


# --------------------------------------------------------------------------------------------
# the services


@dataclass
class ManagedService:
    """One service process with its own port, environment, log file and span file."""

    spec: ServiceSpec
    port: int
    env: dict[str, str]
    log_path: Path
    spans_path: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self) -> None:
        """Start ``python -m <module>``; stdout+stderr go to the log file (appended)."""
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(  # noqa: S603 - our interpreter, our module
                [sys.executable, "-m", self.spec.module],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                preexec_fn=pdeathsig_preexec(signal.SIGTERM),
            )

    def bound_port(self) -> int | None:
        """The HTTP port the service bound (from its "service ready" log line), None before."""
        try:
            with self.log_path.open(encoding="utf-8", errors="replace") as log:
                for line in log:
                    if '"service ready"' in line:
                        match = re.search(r'"reason": "http (\d+)"', line)
                        if match:
                            return int(match.group(1))
        except OSError:
            return None
        return None

    def log_tail(self, lines: int = 30) -> str:
        """The last ``lines`` lines of the log."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def died(self, what: str = "exited") -> ServiceDied:
        code = self.process.poll() if self.process else None
        return ServiceDied(self.name, code, self.log_path, self.log_tail(), what)


@dataclass
class Fleet:
    """The services as separate OS processes against one :class:`Stack`.

    ``env`` is added to every service's environment, ``per_service_env[name]`` to one's.
    Logs go to ``run_dir/<name>.log``, spans to ``run_dir/spans/<name>.jsonl``.
    """

    stack: Stack
    run_dir: Path
    services: Iterable[ServiceSpec] = SERVICES
    env: Mapping[str, str] = field(default_factory=dict)
    per_service_env: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    members: dict[str, ManagedService] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "spans").mkdir(exist_ok=True)
        for spec in self.services:
            # Port 0: the service binds a free port itself and logs it (no race with other
            # processes picking "free" ports); ``wait_healthy`` reads it back.
            port = 0
            env = {
                **os.environ,
                "PYTHONUNBUFFERED": "1",
                **self.stack.service_env(),
                "HTTP_PORT": str(port),
                "OTEL_SPANS_FILE": str(self.spans_dir / f"{spec.name}.jsonl"),
                **self.env,
                **self.per_service_env.get(spec.name, {}),
            }
            self.members[spec.name] = ManagedService(
                spec, port, env, self.run_dir / f"{spec.name}.log", self.spans_dir / f"{spec.name}.jsonl"
            )

    @property
    def spans_dir(self) -> Path:
        """Directory of every service's JSON-lines span export."""
        return self.run_dir / "spans"

    def __getitem__(self, name: str) -> ManagedService:
        return self.members[name]

    def start(self) -> None:
        """Start every service process (does not wait)."""
        for service in self.members.values():
            service.start()

    async def wait_healthy(self, timeout: float = 90.0) -> None:
        """Wait until every ``/healthz`` answers 200; raise :class:`ServiceDied` otherwise."""
        deadline = time.monotonic() + timeout
        pending = dict(self.members)
        async with httpx.AsyncClient(timeout=2.0) as client:
            while pending:
                for name, service in list(pending.items()):
                    if not service.running:
                        raise service.died("exited before becoming healthy")
                    if service.port == 0:
                        service.port = service.bound_port() or 0
                        if service.port == 0:
                            continue
                    try:
                        if (await client.get(f"{service.base_url}/healthz")).status_code == 200:
                            del pending[name]
                    except httpx.HTTPError:
                        pass
                if pending and time.monotonic() > deadline:
                    raise next(iter(pending.values())).died(f"not healthy after {timeout:.0f} s")
                if pending:
                    await asyncio.sleep(0.1)

    def check_alive(self) -> None:
        """Raise :class:`ServiceDied` for the first service whose process has exited."""
        for service in self.members.values():
            if not service.running:
                raise service.died()

    async def stop(self, timeout: float = 20.0) -> dict[str, int | None]:
        """SIGTERM every service (graceful drain), SIGKILL after ``timeout``; exit codes by name."""
        for service in self.members.values():
            if service.running and service.process is not None:
                service.process.send_signal(signal.SIGTERM)
        codes: dict[str, int | None] = {}
        deadline = time.monotonic() + timeout
        for name, service in self.members.items():
            proc = service.process
            if proc is None:
                codes[name] = None
                continue
            try:
                await asyncio.to_thread(proc.wait, max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            codes[name] = proc.returncode
        return codes


# --------------------------------------------------------------------------------------------
# counters


@dataclass(frozen=True)
class ServiceCounters:
    """What a service's messaging tables say: consumed, produced, waiting, rejected."""

    inbox: int
    inbox_by_topic: dict[str, int]
    outbox_backlog: int
    published: int
    dead_letters: int
    dead_letter_reasons: dict[str, int]


async def service_counters(database: str | asyncpg.Connection, schema: str) -> ServiceCounters:
    """Read one service's counters from its schema (a URL or an open connection)."""
    conn = database if isinstance(database, asyncpg.Connection) else await asyncpg.connect(database)
    try:
        by_topic = {
            r["topic"]: int(r["n"])
            for r in await conn.fetch(f"SELECT topic, count(*) AS n FROM {schema}.inbox GROUP BY topic")
        }
        backlog = int(await conn.fetchval(f"SELECT count(*) FROM {schema}.outbox"))
        published = int(
            await conn.fetchval(f"SELECT coalesce(sum(published), 0) FROM {schema}.outbox_published")
        )
        reasons = {
            r["reason"]: int(r["n"])
            for r in await conn.fetch(
                f"SELECT reason, count(*) AS n FROM {schema}.dead_letters GROUP BY reason"
            )
        }
    finally:
        if conn is not database:
            await conn.close()
    return ServiceCounters(
        inbox=sum(by_topic.values()),
        inbox_by_topic=by_topic,
        outbox_backlog=backlog,
        published=published,
        dead_letters=sum(reasons.values()),
        dead_letter_reasons=reasons,
    )


async def all_counters(
    database_url: str, services: Iterable[ServiceSpec] = SERVICES
) -> dict[str, ServiceCounters]:
    """Counters of every service (one connection); a schema not migrated yet counts as empty."""
    conn = await asyncpg.connect(database_url)
    try:
        result: dict[str, ServiceCounters] = {}
        for spec in services:
            try:
                result[spec.name] = await service_counters(conn, spec.schema)
            except asyncpg.UndefinedTableError:
                result[spec.name] = ServiceCounters(0, {}, 0, 0, 0, {})
        return result
    finally:
        await conn.close()


class LagProbe:
    """Consumer lag of the services' groups, over one admin client and one metadata consumer.

    The group id is the service name under the stack's topic prefix (see ``runtime.serve``);
    lag is the sum over the service's input partitions of end offset minus committed offset.
    """

    def __init__(self, stack: Stack, services: Iterable[ServiceSpec] = SERVICES) -> None:
        from aiokafka import AIOKafkaConsumer
        from aiokafka.admin import AIOKafkaAdminClient

        self.stack = stack
        self.services = tuple(services)
        self._admin = AIOKafkaAdminClient(bootstrap_servers=stack.kafka_bootstrap_servers)
        self._consumer = AIOKafkaConsumer(bootstrap_servers=stack.kafka_bootstrap_servers)
        self._partitions: dict[str, list[Any]] = {}

    async def __aenter__(self) -> Self:
        from aiokafka import TopicPartition

        await self._admin.start()
        await self._consumer.start()
        await self._consumer.topics()  # metadata of every topic
        for spec in self.services:
            names = [f"{self.stack.topic_prefix}{topic}" for topic in spec.topics]
            self._partitions[spec.name] = [
                TopicPartition(n, p) for n in names for p in (self._consumer.partitions_for_topic(n) or set())
            ]
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._consumer.stop()
        await self._admin.close()

    async def lag(self) -> dict[str, int]:
        """Uncommitted records per service."""
        result: dict[str, int] = {}
        for spec in self.services:
            partitions = self._partitions[spec.name]
            ends = await log_end_offsets(self._consumer, partitions)
            committed = await self._admin.list_consumer_group_offsets(
                f"{self.stack.topic_prefix}{spec.name}", partitions=partitions
            )
            result[spec.name] = sum(
                max(0, end - max(0, committed[tp].offset if tp in committed else 0)) for tp, end in ends.items()
            )
        return result


async def consumer_lag(stack: Stack, services: Iterable[ServiceSpec] = SERVICES) -> dict[str, int]:
    """One-off :meth:`LagProbe.lag`."""
    async with LagProbe(stack, services) as probe:
        return await probe.lag()
