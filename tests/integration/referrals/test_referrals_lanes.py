"""referrals' handlers in a batch lane against the real PostgreSQL: a discharge's referral is cancelled by
an A13 or by an A08 that changes the disposition, also when the referral was created earlier in the same
lane; and a lane of discharges that created no referral sends no cancelling UPDATE at all."""

from __future__ import annotations

from typing import Any

import pytest
from aiokafka import ConsumerRecord
from cth_shared.contracts import EXAMPLES, new_event, npi_with_check_digit, registered_types
from cth_shared.db import create_pool, run_migrations
from cth_shared.messaging.consumer import BatchProcessor
from cth_shared.testing import statements_sent
from referrals.directory import DirectoryCache
from referrals.handlers import ReferralHandlers
from referrals.settings import ReferralsSettings

pytestmark = pytest.mark.integration

AGENCY = npi_with_check_digit("198273645")
HOME_LAT, HOME_LON = 39.7817, -89.6501  # EXAMPLES member address


def record(topic: str, offset: int, key: str, kind: str, event_id: str, **data: Any) -> ConsumerRecord:
    model = registered_types()[kind].model.model_validate({**EXAMPLES[kind], **data})
    value = new_event(model, subject=key, source="urn:test", tenant="payer-test", event_id=event_id).to_json_bytes()
    return ConsumerRecord(topic=topic, partition=0, offset=offset, timestamp=0, timestamp_type=0, key=key.encode(),
                          value=value, checksum=None, serialized_key_size=len(key), serialized_value_size=len(value),
                          headers=[])


@pytest.fixture
async def pool(isolated: Any) -> Any:
    pool = await create_pool(isolated.database_url, schema="referrals_lanes", application_name="referrals-lanes",
                             max_size=1)  # one connection: the statement log sees everything
    await run_migrations(pool, "referrals_lanes", "referrals")
    yield pool
    await pool.close()


async def test_a_discharge_referral_is_cancelled_in_the_lane_that_created_it_and_discharges_without_one_cancel_nothing(
    isolated: Any, pool: Any
) -> None:
    settings = ReferralsSettings()
    handlers = ReferralHandlers(settings.routing_policy(), settings.service_code_map(),
                                DirectoryCache(settings.directory_grid_cell_degrees), settings.leakage_window_days)
    processor = BatchProcessor(service="referrals", pool=pool, tenant="payer-test",
                               topic_prefix=isolated.topic_prefix, handlers=handlers.mapping(), lanes=1)
    members = [f"M-REF-{i}" for i in range(6)]
    reference = [
        record(isolated.topic("provider-directory"), 0, AGENCY, "provider.upserted", "agency", npi=AGENCY,
               latitude=HOME_LAT + 0.02, longitude=HOME_LON, capacity=5,
               networks=[{"network_id": "NET-A", "tier": "preferred"}]),
        *[record(isolated.topic("enrollment"), n, m, "member.enrolled", f"enrolled-{m}", member_id=m)
          for n, m in enumerate(members)],
    ]
    await processor.process(reference)

    def discharge(n: int, member: str, encounter: str, disposition: str, trigger: str = "A03") -> ConsumerRecord:
        return record(isolated.topic("encounters"), n, member, "encounter.discharged", f"a03-{encounter}-{n}",
                      member_id=member, encounter_id=encounter, disposition=disposition, trigger=trigger)

    topic = isolated.topic("encounters")
    batch = [
        # M-REF-0: to home health (06), then the discharge is cancelled (A13), in the same lane
        discharge(0, "M-REF-0", "SEG-R0", "06"),
        record(topic, 1, "M-REF-0", "encounter.cancelled", "a13-SEG-R0", member_id="M-REF-0", encounter_id="SEG-R0",
               trigger="A13", cancels="discharge", cancelled_at="2026-03-06T15:00:00-05:00"),
        # M-REF-1: to home health, then an A08 says home (01): the home-health referral is cancelled
        discharge(2, "M-REF-1", "SEG-R1", "06"),
        discharge(3, "M-REF-1", "SEG-R1", "01", trigger="A08"),
        # M-REF-2: to home health, and it stays so
        discharge(4, "M-REF-2", "SEG-R2", "06"),
    ]
    await processor.process(batch)
    rows = await pool.fetch("SELECT encounter_id, status, close_reason FROM referrals ORDER BY encounter_id")
    assert [tuple(r) for r in rows] == [("SEG-R0", "cancelled", "discharge_cancelled"),
                                        ("SEG-R1", "cancelled", "disposition_changed"),
                                        ("SEG-R2", "open", None)]

    # Discharges home (01) of other encounters: nothing to cancel, so no cancelling UPDATE is sent;
    # whether any could exist is read once for the whole lane.
    home = [discharge(10 + n, m, f"SEG-H{n}", "01") for n, m in enumerate(members[3:])]
    async with statements_sent(pool) as sent:
        await processor.process(home)
    assert [q for q in sent if q.startswith("UPDATE referrals SET status = 'cancelled'")] == []
    assert len([q for q in sent if "status IN ('open', 'unroutable')" in q and q.startswith("SELECT")]) == 1
