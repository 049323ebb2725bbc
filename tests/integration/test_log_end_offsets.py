"""``log_end_offsets`` against the real broker: the offset after the last record of each
partition even when records arrive in multi-record batches (the embedded broker's ListOffsets
answer counts only the first record of the last batch); what consumer-lag probes and the
reliability tests' topic readers rely on."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from cth_shared.broker import log_end_offsets

pytestmark = pytest.mark.integration


async def test_end_offsets_count_every_record_of_batched_partitions(isolated: Any) -> None:
    await isolated.create_topics([("batched", 3, {})])
    topic = isolated.topic("batched")
    producer = AIOKafkaProducer(bootstrap_servers=isolated.kafka_bootstrap_servers, linger_ms=30)
    await producer.start()
    try:
        for i in range(7):  # one record per batch
            await producer.send_and_wait(topic, f"single-{i}".encode(), partition=0)
        sent = [await producer.send(topic, b"batched", partition=i % 2) for i in range(100)]
        await asyncio.gather(*sent)
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(bootstrap_servers=isolated.kafka_bootstrap_servers, enable_auto_commit=False,
                                **isolated.consumer_overrides())
    await consumer.start()
    try:
        partitions = [TopicPartition(topic, p) for p in range(3)]
        ends = await log_end_offsets(consumer, partitions)
        assert {tp.partition: end for tp, end in ends.items()} == {0: 57, 1: 50, 2: 0}
        assert consumer.assignment() == set(), "the probe leaves no assignment behind"
    finally:
        await consumer.stop()
