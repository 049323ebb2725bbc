"""Ranking and filtering rules of referral routing, with plain values."""

from __future__ import annotations

from dataclasses import replace

from referrals.domain.model import MemberCoverage, ProviderProfile, Routed, StageCounts, Unroutable
from referrals.domain.routing import RoutingPolicy, route

# Springfield, IL; 0.01 degree of latitude is about 1.1 km.
HOME_LAT, HOME_LON = 39.80, -89.65
MEMBER = MemberCoverage(member_id="M1", network_id="NET-A", latitude=HOME_LAT, longitude=HOME_LON)
POLICY = RoutingPolicy()


def agency(npi: str, **overrides: object) -> ProviderProfile:
    base = ProviderProfile(
        npi=npi, tin="222333444", services=frozenset({"home_health"}), networks={"NET-A": "preferred"},
        latitude=HOME_LAT + 0.02, longitude=HOME_LON, accepting=True, capacity=10, quality_score=4.0,
        cost_index=1.0, virtual_capable=False,
    )
    return replace(base, **overrides)  # type: ignore[arg-type]


def routed(outcome: object) -> Routed:
    assert isinstance(outcome, Routed), outcome
    return outcome


def test_preferred_tier_beats_higher_quality_when_the_tier_weight_exceeds_the_quality_gap() -> None:
    preferred_low_quality = agency("1000000001", quality_score=2.0)
    standard_top_quality = agency("1000000002", quality_score=5.0, networks={"NET-A": "standard"})

    outcome = routed(route("home_health", MEMBER, [standard_top_quality, preferred_low_quality], POLICY))

    assert outcome.chosen.npi == "1000000001"
    assert outcome.chosen.components["tier"] == 0.40
    assert [a.npi for a in outcome.alternatives] == ["1000000002"]
    assert outcome.alternatives[0].components["tier"] == 0.0


def test_quality_beats_tier_when_the_weights_make_the_quality_gap_larger_than_the_tier_weight() -> None:
    policy = RoutingPolicy(weights={"tier": 0.1, "quality": 0.6, "cost": 0.1, "distance": 0.1, "capacity": 0.1})
    preferred_low_quality = agency("1000000001", quality_score=2.0)
    standard_top_quality = agency("1000000002", quality_score=5.0, networks={"NET-A": "standard"})

    outcome = routed(route("home_health", MEMBER, [preferred_low_quality, standard_top_quality], policy))

    assert outcome.chosen.npi == "1000000002"


def test_score_is_the_sum_of_its_explained_components() -> None:
    outcome = routed(route("home_health", MEMBER, [agency("1000000001", quality_score=4.5, cost_index=0.9)], POLICY))

    chosen = outcome.chosen
    assert set(chosen.components) == {"tier", "quality", "cost", "distance", "capacity"}
    assert chosen.score == round(sum(chosen.components.values()), 6)
    assert chosen.components["quality"] == 0.27  # 0.30 * 4.5 / 5
    assert 2.0 < chosen.distance_km < 2.5


def test_provider_beyond_the_distance_limit_is_cut_and_a_closer_one_chosen() -> None:
    far_but_excellent = agency("1000000001", latitude=HOME_LAT + 0.6, quality_score=5.0, cost_index=0.5)  # ~67 km
    near_average = agency("1000000002", latitude=HOME_LAT + 0.1)

    outcome = routed(route("home_health", MEMBER, [far_but_excellent, near_average], POLICY))

    assert outcome.chosen.npi == "1000000002"
    assert outcome.alternatives == ()


def test_only_providers_beyond_the_distance_limit_make_the_referral_unroutable_for_distance() -> None:
    far = agency("1000000001", latitude=HOME_LAT + 0.6)

    outcome = route("home_health", MEMBER, [far], POLICY)

    assert outcome == Unroutable("none_within_distance", "no in-network home_health provider within 50 km")


def test_distance_limit_is_configurable_per_service_category() -> None:
    far = agency("1000000001", latitude=HOME_LAT + 0.6)  # ~67 km
    policy = RoutingPolicy(distance_limits_km={"home_health": 100.0})

    assert routed(route("home_health", MEMBER, [far], policy)).chosen.npi == "1000000001"


def test_provider_whose_capacity_is_all_reserved_is_skipped() -> None:
    full = agency("1000000001", capacity=2, quality_score=5.0)
    spare = agency("1000000002", capacity=2, quality_score=3.0)

    outcome = routed(route("home_health", MEMBER, [full, spare], POLICY, reserved={"1000000001": 2, "1000000002": 1}))

    assert outcome.chosen.npi == "1000000002"
    assert outcome.chosen.spare_capacity == 1


def test_every_provider_full_makes_the_referral_unroutable_for_capacity() -> None:
    outcome = route("home_health", MEMBER, [agency("1000000001", capacity=1), agency("1000000002", capacity=0)],
                    POLICY, reserved={"1000000001": 1})

    assert isinstance(outcome, Unroutable)
    assert outcome.reason == "no_capacity"


def test_providers_not_accepting_make_the_referral_unroutable_with_that_reason() -> None:
    outcome = route("home_health", MEMBER, [agency("1000000001", accepting=False)], POLICY)

    assert isinstance(outcome, Unroutable)
    assert outcome.reason == "none_accepting"


def test_virtual_capable_provider_beyond_the_limit_is_the_fallback_where_the_service_allows_virtual_care() -> None:
    remote_virtual = agency("1000000001", services=frozenset({"behavioral_health"}), latitude=HOME_LAT + 3.0,
                            virtual_capable=True)
    remote_in_person = agency("1000000002", services=frozenset({"behavioral_health"}), latitude=HOME_LAT + 3.0)

    outcome = routed(route("behavioral_health", MEMBER, [remote_in_person, remote_virtual], POLICY))

    assert outcome.chosen.npi == "1000000001"
    assert outcome.chosen.virtual is True
    assert outcome.chosen.components["distance"] == 0.0
    assert outcome.alternatives == ()


def test_virtual_capable_provider_does_not_qualify_beyond_the_limit_for_a_facility_service() -> None:
    remote_virtual_snf = agency("1000000001", services=frozenset({"snf"}), latitude=HOME_LAT + 3.0,
                                virtual_capable=True)

    outcome = route("snf", MEMBER, [remote_virtual_snf], POLICY)

    assert isinstance(outcome, Unroutable)
    assert outcome.reason == "none_within_distance"


def test_nearby_in_person_provider_outranks_an_equal_virtual_fallback() -> None:
    near = agency("1000000009", services=frozenset({"behavioral_health"}))
    remote_virtual = agency("1000000001", services=frozenset({"behavioral_health"}), latitude=HOME_LAT + 3.0,
                            virtual_capable=True)

    outcome = routed(route("behavioral_health", MEMBER, [remote_virtual, near], POLICY))

    assert outcome.chosen.npi == "1000000009"
    assert outcome.chosen.virtual is False


def test_equal_scores_are_broken_by_the_lower_npi_whatever_the_input_order() -> None:
    twins = [agency(npi) for npi in ("1000000003", "1000000001", "1000000002")]

    forward = routed(route("home_health", MEMBER, twins, POLICY))
    backward = routed(route("home_health", MEMBER, list(reversed(twins)), POLICY))

    assert forward.chosen.score == forward.alternatives[0].score == forward.alternatives[1].score
    assert [forward.chosen.npi, *(a.npi for a in forward.alternatives)] == ["1000000001", "1000000002", "1000000003"]
    assert backward == forward


def test_no_candidates_at_all_means_no_provider_offers_the_service() -> None:
    assert route("hospice", MEMBER, [], POLICY) == Unroutable(
        "no_provider_offers_service", "no active provider offers hospice")


def test_providers_of_other_services_or_inactive_ones_do_not_count_as_offering_it() -> None:
    others = [agency("1000000001", services=frozenset({"snf"})), agency("1000000002", active=False,
                                                                          services=frozenset({"hospice"}))]

    outcome = route("hospice", MEMBER, others, POLICY)

    assert isinstance(outcome, Unroutable)
    assert outcome.reason == "no_provider_offers_service"


def test_providers_only_in_other_networks_make_the_referral_unroutable_as_none_in_network() -> None:
    outcome = route("home_health", MEMBER, [agency("1000000001", networks={"NET-B": "preferred"})], POLICY)

    assert isinstance(outcome, Unroutable)
    assert outcome.reason == "none_in_network"


def test_an_index_that_returned_nobody_explains_why_through_its_stage_counts() -> None:
    assert route("home_health", MEMBER, [], POLICY, narrowed=StageCounts(5, 0)).reason == "none_in_network"  # type: ignore[union-attr]
    assert route("home_health", MEMBER, [], POLICY, narrowed=StageCounts(5, 3)).reason == "none_within_distance"  # type: ignore[union-attr]
    assert route("home_health", MEMBER, [], POLICY, narrowed=StageCounts(0, 0)).reason == "no_provider_offers_service"  # type: ignore[union-attr]


def test_alternatives_are_limited_and_ranked_best_first() -> None:
    providers = [agency(f"10000000{i:02d}", quality_score=1.0 + i * 0.2) for i in range(10)]

    outcome = routed(route("home_health", MEMBER, providers, RoutingPolicy(max_alternatives=3)))

    scores = [outcome.chosen.score, *(a.score for a in outcome.alternatives)]
    assert len(outcome.alternatives) == 3
    assert scores == sorted(scores, reverse=True)
    assert outcome.chosen.npi == "1000000009"


def test_lower_cost_index_and_more_spare_capacity_score_higher() -> None:
    cheap = agency("1000000002", cost_index=0.6)
    dear = agency("1000000001", cost_index=1.8)
    roomy = agency("1000000004", capacity=50)
    tight = agency("1000000003", capacity=1)

    assert routed(route("home_health", MEMBER, [dear, cheap], POLICY)).chosen.npi == "1000000002"
    assert routed(route("home_health", MEMBER, [tight, roomy], POLICY)).chosen.npi == "1000000004"
