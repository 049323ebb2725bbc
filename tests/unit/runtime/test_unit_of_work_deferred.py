"""Deferred work of a UnitOfWork: run early before a read, and rolled back exactly with a savepoint.

Pure bookkeeping (no database is touched until ``flush`` writes the outbox, which these tests don't
reach): which items each finisher gets, in which order, and what a rolled-back savepoint queues again.
"""

from __future__ import annotations

from typing import Any

from cth_shared.messaging.outbox import UnitOfWork


def new_uow() -> UnitOfWork:
    return UnitOfWork(conn=None, source="urn:test", tenant="t1")


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[str, list[Any]]] = []

    def finisher(self, kind: str, then: tuple[str, Any] | None = None) -> Any:
        async def finish(uow: UnitOfWork, items: list[Any]) -> None:
            self.calls.append((kind, list(items)))
            if then is not None:  # a finisher that queues work of a later kind (e.g. sequence numbers)
                for item in items:
                    uow.defer(then[0], f"{then[0]}({item})", then[1])
        return finish


async def test_run_deferred_runs_only_the_kinds_asked_and_what_their_finishers_queue_waits_for_its_kind() -> None:
    uow, rec = new_uow(), Recorder()
    numbers = rec.finisher("numbers")
    alerts = rec.finisher("alerts", then=("numbers", numbers))
    uow.defer("alerts", "a1", alerts)
    uow.defer("clock", "c1", rec.finisher("clock"))
    uow.defer("alerts", "a2", alerts)

    await uow.run_deferred(("alerts",))
    assert rec.calls == [("alerts", ["a1", "a2"])]
    uow.defer("alerts", "a3", alerts)

    await uow.run_deferred()
    assert rec.calls == [
        ("alerts", ["a1", "a2"]),
        ("alerts", ["a3"]),
        ("clock", ["c1"]),
        ("numbers", ["numbers(a1)", "numbers(a2)", "numbers(a3)"]),  # one call for the whole transaction
    ]
    assert uow.deferred == []


async def test_a_last_kind_runs_after_every_other_kind_even_one_first_queued_after_it() -> None:
    uow, rec = new_uow(), Recorder()
    numbers = rec.finisher("numbers")
    uow.defer("numbers", "n1", numbers, last=True)  # e.g. queued mid-lane by an early run of the alerts
    alerts = rec.finisher("alerts", then=("numbers", numbers))
    uow.defer("alerts", "a1", alerts)
    uow.defer("discharges", "d1", rec.finisher("discharges"))

    await uow.run_deferred()
    assert rec.calls == [
        ("alerts", ["a1"]),
        ("discharges", ["d1"]),
        ("numbers", ["n1", "numbers(a1)"]),
    ]


async def test_a_rolled_back_savepoint_queues_again_what_ran_inside_it_but_was_queued_before_it() -> None:
    uow, rec = new_uow(), Recorder()
    alerts = rec.finisher("alerts")
    uow.defer("alerts", "before-1", alerts)
    mark = uow.mark()  # the next event's savepoint starts here
    uow.defer("alerts", "inside-1", alerts)
    await uow.run_deferred(("alerts",))  # ran inside the savepoint: its writes go when it rolls back
    uow.defer("alerts", "inside-2", alerts)
    uow.memo["read"] = "stale"

    uow.rollback_to(mark)

    assert [item for _, _, item in uow.deferred] == ["before-1"]
    assert uow.memo == {}
    await uow.run_deferred()
    assert rec.calls == [("alerts", ["before-1", "inside-1"]), ("alerts", ["before-1"])]


async def test_work_run_before_the_savepoint_is_not_queued_again_by_its_rollback() -> None:
    uow, rec = new_uow(), Recorder()
    alerts = rec.finisher("alerts")
    uow.defer("alerts", "first", alerts)
    await uow.run_deferred(("alerts",))  # committed to the transaction before the savepoint
    mark = uow.mark()
    uow.defer("alerts", "inside", alerts)
    uow.rollback_to(mark)
    await uow.run_deferred()
    assert rec.calls == [("alerts", ["first"])]


async def test_read_for_lane_fetches_the_lanes_keys_once_and_a_key_outside_the_lane_alone() -> None:
    uow = new_uow()
    uow.events = [type("Event", (), {"subject": m})() for m in ("M2", "M1", "M2")]  # type: ignore[misc]
    fetched: list[list[str]] = []

    async def fetch(keys: list[str]) -> dict[str, list[str]]:
        fetched.append(keys)
        return {"M1": ["row-of-M1"]}

    def subjects(events: Any) -> set[str]:
        return {e.subject for e in events}

    assert await uow.read_for_lane("rows", "M1", subjects, fetch, list) == ["row-of-M1"]
    m2 = await uow.read_for_lane("rows", "M2", subjects, fetch, list)
    assert m2 == [] and fetched == [["M1", "M2"]]  # one read for the lane
    m2.append("written by this lane")  # entries missing from the table are fresh objects, kept as updated
    assert await uow.read_for_lane("rows", "M2", subjects, fetch, list) == ["written by this lane"]
    assert await uow.read_for_lane("rows", "M9", subjects, fetch, list) == []
    assert fetched == [["M1", "M2"], ["M9"]]
