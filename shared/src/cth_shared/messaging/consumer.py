"""Batch consumption through the inbox: one Postgres transaction per fetched batch.

For each batch FastStream hands us (raw records, offsets not yet committed):

1. every record is validated against the contracts; an invalid one becomes a
   dead letter (DLQ topic via the outbox + ``dead_letters`` row) with its reason;
2. in ONE transaction: the batch's event ids are inserted into the inbox (already
   seen ids are skipped: redelivery is harmless), each new event runs its handler
   inside a savepoint (a handler that rejects the event, or fails on it, dead-letters
   that event alone), and produced events are written to the outbox;
3. the transaction commits, then FastStream commits the offsets (``AckPolicy.ACK``).

Optimistic pass first: the batch runs without savepoints, and work handlers queued with
``UnitOfWork.defer`` runs once at its end (one statement per table instead of one per event).
If any handler or queued write fails, that pass rolls back and the batch is redone with a
savepoint per event; queued work that allows it (``per_event_when_isolated``) is then finished
inside each event's savepoint, so a write refused for one event's data parks that event alone.

Lanes (``lanes`` > 1): a batch's member-keyed records are split by key into lanes
(a member's records, from every topic, always share a lane, in fetch order) and the
lanes are applied concurrently, each in its own transaction, so the service overlaps
its PostgreSQL round trips instead of waiting for them one by one. A small batch uses
fewer lanes (at least ``lane_min_records`` records each): a lane's transaction, reads and
writes cost about the same for one event as for fifty. Records of
``serial_topics`` (keyed by something other than the member, e.g. the provider
directory) are applied first, alone, so every lane sees them committed. A lane that
hits a deadlock or serialization failure retries alone; its events were not applied,
and the inbox makes the retry harmless. Offsets commit only when every lane has.

After the lanes (``after_batch``, optional): one more transaction sees every valid event of
the batch, including ones the inbox had already applied (a redelivery after a crash between the
lanes' commits and this step), for work that belongs to the batch rather than to one member,
e.g. care-gaps' overdue sweep. It must be idempotent; a transient failure retries it (the
partition waits), any other failure is logged by type and the batch is acknowledged anyway.

Transient failures (database or network down) retry the whole batch with
exponential backoff, holding the partition rather than skipping it: nothing is
lost and nothing is applied twice. Invalid input never blocks a partition.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import time
import zlib
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg
from aiokafka import ConsumerRecord
from opentelemetry import metrics, propagate, trace
from opentelemetry.trace import Link, SpanKind, Status, StatusCode
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_never, wait_exponential_jitter

from ..contracts import CloudEvent, ContractError, dlq_topic, parse_event, topic_name
from .outbox import UnitOfWork

_log = logging.getLogger(__name__)
_tracer = trace.get_tracer("cth_shared.consumer")

Handler = Callable[[UnitOfWork, CloudEvent[Any]], Awaitable[None]]
#: Runs once per batch after its lanes committed, with the batch's valid events (see module doc).
AfterBatch = Callable[[UnitOfWork, Sequence[CloudEvent[Any]]], Awaitable[None]]
_Parsed = tuple[ConsumerRecord, "CloudEvent[Any] | ContractError"]


class Rejected(Exception):
    """Raised by a handler when a valid-looking event cannot be applied (e.g. unknown code).

    The event goes to the service's DLQ with ``reason``; the batch goes on.
    """

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class _IsolationNeeded(Exception):
    """A handler failed during the optimistic (savepoint-free) pass: redo the batch isolated."""


TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.TooManyConnectionsError,
    asyncpg.exceptions.SerializationError,
    asyncpg.exceptions.DeadlockDetectedError,
    asyncpg.exceptions.AdminShutdownError,
    TimeoutError,
)


def is_transient(exc: BaseException) -> bool:
    """True for failures that a retry can cure (connectivity, serialization, shutdown)."""
    return isinstance(exc, TRANSIENT_ERRORS)


def type_header(record: ConsumerRecord) -> str | None:
    """The record's ``ce_type`` header (set by the outbox relay and the producers), a hint for parsing."""
    for key, value in record.headers or ():
        if key == "ce_type":
            try:
                return bytes(value).decode("ascii")
            except (UnicodeDecodeError, TypeError):
                return None
    return None


def lane_of(key: bytes | None, lanes: int) -> int:
    """The lane a record's key goes to (a member's records, from every topic, share one); unkeyed: lane 0."""
    return zlib.crc32(key) % lanes if key else 0


#: How long a lane waits for a pooled connection before that counts as a transient failure (retried
#: and logged): a pool that hands out nothing must not hold a partition silently.
ACQUIRE_TIMEOUT_S = 30.0


def _until_not_transient(service: str, step: str, retries: metrics.Counter) -> AsyncRetrying:
    """Retries while the failure is transient, with exponential backoff (the partition waits).

    Every retry is logged (a warning with the step, the attempt, the error's type and the wait; never
    its message, which can quote event values) and counted in ``batch.retries``: a partition held by a
    database that is down shows in the logs and the metrics, not as a silent stall."""

    def before_sleep(state: RetryCallState) -> None:
        failure = state.outcome.exception() if state.outcome is not None else None
        error = type(failure).__name__ if failure is not None else "unknown"
        wait = state.next_action.sleep if state.next_action is not None else 0.0
        retries.add(1, {"service": service, "step": step, "error": error})
        _log.warning(
            "transient failure; retrying",
            extra={"service": service, "step": step, "attempt": state.attempt_number, "reason": error,
                   "retry_in_s": round(wait, 2)},
        )

    return AsyncRetrying(
        retry=retry_if_exception(is_transient),
        wait=wait_exponential_jitter(initial=0.1, max=10),
        stop=stop_never,
        reraise=True,
        before_sleep=before_sleep,
    )


@dataclass(frozen=True)
class Route:
    """Which handler serves which event type."""

    handlers: Mapping[str, Handler]


class BatchProcessor:
    """Applies batches of raw records to a service's schema exactly once."""

    def __init__(
        self,
        *,
        service: str,
        pool: asyncpg.Pool,
        handlers: Mapping[str, Handler],
        tenant: str,
        topic_prefix: str = "",
        max_event_bytes: int = 1_048_576,
        after_commit: Callable[[], None] | None = None,
        lanes: int = 1,
        lane_min_records: int = 1,
        serial_topics: frozenset[str] = frozenset(),
        after_batch: AfterBatch | None = None,
    ) -> None:
        if lanes < 1 or lane_min_records < 1:
            raise ValueError("lanes and lane_min_records must be >= 1")
        self.service = service
        self._pool = pool
        self._handlers = dict(handlers)
        self._tenant = tenant
        self._prefix = topic_prefix
        self._max_event_bytes = max_event_bytes
        self._after_commit = after_commit
        self._lanes = lanes
        self._lane_min_records = lane_min_records
        self._written = 0  # outbox rows the batch in progress wrote (the relay is woken only if any)
        self._serial_topics = serial_topics
        self.after_batch = after_batch
        self._dlq_topic = topic_name(dlq_topic(service), topic_prefix)
        meter = metrics.get_meter("cth_shared.consumer")
        self._events = meter.create_counter("events.consumed", unit="{event}")
        self._dead = meter.create_counter("events.dead_lettered", unit="{event}")
        self._latency = meter.create_histogram("handler.batch.duration", unit="ms")
        self._after_batch_failures = meter.create_counter("after_batch.failures", unit="{batch}")
        self._retries = meter.create_counter("batch.retries", unit="{attempt}")
        self.last_batch_at: float | None = None

    async def process(self, records: Sequence[ConsumerRecord]) -> None:
        """Apply one fetched batch; returns only when it is committed.

        One span per batch; each handled event gets its own span in the trace its record's
        headers carry, linked to the batch span."""
        if not records:
            return
        with _tracer.start_as_current_span(
            f"{self.service} process batch",
            kind=SpanKind.CONSUMER,
            attributes={"messaging.system": "kafka", "messaging.batch.message_count": len(records)},
            record_exception=False,  # exception messages can quote event values (PHI)
        ):
            await self._process(records)

    async def _process(self, records: Sequence[ConsumerRecord]) -> None:
        parsed: list[_Parsed] = []
        for record in records:
            try:
                value = record.value if record.value is not None else b""
                parsed.append((record, parse_event(value, max_bytes=self._max_event_bytes,
                                                   type_hint=type_header(record))))
            except ContractError as exc:
                parsed.append((record, exc))
        started = time.perf_counter()
        self._written = 0
        serial, lanes = self._split(parsed)
        if serial:
            await self._apply_with_retry(serial)
        if len(lanes) == 1:
            await self._apply_with_retry(lanes[0])
        elif lanes:
            outcomes = await asyncio.gather(*(self._apply_with_retry(lane) for lane in lanes),
                                            return_exceptions=True)
            failed = [o for o in outcomes if isinstance(o, BaseException)]
            if failed:
                raise failed[0]  # the batch is not acknowledged; committed lanes dedupe on redelivery
        if self.after_batch is not None:
            await self._run_after_batch([item for _, item in parsed if isinstance(item, CloudEvent)])
        self._latency.record((time.perf_counter() - started) * 1000, {"service": self.service})
        self.last_batch_at = time.time()
        if self._after_commit and self._written:
            self._after_commit()  # (nothing to relay: no wake, the relay's poll covers the rest)

    def _split(self, parsed: list[_Parsed]) -> tuple[list[_Parsed], list[list[_Parsed]]]:
        """Serial-topic records, then the other records in lanes by key (fetch order kept in each).
        With one lane the whole batch is one transaction in fetch order."""
        if self._lanes == 1:
            return [], [parsed]
        serial = [item for item in parsed if item[0].topic in self._serial_topics]
        rest = [item for item in parsed if item[0].topic not in self._serial_topics] if serial else parsed
        # (lane_min_records 1: no floor, every lane is used whatever the batch size.)
        count = self._lanes if self._lane_min_records == 1 else min(self._lanes, len(rest) // self._lane_min_records)
        if len(rest) < 2 or count < 2:
            return serial, [rest] if rest else []
        lanes: list[list[_Parsed]] = [[] for _ in range(count)]
        for item in rest:
            key = item[0].key
            lanes[lane_of(key, count)].append(item)
        return serial, [lane for lane in lanes if lane]

    def _unit_of_work(self, conn: asyncpg.Connection) -> UnitOfWork:
        return UnitOfWork(conn=conn, source=f"urn:cth:{self.service}", tenant=self._tenant, topic_prefix=self._prefix)

    async def _run_after_batch(self, events: list[CloudEvent[Any]]) -> None:
        """The batch-level step in its own transaction; transient failures retry (the partition
        waits), a bug is logged and counted without blocking the partition (the step is idempotent
        and runs again with the next batch)."""
        assert self.after_batch is not None
        events = [event for event in events if event.type in self._handlers]
        if not events:
            return
        try:
            async for attempt in _until_not_transient(self.service, "after_batch", self._retries):
                with attempt:
                    async with self._pool.acquire(timeout=ACQUIRE_TIMEOUT_S) as conn, conn.transaction():
                        uow = self._unit_of_work(conn)
                        await self.after_batch(uow, events)
                        self._written += await uow.flush()
        except Exception as exc:  # not transient: those are retried until they pass
            self._after_batch_failures.add(1, {"service": self.service, "error": type(exc).__name__})
            # The type only: exception messages can quote event values (PHI).
            _log.error("after-batch step failed; it runs again with the next batch",
                       extra={"service": self.service, "reason": type(exc).__name__})

    async def _apply_with_retry(self, parsed: list[_Parsed]) -> None:
        """Apply records in one transaction, retrying transient failures (the partition waits)."""
        async for attempt in _until_not_transient(self.service, "lane", self._retries):
            with attempt:
                try:
                    # Optimistic pass: the whole batch in one transaction without a savepoint per
                    # event (two round trips less per event). If any handler rejects or fails, that
                    # pass rolls back entirely and the batch is redone with a savepoint per event.
                    await self._apply(parsed, isolate=False)
                except _IsolationNeeded:
                    await self._apply(parsed, isolate=True)

    async def _apply(
        self, parsed: list[_Parsed], *, isolate: bool = True
    ) -> None:
        batch_span = trace.get_current_span()
        async with self._pool.acquire(timeout=ACQUIRE_TIMEOUT_S) as conn, conn.transaction():
            keys = [
                item.id if isinstance(item, CloudEvent) else f"dlq:{rec.topic}:{rec.partition}:{rec.offset}"
                for rec, item in parsed
            ]
            fresh = set(
                await conn.fetchval(
                    "WITH ins AS (INSERT INTO inbox(event_id, topic) SELECT * FROM unnest($1::text[], $2::text[])"
                    " ON CONFLICT DO NOTHING RETURNING event_id) SELECT coalesce(array_agg(event_id), '{}') FROM ins",
                    keys,
                    [rec.topic for rec, _ in parsed],
                )
            )
            uow = self._unit_of_work(conn)
            uow.events = [item for (_, item), key in zip(parsed, keys, strict=True)
                          if key in fresh and isinstance(item, CloudEvent) and item.type in self._handlers]
            consumed = 0
            for (record, item), key in zip(parsed, keys, strict=True):
                if key not in fresh:
                    continue  # seen before (redelivery or duplicate): already applied
                fresh.discard(key)  # a duplicate id inside one batch applies once
                if isinstance(item, ContractError):
                    await self._dead_letter(uow, record, item.reason, item.detail)
                    continue
                consumed += 1
                await self._handle(uow, record, item, batch_span, isolate)
            try:
                self._written += await uow.flush()
            except Exception as exc:
                if isolate or is_transient(exc):
                    raise
                # Deferred work failed on some event's data: the isolated pass finishes the kinds
                # that allow it per event, so the failure dead-letters that event alone.
                raise _IsolationNeeded from exc
        self._events.add(consumed, {"service": self.service})

    async def _handle(
        self, uow: UnitOfWork, record: ConsumerRecord, event: CloudEvent[Any], batch_span: Any, isolate: bool = True
    ) -> None:
        handler = self._handlers.get(event.type)
        if handler is None:
            return  # a valid event this service does not use (e.g. other types on a shared topic)
        parent = propagate.extract({k: v.decode("latin-1") for k, v in (record.headers or ())})
        links = [Link(batch_span.get_span_context())] if batch_span.get_span_context().is_valid else []
        with _tracer.start_as_current_span(
            f"{self.service} handle {event.type}",
            context=parent,
            kind=SpanKind.CONSUMER,
            links=links,
            attributes={"cth.event_id": event.id, "cth.event_type": event.type, "cth.member_id": event.subject},
            record_exception=False,  # exception messages can quote event values (PHI)
        ) as span:
            uow.cause = event
            mark = uow.mark()
            if not isolate:
                try:
                    await handler(uow, event)
                except Exception as exc:
                    if is_transient(exc):
                        raise
                    raise _IsolationNeeded from exc
                finally:
                    uow.cause = None
                return
            try:
                async with uow.conn.transaction():  # savepoint: a failing event rolls back alone
                    await handler(uow, event)
                    if uow.per_event_kinds:
                        await uow.run_deferred(uow.per_event_kinds)
            except Rejected as exc:
                uow.rollback_to(mark)
                span.set_attribute("cth.rejected", exc.reason)
                await self._dead_letter(uow, record, exc.reason, exc.detail)
            except Exception as exc:
                if is_transient(exc):
                    raise
                # A bug or an unforeseen input: park this event, keep the partition moving.
                uow.rollback_to(mark)
                # The type only: exception messages and tracebacks can quote event values (PHI).
                span.set_attribute("error.type", type(exc).__name__)
                span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
                _log.exception(
                    "handler failed; event dead-lettered",
                    extra={"service": self.service, "event_id": event.id, "event_type": event.type},
                )
                await self._dead_letter(uow, record, "handler_error", type(exc).__name__)
            finally:
                uow.cause = None

    async def _dead_letter(self, uow: UnitOfWork, record: ConsumerRecord, reason: str, detail: str) -> None:
        original = record.value if record.value is not None else b""
        self._dead.add(1, {"service": self.service, "reason": reason})
        _log.warning("event dead-lettered", extra={"service": self.service, "topic": record.topic, "reason": reason})
        await uow.conn.execute(
            'INSERT INTO dead_letters(source_topic, partition, "offset", key, reason, detail, original)'
            " VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING",
            record.topic,
            record.partition,
            record.offset,
            record.key,
            reason,
            detail,
            original,
        )
        # The DLQ record carries the original bytes up to 512 KiB (Kafka's default limits);
        # beyond that the dead_letters row holds them, and the record says so.
        keep = len(original) <= 512 * 1024
        payload = json.dumps(
            {
                "service": self.service,
                "reason": reason,
                "detail": detail,
                "source_topic": record.topic,
                "partition": record.partition,
                "offset": record.offset,
                "original_size": len(original),
                "original_base64": base64.b64encode(original).decode() if keep else None,
                "original_truncated": not keep,
            }
        ).encode()
        headers = {"dlq_reason": reason, "dlq_service": self.service}
        uow.publish_raw(self._dlq_topic, record.key, payload, headers)


def decode_raw_batch(message: Any) -> Any:
    """FastStream decoder that hands the handler the raw ConsumerRecords (no JSON decode)."""
    raw = message.raw_message
    return list(raw) if isinstance(raw, tuple) else [raw]


async def wait_until(predicate: Callable[[], Awaitable[bool]], timeout: float, interval: float = 0.05) -> bool:
    """Poll ``predicate`` until true or ``timeout`` seconds pass (test and demo helper)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await predicate():
            return True
        await asyncio.sleep(interval)
    return await predicate()
