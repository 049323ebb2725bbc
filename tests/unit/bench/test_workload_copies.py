"""The pipeline benchmark's workload copies: new ids and one era later each, so history grows forward."""

from __future__ import annotations

import json
from datetime import datetime, timedelta

from bench.pipeline import Workload


def _discharge(event_id: str, encounter_id: str, at: str) -> dict[str, object]:
    return {"id": event_id, "time": at, "subject": "M1", "type": "encounter.discharged",
            "data": {"encounter_id": encounter_id, "member_id": "M1", "admitted_at": "2026-03-02T08:00:00-05:00",
                     "discharged_at": at, "disposition": "01"}}


def _workload(days: int) -> Workload:
    return Workload(reference=[], encounters=[_discharge("e1", "V1", "2026-03-06T14:30:00-05:00")],
                    adt_messages=1, unmatched=0, translate_s=0.1, members=1, days=days)


def test_each_copy_is_new_work_one_era_later() -> None:
    workload = _workload(365)
    assert workload.era == timedelta(weeks=58)  # 365 days + 5 weeks, rounded up to whole weeks
    copies = [json.loads(workload.copy()[0][1]) for _ in range(3)]
    assert [c["id"] for c in copies] == ["e1-c1", "e1-c2", "e1-c3"]
    assert [c["data"]["encounter_id"] for c in copies] == ["V1-c1", "V1-c2", "V1-c3"]
    first = datetime.fromisoformat(copies[0]["time"])
    assert first == datetime.fromisoformat("2026-03-06T14:30:00-05:00")
    for k, copy in enumerate(copies):
        moved = first + workload.era * k
        assert datetime.fromisoformat(copy["time"]) == moved
        assert datetime.fromisoformat(copy["data"]["discharged_at"]) == moved
        assert datetime.fromisoformat(copy["data"]["admitted_at"]).weekday() == 0  # weekdays stay
        assert datetime.fromisoformat(copy["data"]["discharged_at"]).utcoffset() == timedelta(hours=-5)
    # the original slice is never changed by copying
    assert workload.encounters[0]["time"] == "2026-03-06T14:30:00-05:00"


def test_eras_do_not_overlap_the_readmission_window() -> None:
    workload = _workload(60)
    assert workload.era >= timedelta(days=60 + 30)
    assert workload.era.days % 7 == 0
