"""Leakage: care for a referred service that happened outside the preferred network.

DESIGN.md section 3 (referrals): a later claim or encounter for the referred service category,
within a window after the referral (default 90 days), at an out-of-network or non-preferred
provider is leakage — detected once per referral. The same evidence at the routed provider
(same NPI or same TIN, i.e. the organization billing for it) completes the referral and
releases its reserved capacity; care at another preferred in-network provider is neither.

Claim lines are mapped to service categories by a configurable code map:
HCPCS/CPT code ranges (e.g. home health visits G0151-G0162, G0299, G0300, T1030/T1031;
hospice Q5001-Q5010), CMS place-of-service codes (31 SNF, 34 hospice, 61 inpatient
rehabilitation facility) and NUCC rendering taxonomy prefixes (e.g. 207RC cardiology).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from datetime import date, timedelta
from typing import Literal

from .model import PREFERRED, ProviderProfile

DEFAULT_PROCEDURE_CODES: dict[str, list[str]] = {
    # CMS home health HCPCS: skilled nursing / therapy visits, and state Medicaid private-duty nursing.
    "home_health": ["G0151-G0162", "G0299-G0300", "G0493-G0496", "T1030-T1031"],
    # Hospice place-of-care codes (Q5001 home ... Q5010).
    "hospice": ["Q5001-Q5010"],
    # PT evaluations and the most common therapeutic procedure.
    "physical_therapy": ["97161-97164", "97110"],
}

DEFAULT_PLACES_OF_SERVICE: dict[str, str] = {
    "31": "snf",  # skilled nursing facility
    "34": "hospice",
    "61": "inpatient_rehab",  # comprehensive inpatient rehabilitation facility
}

DEFAULT_TAXONOMY_PREFIXES: dict[str, str] = {
    "251E": "home_health",
    "251G": "hospice",
    "3140": "snf",
    "283X": "inpatient_rehab",
    "207RC": "cardiology",
    "207RP": "pulmonology",
    "207RE": "endocrinology",
    "207RN": "nephrology",
    "207RX": "oncology",
    "207RH": "oncology",
    "207X": "orthopedics",
    "2084N": "neurology",
    "2084P": "behavioral_health",
    "103T": "behavioral_health",
    "1041C": "behavioral_health",
    "101Y": "behavioral_health",
    "2251": "physical_therapy",
    "207Q": "primary_care",
    "207R00000X": "primary_care",
    "208D": "primary_care",
}


def _expand(code_range: str) -> tuple[str, str]:
    low, _, high = code_range.partition("-")
    high = high or low
    if len(low) != len(high) or low[:1].isalpha() != high[:1].isalpha() or low > high:
        raise ValueError(f"code range {code_range!r} must be two codes of the same shape, low-high")
    return low, high


class ServiceCodeMap:
    """Which service categories a claim line is evidence of (configurable; see module docstring)."""

    def __init__(
        self,
        procedure_codes: Mapping[str, list[str]] | None = None,
        places_of_service: Mapping[str, str] | None = None,
        taxonomy_prefixes: Mapping[str, str] | None = None,
    ) -> None:
        procedure_codes = DEFAULT_PROCEDURE_CODES if procedure_codes is None else procedure_codes
        self.places_of_service = dict(DEFAULT_PLACES_OF_SERVICE if places_of_service is None else places_of_service)
        prefixes = DEFAULT_TAXONOMY_PREFIXES if taxonomy_prefixes is None else taxonomy_prefixes
        self._ranges = [(*_expand(r), category) for category, rs in procedure_codes.items() for r in rs]
        # Longest prefix first, so 207R00000X (internal medicine) wins over a shorter match.
        self._prefixes = sorted(prefixes.items(), key=lambda item: -len(item[0]))

    def categories_of_line(self, procedure_code: str, place_of_service: str, taxonomy: str | None) -> set[str]:
        """Service categories a claim line evidences: by code range, by place of service and by
        the rendering provider's taxonomy (longest matching prefix)."""
        found: set[str] = set()
        for low, high, category in self._ranges:
            if len(procedure_code) == len(low) and low <= procedure_code <= high:
                found.add(category)
        by_pos = self.places_of_service.get(place_of_service)
        if by_pos:
            found.add(by_pos)
        if taxonomy:
            for prefix, category in self._prefixes:
                if taxonomy.startswith(prefix):
                    found.add(category)
                    break
        return found


EvidenceVerdict = Literal["completed", "preferred_elsewhere", "out_of_network", "non_preferred"]


def classify_care(
    routed_npi: str | None,
    routed_tin: str | None,
    actual_npi: str,
    actual_tin: str | None,
    actual_provider: ProviderProfile | None,
    member_network_id: str,
) -> EvidenceVerdict:
    """What care at ``actual_npi`` means for a referral routed to ``routed_npi``.

    Same NPI or same TIN as the routed provider: the referral is completed. Otherwise: a
    provider absent from the directory or not in the member's network is out-of-network
    leakage; a standard-tier participant is non-preferred leakage; another preferred
    participant keeps the care in the preferred network (no leakage).
    """
    if routed_npi is not None and (actual_npi == routed_npi or (actual_tin is not None and actual_tin == routed_tin)):
        return "completed"
    tier = actual_provider.networks.get(member_network_id) if actual_provider is not None else None
    if tier is None:
        return "out_of_network"
    if tier != PREFERRED:
        return "non_preferred"
    return "preferred_elsewhere"


def within_leakage_window(referred_on: date, care_on: date, window_days: int) -> bool:
    """True when care on ``care_on`` is on or after the referral and within ``window_days`` of it."""
    return referred_on <= care_on <= referred_on + timedelta(days=window_days)


def discharge_referral_id(encounter_id: str, service_category: str) -> str:
    """The deterministic id of the referral a discharge creates for ``service_category``.

    The same encounter and service always give the same id, so an HL7 resend or an A08 update of
    the discharge cannot route twice.
    """
    digest = hashlib.sha256(f"{encounter_id}|{service_category}".encode()).hexdigest()[:32]
    return f"dc-{digest}"
