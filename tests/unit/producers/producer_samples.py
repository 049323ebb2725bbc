"""Fixtures for the producer toolkit's unit tests: a small roster and the sample ADT feeds."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pytest
from cth_shared.contracts.events import EXAMPLES, Facility, MemberEnrolled
from cth_shared.producers.hl7_adt import AdtSettings, AdtTranslator, MemberIndex, split_messages

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "hl7"

EPIC_MRN_SYSTEM = "urn:oid:2.16.840.1.113883.3.72.5.9.1"
MERCY_MRN_SYSTEM = "urn:cth:facility:MERCYWEST"
MERCY_FACILITY = Facility(npi="1111111112", name="Mercy West Medical Center", tin="222333444")


def member(member_id: str, *identifiers: tuple[str, str]) -> MemberEnrolled:
    data = {
        **EXAMPLES["member.enrolled"],
        "member_id": member_id,
        "effective_date": date(2005, 1, 1),
        "identifiers": [{"system": s, "value": v} for s, v in identifiers],
    }
    return MemberEnrolled.model_validate(data)


@pytest.fixture
def roster() -> list[MemberEnrolled]:
    return [
        member("M000001", (EPIC_MRN_SYSTEM, "MRN100001")),
        member("M000002", (MERCY_MRN_SYSTEM, "MW0042")),
        member("M000003", (EPIC_MRN_SYSTEM, "MRN100003")),
    ]


@pytest.fixture
def index(roster: list[MemberEnrolled]) -> MemberIndex:
    return MemberIndex.from_members(roster)


@pytest.fixture
def settings() -> AdtSettings:
    return AdtSettings(facility_timezone="America/Chicago", facilities={"MERCYWEST": MERCY_FACILITY})


@pytest.fixture
def translator(index: MemberIndex, settings: AdtSettings) -> AdtTranslator:
    return AdtTranslator(index, settings)


def feed(name: str) -> list[bytes]:
    """The messages of one sample feed file, in order."""
    return split_messages((FIXTURES / name).read_bytes())
