"""The one telemetry setup: traces, metrics and JSON logs with trace ids.

OTLP/HTTP export when ``OTEL_EXPORTER_OTLP_ENDPOINT`` is set; a JSON-lines span file
when ``OTEL_SPANS_FILE`` is set (the demo's trace waterfall reads it). Span and log
attributes carry ids and codes only, never PHI (names, birth dates, addresses,
diagnoses): call sites put member ids and event ids on spans, nothing else.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode

from opentelemetry import metrics, trace
from opentelemetry.context import Context
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricReader, PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan, Span, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.trace import Status

from .settings import StackSettings


class JsonLinesSpanExporter(SpanExporter):
    """Appends finished spans as one JSON object per line (local, dependency-free)."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._lock = threading.Lock()
        path.parent.mkdir(parents=True, exist_ok=True)

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        lines = []
        for span in spans:
            context = span.get_span_context()
            if context is None:
                continue
            lines.append(
                json.dumps(
                    {
                        "trace_id": f"{context.trace_id:032x}",
                        "span_id": f"{context.span_id:016x}",
                        "parent_id": f"{span.parent.span_id:016x}" if span.parent else None,
                        "name": span.name,
                        "service": span.resource.attributes.get("service.name"),
                        "kind": span.kind.name,
                        "start_ns": span.start_time,
                        "end_ns": span.end_time,
                        "status": span.status.status_code.name,
                        "attributes": {k: _plain(v) for k, v in (span.attributes or {}).items()},
                        "links": [f"{link.context.trace_id:032x}" for link in span.links],
                    },
                    default=str,
                )
            )
        with self._lock, self._path.open("a", encoding="utf-8") as handle:
            handle.write("".join(line + "\n" for line in lines))
        return SpanExportResult.SUCCESS


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


class QueryRedactingSpanProcessor(SpanProcessor):
    """Blanks every query-string value on HTTP server spans (``url.query``), keeping the names.

    FastAPI's native telemetry records the query string; ours carries bearer material (the
    inbox stream ``ticket``) and filters. Registered first, so every exporter sees the redacted form.
    """

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        query = (span.attributes or {}).get("url.query")
        if isinstance(query, str) and query:
            pairs = parse_qsl(query, keep_blank_values=True)
            span.set_attribute("url.query", urlencode([(key, "REDACTED") for key, _ in pairs]))


class ExceptionScrubbingExporter(SpanExporter):
    """Wraps an exporter: recorded exceptions keep their type, never their message or traceback.

    Exception messages quote the values that failed (an asyncpg ``DataError`` names the bound
    argument, a validation error its input): PHI. The same goes for an error status description.
    """

    def __init__(self, inner: SpanExporter) -> None:
        self._inner = inner

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return self._inner.export([_scrubbed(span) for span in spans])

    def shutdown(self) -> None:
        self._inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self._inner.force_flush(timeout_millis)


_EXCEPTION_KEEP = ("exception.type", "exception.escaped")


def _scrubbed(span: ReadableSpan) -> ReadableSpan:
    description = span.status.description
    if not description and not any(event.name == "exception" for event in span.events):
        return span
    events = [
        Event(event.name, {k: v for k, v in (event.attributes or {}).items() if k in _EXCEPTION_KEEP},
              event.timestamp)
        if event.name == "exception" else event
        for event in span.events
    ]
    status = Status(span.status.status_code, description.split(":", 1)[0][:120] if description else None)
    return ReadableSpan(
        name=span.name, context=span.context, parent=span.parent, resource=span.resource,
        attributes=span.attributes, events=events, links=span.links, kind=span.kind, status=status,
        start_time=span.start_time, end_time=span.end_time, instrumentation_scope=span.instrumentation_scope,
    )


@dataclass
class Telemetry:
    """What a composition root holds on to: providers to pass down and to shut down."""

    tracer_provider: TracerProvider
    meter_provider: MeterProvider

    def shutdown(self) -> None:
        """Flush and stop exporters (called on graceful shutdown)."""
        self.tracer_provider.shutdown()
        self.meter_provider.shutdown()


class JsonLogFormatter(logging.Formatter):
    """One JSON object per line with the current trace and span ids."""

    def format(self, record: logging.LogRecord) -> str:
        span_context = trace.get_current_span().get_span_context()
        payload: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if span_context.is_valid:
            payload["trace_id"] = f"{span_context.trace_id:032x}"
            payload["span_id"] = f"{span_context.span_id:016x}"
        for key in ("service", "event_id", "event_type", "topic", "reason", "step", "attempt", "retry_in_s"):
            if hasattr(record, key):
                payload[key] = getattr(record, key)
        if record.exc_info and record.exc_info[0] is not None:
            payload["exc_type"] = record.exc_info[0].__name__
        return json.dumps(payload, default=str)


def setup_logging(service_name: str, level: str = "INFO") -> None:
    """JSON logs on stderr; noisy client libraries at WARNING."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonLogFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("aiokafka", "faststream", "uvicorn.access", "httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    logging.getLogger(service_name).info("logging configured")


def setup_telemetry(service_name: str, settings: StackSettings) -> Telemetry:
    """Configure global tracer and meter providers for ``service_name``."""
    resource = Resource.create({"service.name": service_name, "service.namespace": "care-transitions-hub"})
    tracer_provider = TracerProvider(resource=resource)
    tracer_provider.add_span_processor(QueryRedactingSpanProcessor())
    readers: list[MetricReader] = []
    if settings.otel_exporter_otlp_endpoint:
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        endpoint = settings.otel_exporter_otlp_endpoint.rstrip("/")
        tracer_provider.add_span_processor(
            BatchSpanProcessor(ExceptionScrubbingExporter(OTLPSpanExporter(endpoint=f"{endpoint}/v1/traces")))
        )
        readers.append(PeriodicExportingMetricReader(OTLPMetricExporter(endpoint=f"{endpoint}/v1/metrics")))
    if settings.otel_spans_file:
        tracer_provider.add_span_processor(
            BatchSpanProcessor(ExceptionScrubbingExporter(JsonLinesSpanExporter(settings.otel_spans_file)),
                               schedule_delay_millis=500)
        )
    meter_provider = MeterProvider(resource=resource, metric_readers=readers)
    trace.set_tracer_provider(tracer_provider)
    metrics.set_meter_provider(meter_provider)
    if settings.otel_instrument_asyncpg:
        from opentelemetry.instrumentation.asyncpg import AsyncPGInstrumentor

        AsyncPGInstrumentor().instrument(tracer_provider=tracer_provider)
    return Telemetry(tracer_provider=tracer_provider, meter_provider=meter_provider)
