"""Concurrent lanes in ``BatchProcessor`` against the real PostgreSQL: a batch's member-keyed
records are applied in concurrent transactions (one lane per key hash), each member's events
in fetch order, serial-topic records (keyed by something else) first, every event exactly
once even when two lanes deadlock and one is retried."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiokafka import ConsumerRecord
from cth_shared.contracts import EXAMPLES, MemberEnrolled, ProviderUpserted, new_event
from cth_shared.db import create_pool, run_migrations
from cth_shared.messaging.consumer import BatchProcessor
from cth_shared.testing import consumer_record as record
from cth_shared.testing import keys_in_distinct_lanes
from cth_shared.testing import member_enrolled as enrolled

pytestmark = pytest.mark.integration

LANES = 4


def provider(npi: str) -> bytes:
    data = ProviderUpserted.model_validate(dict(EXAMPLES["provider.upserted"], npi=npi))
    return new_event(data, subject=npi, source="urn:test", tenant="t", event_id=f"prov-{npi}").to_json_bytes()



@pytest.fixture
async def pool(isolated: Any) -> Any:
    pool = await create_pool(isolated.database_url, schema="lanes_probe", application_name="lanes-probe",
                             max_size=LANES + 2)
    await run_migrations(pool, "lanes_probe", "attribution")  # inbox, outbox, dead_letters
    await pool.execute("CREATE TABLE trail(id bigserial PRIMARY KEY, member_id text, event_id text,"
                       " saw_provider boolean, txid bigint DEFAULT txid_current())")
    await pool.execute("CREATE TABLE seen_providers(npi text PRIMARY KEY)")
    await pool.execute("CREATE TABLE counters(id text PRIMARY KEY, n int NOT NULL)")
    await pool.execute("INSERT INTO counters VALUES ('a', 0), ('b', 0)")
    yield pool
    await pool.close()


async def test_lanes_keep_each_members_order_apply_serial_topics_first_and_apply_each_event_once(
    isolated: Any, pool: Any
) -> None:
    async def on_member(uow: Any, event: Any) -> None:
        saw = await uow.conn.fetchval("SELECT count(*) FROM seen_providers") > 0
        await uow.conn.execute("INSERT INTO trail(member_id, event_id, saw_provider) VALUES ($1, $2, $3)",
                               event.subject, event.id, saw)

    async def on_provider(uow: Any, event: Any) -> None:
        await uow.conn.execute("INSERT INTO seen_providers VALUES ($1)", event.data.npi)

    directory = isolated.topic("provider-directory")
    processor = BatchProcessor(service="echo", pool=pool, tenant="t", topic_prefix=isolated.topic_prefix,
                               handlers={"member.enrolled": on_member, "provider.upserted": on_provider},
                               lanes=LANES, serial_topics=frozenset({directory}))
    members = [f"M{i:06d}" for i in range(40)]
    records = [record(isolated.topic("enrollment"), n * len(members) + i, m, enrolled(m, f"{m}-{n}"))
               for n in range(10) for i, m in enumerate(members)]
    records.append(record(directory, 0, "1234567893", provider("1234567893")))  # last in the batch
    records.append(records[5])  # a duplicate inside the batch applies once
    await processor.process(records)
    await processor.process(records[:50])  # a redelivery applies nothing

    rows = await pool.fetch("SELECT member_id, event_id, saw_provider, txid FROM trail ORDER BY id")
    assert len(rows) == 400
    for member in members:
        assert [r["event_id"] for r in rows if r["member_id"] == member] == [f"{member}-{n}" for n in range(10)]
    assert all(r["saw_provider"] for r in rows), "serial-topic records are committed before the lanes run"
    assert len({r["txid"] for r in rows}) == LANES, "one transaction per lane"
    for member in members:  # a member's events share one lane, hence one transaction
        assert len({r["txid"] for r in rows if r["member_id"] == member}) == 1
    assert await pool.fetchval("SELECT count(*) FROM inbox") == 401


async def test_a_small_batch_uses_fewer_lanes_and_the_relay_is_woken_only_when_the_batch_wrote_to_the_outbox(
    isolated: Any, pool: Any
) -> None:
    async def on_member(uow: Any, event: Any) -> None:
        await uow.conn.execute("INSERT INTO trail(member_id, event_id, saw_provider) VALUES ($1, $2, false)",
                               event.subject, event.id)
        if event.data.plan_id == "PLAN-ANNOUNCED":
            uow.publish(event.data, subject=event.subject)

    wakes: list[int] = []
    processor = BatchProcessor(service="echo", pool=pool, tenant="t", topic_prefix=isolated.topic_prefix,
                               handlers={"member.enrolled": on_member}, lanes=LANES, lane_min_records=8,
                               after_commit=lambda: wakes.append(1))
    topic = isolated.topic("enrollment")
    members = [f"M-FLOOR-{i:03d}" for i in range(40)]

    def batch(size: int, tag: str) -> list[ConsumerRecord]:
        return [record(topic, i, m, enrolled(m, f"{m}-{tag}")) for i, m in enumerate(members[:size])]

    async def transactions(tag: str) -> int:
        return int(await pool.fetchval("SELECT count(DISTINCT txid) FROM trail WHERE event_id LIKE $1", f"%-{tag}"))

    await processor.process(batch(7, "seven"))  # fewer than 2 x 8: one lane
    await processor.process(batch(17, "seventeen"))  # 2 lanes of about 8
    await processor.process(batch(40, "forty"))  # 40 // 8 = 5, at most LANES
    assert [await transactions(t) for t in ("seven", "seventeen", "forty")] == [1, 2, LANES]
    assert wakes == [], "nothing was written to the outbox: the relay's poll is enough"

    data = MemberEnrolled.model_validate(dict(EXAMPLES["member.enrolled"], member_id="M-FLOOR-X",
                                              plan_id="PLAN-ANNOUNCED"))
    value = new_event(data, subject="M-FLOOR-X", source="urn:test", tenant="t", event_id="announce").to_json_bytes()
    await processor.process([record(topic, 99, "M-FLOOR-X", value)])
    assert await pool.fetchval("SELECT count(*) FROM outbox") == 1
    assert wakes == [1]


async def test_a_lane_that_deadlocks_is_retried_alone_and_nothing_is_applied_twice(isolated: Any, pool: Any) -> None:
    first, second = keys_in_distinct_lanes(2, LANES)
    order = {first: ("a", "b"), second: ("b", "a")}  # opposite lock order: a deadlock

    async def on_member(uow: Any, event: Any) -> None:
        one, two = order[event.subject]
        await uow.conn.execute("UPDATE counters SET n = n + 1 WHERE id = $1", one)
        await asyncio.sleep(0.3)  # both lanes hold their first row now
        await uow.conn.execute("UPDATE counters SET n = n + 1 WHERE id = $1", two)
        await uow.conn.execute("INSERT INTO trail(member_id, event_id, saw_provider) VALUES ($1, $2, false)",
                               event.subject, event.id)

    processor = BatchProcessor(service="echo", pool=pool, tenant="t", topic_prefix=isolated.topic_prefix,
                               handlers={"member.enrolled": on_member}, lanes=LANES)
    topic = isolated.topic("enrollment")
    deadlocks_before = await deadlocks(pool)
    await processor.process([record(topic, 0, first, enrolled(first, "e-first")),
                             record(topic, 1, second, enrolled(second, "e-second"))])

    assert dict(await pool.fetch("SELECT id, n FROM counters")) == {"a": 2, "b": 2}
    assert sorted(await pool.fetch("SELECT event_id FROM trail")) == [("e-first",), ("e-second",)]
    assert await pool.fetchval("SELECT count(*) FROM dead_letters") == 0
    for _ in range(50):  # statistics reach pg_stat_database shortly after the transaction ends
        if await deadlocks(pool) > deadlocks_before:
            break
        await asyncio.sleep(0.1)
    assert await deadlocks(pool) > deadlocks_before, "the lanes did run concurrently and deadlocked"


async def deadlocks(pool: Any) -> int:
    async with pool.acquire() as conn:
        await conn.execute("SELECT pg_stat_clear_snapshot()")
        value: int = await conn.fetchval("SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()")
        return value


async def test_the_after_batch_step_sees_the_committed_lanes_and_every_valid_event_even_on_redelivery(
    isolated: Any, pool: Any
) -> None:
    async def on_member(uow: Any, event: Any) -> None:
        await uow.conn.execute("INSERT INTO trail(member_id, event_id, saw_provider) VALUES ($1, $2, false)",
                               event.subject, event.id)

    calls: list[dict[str, Any]] = []
    failures = ["transient once"]

    async def after_batch(uow: Any, events: Any) -> None:
        # Its own transaction, begun after every lane committed: it sees all their rows.
        calls.append({"ids": sorted(e.id for e in events),
                      "committed": await uow.conn.fetchval("SELECT count(*) FROM trail"),
                      "txid": await uow.conn.fetchval("SELECT txid_current()")})
        await uow.conn.execute("UPDATE counters SET n = n + 1 WHERE id = 'a'")
        if failures:
            failures.pop()
            raise OSError("connection reset")  # transient: the step is retried, its write rolled back

    processor = BatchProcessor(service="echo", pool=pool, tenant="t", topic_prefix=isolated.topic_prefix,
                               handlers={"member.enrolled": on_member}, lanes=LANES, after_batch=after_batch)
    topic = isolated.topic("enrollment")
    members = [f"M{i:06d}" for i in range(12)]
    records = [record(topic, i, m, enrolled(m, f"{m}-e")) for i, m in enumerate(members)]
    records.append(record(topic, 12, "M000000", b"{not json"))  # dead-lettered: not a valid event
    records.append(record(isolated.topic("provider-directory"), 0, "1234567893", provider("1234567893")))  # no handler
    await processor.process(records)

    expected = sorted(f"{m}-e" for m in members)
    assert [c["ids"] for c in calls] == [expected, expected], "retried after a transient failure"
    assert calls[-1]["committed"] == 12
    assert calls[-1]["txid"] not in set(await pool.fetchval("SELECT array_agg(DISTINCT txid) FROM trail"))
    assert await pool.fetchval("SELECT n FROM counters WHERE id = 'a'") == 1, "the failed attempt rolled back"

    await processor.process(records)  # a redelivery: the lanes apply nothing, the step still runs
    assert calls[-1]["ids"] == expected
    assert await pool.fetchval("SELECT count(*) FROM trail") == 12
    assert await pool.fetchval("SELECT n FROM counters WHERE id = 'a'") == 2


async def test_a_failing_after_batch_step_does_not_block_the_partition(isolated: Any, pool: Any) -> None:
    async def on_member(uow: Any, event: Any) -> None:
        await uow.conn.execute("INSERT INTO trail(member_id, event_id, saw_provider) VALUES ($1, $2, false)",
                               event.subject, event.id)

    async def broken(uow: Any, events: Any) -> None:
        await uow.conn.execute("UPDATE counters SET n = n + 1 WHERE id = 'b'")
        raise KeyError("a bug")

    processor = BatchProcessor(service="echo", pool=pool, tenant="t", topic_prefix=isolated.topic_prefix,
                               handlers={"member.enrolled": on_member}, lanes=LANES, after_batch=broken)
    topic = isolated.topic("enrollment")
    await processor.process([record(topic, 0, "M1", enrolled("M1", "e1")),
                             record(topic, 1, "M2", enrolled("M2", "e2"))])
    assert await pool.fetchval("SELECT count(*) FROM trail") == 2, "the lanes' effects stay committed"
    assert await pool.fetchval("SELECT n FROM counters WHERE id = 'b'") == 0, "the step's own writes rolled back"
    assert processor.last_batch_at is not None, "the batch completed (its offsets will be committed)"


async def test_deferred_writes_go_once_per_lane_and_a_write_refused_for_one_events_data_dead_letters_only_it(
    isolated: Any, pool: Any
) -> None:
    await pool.execute("CREATE TABLE deferred_rows(member_id text PRIMARY KEY, value int NOT NULL CHECK (value >= 0))")
    statements: list[int] = []

    async def write_rows(uow: Any, items: list[tuple[str, int]]) -> None:
        statements.append(len(items))
        await uow.conn.execute("INSERT INTO deferred_rows SELECT * FROM unnest($1::text[], $2::int[])",
                               [m for m, _ in items], [v for _, v in items])

    async def on_member(uow: Any, event: Any) -> None:
        value = -1 if event.subject.endswith("BAD") else len(event.subject)  # the database refuses -1
        uow.defer("rows", (event.subject, value), write_rows, per_event_when_isolated=True)

    topic = isolated.topic("enrollment")
    processor = BatchProcessor(service="echo", pool=pool, tenant="t", topic_prefix=isolated.topic_prefix,
                               handlers={"member.enrolled": on_member}, lanes=1)
    good = [f"M{i:06d}" for i in range(8)]
    await processor.process([record(topic, i, m, enrolled(m, f"{m}-1")) for i, m in enumerate(good)])
    assert statements == [8]  # one statement for the lane's eight events

    statements.clear()
    more = [f"N{i:06d}" for i in range(4)] + ["N-BAD"] + [f"P{i:06d}" for i in range(3)]
    await processor.process([record(topic, 100 + i, m, enrolled(m, f"{m}-1")) for i, m in enumerate(more)])
    # the lane's one statement failed; the isolated pass wrote event by event and parked the bad one
    assert statements == [8] + [1] * 8
    stored = {r["member_id"] for r in await pool.fetch("SELECT member_id FROM deferred_rows")}
    assert stored == set(good) | set(more) - {"N-BAD"}
    dead = await pool.fetch("SELECT key, reason, detail FROM dead_letters")
    assert [(r["key"], r["reason"], r["detail"]) for r in dead] == [(b"N-BAD", "handler_error", "CheckViolationError")]
