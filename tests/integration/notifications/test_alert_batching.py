"""A batch lane writes its alerts in one statement and gets the same alerts as event-by-event application.

Against the real PostgreSQL, with the service's own handlers and ``BatchProcessor``: the same
events applied as one batch (alerts queued, written before the reads that must see them: a care
team that arrives late, cancels) and applied one event per batch give the same alerts, facts,
retractions, sequence numbers and deliveries; a lane without cancels or late teams reads the
care teams, cancels and earlier discharges once and writes all its alerts, and all its encounter rows,
in one statement each.
"""

from __future__ import annotations

import zlib
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from aiokafka import ConsumerRecord
from cth_shared.db import create_pool, run_migrations
from cth_shared.messaging.consumer import BatchProcessor
from cth_shared.testing import statements_after, statements_sent
from notification_support import MEMBER, PCP_TIN, event_bytes
from notifications.domain.rules import rule_set
from notifications.handlers import AlertHandlers
from notifications.settings import NotificationSettings

pytestmark = pytest.mark.integration

OTHER = "M000002"
THIRD = "M000003"

EVENTS: list[tuple[str, str, bytes]] = [
    # The admission is handled before its member's care team is known (topics are not ordered with each other).
    ("encounters", MEMBER, event_bytes("encounter.admitted", event_id="adm-1")),
    ("encounters", MEMBER, event_bytes("encounter.admitted", event_id="adm-9", encounter_id="SEG-V0009",
                                       admitted_at="2026-03-04T08:00:00-05:00")),
    ("encounters", MEMBER, event_bytes("encounter.cancelled", event_id="cxl-9", encounter_id="SEG-V0009",
                                       trigger="A11", cancels="admit", cancelled_at="2026-03-04T09:00:00-05:00")),
    ("attribution", MEMBER, event_bytes("attribution.changed", event_id="team-1")),
    ("attribution", OTHER, event_bytes("attribution.changed", event_id="team-2", member_id=OTHER)),
    ("encounters", OTHER, event_bytes("encounter.admitted", event_id="adm-2", member_id=OTHER,
                                      encounter_id="SEG-V0002")),
    # The cancel of an admission whose discharge is still to come, then that discharge: raised and retracted.
    ("encounters", OTHER, event_bytes("encounter.cancelled", event_id="cxl-2d", member_id=OTHER,
                                      encounter_id="SEG-V0002", trigger="A13", cancels="discharge",
                                      cancelled_at="2026-03-09T09:00:00-05:00")),
    ("encounters", OTHER, event_bytes("encounter.discharged", event_id="dis-2", member_id=OTHER,
                                      encounter_id="SEG-V0002")),
    # A discharge, then a readmission twelve days later naming it, and an update (A08) of the readmission.
    ("attribution", THIRD, event_bytes("attribution.changed", event_id="team-3", member_id=THIRD)),
    ("encounters", THIRD, event_bytes("encounter.discharged", event_id="dis-31", member_id=THIRD,
                                      encounter_id="SEG-V0031")),
    ("encounters", THIRD, event_bytes("encounter.admitted", event_id="adm-32", member_id=THIRD,
                                      encounter_id="SEG-V0032", admitted_at="2026-03-18T07:00:00-05:00")),
    ("encounters", THIRD, event_bytes("encounter.admitted", event_id="adm-32u", member_id=THIRD, trigger="A08",
                                      encounter_id="SEG-V0032", admitted_at="2026-03-18T07:00:00-05:00",
                                      patient_class="observation")),
    # The late team's admit alerts for MEMBER, then their retraction, in the same batch.
    ("encounters", MEMBER, event_bytes("encounter.cancelled", event_id="cxl-1", trigger="A11", cancels="admit",
                                       cancelled_at="2026-03-02T10:00:00-05:00")),
]


def records(prefix: str, events: list[tuple[str, str, bytes]] = EVENTS) -> list[ConsumerRecord]:
    return [ConsumerRecord(topic=f"{prefix}{topic}", partition=zlib.crc32(key.encode()) % 6, offset=offset,
                           timestamp=0, timestamp_type=0, key=key.encode(), value=value, checksum=None,
                           serialized_key_size=len(key), serialized_value_size=len(value), headers=[])
            for offset, (topic, key, value) in enumerate(events)]


@pytest.fixture
async def pools(isolated: Any) -> AsyncIterator[list[asyncpg.Pool]]:
    made = []
    for schema in ("notif_batched", "notif_one_by_one"):
        pool = await create_pool(isolated.database_url, schema=schema, application_name="alert-batching-test",
                                 max_size=1)  # one connection: its query logger sees every statement
        await run_migrations(pool, schema, "notifications")
        await pool.execute(
            "INSERT INTO subscriptions(subscription_id, organization_id, audience, channel, endpoint_url, secret)"
            " VALUES ('sub-pcp', $1, 'care_team', 'webhook', 'https://pcp.example/hook', 's')", PCP_TIN)
        made.append(pool)
    yield made
    for pool in made:
        await pool.close()


def processor(pool: asyncpg.Pool, isolated: Any) -> BatchProcessor:
    settings = NotificationSettings()
    handlers = AlertHandlers(rule_set(settings.alert_rules_version),
                             payer_organization_id=settings.payer_organization_id,
                             readmission_window_days=settings.readmission_window_days).mapping()
    return BatchProcessor(service="notifications", pool=pool, handlers=handlers, tenant="p1",
                          topic_prefix=isolated.topic_prefix, lanes=1)


async def state(pool: asyncpg.Pool) -> dict[str, Any]:
    return {
        "alerts": [tuple(r) for r in await pool.fetch(
            "SELECT notification_id, recipient_id, member_id, encounter_id, kind, retraction, retracts_id,"
            " retracted_at, sequence, source_event_id FROM notifications ORDER BY notification_id")],
        "facts": [tuple(r) for r in await pool.fetch(
            "SELECT subject_key, kind, member_id, source_event_id FROM alert_facts ORDER BY 1, 2")],
        "deliveries": [tuple(r) for r in await pool.fetch(
            "SELECT notification_id, subscription_id FROM deliveries ORDER BY delivery_id")],
        "created": sorted(r["payload"] for r in await pool.fetch("SELECT convert_from(payload, 'UTF8')::jsonb"
                                                                  " -> 'data' ->> 'notification_id' AS payload"
                                                                  " FROM outbox")),
        "dead_letters": await pool.fetchval("SELECT count(*) FROM dead_letters"),
        "encounters": [tuple(r) for r in await pool.fetch(
            "SELECT encounter_id, member_id, patient_class, admitted_at, discharged_at, facility FROM encounters"
            " ORDER BY 1")],
        "discharges": [tuple(r) for r in await pool.fetch("SELECT * FROM member_discharges ORDER BY 1, 2")],
        "readmission_facts": [tuple(r) for r in await pool.fetch(
            "SELECT subject_key, facts ->> 'previous_encounter_id' FROM alert_facts WHERE kind = 'readmission'")],
    }


async def test_one_batch_gives_the_alerts_of_event_by_event_application(
    isolated: Any, pools: list[asyncpg.Pool]
) -> None:
    batched, one_by_one = pools
    batch = records(isolated.topic_prefix)
    async with statements_sent(batched) as sent:
        await processor(batched, isolated).process(batch)
    single = processor(one_by_one, isolated)
    for record in batch:
        await single.process([record])

    got, expected = await state(batched), await state(one_by_one)
    assert got == expected
    # What the scenario must produce, so that equality is not of two empty tables:
    alerts = expected["alerts"]
    admits = [a for a in alerts if a[3] == "SEG-V0001" and not a[5]]
    retractions = [a for a in alerts if a[3] == "SEG-V0001" and a[5]]
    assert len(admits) == 3 and all(a[7] is not None and a[9] == "adm-1" for a in admits)  # late team, retracted
    assert sorted(r[6] for r in retractions) == sorted(a[0] for a in admits)
    assert not [a for a in alerts if a[3] == "SEG-V0009"]  # cancelled before its team was known: nobody alerted
    discharge = [a for a in alerts if a[3] == "SEG-V0002" and a[4] == "discharge" and not a[5]]
    assert discharge and all(a[7] is not None for a in discharge)  # raised, then retracted by the earlier cancel
    pcp = sorted(a[8] for a in alerts if a[1] == "1234567893")  # the PCP of both members: gapless numbers
    assert len(pcp) >= 4 and pcp == list(range(1, len(pcp) + 1))
    assert expected["deliveries"] and len(expected["created"]) == len(alerts)
    assert expected["dead_letters"] == 0
    assert expected["readmission_facts"] == [("SEG-V0032", "SEG-V0031")]
    assert ("SEG-V0032", THIRD, "observation") in [e[:3] for e in expected["encounters"]]  # the A08 applied last
    assert [d[:2] for d in expected["discharges"]] == [(THIRD, "SEG-V0031")]  # OTHER's was cancelled
    # The cancels wrote the lane's alerts early, and the discharges' writes were first queued after that:
    # the numbering still comes last.
    assert statements_after(sent, "WITH pending AS") == ["INSERT INTO outbox", "COMMIT;"]


async def one_lane_after_care_teams(pool: asyncpg.Pool, isolated: Any, numbers: range, event_type: str,
                                    encounter_prefix: str) -> list[str]:
    """The members ``numbers`` get their care teams in one batch (every other member's PCP in an
    organization of its own), then one ``event_type`` each in a second batch (one lane); returns the
    statements that second batch sent."""
    def team(n: int) -> dict[str, Any]:
        tin = PCP_TIN if n % 2 else f"{900000000 + n}"
        return {"pcp_tin": tin, "care_team": [{"role": "pcp", "id": "1234567893", "tin": tin},
                                              {"role": "v1c_provider", "id": "1003000126", "tin": "555666777"},
                                              {"role": "care_manager", "id": "CM-17"}]}

    members = {f"M{n:06d}": n for n in numbers}
    teams = [("attribution", m, event_bytes("attribution.changed", event_id=f"team-{m}", member_id=m, **team(n)))
             for m, n in members.items()]
    events = [("encounters", m, event_bytes(event_type, event_id=f"{event_type}-{m}", member_id=m,
                                            encounter_id=f"{encounter_prefix}{m}")) for m in members]
    run = processor(pool, isolated)
    await run.process(records(isolated.topic_prefix, teams))
    async with statements_sent(pool) as sent:
        await run.process(records(isolated.topic_prefix, events))
    return sent


async def test_a_lane_of_admissions_reads_once_and_writes_once_per_table(
    isolated: Any, pools: list[asyncpg.Pool]
) -> None:
    pool = pools[0]
    sent = await one_lane_after_care_teams(pool, isolated, range(100, 120), "encounter.admitted", "SEG-")

    def count(prefix: str) -> int:
        return sum(1 for q in sent if q.startswith(prefix))

    assert count("WITH fact AS") == 1  # twenty facts, sixty alerts and their deliveries
    assert count("SELECT * FROM subscriptions") == 1  # for every organization of the lane's care teams
    assert count("SELECT member_id, effective_from, effective_to, care_team FROM care_team_history") == 1
    assert count("SELECT encounter_id, cancels, cancelled_at FROM encounter_cancels") == 1
    assert count("WITH pending AS") == 1  # sequence numbers
    # They lock the recipients' counters until the commit: nothing but the outbox's insert comes after them.
    assert statements_after(sent, "WITH pending AS") == ["INSERT INTO outbox", "COMMIT;"]
    assert not [q for q in sent if "pg_notify" in q and not q.startswith("WITH fact AS")]  # announced with the insert
    assert count("INSERT INTO encounters") == 1
    assert count("SELECT member_id, encounter_id, discharged_at FROM member_discharges") == 1  # readmission check
    assert await pool.fetchval("SELECT count(*) FROM notifications WHERE encounter_id LIKE 'SEG-M%'") == 60
    assert await pool.fetchval("SELECT count(*) FROM alert_facts WHERE subject_key LIKE 'SEG-M%'") == 20


async def test_a_lane_of_discharges_records_them_in_one_statement(isolated: Any, pools: list[asyncpg.Pool]) -> None:
    pool = pools[0]
    sent = await one_lane_after_care_teams(pool, isolated, range(200, 220), "encounter.discharged", "SEG-D-")

    assert sum(1 for q in sent if "member_discharges" in q) == 2, "one read, one write"
    assert await pool.fetchval("SELECT count(*) FROM member_discharges WHERE encounter_id LIKE 'SEG-D-%'") == 20
