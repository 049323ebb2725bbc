"""Replay a timeline (synthetic or recorded) into the hub, as fast as possible or paced.

The engine reads :class:`~cth_shared.producers.synthetic.TimelineItem` one at a time (it
never holds the timeline) and sends each one on its way:

* a CloudEvent item is published to its catalog topic (under the publisher's topic prefix)
  through the pipelined, acknowledged :class:`~cth_shared.producers.publish.EventPublisher`;
  a ``member.enrolled`` event also updates the :class:`~cth_shared.producers.hl7_adt.MemberIndex`
  so later ADT messages for that member are matched;
* an HL7 v2 item is either sent over MLLP to a listener (``mllp=(host, port)``: the real path,
  the listener translates with its member index and ACKs after the broker ack) over several
  pipelined connections, or, without ``mllp``, translated in-process with
  :class:`~cth_shared.producers.hl7_adt.AdtTranslator` and published like any event.

Messages about the same patient always take the same MLLP connection (chosen from PID-3), so
their order is kept; events are keyed by subject, so their per-member order is kept too.

Pacing: ``speed=None`` sends as fast as possible; ``speed=1.0`` keeps the gaps between item
timestamps (real time); ``speed=N`` divides the gaps by N. Items before ``paced_from`` (e.g.
the roster and the claims history before the live period) are sent without pacing. The engine
never sleeps to "catch up" when it is behind.

Example - direct (in-process translation)::

    from cth_shared.producers.replay import replay, open_publisher
    from cth_shared.producers.synthetic import Population, PopulationConfig

    population = Population(PopulationConfig(members=1000, seed=7, days=30))
    async with open_publisher(StackSettings()) as publisher:
        summary = await replay(
            population.timeline(), publisher=publisher, adt_settings=population.adt_settings()
        )
    print(summary.render())

Example - through an in-process MLLP listener (what the demo does)::

    async with open_publisher(settings) as publisher:
        listener = await start_listener(publisher, adt_settings=population.adt_settings())
        try:
            summary = await replay(
                population.timeline(),
                publisher=publisher,                 # CloudEvent items
                mllp=("127.0.0.1", listener.port),   # HL7 items
                index=listener.translator.index,     # roster events feed the listener's index
            )
        finally:
            await listener.stop()

:func:`start_listener` builds an :class:`~cth_shared.producers.mllp.MllpListener` whose sink is
``publisher.publish`` (AA only after the broker ack) and whose member index is either given or
new and empty; passing that index to :func:`replay` feeds it from the replayed roster events.
A listener in another process (``cth listen --roster FILE``) builds its index from roster files.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import zlib
from collections import Counter, deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime

from cth_shared.broker import make_broker
from cth_shared.contracts import CloudEvent
from cth_shared.contracts.events import MemberEnrolled
from cth_shared.settings import StackSettings

from .hl7_adt import AdtEvent, AdtSettings, AdtTranslator, Hl7Error, MemberIndex, UnmatchedPatient
from .mllp import FrameReader, MllpListener, MllpSettings, ack_code, frame
from .publish import BrokerUnavailable, EventPublisher, PublishError, connect_broker
from .synthetic import TimelineItem

__all__ = [
    "BrokerUnavailable",
    "MllpUnavailable",
    "ReplaySummary",
    "open_publisher",
    "replay",
    "start_listener",
]

#: Errors kept in the summary (the count is always exact).
MAX_ERRORS_KEPT = 50


class MllpUnavailable(ConnectionError):
    """The MLLP listener could not be reached."""


@dataclass
class ReplaySummary:
    """What a replay did. Updated live while the replay runs (``on_progress`` sees it)."""

    items: int = 0
    #: CloudEvents acknowledged by the broker, by event type (direct path, incl. translated ADT).
    events: Counter[str] = field(default_factory=Counter)
    #: HL7 messages sent, by message type (``ADT^A01`` ...).
    hl7: Counter[str] = field(default_factory=Counter)
    #: HL7 outcomes: AA (accepted, incl. unmatched patients), AE (broker did not take it), AR (rejected).
    acks: Counter[str] = field(default_factory=Counter)
    #: Accepted ADT messages whose patient is not a member (reported, nothing published).
    unmatched: int = 0
    #: Events the broker did not acknowledge (direct path).
    failed: int = 0
    #: Count of every problem (failed events, AE/AR, lost connections); ``error_samples`` keeps the first ones.
    errors: int = 0
    error_samples: list[str] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)
    elapsed: float = 0.0
    #: How far the replay is behind its pace (seconds; 0 when unpaced).
    lag: float = 0.0
    last_item_at: datetime | None = None

    def error(self, text: str) -> None:
        self.errors += 1
        if len(self.error_samples) < MAX_ERRORS_KEPT:
            self.error_samples.append(text)

    @property
    def published(self) -> int:
        """Events acknowledged by the broker on the direct path."""
        return sum(self.events.values())

    @property
    def events_per_second(self) -> float:
        elapsed = self.elapsed or (time.monotonic() - self.started)
        return self.items / elapsed if elapsed > 0 else 0.0

    @property
    def ok(self) -> bool:
        """True when everything was accepted (unmatched patients count as accepted)."""
        return self.errors == 0

    def render(self) -> str:
        """A plain-text summary (no PHI: counts and reasons only)."""
        lines = [
            f"items {self.items} in {self.elapsed:.2f}s ({self.events_per_second:,.0f}/s)",
            *(f"  event {kind}: {count}" for kind, count in sorted(self.events.items())),
            *(f"  hl7 {kind}: {count}" for kind, count in sorted(self.hl7.items())),
            f"  acks {dict(sorted(self.acks.items()))}  unmatched {self.unmatched}",
            f"  failed {self.failed}  errors {self.errors}",
            *(f"  ! {text}" for text in self.error_samples[:10]),
        ]
        return "\n".join(lines)


# --------------------------------------------------------------------------- helpers
@contextlib.asynccontextmanager
async def open_publisher(
    settings: StackSettings | None = None,
    *,
    topic_prefix: str | None = None,
    client_id: str = "cth-producer",
    connect_timeout: float = 15.0,
    ack_timeout: float = 10.0,
    window: int = 2000,
) -> AsyncIterator[EventPublisher]:
    """A connected :class:`EventPublisher` (settings from the environment by default).

    Raises :class:`~cth_shared.producers.publish.BrokerUnavailable` when the broker cannot be
    reached within ``connect_timeout``. Flushes in-flight sends on exit (failures are already
    counted by the publisher; they are not raised here).
    """
    settings = settings or StackSettings()
    broker = make_broker(settings, client_id=client_id)
    await connect_broker(broker, timeout=connect_timeout)
    publisher = EventPublisher(
        broker,
        topic_prefix=settings.topic_prefix if topic_prefix is None else topic_prefix,
        ack_timeout=ack_timeout,
        window=window,
    )
    try:
        yield publisher
        with contextlib.suppress(PublishError):
            await publisher.flush()
    finally:
        with contextlib.suppress(Exception):
            await broker.stop()


async def start_listener(
    publisher: EventPublisher,
    *,
    index: MemberIndex | None = None,
    adt_settings: AdtSettings | None = None,
    host: str = "127.0.0.1",
    port: int = 0,
    settings: MllpSettings | None = None,
) -> MllpListener:
    """Start an MLLP listener that publishes through ``publisher`` (AA after the broker ack).

    ``index`` is the member index it matches patients with (a new empty one by default: pass
    ``listener.translator.index`` to :func:`replay` to feed it from the replayed roster).
    ``port=0`` picks a free port (``listener.port``). Stop it with ``await listener.stop()``.
    """
    mllp_settings = settings or MllpSettings(host=host, port=port)
    translator = AdtTranslator(index if index is not None else MemberIndex(), adt_settings)
    listener = MllpListener(translator, publisher.publish, mllp_settings)
    return await listener.start()


def _segment_field(message: str, segment: str, field_no: int) -> str:
    """Field ``field_no`` of the first ``segment`` (raw, first component); '' when absent."""
    start = 0 if message.startswith(segment + "|") else message.find("\r" + segment + "|")
    if start < 0:
        return ""
    end = message.find("\r", start + 1)
    line = message[start : end if end >= 0 else None].lstrip("\r")
    fields = line.split("|")
    if segment == "MSH":  # MSH-1 is the separator itself
        field_no -= 1
    if field_no >= len(fields):
        return ""
    return fields[field_no].split("~")[0]


def _message_type(message: str) -> str:
    parts = _segment_field(message, "MSH", 9).split("^")
    return "^".join(parts[:2]) or "unknown"


# --------------------------------------------------------------------------- MLLP lanes
class _Lane:
    """One MLLP connection with up to ``window`` messages awaiting their ACK (in order)."""

    def __init__(self, host: str, port: int, window: int, timeout: float, summary: ReplaySummary) -> None:
        self.host, self.port, self.timeout = host, port, timeout
        self._slots = asyncio.Semaphore(window)
        self._pending: deque[str] = deque()  # message control ids, in send order
        self._summary = summary
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self._idle = asyncio.Event()
        self._idle.set()

    async def connect(self) -> None:
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(self.host, self.port, limit=1 << 20), self.timeout
            )
        except (OSError, TimeoutError) as exc:
            raise MllpUnavailable(f"MLLP listener {self.host}:{self.port} unreachable ({type(exc).__name__})") from None
        self._writer = writer
        frames = FrameReader(reader, max_frame_bytes=1 << 20, read_timeout=self.timeout, idle_timeout=1e9)
        self._reader_task = asyncio.create_task(self._read_acks(frames))

    async def _read_acks(self, frames: FrameReader) -> None:
        summary = self._summary
        try:
            while True:
                try:
                    reply = await frames.read()
                except TimeoutError:
                    if not self._pending:
                        continue
                    raise
                if not isinstance(reply, bytes):
                    break
                if not self._pending:
                    summary.error("MLLP: unexpected ACK with nothing pending")
                    continue
                control_id = self._pending.popleft()
                text = reply.decode(errors="replace")
                code = ack_code(text) or "??"
                summary.acks[code] += 1
                if code == "AA":
                    if "not a member" in text:
                        summary.unmatched += 1
                else:
                    reason = _segment_field(text.replace("\n", "\r"), "MSA", 3) or "no reason given"
                    summary.error(f"HL7 {control_id}: {code} {reason}")
                self._slots.release()
                if not self._pending:
                    self._idle.set()
        except (ConnectionError, TimeoutError, OSError) as exc:
            summary.error(f"MLLP connection lost ({type(exc).__name__})")
        finally:
            self._drop_pending("connection closed before the ACK")

    def _drop_pending(self, why: str) -> None:
        while self._pending:
            control_id = self._pending.popleft()
            self._summary.acks["none"] += 1
            self._summary.error(f"HL7 {control_id}: no ACK ({why})")
            self._slots.release()
        self._idle.set()
        if self._writer is not None:
            self._writer.close()
        self._writer = None

    async def send(self, message: str) -> None:
        await self._slots.acquire()
        if self._writer is None or self._writer.is_closing():
            try:
                await self.connect()
            except MllpUnavailable as exc:
                self._slots.release()
                self._summary.acks["none"] += 1
                self._summary.error(str(exc))
                return
        assert self._writer is not None
        self._pending.append(_segment_field(message, "MSH", 10) or "?")
        self._idle.clear()
        self._writer.write(frame(message.encode()))
        if self._writer.transport.get_write_buffer_size() > 1 << 18:
            try:
                await asyncio.wait_for(self._writer.drain(), self.timeout)
            except (ConnectionError, TimeoutError) as exc:
                self._drop_pending(f"send failed ({type(exc).__name__})")

    async def close(self) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), self.timeout)
        if self._pending:
            self._drop_pending("timed out waiting for the ACK")
        if self._reader_task is not None:
            self._reader_task.cancel()
            with contextlib.suppress(BaseException):
                await self._reader_task
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._writer.wait_closed(), 1.0)
            self._writer = None


# --------------------------------------------------------------------------- the engine
async def replay(
    items: Iterable[TimelineItem],
    *,
    publisher: EventPublisher,
    mllp: tuple[str, int] | None = None,
    index: MemberIndex | None = None,
    adt_settings: AdtSettings | None = None,
    speed: float | None = None,
    paced_from: datetime | None = None,
    on_progress: Callable[[ReplaySummary], None] | None = None,
    progress_interval: float = 0.25,
    mllp_connections: int = 16,
    mllp_window: int = 64,
    mllp_timeout: float = 30.0,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> ReplaySummary:
    """Replay ``items`` (any iterable, consumed lazily) and return the summary.

    * ``publisher``: where CloudEvent items (and, without ``mllp``, translated ADT) go.
    * ``mllp``: ``(host, port)`` of an MLLP listener for HL7 items; ``None`` = translate in-process.
    * ``index``: member index fed by the ``member.enrolled`` events replayed (a new one when
      ``None``); used for in-process translation, or shared with an in-process listener.
    * ``adt_settings``: how to read the HL7 feeds in-process (e.g. ``population.adt_settings()``).
    * ``speed``: ``None`` as fast as possible, ``1.0`` real time, ``N`` N times faster.
    * ``paced_from``: items timestamped before it are not paced (history catch-up).
    * ``on_progress``: called with the live summary at most every ``progress_interval`` s and
      once at the end.
    * ``clock`` / ``sleep``: the pacing clock (seconds) and how to wait (tests and simulations
      pass their own).

    Raises :class:`MllpUnavailable` when ``mllp`` is given and the listener cannot be reached at
    the start; later failures are counted in the summary (``errors``), never raised.
    """
    if speed is not None and speed <= 0:
        raise ValueError("speed must be positive (None = as fast as possible)")
    summary = ReplaySummary()
    index = index if index is not None else MemberIndex()
    translator = AdtTranslator(index, adt_settings) if mllp is None else None
    lanes: list[_Lane] = []
    if mllp is not None:
        lanes = [_Lane(mllp[0], mllp[1], mllp_window, mllp_timeout, summary) for _ in range(max(1, mllp_connections))]
        await lanes[0].connect()  # fail fast when nobody listens
        for lane in lanes[1:]:
            with contextlib.suppress(MllpUnavailable):
                await lane.connect()

    def on_event(kind: str) -> Callable[[str | None], None]:
        def done(error: str | None) -> None:
            if error is None:
                summary.events[kind] += 1
            else:
                summary.failed += 1
                summary.error(f"event {kind}: not acknowledged by the broker ({error})")

        return done

    def on_adt(kind: str, control_id: str) -> Callable[[str | None], None]:
        def done(error: str | None) -> None:
            if error is None:
                summary.events[kind] += 1
                summary.acks["AA"] += 1
            else:
                summary.failed += 1
                summary.acks["AE"] += 1
                summary.error(f"HL7 {control_id}: AE broker did not acknowledge ({error})")

        return done

    first_at: datetime | None = None
    wall_start = 0.0
    last_progress = time.monotonic()
    try:
        for item in items:
            summary.items += 1
            summary.last_item_at = item.at
            # -- pacing
            if speed is not None and (paced_from is None or item.at >= paced_from):
                if first_at is None:
                    first_at, wall_start = item.at, clock()
                due = wall_start + (item.at - first_at).total_seconds() / speed
                ahead = due - clock()
                if ahead > 0:
                    await sleep(ahead)
                    summary.lag = 0.0
                else:
                    summary.lag = -ahead
            elif summary.items % 64 == 0:
                await asyncio.sleep(0)  # let ACK readers and callbacks run
            # -- dispatch
            payload = item.payload
            if isinstance(payload, CloudEvent):
                if isinstance(payload.data, MemberEnrolled):
                    index.add(payload.data)
                await publisher.send(payload, on_result=on_event(payload.type))
            else:
                text = payload if isinstance(payload, str) else bytes(payload).decode(errors="replace")
                summary.hl7[_message_type(text)] += 1
                if lanes:
                    patient = _segment_field(text, "PID", 3).split("^")[0]
                    await lanes[zlib.crc32(patient.encode()) % len(lanes)].send(text)
                else:
                    assert translator is not None
                    await _translate_and_send(translator, text, publisher, summary, on_adt)
            if on_progress is not None and time.monotonic() - last_progress >= progress_interval:
                last_progress = time.monotonic()
                summary.elapsed = last_progress - summary.started
                on_progress(summary)
    finally:
        for lane in lanes:
            await lane.close()
        with contextlib.suppress(PublishError):
            await publisher.flush()
        summary.elapsed = time.monotonic() - summary.started
    if on_progress is not None:
        on_progress(summary)
    return summary


async def _translate_and_send(
    translator: AdtTranslator,
    text: str,
    publisher: EventPublisher,
    summary: ReplaySummary,
    on_adt: Callable[[str, str], Callable[[str | None], None]],
) -> None:
    try:
        result = translator.translate(text)
    except Hl7Error as error:
        summary.acks["AR"] += 1
        summary.error(f"HL7 {error.control_id or '?'}: AR {error.reason}: {error.detail}")
        return
    if isinstance(result, UnmatchedPatient):
        summary.acks["AA"] += 1
        summary.unmatched += 1
        return
    assert isinstance(result, AdtEvent)
    await publisher.send(result.event, on_result=on_adt(result.event.type, result.control_id))
