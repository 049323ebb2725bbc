"""The bulk path's hand-built attribution.changed events satisfy the contract."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, date, datetime
from decimal import Decimal

from attribution.bulk import _EventIds, changed_event_json
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


def test_bulk_recompute_memoised_results_and_spliced_event_bytes_match_a_direct_computation() -> None:
    """Members with the same facts share one rule result; each event is still its own bytes (ids spliced in)."""
    from attribution.bulk import _Recomputer

    rules, as_of = AttributionRules(), date(2026, 3, 1)
    providers = {PCP: ProviderFacts("123456789", True)}
    enrolled = ("PLAN-VF", date(2024, 1, 1), None, True, PCP, "CM-1", None, None, None, None, None)
    previous = ("unattributed", None, None, "[]", date(2026, 2, 1), None)
    member_ids = ["M-0", "M-1", 'M-2"\u00e9']  # the last needs JSON escapes (bytes only; not a contract id)
    rows = [(m, *enrolled, *previous) for m in member_ids]
    computer = _Recomputer(providers, rules, as_of, "payer-demo", "")
    chunk = computer.chunk(rows, {})  # type: ignore[arg-type]

    assert len(computer.memo) == 1 and len(chunk.docs) == 1 and len(chunk.outbox) == 3
    result = attribute(MemberFacts("any", Enrollment("PLAN-VF", date(2024, 1, 1), virtual_first=True,
                                                     v1c_group_npi=PCP, care_manager_id="CM-1")),
                       [], providers, rules, as_of)
    for row, (_topic, key, payload, headers) in zip(rows, chunk.outbox, strict=True):
        event_id = json.loads(headers)["ce_id"]
        assert key == row[0].encode()
        assert payload == changed_event_json(
            event_id, row[0], as_of, datetime(2026, 3, 1, tzinfo=UTC), "payer-demo", result.method.value,
            result.pcp_npi, result.pcp_tin, None, json.loads(care_team_json(result.care_team)),
            explanation_dict(result.explanation))
        if row[0] != member_ids[-1]:
            assert parse_event(payload).data == to_contract(row[0], as_of, result, None)
    assert len({json.loads(h)["ce_id"] for *_, h in chunk.outbox}) == 3


def test_bulk_event_ids_are_distinct_random_version_4_uuids_across_buffer_refills() -> None:
    ids = _EventIds()
    drawn = [ids() for _ in range(10_000)]  # more than one 4,096-id buffer
    assert len(set(drawn)) == len(drawn)
    for value in drawn[4090:4100]:
        parsed = uuid.UUID(value)
        assert (parsed.version, parsed.variant, parsed.hex) == (4, uuid.RFC_4122, value)


def test_bulk_runs_pause_the_cyclic_collector_and_restore_its_previous_state_even_on_error() -> None:
    import gc

    import pytest
    from attribution.bulk import _cyclic_gc_paused

    assert gc.isenabled()
    with _cyclic_gc_paused():
        assert not gc.isenabled()
    assert gc.isenabled()
    with pytest.raises(RuntimeError), _cyclic_gc_paused():
        raise RuntimeError("a failed run")
    assert gc.isenabled()
    gc.disable()
    try:
        with _cyclic_gc_paused():
            pass
        assert not gc.isenabled()  # a caller that had it off keeps it off
    finally:
        gc.enable()
