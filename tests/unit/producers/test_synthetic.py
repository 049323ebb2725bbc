"""The synthetic population: deterministic by seed, time ordered, streamed, parseable ADT."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from collections import Counter
from itertools import islice
from pathlib import Path

import pytest
from cth_shared.contracts import CloudEvent, parse_event
from cth_shared.contracts.events import MemberEnrolled
from cth_shared.producers.hl7_adt import AdtEvent, AdtTranslator, MemberIndex, UnmatchedPatient
from cth_shared.producers.synthetic import Population, PopulationConfig


def digest(config: PopulationConfig, limit: int | None = None) -> str:
    sha = hashlib.sha256()
    for item in islice(Population(config).timeline(), limit):
        sha.update(item.at.isoformat().encode())
        payload = item.payload
        sha.update(payload.to_json_bytes() if isinstance(payload, CloudEvent) else payload.encode())
    return sha.hexdigest()


def test_same_seed_gives_identical_bytes():
    config = PopulationConfig(members=300, seed=42, days=20, lookback_days=60)
    assert digest(config) == digest(config)


def test_different_seed_gives_different_bytes():
    assert digest(PopulationConfig(members=300, seed=1, days=10, lookback_days=30)) != digest(
        PopulationConfig(members=300, seed=2, days=10, lookback_days=30)
    )


def test_timeline_is_time_ordered_and_covers_every_kind():
    population = Population(PopulationConfig(members=3000, seed=5, days=30, lookback_days=90))
    index = MemberIndex()
    translator = AdtTranslator(index, population.adt_settings())
    kinds: Counter[str] = Counter()
    outcomes: Counter[str] = Counter()
    previous = None
    for item in population.timeline():
        assert previous is None or item.at >= previous
        previous = item.at
        if item.kind == "event":
            kinds[item.payload.type] += 1
            if isinstance(item.payload.data, MemberEnrolled):
                index.add(item.payload.data)
        else:
            result = translator.translate(item.payload)  # every generated message parses
            if isinstance(result, AdtEvent):
                outcomes[f"{result.trigger}:{result.event.type}"] += 1
                data = result.event.data
                if result.event.type == "encounter.discharged":
                    outcomes[f"disposition:{data.disposition}"] += 1
                outcomes[f"class:{data.patient_class}"] += 1
            else:
                assert isinstance(result, UnmatchedPatient)
                outcomes["unmatched"] += 1
    assert kinds["member.enrolled"] == 3000
    assert kinds["provider.upserted"] == len(population.providers)
    for kind in ("claim.adjudicated", "virtual_visit.completed", "referral.requested"):
        assert kinds[kind] > 0, kind
    for key in ("A01:encounter.admitted", "A03:encounter.discharged", "A04:encounter.admitted",
                "A06:encounter.transferred", "class:emergency", "class:observation", "class:inpatient",
                "disposition:01"):
        assert outcomes[key] > 0, key
    dispositions = {k: v for k, v in outcomes.items() if k.startswith("disposition:")}
    assert max(dispositions, key=dispositions.get) == "disposition:01"  # mostly home


def test_population_has_the_expected_provider_mix():
    population = Population(PopulationConfig(members=1000))
    taxonomies = Counter(p.taxonomy for p in population.providers)
    for taxonomy in ("207Q00000X", "207R00000X", "251E00000X", "314000000X", "283X00000X", "251G00000X"):
        assert taxonomies[taxonomy] > 0, taxonomy
    assert any(not p.networks for p in population.providers)  # out-of-network providers exist
    assert population.v1c_group.role == "v1c"
    virtual_first = [population.enrollment(population.member(i)) for i in range(200)]
    assert any(m.virtual_first and m.v1c_group_npi == population.v1c_group.npi for m in virtual_first)
    event = next(population.timeline()).payload
    assert parse_event(event.to_json_bytes()) == event


_MEASURE = """
import sys
from cth_shared.producers.synthetic import Population, PopulationConfig

def kib(field):
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1])

population = Population(PopulationConfig(members=2000, seed=9, days=10, lookback_days=int(sys.argv[1])))
before = kib("VmRSS:")
count = sum(1 for _ in population.timeline())
print(count, kib("VmHWM:") - before)
"""


def _peak_growth(lookback_days: int) -> tuple[int, int]:
    out = subprocess.run(
        [sys.executable, "-c", _MEASURE, str(lookback_days)], capture_output=True, text=True, check=True, timeout=120
    ).stdout.split()
    return int(out[0]), int(out[1])


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads peak RSS from /proc")
def test_generating_ten_times_more_items_does_not_hold_them_in_memory():
    # Same population, a twelve-times-longer history: ~12k vs ~100k items. Items are yielded as
    # each day is generated, so peak memory growth stays flat (one day's items, open episodes
    # and pydantic-core's bounded string cache), while holding 100k events would cost >150 MiB.
    small_count, small_growth = _peak_growth(200)
    large_count, large_growth = _peak_growth(2400)
    assert small_count > 10_000 and large_count > 8 * small_count
    assert large_growth < 2 * small_growth + 8 * 1024, (small_growth, large_growth)  # KiB
