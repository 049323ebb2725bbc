"""The demo scenario, smaller, through the four service processes on the test session's stack.

One scenario run (module fixture) of a seeded synthetic payer: directory and roster as events,
claims history by the attribution bulk backfill, then the month replayed as fast as possible
with ADT over MLLP into the gateway, alerts to a signed webhook receiver. The expectations are
computed from the generated timeline with the producer toolkit only (roster, HL7 translation,
claim lines), never from what the services stored:

* an enrolled member with a selected PCP who is discharged home from an inpatient stay gets a
  discharge alert to that PCP at the webhook, and a TRC patient-engagement gap for the stay;
* when that member's PCP follow-up (an office/TCM claim two to twenty-nine days after the
  discharge) is in the month and no admission follows in the window, the engagement gap is
  closed;
* the trace of one discharge runs from the MLLP gateway through referrals, care-gaps and
  notifications (including the care-gap alert and the webhook delivery) with the right
  parent -> child edges.
"""

from __future__ import annotations

import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from cth_shared.contracts import CloudEvent
from cth_shared.contracts.events import (
    ClaimAdjudicated,
    EncounterAdmitted,
    EncounterCancelled,
    EncounterDischarged,
    MemberEnrolled,
)
from cth_shared.demo import ScenarioOptions, ScenarioResult, run_scenario
from cth_shared.orchestrate import Stack
from cth_shared.producers.hl7_adt import AdtEvent, AdtTranslator, Hl7Error, MemberIndex
from cth_shared.producers.synthetic import Population, PopulationConfig
from cth_shared.testing.infra import Infra, isolated_env
from cth_shared.traces import SpanRecord, edges, read_spans, traces_matching

pytestmark = pytest.mark.e2e

OPTIONS = ScenarioOptions(members=600, seed=1, days=30, speed=None, settle_timeout=150)
FOLLOW_UP_CODES = {"99495", "99496", "99214"}


@dataclass
class Discharge:
    member_id: str
    encounter_id: str
    event_id: str
    discharged_on: date
    selected_pcp: str | None
    follow_up_on: date | None = None


def expected_discharges(options: ScenarioOptions) -> dict[str, Discharge]:
    """Inpatient discharges home of members enrolled before the month, from the timeline alone."""
    population = Population(PopulationConfig(members=options.members, seed=options.seed, days=options.days))
    start = datetime.combine(population.config.start, datetime.min.time(), tzinfo=UTC)
    index = MemberIndex()
    translator = AdtTranslator(index, population.adt_settings())
    roster: dict[str, MemberEnrolled] = {}
    discharges: dict[str, Discharge] = {}
    cancelled: set[str] = set()
    follow_ups: list[tuple[str, date]] = []
    admissions: list[tuple[str, date]] = []
    for item in population.timeline():
        payload = item.payload
        if isinstance(payload, CloudEvent):
            data = payload.data
            if isinstance(data, MemberEnrolled):
                index.add(data)
                if item.at < start:
                    roster[data.member_id] = data
            elif isinstance(data, ClaimAdjudicated) and item.at >= start and data.status == "paid":
                follow_ups += [(data.member_id, line.service_from) for line in data.lines
                               if line.procedure_code in FOLLOW_UP_CODES]
            continue
        try:
            result = translator.translate(payload)
        except Hl7Error:
            continue
        if not isinstance(result, AdtEvent):
            continue
        event = result.event
        if isinstance(event.data, EncounterCancelled):
            cancelled.add(event.data.encounter_id)
        elif isinstance(event.data, EncounterAdmitted):
            admissions.append((event.data.member_id, event.data.admitted_at.date()))
        elif (isinstance(event.data, EncounterDischarged) and event.data.patient_class == "inpatient"
              and event.data.disposition == "01" and event.data.member_id in roster
              and event.data.trigger == "A03"):
            member = roster[event.data.member_id]
            discharges.setdefault(event.data.encounter_id, Discharge(
                member_id=member.member_id, encounter_id=event.data.encounter_id, event_id=event.id,
                discharged_on=event.data.discharged_at.date(), selected_pcp=member.selected_pcp_npi,
            ))
    wanted = {k: v for k, v in discharges.items() if k not in cancelled}
    for discharge in wanted.values():
        first, last = discharge.discharged_on + timedelta(days=2), discharge.discharged_on + timedelta(days=29)
        dates = sorted(d for m, d in follow_ups if m == discharge.member_id and first <= d <= last)
        # A later admission within the window (readmission, ED visit) can make the gap not applicable
        # depending on which topic's event is applied first: only clean follow-ups are expected to close.
        readmitted = any(m == discharge.member_id and discharge.discharged_on <= d <= last + timedelta(days=1)
                         for m, d in admissions)
        discharge.follow_up_on = dates[0] if dates and not readmitted else None
    return wanted


@pytest.fixture(scope="module")
async def scenario(infra: Infra) -> AsyncIterator[tuple[ScenarioResult, str, dict[str, Discharge]]]:
    expected = expected_discharges(OPTIONS)
    async with isolated_env(infra) as env:
        stack = Stack(env.kafka_bootstrap_servers, env.database_url, env.topic_prefix,
                      env=env.service_env())
        run_dir = Path(tempfile.mkdtemp(prefix="cth-e2e-"))
        result = await run_scenario(stack, run_dir, OPTIONS)
        yield result, env.database_url, expected


async def test_discharged_home_member_alerts_the_pcp_opens_trc_and_follow_up_closes_it(scenario: Any) -> None:
    result, database_url, expected = scenario
    with_pcp = [d for d in expected.values() if d.selected_pcp]
    assert with_pcp, "the seeded timeline has no inpatient discharge home of a member with a selected PCP"
    received = {(a.member_id, a.encounter_id, a.kind, a.recipient_role, a.recipient_id) for a in result.alerts}
    for discharge in with_pcp:
        key = (discharge.member_id, discharge.encounter_id, "discharge", "pcp", discharge.selected_pcp)
        assert key in received, f"no discharge alert to the PCP at the webhook for {discharge}"

    conn = await asyncpg.connect(database_url)
    try:
        gaps = {(r["encounter_id"], r["measure"]): r["status"] for r in await conn.fetch(
            "SELECT encounter_id, measure, status FROM care_gaps.gaps WHERE encounter_id = ANY($1::text[])",
            list(expected))}
    finally:
        await conn.close()
    for discharge in expected.values():
        assert (discharge.encounter_id, "trc_patient_engagement") in gaps, f"no TRC gap opened for {discharge}"
    followed = [d for d in expected.values() if d.follow_up_on is not None]
    assert followed, "the seeded timeline has no PCP follow-up after a discharge home"
    for discharge in followed:
        status = gaps[(discharge.encounter_id, "trc_patient_engagement")]
        assert status == "closed", f"TRC engagement gap is {status} despite the follow-up of {discharge}"
    assert result.bad_signatures == 0
    assert not result.replay.failed


def _trace_of(spans: list[SpanRecord], event_id: str) -> list[SpanRecord]:
    found = traces_matching(spans, event_id=event_id)
    assert len(found) == 1, f"expected one trace for discharge event {event_id}, found {len(found)}"
    return next(iter(found.values()))


async def test_the_trace_of_a_discharge_spans_every_service_with_parent_child_edges(scenario: Any) -> None:
    result, database_url, expected = scenario
    spans = list(read_spans([result.spans_dir]))
    conn = await asyncpg.connect(database_url)
    try:
        # a discharge whose stay opened a gap and whose alert was delivered by webhook
        candidates = {r["encounter_id"] for r in await conn.fetch(
            "SELECT DISTINCT g.encounter_id FROM care_gaps.gaps g JOIN notifications.notifications n"
            " ON n.encounter_id = g.encounter_id AND n.kind = 'discharge' JOIN notifications.deliveries d"
            " ON d.notification_id = n.notification_id AND d.status = 'delivered'"
            " WHERE g.encounter_id = ANY($1::text[])", list(expected))}
    finally:
        await conn.close()
    assert candidates, "no discharge with both a gap and a delivered alert"
    discharge = expected[sorted(candidates)[0]]
    trace = _trace_of(spans, discharge.event_id)
    by_id = {s.span_id: s for s in trace}
    roots = [s for s in trace if s.parent_id not in by_id]
    assert [(r.service, r.name) for r in roots] == [("mllp-gateway", "mllp accept encounter.discharged")]
    assert {"mllp-gateway", "referrals", "care-gaps", "notifications"} <= {s.service for s in trace}
    assert {("mllp-gateway", "referrals"), ("mllp-gateway", "care-gaps"), ("mllp-gateway", "notifications"),
            ("care-gaps", "notifications")} <= edges(trace)

    def ancestors(span: SpanRecord) -> list[str]:
        chain = []
        while span.parent_id in by_id:
            span = by_id[span.parent_id]
            chain.append(f"{span.service}:{span.name}")
        return chain

    deliveries = [s for s in trace if s.name == "notifications.deliver"]
    assert deliveries, "the webhook delivery did not continue the discharge's trace"
    assert any("notifications:notifications handle encounter.discharged" in ancestors(s) for s in deliveries)
    gap_alerts = [s for s in trace if s.name == "notifications handle care_gap.opened"]
    assert gap_alerts and all("care-gaps:care-gaps handle encounter.discharged" in ancestors(s) for s in gap_alerts)
