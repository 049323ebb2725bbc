"""30-day readmission watch (HEDIS PCR; HEDIS TRC/FUH "count only the last discharge").

Semantics of the ``readmission_watch`` gap:

* opened at a qualifying inpatient discharge, window discharge day + 1 .. + 30;
* an unplanned inpatient admission (another encounter) whose local admission date is
  inside the window flags a readmission: the watch is **closed** with rule
  ``unplanned_readmission`` and the admission's event id as closing evidence. The
  readmission counts against the *last* qualifying discharge before it only;
* when the window passes without one, the watch is **closed** with rule
  ``no_readmission_30_days`` (by the overdue clock); it never becomes overdue;
* a late-arriving readmission inside the window still re-closes a watch closed as
  ``no_readmission_30_days`` (facts win over the clock).

A readmission (planned or not) also makes the earlier discharge's still-open follow-up
gaps not applicable (reason ``readmitted``): HEDIS TRC and FUH count the last discharge.
Discharges with a planned-readmission disposition (NUBC 81-95) open no watch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta

from .measures import MeasureConfig

UNPLANNED_READMISSION_RULE = "unplanned_readmission"
NO_READMISSION_RULE = "no_readmission_30_days"


@dataclass(frozen=True)
class PriorDischarge:
    """A known discharge of the member that a new admission may be a readmission after."""

    encounter_id: str
    discharged_at: datetime
    disposition: str


def index_discharge_for(
    admission_encounter_id: str, admitted_at: datetime, prior: Sequence[PriorDischarge], config: MeasureConfig
) -> PriorDischarge | None:
    """The last discharge (of another encounter) that ``admitted_at`` readmits within the window.

    The admission must come after the discharge instant, and its local admission date
    must be no later than the local discharge date + ``readmission_window_days``.
    """
    candidates = [
        d for d in prior
        if d.encounter_id != admission_encounter_id
        and d.discharged_at < admitted_at
        and admitted_at.date() <= d.discharged_at.date() + timedelta(days=config.readmission_window_days)
    ]
    if not candidates:
        return None
    return max(candidates, key=lambda d: (d.discharged_at, d.encounter_id))


def is_planned(index: PriorDischarge, config: MeasureConfig) -> bool:
    """PCR excludes planned readmissions; the index discharge's NUBC 81-95 disposition announces one."""
    return index.disposition in config.planned_readmission_dispositions


def readmission_window_end(discharged_at: datetime, config: MeasureConfig) -> date:
    """Last local date on which an admission is a 30-day readmission."""
    return discharged_at.date() + timedelta(days=config.readmission_window_days)
