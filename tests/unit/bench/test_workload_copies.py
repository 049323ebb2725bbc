"""The pipeline benchmark's workload copies: new ids and one era later each, so history grows forward."""

from __future__ import annotations

import json
from datetime import datetime, timedelta

from cth_shared.messaging.consumer import type_header
from cth_shared.producers.publish import record_headers
from cth_shared.testing import consumer_record

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
    copies = [json.loads(workload.copy()[0].value) for _ in range(3)]
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


def test_copies_carry_the_producer_toolkits_headers() -> None:
    """The bench sends what deployed producers send: every record with the toolkit's CloudEvent headers (the
    services parse by the ``ce_type`` hint), naming the copy's own id and type."""
    workload = _workload(365)
    workload.copy()
    sent = workload.copy()[0]
    value = json.loads(sent.value)
    assert (sent.event_id, sent.encounter_id) == (value["id"], value["data"]["encounter_id"]) == ("e1-c2", "V1-c2")
    assert dict(sent.headers) == {k: v.encode() for k, v in record_headers("e1-c2", "encounter.discharged").items()}
    assert type_header(consumer_record("encounters", 0, "M1", sent.value, sent.headers)) == "encounter.discharged"
