"""The MLLP listener pipelines frames within a connection, yet ACKs leave in arrival order."""

from __future__ import annotations

import asyncio
import random

from cth_shared.producers.mllp import MllpListener, MllpSettings, ack_code, frame
from producer_samples import feed

MESSAGES = feed("epic_style_v251.hl7")



async def test_pipelined_sender_gets_acks_in_order_when_the_broker_acks_out_of_order(translator):
    rng = random.Random(1)
    order = []
    async def sink(event):
        await asyncio.sleep(rng.uniform(0, 0.05))
        order.append(event.data.source_message_id)
    listener = await MllpListener(translator, sink, MllpSettings(port=0)).start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", listener.port)
        batch = [MESSAGES[i % len(MESSAGES)].replace(b"EPA-000", b"X%03d-" % i, 1) for i in range(40)]
        writer.write(b"".join(frame(m) for m in batch) + frame(b"garbage"))
        await writer.drain()
        replies = [(await asyncio.wait_for(reader.readuntil(b"\x1c\x0d"), 10)).decode() for _ in range(41)]
        writer.close()
    finally:
        await listener.stop()
    ids = [r.split("\r")[1].split("|")[2] for r in replies[:40]]
    assert [ack_code(r) for r in replies] == ["AA"] * 40 + ["AR"]
    assert ids == [m.split(b"|")[9].decode() for m in batch]
    assert sorted(order) == sorted(ids) and order != ids  # the broker acked out of order, the ACKs did not
