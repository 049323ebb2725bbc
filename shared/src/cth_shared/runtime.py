"""Running a service: the parts a composition root wires together.

A service's ``main.py`` builds a :class:`ServiceDefinition` (its name, schema, the
topics and handlers it consumes, its HTTP API and background jobs) and calls
:func:`run_service`. This module turns that into: settings -> telemetry -> pool
(+ migrations) -> broker (batch subscriber through the inbox) -> outbox relay ->
HTTP API -> graceful shutdown on SIGTERM/SIGINT (finish the in-flight batch,
commit, drain the outbox, stop).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import asyncpg
import uvicorn
from aiokafka import ConsumerRecord, TopicPartition
from fastapi import FastAPI
from faststream import AckPolicy
from faststream.kafka import KafkaBroker
from opentelemetry import metrics

from .broker import make_broker
from .contracts import all_topic_specs, topic_name
from .db import create_pool, run_migrations
from .messaging.consumer import AfterBatch, BatchProcessor, Handler, decode_raw_batch
from .messaging.inbox import keep_inbox_pruned
from .messaging.outbox import OutboxRelay, UnitOfWork
from .settings import ServiceSettings
from .telemetry import Telemetry, setup_logging, setup_telemetry

_log = logging.getLogger(__name__)


@dataclass
class ServiceContext:
    """What handlers' collaborators, APIs and jobs may use once the service is up."""

    name: str
    schema: str
    settings: ServiceSettings
    pool: asyncpg.Pool
    broker: KafkaBroker
    relay: OutboxRelay
    processor: BatchProcessor
    telemetry: Telemetry
    extras: dict[str, Any] = field(default_factory=dict)

    @contextlib.asynccontextmanager
    async def unit_of_work(self) -> AsyncIterator[UnitOfWork]:
        """A transaction for work not caused by a consumed event (timers, API commands)."""
        async with self.pool.acquire() as conn, conn.transaction():
            uow = UnitOfWork(
                conn=conn,
                source=f"urn:cth:{self.name}",
                tenant=self.settings.tenant,
                topic_prefix=self.settings.topic_prefix,
            )
            yield uow
            await uow.flush()
        self.relay.wake()


ApiFactory = Callable[[ServiceContext], FastAPI]
BackgroundJob = Callable[[ServiceContext], Awaitable[None]]


@dataclass
class ServiceDefinition:
    """Everything that makes one service what it is."""

    name: str  # e.g. "care-gaps": consumer group, DLQ topic, telemetry service name
    schema: str  # e.g. "care_gaps": its own Postgres schema
    migrations_package: str  # package holding migrations/NNNN_*.sql
    topics: Sequence[str]  # catalog topic names it consumes (unprefixed)
    handlers: Mapping[str, Handler] | Callable[[ServiceContext], Mapping[str, Handler]]
    api: ApiFactory | None = None
    background: Sequence[BackgroundJob] = ()
    on_start: Callable[[ServiceContext], Awaitable[None]] | None = None
    #: Once per consumed batch, after its lanes committed (see ``BatchProcessor``).
    after_batch: AfterBatch | None = None


def _health_routes(app: FastAPI, ctx: ServiceContext, ready: asyncio.Event) -> None:
    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, Any]:
        from fastapi import HTTPException

        if not ready.is_set():
            raise HTTPException(status_code=503, detail="starting")
        return {"service": ctx.name, "status": "ok"}


async def serve(definition: ServiceDefinition, settings: ServiceSettings) -> None:
    """Run the service until SIGTERM/SIGINT; returns after a clean shutdown."""
    setup_logging(definition.name, settings.log_level)
    telemetry = setup_telemetry(definition.name, settings)
    pool = await create_pool(
        settings.database_url.get_secret_value(),
        schema=definition.schema,
        application_name=definition.name,
        min_size=settings.db_pool_min_size,
        max_size=settings.db_pool_max_size,
    )
    applied = await run_migrations(pool, definition.schema, definition.migrations_package)
    _log.info("migrations done", extra={"service": definition.name, "reason": f"{len(applied)} applied"})

    broker = make_broker(settings, client_id=definition.name, telemetry=False)  # spans: BatchProcessor, relay
    relay = OutboxRelay(
        pool,
        broker,
        schema=definition.schema,
        batch_size=settings.relay_batch_size,
        poll_interval_s=settings.relay_poll_interval_ms / 1000,
    )
    processor = BatchProcessor(
        service=definition.name,
        pool=pool,
        handlers={},
        tenant=settings.tenant,
        topic_prefix=settings.topic_prefix,
        max_event_bytes=settings.max_event_bytes,
        after_commit=relay.wake,
        lanes=settings.consumer_lanes,
        lane_min_records=settings.consumer_lane_min_records,
        serial_topics=frozenset(t.name for t in all_topic_specs(settings.topic_prefix) if t.key != "member_id"),
        after_batch=definition.after_batch,
    )
    ctx = ServiceContext(
        name=definition.name,
        schema=definition.schema,
        settings=settings,
        pool=pool,
        broker=broker,
        relay=relay,
        processor=processor,
        telemetry=telemetry,
    )
    handlers = definition.handlers(ctx) if callable(definition.handlers) else definition.handlers
    processor._handlers = dict(handlers)

    known = {spec.name for spec in all_topic_specs(settings.topic_prefix)}
    topics = [topic_name(t, settings.topic_prefix) for t in definition.topics]
    missing = [t for t in topics if t not in known]
    if missing:
        raise ValueError(f"{definition.name} subscribes to topics outside the catalog: {missing}")

    subscriber = broker.subscriber(
        *topics,
        # A topic prefix isolates a deployment (or a test): its consumer group too, so that
        # instances of the same service on other prefixes never rebalance this one.
        group_id=f"{settings.topic_prefix}{definition.name}",
        batch=True,
        max_records=settings.batch_max_records,
        batch_timeout_ms=settings.batch_timeout_ms,
        auto_offset_reset="earliest",
        ack_policy=AckPolicy.ACK,
        session_timeout_ms=settings.kafka_session_timeout_ms,
        heartbeat_interval_ms=settings.kafka_heartbeat_interval_ms,
        fetch_max_wait_ms=settings.kafka_fetch_max_wait_ms,
        decoder=decode_raw_batch,
    )

    @subscriber
    async def on_batch(records: list[ConsumerRecord]) -> None:
        await processor.process(records)
        _note_lag(subscriber, records, lag)

    # Consumer lag per partition (highwater from the last fetch minus the next offset to read),
    # updated after each committed batch; exported as the ``consumer.lag`` gauge.
    lag: dict[tuple[str, int], int] = {}
    metrics.get_meter("cth_shared.runtime").create_observable_gauge(
        "consumer.lag",
        callbacks=[lambda _options: [metrics.Observation(sum(lag.values()), {"service": definition.name})]],
        unit="{record}",
        description="Records not yet consumed by this instance's partitions",
    )

    ready = asyncio.Event()
    app = definition.api(ctx) if definition.api else FastAPI(title=definition.name)
    _health_routes(app, ctx, ready)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((settings.http_host, settings.http_port))
    ctx.extras["http_port"] = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_config=None, access_log=False, lifespan="on"))
    http_task = asyncio.create_task(server.serve(sockets=[sock]), name=f"{definition.name}-http")

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    if definition.on_start:
        await definition.on_start(ctx)
    await broker.start()
    relay_task = asyncio.create_task(relay.run(), name=f"{definition.name}-relay")
    jobs = [asyncio.create_task(job(ctx), name=f"{definition.name}-job") for job in definition.background]
    if settings.inbox_retention_days:
        jobs.append(asyncio.create_task(keep_inbox_pruned(
            pool, service=definition.name, retention=timedelta(days=settings.inbox_retention_days),
            interval_s=settings.inbox_prune_interval_s), name=f"{definition.name}-inbox-retention"))
    _settle_garbage_collector()
    ready.set()
    _log.info("service ready", extra={"service": definition.name, "reason": f"http {ctx.extras['http_port']}"})

    try:
        await stop.wait()
    finally:
        _log.info("shutting down", extra={"service": definition.name})
        ready.clear()
        # Stop consuming first: each subscriber waits (the broker's graceful_timeout) for the
        # batch in flight, which commits, then its offsets commit. The producer stays up
        # meanwhile, so the relay's final drain publishes what committed; the broker closes last.
        with contextlib.suppress(Exception):
            await asyncio.wait_for(_stop_consuming(broker), timeout=settings.shutdown_grace_s + 5)
        for job in jobs:
            job.cancel()
        await asyncio.gather(*jobs, return_exceptions=True)
        relay.stop()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(relay_task, timeout=settings.shutdown_grace_s)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(broker.stop(), timeout=5)
        server.should_exit = True
        with contextlib.suppress(Exception):
            await asyncio.wait_for(http_task, timeout=5)
        await pool.close()
        telemetry.shutdown()
        _log.info("stopped", extra={"service": definition.name})


#: Allocations of container objects between young-generation collections (CPython's default is 700).
GC_YOUNG_THRESHOLD = 10_000


def _settle_garbage_collector() -> None:
    """After start-up: everything loaded so far (modules, models, directory indexes) moves to the permanent
    generation, so that full collections stop walking it, and young collections run every 10,000 container
    allocations instead of 700 (a batch of events allocates tens of thousands). Cycles are still collected."""
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, middle, old)


def _note_lag(subscriber: Any, records: Sequence[ConsumerRecord], lag: dict[tuple[str, int], int]) -> None:
    consumer = getattr(subscriber, "consumer", None)
    if consumer is None:
        return
    last: dict[tuple[str, int], int] = {}
    for record in records:
        last[(record.topic, record.partition)] = record.offset
    for (topic, partition), offset in last.items():
        with contextlib.suppress(Exception):
            highwater = consumer.highwater(TopicPartition(topic, partition))
            if highwater is not None:
                lag[(topic, partition)] = max(0, highwater - offset - 1)


async def _stop_consuming(broker: KafkaBroker) -> None:
    """Stop every subscriber (waiting for its batch in flight), leaving the producer connected."""
    for subscriber in broker.subscribers:
        await subscriber.stop()


def run_service(definition: ServiceDefinition, settings: ServiceSettings) -> None:
    """Blocking entry point for a service's ``main()``."""
    asyncio.run(serve(definition, settings))
