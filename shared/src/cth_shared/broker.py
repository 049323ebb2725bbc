"""The one broker factory: a FastStream KafkaBroker with OpenTelemetry middleware."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Sequence
from typing import Any

from faststream.kafka import KafkaBroker
from faststream.kafka.opentelemetry import KafkaTelemetryMiddleware
from faststream.security import BaseSecurity, SASLPlaintext, SASLScram256, SASLScram512
from opentelemetry.sdk.trace import TracerProvider

from .settings import StackSettings


def _security(settings: StackSettings) -> BaseSecurity | None:
    protocol = settings.kafka_security_protocol
    if protocol == "PLAINTEXT":
        return None
    context = ssl.create_default_context(cafile=str(settings.kafka_ssl_cafile)) if "SSL" in protocol else None
    use_ssl = protocol.endswith("SSL")
    if protocol == "SSL":
        return BaseSecurity(ssl_context=context, use_ssl=True)
    username = settings.kafka_sasl_username or ""
    password = settings.kafka_sasl_password.get_secret_value() if settings.kafka_sasl_password else ""
    sasl = {"SCRAM-SHA-256": SASLScram256, "SCRAM-SHA-512": SASLScram512}.get(
        settings.kafka_sasl_mechanism or "PLAIN", SASLPlaintext
    )
    return sasl(username=username, password=password, ssl_context=context, use_ssl=use_ssl)


def make_broker(
    settings: StackSettings,
    *,
    client_id: str,
    tracer_provider: TracerProvider | None = None,
    telemetry: bool = True,
) -> KafkaBroker:
    """Build the Kafka broker every process uses (services, relay, producer toolkit).

    Producers wait for all in-sync replicas (``acks="all"``); idempotent producers are
    off because the embedded broker (Tansu) rejects them (DESIGN.md section 6): the
    inbox makes redelivery harmless instead.

    ``telemetry`` adds FastStream's OpenTelemetry middleware: a span (and metrics) per published
    message and per consumed batch. Producers at the edge (the MLLP gateway, the CLI) keep it; the
    services turn it off because their :class:`~cth_shared.messaging.consumer.BatchProcessor` opens
    one span per batch and per handled event, and their outbox relay forwards the producing
    handler's stored trace context as is (per-message spans cost ~20% of pipeline throughput).
    """
    return KafkaBroker(
        settings.kafka_bootstrap_servers,
        client_id=client_id,
        acks="all",
        enable_idempotence=False,
        linger_ms=2,
        max_batch_size=256 * 1024,
        request_timeout_ms=15_000,
        security=_security(settings),
        middlewares=[KafkaTelemetryMiddleware(tracer_provider=tracer_provider)] if telemetry else [],
        logger=None,
    )


async def log_end_offsets(consumer: Any, partitions: Sequence[Any], timeout_s: float = 10.0) -> dict[Any, int]:
    """The offset after the last record of each partition, correct on the embedded broker too.

    ``AIOKafkaConsumer.end_offsets`` (ListOffsets "latest") is right on Apache Kafka; Tansu 0.6
    answers with the base offset of the partition's last record batch plus one, i.e. short by
    the rest of that batch. A fetch response's high watermark is right on both, so this also
    reads one batch from there and keeps the larger value. ``consumer`` must not be in a
    group; this assigns it ``partitions`` for the probe and clears its assignment after.
    """
    ends = await consumer.end_offsets(list(partitions))
    probe = [tp for tp, end in ends.items() if end > 0]
    if not probe:
        return dict(ends)
    consumer.assign(probe)
    for tp in probe:
        consumer.seek(tp, ends[tp] - 1)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    pending = set(probe)
    try:
        while pending and loop.time() < deadline:
            await consumer.getmany(*pending, timeout_ms=200, max_records=1)
            for tp in list(pending):
                highwater = consumer.highwater(tp)
                if highwater is not None:
                    ends[tp] = max(ends[tp], highwater)
                    pending.discard(tp)
    finally:
        consumer.unsubscribe()  # no background prefetching between probes
    if pending:
        raise TimeoutError(f"no fetch answer for {len(pending)} partitions within {timeout_s:.0f}s")
    return dict(ends)
