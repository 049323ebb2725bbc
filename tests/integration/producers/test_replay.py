"""Replaying a synthetic timeline into the real broker: directly, and through an MLLP listener."""

from __future__ import annotations

from collections import Counter
from itertools import pairwise

import pytest
from cth_shared.contracts import CloudEvent, parse_event
from cth_shared.contracts.events import MemberEnrolled
from cth_shared.embedded import free_port
from cth_shared.producers.hl7_adt import AdtEvent, AdtTranslator, MemberIndex, UnmatchedPatient
from cth_shared.producers.replay import MllpUnavailable, open_publisher, replay, start_listener
from cth_shared.producers.synthetic import Population, PopulationConfig
from cth_shared.settings import StackSettings
from producer_io import read_topic

pytestmark = pytest.mark.integration

CONFIG = PopulationConfig(members=400, seed=11, days=20, lookback_days=20)


def expected_outcome(population: Population) -> tuple[Counter[str], int, int]:
    """What the timeline should produce, computed independently of the replay engine."""
    index = MemberIndex()
    translator = AdtTranslator(index, population.adt_settings())
    events: Counter[str] = Counter()
    unmatched = hl7 = 0
    for item in population.timeline():
        if isinstance(item.payload, CloudEvent):
            events[item.payload.type] += 1
            if isinstance(item.payload.data, MemberEnrolled):
                index.add(item.payload.data)
        else:
            hl7 += 1
            result = translator.translate(item.payload)
            if isinstance(result, UnmatchedPatient):
                unmatched += 1
            else:
                assert isinstance(result, AdtEvent)
                events[result.event.type] += 1
    return events, unmatched, hl7


def settings_for(isolated) -> StackSettings:
    return StackSettings(kafka_bootstrap_servers=isolated.kafka_bootstrap_servers, topic_prefix=isolated.topic_prefix)


async def test_direct_replay_publishes_every_event_and_translated_adt(isolated):
    population = Population(CONFIG)
    expected, unmatched, hl7 = expected_outcome(population)
    progress: list[int] = []
    async with open_publisher(settings_for(isolated)) as publisher:
        summary = await replay(
            population.timeline(),
            publisher=publisher,
            adt_settings=population.adt_settings(),
            on_progress=lambda s: progress.append(s.items),
        )
    assert summary.ok, summary.render()
    assert dict(summary.events) == dict(expected)
    assert summary.unmatched == unmatched and sum(summary.hl7.values()) == hl7
    assert summary.acks["AA"] == hl7
    assert progress and progress[-1] == summary.items
    encounters = sum(n for kind, n in expected.items() if kind.startswith("encounter."))
    records = await read_topic(isolated, "encounters", expected=encounters)
    assert Counter(parse_event(r.value).type for r in records) == Counter(
        {k: v for k, v in expected.items() if k.startswith("encounter.")}
    )


async def test_replay_through_an_mllp_listener_acks_every_message(isolated):
    population = Population(CONFIG)
    expected, unmatched, hl7 = expected_outcome(population)
    async with open_publisher(settings_for(isolated)) as publisher:
        listener = await start_listener(publisher, adt_settings=population.adt_settings())
        try:
            summary = await replay(
                population.timeline(),
                publisher=publisher,
                mllp=("127.0.0.1", listener.port),
                index=listener.translator.index,
                mllp_connections=4,
            )
        finally:
            await listener.stop()
    assert summary.ok, summary.render()
    assert summary.acks == Counter({"AA": hl7})
    assert summary.unmatched == unmatched == listener.stats.unmatched
    encounters = sum(n for kind, n in expected.items() if kind.startswith("encounter."))
    assert listener.stats.accepted == encounters
    records = await read_topic(isolated, "encounters", expected=encounters)
    events = [parse_event(r.value) for r in records]
    assert len({e.id for e in events}) == encounters
    # per-member order survives the concurrent connections: each member's events are in time order
    by_member: dict[str, list] = {}
    for record, event in zip(records, events, strict=True):
        by_member.setdefault((record.partition, event.subject), []).append(event.time)
    assert all(times == sorted(times) for times in by_member.values())


async def test_unreachable_listener_is_reported_up_front(isolated):
    population = Population(PopulationConfig(members=20, seed=1, days=2, lookback_days=1))
    async with open_publisher(settings_for(isolated)) as publisher:
        with pytest.raises(MllpUnavailable):
            await replay(population.timeline(), publisher=publisher, mllp=("127.0.0.1", free_port()))


class SimulatedClock:
    """A clock that moves only when the replay sleeps (or when ``drift`` says it is slow)."""

    def __init__(self, drift: float = 0.0) -> None:
        self.now = 0.0
        self.drift = drift
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        self.now += self.drift
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


async def test_accelerated_replay_scales_the_gaps_and_leaves_history_unpaced(isolated):
    population = Population(PopulationConfig(members=300, seed=4, days=3, lookback_days=3))
    live_start = population._start
    live = [item.at for item in population.timeline() if item.at >= live_start]
    assert len(live) > 5
    clock = SimulatedClock()
    async with open_publisher(settings_for(isolated)) as publisher:
        summary = await replay(
            population.timeline(),
            publisher=publisher,
            adt_settings=population.adt_settings(),
            speed=600.0,
            paced_from=live_start,
            clock=clock,
            sleep=clock.sleep,
        )
    assert summary.ok, summary.render()
    # Only live items wait, one gap at a time, each gap divided by the speed.
    gaps = [(b - a).total_seconds() / 600.0 for a, b in pairwise(live) if b > a]
    assert clock.sleeps == pytest.approx(gaps)
    assert clock.now == pytest.approx((live[-1] - live[0]).total_seconds() / 600.0)


async def test_a_replay_that_falls_behind_never_sleeps_to_catch_up(isolated):
    population = Population(PopulationConfig(members=100, seed=4, days=2, lookback_days=1))
    clock = SimulatedClock(drift=3600.0)  # every look at the clock, an hour has gone by
    async with open_publisher(settings_for(isolated)) as publisher:
        summary = await replay(
            population.timeline(),
            publisher=publisher,
            adt_settings=population.adt_settings(),
            speed=1.0,
            clock=clock,
            sleep=clock.sleep,
        )
    assert summary.ok and summary.items > 10
    assert clock.sleeps == [] and summary.lag > 0


async def test_mllp_replay_counts_ae_naks_when_the_listener_cannot_reach_the_broker(isolated):
    population = Population(PopulationConfig(members=300, seed=8, days=5, lookback_days=1))
    _, unmatched, hl7 = expected_outcome(population)
    assert hl7 > unmatched
    settings = settings_for(isolated)
    async with open_publisher(settings) as publisher, open_publisher(settings, ack_timeout=1) as doomed:
        await doomed._broker.stop()  # the listener's connection to the broker is gone
        listener = await start_listener(doomed, adt_settings=population.adt_settings())
        try:
            summary = await replay(
                population.timeline(),
                publisher=publisher,
                mllp=("127.0.0.1", listener.port),
                index=listener.translator.index,
                mllp_connections=3,
            )
        finally:
            await listener.stop()
    # Every message the listener could not hand to the broker is negatively acknowledged.
    assert summary.acks == Counter({"AE": hl7 - unmatched, "AA": unmatched})
    assert summary.errors == hl7 - unmatched and not summary.ok
    assert all(": AE " in text for text in summary.error_samples)
    assert summary.failed == 0 and summary.events["member.enrolled"] == 300
