"""Raw-broker baseline: a bare aiokafka chain over the same topics, doing no work.

The pipeline's longest path from an ADT message to an alert is
``encounters -> care-gaps service -> care-gaps topic -> notifications service -> notifications topic``:
two consume->produce hops after the first produce. The baseline runs the same number
of hops with the same client library, partitions and record sizes, each hop a
separate OS process (as the services are), so the pipeline's figure can be reported
as a ratio to what the broker and the client allow on this machine in the same run.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import time
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

HOP_TOPICS = ("encounters", "care-gaps", "notifications")
#: Same as the services' default (``kafka_fetch_max_wait_ms``): Tansu holds an empty fetch this long.
FETCH_MAX_WAIT_MS = 20


@dataclass
class BaselineResult:
    events: int
    seconds: float
    hops: int

    @property
    def events_per_s(self) -> float:
        return self.events / self.seconds if self.seconds else 0.0


def _hop_process(bootstrap: str, source: str, target: str, expected: int, group: str) -> None:
    async def run() -> None:
        consumer = AIOKafkaConsumer(
            source, bootstrap_servers=bootstrap, group_id=group, auto_offset_reset="earliest",
            enable_auto_commit=False, session_timeout_ms=2000, heartbeat_interval_ms=300, max_poll_records=500,
            fetch_max_wait_ms=FETCH_MAX_WAIT_MS,
        )
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=2)
        await consumer.start()
        await producer.start()
        moved = 0
        try:
            while moved < expected:
                batches = await consumer.getmany(timeout_ms=200, max_records=500)
                futures = []
                for records in batches.values():
                    for record in records:
                        futures.append(await producer.send(target, record.value, key=record.key,
                                                           headers=list(record.headers or ())))
                if futures:
                    await asyncio.gather(*futures)
                    await consumer.commit()  # like the services: offsets after the effect
                    moved += len(futures)
        finally:
            await producer.stop()
            await consumer.stop()

    asyncio.run(run())


async def _drain(bootstrap: str, topic: str, expected: int, group: str, hops: list, timeout: float) -> float:
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=group, auto_offset_reset="earliest",
                                session_timeout_ms=2000, heartbeat_interval_ms=300,
                                fetch_max_wait_ms=FETCH_MAX_WAIT_MS)
    await consumer.start()
    seen = 0
    deadline = time.monotonic() + timeout
    try:
        while seen < expected:
            for records in (await consumer.getmany(timeout_ms=200)).values():
                seen += len(records)
            if time.monotonic() > deadline or any(h.exitcode not in (None, 0) for h in hops):
                raise RuntimeError(f"baseline chain stalled: {seen}/{expected} arrived; hop exit codes "
                                   f"{[h.exitcode for h in hops]}")
    finally:
        await consumer.stop()
    return time.perf_counter()


async def run_baseline(bootstrap: str, prefix: str, payloads: list[tuple[bytes, bytes, list[tuple[str, bytes]]]],
                       timeout: float = 300.0) -> BaselineResult:
    """Push ``payloads`` (key, value, headers: the pipeline's records) through the chain; time first send
    to last arrival."""
    topics = [f"{prefix}{t}" for t in HOP_TOPICS]
    expected = len(payloads)
    ctx = multiprocessing.get_context("spawn")
    hops = [
        ctx.Process(target=_hop_process, args=(bootstrap, topics[i], topics[i + 1], expected, f"{prefix}hop{i}"))
        for i in range(len(topics) - 1)
    ]
    for hop in hops:
        hop.start()
    await asyncio.sleep(3.0)  # let the hop consumers join their groups (Tansu join delay)
    drain = asyncio.create_task(_drain(bootstrap, topics[-1], expected, f"{prefix}drain", hops, timeout))
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=2)
    await producer.start()
    started = time.perf_counter()
    try:
        futures = [await producer.send(topics[0], value, key=key, headers=headers) for key, value, headers in payloads]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()
    try:
        finished = await drain
    finally:
        for hop in hops:
            hop.join(timeout=30)
            if hop.is_alive():
                hop.kill()
    return BaselineResult(events=expected, seconds=finished - started, hops=len(hops))
