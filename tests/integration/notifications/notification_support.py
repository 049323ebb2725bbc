"""Shared helpers of the notifications integration and browser tests: service, events, receiver."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import uvicorn
from aiokafka import AIOKafkaProducer
from cth_shared.contracts import EXAMPLES, new_event
from cth_shared.contracts.envelope import registered_types
from cth_shared.embedded import free_port
from cth_shared.testing.infra import ServiceProcess
from fastapi import FastAPI, Request, Response

PCP_NPI, PCP_TIN = "1234567893", "987654321"
V1C_NPI, V1C_TIN = "1003000126", "555666777"
CARE_MANAGER = "CM-17"
MEMBER = "M000001"
FAST_DELIVERY_ENV = {
    "DELIVERY_INITIAL_BACKOFF_S": "0.2", "DELIVERY_MAX_BACKOFF_S": "1", "DELIVERY_POLL_INTERVAL_MS": "50",
    "CIRCUIT_FAILURE_THRESHOLD": "5", "CIRCUIT_OPEN_S": "1", "OTEL_INSTRUMENT_ASYNCPG": "false",
}


def start_notifications(isolated: Any, log_dir: Any, **env: str) -> ServiceProcess:
    port = free_port()
    return ServiceProcess("notifications", isolated.service_env(HTTP_PORT=str(port), **FAST_DELIVERY_ENV, **env),
                          log_dir=log_dir)


def event_bytes(event_type: str, event_id: str | None = None, **changes: Any) -> bytes:
    """A valid event built from the contract example with ``changes`` applied to its data."""
    data = dict(EXAMPLES[event_type], **changes)
    model = registered_types()[event_type].model
    event = new_event(model.model_validate(data), subject=data["member_id"], source="urn:test", tenant="p1",
                      event_id=event_id)
    return event.to_json_bytes()


async def publish(isolated: Any, topic: str, *payloads: bytes, key: str = MEMBER) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=isolated.kafka_bootstrap_servers)
    await producer.start()
    try:
        for payload in payloads:
            await producer.send_and_wait(isolated.topic(topic), payload, key=key.encode())
    finally:
        await producer.stop()


async def eventually(predicate: Callable[[], Awaitable[Any]], timeout: float = 20, what: str = "condition") -> Any:
    """Poll until ``predicate()`` is truthy; returns its value. Waits, never asserts on speed."""
    deadline = time.monotonic() + timeout
    while True:
        value = await predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


async def schema_connection(isolated: Any) -> asyncpg.Connection:
    return await asyncpg.connect(isolated.database_url, server_settings={"search_path": "notifications"})


@dataclass
class WebhookReceiver:
    """A real HTTP server on 127.0.0.1 answering each path from a script of status codes."""

    scripts: dict[str, list[int]]
    received: dict[str, list[tuple[dict[str, str], bytes]]] = field(default_factory=dict)
    port: int = field(default_factory=free_port)
    _server: uvicorn.Server | None = None
    _task: asyncio.Task[Any] | None = None

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    async def __aenter__(self) -> WebhookReceiver:
        app = FastAPI()

        @app.post("/{path:path}")
        async def receive(path: str, request: Request) -> Response:
            key = "/" + path
            self.received.setdefault(key, []).append((dict(request.headers), await request.body()))
            script = self.scripts.get(key, [200])
            code = script.pop(0) if len(script) > 1 else script[0]
            return Response(status_code=code)

        self._server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning",
                                                     lifespan="off"))
        self._task = asyncio.create_task(self._server.serve())
        await eventually(lambda: asyncio.sleep(0, self._server.started), 10, "webhook receiver")
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None and self._task is not None
        self._server.should_exit = True
        await self._task
