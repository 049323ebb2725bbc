"""Routing a referral to the best in-network downstream provider (DESIGN.md section 3, referrals).

The rule, in order:

1. **filter** — the provider offers the service category; participates in the member's plan
   network; is within the service's distance limit of the member's home (haversine km), or is
   virtual-capable where the service allows virtual care; is accepting new patients; has
   capacity left (``capacity > reserved``). Geography is applied before the operational status
   filters, because that is how the candidate index narrows the directory and because "nobody
   nearby is accepting" is the actionable message for a care manager. When the list empties,
   the filter that emptied it is the unroutable ``reason``.
2. **score** — a weighted sum of components, each normalised to 0..1 before weighting:
   network tier (preferred = 1, standard = 0), quality (score / 5), cost index (lower is
   better, linear between ``cost_index_best`` and ``cost_index_worst``), distance (closer is
   better, ``1 - km / limit``; a provider reached only virtually gets ``virtual_distance_score``)
   and spare capacity (``spare / capacity_saturation``, capped at 1).
3. **rank** — highest score first, scores compared at 6 decimals; ties go to the lower NPI,
   so the same directory always yields the same choice.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from math import asin, cos, inf, pi, radians, sin, sqrt

from .directory_index import Candidates, row_of
from .geo import EARTH_RADIUS_KM, haversine_km
from .model import (
    PREFERRED,
    MemberCoverage,
    ProviderProfile,
    Routed,
    RoutingOutcome,
    ScoredCandidate,
    StageCounts,
    Unroutable,
)

SCORE_COMPONENTS = ("tier", "quality", "cost", "distance", "capacity")

#: Default straight-line distance limits (km) per service category: post-acute agencies travel
#: to the member (home health, hospice), facilities are chosen closer to family.
DEFAULT_DISTANCE_LIMITS_KM: dict[str, float] = {
    "home_health": 50.0,
    "hospice": 80.0,
    "snf": 50.0,
    "inpatient_rehab": 100.0,
}

#: Service categories where a virtual-capable provider beyond the distance limit still qualifies.
DEFAULT_VIRTUAL_SERVICES: frozenset[str] = frozenset({"behavioral_health", "cardiology", "endocrinology",
                                                      "primary_care", "neurology"})


@dataclass(frozen=True)
class RoutingPolicy:
    """Configuration of the routing rule (weights, limits); every number comes from settings."""

    weights: Mapping[str, float] = field(default_factory=lambda: {
        "tier": 0.40, "quality": 0.30, "cost": 0.15, "distance": 0.10, "capacity": 0.05,
    })
    distance_limits_km: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_DISTANCE_LIMITS_KM))
    default_distance_limit_km: float = 60.0
    virtual_services: frozenset[str] = DEFAULT_VIRTUAL_SERVICES
    virtual_distance_score: float = 0.0
    cost_index_best: float = 0.5
    cost_index_worst: float = 2.0
    capacity_saturation: int = 10
    max_alternatives: int = 5
    routing_version: str = "route-2026.1"

    def __post_init__(self) -> None:
        unknown = set(self.weights) - set(SCORE_COMPONENTS)
        if unknown:
            raise ValueError(f"unknown score components in weights: {sorted(unknown)}")
        if any(w < 0 for w in self.weights.values()):
            raise ValueError("score weights must not be negative")
        if self.cost_index_worst <= self.cost_index_best:
            raise ValueError("cost_index_worst must be above cost_index_best")
        if self.capacity_saturation < 1:
            raise ValueError("capacity_saturation must be at least 1")

    def distance_limit_km(self, service_category: str) -> float:
        """The straight-line distance limit for ``service_category``."""
        return self.distance_limits_km.get(service_category, self.default_distance_limit_km)

    def allows_virtual(self, service_category: str) -> bool:
        """True when a virtual-capable provider beyond the distance limit qualifies."""
        return service_category in self.virtual_services


def _clamp01(value: float) -> float:
    return 0.0 if value < 0.0 else 1.0 if value > 1.0 else value


#: Kilometres per degree of latitude on the haversine sphere: |delta latitude| x this is a lower
#: bound of the great-circle distance, a cheap first cut before the haversine itself.
_KM_PER_DEGREE = EARTH_RADIUS_KM * pi / 180.0


class _Scorer:
    """The weighted components of rule step 2, with the policy's numbers bound once per routing."""

    __slots__ = ("cost_span", "cost_worst", "saturation", "virtual_distance", "w_capacity", "w_cost", "w_distance",
                 "w_quality", "w_tier")

    def __init__(self, policy: RoutingPolicy) -> None:
        w = policy.weights
        self.w_tier, self.w_quality, self.w_cost = w.get("tier", 0.0), w.get("quality", 0.0), w.get("cost", 0.0)
        self.w_distance, self.w_capacity = w.get("distance", 0.0), w.get("capacity", 0.0)
        self.cost_worst = policy.cost_index_worst
        self.cost_span = policy.cost_index_worst - policy.cost_index_best
        self.saturation = policy.capacity_saturation
        self.virtual_distance = _clamp01(policy.virtual_distance_score)

    def parts(self, provider: ProviderProfile, tier: str, distance_part: float, spare: int
              ) -> tuple[float, float, float, float, float]:
        return (
            self.w_tier if tier == PREFERRED else 0.0,
            self.w_quality * _clamp01(provider.quality_score / 5.0),
            self.w_cost * _clamp01((self.cost_worst - provider.cost_index) / self.cost_span),
            self.w_distance * distance_part,
            self.w_capacity * _clamp01(spare / self.saturation),
        )


def score_components(
    provider: ProviderProfile, tier: str, distance_km: float, virtual: bool, spare_capacity: int,
    limit_km: float, policy: RoutingPolicy,
) -> dict[str, float]:
    """The weighted score components of one qualifying provider (rule step 2), rounded to 6 places."""
    return _components(_Scorer(policy), provider, tier, distance_km, virtual, spare_capacity, limit_km)


def _components(
    scorer: _Scorer, provider: ProviderProfile, tier: str, distance_km: float, virtual: bool, spare_capacity: int,
    limit_km: float,
) -> dict[str, float]:
    if virtual:
        distance_part = scorer.virtual_distance
    else:
        distance_part = _clamp01(1.0 - distance_km / limit_km) if limit_km > 0 else 0.0
    parts = scorer.parts(provider, tier, distance_part, spare_capacity)
    return {name: round(value, 6) for name, value in zip(SCORE_COMPONENTS, parts, strict=True)}


def route(
    service_category: str,
    member: MemberCoverage,
    candidates: Iterable[ProviderProfile],
    policy: RoutingPolicy,
    reserved: Mapping[str, int] | None = None,
    narrowed: StageCounts | None = None,
) -> RoutingOutcome:
    """Choose a provider for ``service_category`` for ``member`` (see the module docstring).

    ``candidates`` may be the whole directory or what an index returned; ``reserved`` holds the
    capacity already reserved per NPI by open referrals. When an index narrowed the directory by
    service, network and geography, ``narrowed`` carries its counts so the reason stays exact.
    The score is the sum of the unrounded components, rounded to 6 places; the explanation
    shows each component rounded to 6 places.

    The loop below runs once per candidate (hundreds per referral), so it does only what the
    result needs: every provider is filtered and the qualified ones counted, but only the best
    ``max_alternatives + 1`` are ranked and explained, so a provider whose score cannot reach
    them (an upper bound of it is below ``cut``) is not scored in full, and one surely within
    the distance limit gets its haversine distance only when its score is needed. The result is
    exactly that of scoring and ranking every qualified provider. The survivors of each filter,
    which only an unroutable referral needs, are counted afterwards (``_unroutable``).
    """
    if not isinstance(candidates, (list, tuple)):
        candidates = list(candidates)  # walked twice when nobody qualifies
    network_id = member.network_id
    if (isinstance(candidates, Candidates) and candidates.key == (service_category, network_id)
            and candidates.found == len(candidates)):
        rows = candidates.rows
    else:
        rows = [row_of(p, tier) for p in candidates if p.active and service_category in p.services
                and (tier := p.networks.get(network_id)) is not None]
    reserved = reserved or {}
    limit_km = policy.distance_limit_km(service_category)
    virtual_allowed = policy.allows_virtual(service_category)
    home_lat, home_lon = member.latitude, member.longitude
    # The scoring arithmetic of _Scorer.parts is inlined with the policy's numbers in locals.
    scorer = _Scorer(policy)
    w_tier, w_distance, saturation = scorer.w_tier, scorer.w_distance, scorer.saturation
    virtual_part = w_distance * scorer.virtual_distance
    quality_scale, capacity_scale = scorer.w_quality / 5.0, scorer.w_capacity / saturation
    w_capacity, w_quality = scorer.w_capacity, scorer.w_quality
    cost_scale, cost_worst, w_cost = scorer.w_cost / scorer.cost_span, scorer.cost_worst, scorer.w_cost
    # Upper bounds of tier + quality + cost + distance: each part is at most its weight, and a
    # float sum does not decrease when a term grows, so bound + capacity >= the score.
    bound_preferred = w_tier + w_quality + w_cost + w_distance
    bound_standard = 0.0 + w_quality + w_cost + w_distance
    home_phi, cos_home = radians(home_lat), cos(radians(home_lat))
    lat_limit_deg = limit_km / _KM_PER_DEGREE
    # A provider with |dlat| + cos(home latitude) x |dlon| (degrees) below ``inner_deg`` is within
    # the limit: that sum is the length of a path (along the member's parallel, then along the
    # provider's meridian) no shorter than the great circle. The margin keeps the haversine's
    # own rounding out of it; the test is off where the band of latitudes leaves -90..90.
    inner_deg = (lat_limit_deg * (1.0 - 1e-9)
                 if limit_km > 0.0 and abs(home_lat) + lat_limit_deg < 90.0 else -1.0)
    keep = policy.max_alternatives + 1
    # Rounded to 6 places, a score more than ``margin`` below the keep-th best exact score so far
    # ranks strictly below all of those, whatever its NPI: it cannot be among the kept.
    margin = max(1e-5, 1e-9 * sum(policy.weights.values()))
    best: list[float] = []  # min-heap of the best ``keep`` exact scores so far
    cut = -inf  # best[0] - margin once ``keep`` scores are known
    qualified = 0
    # (-score, npi, provider, tier, distance_km or None when reached virtually, spare)
    scored: list[tuple[float, str, ProviderProfile, str, float | None, int]] = []
    for npi, latitude, longitude, accepting, capacity, virtual_capable, quality_score, cost_index, tier, provider \
            in rows:
        if not accepting:
            continue
        spare = capacity - reserved.get(npi, 0)
        if spare <= 0:
            continue
        distance_km: float | None = None
        dlat = latitude - home_lat
        if -lat_limit_deg <= dlat <= lat_limit_deg:  # lower bound of the distance
            dlon = longitude - home_lon
            if (dlat if dlat >= 0.0 else -dlat) + cos_home * (dlon if dlon >= 0.0 else -dlon) < inner_deg:
                distance_km = -1.0  # surely within: the distance is computed if the score needs it
            else:
                phi = radians(latitude)
                a = sin((phi - home_phi) / 2) ** 2 + cos_home * cos(phi) * sin(radians(dlon) / 2) ** 2
                distance_km = 2 * EARTH_RADIUS_KM * asin(min(1.0, sqrt(a)))  # haversine, as geo.haversine_km
                if distance_km > limit_km:
                    distance_km = None
        if distance_km is None and not (virtual_allowed and virtual_capable):
            continue
        qualified += 1
        capacity_part = w_capacity if spare >= saturation else spare * capacity_scale
        if (bound_preferred if tier == PREFERRED else bound_standard) + capacity_part < cut:
            continue
        quality = quality_score * quality_scale
        cost = (cost_worst - cost_index) * cost_scale
        partial = (
            (w_tier if tier == PREFERRED else 0.0)
            + (w_quality if quality > w_quality else quality if quality > 0.0 else 0.0)
            + (w_cost if cost > w_cost else cost if cost > 0.0 else 0.0)
        )
        if distance_km is None:
            score = partial + virtual_part + capacity_part
        else:
            if distance_km < 0.0:
                if partial + w_distance + capacity_part < cut:
                    continue
                distance_km = haversine_km(home_lat, home_lon, latitude, longitude)
            score = partial + w_distance * (1.0 - distance_km / limit_km) + capacity_part
        if score < cut:
            continue
        scored.append((-round(score, 6), npi, provider, tier, distance_km, spare))
        if len(best) < keep:
            heapq.heappush(best, score)
            if len(best) == keep:
                cut = best[0] - margin
        elif score > best[0]:
            heapq.heapreplace(best, score)
            cut = best[0] - margin
    if not qualified:
        return _unroutable(service_category, member, candidates, limit_km, virtual_allowed, narrowed)
    ranked = heapq.nsmallest(keep, scored, key=lambda q: (q[0], q[1]))
    explained = []
    for negative_score, npi, provider, tier, distance_km, spare in ranked:
        virtual = distance_km is None
        shown_km = haversine_km(home_lat, home_lon, provider.latitude, provider.longitude) if virtual else distance_km
        assert shown_km is not None
        explained.append(ScoredCandidate(
            npi=npi, tin=provider.tin, tier=tier, score=-negative_score,
            components=_components(scorer, provider, tier, shown_km, virtual, spare, limit_km),
            distance_km=round(shown_km, 2), virtual=virtual, spare_capacity=spare,
        ))
    return Routed(chosen=explained[0], alternatives=tuple(explained[1:]), candidates_considered=qualified)


def _unroutable(
    service_category: str, member: MemberCoverage, candidates: Iterable[ProviderProfile], limit_km: float,
    virtual_allowed: bool, narrowed: StageCounts | None,
) -> Unroutable:
    """Why nobody qualified: the survivors of each filter of rule step 1, in its order."""
    network_id = member.network_id
    lat_limit_deg = limit_km / _KM_PER_DEGREE
    offering = in_network = reachable = accepting = 0
    for provider in candidates:
        if not provider.active or service_category not in provider.services:
            continue
        offering += 1
        if provider.networks.get(network_id) is None:
            continue
        in_network += 1
        latitude = provider.latitude
        within = (-lat_limit_deg <= latitude - member.latitude <= lat_limit_deg
                  and not haversine_km(member.latitude, member.longitude, latitude, provider.longitude) > limit_km)
        if not within and not (virtual_allowed and provider.virtual_capable):
            continue
        reachable += 1
        if not provider.accepting:
            continue
        accepting += 1
    if narrowed is not None:
        if narrowed.offering_service == 0:
            offering = 0
        elif narrowed.in_network == 0:
            offering, in_network = max(offering, 1), 0
        elif in_network == 0:  # the index had in-network providers but none in reach
            offering, in_network, reachable = 1, 1, 0
    if offering == 0:
        return Unroutable("no_provider_offers_service", f"no active provider offers {service_category}")
    if in_network == 0:
        return Unroutable("none_in_network", f"no {service_category} provider in the member's plan network")
    if reachable == 0:
        return Unroutable("none_within_distance", f"no in-network {service_category} provider within {limit_km:.0f} km")
    if accepting == 0:
        return Unroutable("none_accepting", f"no in-network {service_category} provider in reach is accepting")
    return Unroutable("no_capacity", f"every accepting in-network {service_category} provider in reach is full")
