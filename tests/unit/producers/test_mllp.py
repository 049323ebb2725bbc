"""MLLP listener behaviour with an in-memory sink: framing, ACK codes, timeouts, shutdown.

The broker-backed behaviour (AA only after the broker's ack, AE during an outage) is in
tests/integration/producers/test_mllp_broker.py.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from cth_shared.producers.mllp import (
    MllpClient,
    MllpListener,
    MllpSettings,
    ack_code,
    build_ack,
    frame,
    send_messages,
)
from producer_samples import feed

MESSAGES = feed("epic_style_v251.hl7")


class RecordingSink:
    def __init__(self, *, fail: bool = False, delay: float = 0.0) -> None:
        self.events: list[Any] = []
        self.fail = fail
        self.delay = delay

    async def __call__(self, event: Any) -> None:
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.fail:
            raise ConnectionError("broker down")
        self.events.append(event)


async def listener_with(translator, sink, **limits: Any) -> MllpListener:
    return await MllpListener(translator, sink, MllpSettings(port=0, **limits)).start()


async def raw_exchange(port: int, payload: bytes, *, acks: int) -> list[str]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(payload)
    await writer.drain()
    replies = []
    for _ in range(acks):
        data = await asyncio.wait_for(reader.readuntil(b"\x1c\x0d"), 5)
        replies.append(data.decode())
    writer.close()
    return replies


async def test_each_message_is_published_then_acknowledged_aa(translator):
    sink = RecordingSink()
    listener = await listener_with(translator, sink)
    try:
        acks = await send_messages("127.0.0.1", listener.port, MESSAGES)
    finally:
        await listener.stop()
    assert [ack_code(a) for a in acks] == ["AA"] * len(MESSAGES)
    assert len(sink.events) == len(MESSAGES)
    assert "MSA|AA|EPA-0001" in acks[0]  # MSA-2 echoes MSH-10
    assert listener.stats.accepted == len(MESSAGES)


async def test_broker_failure_answers_ae_never_aa(translator):
    listener = await listener_with(translator, RecordingSink(fail=True))
    try:
        acks = await send_messages("127.0.0.1", listener.port, MESSAGES[:3])
    finally:
        await listener.stop()
    assert [ack_code(a) for a in acks] == ["AE"] * 3
    assert listener.stats.errors == 3 and listener.stats.accepted == 0


async def test_broker_ack_timeout_answers_ae(translator):
    listener = await listener_with(translator, RecordingSink(delay=5), ack_timeout=0.2)
    try:
        acks = await send_messages("127.0.0.1", listener.port, MESSAGES[:1])
    finally:
        await listener.stop()
    assert ack_code(acks[0]) == "AE"


async def test_acks_echo_the_control_id_even_when_the_library_cannot_build_one_from_the_message(translator):
    # An empty segment: the library parses the message but cannot make an ACK from it, and a truncated
    # header cannot be parsed at all; both answers must still carry MSH-10 in MSA-2 (senders match by it).
    with_empty_segment = MESSAGES[0].replace(b"\r", b"\r\r", 1)
    truncated = b"MSH|^~\\&|EPIC|HOSP|CTH|PAYER|20260301120000||ADT^A01|EPA-0009|P\r"
    sink = RecordingSink()
    listener = await listener_with(translator, sink)
    try:
        acks = await send_messages("127.0.0.1", listener.port, [with_empty_segment, truncated])
    finally:
        await listener.stop()
    assert [ack_code(a) for a in acks] == ["AA", "AR"]
    assert "MSA|AA|EPA-0001" in acks[0] and len(sink.events) == 1
    assert "MSA|AR|EPA-0009|truncated" in acks[1]


async def test_malformed_message_answers_ar_with_the_reason(translator):
    listener = await listener_with(translator, RecordingSink())
    try:
        bad_version = MESSAGES[0].replace(b"|2.5.1|", b"|2.8|")
        acks = await send_messages("127.0.0.1", listener.port, [b"not hl7 at all", bad_version, MESSAGES[0]])
    finally:
        await listener.stop()
    assert [ack_code(a) for a in acks] == ["AR", "AR", "AA"]
    assert "missing_msh" in acks[0]
    assert "unsupported_version" in acks[1] and "MSA|AR|EPA-0001|" in acks[1]
    assert listener.stats.rejected_reasons == {"missing_msh": 1, "unsupported_version": 1}


async def test_junk_before_start_block_and_frames_split_across_reads(translator):
    sink = RecordingSink()
    listener = await listener_with(translator, sink)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", listener.port)
        payload = b"GET / HTTP/1.0\r\n\r\n" + frame(MESSAGES[0]) + b"\r\n" + frame(MESSAGES[1])
        for i in range(0, len(payload), 7):  # dribble 7 bytes at a time
            writer.write(payload[i : i + 7])
            await writer.drain()
        replies = [await asyncio.wait_for(reader.readuntil(b"\x1c\x0d"), 5) for _ in range(2)]
        writer.close()
    finally:
        await listener.stop()
    assert [ack_code(r) for r in replies] == ["AA", "AA"]
    assert len(sink.events) == 2 and listener.stats.junk_bytes > 0


async def test_oversized_frame_is_rejected_and_the_connection_resynchronises(translator):
    sink = RecordingSink()
    listener = await listener_with(translator, sink, max_frame_bytes=64 * 1024)
    try:
        huge = MESSAGES[0] + b"ZZZ|" + b"x" * (10 * 1024 * 1024) + b"\r"
        replies = await raw_exchange(listener.port, frame(huge) + frame(MESSAGES[1]), acks=2)
    finally:
        await listener.stop()
    assert [ack_code(r) for r in replies] == ["AR", "AA"]
    assert "oversize" in replies[0]
    assert len(sink.events) == 1 and listener.stats.oversize == 1


async def test_a_client_that_stalls_mid_frame_is_disconnected(translator):
    listener = await listener_with(translator, RecordingSink(), read_timeout=0.2)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", listener.port)
        writer.write(b"\x0b" + MESSAGES[0][:50])
        await writer.drain()
        assert await asyncio.wait_for(reader.read(), 3) == b""  # closed by the listener
        writer.close()
    finally:
        await listener.stop()
    assert listener.stats.timeouts == 1 and listener.stats.received == 0


async def test_an_idle_client_is_disconnected(translator):
    listener = await listener_with(translator, RecordingSink(), idle_timeout=0.2)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", listener.port)
        assert await asyncio.wait_for(reader.read(), 3) == b""
        writer.close()
    finally:
        await listener.stop()


async def test_many_concurrent_connections_each_get_their_acks(translator):
    sink = RecordingSink(delay=0.01)
    listener = await listener_with(translator, sink)
    try:
        results = await asyncio.gather(
            *(send_messages("127.0.0.1", listener.port, MESSAGES[:5]) for _ in range(40))
        )
    finally:
        await listener.stop()
    assert all(ack_code(a) == "AA" for acks in results for a in acks)
    assert len(sink.events) == 200 and listener.stats.connections == 40


async def test_stop_finishes_the_message_in_progress(translator):
    sink = RecordingSink(delay=0.5)
    listener = await listener_with(translator, sink)
    client = await MllpClient("127.0.0.1", listener.port, timeout=5).connect()
    idle = await MllpClient("127.0.0.1", listener.port, timeout=5).connect()
    sending = asyncio.create_task(client.send(MESSAGES[0]))
    await asyncio.sleep(0.1)
    await listener.stop()
    assert ack_code(await sending) == "AA" and len(sink.events) == 1
    with pytest.raises((ConnectionError, OSError)):
        await idle.send(MESSAGES[1])
    await client.close()
    await idle.close()


def test_build_ack_escapes_the_reason_text():
    ack = build_ack(None, "AR", "bad_encoding_characters: expected |^~\\&")
    assert ack_code(ack) == "AR"
    assert "|^~\\&|" not in ack.split("\r")[1]
