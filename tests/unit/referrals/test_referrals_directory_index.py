"""The in-memory candidate index gives route() the same answer as a full directory scan; the cache
behind it holds every NPI's newest record."""

from __future__ import annotations

import random
from dataclasses import replace
from datetime import UTC, datetime, timedelta

from referrals.directory import DirectoryCache
from referrals.domain.directory_index import ProviderIndex
from referrals.domain.model import MemberCoverage, ProviderProfile, Routed, Unroutable
from referrals.domain.routing import RoutingPolicy, route

SERVICES = ("home_health", "snf", "hospice", "behavioral_health", "cardiology")
NETWORKS = ("NET-A", "NET-B")


def synthetic_directory(count: int, seed: int = 7) -> list[ProviderProfile]:
    rng = random.Random(seed)
    providers = []
    for i in range(count):
        providers.append(ProviderProfile(
            npi=f"{1_000_000_000 + i}", tin=f"{100_000_000 + i // 5}",
            services=frozenset(rng.sample(SERVICES, rng.randint(1, 2))),
            networks={n: rng.choice(("preferred", "standard")) for n in rng.sample(NETWORKS, rng.randint(1, 2))},
            latitude=rng.uniform(37.0, 42.0), longitude=rng.uniform(-91.0, -87.5),
            accepting=rng.random() > 0.1, capacity=rng.randint(0, 20), quality_score=round(rng.uniform(1, 5), 1),
            cost_index=round(rng.uniform(0.6, 1.6), 2), virtual_capable=rng.random() < 0.1,
        ))
    return providers


def test_indexed_lookup_routes_exactly_like_a_full_scan() -> None:
    directory = synthetic_directory(3000)
    index = ProviderIndex(cell_degrees=0.25)
    for provider in directory:
        index.upsert(provider)
    policy = RoutingPolicy()
    rng = random.Random(11)
    for _ in range(200):
        member = MemberCoverage("M", rng.choice(NETWORKS), rng.uniform(37.0, 42.0), rng.uniform(-91.0, -87.5))
        service = rng.choice(SERVICES)
        candidates, counts = index.lookup(service, member.network_id, member.latitude, member.longitude,
                                          policy.distance_limit_km(service), policy.allows_virtual(service))
        assert len(candidates) < len(directory) / 4, "the index must not hand back the whole directory"
        assert route(service, member, candidates, policy, narrowed=counts) == route(service, member, directory, policy)


def test_an_upsert_replaces_the_previous_record_and_deactivation_removes_it() -> None:
    index = ProviderIndex()
    provider = synthetic_directory(1)[0]
    service = next(iter(provider.services))
    network = next(iter(provider.networks))
    index.upsert(provider)
    moved = replace(provider, latitude=provider.latitude + 2.0)
    index.upsert(moved)

    near_old, _ = index.lookup(service, network, provider.latitude, provider.longitude, 10, False)
    near_new, _ = index.lookup(service, network, moved.latitude, moved.longitude, 10, False)
    assert near_old == [] and near_new == [moved]

    index.upsert(replace(moved, active=False))
    candidates, counts = index.lookup(service, network, moved.latitude, moved.longitude, 10, False)
    assert candidates == [] and counts.offering_service == 0 and len(index) == 0


def test_lookup_counts_explain_an_empty_answer() -> None:
    index = ProviderIndex()
    index.upsert(ProviderProfile(npi="1000000001", tin="1", services=frozenset({"snf"}),
                                 networks={"NET-A": "preferred"}, latitude=40.0, longitude=-89.0, capacity=5))
    member = MemberCoverage("M", "NET-B", 40.0, -89.0)

    candidates, counts = index.lookup("snf", "NET-B", 40.0, -89.0, 50, False)

    assert candidates == []
    outcome = route("snf", member, candidates, RoutingPolicy(), narrowed=counts)
    assert isinstance(outcome, Unroutable) and outcome.reason == "none_in_network"
    far, far_counts = index.lookup("snf", "NET-A", 44.0, -89.0, 50, False)
    far_outcome = route("snf", replace(member, network_id="NET-A", latitude=44.0), far, RoutingPolicy(),
                        narrowed=far_counts)
    assert isinstance(far_outcome, Unroutable) and far_outcome.reason == "none_within_distance"


def test_virtual_capable_providers_come_back_from_anywhere_only_when_asked() -> None:
    index = ProviderIndex()
    remote = ProviderProfile(npi="1000000001", tin="1", services=frozenset({"behavioral_health"}),
                             networks={"NET-A": "preferred"}, latitude=30.0, longitude=-100.0, capacity=5,
                             virtual_capable=True)
    index.upsert(remote)

    assert index.lookup("behavioral_health", "NET-A", 40.0, -89.0, 60, include_virtual=False)[0] == []
    found, _ = index.lookup("behavioral_health", "NET-A", 40.0, -89.0, 60, include_virtual=True)
    assert found == [remote]
    outcome = route("behavioral_health", MemberCoverage("M", "NET-A", 40.0, -89.0), found, RoutingPolicy())
    assert isinstance(outcome, Routed) and outcome.chosen.virtual


def test_only_the_kept_ranks_are_scored_in_full_yet_every_policy_ranks_like_a_full_scan() -> None:
    # route() skips the full score of providers that cannot reach the kept ranks and the index
    # skips grid cells wholly out of reach: neither may change a ranking, a count or a reason.
    directory = synthetic_directory(1000, seed=3)
    index = ProviderIndex(cell_degrees=0.25)
    for provider in directory:
        index.upsert(provider)
    reserved = {p.npi: 3 for p in directory[::4]}
    policies = (
        RoutingPolicy(max_alternatives=0),
        RoutingPolicy(max_alternatives=40, virtual_distance_score=1.0),
        RoutingPolicy(weights={"distance": 1.0, "capacity": 0.5}, capacity_saturation=1),
        RoutingPolicy(weights={"quality": 1.0}, distance_limits_km={"snf": 5.0, "home_health": 300.0}),
    )
    rng = random.Random(5)
    for policy in policies:
        for _ in range(25):
            member = MemberCoverage("M", rng.choice(NETWORKS), rng.uniform(37.0, 42.0), rng.uniform(-91.0, -87.5))
            service = rng.choice(SERVICES)
            candidates, counts = index.lookup(service, member.network_id, member.latitude, member.longitude,
                                              policy.distance_limit_km(service), policy.allows_virtual(service))
            expected = route(service, member, directory, policy, reserved)
            assert route(service, member, candidates, policy, reserved, narrowed=counts) == expected
            assert route(service, member, iter(directory), policy, reserved) == expected


def test_the_directory_cache_holds_each_npis_newest_record_inactive_ones_too() -> None:
    cache = DirectoryCache(cell_degrees=0.25)
    provider = synthetic_directory(1)[0]
    t0 = datetime(2026, 3, 1, tzinfo=UTC)
    cache.apply(provider, t0)
    closed = replace(provider, active=False)
    cache.apply(closed, t0 + timedelta(hours=1))
    cache.apply(replace(provider, capacity=99), t0 - timedelta(hours=1))  # older record: ignored
    # A facility that closed is still the facility an encounter happened at (care evidence), but
    # no longer a routing candidate.
    assert cache.record(provider.npi) == closed
    assert cache.index.get(provider.npi) is None
    assert cache.record("1999999999") is None  # not held here: the caller reads the table
