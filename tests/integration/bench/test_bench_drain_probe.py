"""The bench's drain probe counts what a service's consumer group consumed from its commits on the broker."""

from __future__ import annotations

from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from bench.pipeline import GroupOffsets

pytestmark = pytest.mark.integration


async def test_committed_offsets_count_the_records_a_group_consumed(isolated: Any) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=isolated.kafka_bootstrap_servers, linger_ms=5)
    await producer.start()
    try:
        for topic, count in (("encounters", 37), ("care-gaps", 12)):
            for i in range(count):
                await producer.send(isolated.topic(topic), b"{}", key=f"M{i}".encode())
        await producer.flush()
    finally:
        await producer.stop()
    probe = GroupOffsets(isolated.kafka_bootstrap_servers, isolated.topic_prefix)
    await probe.start()
    try:
        nothing = {"encounters": 0, "attribution": 0, "care-gaps": 0, "referrals": 0}
        assert await probe.consumed("notifications") == nothing  # the group has committed nothing yet
        # The notifications group consumes part of one topic and all of the other, and commits.
        group = AIOKafkaConsumer(isolated.topic("encounters"), isolated.topic("care-gaps"),
                                 bootstrap_servers=isolated.kafka_bootstrap_servers,
                                 group_id=f"{isolated.topic_prefix}notifications", auto_offset_reset="earliest",
                                 enable_auto_commit=False, session_timeout_ms=6000, heartbeat_interval_ms=500)
        await group.start()
        try:
            seen = 0
            while seen < 49:
                batches = await group.getmany(timeout_ms=1000)
                seen += sum(len(records) for records in batches.values())
            await group.commit()
        finally:
            await group.stop()
        assert await probe.consumed("notifications") == {**nothing, "encounters": 37, "care-gaps": 12}
        assert set((await probe.consumed("referrals")).values()) == {0}  # another service's group
    finally:
        await probe.stop()
