"""Helpers for the producer toolkit's integration tests: sample feeds and reading topics back."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from cth_shared.contracts.events import EXAMPLES, MemberEnrolled
from cth_shared.producers.hl7_adt import MemberIndex, split_messages

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "hl7"
EPIC_MRN_SYSTEM = "urn:oid:2.16.840.1.113883.3.72.5.9.1"


def sample_index() -> MemberIndex:
    """A roster with the sample feeds' member (M000001)."""
    data = {
        **EXAMPLES["member.enrolled"],
        "identifiers": [{"system": EPIC_MRN_SYSTEM, "value": "MRN100001"}],
    }
    return MemberIndex.from_members([MemberEnrolled.model_validate(data)])


def sample_adt_messages(count: int) -> list[bytes]:
    """``count`` distinct A01 messages (control ids EPA-00000...) from the Epic-style feed."""
    template = split_messages((FIXTURES / "epic_style_v251.hl7").read_bytes())[0]
    return [
        template.replace(b"EPA-0001", f"EPA-{i:05d}".encode()).replace(b"V5550001", f"V{i:07d}".encode())
        for i in range(count)
    ]


async def read_topic(isolated: Any, name: str, *, expected: int, timeout: float = 30.0) -> list[Any]:
    """Every record of catalog topic ``name`` (all partitions, from the beginning).

    Waits until ``expected`` records arrived, then a short while more to catch extras.
    """
    topic = isolated.topic(name)
    consumer = AIOKafkaConsumer(bootstrap_servers=isolated.kafka_bootstrap_servers, enable_auto_commit=False)
    await consumer.start()
    try:
        partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or [])]
        if not partitions:
            await consumer._client.force_metadata_update()
            partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or [])]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        records: list[Any] = []
        deadline = time.monotonic() + timeout
        settle_until: float | None = None
        while time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=200)
            for items in batch.values():
                records.extend(items)
            if len(records) >= expected:
                settle_until = settle_until or time.monotonic() + 0.5
                if time.monotonic() >= settle_until:
                    break
            await asyncio.sleep(0)
        return records
    finally:
        await consumer.stop()
