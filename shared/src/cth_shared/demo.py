"""`make demo`: the embedded stack, the four services as processes, a sample, a summary.

Starts Tansu + PostgreSQL, creates the topics, starts attribution, referrals,
care-gaps and notifications as separate OS processes (as deployed), publishes the
contract examples as a small sample, waits until every service has consumed what
it subscribes to, prints what each service did, and shuts everything down.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import typer
from aiokafka import AIOKafkaProducer
from rich.console import Console
from rich.table import Table

from .contracts import EXAMPLES, new_event, registered_types, topic_name
from .embedded import EmbeddedStack, create_catalog_topics, free_port, pdeathsig_preexec

SERVICES = {
    "attribution": ("attribution", ["enrollment", "claims", "virtual-visits", "provider-directory"]),
    "referrals": ("referrals", ["referral-requests", "encounters", "provider-directory", "enrollment", "claims"]),
    "care-gaps": ("care_gaps", ["encounters", "virtual-visits", "claims", "enrollment", "attribution"]),
    "notifications": ("notifications", ["encounters", "attribution", "care-gaps", "referrals"]),
}
INPUT_TOPICS = ("enrollment", "encounters", "virtual-visits", "claims", "referral-requests", "provider-directory")

console = Console(stderr=True)
app = typer.Typer(add_completion=False, help=__doc__)


@dataclass
class RunningService:
    name: str
    schema: str
    process: subprocess.Popen[bytes]
    log_path: Path


def _start_service(name: str, schema: str, env: dict[str, str], log_dir: Path) -> RunningService:
    log_path = log_dir / f"{name}.log"
    process = subprocess.Popen(  # noqa: S603 - our own interpreter and module
        [sys.executable, "-m", schema],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=log_path.open("wb"),
        preexec_fn=pdeathsig_preexec(signal.SIGTERM),
    )
    return RunningService(name, schema, process, log_path)


async def _wait_healthy(port: int, service: RunningService, timeout: float = 60) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient() as client:
        while time.monotonic() < deadline:
            if service.process.poll() is not None:
                raise RuntimeError(f"{service.name} exited; see {service.log_path}")
            try:
                if (await client.get(f"http://127.0.0.1:{port}/healthz", timeout=1)).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.1)
    raise RuntimeError(f"{service.name} did not become healthy; see {service.log_path}")


async def _publish_sample(bootstrap: str, prefix: str) -> dict[str, int]:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    published: dict[str, int] = {}
    try:
        for name, entry in registered_types().items():
            if entry.topic not in INPUT_TOPICS:
                continue
            data = entry.model.model_validate(EXAMPLES[name])
            subject = getattr(data, "member_id", None) or getattr(data, "npi")  # noqa: B009
            event = new_event(data, subject=subject, source="urn:cth:demo", tenant="payer-demo")
            await producer.send_and_wait(topic_name(entry.topic, prefix), event.to_json_bytes(), key=subject.encode())
            published[entry.topic] = published.get(entry.topic, 0) + 1
    finally:
        await producer.stop()
    return published


async def _consumed(database_url: str, schema: str) -> int:
    conn = await asyncpg.connect(database_url)
    try:
        return int(await conn.fetchval(f"SELECT count(*) FROM {schema}.inbox"))
    finally:
        await conn.close()


async def run_demo(timeout: float) -> int:
    started = time.monotonic()
    log_dir = Path(tempfile.mkdtemp(prefix="cth-demo-"))
    console.rule("[bold]Care Transitions Hub demo")
    with EmbeddedStack() as stack:
        console.print(
            f"embedded stack up: Kafka {stack.kafka_bootstrap_servers}, PostgreSQL on port {stack.postgres_port}"
        )
        await create_catalog_topics(stack.kafka_bootstrap_servers)
        env = {
            **os.environ,
            "KAFKA_BOOTSTRAP_SERVERS": stack.kafka_bootstrap_servers,
            "DATABASE_URL": stack.database_url,
            "KAFKA_SESSION_TIMEOUT_MS": "2000",
            "KAFKA_HEARTBEAT_INTERVAL_MS": "300",
            "OTEL_SPANS_FILE": str(log_dir / "spans.jsonl"),
        }
        running: list[tuple[RunningService, int]] = []
        try:
            for name, (schema, _topics) in SERVICES.items():
                port = free_port()
                running.append((_start_service(name, schema, {**env, "HTTP_PORT": str(port)}, log_dir), port))
            await asyncio.gather(*(_wait_healthy(port, svc) for svc, port in running))
            console.print(f"services healthy: {', '.join(svc.name for svc, _ in running)} (logs in {log_dir})")
            published = await _publish_sample(stack.kafka_bootstrap_servers, "")
            console.print(f"published a sample of {sum(published.values())} events: {published}")
            expected = {svc.name: sum(published.get(t, 0) for t in SERVICES[svc.name][1]) for svc, _ in running}
            deadline = time.monotonic() + timeout
            counts: dict[str, int] = {}
            while time.monotonic() < deadline:
                counts = {svc.name: await _consumed(stack.database_url, svc.schema) for svc, _ in running}
                if all(counts[name] >= expected[name] for name in expected):
                    break
                await asyncio.sleep(0.2)
            table = Table(title="What each service did")
            table.add_column("service")
            table.add_column("subscribed topics")
            table.add_column("events consumed (inbox)", justify="right")
            for svc, _ in running:
                table.add_row(
                    svc.name, ", ".join(SERVICES[svc.name][1]), f"{counts.get(svc.name, 0)}/{expected[svc.name]}"
                )
            Console().print(table)
            ok = all(counts.get(name, 0) >= expected[name] for name in expected)
        finally:
            for svc, _ in running:
                svc.process.send_signal(signal.SIGTERM)
            for svc, _ in running:
                try:
                    code = svc.process.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    svc.process.kill()
                    code = -9
                console.print(f"{svc.name} stopped (exit {code})")
    console.print(f"stack stopped; demo took {time.monotonic() - started:.1f} s")
    if not ok:
        console.print("[red]not every service consumed the sample in time")
        return 1
    return 0


@app.command()
def main(timeout: float = typer.Option(60.0, help="Seconds to wait for the services to consume the sample")) -> None:
    """Run the demo on the embedded stack and exit 0 when every service did its part."""
    raise typer.Exit(asyncio.run(run_demo(timeout)))


if __name__ == "__main__":
    app()
