"""The bulk path's hand-built attribution.changed events satisfy the contract."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime
from decimal import Decimal

from attribution.bulk import changed_event_json
from attribution.domain import AttributionRules, Enrollment, MemberFacts, ProviderFacts, ServiceLine, attribute
from attribution.handlers import to_contract
from attribution.store import care_team_json, explanation_dict
from cth_shared.contracts import npi_with_check_digit, parse_event

PCP = npi_with_check_digit("100000001")


def test_bulk_event_bytes_parse_as_the_same_attribution_changed_the_live_path_publishes() -> None:
    enrollment = Enrollment(plan_id="P", effective_date=date(2024, 1, 1), care_manager_id="CM-1")
    result = attribute(MemberFacts("M-1", enrollment), [
        ServiceLine(PCP, "123456789", date(2025, 6, 1), "99213", Decimal("92.50"))],
        {PCP: ProviderFacts("123456789", True)}, AttributionRules(), date(2026, 3, 1))

    raw = changed_event_json("evt-1", "M-1", date(2026, 3, 1), datetime(2026, 3, 1, tzinfo=UTC), "payer-demo",
                             result.method.value, result.pcp_npi, result.pcp_tin, None,
                             json.loads(care_team_json(result.care_team)), explanation_dict(result.explanation))
    event = parse_event(raw)
    assert event.type == "attribution.changed"
    assert event.data == to_contract("M-1", date(2026, 3, 1), result, None)
