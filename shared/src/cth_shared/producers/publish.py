"""Publishing CloudEvents from the producer toolkit: one acknowledged send, or a pipeline.

:meth:`EventPublisher.publish` waits for the broker's acknowledgement (``acks=all``) within
a timeout: the MLLP listener uses it so that an AA ACK means "durably accepted".
:meth:`EventPublisher.send` pipelines: it hands the record to the producer and keeps at most
``window`` unacknowledged sends in flight, so bulk loads never await one round trip per
event; :meth:`EventPublisher.flush` waits for the rest and reports failures.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter, deque
from collections.abc import Callable
from typing import Any

from faststream.kafka import KafkaBroker

from cth_shared.contracts import CloudEvent, registered_types, topic_name

__all__ = ["BrokerUnavailable", "EventPublisher", "PublishError", "connect_broker", "topic_for"]


class PublishError(RuntimeError):
    """The broker did not acknowledge one or more events (``failed`` of them)."""

    def __init__(self, detail: str, *, failed: int = 1) -> None:
        super().__init__(detail)
        self.failed = failed


class BrokerUnavailable(RuntimeError):
    """The broker could not be reached at start-up."""


def topic_for(event: CloudEvent[Any], prefix: str = "") -> str:
    """The physical topic of ``event``: its type's catalog topic under ``prefix``."""
    return topic_name(registered_types()[event.type].topic, prefix)


def record_headers(event_id: str, event_type: str) -> dict[str, str]:
    """The Kafka headers a producer sets on a CloudEvent record: its content type, id and type (the
    consumers take ``ce_type`` as a parsing hint; see ``parse_event``)."""
    return {"content-type": "application/cloudevents+json", "ce_id": event_id, "ce_type": event_type}


def _headers(event: CloudEvent[Any]) -> dict[str, str]:
    return record_headers(event.id, event.type)


async def connect_broker(broker: KafkaBroker, *, timeout: float = 15.0) -> None:
    """Start ``broker``; raise :class:`BrokerUnavailable` when it does not answer in time."""
    try:
        await asyncio.wait_for(broker.start(), timeout)
    except Exception as exc:
        with contextlib.suppress(Exception):
            await broker.stop()
        raise BrokerUnavailable(f"broker did not accept a connection ({type(exc).__name__})") from None


class EventPublisher:
    """Sends events to their catalog topics, keyed by ``subject`` (member id or NPI)."""

    def __init__(
        self,
        broker: KafkaBroker,
        *,
        topic_prefix: str = "",
        ack_timeout: float = 10.0,
        window: int = 2000,
    ) -> None:
        self._broker = broker
        self._prefix = topic_prefix
        self._ack_timeout = ack_timeout
        self._window = window
        self._in_flight: deque[asyncio.Future[Any]] = deque()
        self.acked: Counter[str] = Counter()
        self.failed = 0
        self.last_error: str | None = None

    async def publish(self, event: CloudEvent[Any]) -> None:
        """Send one event and wait for the broker's acknowledgement (or raise PublishError)."""
        try:
            await asyncio.wait_for(
                self._broker.publish(
                    event.to_json_bytes(),
                    topic=topic_for(event, self._prefix),
                    key=event.subject.encode(),
                    headers=_headers(event),
                ),
                self._ack_timeout,
            )
        except Exception as exc:
            self.failed += 1
            self.last_error = type(exc).__name__
            raise PublishError(f"broker did not acknowledge the event ({type(exc).__name__})") from None
        self.acked[event.type] += 1

    async def send(self, event: CloudEvent[Any], *, on_result: Callable[[str | None], None] | None = None) -> None:
        """Queue one event without waiting for its ack; blocks only while the window is full.

        ``on_result`` (optional) is called once the outcome is known: with ``None`` when the
        broker acknowledged the event, otherwise with the error's name.
        """
        while len(self._in_flight) >= self._window:
            await self._settle(self._in_flight.popleft())
        try:
            future = await asyncio.wait_for(
                self._broker.publish(
                    event.to_json_bytes(),
                    topic=topic_for(event, self._prefix),
                    key=event.subject.encode(),
                    headers=_headers(event),
                    no_confirm=True,
                ),
                self._ack_timeout,
            )
        except Exception as exc:
            self.failed += 1
            self.last_error = type(exc).__name__
            if on_result is not None:
                on_result(self.last_error)
            return
        future.add_done_callback(lambda f, kind=event.type: self._count(f, kind, on_result))
        self._in_flight.append(future)

    def _count(self, future: asyncio.Future[Any], kind: str, on_result: Callable[[str | None], None] | None) -> None:
        error: str | None = None
        if future.cancelled() or future.exception() is not None:
            self.failed += 1
            error = "cancelled" if future.cancelled() else type(future.exception()).__name__
            self.last_error = error
        else:
            self.acked[kind] += 1
        if on_result is not None:
            on_result(error)

    async def _settle(self, future: asyncio.Future[Any]) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(asyncio.shield(future), self._ack_timeout)
        if not future.done():
            future.cancel()

    @property
    def in_flight(self) -> int:
        """Sends handed to the producer and not yet acknowledged."""
        return len(self._in_flight)

    async def flush(self) -> None:
        """Wait for every in-flight send; raise PublishError if any was not acknowledged."""
        while self._in_flight:
            await self._settle(self._in_flight.popleft())
        if self.failed:
            raise PublishError(
                f"{self.failed} event(s) were not acknowledged by the broker (last: {self.last_error})",
                failed=self.failed,
            )
