"""Plain values the routing and leakage rules work on (no I/O, no pydantic)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date

PREFERRED = "preferred"
STANDARD = "standard"


@dataclass(frozen=True, slots=True)
class ProviderProfile:
    """One provider as the local directory read model holds it (from ``provider.upserted``)."""

    npi: str
    tin: str
    services: frozenset[str]
    #: network_id -> tier ("preferred" | "standard")
    networks: dict[str, str]
    latitude: float
    longitude: float
    accepting: bool = True
    capacity: int = 0
    quality_score: float = 3.0
    cost_index: float = 1.0
    virtual_capable: bool = False
    active: bool = True
    taxonomy: str | None = None

    def tier_in(self, network_id: str) -> str | None:
        """The provider's tier in ``network_id``, or None when it does not participate."""
        return self.networks.get(network_id)


@dataclass(frozen=True, slots=True)
class MemberCoverage:
    """What routing needs to know about a member: plan network and home coordinates."""

    member_id: str
    network_id: str
    latitude: float
    longitude: float
    enrolled: bool = True
    termination_date: date | None = None

    def covered_on(self, day: date) -> bool:
        """True when the member is enrolled on ``day``."""
        return self.enrolled and (self.termination_date is None or day <= self.termination_date)


@dataclass(frozen=True, slots=True)
class ScoredCandidate:
    """A provider that passed every filter, with its explainable score."""

    npi: str
    tin: str
    tier: str
    score: float
    components: dict[str, float]
    distance_km: float
    virtual: bool
    spare_capacity: int


@dataclass(frozen=True, slots=True)
class Routed:
    """Routing chose ``chosen``; ``alternatives`` are the next best, in rank order."""

    chosen: ScoredCandidate
    alternatives: tuple[ScoredCandidate, ...]
    candidates_considered: int


@dataclass(frozen=True, slots=True)
class Unroutable:
    """Nobody qualified; ``reason`` names the filter that emptied the candidate list."""

    reason: str
    detail: str = ""


RoutingOutcome = Routed | Unroutable


@dataclass(frozen=True, slots=True)
class StageCounts:
    """How many providers survived the filters an index already applied before ``route()``.

    An index narrows by service, network and geography; when it hands back an empty list,
    these counts say which of its own filters emptied it.
    """

    offering_service: int
    in_network: int


@dataclass(slots=True)
class FilterTrace:
    """Survivors after each filter, in order (for the unroutable reason and for telemetry)."""

    counts: dict[str, int] = field(default_factory=dict)
