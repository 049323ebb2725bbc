"""MLLP (Minimal Lower Layer Protocol) listener and client for HL7 v2 over TCP.

Framing: ``0x0B <message> 0x1C 0x0D``. For every frame the listener:

1. parses and maps the message (:class:`~cth_shared.producers.hl7_adt.AdtTranslator`);
2. publishes the event and waits for the broker's acknowledgement;
3. answers with an original-mode ACK: ``AA`` only once the broker has the event, ``AR``
   (application reject, MSA-3 = reason) when the message is unusable, ``AE`` (application
   error) when the broker did not acknowledge in time, so the sender keeps the message and
   resends it. Resends are harmless: the event id derives from MSH-10.

A connection may pipeline (``MllpSettings.max_in_flight`` frames): the listener reads and
translates the next frame while earlier events wait for the broker, and writes the ACKs
strictly in the order the frames arrived. A sender that waits for each ACK sees no difference.

A patient who is not a member is accepted (``AA``; nothing to publish, MSA-3 says so),
counted and handed to ``on_unmatched``: a hospital feed carries everyone, and NAK-ing a
non-member would stall the sender's queue forever.

Robustness: bytes before a start block are skipped, frames may arrive in any number of
reads, an oversized frame is discarded as it streams in and answered with ``AR`` once its end
block arrives (the connection then resynchronises), a client that stalls mid-frame is
disconnected after ``read_timeout``, an idle one after ``idle_timeout``, and ``stop()``
finishes the messages in progress before closing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import hl7

from cth_shared.contracts import CloudEvent

from .hl7_adt import AdtEvent, AdtTranslator, Hl7Error, UnmatchedPatient, header_control_id, parse_hl7

__all__ = [
    "END_BLOCK",
    "START_BLOCK",
    "FrameReader",
    "MllpClient",
    "MllpListener",
    "MllpSettings",
    "MllpStats",
    "ack_code",
    "build_ack",
    "frame",
    "send_messages",
]

log = logging.getLogger(__name__)

START_BLOCK = b"\x0b"
END_BLOCK = b"\x1c\x0d"

EventSink = Callable[[CloudEvent[Any]], Awaitable[None]]
Writer = asyncio.StreamWriter


def frame(message: bytes | str) -> bytes:
    """Wrap one message in MLLP start/end blocks."""
    body = message.encode() if isinstance(message, str) else message
    return START_BLOCK + body + END_BLOCK


class OversizeFrame:
    """Marker returned by :class:`FrameReader` for a frame larger than the limit."""

    def __init__(self, size: int) -> None:
        self.size = size


class FrameReader:
    """Reads MLLP frames from a stream, skipping junk and surviving oversized frames."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        *,
        max_frame_bytes: int,
        read_timeout: float,
        idle_timeout: float,
    ) -> None:
        self._reader = reader
        self._max = max_frame_bytes
        self._read_timeout = read_timeout
        self._idle_timeout = idle_timeout
        self._buffer = bytearray()
        self.junk_bytes = 0
        self.abandoned_frames = 0

    @property
    def mid_frame(self) -> bool:
        return bool(self._buffer)

    async def _fill(self, waiting_for_start: bool) -> bool:
        timeout = self._idle_timeout if waiting_for_start and not self._buffer else self._read_timeout
        chunk = await asyncio.wait_for(self._reader.read(65536), timeout)
        if not chunk:
            return False
        self._buffer += chunk
        return True

    async def read(self) -> bytes | OversizeFrame | None:
        """The next frame's content, an :class:`OversizeFrame`, or None at end of stream.

        Raises ``TimeoutError`` when the peer stalls (idle or mid-frame).
        """
        # 1. find the start block, discarding anything before it
        while True:
            start = self._buffer.find(START_BLOCK)
            if start >= 0:
                self.junk_bytes += start
                del self._buffer[: start + 1]
                break
            self.junk_bytes += len(self._buffer)
            self._buffer.clear()
            if not await self._fill(waiting_for_start=True):
                return None
        # 2. collect until the end block; a new start block abandons a half-sent frame
        size = 0
        oversize = False
        scanned = 0
        while True:
            end = self._buffer.find(END_BLOCK, scanned)
            restart = self._buffer.find(START_BLOCK, scanned)
            if restart >= 0 and (end < 0 or restart < end):
                self.abandoned_frames += 1
                del self._buffer[: restart + 1]
                size, oversize, scanned = 0, False, 0
                continue
            if end >= 0:
                if oversize or size + end > self._max:  # a whole frame may arrive in one read
                    del self._buffer[: end + len(END_BLOCK)]
                    return OversizeFrame(size + end)
                body = bytes(self._buffer[:end])
                del self._buffer[: end + len(END_BLOCK)]
                return body
            if size + len(self._buffer) > self._max:
                # Discard what we have (keeping a byte that may begin the end block).
                oversize = True
                keep = 1 if self._buffer.endswith(END_BLOCK[:1]) else 0
                size += len(self._buffer) - keep
                del self._buffer[: len(self._buffer) - keep]
            scanned = max(0, len(self._buffer) - 1)
            if not await self._fill(waiting_for_start=False):
                if size or self._buffer:
                    self.abandoned_frames += 1
                self._buffer.clear()
                return None


def _timestamp() -> str:
    return datetime.now(UTC).strftime("%Y%m%d%H%M%S+0000")


def build_ack(original: hl7.Message | None, code: str, text: str = "", control_id: str | None = None) -> str:
    """An original-mode ACK (MSH + MSA) for ``original``; a generic one when it is unreadable.

    ``code`` is AA, AE or AR; ``text`` goes to MSA-3, escaped (it never holds PHI). The generic
    ACK still carries the message's control id in MSA-2 when it can be read (``control_id``, or
    MSH-10 of ``original``): senders match ACKs to messages by it, and an unmatched ACK makes
    interface engines resend.
    """
    ack: hl7.Message | None = None
    if original is not None:
        try:
            ack = original.create_ack(ack_code=code, message_id=hl7.generate_message_control_id())
        except Exception:  # an odd header (or the library's limits) is no reason to leave the sender without an answer
            ack = None
            control_id = control_id or header_control_id(original)
    if ack is None:
        ack = hl7.parse(
            f"MSH|^~\\&|CTH|CTH|||{_timestamp()}||ACK|{hl7.generate_message_control_id()}|P|2.5.1\r"
            f"MSA|{code}|"
        )
        if control_id:
            ack.segment("MSA").assign_field(ack.escape(control_id), 2)
    if text:
        ack.segment("MSA").assign_field(ack.escape(text[:200]), 3)
    return str(ack)


def _ack_source(message: hl7.Message) -> hl7.Message | None:
    """What :func:`build_ack` needs of ``message`` while its event waits for the broker: the MSH.

    Holding only the header lets the rest of the parsed tree (a few hundred containers) go at
    once: with many messages in flight, the whole trees would survive into the garbage
    collector's older generations and make every full collection slower. None when the
    library cannot read even the header alone (the generic ACK then, with MSA-2 from the
    translated event's control id).
    """
    try:
        head = message[:1]  # parse_hl7 guarantees the first segment is the MSH
        head.segment("MSH")  # the library reads it alone even when a later segment trips it up (an empty one)
    except Exception:
        return None
    return head


def ack_code(ack: str | bytes) -> str:
    """MSA-1 of an ACK (AA, AE, AR, ...), or '' when it cannot be read."""
    text = ack.decode(errors="replace") if isinstance(ack, bytes) else ack
    try:
        message = hl7.parse(text.strip("\x0b\x1c\r\n"))
        return str(message.segment("MSA").extract_field(1, 1))
    except Exception:
        return ""


@dataclass
class MllpSettings:
    """Listener limits (seconds and bytes)."""

    host: str = "127.0.0.1"
    port: int = 2575
    max_frame_bytes: int = 1_048_576
    read_timeout: float = 30.0
    idle_timeout: float = 600.0
    ack_timeout: float = 10.0
    max_connections: int = 256
    shutdown_grace: float = 10.0
    #: Frames one connection may have awaiting their ACK. A sender that waits for each ACK
    #: (most interface engines) has one; one that pipelines gets its ACKs in order while the
    #: broker acknowledges several events at once. 1 = strictly one message at a time.
    max_in_flight: int = 64


@dataclass
class MllpStats:
    """What the listener has done since it started."""

    connections: int = 0
    refused_connections: int = 0
    received: int = 0
    accepted: int = 0
    unmatched: int = 0
    rejected: int = 0
    errors: int = 0
    oversize: int = 0
    timeouts: int = 0
    junk_bytes: int = 0
    rejected_reasons: dict[str, int] = field(default_factory=dict)


class MllpListener:
    """An asyncio MLLP server that turns ADT messages into acknowledged events."""

    def __init__(
        self,
        translator: AdtTranslator,
        sink: EventSink,
        settings: MllpSettings | None = None,
        *,
        on_unmatched: Callable[[UnmatchedPatient], None] | None = None,
    ) -> None:
        self.translator = translator
        self.settings = settings or MllpSettings()
        self.stats = MllpStats()
        self._sink = sink
        self._on_unmatched = on_unmatched
        self._server: asyncio.Server | None = None
        self._connections: dict[asyncio.Task[Any], bool] = {}  # task -> busy with a message
        self._closing = False

    @property
    def port(self) -> int:
        """The bound port (useful with ``port=0``)."""
        if self._server is None or not self._server.sockets:
            raise RuntimeError("the listener is not started")
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> MllpListener:
        self._closing = False
        self._server = await asyncio.start_server(
            self._serve, self.settings.host, self.settings.port, limit=1 << 20
        )
        return self

    async def stop(self) -> None:
        """Stop accepting, let messages in progress finish (up to the grace), then close."""
        self._closing = True
        if self._server is not None:
            self._server.close()
        for task, busy in list(self._connections.items()):
            if not busy:
                task.cancel()
        if self._connections:
            _, pending = await asyncio.wait(list(self._connections), timeout=self.settings.shutdown_grace)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=1.0)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 1.0)
            self._server = None

    async def __aenter__(self) -> MllpListener:
        return await self.start()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        if self._closing or len(self._connections) >= self.settings.max_connections:
            self.stats.refused_connections += 1
            writer.close()
            return
        self.stats.connections += 1
        self._connections[task] = False
        frames = FrameReader(
            reader,
            max_frame_bytes=self.settings.max_frame_bytes,
            read_timeout=self.settings.read_timeout,
            idle_timeout=self.settings.idle_timeout,
        )
        # Replies in arrival order: the next frame is read and translated while earlier ones
        # wait for the broker; the ACK writer answers strictly in order.
        replies: asyncio.Queue[asyncio.Future[str] | None] = asyncio.Queue(max(1, self.settings.max_in_flight))
        acks = asyncio.create_task(self._write_acks(replies, writer))
        try:
            try:
                while not self._closing and not acks.done():
                    item = await frames.read()
                    if item is None:
                        break
                    self._connections[task] = True
                    await replies.put(self._answer(item))
                    self._connections[task] = False
            except TimeoutError:
                self.stats.timeouts += 1
            except asyncio.CancelledError:
                if self._connections.get(task):
                    raise  # stop()'s grace is over
                # stop() ended the wait for the next frame: answer what was read, then close.
                task.uncancel()
            self._connections[task] = True
            await replies.put(None)
            await acks
        except (ConnectionError, TimeoutError, asyncio.IncompleteReadError):
            pass
        except asyncio.CancelledError:
            # stop() cancels connections after its grace; ending normally keeps Python 3.11's
            # stream callback from logging the cancellation as an unhandled error.
            pass
        finally:
            acks.cancel()
            while not replies.empty():
                pending = replies.get_nowait()
                if pending is not None:
                    pending.cancel()
            self.stats.junk_bytes += frames.junk_bytes
            self._connections.pop(task, None)
            writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), 1.0)

    async def _write_acks(self, replies: asyncio.Queue[asyncio.Future[str] | None], writer: Writer) -> None:
        """Write each reply once it is known, in the order the frames arrived (until None)."""
        broken = False
        while (pending := await replies.get()) is not None:
            reply = await pending
            if broken:
                continue  # keep taking replies so the reader never waits on a full queue
            try:
                writer.write(frame(reply))
                if writer.transport.get_write_buffer_size() > 1 << 16:
                    await asyncio.wait_for(writer.drain(), self.settings.read_timeout)
            except (ConnectionError, TimeoutError, OSError):
                broken = True  # the reader sees the connection end and stops

    def _reject(self, reason: str) -> None:
        self.stats.rejected += 1
        self.stats.rejected_reasons[reason] = self.stats.rejected_reasons.get(reason, 0) + 1

    def _answer(self, item: bytes | OversizeFrame) -> asyncio.Future[str]:
        """The reply to one frame: known at once, or once the broker acknowledged its event."""
        reply = asyncio.get_running_loop().create_future()
        self.stats.received += 1
        if isinstance(item, OversizeFrame):
            self.stats.oversize += 1
            self._reject("oversize")
            limit = self.settings.max_frame_bytes
            reply.set_result(build_ack(None, "AR", f"oversize: frame exceeds the {limit} byte limit"))
            return reply
        message: hl7.Message | None = None
        try:
            message = parse_hl7(
                item, max_bytes=self.translator.settings.max_message_bytes, segments=self.translator.SEGMENTS
            )
            result = self.translator.translate(message)
        except Hl7Error as error:
            self._reject(error.reason)
            log.info("hl7 message rejected: %s (control id %s)", error.reason, error.control_id)
            reply.set_result(build_ack(message, "AR", f"{error.reason}: {error.detail}", control_id=error.control_id))
            return reply
        if isinstance(result, UnmatchedPatient):
            self.stats.unmatched += 1
            log.info("%s", result)  # no PHI: control id, facility NPI, identifier systems
            if self._on_unmatched is not None:
                self._on_unmatched(result)
            reply.set_result(build_ack(message, "AA", "accepted: patient is not a member of this payer (reported)"))
            return reply
        return asyncio.ensure_future(self._publish(_ack_source(message), result))

    async def _publish(self, message: hl7.Message | None, result: AdtEvent) -> str:
        try:
            await asyncio.wait_for(self._sink(result.event), self.settings.ack_timeout)
        except Exception as exc:
            self.stats.errors += 1
            log.warning("broker did not acknowledge event for control id %s: %s", result.control_id, type(exc).__name__)
            return build_ack(message, "AE", "broker unavailable: event not accepted, resend later",
                             control_id=result.control_id)
        self.stats.accepted += 1
        return build_ack(message, "AA", control_id=result.control_id)


# --------------------------------------------------------------------------- client
class MllpClient:
    """A minimal MLLP sender: one connection, one message at a time, waits for each ACK."""

    def __init__(self, host: str, port: int, *, timeout: float = 30.0) -> None:
        self.host = host
        self.port = port
        self.timeout = timeout
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._frames: FrameReader | None = None

    async def connect(self) -> MllpClient:
        self._reader, self._writer = await asyncio.wait_for(
            asyncio.open_connection(self.host, self.port, limit=1 << 20), self.timeout
        )
        self._frames = FrameReader(
            self._reader, max_frame_bytes=1 << 20, read_timeout=self.timeout, idle_timeout=self.timeout
        )
        return self

    async def send(self, message: bytes | str) -> str:
        """Send one message and return the ACK text (raises ConnectionError without one)."""
        if self._writer is None or self._frames is None:
            await self.connect()
        assert self._writer is not None and self._frames is not None
        self._writer.write(frame(message))
        await asyncio.wait_for(self._writer.drain(), self.timeout)
        reply = await self._frames.read()
        if not isinstance(reply, bytes):
            raise ConnectionError("the listener closed the connection without an ACK")
        return reply.decode(errors="replace")

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._writer.wait_closed(), 1.0)
        self._writer = self._reader = self._frames = None

    async def __aenter__(self) -> MllpClient:
        return await self.connect()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


async def send_messages(
    host: str, port: int, messages: Sequence[bytes | str], *, timeout: float = 30.0
) -> list[str]:
    """Send ``messages`` in order over one connection; return one ACK per message."""
    async with MllpClient(host, port, timeout=timeout) as client:
        return [await client.send(message) for message in messages]
