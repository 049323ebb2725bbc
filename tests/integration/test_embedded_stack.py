"""The embedded stack (Tansu + PostgreSQL) and the shared test fixtures built on it."""

from __future__ import annotations

import asyncio
import importlib.util
import os
import signal
import subprocess
import sys
import textwrap
import uuid
from collections.abc import AsyncIterator

import asyncpg
import psutil
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from cth_shared.embedded import EmbeddedStack, ensure_topics
from cth_shared.testing import Infra, IsolatedEnv, isolated_env

pytestmark = pytest.mark.integration

CATALOG_PRESENT = importlib.util.find_spec("cth_shared.contracts.topics") is not None


def _descendants() -> set[int]:
    return {child.pid for child in psutil.Process().children(recursive=True)}


def _assert_all_gone(pids: set[int], timeout: float = 10.0) -> None:
    procs = []
    for pid in pids:
        try:
            procs.append(psutil.Process(pid))
        except psutil.NoSuchProcess:
            continue
    _, alive = psutil.wait_procs(procs, timeout=timeout)
    alive = [p for p in alive if p.status() != psutil.STATUS_ZOMBIE]
    assert not alive, f"processes left behind: {[(p.pid, p.name()) for p in alive]}"


@pytest.fixture(scope="module")
async def stack() -> AsyncIterator[EmbeddedStack]:
    async with EmbeddedStack() as embedded:
        yield embedded


async def test_stack_reports_loopback_addresses(stack: EmbeddedStack) -> None:
    assert stack.running
    assert stack.kafka_bootstrap_servers == f"127.0.0.1:{stack.kafka_port}"
    assert stack.database_url == f"postgresql://postgres@127.0.0.1:{stack.postgres_port}/postgres"


async def test_explicitly_created_topic_has_the_requested_partitions(stack: EmbeddedStack) -> None:
    name = f"partitions-{uuid.uuid4().hex[:8]}"
    await ensure_topics(stack.kafka_bootstrap_servers, [(name, 3, {"cleanup.policy": "delete"})])
    await ensure_topics(stack.kafka_bootstrap_servers, [(name, 3, {})])  # idempotent

    admin = AIOKafkaAdminClient(bootstrap_servers=stack.kafka_bootstrap_servers)
    await admin.start()
    try:
        (described,) = await admin.describe_topics([name])
    finally:
        await admin.close()
    assert described["error_code"] == 0
    assert sorted(p["partition"] for p in described["partitions"]) == [0, 1, 2]


async def test_record_round_trips_through_a_consumer_group(stack: EmbeddedStack) -> None:
    topic = f"roundtrip-{uuid.uuid4().hex[:8]}"
    await ensure_topics(stack.kafka_bootstrap_servers, [(topic, 2, {})])
    producer = AIOKafkaProducer(bootstrap_servers=stack.kafka_bootstrap_servers)
    await producer.start()
    try:
        await producer.send_and_wait(topic, b"discharged", key=b"member-1")
    finally:
        await producer.stop()

    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=stack.kafka_bootstrap_servers,
        group_id=f"g-{uuid.uuid4().hex[:8]}",
        auto_offset_reset="earliest",
        session_timeout_ms=6000,
        heartbeat_interval_ms=500,
    )
    await consumer.start()
    try:
        record = await asyncio.wait_for(consumer.getone(), timeout=15)
    finally:
        await consumer.stop()
    assert (record.key, record.value) == (b"member-1", b"discharged")


async def test_postgres_answers_with_the_test_box_settings(stack: EmbeddedStack) -> None:
    conn = await asyncpg.connect(stack.database_url)
    try:
        assert await conn.fetchval("SELECT 40 + 2") == 42
        assert await conn.fetchval("SHOW fsync") == "off"
        assert await conn.fetchval("SHOW max_connections") == "200"
    finally:
        await conn.close()


async def test_postgres_restart_keeps_port_and_data(stack: EmbeddedStack) -> None:
    conn = await asyncpg.connect(stack.database_url)
    await conn.execute("CREATE TABLE IF NOT EXISTS survives (v int); INSERT INTO survives VALUES (7)")
    await conn.close()
    port = stack.postgres_port

    await stack.arestart_postgres()

    assert stack.postgres_port == port
    conn = await asyncpg.connect(stack.database_url)
    try:
        assert await conn.fetchval("SELECT sum(v) FROM survives") == 7
    finally:
        await conn.close()


def test_stop_leaves_no_processes_or_files() -> None:
    before = _descendants()
    stack = EmbeddedStack().start()
    spawned = _descendants() - before
    directory = stack.directory
    assert len(spawned) >= 2  # broker + postmaster (and its auxiliary processes)

    stack.stop()

    _assert_all_gone(spawned)
    assert directory is not None and not directory.exists()
    assert not stack.running


def test_sigkilled_owner_leaves_no_processes() -> None:
    script = textwrap.dedent(
        """
        import time, psutil
        from cth_shared.embedded import EmbeddedStack
        stack = EmbeddedStack().start()
        pids = [c.pid for c in psutil.Process().children(recursive=True)]
        print(" ".join(map(str, pids)), flush=True)
        time.sleep(120)
        """
    )
    owner = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = owner.stdout.readline() if owner.stdout else ""
        pids = {int(pid) for pid in line.split()}
        assert len(pids) >= 2, f"stack did not start: {owner.stderr.read() if owner.stderr else ''}"
        assert all(psutil.pid_exists(pid) for pid in pids)
    finally:
        os.kill(owner.pid, signal.SIGKILL)
        owner.wait()
    _assert_all_gone(pids)


def test_cli_up_prints_exportable_addresses_and_stops_on_sigterm() -> None:
    args = [sys.executable, "-m", "cth_shared.embedded", "up"]
    if not CATALOG_PRESENT:
        args.append("--no-topics")
    cli = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert cli.stdout is not None
        lines = [cli.stdout.readline().strip(), cli.stdout.readline().strip()]
        assert lines[0].startswith("KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:"), lines
        assert lines[1].startswith("DATABASE_URL=postgresql://postgres@127.0.0.1:"), lines
        children = {c.pid for c in psutil.Process(cli.pid).children(recursive=True)}
        assert len(children) >= 2
    finally:
        cli.send_signal(signal.SIGTERM)
        code = cli.wait(timeout=15)
    assert code == 0, cli.stderr.read() if cli.stderr else ""
    _assert_all_gone(children, timeout=2)


async def test_isolated_environments_get_distinct_prefixes_and_databases(infra: Infra) -> None:
    async with isolated_env(infra) as first, isolated_env(infra) as second:
        assert first.topic_prefix != second.topic_prefix
        assert first.database_url != second.database_url
        for env in (first, second):
            conn = await asyncpg.connect(env.database_url)
            try:
                assert await conn.fetchval("SELECT current_database()") == env.database_name
            finally:
                await conn.close()
        names = (first.database_name, second.database_name)

    admin = await asyncpg.connect(infra.database_url)
    try:
        left = await admin.fetchval("SELECT count(*) FROM pg_database WHERE datname = ANY($1::text[])", list(names))
    finally:
        await admin.close()
    assert left == 0, "isolated databases must be dropped on exit"


async def test_isolated_fixture_creates_catalog_topics_under_its_prefix(
    isolated: IsolatedEnv,
) -> None:
    assert isolated.topic_prefix.startswith("t") and isolated.topic_prefix.endswith(".")
    if not CATALOG_PRESENT:
        pytest.skip("topic catalog (cth_shared.contracts.topics) not written yet")
    assert isolated.topics, "the catalog must define topics"
    assert all(name.startswith(isolated.topic_prefix) for name in isolated.topics)
    consumer = AIOKafkaConsumer(bootstrap_servers=isolated.kafka_bootstrap_servers)
    await consumer.start()
    try:
        existing = await consumer.topics()
    finally:
        await consumer.stop()
    assert set(isolated.topics) <= existing
