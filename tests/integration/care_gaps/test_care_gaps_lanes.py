"""care-gaps' batch in concurrent lanes against the real PostgreSQL: each lane moves the tenant's
event clock once, and the overdue sweep runs once per batch after the lanes committed, so a gap
opened in one lane is flagged against a clock that another lane of the same batch moved, once,
and a redelivered batch flags nothing twice."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
from aiokafka import ConsumerRecord
from care_gaps import store
from care_gaps.domain.measures import MeasureConfig
from care_gaps.domain.priority import gap_priority
from care_gaps.handlers import CareGapsUseCases, ClockPolicy
from cth_shared.contracts import EXAMPLES, new_event, registered_types
from cth_shared.db import create_pool, run_migrations
from cth_shared.messaging.consumer import BatchProcessor
from cth_shared.testing import keys_in_distinct_lanes, statements_after, statements_sent

pytestmark = pytest.mark.integration

LANES = 4
WALL = datetime(2026, 11, 1, tzinfo=UTC)  # every event below is history: the event clock applies



def record(topic: str, offset: int, member: str, kind: str, event_id: str, time: str, **data: Any) -> ConsumerRecord:
    model = registered_types()[kind].model.model_validate({**EXAMPLES[kind], "member_id": member, **data})
    value = new_event(model, subject=member, source="urn:test", tenant="payer-test", event_id=event_id,
                      time=datetime.fromisoformat(time)).to_json_bytes()
    return ConsumerRecord(topic=topic, partition=0, offset=offset, timestamp=0, timestamp_type=0,
                          key=member.encode(), value=value, checksum=None, serialized_key_size=len(member),
                          serialized_value_size=len(value), headers=[])


@pytest.fixture
async def pool(isolated: Any) -> Any:
    pool = await create_pool(isolated.database_url, schema="care_gaps_lanes", application_name="care-gaps-lanes",
                             max_size=LANES + 2)
    await run_migrations(pool, "care_gaps_lanes", "care_gaps")
    yield pool
    await pool.close()


async def test_a_gap_opened_in_one_lane_is_flagged_overdue_by_a_clock_another_lane_moved_in_the_same_batch(
    isolated: Any, pool: Any
) -> None:
    discharged, seen_later = keys_in_distinct_lanes(2, LANES, prefix="M-LANE-")
    use_cases = CareGapsUseCases(MeasureConfig(), ClockPolicy(mode="event"), wall_clock=lambda: WALL)
    processor = BatchProcessor(service="care-gaps", pool=pool, tenant="payer-test",
                               topic_prefix=isolated.topic_prefix, handlers=use_cases.mapping(), lanes=LANES,
                               after_batch=use_cases.after_batch)
    batch = [
        # Enrolled (risk 72.5, born 1950), then discharged: the opened gaps carry the member's priority.
        record(isolated.topic("enrollment"), 0, discharged, "member.enrolled", "enrolled", "2026-03-01T09:00:00-05:00"),
        # The discharge's 2-business-day interactive contact is due 2026-03-27 ...
        record(isolated.topic("encounters"), 0, discharged, "encounter.discharged", "a03", "2026-03-25T11:00:00-05:00",
               encounter_id="SEG-LANES", admitted_at="2026-03-20T08:00:00-05:00",
               discharged_at="2026-03-25T11:00:00-05:00", disposition="01"),
        # ... and another member's visit in another lane of the same batch moves the clock to 03-31.
        record(isolated.topic("virtual-visits"), 0, seen_later, "virtual_visit.completed", "vv-later",
               "2026-03-31T09:00:00-05:00", visit_id="VV-LANES", procedure_codes=["99499"],
               started_at="2026-03-31T09:00:00-05:00", ended_at="2026-03-31T09:10:00-05:00",
               medication_reconciliation=False, interactive_contact=False),
    ]
    await processor.process(batch)

    assert await pool.fetchval("SELECT clock_time FROM event_clocks WHERE tenant = 'payer-test'") == datetime(
        2026, 3, 31, 14, 0, tzinfo=UTC)
    overdue = await pool.fetch("SELECT measure, overdue_detected_at FROM gaps WHERE status = 'overdue'")
    assert [(r["measure"], r["overdue_detected_at"]) for r in overdue] == [
        ("tcm_interactive_contact", datetime(2026, 3, 31, 14, 0, tzinfo=UTC))]
    assert await pool.fetchval("SELECT count(*) FROM gaps WHERE status = 'open'") == 4
    assert await outbox_types(pool) == {"care_gap.opened": 5, "care_gap.overdue": 1}
    opened = [json.loads(r["p"]) for r in await pool.fetch(
        "SELECT convert_from(payload, 'UTF8') AS p FROM outbox WHERE headers->>'ce_type' = 'care_gap.opened'")]
    # 72.5 risk, 65 or older on the discharge date, five open gaps (the readmission watch is not counted: four)
    expected_priority = gap_priority(72.5, True, 4, MeasureConfig())
    assert expected_priority > 0
    assert {e["data"]["priority"] for e in opened} == {expected_priority}
    assert set(await pool.fetchval("SELECT array_agg(DISTINCT priority) FROM gaps WHERE status IN ('open', 'overdue')"
                                   )) == {expected_priority}
    overdue_event = json.loads(await pool.fetchval(
        "SELECT convert_from(payload, 'UTF8') FROM outbox WHERE headers->>'ce_type' = 'care_gap.overdue'"))
    assert overdue_event["causationid"] == "vv-later", "caused by the batch's latest event"
    assert overdue_event["tenant"] == "payer-test"

    await processor.process(batch)  # redelivery: the lanes apply nothing, the sweep finds nothing new
    assert await outbox_types(pool) == {"care_gap.opened": 5, "care_gap.overdue": 1}


async def outbox_types(pool: Any) -> dict[str, int]:
    rows = await pool.fetch("SELECT headers->>'ce_type' AS type, count(*) FROM outbox GROUP BY 1")
    return {r["type"]: r["count"] for r in rows}


@pytest.fixture
async def two_schemas(isolated: Any) -> Any:
    made = []
    for schema in ("care_gaps_batched", "care_gaps_one_by_one"):
        made.append(await create_pool(isolated.database_url, schema=schema, application_name="care-gaps-batching",
                                      max_size=1))  # one connection: its query logger sees every statement
        await run_migrations(made[-1], schema, "care_gaps")
    yield made
    for pool in made:
        await pool.close()


@pytest.mark.parametrize("refused", [False, True], ids=["clean", "one-event-refused"])
async def test_a_lane_reads_its_members_and_their_encounters_once_with_the_outcome_of_one_event_at_a_time(
    isolated: Any, two_schemas: Any, refused: bool
) -> None:
    def encounters(member: str, n: int) -> list[ConsumerRecord]:
        topic = isolated.topic("encounters")
        first, second = f"SEG-{member}-1", f"SEG-{member}-2"
        return [
            record(topic, 0, member, "encounter.admitted", f"{member}-a01", "2026-03-20T08:00:00-05:00",
                   encounter_id=first, admitted_at="2026-03-20T08:00:00-05:00", patient_class="inpatient"),
            record(topic, 1, member, "encounter.discharged", f"{member}-a03", "2026-03-25T11:00:00-05:00",
                   encounter_id=first, admitted_at="2026-03-20T08:00:00-05:00",
                   discharged_at="2026-03-25T11:00:00-05:00", disposition="01", patient_class="inpatient"),
            # readmitted within 30 days; the second member's readmission is cancelled (A11)
            record(topic, 2, member, "encounter.admitted", f"{member}-a01b", "2026-04-02T08:00:00-05:00",
                   encounter_id=second, admitted_at="2026-04-02T08:00:00-05:00", patient_class="inpatient"),
            *([record(topic, 3, member, "encounter.cancelled", f"{member}-a11", "2026-04-02T09:00:00-05:00",
                      encounter_id=second, trigger="A11", cancels="admit",
                      cancelled_at="2026-04-02T09:00:00-05:00")] if n == 1 else []),
        ]

    members = ("M-ENC-A", "M-ENC-B", "M-ENC-C")
    enrolled = [record(isolated.topic("enrollment"), n, member, "member.enrolled", f"{member}-enrolled",
                       "2026-03-01T09:00:00-05:00") for n, member in enumerate(members)]
    # M-ENC-A's visit the day after the discharge arrives first: the discharge's gaps close on it at once
    enrolled.append(record(isolated.topic("virtual-visits"), 0, "M-ENC-A", "virtual_visit.completed", "vv-A",
                           "2026-03-26T09:30:00-05:00", visit_id="VV-A", started_at="2026-03-26T09:00:00-05:00",
                           ended_at="2026-03-26T09:25:00-05:00"))
    batch = [r for n, member in enumerate(members) for r in encounters(member, n)]
    # An event naming another member's encounter is refused: the batch is redone event by event
    # (a savepoint each, the lane's deferred writes at the end of each), and every other event still
    # comes out as one at a time.
    if refused:
        batch.insert(5, record(isolated.topic("encounters"), 9, "M-ENC-B", "encounter.discharged", "B-names-A",
                               "2026-03-26T11:00:00-05:00", encounter_id="SEG-M-ENC-A-1",
                               admitted_at="2026-03-20T08:00:00-05:00", discharged_at="2026-03-26T11:00:00-05:00",
                               disposition="01", patient_class="inpatient"))
    batched, one_by_one = two_schemas

    def processor(pool: Any) -> BatchProcessor:
        use_cases = CareGapsUseCases(MeasureConfig(), ClockPolicy(mode="event"), wall_clock=lambda: WALL)
        return BatchProcessor(service="care-gaps", pool=pool, tenant="payer-test", topic_prefix=isolated.topic_prefix,
                              handlers=use_cases.mapping(), lanes=1, after_batch=use_cases.after_batch)

    await processor(batched).process(enrolled)
    async with statements_sent(batched) as by_batch:
        await processor(batched).process(batch)
    single = processor(one_by_one)
    for item in enrolled + batch:
        await single.process([item])

    async def tables(pool: Any) -> dict[str, Any]:
        return {
            "encounters": [tuple(r) for r in await pool.fetch(
                "SELECT encounter_id, member_id, patient_class, admitted_at, discharged_at, inpatient_since,"
                " admit_event_id, admit_cancelled_at, discharge_event_id FROM encounters ORDER BY 1")],
            "gaps": [tuple(r) for r in await pool.fetch(
                "SELECT gap_id, encounter_id, measure, status, due_date, priority, owner_role FROM gaps ORDER BY 1")],
        }

    got, expected = await tables(batched), await tables(one_by_one)
    assert got == expected
    assert len(expected["encounters"]) == 6
    closed_by_visit = await one_by_one.fetch("SELECT measure FROM gaps WHERE closing_event_id = 'vv-A'")
    assert closed_by_visit, "the stored visit closed gaps of the later discharge"
    assert await batched.fetchval("SELECT count(*) FROM gaps WHERE closing_event_id = 'vv-A'") == len(closed_by_visit)
    for pool in two_schemas:
        assert [r["reason"] for r in await pool.fetch("SELECT reason FROM dead_letters")] == (
            ["encounter_member_mismatch"] if refused else [])
    if refused:
        return  # (the isolated pass reads again; the statement counts below are the optimistic pass's)
    watches = {g[1]: g[3] for g in expected["gaps"] if g[2] == "readmission_watch"}
    assert watches["SEG-M-ENC-A-1"] == watches["SEG-M-ENC-C-1"] == "closed"  # readmitted within 30 days
    assert max(g[5] for g in expected["gaps"]) > 0  # the members' risk ranked their gaps
    # one statement creates and reads the lane's encounters; the readmission checks read none
    assert [q for q in by_batch if "FROM encounters" in q or "INTO encounters" in q] == [
        q for q in by_batch if q.startswith("WITH ensured AS ( INSERT INTO encounters")]
    assert len([q for q in by_batch if q.startswith("WITH ensured AS")]) == 1
    # one reads the gaps of the lane's encounters, one counts its members' other active gaps (their rows are
    # not read); each discharge then opens its gaps in one statement
    assert len([q for q in by_batch if q.startswith("SELECT gap_id") and "encounter_id = ANY" in q]) == 1
    assert len([q for q in by_batch if q.startswith("SELECT member_id, count(*) AS active")]) == 1
    # (a stored visit is evidence for the discharge after it; its own handler ran in an earlier batch)
    assert not [q for q in by_batch if q.startswith("SELECT gap_id") and "WHERE member_id" in q]
    assert len([q for q in by_batch if q.startswith("INSERT INTO gaps")]) == len(members)
    # evidence is read once, for every member the lane discharges
    assert len([q for q in by_batch if "FROM evidence" in q]) == 1
    # and one writes every encounter row the lane changed, at its end; one every gap priority it set
    assert len([q for q in by_batch if q.startswith("UPDATE encounters")]) == 1
    assert len([q for q in by_batch if "SET priority" in q]) == 1
    assert [q for q in by_batch if "FROM members" in q] == ["SELECT * FROM members WHERE member_id = ANY($1::text[])"]
    # The tenant's clock row, which every lane moves (and holds until its commit), is moved last.
    # (the overdue sweep's transaction follows the lane's)
    assert statements_after(by_batch, "INSERT INTO event_clocks")[:2] == ["INSERT INTO outbox", "COMMIT;"]


async def test_a_lane_reads_the_history_near_its_events_and_the_rest_of_a_members_history_only_when_needed(
    isolated: Any, two_schemas: Any
) -> None:
    topic = isolated.topic("encounters")

    def admitted(member: str, encounter: str, at: str, n: int) -> ConsumerRecord:
        return record(topic, n, member, "encounter.admitted", f"{encounter}-a01", at, encounter_id=encounter,
                      admitted_at=at, patient_class="inpatient")

    def discharged(member: str, encounter: str, admitted_at: str | None, at: str, n: int) -> ConsumerRecord:
        return record(topic, n, member, "encounter.discharged", f"{encounter}-a03", at, encounter_id=encounter,
                      admitted_at=admitted_at, discharged_at=at, disposition="01", patient_class="inpatient")

    members = ("M-NEAR", "M-LONG")
    enrolled = [record(isolated.topic("enrollment"), n, member, "member.enrolled", f"{member}-enrolled",
                       "2025-01-01T09:00:00-05:00") for n, member in enumerate(members)]
    history = [
        # M-NEAR: a later admission arrived first (26 days after the discharge that comes in the batch) ...
        admitted("M-NEAR", "SEG-NEAR-B", "2026-04-20T08:00:00-04:00", 0),
        # M-LONG: a year-old stay, a December stay, and the long stay its January admission began (a readmission)
        admitted("M-LONG", "SEG-OLD", "2025-02-20T08:00:00-05:00", 1),
        discharged("M-LONG", "SEG-OLD", "2025-02-20T08:00:00-05:00", "2025-03-01T10:00:00-05:00", 2),
        admitted("M-LONG", "SEG-PRIOR", "2025-12-15T08:00:00-05:00", 3),
        discharged("M-LONG", "SEG-PRIOR", "2025-12-15T08:00:00-05:00", "2025-12-20T10:00:00-05:00", 4),
        admitted("M-LONG", "SEG-LONG", "2026-01-02T08:00:00-05:00", 5),
    ]
    batch = [
        # ... so this discharge's readmission watch closes at once, from the lane's read of nearby history.
        admitted("M-NEAR", "SEG-NEAR-A", "2026-03-20T08:00:00-04:00", 6),
        discharged("M-NEAR", "SEG-NEAR-A", "2026-03-20T08:00:00-04:00", "2026-03-25T11:00:00-04:00", 7),
        # The long stay ends 82 days after it began (the A03 does not repeat the admission time): its own
        # readmission check looks around January, outside what the lane read, and reads the whole history.
        discharged("M-LONG", "SEG-LONG", None, "2026-03-25T11:00:00-04:00", 8),
    ]
    batched, one_by_one = two_schemas

    def processor(pool: Any) -> BatchProcessor:
        use_cases = CareGapsUseCases(MeasureConfig(), ClockPolicy(mode="event"), wall_clock=lambda: WALL)
        return BatchProcessor(service="care-gaps", pool=pool, tenant="payer-test", topic_prefix=isolated.topic_prefix,
                              handlers=use_cases.mapping(), lanes=1, after_batch=use_cases.after_batch)

    await processor(batched).process(enrolled + history)
    async with statements_sent(batched) as by_batch:
        await processor(batched).process(batch)
    single = processor(one_by_one)
    for item in enrolled + history + batch:
        await single.process([item])

    async def gaps(pool: Any) -> list[tuple[Any, ...]]:
        # (A watch the clock closed names the clock's latest event, which differs with the batching.)
        return [tuple(r) for r in await pool.fetch(
            "SELECT gap_id, encounter_id, measure, status, closing_rule, CASE WHEN closing_event_id LIKE"
            " 'event-clock-%' THEN 'event-clock' ELSE closing_event_id END, not_applicable_reason"
            " FROM gaps ORDER BY 1")]

    got, expected = await gaps(batched), await gaps(one_by_one)
    assert got == expected
    watches = {g[1]: (g[3], g[4], g[5]) for g in expected if g[2] == "readmission_watch"}
    assert watches["SEG-NEAR-A"] == ("closed", "unplanned_readmission", "SEG-NEAR-B-a01")
    assert watches["SEG-PRIOR"] == ("closed", "unplanned_readmission", "SEG-LONG-a01")
    # the year-old stay's watch was closed by the event clock when its 30 days had passed, and announced
    assert watches["SEG-OLD"] == ("closed", "no_readmission_30_days", "event-clock")
    for pool in two_schemas:
        closed = [json.loads(r["p"])["data"] for r in await pool.fetch(
            "SELECT convert_from(payload, 'UTF8') AS p FROM outbox WHERE headers->>'ce_type' = 'care_gap.closed'")]
        old_watch = [c for c in closed if c["encounter_id"] == "SEG-OLD" and c["measure"] == "readmission_watch"]
        assert [(c["closing_rule"], c["closed_at"]) for c in old_watch] == [
            ("no_readmission_30_days", "2025-04-01T05:00:00Z")]
    reads = [q for q in by_batch if q.startswith("WITH ensured AS")]
    assert len(reads) == 2, "the lane's read, then M-LONG's whole history for the check around January"


async def test_a_lane_counts_the_active_gaps_it_does_not_hold_and_gives_them_the_members_priority(
    isolated: Any, two_schemas: Any
) -> None:
    topic = isolated.topic("encounters")
    config = MeasureConfig(priority_open_gap_cap=50)  # every gap counts: each change below moves the priority

    def discharged(encounter: str, admitted_at: str, at: str, n: int) -> ConsumerRecord:
        return record(topic, n, "M-MANY", "encounter.discharged", f"{encounter}-a03", at, encounter_id=encounter,
                      admitted_at=admitted_at, discharged_at=at, disposition="01", patient_class="inpatient")

    enrolled = record(isolated.topic("enrollment"), 0, "M-MANY", "member.enrolled", "M-MANY-enrolled",
                      "2025-06-01T09:00:00-05:00")
    # Two earlier stays, far apart: their follow-up gaps are active (open or overdue) when the batch comes.
    history = [discharged("SEG-OLD-1", "2026-01-05T08:00:00-05:00", "2026-01-08T10:00:00-05:00", 1),
               discharged("SEG-OLD-2", "2026-02-16T08:00:00-05:00", "2026-02-19T10:00:00-05:00", 2)]
    batch = [
        # A new stay's gaps raise the member's open-gap count, and with it the priority of every active gap ...
        discharged("SEG-NEW-1", "2026-04-10T08:00:00-04:00", "2026-04-14T10:00:00-04:00", 3),
        # ... then a late admission, 19 days after the second old discharge, readmits after it: that
        # discharge's gaps, not held until now, are retired with the priority they had since the first
        # event, and the count falls ...
        record(topic, 4, "M-MANY", "encounter.admitted", "SEG-RE-a01", "2026-03-10T08:00:00-05:00",
               encounter_id="SEG-RE", admitted_at="2026-03-10T08:00:00-05:00", patient_class="inpatient"),
        # ... and two more stays raise it beyond where it was.
        discharged("SEG-NEW-2", "2026-06-01T08:00:00-04:00", "2026-06-04T10:00:00-04:00", 5),
        discharged("SEG-NEW-3", "2026-08-03T08:00:00-04:00", "2026-08-06T10:00:00-04:00", 6),
    ]
    batched, one_by_one = two_schemas

    def processor(pool: Any) -> BatchProcessor:
        use_cases = CareGapsUseCases(config, ClockPolicy(mode="event"), wall_clock=lambda: WALL)
        return BatchProcessor(service="care-gaps", pool=pool, tenant="payer-test", topic_prefix=isolated.topic_prefix,
                              handlers=use_cases.mapping(), lanes=1, after_batch=use_cases.after_batch)

    for pool in two_schemas:
        for item in [enrolled, *history]:
            await processor(pool).process([item])
    member = await batched.fetchrow("SELECT risk_score, turns_65_on FROM members WHERE member_id = 'M-MANY'")

    def priority(open_count: int) -> float:
        return gap_priority(member["risk_score"], member["turns_65_on"] <= datetime(2026, 4, 15).date(), open_count,
                            config)

    async def gaps(pool: Any) -> list[tuple[Any, ...]]:
        # (The sweep after each batch closes the watches whose 30 days are over: one at a time, before the
        # next event's refresh; in one batch, after the lane's last. Their priorities differ, as they did
        # before lanes, so they are left out.)
        return [tuple(r) for r in await pool.fetch(
            "SELECT gap_id, encounter_id, measure, status, CASE WHEN measure = 'readmission_watch' THEN NULL"
            " ELSE priority END, not_applicable_reason FROM gaps ORDER BY 1")]

    old = [g for g in await gaps(batched) if g[2] != "readmission_watch"]
    assert len(old) == 8 and {g[3] for g in old} <= {"open", "overdue"} and {g[4] for g in old} == {priority(8)}
    async with statements_sent(batched) as by_batch:
        await processor(batched).process(batch)
    for item in batch:
        await processor(one_by_one).process([item])

    got, expected = await gaps(batched), await gaps(one_by_one)
    assert got == expected
    follow_ups = [g for g in expected if g[2] != "readmission_watch"]
    active = [g for g in follow_ups if g[3] in ("open", "overdue")]
    assert {g[1] for g in active} == {"SEG-OLD-1", "SEG-NEW-1", "SEG-NEW-2", "SEG-NEW-3"} and len(active) == 16
    # every active gap, held by the lane or not (SEG-OLD-1's), has the member's last priority
    assert {g[4] for g in active} == {priority(16)}
    # the retired gaps keep the priority they had while active: the one the first event set
    assert {(g[3], g[4], g[5]) for g in follow_ups if g[1] == "SEG-OLD-2"} == {
        ("not_applicable", priority(12), "readmitted")}
    # The old stays' gaps were counted, not read with the lane's: the readmission read the retired ones alone.
    assert not [q for q in by_batch if q.startswith("SELECT gap_id") and "WHERE member_id" in q]
    assert len([q for q in by_batch if q.startswith("SELECT gap_id") and "encounter_id = ANY" in q]) == 2
    assert len([q for q in by_batch if q.startswith("SELECT member_id, count(*) AS active")]) == 1
    assert len([q for q in by_batch if "SET priority" in q]) == 1


async def test_the_lane_priority_write_reaches_its_members_active_gaps_through_their_index(pool: Any) -> None:
    # Many members, most gaps inactive: the write must find its members' active gaps by member, not
    # scan every active gap and join them to its list (a generic plan, as a prepared statement gets).
    await pool.execute(
        "INSERT INTO gaps(gap_id, tenant, member_id, encounter_id, measure, measure_version, discharged_at,"
        " window_start, due_date, overdue_at, status, owner_role, opened_event_id)"
        " SELECT 'G-IX-' || i, 't', 'M-IX-' || (i % 5000), 'E-IX-' || (i / 5), 'm' || (i % 5), 'v', now(),"
        " current_date, current_date, now(), (ARRAY['open', 'overdue', 'closed', 'not_applicable'])[1 + i % 4],"
        " 'pcp', 'ev' FROM generate_series(1, 100000) AS i")
    await pool.execute("ANALYZE gaps")
    members = {f"M-IX-{i}": 3.5 for i in range(0, 200, 2)}
    async with pool.acquire() as conn:
        sent: list[str] = []
        conn.add_query_logger(lambda record: sent.append(record.query))
        await store.set_priorities(conn, {"G-IX-1": 3.5}, members, ["G-IX-1"])
        # (each member has 20 gaps, all in one status: half of these members' are open, half closed)
        assert await conn.fetchval("SELECT count(*) FROM gaps WHERE priority = 3.5") == 1 + 50 * 20
        await conn.execute("SET plan_cache_mode = force_generic_plan")
        [write] = [q for q in sent if q.startswith("WITH by_gap")]
        explain = await conn.prepare(f"EXPLAIN {write}")
        rows = await explain.fetch(["G-IX-1"], [3.5], list(members), [1.0] * len(members), ["G-IX-1"])
        plan = "\n".join(r[0] for r in rows)
        await conn.execute("RESET plan_cache_mode")
    assert any("Index Cond" in line and "member_id" in line for line in plan.splitlines()), plan


async def test_a_priority_change_updates_the_gap_in_place(pool: Any) -> None:
    # Every lane re-ranks its members' active gaps: those updates must be HOT (the row's new version
    # on its page, no new index entries), which no index on the priority and room on the page allow.
    await pool.execute(
        "INSERT INTO gaps(gap_id, tenant, member_id, encounter_id, measure, measure_version, discharged_at,"
        " window_start, due_date, overdue_at, status, owner_role, opened_event_id)"
        " SELECT 'G-HOT-' || i, 't', 'M-HOT-' || (i % 50), 'E-HOT-' || i, 'm', 'v', now(), current_date,"
        " current_date, now(), (ARRAY['open', 'overdue'])[1 + i % 2], 'pcp', 'ev' FROM generate_series(1, 2000) AS i")
    updated = hot = 0
    for lane in range(40):  # lanes re-rank a few members each: every member's gaps, four times over
        members = {f"M-HOT-{(5 * lane + k) % 50}": 1.0 + lane for k in range(5)}
        counts = "SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_xact_user_tables WHERE relid = 'gaps'::regclass"
        async with pool.acquire() as conn, conn.transaction():
            before = await conn.fetchrow(counts)  # (not yet reported this backend's counts: a difference)
            await store.set_priorities(conn, {}, members, [])
            after = await conn.fetchrow(counts)
        updated, hot = updated + after[0] - before[0], hot + after[1] - before[1]
    assert updated == 4 * 2000
    assert hot >= 0.9 * updated, (updated, hot)


_ENCOUNTER_WRITES = "SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_xact_user_tables WHERE relid = 'encounters'::regclass"


async def test_known_encounters_are_locked_and_returned_without_writing_a_new_version_of_their_rows(
    pool: Any
) -> None:
    first_seen = {f"E-KNOWN-{i}": (f"M-KNOWN-{i % 7}", "t", "I") for i in range(30)}
    async with pool.acquire() as conn, conn.transaction():
        created = await store.lane_encounters(conn, first_seen, {})
    assert sorted(created) == sorted(first_seen)

    async with pool.acquire() as conn, pool.acquire() as other, conn.transaction():
        before = await conn.fetchrow(_ENCOUNTER_WRITES)
        again = await store.lane_encounters(conn, {**first_seen, "E-NEW": ("M-KNOWN-0", "t", "E")}, {})
        after = await conn.fetchrow(_ENCOUNTER_WRITES)
        assert after[0] - before[0] == 0, "a known encounter's row is not rewritten"
        assert sorted(again) == sorted([*first_seen, "E-NEW"])
        assert again["E-NEW"]["patient_class"] == "E" and again["E-KNOWN-3"]["member_id"] == "M-KNOWN-3"
        # ... but it is locked for the lane's write: another writer cannot take it meanwhile.
        with pytest.raises(asyncpg.LockNotAvailableError):
            await other.execute("SELECT 1 FROM encounters WHERE encounter_id = 'E-KNOWN-3' FOR UPDATE NOWAIT")


async def test_an_encounter_another_transaction_creates_meanwhile_is_read_and_locked_all_the_same(pool: Any) -> None:
    async with pool.acquire() as conn, pool.acquire() as other:
        rival = other.transaction()
        await rival.start()
        await other.execute("INSERT INTO encounters(encounter_id, member_id, tenant, patient_class)"
                            " VALUES ('E-RACE', 'M-RACE', 't', 'I')")
        async with conn.transaction():
            pid = await conn.fetchval("SELECT pg_backend_pid()")
            lane = asyncio.create_task(store.lane_encounters(conn, {"E-RACE": ("M-RACE", "t", "E")}, {}))
            for _ in range(200):  # the insert waits for the rival's uncommitted row
                if await other.fetchval("SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = $1", pid):
                    break
                await asyncio.sleep(0.02)
            else:
                raise AssertionError("the lane never waited for the rival's insert")
            await rival.commit()
            rows = await asyncio.wait_for(lane, 10)
        # Committed after the lane's statement began: not in its snapshot, so read by a second statement.
        assert rows["E-RACE"]["patient_class"] == "I", "the rival's row, not a second one"


async def test_a_lane_writing_its_encounters_updates_them_in_place(pool: Any) -> None:
    # Lanes write the state of their members' encounters (admissions, discharges, cancels): those updates
    # must be HOT (the row's new version on its page, no new index entries), which room on the page allows.
    first_seen = {f"E-HOT-{i}": (f"M-HOT-{i % 50}", "t", "I") for i in range(2000)}
    async with pool.acquire() as conn, conn.transaction():
        rows = await store.lane_encounters(conn, first_seen, {})
    updated = hot = 0
    for lane in range(40):  # lanes write a few members' encounters each: every encounter, four times over
        members = {f"M-HOT-{(5 * lane + k) % 50}" for k in range(5)}
        mine = [row for row in rows.values() if row["member_id"] in members]
        for row in mine:
            row["admitted_at"] = datetime(2026, 3, 1, tzinfo=UTC)
            row["disposition"] = f"{lane % 10:02d}"
        async with pool.acquire() as conn, conn.transaction():
            before = await conn.fetchrow(_ENCOUNTER_WRITES)
            await store.save_encounters(conn, mine)
            after = await conn.fetchrow(_ENCOUNTER_WRITES)
        updated, hot = updated + after[0] - before[0], hot + after[1] - before[1]
    assert updated == 4 * 2000
    assert hot >= 0.9 * updated, (updated, hot)


async def test_a_lanes_encounter_read_finds_its_members_history_through_their_index(pool: Any) -> None:
    # Many members with a history each: the lane's read of its members' encounters near its events must
    # go through the member index, not scan every encounter of every member (a generic plan, as a
    # prepared statement gets, too).
    await pool.execute(
        "INSERT INTO encounters(encounter_id, member_id, tenant, patient_class, discharged_at)"
        " SELECT 'E-HIST-' || i, 'M-HIST-' || (i % 2000), 't', 'I', now() - (i / 2000) * interval '60 days'"
        " FROM generate_series(0, 23999) AS i")
    await pool.execute("ANALYZE encounters")
    members = [f"M-HIST-{i}" for i in range(0, 80, 2)]
    now = datetime.now(UTC)
    spans = {m: (now - timedelta(days=45), now + timedelta(days=1)) for m in members}
    spans[members[0]] = None  # every encounter of this one
    async with pool.acquire() as conn, conn.transaction():
        sent: list[str] = []
        conn.add_query_logger(lambda record: sent.append(record.query))
        rows = await store.lane_encounters(conn, {"E-HIST-NEW": (members[1], "t", "E")}, spans)
        # the new one, the recent discharge of each member, and all 12 of the first member's
        assert len(rows) == 1 + (len(members) - 1) + 12
        assert {r["member_id"] for r in rows.values()} == set(members)
        await asyncio.sleep(0)  # (asyncpg calls query loggers soon after, not during, the query)
        [read] = [q for q in sent if q.startswith("WITH ensured")]
        for mode in ("auto", "force_generic_plan"):
            await conn.execute(f"SET LOCAL plan_cache_mode = {mode}")
            explain = await conn.prepare(f"EXPLAIN {read}")
            plan = "\n".join(r[0] for r in await explain.fetch(
                ["E-HIST-NEW"], [members[1]], ["t"], ["E"], members, [(spans[m] or (None, None))[0] for m in members],
                [(spans[m] or (None, None))[1] for m in members]))
            assert "Seq Scan on encounters" not in plan, plan
