"""Attribution configuration (environment variables; every default documented here).

The rule values are versioned: change ``ATTRIBUTION_RULES_VERSION`` whenever a window,
code list or precedence changes, so every explanation names the rules that made it.
"""

from __future__ import annotations

from typing import Literal

from cth_shared.settings import ServiceSettings
from pydantic import Field

from .domain import AttributionRules, Step
from .domain.rules import DEFAULT_PRIMARY_CARE_CODES

_DEFAULT_PRECEDENCE = ",".join(step.value for step in AttributionRules().precedence)


class AttributionSettings(ServiceSettings):
    """Settings of the attribution service on top of the shared service settings."""

    attribution_rules_version: str = Field("attr-2026.1", max_length=32, description="Named in every explanation")
    attribution_lookback_months: int = Field(24, ge=1, le=120, description="Plurality lookback (months, inclusive)")
    attribution_primary_care_codes: str = Field(
        "", description="Comma-separated CPT/HCPCS list; empty = E&M office/home, TCM, AWV, CCM (DESIGN.md)"
    )
    attribution_step_two_scope: Literal["all_services", "primary_care_services"] = Field(
        "all_services", description="What step two weighs when no primary-care service by a PCP exists"
    )
    attribution_precedence: str = Field(_DEFAULT_PRECEDENCE, description="Comma-separated steps in order")
    attribution_receiving_provider_days: int = Field(90, ge=1, le=730, description="'Active' receiving provider window")
    attribution_max_receiving_providers: int = Field(10, ge=0, le=40)

    def rules(self) -> AttributionRules:
        """The pure rule configuration these settings describe."""
        codes = frozenset(c.strip() for c in self.attribution_primary_care_codes.split(",") if c.strip())
        return AttributionRules(
            rules_version=self.attribution_rules_version,
            lookback_months=self.attribution_lookback_months,
            primary_care_codes=codes or DEFAULT_PRIMARY_CARE_CODES,
            step_two_scope=self.attribution_step_two_scope,
            precedence=tuple(Step(s.strip()) for s in self.attribution_precedence.split(",") if s.strip()),
            receiving_provider_days=self.attribution_receiving_provider_days,
            max_receiving_providers=self.attribution_max_receiving_providers,
        )
