"""Helpers of the reliability tests: the four services as processes, events, topics, waiting."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import asyncpg
import uvicorn
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from cth_shared.contracts import EXAMPLES, new_event, registered_types
from cth_shared.embedded import free_port
from cth_shared.testing.infra import ServiceProcess
from fastapi import FastAPI, Request, Response

#: service name -> (python module, Postgres schema, catalog topics it consumes)
SERVICES: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "attribution": ("attribution", "attribution", ("enrollment", "claims", "virtual-visits", "provider-directory")),
    "referrals": ("referrals", "referrals",
                  ("referral-requests", "encounters", "provider-directory", "enrollment", "claims")),
    "care-gaps": ("care_gaps", "care_gaps", ("encounters", "virtual-visits", "claims", "enrollment", "attribution")),
    "notifications": ("notifications", "notifications", ("encounters", "attribution", "care-gaps", "referrals")),
}

FAST_ENV = {
    "OTEL_INSTRUMENT_ASYNCPG": "false",
    "DELIVERY_INITIAL_BACKOFF_S": "0.2", "DELIVERY_MAX_BACKOFF_S": "1", "DELIVERY_POLL_INTERVAL_MS": "50",
    "CIRCUIT_FAILURE_THRESHOLD": "5", "CIRCUIT_OPEN_S": "1",
}


async def start_services(
    isolated: Any, log_dir: Path, names: Iterable[str] = SERVICES, **env: str
) -> dict[str, ServiceProcess]:
    """Start the named services against ``isolated`` (own HTTP ports) and wait until all are healthy."""
    processes: dict[str, ServiceProcess] = {}
    try:
        for name in names:
            module = SERVICES[name][0]
            processes[name] = ServiceProcess(
                module, isolated.service_env(HTTP_PORT=str(free_port()), **{**FAST_ENV, **env}), log_dir=log_dir
            )
        await asyncio.gather(*(p.wait_healthy(timeout=90) for p in processes.values()))
    except BaseException:
        stop_services(processes)
        raise
    return processes


def stop_services(processes: dict[str, ServiceProcess], timeout: float = 20) -> dict[str, int | None]:
    """SIGTERM every service (SIGKILL after ``timeout``); their exit codes."""
    return {name: p.terminate(timeout=timeout) for name, p in processes.items()}


async def astop_services(processes: dict[str, ServiceProcess], timeout: float = 20) -> dict[str, int | None]:
    """``stop_services`` without blocking the event loop (receivers in this loop keep answering)."""
    codes = await asyncio.gather(*(p.aterminate(timeout=timeout) for p in processes.values()))
    return dict(zip(processes, codes, strict=True))


def event_bytes(
    event_type: str, *, event_id: str | None = None, subject: str | None = None, time: str | None = None,
    **changes: Any,
) -> bytes:
    """A valid event from the contract example with ``changes`` applied to its data."""
    data = dict(EXAMPLES[event_type], **changes)
    model = registered_types()[event_type].model.model_validate(data)
    when = datetime.fromisoformat(time) if time else None
    kwargs: dict[str, Any] = {"time": when} if when else {}
    return new_event(model, subject=subject or data.get("member_id") or data.get("npi"), source="urn:test",
                     tenant="p1", event_id=event_id, **kwargs).to_json_bytes()


@contextlib.asynccontextmanager
async def producer(isolated: Any, **kwargs: Any) -> AsyncIterator[AIOKafkaProducer]:
    client = AIOKafkaProducer(bootstrap_servers=isolated.kafka_bootstrap_servers, **kwargs)
    await client.start()
    try:
        yield client
    finally:
        await client.stop()


async def send(client: AIOKafkaProducer, isolated: Any, topic: str, key: str, value: bytes) -> tuple[int, int]:
    """Produce one record and wait for the broker; returns (partition, offset)."""
    metadata = await client.send_and_wait(isolated.topic(topic), value, key=key.encode())
    return metadata.partition, metadata.offset


async def read_topic(isolated: Any, topic: str, expect: int, timeout: float = 30) -> list[Any]:
    """Records of ``topic`` from the beginning until at least ``expect`` arrived (or ``timeout``)."""
    consumer = AIOKafkaConsumer(isolated.topic(topic), bootstrap_servers=isolated.kafka_bootstrap_servers,
                                group_id=f"reader-{time.monotonic_ns()}", auto_offset_reset="earliest",
                                fetch_max_bytes=64 * 1024 * 1024, max_partition_fetch_bytes=32 * 1024 * 1024,
                                **isolated.consumer_overrides())
    await consumer.start()
    records: list[Any] = []
    try:
        deadline = time.monotonic() + timeout
        while len(records) < expect and time.monotonic() < deadline:
            for batch in (await consumer.getmany(timeout_ms=300)).values():
                records.extend(batch)
        # a little longer, so more than expected shows up too
        for batch in (await consumer.getmany(timeout_ms=500)).values():
            records.extend(batch)
    finally:
        await consumer.stop()
    return records


async def eventually(predicate: Callable[[], Awaitable[Any]], timeout: float = 45, what: str = "condition") -> Any:
    """Poll until ``predicate()`` is truthy and return its value; waits, never asserts on speed."""
    deadline = time.monotonic() + timeout
    while True:
        value = await predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


async def connect(isolated: Any, schema: str) -> asyncpg.Connection:
    return await asyncpg.connect(isolated.database_url, server_settings={"search_path": schema})


def log_text(processes: dict[str, ServiceProcess]) -> str:
    """Everything the services wrote to stdout/stderr (JSON logs and any tracebacks)."""
    return "\n".join(p.log_path.read_text(errors="replace") for p in processes.values() if p.log_path.exists())


TIMED_OUT = -1  # recorded status of a request answered after the sender's timeout


@dataclass
class Receiver:
    """A real webhook receiver on 127.0.0.1 whose behaviour per path can change during a test.

    Modes: ``ok`` (200), ``500``, ``429`` (with Retry-After: 0), ``410``, ``timeout`` (answers
    after ``hang_s``, longer than the sender's timeout). Every request is recorded with the
    status it got; ``delivered(path)`` is the bodies answered 2xx, in arrival order.
    """

    modes: dict[str, str]
    port: int = field(default_factory=free_port)
    hang_s: float = 5.0
    requests: list[tuple[str, int, dict[str, str], bytes]] = field(default_factory=list)
    _server: uvicorn.Server | None = None
    _task: asyncio.Task[Any] | None = None

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def delivered(self, path: str) -> list[dict[str, Any]]:
        return [json.loads(body) for p, code, _h, body in self.requests if p == path and 200 <= code < 300]

    def attempts(self, path: str) -> list[int]:
        return [code for p, code, _h, _b in self.requests if p == path]

    async def __aenter__(self) -> Receiver:
        app = FastAPI()

        @app.post("/{path:path}")
        async def receive(path: str, request: Request) -> Response:
            key = "/" + path
            body = await request.body()
            mode = self.modes.get(key, "ok")
            if mode == "timeout":
                await asyncio.sleep(self.hang_s)  # the sender has given up by now: not a receipt
                code = TIMED_OUT
            else:
                code = 200 if mode == "ok" else int(mode)
            self.requests.append((key, code, dict(request.headers), body))
            return Response(status_code=200 if code == TIMED_OUT else code,
                            headers={"Retry-After": "0"} if code == 429 else None)

        self._server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning",
                                                     lifespan="off", timeout_graceful_shutdown=1))
        self._task = asyncio.create_task(self._server.serve())
        await eventually(lambda: asyncio.sleep(0, self._server.started), 10, "webhook receiver")
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None and self._task is not None
        self._server.should_exit = True
        await self._task
