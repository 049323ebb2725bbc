"""Read the local span export and print one care transition as a waterfall.

Every service appends its finished spans to the JSON-lines file named by
``OTEL_SPANS_FILE`` (see :mod:`cth_shared.telemetry`). ``cth-trace`` finds the traces
that touched a member (span attribute ``cth.member_id``) or an event
(``cth.event_id``) and prints each as an indented waterfall, parent above child,
with the service, span name, offset and duration.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(add_completion=False, help=__doc__)


@dataclass
class SpanRecord:
    """One exported span."""

    trace_id: str
    span_id: str
    parent_id: str | None
    name: str
    service: str
    start_ns: int
    end_ns: int
    status: str
    attributes: dict[str, Any]
    children: list[SpanRecord] = field(default_factory=list)

    @property
    def duration_ms(self) -> float:
        return (self.end_ns - self.start_ns) / 1e6


def _span_files(paths: Iterable[Path]) -> Iterator[Path]:
    for path in paths:
        if path.is_dir():
            yield from sorted(path.glob("*.jsonl"))
        else:
            yield path


def read_spans(paths: Iterable[Path]) -> Iterator[SpanRecord]:
    """Spans from JSON-lines files (a directory means its ``*.jsonl``); unreadable lines are skipped."""
    for path in _span_files(paths):
        if not path.exists():
            continue
        with path.open(encoding="utf-8") as handle:
            for line in handle:
                try:
                    raw = json.loads(line)
                    yield SpanRecord(
                        trace_id=raw["trace_id"], span_id=raw["span_id"], parent_id=raw.get("parent_id"),
                        name=raw["name"], service=raw.get("service") or "?", start_ns=int(raw["start_ns"]),
                        end_ns=int(raw["end_ns"]), status=raw.get("status", "UNSET"),
                        attributes=raw.get("attributes") or {},
                    )
                except (ValueError, KeyError, TypeError):
                    continue


def traces_matching(spans: Iterable[SpanRecord], *, member_id: str | None = None,
                    event_id: str | None = None, trace_id: str | None = None) -> dict[str, list[SpanRecord]]:
    """Group spans by trace and keep the traces that mention the member, event or trace id."""
    by_trace: dict[str, list[SpanRecord]] = defaultdict(list)
    for span in spans:
        by_trace[span.trace_id].append(span)
    wanted: dict[str, list[SpanRecord]] = {}
    for tid, members in by_trace.items():
        matches = (
            (trace_id is not None and tid == trace_id)
            or (member_id is not None and any(s.attributes.get("cth.member_id") == member_id for s in members))
            or (event_id is not None and any(s.attributes.get("cth.event_id") == event_id for s in members))
        )
        if matches:
            wanted[tid] = members
    return wanted


def build_tree(spans: list[SpanRecord]) -> list[SpanRecord]:
    """Link children to parents; return the roots (spans whose parent is not in the trace)."""
    by_id = {s.span_id: s for s in spans}
    roots = []
    for span in sorted(spans, key=lambda s: s.start_ns):
        span.children = []
    for span in sorted(spans, key=lambda s: s.start_ns):
        parent = by_id.get(span.parent_id or "")
        if parent is None:
            roots.append(span)
        else:
            parent.children.append(span)
    return roots


def edges(spans: list[SpanRecord]) -> set[tuple[str, str]]:
    """(parent service, child service) pairs across the trace, for trace-shape tests."""
    by_id = {s.span_id: s for s in spans}
    return {
        (by_id[s.parent_id].service, s.service)
        for s in spans
        if s.parent_id in by_id and by_id[s.parent_id].service != s.service
    }


def render(spans: list[SpanRecord], console: Console, width: int = 40) -> None:
    """Print one trace as a waterfall table."""
    roots = build_tree(spans)
    start = min(s.start_ns for s in spans)
    end = max(s.end_ns for s in spans)
    total = max(end - start, 1)
    table = Table(title=f"trace {spans[0].trace_id}  ({total / 1e6:.1f} ms, {len(spans)} spans)", expand=False)
    table.add_column("service", style="cyan", no_wrap=True)
    table.add_column("span", no_wrap=True)
    table.add_column("start ms", justify="right")
    table.add_column("ms", justify="right")
    table.add_column("waterfall", no_wrap=True)

    def walk(span: SpanRecord, depth: int) -> None:
        offset = int((span.start_ns - start) / total * width)
        length = max(1, int((span.end_ns - span.start_ns) / total * width))
        bar = " " * offset + "█" * min(length, width - offset)
        style = "red" if span.status == "ERROR" else "green"
        table.add_row(span.service, "  " * depth + span.name, f"{(span.start_ns - start) / 1e6:.1f}",
                      f"{span.duration_ms:.1f}", f"[{style}]{bar}[/{style}]")
        for child in sorted(span.children, key=lambda s: s.start_ns):
            walk(child, depth + 1)

    for root in roots:
        walk(root, 0)
    console.print(table)


@app.command()
def main(
    spans_file: list[Path] = typer.Option(
        ..., "--spans", help="JSON-lines span export(s) (OTEL_SPANS_FILE) or a directory of them"
    ),
    member: str | None = typer.Option(None, help="Member id: every trace that touched this member"),
    event: str | None = typer.Option(None, help="Event id: the trace that carried this event"),
    trace: str | None = typer.Option(None, help="A trace id"),
    limit: int = typer.Option(5, help="Show at most this many traces (most recent first)"),
) -> None:
    """Print the traces of a member or an event as waterfalls."""
    if not (member or event or trace):
        raise typer.BadParameter("give --member, --event or --trace")
    found = traces_matching(read_spans(spans_file), member_id=member, event_id=event, trace_id=trace)
    console = Console(width=max(Console().width, 150))
    if not found:
        console.print("no matching trace in the span export")
        raise typer.Exit(1)
    ordered = sorted(found.values(), key=lambda spans: -min(s.start_ns for s in spans))
    for spans in ordered[:limit]:
        render(spans, console)


if __name__ == "__main__":
    app()
