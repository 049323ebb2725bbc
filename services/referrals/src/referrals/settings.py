"""Configuration of the referrals service (environment variables, documented defaults).

Dicts and lists are JSON in the environment, e.g.
``ROUTING_WEIGHTS='{"tier":0.5,"quality":0.2,"cost":0.1,"distance":0.1,"capacity":0.1}'``.
"""

from __future__ import annotations

from cth_shared.settings import ServiceSettings
from pydantic import Field

from .domain.leakage import (
    DEFAULT_PLACES_OF_SERVICE,
    DEFAULT_PROCEDURE_CODES,
    DEFAULT_TAXONOMY_PREFIXES,
    ServiceCodeMap,
)
from .domain.routing import DEFAULT_DISTANCE_LIMITS_KM, DEFAULT_VIRTUAL_SERVICES, RoutingPolicy


class ReferralsSettings(ServiceSettings):
    """Routing weights and limits, reservation expiry, leakage window and code map."""

    routing_version: str = Field("route-2026.1", description="Stamped on every routed/unroutable decision")
    routing_weights: dict[str, float] = Field(
        default_factory=lambda: {"tier": 0.40, "quality": 0.30, "cost": 0.15, "distance": 0.10, "capacity": 0.05},
        description="Weight of each score component (tier, quality, cost, distance, capacity)",
    )
    distance_limits_km: dict[str, float] = Field(
        default_factory=lambda: dict(DEFAULT_DISTANCE_LIMITS_KM),
        description="Straight-line distance limit per service category (km)",
    )
    default_distance_limit_km: float = Field(60.0, description="Limit for categories not in distance_limits_km")
    virtual_service_categories: list[str] = Field(
        default_factory=lambda: sorted(DEFAULT_VIRTUAL_SERVICES),
        description="Categories where a virtual-capable provider beyond the limit qualifies",
    )
    virtual_distance_score: float = Field(0.0, ge=0, le=1, description="Distance component of a virtual fallback")
    cost_index_best: float = Field(0.5, description="Cost index scoring the full cost weight")
    cost_index_worst: float = Field(2.0, description="Cost index scoring zero")
    capacity_saturation: int = Field(10, ge=1, description="Spare slots at which the capacity component is full")
    max_alternatives: int = Field(5, ge=0, le=10, description="Ranked alternatives emitted with the choice")
    reservation_expiry_days: int = Field(14, ge=1, description="An open referral's reserved slot is released after")
    expiry_check_interval_s: float = Field(60.0, gt=0, description="How often the expiry job runs")
    leakage_window_days: int = Field(90, ge=1, description="Care within this many days of a referral is evidence")
    leakage_procedure_codes: dict[str, list[str]] = Field(default_factory=lambda: dict(DEFAULT_PROCEDURE_CODES))
    leakage_places_of_service: dict[str, str] = Field(default_factory=lambda: dict(DEFAULT_PLACES_OF_SERVICE))
    leakage_taxonomy_prefixes: dict[str, str] = Field(default_factory=lambda: dict(DEFAULT_TAXONOMY_PREFIXES))
    directory_grid_cell_degrees: float = Field(0.25, gt=0, description="Grid cell of the in-memory candidate index")
    directory_refresh_interval_s: float = Field(
        2.0, gt=0, description="How often other instances' directory writes are pulled into the index"
    )

    def routing_policy(self) -> RoutingPolicy:
        """The routing rule's configuration."""
        return RoutingPolicy(
            weights=dict(self.routing_weights),
            distance_limits_km=dict(self.distance_limits_km),
            default_distance_limit_km=self.default_distance_limit_km,
            virtual_services=frozenset(self.virtual_service_categories),
            virtual_distance_score=self.virtual_distance_score,
            cost_index_best=self.cost_index_best,
            cost_index_worst=self.cost_index_worst,
            capacity_saturation=self.capacity_saturation,
            max_alternatives=self.max_alternatives,
            routing_version=self.routing_version,
        )

    def service_code_map(self) -> ServiceCodeMap:
        """The claim-line to service-category map used as leakage evidence."""
        return ServiceCodeMap(self.leakage_procedure_codes, self.leakage_places_of_service,
                              self.leakage_taxonomy_prefixes)
