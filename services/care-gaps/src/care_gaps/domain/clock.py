"""When a gap is overdue, and which clock says so.

A gap is overdue once its due date has passed in the facility's local calendar: at
midnight starting ``due_date + 1`` in the discharge's own UTC offset (``overdue_at``).

Two clocks can pass that instant (setting ``CLOCK``):

* ``event``: the per-tenant *event clock* is the latest ``time`` of any consumed event
  (capped at wall time + ``max_future_skew`` so one bad future-dated event cannot expire
  everything). During a replay it moves through history at replay speed, so gaps
  become overdue in the same order and at the same points as they did live;
* ``wall``: a background job compares with the wall clock every ``overdue_sweep_interval_s``;
* ``both`` (default): the event clock always applies; the wall clock applies only while
  the tenant is *live*, i.e. the last consumed event was at most ``replay_lag`` behind the
  wall time when it was consumed. During a replay of old events the wall clock pauses, so
  history is not flagged overdue before its closing evidence has been replayed; once live
  traffic resumes (or for a tenant that has never sent events) the wall clock applies.
"""

from __future__ import annotations

from datetime import date, datetime, time, timedelta, tzinfo
from typing import Literal

ClockMode = Literal["event", "wall", "both"]


def overdue_at(due_date: date, offset: tzinfo) -> datetime:
    """The instant the due date is over in the facility's offset (midnight starting the next day)."""
    return datetime.combine(due_date + timedelta(days=1), time(0), tzinfo=offset)


def advance_event_clock(current: datetime | None, event_time: datetime, wall_now: datetime,
                        max_future_skew: timedelta) -> datetime:
    """The event clock after seeing ``event_time``: the maximum so far, never beyond wall + skew."""
    candidate = min(event_time, wall_now + max_future_skew)
    return candidate if current is None or candidate > current else current


def is_live(event_time: datetime, consumed_at: datetime, replay_lag: timedelta) -> bool:
    """An event consumed within ``replay_lag`` of its real-world time is live traffic."""
    return consumed_at - event_time <= replay_lag


def wall_clock_applies(mode: ClockMode, tenant_live: bool | None) -> bool:
    """Whether the wall-clock sweep may flag a tenant's gaps (``None``: no event seen yet)."""
    if mode == "wall":
        return True
    if mode == "event":
        return False
    return tenant_live is None or tenant_live


def event_clock_applies(mode: ClockMode) -> bool:
    """Whether consumed events advance the overdue clock."""
    return mode in ("event", "both")
