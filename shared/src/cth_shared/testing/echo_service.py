"""A minimal service used by the plumbing tests: it proves the runtime, not a rule.

It consumes ``encounters``; each ``encounter.admitted`` increments a per-member
counter (the effect) and produces one ``notification.created`` (the outbox). An
admission whose facility name is ``REJECT`` is rejected by the handler (DLQ path).
Run it as a process: ``python -m cth_shared.testing.echo_service``.
"""

from __future__ import annotations

from typing import Any

from ..contracts import CloudEvent
from ..contracts.events import EncounterAdmitted, NotificationCreated, NotificationKind
from ..messaging.consumer import Rejected
from ..messaging.outbox import UnitOfWork
from ..runtime import ServiceDefinition, run_service
from ..settings import ServiceSettings


async def count_admission(uow: UnitOfWork, event: CloudEvent[Any]) -> None:
    admitted: EncounterAdmitted = event.data
    if admitted.facility.name == "REJECT":
        raise Rejected("facility_not_contracted", "facility is not in the network")
    await uow.conn.execute(
        "INSERT INTO admissions_seen(member_id, count) VALUES ($1, 1)"
        " ON CONFLICT (member_id) DO UPDATE SET count = admissions_seen.count + 1",
        admitted.member_id,
    )
    uow.publish(
        NotificationCreated(
            notification_id=f"n-{event.id}",
            member_id=admitted.member_id,
            recipient_id="1234567893",
            recipient_role="pcp",
            organization_id="987654321",
            kind=NotificationKind.ADMIT,
            priority="high",
            encounter_id=admitted.encounter_id,
            sequence=1,
            source_event_id=event.id,
        ),
        subject=admitted.member_id,
        time=admitted.admitted_at,
    )


DEFINITION = ServiceDefinition(
    name="echo",
    schema="echo",
    migrations_package="cth_shared.testing",
    topics=["encounters"],
    handlers={"encounter.admitted": count_admission},
)


def main() -> None:
    run_service(DEFINITION, ServiceSettings())


if __name__ == "__main__":
    main()
