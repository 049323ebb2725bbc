"""``cth``: get outside data into the hub (publish files, generate and replay a synthetic payer).

Exit codes (stable, for scripts):

  0  everything was accepted (unmatched patients are reported, and still count as accepted)
  1  some rows, messages or resources were rejected (each reported as file:line: reason)
  2  usage error (bad option, missing or unknown file)
  3  broker (or MLLP listener) unavailable, or events not acknowledged by the broker

Connection settings come from the environment (KAFKA_BOOTSTRAP_SERVERS, TOPIC_PREFIX,
KAFKA_SECURITY_PROTOCOL, KAFKA_SASL_*, TENANT; see cth_shared.settings) and can be
overridden with --bootstrap / --topic-prefix / --tenant.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from cth_shared.contracts import CloudEvent, ContractError, parse_event
from cth_shared.contracts.events import Facility, MemberEnrolled
from cth_shared.settings import StackSettings

from .fhir_in import FhirError, FhirEvent, FhirSettings, FhirTranslator, FhirUnmatched, iter_fhir_documents
from .files import RowError, detect_kind, read_file
from .hl7_adt import AdtEvent, AdtSettings, AdtTranslator, Hl7Error, MemberIndex, UnmatchedPatient, split_messages
from .mllp import MllpSettings
from .publish import BrokerUnavailable, EventPublisher, PublishError
from .replay import MllpUnavailable, ReplaySummary, open_publisher, replay, start_listener
from .replay import _message_type as hl7_message_type
from .synthetic import Population, PopulationConfig

EXIT_OK = 0
EXIT_REJECTED = 1
EXIT_USAGE = 2
EXIT_UNAVAILABLE = 3

EXIT_CODES_HELP = (
    "Exit codes: 0 all accepted; 1 some rows/messages rejected (reported as file:line); "
    "2 usage error; 3 broker or listener unavailable / events not acknowledged."
)

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help=f"Producer toolkit: publish HL7 v2, FHIR, roster/claims/provider files; generate and replay "
    f"a synthetic payer population.\n\n{EXIT_CODES_HELP}",
)

KINDS = ("roster", "claims", "providers", "hl7", "fhir", "events", "facilities")
SUFFIXES = {".hl7", ".json", ".ndjson", ".jsonl", ".csv"}
#: Files whose name ends like this configure HL7 facilities (written by ``cth generate``).
FACILITIES_SUFFIX = "facilities.json"


def _console() -> Console:
    return Console(stderr=True, highlight=False, soft_wrap=True)


def _out() -> Console:
    return Console(highlight=False, soft_wrap=True)


def _settings(bootstrap: str | None, topic_prefix: str | None, tenant: str | None) -> StackSettings:
    overrides: dict[str, Any] = {}
    if bootstrap:
        overrides["kafka_bootstrap_servers"] = bootstrap
    if topic_prefix is not None:
        overrides["topic_prefix"] = topic_prefix
    if tenant:
        overrides["tenant"] = tenant
    return StackSettings(**overrides)


BootstrapOpt = typer.Option(None, "--bootstrap", help="Kafka bootstrap servers [env KAFKA_BOOTSTRAP_SERVERS]")
PrefixOpt = typer.Option(None, "--topic-prefix", help="Topic name prefix [env TOPIC_PREFIX]")
TenantOpt = typer.Option(None, "--tenant", help="Payer id stamped on events [env TENANT]")
ConnectTimeoutOpt = typer.Option(10.0, "--connect-timeout", help="Seconds to wait for the broker")


# --------------------------------------------------------------------------- reporting
@dataclass
class FileReport:
    path: Path
    kind: str
    accepted: int = 0
    rejected: int = 0
    unmatched: int = 0
    failed: int = 0


@dataclass
class Run:
    """Counters and error reporting shared by one ``cth publish`` run."""

    console: Console
    max_errors: int
    reports: list[FileReport] = field(default_factory=list)
    events: Counter[str] = field(default_factory=Counter)
    printed: int = 0
    rejected: int = 0
    failed: int = 0

    def reject(self, report: FileReport, line: int | None, reason: str) -> None:
        report.rejected += 1
        self.rejected += 1
        if self.printed < self.max_errors:
            self.printed += 1
            where = f"{report.path}:{line}" if line else str(report.path)
            self.console.print(f"[red]rejected[/red] {where}: {reason}", markup=True, highlight=False)

    def unmatched(self, report: FileReport, line: int | None, text: str) -> None:
        report.unmatched += 1
        if self.printed < self.max_errors:
            self.printed += 1
            where = f"{report.path}:{line}" if line else str(report.path)
            self.console.print(f"[yellow]unmatched[/yellow] {where}: {text}")


# --------------------------------------------------------------------------- file discovery
def _expand(paths: list[Path]) -> list[Path]:
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files.extend(sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in SUFFIXES))
        elif path.is_file():
            files.append(path)
        else:
            raise typer.BadParameter(f"{path}: no such file or directory", param_hint="PATH")
    return files


def _first_json_line(path: Path) -> dict[str, Any] | None:
    with path.open("rb") as handle:
        for raw in handle:
            if raw.strip():
                try:
                    row = json.loads(raw)
                except ValueError:
                    return None
                return row if isinstance(row, dict) else None
    return None


def detect_file_kind(path: Path) -> str | None:
    """hl7, fhir, events (CloudEvents NDJSON), facilities, roster, claims, providers, or None."""
    name = path.name.lower()
    suffix = path.suffix.lower()
    if suffix == ".hl7":
        return "hl7"
    if name.endswith(FACILITIES_SUFFIX):
        return "facilities"
    if suffix == ".json":
        return "fhir"
    if suffix in (".ndjson", ".jsonl"):
        first = _first_json_line(path) or {}
        if "specversion" in first:
            return "events"
        if "resourceType" in first:
            return "fhir"
    if suffix in (".csv", ".ndjson", ".jsonl"):
        kind = detect_kind(path)
        if kind:
            return kind
        for hint, guess in (
            ("roster", "roster"),
            ("eligib", "roster"),
            ("member", "roster"),
            ("claim", "claims"),
            ("provider", "providers"),
            ("directory", "providers"),
        ):
            if hint in name:
                return guess
    return None


def _hl7_messages(path: Path) -> Iterator[tuple[int, bytes]]:
    """(line of the message's MSH, message bytes) for every message in an HL7 file."""
    data = path.read_bytes()
    newline = b"\n" if b"\n" in data else b"\r"
    position, line = 0, 1
    for message in split_messages(data):
        head = message.split(b"\r", 1)[0][:64]
        found = data.find(head, position) if head else -1
        if found >= 0:
            line += data.count(newline, position, found)
            position = found + len(head)  # a first segment holds no line break
        yield line, message


def load_facilities(path: Path) -> dict[str, Facility]:
    """A facilities file: ``{"<MSH-4 namespace>": {"npi": ..., "name": ..., "tin": ...}}``."""
    try:
        raw = json.loads(path.read_text())
        return {str(k): Facility.model_validate(v) for k, v in raw.items()}
    except (ValueError, AttributeError) as exc:
        raise typer.BadParameter(f"{path}: not a facilities file ({type(exc).__name__})") from None


def _members_from(path: Path, kind: str) -> Iterator[MemberEnrolled]:
    if kind == "events":
        with path.open("rb") as handle:
            for raw in handle:
                if raw.strip():
                    try:
                        event = parse_event(raw)
                    except ContractError:
                        continue
                    if isinstance(event.data, MemberEnrolled):
                        yield event.data
    elif kind == "roster":
        for item in read_file(path, "roster"):
            if isinstance(item, CloudEvent) and isinstance(item.data, MemberEnrolled):
                yield item.data


# --------------------------------------------------------------------------- publish
ORDER = {"facilities": 0, "roster": 1, "events": 2, "providers": 3, "claims": 4, "hl7": 5, "fhir": 6}


async def _publish_files(
    files: list[tuple[Path, str]],
    *,
    settings: StackSettings,
    roster_files: list[tuple[Path, str]],
    facilities: dict[str, Facility],
    timezone: str,
    dry_run: bool,
    connect_timeout: float,
    run: Run,
) -> None:
    index = MemberIndex()
    for path, kind in roster_files:
        for snapshot in _members_from(path, kind):
            index.add(snapshot)
    adt = AdtTranslator(index, AdtSettings(tenant=settings.tenant, facility_timezone=timezone, facilities=facilities))
    fhir = FhirTranslator(index, FhirSettings(tenant=settings.tenant, facility_timezone=timezone))

    async def body(publisher: EventPublisher | None) -> None:
        columns = (
            SpinnerColumn(),
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total} files"),
            TextColumn("{task.fields[items]:,} items"),
            TimeElapsedColumn(),
        )
        with Progress(*columns, console=run.console, transient=True) as progress:
            task = progress.add_task("publishing", total=len(files), items=0)
            items = 0
            for path, kind in files:
                progress.update(task, description=f"{path.name} ({kind})")
                report = FileReport(path, kind)
                run.reports.append(report)

                async def send(event: CloudEvent[Any], report: FileReport = report) -> None:
                    if isinstance(event.data, MemberEnrolled):
                        index.add(event.data)
                    if publisher is None:
                        report.accepted += 1
                        run.events[event.type] += 1
                        return

                    def done(error: str | None, event_type: str = event.type) -> None:
                        if error is None:
                            report.accepted += 1
                            run.events[event_type] += 1
                        else:
                            report.failed += 1
                            run.failed += 1

                    await publisher.send(event, on_result=done)

                for line, outcome in _file_items(path, kind, adt, fhir):
                    items += 1
                    if isinstance(outcome, CloudEvent):
                        await send(outcome)
                    elif isinstance(outcome, str):
                        run.unmatched(report, line, outcome)
                    else:
                        run.reject(report, line, outcome.reason)
                    if items % 500 == 0:
                        progress.update(task, items=items)
                        await asyncio.sleep(0)
                progress.update(task, advance=1, items=items)
            if publisher is not None:
                progress.update(task, description="waiting for broker acknowledgements")
                with contextlib.suppress(PublishError):
                    await publisher.flush()

    if dry_run:
        await body(None)
        return
    async with open_publisher(settings, connect_timeout=connect_timeout, client_id="cth-publish") as publisher:
        await body(publisher)


@dataclass(frozen=True)
class _Problem:
    reason: str


def _file_items(
    path: Path, kind: str, adt: AdtTranslator, fhir: FhirTranslator
) -> Iterator[tuple[int | None, CloudEvent[Any] | str | _Problem]]:
    """(line, event | unmatched text | problem) for every item of one file."""
    if kind == "hl7":
        for line, message in _hl7_messages(path):
            try:
                result = adt.translate(message)
            except Hl7Error as error:
                yield line, _Problem(f"{error.reason}: {error.detail}")
                continue
            if isinstance(result, UnmatchedPatient):
                yield line, str(result)
            else:
                assert isinstance(result, AdtEvent)
                yield line, result.event
    elif kind == "fhir":
        for line, document in iter_fhir_documents(path):
            try:
                results = fhir.translate(document)
            except FhirError as error:
                yield line, _Problem(f"{error.reason}: {error.detail}")
                continue
            for result in results:
                if isinstance(result, FhirEvent):
                    yield line, result.event
                elif isinstance(result, FhirUnmatched):
                    yield line, str(result)
                else:
                    yield line, _Problem(str(result))
    elif kind == "events":
        with path.open("rb") as handle:
            for line, raw in enumerate(handle, start=1):
                if not raw.strip():
                    continue
                try:
                    yield line, parse_event(raw)
                except ContractError as error:
                    yield line, _Problem(f"{error.reason}: {error.detail}")
    elif kind in ("roster", "claims", "providers"):
        for item in read_file(path, kind):  # type: ignore[arg-type]
            if isinstance(item, RowError):
                yield item.line, _Problem(item.reason)
            else:
                yield None, item


def _publish_table(run: Run) -> Table:
    table = Table(title="cth publish")
    for column in ("file", "kind", "accepted", "rejected", "unmatched", "not acked"):
        table.add_column(column, justify="left" if column in ("file", "kind") else "right", overflow="fold")
    for report in run.reports:
        table.add_row(
            str(report.path),
            report.kind,
            str(report.accepted),
            str(report.rejected),
            str(report.unmatched),
            str(report.failed),
        )
    table.add_row(
        "total",
        "",
        str(sum(r.accepted for r in run.reports)),
        str(run.rejected),
        str(sum(r.unmatched for r in run.reports)),
        str(run.failed),
        end_section=True,
    )
    return table


@app.command(epilog=EXIT_CODES_HELP)
def publish(
    paths: list[Path] = typer.Argument(..., help="Files or directories (searched recursively)"),
    kind: str | None = typer.Option(
        None, "--kind", help=f"Force the file kind instead of detecting it: {', '.join(KINDS)}"
    ),
    roster: list[Path] = typer.Option(
        [], "--roster", help="Roster (CSV/NDJSON) or CloudEvents NDJSON to match patients with, not published"
    ),
    facilities_file: Path | None = typer.Option(
        None, "--facilities", help="JSON {MSH-4 namespace: {npi, name, tin}} for feeds that send no facility NPI"
    ),
    timezone: str = typer.Option("America/New_York", "--facility-timezone", help="For timestamps without offset"),
    dry_run: bool = typer.Option(False, "--dry-run", help="Validate and report; publish nothing"),
    max_errors: int = typer.Option(200, "--max-errors", help="Print at most this many problems"),
    bootstrap: str | None = BootstrapOpt,
    topic_prefix: str | None = PrefixOpt,
    tenant: str | None = TenantOpt,
    connect_timeout: float = ConnectTimeoutOpt,
) -> None:
    """Publish files: HL7 v2 (.hl7, one or many messages), FHIR (.json resource/Bundle, .ndjson),
    roster/claims/provider CSV or NDJSON, CloudEvents NDJSON (from `cth generate`).

    Rosters are published first and feed the member index that HL7/FHIR patients are matched
    with (add --roster for rosters that should only be used for matching)."""
    console = _console()
    if kind is not None and kind not in KINDS:
        raise typer.BadParameter(f"must be one of {', '.join(KINDS)}", param_hint="--kind")
    files = _expand(paths)
    typed: list[tuple[Path, str]] = []
    for path in files:
        found = kind or detect_file_kind(path)
        if found is None:
            raise typer.BadParameter(f"{path}: cannot tell what kind of file this is; use --kind", param_hint="PATH")
        typed.append((path, found))
    facilities: dict[str, Facility] = load_facilities(facilities_file) if facilities_file else {}
    for path, found in typed:
        if found == "facilities":
            facilities.update(load_facilities(path))
    roster_files = []
    for path in roster:
        if not path.is_file():
            raise typer.BadParameter(f"{path}: no such file", param_hint="--roster")
        found = detect_file_kind(path)
        if found not in ("roster", "events"):
            raise typer.BadParameter(f"{path}: not a roster or CloudEvents file", param_hint="--roster")
        roster_files.append((path, found))
    typed = sorted((t for t in typed if t[1] != "facilities"), key=lambda t: ORDER[t[1]])
    run = Run(console=console, max_errors=max_errors)
    try:
        asyncio.run(
            _publish_files(
                typed,
                settings=_settings(bootstrap, topic_prefix, tenant),
                roster_files=roster_files,
                facilities=facilities,
                timezone=timezone,
                dry_run=dry_run,
                connect_timeout=connect_timeout,
                run=run,
            )
        )
    except BrokerUnavailable as exc:
        console.print(f"[red]broker unavailable[/red]: {exc}")
        raise typer.Exit(EXIT_UNAVAILABLE) from None
    _out().print(_publish_table(run))
    if run.events:
        _out().print(_events_table(run.events))
    if run.failed:
        console.print(f"[red]{run.failed} event(s) were not acknowledged by the broker[/red]")
        raise typer.Exit(EXIT_UNAVAILABLE)
    if run.rejected:
        raise typer.Exit(EXIT_REJECTED)


def _events_table(events: Counter[str], title: str = "events acknowledged by type") -> Table:
    table = Table(title=title)
    table.add_column("event type")
    table.add_column("count", justify="right")
    for name, count in sorted(events.items()):
        table.add_row(name, f"{count:,}")
    return table


# --------------------------------------------------------------------------- generate
def _population(members: int, seed: int, days: int, lookback_days: int, start: str | None, tenant: str) -> Population:
    try:
        begin = date.fromisoformat(start) if start else PopulationConfig().start
    except ValueError:
        raise typer.BadParameter("expected YYYY-MM-DD", param_hint="--start") from None
    if members < 1 or days < 1 or lookback_days < 0:
        raise typer.BadParameter("--members and --days must be positive, --lookback-days not negative")
    return Population(
        PopulationConfig(members=members, seed=seed, days=days, lookback_days=lookback_days, start=begin, tenant=tenant)
    )


MembersOpt = typer.Option(1000, "--members", help="Members of the synthetic payer")
SeedOpt = typer.Option(1, "--seed", help="Same seed, same bytes")
DaysOpt = typer.Option(30, "--days", help="Length of the live period")
LookbackOpt = typer.Option(90, "--lookback-days", help="Claims history before the live period")
StartOpt = typer.Option(None, "--start", help="First day of the live period (YYYY-MM-DD)")


def _timeline_progress(console: Console, verb: str) -> Progress:
    return Progress(
        SpinnerColumn(),
        TextColumn(verb),
        BarColumn(),
        TextColumn("{task.percentage:>3.0f}% of the timeline"),
        TextColumn("{task.fields[items]:,} items"),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    )


def _live_start(population: Population) -> datetime:
    return datetime.combine(population.config.start, time(0), tzinfo=UTC)


def _span(population: Population) -> tuple[datetime, float]:
    config = population.config
    origin = _live_start(population) - timedelta(days=config.lookback_days)
    return origin, float((config.days + config.lookback_days) * 86_400)


def _elapsed(at: datetime, origin: datetime) -> float:
    return max(0.0, (at - origin).total_seconds())


@app.command(epilog=EXIT_CODES_HELP)
def generate(
    out: Path = typer.Option(..., "--out", help="Directory to write events.ndjson, adt.hl7, hl7-facilities.json"),
    members: int = MembersOpt,
    seed: int = SeedOpt,
    days: int = DaysOpt,
    lookback_days: int = LookbackOpt,
    start: str | None = StartOpt,
    tenant: str = typer.Option("payer-demo", "--tenant", help="Payer id stamped on events"),
) -> None:
    """Write a synthetic timeline to files (streamed: memory does not grow with its length).

    events.ndjson holds the CloudEvents (directory, roster, claims, V1C visits, referrals),
    adt.hl7 the HL7 v2 ADT messages, hl7-facilities.json the facility table the hospitals'
    feeds need. `cth publish DIR` publishes them (roster first, so patients match)."""
    population = _population(members, seed, days, lookback_days, start, tenant)
    out.mkdir(parents=True, exist_ok=True)
    console = _console()
    counts: Counter[str] = Counter()
    origin, span = _span(population)
    with (
        (out / "events.ndjson").open("wb") as events,
        (out / "adt.hl7").open("wb") as adt,
        _timeline_progress(console, "generating") as progress,
    ):
        task = progress.add_task("generate", total=span, items=0, rate="")
        for number, item in enumerate(population.timeline(), start=1):
            if isinstance(item.payload, CloudEvent):
                events.write(item.payload.to_json_bytes() + b"\n")
                counts[item.payload.type] += 1
            else:
                adt.write(item.payload.replace("\r", "\n").encode() + b"\n")
                counts[f"HL7 {hl7_message_type(item.payload)}"] += 1
            if number % 2000 == 0:
                progress.update(task, completed=_elapsed(item.at, origin), items=number)
    facilities = {h.namespace: {"npi": h.npi, "name": h.name, "tin": h.tin} for h in population.hospitals}
    (out / "hl7-facilities.json").write_text(json.dumps(facilities, indent=2) + "\n")
    table = _events_table(counts, title=f"cth generate -> {out}")
    table.add_row("total", f"{sum(counts.values()):,}", end_section=True)
    _out().print(table)


# --------------------------------------------------------------------------- replay
def parse_speed(value: str) -> float | None:
    """``max`` -> None (as fast as possible), ``realtime`` -> 1.0, ``x60`` / ``60`` -> 60.0."""
    text = value.strip().lower()
    if text in ("max", "fast", "asap"):
        return None
    if text in ("realtime", "real-time", "1x", "x1"):
        return 1.0
    number = text.removeprefix("x").removesuffix("x")
    try:
        speed = float(number)
    except ValueError:
        raise typer.BadParameter("use max, realtime, or xN (e.g. x60)", param_hint="--speed") from None
    if speed <= 0:
        raise typer.BadParameter("must be positive", param_hint="--speed")
    return speed


def _parse_hostport(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    if not host or not port.isdigit():
        raise typer.BadParameter("expected HOST:PORT or 'local'", param_hint="--mllp")
    return host, int(port)


def _replay_table(summary: ReplaySummary, mode: str) -> Table:
    table = Table(
        title=f"cth replay ({mode}): {summary.items:,} items in {summary.elapsed:.1f}s "
        f"({summary.events_per_second:,.0f}/s)"
    )
    table.add_column("what")
    table.add_column("count", justify="right")
    for name, count in sorted(summary.events.items()):
        table.add_row(f"event {name}", f"{count:,}")
    for name, count in sorted(summary.hl7.items()):
        table.add_row(f"HL7 {name}", f"{count:,}")
    for code, count in sorted(summary.acks.items()):
        table.add_row(f"ACK {code}", f"{count:,}")
    table.add_row("unmatched patients (reported)", f"{summary.unmatched:,}")
    table.add_row("events not acknowledged", f"{summary.failed:,}")
    table.add_row("errors", f"{summary.errors:,}", end_section=True)
    return table


@app.command("replay", epilog=EXIT_CODES_HELP)
def replay_command(
    members: int = MembersOpt,
    seed: int = SeedOpt,
    days: int = DaysOpt,
    lookback_days: int = LookbackOpt,
    start: str | None = StartOpt,
    speed: str = typer.Option("max", "--speed", help="max, realtime, or xN (N times faster than real time)"),
    mllp: str | None = typer.Option(
        None,
        "--mllp",
        help="Send HL7 over MLLP: HOST:PORT of a listener, or 'local' for an in-process "
        "listener fed by the replayed roster. Default: translate in-process.",
    ),
    connections: int = typer.Option(16, "--connections", help="MLLP connections (pipelined)"),
    bootstrap: str | None = BootstrapOpt,
    topic_prefix: str | None = PrefixOpt,
    tenant: str | None = TenantOpt,
    connect_timeout: float = ConnectTimeoutOpt,
) -> None:
    """Generate a synthetic population and replay its timeline into the broker.

    The roster and claims history (before --start) go as fast as possible; the live period is
    paced by --speed. HL7 ADT goes over MLLP with --mllp (the real path: AA after the broker
    ack) or is translated in-process."""
    pace = parse_speed(speed)
    target = None if mllp in (None, "local") else _parse_hostport(mllp)
    settings = _settings(bootstrap, topic_prefix, tenant)
    population = _population(members, seed, days, lookback_days, start, settings.tenant)
    console = _console()
    origin, span = _span(population)
    paced_from = _live_start(population)
    mode = "direct" if mllp is None else f"MLLP {mllp}"

    async def run() -> ReplaySummary:
        async with open_publisher(settings, connect_timeout=connect_timeout, client_id="cth-replay") as publisher:
            index = MemberIndex()
            listener = None
            address = target
            if mllp == "local":
                listener = await start_listener(
                    publisher, index=index, adt_settings=population.adt_settings(), settings=MllpSettings(port=0)
                )
                address = ("127.0.0.1", listener.port)
            try:
                with _timeline_progress(console, f"replaying ({mode})") as progress:
                    task = progress.add_task("replay", total=span, items=0, rate="")

                    def on_progress(summary: ReplaySummary) -> None:
                        at = summary.last_item_at
                        rate = f"{summary.events_per_second:,.0f}/s"
                        if summary.lag > 1:
                            rate += f" (behind by {summary.lag:.0f}s)"
                        progress.update(
                            task, completed=_elapsed(at, origin) if at else 0, items=summary.items, rate=rate
                        )

                    return await replay(
                        population.timeline(),
                        publisher=publisher,
                        mllp=address,
                        index=index,
                        adt_settings=population.adt_settings(),
                        speed=pace,
                        paced_from=paced_from,
                        on_progress=on_progress,
                        mllp_connections=connections,
                    )
            finally:
                if listener is not None:
                    await listener.stop()

    try:
        summary = asyncio.run(run())
    except BrokerUnavailable as exc:
        console.print(f"[red]broker unavailable[/red]: {exc}")
        raise typer.Exit(EXIT_UNAVAILABLE) from None
    except MllpUnavailable as exc:
        console.print(f"[red]MLLP listener unavailable[/red]: {exc}")
        raise typer.Exit(EXIT_UNAVAILABLE) from None
    for text in summary.error_samples[:20]:
        console.print(f"[red]error[/red] {text}")
    _out().print(_replay_table(summary, mode))
    if summary.failed or summary.acks.get("AE") or summary.acks.get("none"):
        raise typer.Exit(EXIT_UNAVAILABLE)
    if not summary.ok:
        raise typer.Exit(EXIT_REJECTED)


# --------------------------------------------------------------------------- listen
@app.command(epilog=EXIT_CODES_HELP)
def listen(
    port: int = typer.Option(2575, "--port", help="MLLP port (0 = any free port, printed)"),
    host: str = typer.Option("127.0.0.1", "--host"),
    roster: list[Path] = typer.Option([], "--roster", help="Roster CSV/NDJSON or CloudEvents NDJSON (members)"),
    facilities_file: Path | None = typer.Option(None, "--facilities", help="Facilities JSON (see `cth generate`)"),
    synthetic_members: int = typer.Option(
        0, "--synthetic-members", help="Match against a synthetic population's roster (with --seed)"
    ),
    seed: int = SeedOpt,
    days: int = DaysOpt,
    lookback_days: int = LookbackOpt,
    start: str | None = StartOpt,
    timezone: str = typer.Option("America/New_York", "--facility-timezone"),
    bootstrap: str | None = BootstrapOpt,
    topic_prefix: str | None = PrefixOpt,
    tenant: str | None = TenantOpt,
    connect_timeout: float = ConnectTimeoutOpt,
) -> None:
    """Run an MLLP listener: HL7 v2 ADT in, encounter events out, AA only after the broker ack.
    Stops on Ctrl-C / SIGTERM and prints its counters."""
    settings = _settings(bootstrap, topic_prefix, tenant)
    console = _console()
    index = MemberIndex()
    facilities = load_facilities(facilities_file) if facilities_file else {}
    for path in roster:
        found = detect_file_kind(path) if path.is_file() else None
        if found not in ("roster", "events"):
            raise typer.BadParameter(f"{path}: not a roster or CloudEvents file", param_hint="--roster")
        for snapshot in _members_from(path, found):
            index.add(snapshot)
    if synthetic_members:
        population = _population(synthetic_members, seed, days, lookback_days, start, settings.tenant)
        for number in range(population.existing_members + population.new_members):
            index.add(population.enrollment(population.member(number)))
        facilities = {**population.adt_settings().facilities, **facilities}
    adt_settings = AdtSettings(tenant=settings.tenant, facility_timezone=timezone, facilities=facilities)

    async def serve() -> None:
        import signal

        async with open_publisher(settings, connect_timeout=connect_timeout, client_id="cth-listen") as publisher:
            listener = await start_listener(
                publisher, index=index, adt_settings=adt_settings, settings=MllpSettings(host=host, port=port)
            )
            console.print(f"MLLP listening on {host}:{listener.port} ({len(index):,} members)")
            print(f"MLLP_PORT={listener.port}", flush=True)
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for signum in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(signum, stop.set)
            await stop.wait()
            await listener.stop()
            stats = listener.stats
            console.print(
                f"received {stats.received} accepted {stats.accepted} unmatched {stats.unmatched} "
                f"rejected {stats.rejected} errors {stats.errors}"
            )

    try:
        asyncio.run(serve())
    except BrokerUnavailable as exc:
        console.print(f"[red]broker unavailable[/red]: {exc}")
        raise typer.Exit(EXIT_UNAVAILABLE) from None


def main() -> None:  # pragma: no cover - console script
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
