"""No PHI in telemetry: the four services run a small synthetic population (roster, claims history,
HL7 ADT stays, V1C visits, referrals) with every telemetry output captured:

- spans: the JSON-lines span file (``OTEL_SPANS_FILE``) and OTLP/HTTP traces,
- metrics: OTLP/HTTP metrics (exported every second and at shutdown),
- logs: the services' JSON logs (stdout/stderr, tracebacks included),

with asyncpg statement spans on, as in production. Every span name, attribute key and value, event,
resource attribute, metric name and label, and every log line is searched for the names, birth
dates, addresses and diagnoses of the population (``PHI_FIELDS`` of the contracts say which fields
are PHI; the values come from the events actually published). Zero hits.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import re
import threading
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from cth_shared.auth import issue_token
from cth_shared.contracts.events import PHI_FIELDS
from cth_shared.embedded import free_port
from cth_shared.producers.hl7_adt import MemberIndex
from cth_shared.producers.replay import open_publisher, replay
from cth_shared.producers.synthetic import Population, PopulationConfig
from cth_shared.settings import StackSettings
from fastapi import FastAPI, Request, Response
from google.protobuf.message import Message
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from poison_support import SERVICES, Receiver, astop_services, connect, eventually, log_text, start_services

pytestmark = [pytest.mark.integration, pytest.mark.reliability]

CONFIG = PopulationConfig(members=40, seed=11, start=date(2026, 3, 1), days=30, lookback_days=90,
                          admissions_per_year=4.0, ed_visits_per_year=2.0, v1c_visits_per_year=4.0,
                          referrals_per_year=2.0)


class OtlpCapture:
    """A loopback OTLP/HTTP endpoint that keeps every export request it receives."""

    def __init__(self) -> None:
        self.port = free_port()
        self.bodies: dict[str, list[bytes]] = {"traces": [], "metrics": [], "logs": []}
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def __aenter__(self) -> OtlpCapture:
        app = FastAPI()

        @app.post("/v1/{signal}")
        async def export(signal: str, request: Request) -> Response:
            body = await request.body()
            if request.headers.get("content-encoding") == "gzip":
                body = gzip.decompress(body)
            self.bodies.setdefault(signal, []).append(body)
            return Response(content=b"", media_type="application/x-protobuf")

        # Its own thread and loop: exports must be answered even while the test's loop waits on a process.
        self._server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning",
                                                     lifespan="off"))
        self._thread = threading.Thread(target=self._server.run, name="otlp-capture", daemon=True)
        self._thread.start()
        await eventually(lambda: asyncio.sleep(0, self._server.started), 10, "OTLP capture")
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None and self._thread is not None
        self._server.should_exit = True
        await asyncio.to_thread(self._thread.join, 10)

    def strings(self, signal: str, message_type: type[Message]) -> list[str]:
        out: list[str] = []
        for body in self.bodies.get(signal, []):
            request = message_type()
            request.ParseFromString(body)
            out.extend(_proto_strings(request))
        return out


def _proto_strings(message: Message) -> Iterator[str]:
    """Every string field anywhere in a protobuf message (names, attribute keys and values, units...)."""
    for _descriptor, value in message.ListFields():
        items = [value] if isinstance(value, str | bytes | Message | int | float | bool) else list(value)
        for item in items:
            if isinstance(item, Message):
                yield from _proto_strings(item)
            elif isinstance(item, str):
                yield item


def phi_terms(events: list[Any], population: Population) -> dict[str, str]:
    """PHI values of the population -> which field they came from."""
    terms: dict[str, str] = {}

    def collect(value: Any, field: str) -> None:
        if isinstance(value, dict):
            for key, child in value.items():
                if key not in ("latitude", "longitude"):
                    collect(child, f"{field}.{key}")
        elif isinstance(value, list):
            for child in value:
                collect(child, field)
        elif isinstance(value, str) and len(value) >= 3:
            terms[value] = field
        elif isinstance(value, date):
            terms[value.isoformat()] = field
            terms[value.strftime("%Y%m%d")] = field

    def walk(value: Any) -> None:
        if isinstance(value, dict):
            for key, child in value.items():
                if key in PHI_FIELDS:
                    collect(child, key)
                else:
                    walk(child)
        elif isinstance(value, list):
            for child in value:
                walk(child)

    for event in events:
        walk(event.data.model_dump(mode="json"))
    for index in range(CONFIG.members):
        member = population.member(index)
        collect({"given_name": member.given_name, "family_name": member.family_name,
                 "birth_date": member.birth_date, "address": member.address}, "member")
    # Values shorter than 3 characters or purely structural are not searchable without noise.
    return {t: f for t, f in terms.items() if len(t) >= 3 and t.upper() not in {"USA", "US"}}


def hits(terms: dict[str, str], texts: list[str], what: str) -> list[str]:
    """``what: term (field)`` for every PHI term found as a whole token in ``texts``.

    Single-token terms are looked up in the set of tokens of the texts; the others (addresses,
    dates, dotted codes) by substring search, then checked for token boundaries.
    """
    joined = "\n".join(texts)
    tokens = set(_TOKEN.findall(joined))
    found = []
    for term, field in terms.items():
        if _TOKEN.fullmatch(term):
            if term not in tokens:
                continue
        elif term not in joined:
            continue
        pattern = re.compile(rf"(?<![0-9A-Za-z]){re.escape(term)}(?![0-9A-Za-z])")
        match = pattern.search(joined)
        if match:
            start = joined.rfind("\n", 0, match.start()) + 1
            found.append(f"{what}: {term!r} ({field}) in {joined[start:start + 200]!r}")
    return found


_TOKEN = re.compile(r"[0-9A-Za-z]+")


async def test_no_phi_in_spans_metrics_or_logs(isolated: Any, tmp_path: Path) -> None:
    population = Population(CONFIG)
    spans_file = tmp_path / "spans.jsonl"
    published: list[Any] = []
    async with OtlpCapture() as otlp, Receiver({}) as receiver:
        processes = await start_services(
            isolated, tmp_path, OTEL_SPANS_FILE=str(spans_file), OTEL_EXPORTER_OTLP_ENDPOINT=otlp.endpoint,
            OTEL_METRIC_EXPORT_INTERVAL="1000", OTEL_INSTRUMENT_ASYNCPG="true",
        )
        try:
            # Webhooks to every PCP practice, so deliveries are traced and measured too.
            conn = await connect(isolated, "notifications")
            tins = sorted({population.member(i).usual_pcp.tin for i in range(CONFIG.members)})
            async with httpx.AsyncClient(base_url=processes["notifications"].base_url, timeout=10) as api:
                for tin in tins:
                    token = await issue_token(conn, tin)
                    response = await api.post("/subscriptions", headers={"Authorization": f"Bearer {token}"},
                                              json={"audience": "care_team", "channel": "webhook",
                                                    "endpoint_url": receiver.url(f"/{tin}")})
                    assert response.status_code == 201, response.text
            await conn.close()

            settings = StackSettings(kafka_bootstrap_servers=isolated.kafka_bootstrap_servers,
                                     topic_prefix=isolated.topic_prefix)
            async with open_publisher(settings) as publisher:
                original_send = publisher.send

                async def send(event: Any, **kwargs: Any) -> None:
                    published.append(event)
                    await original_send(event, **kwargs)

                publisher.send = send  # type: ignore[method-assign]
                # Roster and history first, so the care teams are known before the stays happen
                # (topics are not ordered with each other).
                items = list(population.timeline())
                live_from = min(item.at for item in items if item.kind == "hl7")
                index = MemberIndex()
                for phase in ([i for i in items if i.at < live_from], [i for i in items if i.at >= live_from]):
                    summary = await replay(phase, publisher=publisher, index=index,
                                           adt_settings=population.adt_settings())
                    assert summary.failed == 0 and summary.errors == 0, summary.render()
                    await _wait_until_quiet(isolated)
            await eventually(lambda: asyncio.sleep(0, len(receiver.requests) > 0), timeout=90,
                             what="webhooks delivered")
        finally:
            codes = await astop_services(processes, timeout=45)  # a final flush of many spans
    assert codes == dict.fromkeys(SERVICES, 0), log_text(processes)[-4000:]

    terms = phi_terms(published, population)
    assert len(terms) > 200, f"only {len(terms)} PHI values collected"
    types = {event.type for event in published}
    assert {"member.enrolled", "encounter.admitted", "encounter.discharged", "claim.adjudicated"} <= types

    # What was captured (and that it is the real thing, not an empty file).
    span_lines = [json.loads(line) for line in spans_file.read_text().splitlines()]
    span_texts = [json.dumps({"name": s["name"], "attributes": s["attributes"]}, ensure_ascii=False)
                  for s in span_lines]
    otlp_span_strings = otlp.strings("traces", ExportTraceServiceRequest)
    metric_strings = otlp.strings("metrics", ExportMetricsServiceRequest)
    log_lines = log_text(processes).splitlines()
    assert {s["service"] for s in span_lines} == set(SERVICES)
    assert any(s["name"].startswith("notifications handle encounter.") for s in span_lines)
    assert any("db.statement" in s["attributes"] or "db.query.text" in s["attributes"] for s in span_lines)
    assert "events.consumed" in metric_strings and "http.server.request.duration" in metric_strings
    assert any("notifications.delivery" in s for s in metric_strings)
    assert len(log_lines) > 20

    # Positive control: the search finds PHI where PHI legitimately lives (alert content for clinicians).
    notifications = await connect(isolated, "notifications")
    try:
        contents = [json.dumps(json.loads(r["content"]) if isinstance(r["content"], str) else r["content"])
                    for r in await notifications.fetch("SELECT content FROM notifications")]
    finally:
        await notifications.close()
    assert hits(terms, contents, "alert content"), "the search must be able to find PHI"

    found = (hits(terms, span_texts, "span file") + hits(terms, otlp_span_strings, "OTLP span")
             + hits(terms, metric_strings, "metric") + hits(terms, log_lines, "log"))
    assert not found, "PHI in telemetry:\n" + "\n".join(found[:30])


async def _wait_until_quiet(isolated: Any, quiet_polls: int = 15) -> None:
    """Until every service's inbox stops growing and its outbox is empty for ``quiet_polls`` polls."""
    conns = {name: await connect(isolated, schema) for name, (_m, schema, _t) in SERVICES.items()}
    try:
        last: dict[str, int] = {}
        steady = 0

        async def quiet() -> bool:
            nonlocal steady, last
            now = {name: await conn.fetchval("SELECT count(*) FROM inbox") for name, conn in conns.items()}
            pending = sum([await conn.fetchval("SELECT count(*) FROM outbox") for conn in conns.values()])
            steady = steady + 1 if now == last and pending == 0 and all(now.values()) else 0
            last = now
            return steady >= quiet_polls

        await eventually(quiet, timeout=180, what="all services done with the population")
    finally:
        for conn in conns.values():
            await conn.close()


async def test_a_failing_handler_leaves_only_the_error_type_in_its_spans(isolated: Any, monkeypatch: Any) -> None:
    """Exception messages and tracebacks can quote event values: a handler failure is traced by type only
    (the consumer records no exception on its span; the exporters keep only the type of exceptions
    recorded by any other span)."""
    from aiokafka import ConsumerRecord
    from cth_shared.db import create_pool, run_migrations
    from cth_shared.messaging import consumer
    from cth_shared.telemetry import ExceptionScrubbingExporter
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from poison_support import event_bytes

    provider = TracerProvider()
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(ExceptionScrubbingExporter(exporter)))
    monkeypatch.setattr(consumer, "_tracer", provider.get_tracer("phi-probe"))
    pool = await create_pool(isolated.database_url, schema="phi_probe", application_name="phi-probe", max_size=2)
    try:
        await run_migrations(pool, "phi_probe", "attribution")

        async def failing(_uow: Any, event: Any) -> None:
            member = event.data
            # Services trace their steps: the exception also escapes a span of the handler's own.
            with consumer._tracer.start_as_current_span("probe step"):
                raise ValueError(f"cannot use {member.given_name} {member.family_name} born {member.birth_date}")

        processor = consumer.BatchProcessor(service="echo", pool=pool, handlers={"member.enrolled": failing},
                                            tenant="t", topic_prefix=isolated.topic_prefix)
        value = event_bytes("member.enrolled")
        record = ConsumerRecord(topic=isolated.topic("enrollment"), partition=0, offset=0, timestamp=0,
                                timestamp_type=0, key=b"M000001", value=value, checksum=None,
                                serialized_key_size=7, serialized_value_size=len(value), headers=[])
        await processor.process([record])
        dead = await pool.fetchrow("SELECT reason, detail FROM dead_letters")
    finally:
        await pool.close()
    assert dict(dead) == {"reason": "handler_error", "detail": "ValueError"}
    spans = exporter.get_finished_spans()
    seen = repr([(s.name, dict(s.attributes or {}), [(e.name, dict(e.attributes or {})) for e in s.events],
                  s.status.description) for s in spans])
    for phi in ("Ada", "Example", "1950-04-02"):
        assert phi not in seen, f"{phi!r} in a span: {seen[:2000]}"
    assert any((s.attributes or {}).get("error.type") == "ValueError" for s in spans)
    steps = [s for s in spans if s.name == "probe step"]
    assert steps and all([dict(e.attributes or {}) for e in step.events] == [
        {"exception.type": "ValueError", "exception.escaped": "False"}] for step in steps), "the type is kept"
