"""Pytest infrastructure: one broker + PostgreSQL per test session, isolated per test.

Register with ``pytest_plugins = ["cth_shared.testing.infra"]``.  Fixtures:

``infra`` (session)
    Where the broker and PostgreSQL are.  Chosen in this order: ``KAFKA_BOOTSTRAP_SERVERS`` and
    ``DATABASE_URL`` both set -> use them ("external"); a Docker engine answers -> Apache Kafka
    and PostgreSQL through testcontainers ("testcontainers"); otherwise the embedded stack
    ("embedded").  ``CTH_TEST_INFRA=external|testcontainers|embedded`` forces a choice.

``isolated`` (function, async)
    A unique topic prefix with every catalog topic created under it, and a freshly created
    database on the shared server (dropped at teardown), so tests never see each other's data.

``ServiceProcess`` runs a service module as a separate OS process for end-to-end tests.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
import warnings
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Self
from urllib.parse import urlsplit, urlunsplit

import pytest

from cth_shared.embedded import (
    EmbeddedStack,
    create_catalog_topics,
    ensure_topics,
    free_port,
    kafka_answers_metadata,
    pdeathsig_preexec,
)

__all__ = [
    "Infra",
    "InfraKind",
    "IsolatedEnv",
    "ServiceProcess",
    "free_port",
    "infra",
    "isolated",
    "isolated_env",
    "start_infra",
]

InfraKind = Literal["external", "testcontainers", "embedded"]

KAFKA_IMAGE = os.environ.get("CTH_TEST_KAFKA_IMAGE", "apache/kafka:3.9.1")
POSTGRES_IMAGE = os.environ.get("CTH_TEST_POSTGRES_IMAGE", "postgres:17-alpine")

# Tansu makes every consumer-group join wait session_timeout_ms / 2.
EMBEDDED_CONSUMER_TIMEOUTS = {"session_timeout_ms": 6000, "heartbeat_interval_ms": 500}


# --------------------------------------------------------------------------------------------
# where the stack is


@dataclass
class Infra:
    """The broker and PostgreSQL a test session runs against."""

    kafka_bootstrap_servers: str
    database_url: str
    kind: InfraKind
    stack: EmbeddedStack | None = None
    containers: dict[str, Any] = field(default_factory=dict)

    @property
    def can_restart_postgres(self) -> bool:
        """True when this session controls PostgreSQL (embedded stack or testcontainers)."""
        return self.stack is not None or "postgres" in self.containers

    def consumer_overrides(self) -> dict[str, Any]:
        """aiokafka consumer kwargs this broker needs (short group timeouts on Tansu)."""
        return dict(EMBEDDED_CONSUMER_TIMEOUTS) if self.kind == "embedded" else {}

    def service_env(self) -> dict[str, str]:
        """Environment for a service process pointed at this infrastructure."""
        env = {
            "KAFKA_BOOTSTRAP_SERVERS": self.kafka_bootstrap_servers,
            "DATABASE_URL": self.database_url,
            # The tests' webhook receivers listen on 127.0.0.1 (see notifications.endpoints).
            "WEBHOOK_ALLOW_PRIVATE_NETWORKS": "true",
        }
        if self.kind == "embedded":
            env["KAFKA_SESSION_TIMEOUT_MS"] = str(EMBEDDED_CONSUMER_TIMEOUTS["session_timeout_ms"])
            env["KAFKA_HEARTBEAT_INTERVAL_MS"] = str(EMBEDDED_CONSUMER_TIMEOUTS["heartbeat_interval_ms"])
        return env

    def restart_postgres(self) -> None:
        """Restart PostgreSQL on the same address, keeping its data.

        Raises ``RuntimeError`` against external infrastructure (check
        ``can_restart_postgres`` and skip instead).
        """
        if self.stack is not None:
            self.stack.restart_postgres()
            return
        container = self.containers.get("postgres")
        if container is None:
            raise RuntimeError("PostgreSQL is external to this test session: cannot restart it")
        container.get_wrapped_container().restart(timeout=10)
        _wait_for_postgres(self.database_url, timeout=60)

    async def arestart_postgres(self) -> None:
        """Async ``restart_postgres()``."""
        if self.stack is not None:
            await self.stack.arestart_postgres()
        else:
            await asyncio.to_thread(self.restart_postgres)

    def close(self) -> None:
        """Stop whatever this session started (never touches external infrastructure)."""
        if self.stack is not None:
            self.stack.stop()
        for container in self.containers.values():
            with contextlib.suppress(Exception):
                container.stop()


def _docker_available(timeout: float = 3.0) -> bool:
    """True when a Docker engine answers a ping quickly."""
    try:
        import docker
    except ImportError:
        return False
    try:
        client = docker.from_env(timeout=int(max(1, timeout)))
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:
        return False


def _with_database(url: str, database: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, f"/{database}", parts.query, parts.fragment))


def _wait_for_postgres(url: str, timeout: float) -> None:
    import asyncpg

    async def probe() -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                conn = await asyncpg.connect(url, timeout=2)
            except (TimeoutError, OSError, asyncpg.PostgresError):
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.2)
                continue
            await conn.close()
            return

    # Callers may sit inside a running event loop: probe from a thread of our own.
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        pool.submit(asyncio.run, probe()).result()


def _start_testcontainers() -> Infra:
    """Apache Kafka (KRaft, single node) and PostgreSQL in Docker via testcontainers.

    Host ports are bound explicitly: Kafka must advertise the address clients use before it
    starts, and a PostgreSQL restart must come back on the same port.
    """
    from testcontainers.community.postgres import PostgresContainer
    from testcontainers.core.container import DockerContainer
    from testcontainers.core.docker_client import DockerClient

    host = DockerClient().host()
    kafka_port = free_port()
    kafka = (
        DockerContainer(KAFKA_IMAGE)
        .with_bind_ports(9092, kafka_port)
        .with_env("CLUSTER_ID", "4L6g3nShT-eMCtK--X86sw")
        .with_env("KAFKA_NODE_ID", "1")
        .with_env("KAFKA_PROCESS_ROLES", "broker,controller")
        .with_env("KAFKA_LISTENERS", "PLAINTEXT://0.0.0.0:9092,CONTROLLER://0.0.0.0:9093")
        .with_env("KAFKA_ADVERTISED_LISTENERS", f"PLAINTEXT://{host}:{kafka_port}")
        .with_env("KAFKA_CONTROLLER_LISTENER_NAMES", "CONTROLLER")
        .with_env("KAFKA_LISTENER_SECURITY_PROTOCOL_MAP", "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT")
        .with_env("KAFKA_CONTROLLER_QUORUM_VOTERS", "1@localhost:9093")
        .with_env("KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR", "1")
        .with_env("KAFKA_OFFSETS_TOPIC_NUM_PARTITIONS", "1")
        .with_env("KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR", "1")
        .with_env("KAFKA_TRANSACTION_STATE_LOG_MIN_ISR", "1")
        .with_env("KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS", "0")
        # Same rule as production: topics are created explicitly, never on first use.
        .with_env("KAFKA_AUTO_CREATE_TOPICS_ENABLE", "false")
    )
    postgres_port = free_port()
    postgres = (
        PostgresContainer(
            POSTGRES_IMAGE,
            username="postgres",
            password="postgres",  # noqa: S106 - throw-away test container
            dbname="postgres",
        )
        .with_bind_ports(5432, postgres_port)
        .with_command("postgres -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200")
    )
    containers: dict[str, Any] = {}
    try:
        kafka.start()
        containers["kafka"] = kafka
        postgres.start()
        containers["postgres"] = postgres
        deadline = time.monotonic() + 90
        while not kafka_answers_metadata(host, kafka_port):
            if time.monotonic() > deadline:
                logs = b"".join(kafka.get_logs()).decode(errors="replace")[-4000:]
                raise RuntimeError(f"Kafka container did not become ready:\n{logs}")
            time.sleep(0.5)
        database_url = postgres.get_connection_url(driver=None)
    except BaseException:
        for container in containers.values():
            with contextlib.suppress(Exception):
                container.stop()
        raise
    return Infra(
        kafka_bootstrap_servers=f"{host}:{kafka_port}",
        database_url=database_url,
        kind="testcontainers",
        containers=containers,
    )


def start_infra() -> Infra:
    """Pick and start the infrastructure for a test session (see the module docstring)."""
    forced = os.environ.get("CTH_TEST_INFRA", "").strip().lower()
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    database_url = os.environ.get("DATABASE_URL")
    if forced not in ("", "external", "testcontainers", "embedded"):
        raise RuntimeError(f"CTH_TEST_INFRA={forced!r}: use external, testcontainers or embedded")
    if forced == "external" or (not forced and bootstrap and database_url):
        if not (bootstrap and database_url):
            raise RuntimeError("external infra needs KAFKA_BOOTSTRAP_SERVERS and DATABASE_URL")
        return Infra(bootstrap, database_url, "external")
    if forced == "testcontainers" or (not forced and _docker_available()):
        return _start_testcontainers()
    stack = EmbeddedStack().start()
    return Infra(stack.kafka_bootstrap_servers, stack.database_url, "embedded", stack=stack)


@pytest.fixture(scope="session")
def infra() -> Iterator[Infra]:
    """The session's broker and PostgreSQL (external, testcontainers or embedded)."""
    session_infra = start_infra()
    try:
        yield session_infra
    finally:
        session_infra.close()


# --------------------------------------------------------------------------------------------
# per-test isolation


@dataclass(frozen=True)
class IsolatedEnv:
    """A test's private slice of the shared infrastructure."""

    infra: Infra
    topic_prefix: str
    database_name: str
    database_url: str
    topics: tuple[str, ...]

    @property
    def kafka_bootstrap_servers(self) -> str:
        """Bootstrap servers of the shared broker."""
        return self.infra.kafka_bootstrap_servers

    def topic(self, name: str) -> str:
        """The prefixed name of catalog topic ``name``."""
        return f"{self.topic_prefix}{name}"

    def consumer_overrides(self) -> dict[str, Any]:
        """aiokafka consumer kwargs this broker needs (see ``Infra.consumer_overrides``)."""
        return self.infra.consumer_overrides()

    def service_env(self, **extra: str) -> dict[str, str]:
        """Environment for a service process scoped to this test (prefix + own database)."""
        env = self.infra.service_env()
        env["DATABASE_URL"] = self.database_url
        env["TOPIC_PREFIX"] = self.topic_prefix
        env.update(extra)
        return env

    async def create_topics(self, specs: list[tuple[str, int, dict[str, str]]]) -> None:
        """Create extra topics (names are prefixed) beyond the catalog."""
        await ensure_topics(
            self.kafka_bootstrap_servers,
            [(self.topic(name), partitions, configs) for name, partitions, configs in specs],
        )


async def _create_catalog_or_warn(bootstrap: str, prefix: str) -> tuple[str, ...]:
    try:
        return tuple(await create_catalog_topics(bootstrap, prefix))
    except ImportError as exc:
        cause = exc.__cause__
        if isinstance(cause, ModuleNotFoundError) and cause.name == "cth_shared.contracts.topics":
            warnings.warn(
                "cth_shared.contracts.topics does not exist yet: no catalog topics created",
                stacklevel=2,
            )
            return ()
        raise


@contextlib.asynccontextmanager
async def isolated_env(infra: Infra) -> AsyncIterator[IsolatedEnv]:
    """Create a unique topic prefix (with the catalog topics) and a fresh database.

    The database is dropped on exit (best effort, ``WITH (FORCE)``); topics stay, since
    their prefix is never reused.
    """
    import asyncpg

    token = uuid.uuid4().hex[:12]
    prefix = f"t{token}."
    database = f"t_{token}"
    admin = await asyncpg.connect(infra.database_url)
    try:
        await admin.execute(f'CREATE DATABASE "{database}"')
    finally:
        await admin.close()
    try:
        topics = await _create_catalog_or_warn(infra.kafka_bootstrap_servers, prefix)
        yield IsolatedEnv(
            infra=infra,
            topic_prefix=prefix,
            database_name=database,
            database_url=_with_database(infra.database_url, database),
            topics=topics,
        )
    finally:
        with contextlib.suppress(Exception):
            admin = await asyncpg.connect(infra.database_url, timeout=10)
            try:
                await admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
            finally:
                await admin.close()


@pytest.fixture
async def isolated(infra: Infra) -> AsyncIterator[IsolatedEnv]:
    """Unique topic prefix (catalog topics created) and a fresh database, dropped afterwards."""
    async with isolated_env(infra) as env:
        yield env


# --------------------------------------------------------------------------------------------
# services as processes


class ServiceProcess:
    """A service (``python -m module``) running as a child process, for end-to-end tests.

    The child gets ``env`` merged over ``os.environ``, dies with the test process
    (``PR_SET_PDEATHSIG``), and logs stdout/stderr to ``log_path``.
    """

    def __init__(
        self,
        module: str,
        env: Mapping[str, str],
        *,
        log_dir: str | os.PathLike[str] | None = None,
        autostart: bool = True,
    ) -> None:
        """Configure and (unless ``autostart=False``) start ``python -m module``."""
        self.module = module
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", **{k: str(v) for k, v in env.items()}}
        directory = Path(log_dir) if log_dir else Path(tempfile.mkdtemp(prefix="cth-svc-"))
        directory.mkdir(parents=True, exist_ok=True)
        self.log_path = directory / f"{module.replace('.', '_')}-{uuid.uuid4().hex[:6]}.log"
        self.process: subprocess.Popen[bytes] | None = None
        if autostart:
            self.start()

    def start(self) -> Self:
        """Start the process (again, after it exited); returns ``self``."""
        if self.process is not None and self.process.poll() is None:
            raise RuntimeError(f"{self.module} is already running (pid {self.process.pid})")
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(  # noqa: S603 - our interpreter, our module
                [sys.executable, "-m", self.module],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                preexec_fn=pdeathsig_preexec(signal.SIGKILL),
            )
        return self

    @property
    def pid(self) -> int | None:
        """The child's pid (None before start)."""
        return self.process.pid if self.process else None

    @property
    def returncode(self) -> int | None:
        """Exit code once the process ended, else None."""
        return self.process.poll() if self.process else None

    @property
    def running(self) -> bool:
        """True while the process is alive."""
        return self.process is not None and self.process.poll() is None

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:{HTTP_PORT}`` from the process environment."""
        port = self.env.get("HTTP_PORT")
        if not port:
            raise RuntimeError(f"{self.module}: HTTP_PORT is not set in its environment")
        return f"http://127.0.0.1:{port}"

    async def wait_healthy_on_a_free_port(self, timeout: float = 30.0, attempts: int = 3) -> None:
        """:meth:`wait_healthy`; when the service could not bind its ``HTTP_PORT`` because another process
        took the port between its pick and the bind, start it again on a new :func:`free_port` (at most
        ``attempts`` starts in all)."""
        for attempt in range(1, attempts + 1):
            try:
                await self.wait_healthy(timeout=timeout)
                return
            except AssertionError:
                if self.running or "Address already in use" not in self.log_tail(3) or attempt == attempts:
                    raise
            self.env["HTTP_PORT"] = str(free_port())
            self.start()

    async def wait_healthy(self, url: str | None = None, timeout: float = 30.0) -> None:
        """Poll ``GET {url}/healthz`` until it answers 200; fail early if the process exits."""
        import httpx

        base = (url or self.base_url).rstrip("/")
        deadline = time.monotonic() + timeout
        last = "no answer"
        async with httpx.AsyncClient(timeout=2.0) as client:
            while True:
                if not self.running:
                    raise AssertionError(
                        f"{self.module} exited with {self.returncode} before becoming healthy\n{self.log_tail()}"
                    )
                try:
                    response = await client.get(f"{base}/healthz")
                    if response.status_code == 200:
                        return
                    last = f"HTTP {response.status_code}: {response.text[:200]}"
                except httpx.HTTPError as exc:
                    last = repr(exc)
                if time.monotonic() > deadline:
                    raise AssertionError(
                        f"{self.module} not healthy at {base}/healthz after {timeout:.0f}s ({last})\n{self.log_tail()}"
                    )
                await asyncio.sleep(0.1)

    def terminate(self, timeout: float = 10.0) -> int | None:
        """SIGTERM, wait up to ``timeout`` seconds, then SIGKILL; returns the exit code."""
        proc = self.process
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        return proc.returncode

    async def aterminate(self, timeout: float = 10.0) -> int | None:
        """Async ``terminate()``: the event loop keeps running while the service drains."""
        return await asyncio.to_thread(self.terminate, timeout)

    def kill(self) -> int | None:
        """SIGKILL (a crash, no graceful shutdown); returns the exit code."""
        proc = self.process
        if proc is None:
            return None
        if proc.poll() is None:
            proc.kill()
        return proc.wait()

    def log_tail(self, lines: int = 60) -> str:
        """The last ``lines`` lines of the process log, for assertion messages."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return f"--- {self.module}: no log at {self.log_path} ---"
        tail = "\n".join(text.splitlines()[-lines:])
        return f"--- {self.module} log tail ({self.log_path}) ---\n{tail}"

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.terminate()

    def __repr__(self) -> str:
        return f"ServiceProcess({self.module!r}, pid={self.pid}, returncode={self.returncode})"
