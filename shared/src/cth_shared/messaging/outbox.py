"""Unit of work (effects + outbox in one transaction) and the outbox relay.

A handler receives a :class:`UnitOfWork`: ``uow.conn`` is the connection whose
transaction also records the consumed event id (inbox) and the events the handler
produces (``uow.publish``). Nothing reaches Kafka until the transaction commits; the
:class:`OutboxRelay` then publishes rows in ``seq`` order with the trace context that
was current when the handler produced them (DESIGN.md section 4).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import asyncpg
from faststream.kafka import KafkaBroker
from opentelemetry import metrics, propagate, trace

from ..contracts import CloudEvent, EventData, new_event, topic_name, type_of

_log = logging.getLogger(__name__)
_tracer = trace.get_tracer("cth_shared.outbox")


@dataclass
class OutboxRow:
    topic: str
    key: bytes | None
    payload: bytes
    headers: dict[str, str]


Finisher = Callable[["UnitOfWork", list[Any]], Awaitable[None]]


def subjects(events: Sequence[CloudEvent[Any]]) -> set[str]:
    """The subjects (member ids) of ``events``: the ``lane_keys`` of :meth:`UnitOfWork.read_for_lane` for
    reads keyed by member."""
    return {event.subject for event in events if event.subject}


@dataclass
class UnitOfWork:
    """One transaction's worth of effects and produced events.

    ``cause`` is the event being handled (None for timers and API calls); produced
    events inherit its tenant and correlation id and name it as their causation.
    """

    conn: asyncpg.Connection
    source: str
    tenant: str
    topic_prefix: str = ""
    cause: CloudEvent[Any] | None = None
    rows: list[OutboxRow] = field(default_factory=list)
    #: Work handlers queued for one set-based step at flush (see :meth:`defer`): (number, kind, item).
    deferred: list[tuple[int, str, Any]] = field(default_factory=list)
    _finishers: dict[str, Finisher] = field(default_factory=dict)
    #: Kinds finished at the end of each event's savepoint in the isolated pass (see :meth:`defer`).
    per_event_kinds: set[str] = field(default_factory=set)
    #: Kinds that run after all others (see :meth:`defer`).
    _last_kinds: set[str] = field(default_factory=set)
    #: Queued work already run by :meth:`run_deferred` before the flush (so a rollback can queue it again).
    _ran: list[tuple[int, str, Any]] = field(default_factory=list)
    _queued: int = 0
    #: The events this transaction applies (a batch lane), for handlers that read for all of them at once.
    events: Sequence[CloudEvent[Any]] = ()
    #: Reads a handler may reuse for the rest of this transaction (e.g. subscriptions, which only
    #: other transactions change). A handler that caches what its own transaction writes must drop
    #: the entry when it writes; a rolled-back savepoint drops them all (:meth:`rollback_to`).
    memo: dict[Any, Any] = field(default_factory=dict)

    def defer(self, kind: str, item: Any, finisher: Finisher, *, per_event_when_isolated: bool = False,
              last: bool = False) -> None:
        """Queue ``item`` for ``finisher``, which runs once at :meth:`flush` with every item of
        its kind, in queued order, inside this transaction (before the outbox is written; it
        may publish, and may queue items of kinds first queued after its own). Handlers use it
        to replace one statement per event by one per batch.

        ``per_event_when_isolated``: a failure of this finisher may come from one event's data
        (e.g. a value the database refuses). In the isolated pass, the one that runs after a
        batch failed, such a kind is finished at the end of each event's savepoint, so a failing
        write dead-letters its own event and nothing else. Leave it False for kinds that must
        run once per transaction (e.g. ones that lock shared rows in a fixed order).

        ``last``: the kind runs after every other kind, whenever it was first queued: for a step
        that locks rows other transactions wait for (they wait until this one commits)."""
        self._finishers.setdefault(kind, finisher)
        if per_event_when_isolated:
            self.per_event_kinds.add(kind)
        if last:
            self._last_kinds.add(kind)
        self._queued += 1
        self.deferred.append((self._queued, kind, item))

    async def run_deferred(self, kinds: Collection[str] | None = None) -> None:
        """Run the queued work of ``kinds`` (all when None) now, kind by kind in the order the
        kinds were first queued, the ``last`` kinds after all others; what a finisher queues of a
        selected kind runs too. A handler calls it before it reads what its queued writes change:
        the read must see them."""
        while await self._run_kinds(kinds, last=False) or await self._run_kinds(kinds, last=True):
            pass

    async def _run_kinds(self, kinds: Collection[str] | None, *, last: bool) -> bool:
        """One pass over the selected kinds that are (or are not) ``last``; True when any ran."""
        ran = False
        for kind, finisher in list(self._finishers.items()):
            if (kinds is not None and kind not in kinds) or (kind in self._last_kinds) != last:
                continue
            entries = [entry for entry in self.deferred if entry[1] == kind]
            if not entries:
                continue
            self.deferred = [entry for entry in self.deferred if entry[1] != kind]
            self._ran.extend(entries)
            await finisher(self, [item for _, _, item in entries])
            ran = True
        return ran

    async def read_for_lane(
        self, name: str, key: Any, lane_keys: Callable[[Sequence[CloudEvent[Any]]], Iterable[Any]],
        fetch: Callable[[list[Any]], Awaitable[Mapping[Any, Any]]], missing: Callable[[], Any],
    ) -> Any:
        """``key``'s entry of the memo ``name``. The first need in the transaction fetches the entries of
        ``key`` and of every key ``lane_keys`` names among :attr:`events` in one call of ``fetch``
        (keys it does not return get ``missing()``); a key not fetched yet is fetched alone. A handler
        that writes what an entry holds updates the entry, or drops it (``memo[name].pop(key)``)."""
        known: dict[Any, Any] | None = self.memo.get(name)
        if known is None or key not in known:
            keys = {key}
            if known is None:
                keys.update(lane_keys(self.events))
            found = await fetch(sorted(keys))
            known = self.memo.setdefault(name, {})
            known.update({k: found[k] if k in found else missing() for k in keys})
        return known[key]

    def mark(self) -> tuple[int, int, int]:
        """A point to roll the queued effects back to (with a savepoint of the transaction)."""
        return len(self.rows), self._queued, len(self._ran)

    def rollback_to(self, mark: tuple[int, int, int]) -> None:
        """Forget what was queued after ``mark`` (its savepoint was rolled back); work queued before
        it but run after it is queued again (the savepoint took its writes along); and every memo
        goes: one may hold a read of what the rolled-back work wrote."""
        rows, queued, ran = mark
        del self.rows[rows:]
        again = [entry for entry in self._ran[ran:] if entry[0] <= queued]
        del self._ran[ran:]
        self.deferred = sorted([entry for entry in self.deferred if entry[0] <= queued] + again,
                               key=lambda entry: entry[0])
        self.memo.clear()

    def publish(
        self,
        data: EventData,
        *,
        subject: str,
        time: datetime,
        event_id: str | None = None,
    ) -> CloudEvent[Any]:
        """Queue ``data`` as a new event on its catalog topic; sent after commit."""
        event = new_event(
            data,
            subject=subject,
            source=self.source,
            tenant=self.cause.tenant if self.cause else self.tenant,
            time=time,
            event_id=event_id,
            correlation_id=(self.cause.correlationid or self.cause.id) if self.cause else None,
            causation_id=self.cause.id if self.cause else None,
        )
        headers: dict[str, str] = {"ce_type": event.type, "ce_id": event.id}
        propagate.inject(headers)  # traceparent of the span producing it
        self.rows.append(
            OutboxRow(
                topic=topic_name(type_of(type(data)).topic, self.topic_prefix),
                key=subject.encode(),
                payload=event.to_json_bytes(),
                headers=headers,
            )
        )
        return event

    def publish_raw(self, topic: str, key: bytes | None, payload: bytes, headers: dict[str, str]) -> None:
        """Queue an already-serialised record (DLQ records)."""
        self.rows.append(OutboxRow(topic=topic, key=key, payload=payload, headers=headers))

    async def flush(self) -> int:
        """Run deferred work, then write queued rows to the outbox table (inside the caller's transaction)."""
        await self.run_deferred()
        self._ran.clear()
        if not self.rows:
            return 0
        await self.conn.execute(
            "INSERT INTO outbox(topic, key, payload, headers)"
            " SELECT * FROM unnest($1::text[], $2::bytea[], $3::bytea[], $4::jsonb[])",
            [r.topic for r in self.rows],
            [r.key for r in self.rows],
            [r.payload for r in self.rows],
            [json.dumps(r.headers) for r in self.rows],
        )
        count = len(self.rows)
        self.rows.clear()
        return count


class OutboxRelay:
    """Publishes committed outbox rows to Kafka in order, then deletes them.

    One relay per service schema publishes at a time (a transaction-scoped advisory
    lock), so per-key order holds even with several instances; rows are claimed with
    ``FOR UPDATE SKIP LOCKED``. A batch is sent pipelined and awaited together; on
    any send failure the transaction rolls back and the batch is retried: delivery is
    at least once, and consumers' inboxes make it effectively once.

    Give it a broker without FastStream's telemetry middleware (``make_broker(...,
    telemetry=False)``): the rows' stored trace context is forwarded as is, and a publish
    middleware would replace it with its own.
    """

    def __init__(
        self,
        pool: asyncpg.Pool,
        broker: KafkaBroker,
        *,
        schema: str,
        batch_size: int = 500,
        poll_interval_s: float = 0.2,
        on_published: Callable[[int], None] | None = None,
    ) -> None:
        self._pool = pool
        self._broker = broker
        self._schema = schema
        self._batch_size = batch_size
        self._poll_interval_s = poll_interval_s
        self._wake = asyncio.Event()
        self._stopping = False
        self._on_published = on_published
        self._lock_key = int.from_bytes(f"relay:{schema}".encode()[:8].ljust(8, b"\0"), "big", signed=True)
        meter = metrics.get_meter("cth_shared.outbox")
        self._published_counter = meter.create_counter("outbox.published", unit="{event}")
        self._backlog = 0
        meter.create_observable_gauge(
            "outbox.backlog", callbacks=[lambda _options: [metrics.Observation(self._backlog)]], unit="{event}"
        )

    def wake(self) -> None:
        """Called after a local commit so the relay publishes without waiting for the poll."""
        self._wake.set()

    def stop(self) -> None:
        self._stopping = True
        self._wake.set()

    async def run(self) -> None:
        """Relay until :meth:`stop`; transient errors back off and retry."""
        backoff = 0.1
        while not self._stopping:
            try:
                sent = await self.relay_once()
                backoff = 0.1
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                _log.warning("outbox relay failed; retrying", extra={"reason": type(exc).__name__})
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            if sent == self._batch_size:
                continue  # more is waiting
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self._poll_interval_s)
        # Final drain on graceful shutdown: what committed gets published.
        try:
            while await self.relay_once() == self._batch_size:
                pass
        except Exception as exc:
            _log.warning("outbox drain on shutdown failed", extra={"reason": type(exc).__name__})

    async def relay_once(self) -> int:
        """Publish one batch; return how many rows were sent."""
        async with self._pool.acquire() as conn, conn.transaction():
            if not await conn.fetchval("SELECT pg_try_advisory_xact_lock($1)", self._lock_key):
                return 0
            rows = await conn.fetch(
                "SELECT seq, topic, key, payload, headers FROM outbox ORDER BY seq LIMIT $1 FOR UPDATE SKIP LOCKED",
                self._batch_size,
            )
            if not rows:
                self._backlog = 0
                return 0
            futures = []
            with _tracer.start_as_current_span(
                "outbox.relay batch", attributes={"messaging.batch.message_count": len(rows)}
            ):
                for row in rows:
                    # The stored headers carry the producing handler's W3C context (traceparent,
                    # tracestate): forwarded as they are, the consumer's handler span becomes that
                    # span's child, with no span per published record (one per batch, this one).
                    futures.append(
                        await self._broker.publish(
                            row["payload"],
                            topic=row["topic"],
                            key=row["key"],
                            headers=json.loads(row["headers"]),
                            no_confirm=True,
                        )
                    )
                await asyncio.gather(*futures)
            last = rows[-1]["seq"]
            await conn.execute("DELETE FROM outbox WHERE seq = ANY($1::bigint[])", [r["seq"] for r in rows])
            per_topic: dict[str, int] = {}
            for row in rows:
                per_topic[row["topic"]] = per_topic.get(row["topic"], 0) + 1
            await conn.execute(
                "INSERT INTO outbox_published(topic, published, last_seq)"
                " SELECT t, n, $3 FROM unnest($1::text[], $2::bigint[]) AS x(t, n)"
                " ON CONFLICT (topic) DO UPDATE SET published = outbox_published.published + excluded.published,"
                " last_seq = excluded.last_seq, updated_at = now()",
                list(per_topic),
                list(per_topic.values()),
                last,
            )
            self._backlog = await conn.fetchval("SELECT count(*) FROM outbox") - len(rows)
        self._published_counter.add(len(rows))
        if self._on_published:
            self._on_published(len(rows))
        return len(rows)
