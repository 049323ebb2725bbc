"""Leakage evidence: claim lines mapped to service categories, and what care elsewhere means."""

from __future__ import annotations

from datetime import date

import pytest
from referrals.domain.leakage import ServiceCodeMap, classify_care, discharge_referral_id, within_leakage_window
from referrals.domain.model import ProviderProfile

CODES = ServiceCodeMap()
ROUTED = ("1000000001", "222333444")


def provider(npi: str, networks: dict[str, str], tin: str = "999888777") -> ProviderProfile:
    return ProviderProfile(npi=npi, tin=tin, services=frozenset({"home_health"}), networks=networks,
                           latitude=40.0, longitude=-89.0)


@pytest.mark.parametrize(("code", "pos", "taxonomy", "expected"), [
    ("G0151", "12", None, {"home_health"}),
    ("G0162", "12", None, {"home_health"}),
    ("G0300", "12", None, {"home_health"}),
    ("T1030", "12", None, {"home_health"}),
    ("G0163", "11", None, set()),
    ("Q5001", "12", None, {"hospice"}),
    ("99309", "31", None, {"snf"}),
    ("99223", "61", None, {"inpatient_rehab"}),
    ("99213", "11", "207RC0000X", {"cardiology"}),
    ("99213", "11", "207R00000X", {"primary_care"}),
    ("99213", "11", "2084P0800X", {"behavioral_health"}),
    ("99213", "11", "363L00000X", set()),
])
def test_claim_lines_map_to_service_categories_by_code_place_of_service_and_taxonomy(
    code: str, pos: str, taxonomy: str | None, expected: set[str]
) -> None:
    assert CODES.categories_of_line(code, pos, taxonomy) == expected


def test_code_map_is_configurable() -> None:
    custom = ServiceCodeMap(procedure_codes={"home_health": ["S9122-S9124"]}, places_of_service={},
                            taxonomy_prefixes={})

    assert custom.categories_of_line("S9123", "12", None) == {"home_health"}
    assert custom.categories_of_line("G0151", "31", "207RC0000X") == set()


def test_malformed_code_range_is_refused_at_configuration_time() -> None:
    with pytest.raises(ValueError, match="same shape"):
        ServiceCodeMap(procedure_codes={"home_health": ["G0151-99999"]})


def test_care_at_the_routed_provider_or_its_tin_completes_the_referral() -> None:
    assert classify_care(*ROUTED, "1000000001", None, None, "NET-A") == "completed"
    assert classify_care(*ROUTED, "1000000099", "222333444", None, "NET-A") == "completed"


def test_care_at_a_provider_outside_the_members_network_or_unknown_is_out_of_network_leakage() -> None:
    other_network = provider("1000000002", {"NET-B": "preferred"})
    assert classify_care(*ROUTED, "1000000002", "999888777", other_network, "NET-A") == "out_of_network"
    assert classify_care(*ROUTED, "1000000003", "999888777", None, "NET-A") == "out_of_network"


def test_care_at_a_standard_tier_participant_is_non_preferred_leakage() -> None:
    standard = provider("1000000002", {"NET-A": "standard"})
    assert classify_care(*ROUTED, "1000000002", "999888777", standard, "NET-A") == "non_preferred"


def test_care_at_another_preferred_participant_is_not_leakage() -> None:
    preferred = provider("1000000002", {"NET-A": "preferred"})
    assert classify_care(*ROUTED, "1000000002", "999888777", preferred, "NET-A") == "preferred_elsewhere"


def test_leakage_window_starts_on_the_referral_day_and_lasts_the_configured_days() -> None:
    referred = date(2026, 3, 1)
    assert within_leakage_window(referred, date(2026, 3, 1), 90)
    assert within_leakage_window(referred, date(2026, 5, 30), 90)
    assert not within_leakage_window(referred, date(2026, 5, 31), 90)
    assert not within_leakage_window(referred, date(2026, 2, 28), 90)


def test_discharge_referral_id_is_deterministic_per_encounter_and_service() -> None:
    first = discharge_referral_id("SEG-V0001", "home_health")
    assert first == discharge_referral_id("SEG-V0001", "home_health")
    assert first != discharge_referral_id("SEG-V0001", "snf")
    assert first != discharge_referral_id("SEG-V0002", "home_health")
    assert len(first) <= 64
