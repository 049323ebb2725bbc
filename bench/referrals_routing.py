"""Referral routing throughput with a 100,000-provider directory (issue 6).

Measures the routing step the referrals service runs per referral — candidate lookup in the
in-memory index (service x network x geo grid), capacity filter against reservations, weighted
scoring and ranking with alternatives — on a deterministic synthetic directory spread over a
Midwest-sized region. Reservations accumulate as referrals route (as open referrals do), so
capacity runs out in dense spots as it would in production.

Run: ``python -m bench.referrals_routing [--providers 100000] [--referrals 20000] [--json]``.
Target: >= 2,000 referrals/s on one core.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from collections import Counter

from referrals.domain.directory_index import ProviderIndex
from referrals.domain.model import MemberCoverage, ProviderProfile, Routed
from referrals.domain.routing import RoutingPolicy, route

SERVICES = ("home_health", "snf", "inpatient_rehab", "hospice", "primary_care", "cardiology", "pulmonology",
            "endocrinology", "nephrology", "orthopedics", "behavioral_health", "physical_therapy", "oncology",
            "neurology")
NETWORKS = ("NET-A", "NET-B", "NET-C")
LAT_RANGE = (36.0, 43.0)  # roughly Illinois + Indiana + Missouri: ~780 km x ~850 km
LON_RANGE = (-95.0, -85.0)
TARGET_PER_S = 2000


def synthetic_directory(count: int, seed: int = 2026) -> list[ProviderProfile]:
    """``count`` providers: 1-2 services, 1-3 networks, 10% virtual-capable, clustered around towns."""
    rng = random.Random(seed)
    towns = [(rng.uniform(*LAT_RANGE), rng.uniform(*LON_RANGE)) for _ in range(400)]
    providers = []
    for i in range(count):
        town_lat, town_lon = rng.choice(towns)
        providers.append(ProviderProfile(
            npi=f"{1_000_000_000 + i}", tin=f"{200_000_000 + i // 8}",
            services=frozenset(rng.sample(SERVICES, rng.choice((1, 1, 2)))),
            networks={n: ("preferred" if rng.random() < 0.4 else "standard")
                      for n in rng.sample(NETWORKS, rng.randint(1, 3))},
            latitude=town_lat + rng.gauss(0, 0.15), longitude=town_lon + rng.gauss(0, 0.15),
            accepting=rng.random() > 0.1, capacity=rng.randint(0, 30), quality_score=round(rng.uniform(1, 5), 1),
            cost_index=round(rng.uniform(0.6, 1.8), 2), virtual_capable=rng.random() < 0.1,
        ))
    return providers


def synthetic_referrals(count: int, seed: int = 7) -> list[tuple[str, MemberCoverage]]:
    """Referrals weighted towards post-acute discharges (as the service sees them)."""
    rng = random.Random(seed)
    weights = [6, 3, 1, 1, 2, 2, 1, 1, 1, 1, 2, 1, 1, 1]
    referrals = []
    for i in range(count):
        member = MemberCoverage(f"M{i:07d}", rng.choice(NETWORKS), rng.uniform(*LAT_RANGE), rng.uniform(*LON_RANGE))
        referrals.append((rng.choices(SERVICES, weights)[0], member))
    return referrals


def run(providers: int, referrals: int) -> dict[str, object]:
    directory = synthetic_directory(providers)
    started = time.perf_counter()
    index = ProviderIndex(cell_degrees=0.25)
    for profile in directory:
        index.upsert(profile)
    build_s = time.perf_counter() - started
    policy = RoutingPolicy()
    work = synthetic_referrals(referrals)
    reserved: Counter[str] = Counter()
    outcomes: Counter[str] = Counter()
    candidate_counts: list[int] = []
    started = time.perf_counter()
    for service, member in work:
        candidates, counts = index.lookup(service, member.network_id, member.latitude, member.longitude,
                                          policy.distance_limit_km(service), policy.allows_virtual(service))
        candidate_counts.append(len(candidates))
        outcome = route(service, member, candidates, policy, reserved, narrowed=counts)
        if isinstance(outcome, Routed):
            reserved[outcome.chosen.npi] += 1
            outcomes["routed"] += 1
        else:
            outcomes[outcome.reason] += 1
    elapsed = time.perf_counter() - started
    per_s = referrals / elapsed
    return {
        "benchmark": "referrals_routing",
        "providers": providers,
        "referrals": referrals,
        "index_build_s": round(build_s, 2),
        "seconds": round(elapsed, 3),
        "referrals_per_s": round(per_s),
        "target_per_s": TARGET_PER_S,
        "meets_target": per_s >= TARGET_PER_S,
        "candidates_per_lookup_median": statistics.median(candidate_counts),
        "candidates_per_lookup_p99": sorted(candidate_counts)[int(len(candidate_counts) * 0.99) - 1],
        "outcomes": dict(outcomes),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--providers", type=int, default=100_000)
    parser.add_argument("--referrals", type=int, default=20_000)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    result = run(args.providers, args.referrals)
    if args.json:
        print(json.dumps(result))
        return
    for key, value in result.items():
        print(f"{key:>32}: {value}")


if __name__ == "__main__":
    main()
