"""Roster, claims and provider files: streamed, per-row errors with line numbers, never stopping."""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path

from cth_shared.contracts import CloudEvent
from cth_shared.producers.files import RowError, detect_kind, read_claims, read_file, read_providers, read_roster

ROSTER_HEADER = (
    "member_id,plan_id,network_id,product,virtual_first,v1c_group_npi,effective_date,termination_date,"
    "given_name,family_name,birth_date,sex,address_line,city,state,postal_code,latitude,longitude,"
    "risk_score,care_manager_id,selected_pcp_npi,identifiers"
)
GOOD_MEMBER = (
    "M000001,PLAN-VF,NET-A,commercial,true,1003000126,2026-01-01,,Ada,Example,1950-04-02,female,"
    "12 Elm St,Springfield,IL,62701,39.78,-89.65,72.5,CM-17,,urn:oid:1.2.3|MRN1;urn:oid:1.2.4|MRN2"
)
CLAIM_HEADER = (
    "claim_id,member_id,status,replaces_claim_id,billing_tin,adjudicated_on,line_number,procedure_code,"
    "modifiers,rendering_npi,rendering_tin,rendering_taxonomy,place_of_service,service_from,service_to,"
    "units,allowed_amount,diagnoses"
)


def claim_line(claim_id: str, line: int, code: str = "99214", amount: str = "120.00", member: str = "M000001") -> str:
    return (
        f"{claim_id},{member},paid,,123456789,2026-02-10,{line},{code},25,1234567893,123456789,207Q00000X,"
        f"11,2026-02-01,2026-02-01,1,{amount},I10;E11.9"
    )


def write(tmp_path: Path, name: str, lines: list[str]) -> Path:
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n")
    return path


def split(items):
    items = list(items)
    return [i for i in items if isinstance(i, CloudEvent)], [i for i in items if isinstance(i, RowError)]


def test_roster_csv_yields_members_and_reports_bad_rows_by_line(tmp_path):
    path = write(tmp_path, "roster.csv", [
        ROSTER_HEADER,
        GOOD_MEMBER,
        GOOD_MEMBER.replace("M000001", "M000002").replace("1950-04-02", "1950-13-45"),  # bad date
        "M000003,too,few,columns",
        GOOD_MEMBER.replace("M000001", "M000004").replace(",IL,", ",Illinois,"),
        GOOD_MEMBER.replace("M000001", "M000005"),
    ])
    events, errors = split(read_roster(path))
    assert [e.subject for e in events] == ["M000001", "M000005"]
    assert [e.line for e in errors] == [3, 4, 5]
    assert "birth_date" in errors[0].reason and "1950-13-45" not in errors[0].reason
    assert "columns" in errors[1].reason and "address.state" in errors[2].reason
    member = events[0].data
    assert member.virtual_first is True and [i.value for i in member.identifiers] == ["MRN1", "MRN2"]
    assert events[0].type == "member.enrolled"


def test_roster_ndjson_and_invalid_json_lines(tmp_path):
    events, _ = split(read_roster(write(tmp_path, "r.csv", [ROSTER_HEADER, GOOD_MEMBER])))
    data = events[0].data.model_dump(mode="json")
    path = write(tmp_path, "roster.ndjson", [json.dumps(data), "{not json", "[1,2]", "", json.dumps(data)])
    events, errors = split(read_roster(path))
    assert len(events) == 2 and [(e.line, e.reason) for e in errors] == [
        (2, "not valid JSON"), (3, "a row must be a JSON object")
    ]
    assert events[0].id == events[1].id  # same content, same id: reloading a file is idempotent


def test_claim_lines_are_grouped_into_claims(tmp_path):
    path = write(tmp_path, "claims.csv", [
        CLAIM_HEADER,
        claim_line("C1", 1), claim_line("C1", 2, "G0439"),
        claim_line("C2", 1),
        claim_line("C3", 1, code="BAD"), claim_line("C3", 2),  # one bad line rejects claim C3
        claim_line("C4", 1, amount="-35.10"),
    ])
    events, errors = split(read_claims(path))
    assert [(e.data.claim_id, len(e.data.lines)) for e in events] == [("C1", 2), ("C2", 1), ("C4", 1)]
    assert len(errors) == 1 and errors[0].line == 5 and "procedure_code" in errors[0].reason
    assert events[0].data.lines[0].modifiers == ["25"] and events[0].data.lines[0].diagnoses == ["I10", "E11.9"]


def test_a_claim_split_across_the_file_is_reported(tmp_path):
    path = write(tmp_path, "claims.csv", [CLAIM_HEADER, claim_line("C1", 1), claim_line("C2", 1), claim_line("C1", 2)])
    events, errors = split(read_claims(path))
    assert [e.data.claim_id for e in events] == ["C1", "C2"]
    assert errors == [RowError(4, "claim_id reappears after other claims; a claim's lines must be contiguous")]


def test_claim_level_columns_must_agree_across_lines(tmp_path):
    other_member = claim_line("C1", 2, member="M000009")
    events, errors = split(read_claims(write(tmp_path, "c.csv", [CLAIM_HEADER, claim_line("C1", 1), other_member])))
    assert events == [] and errors[0].line == 3


def test_claims_ndjson_whole_claims(tmp_path):
    events, _ = split(read_claims(write(tmp_path, "c.csv", [CLAIM_HEADER, claim_line("C1", 1)])))
    whole = events[0].data.model_dump(mode="json")
    path = write(tmp_path, "claims.ndjson", [json.dumps(whole), json.dumps({**whole, "lines": []})])
    events, errors = split(read_claims(path))
    assert len(events) == 1 and errors[0].line == 2 and "lines" in errors[0].reason


def test_provider_csv(tmp_path):
    header = ("npi,name,organization_name,tin,taxonomy,role,services,networks,latitude,longitude,accepting,"
              "capacity,quality_score,cost_index,virtual_capable,active")
    good = ("1982736450,Sunrise Home Health,Sunrise HH LLC,222333444,251E00000X,post_acute,home_health,"
            "NET-A:preferred;NET-B:standard,41.88,-87.63,yes,40,4.5,0.9,no,true")
    path = write(tmp_path, "providers.csv", [header, good, good.replace("1982736450", "1982736451"),
                                              good.replace("NET-A:preferred", "NET-A")])
    events, errors = split(read_providers(path))
    assert [e.subject for e in events] == ["1982736450"]
    assert [e.line for e in errors] == [3, 4] and "npi" in errors[0].reason
    assert events[0].data.networks[0].tier == "preferred" and events[0].data.accepting is True


def test_invalid_utf8_and_overlong_lines_are_row_errors(tmp_path):
    path = tmp_path / "roster.csv"
    path.write_bytes(
        (ROSTER_HEADER + "\n").encode() + b"M\xff\xfe,bad\n" + b"x" * 100_000 + b"\n" + (GOOD_MEMBER + "\n").encode()
    )
    events, errors = split(read_roster(path))
    assert [e.line for e in errors] == [2, 3] and len(events) == 1
    assert "UTF-8" in errors[0].reason and "longer" in errors[1].reason


def test_detect_kind_and_read_file(tmp_path):
    roster = write(tmp_path, "a.csv", [ROSTER_HEADER, GOOD_MEMBER])
    claims = write(tmp_path, "b.csv", [CLAIM_HEADER, claim_line("C1", 1)])
    assert detect_kind(roster) == "roster" and detect_kind(claims) == "claims"
    assert len(list(read_file(claims))) == 1


def test_reading_is_streamed_in_constant_memory(tmp_path):
    def peak_for(rows: int) -> int:
        path = tmp_path / f"claims{rows}.csv"
        with path.open("w") as out:
            out.write(CLAIM_HEADER + "\n")
            for i in range(rows):
                out.write(claim_line(f"C{i}", 1) + "\n")
        tracemalloc.start()
        count = sum(1 for _ in read_claims(path))
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert count == rows
        return peak

    small, large = peak_for(500), peak_for(5000)
    # the recent-claim-id window grows with claims (bounded at 10k ids), nothing else does
    assert large < small * 3 + 1_000_000
