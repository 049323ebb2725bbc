"""Who owns a member's gaps: the attributed care team's PCP, else the V1C provider,
else the care manager, else nobody (``unassigned``). The owner's organization (TIN)
scopes the worklist API."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

OwnerRole = Literal["pcp", "v1c_provider", "care_manager", "unassigned"]


@dataclass(frozen=True)
class CareTeam:
    """The responsible clinicians as the last ``attribution.changed`` (and enrollment) said."""

    pcp_npi: str | None = None
    pcp_tin: str | None = None
    v1c_npi: str | None = None
    v1c_tin: str | None = None
    care_manager_id: str | None = None


@dataclass(frozen=True)
class Owner:
    role: OwnerRole
    id: str | None
    organization_id: str | None


def gap_owner(team: CareTeam) -> Owner:
    """PCP first (organization = PCP TIN), then V1C provider (its TIN), then care manager."""
    if team.pcp_npi:
        return Owner("pcp", team.pcp_npi, team.pcp_tin)
    if team.v1c_npi:
        return Owner("v1c_provider", team.v1c_npi, team.v1c_tin)
    if team.care_manager_id:
        return Owner("care_manager", team.care_manager_id, None)
    return Owner("unassigned", None, None)


def member_organization(team: CareTeam) -> str | None:
    """The organization whose worklist holds the member: the PCP's TIN, else the V1C group's."""
    return team.pcp_tin or team.v1c_tin
