"""Invalid inputs are rejected with a stable reason, the field path, and no PHI echo."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import pytest
from cth_shared.contracts import MAX_EVENT_BYTES, ContractError, parse_event
from cth_shared.contracts import envelope as envelope_module

from ._support import envelope, example, rejection, wire

_DELETE = object()
#: What an xfail test raises when the contract accepts what it should reject.
ACCEPTED = pytest.fail.Exception


@dataclass(frozen=True)
class Case:
    """Event ``type_name`` whose example has ``value`` at ``path`` (``_DELETE`` removes it)."""

    id: str
    type_name: str
    path: tuple[str | int, ...]
    value: Any
    expected: tuple[str, ...]  # substrings the detail must contain (field path, rule)
    value_is_vocabulary: bool = False  # an enum word the rule itself names, not PHI


def mutated(case: Case) -> dict[str, Any]:
    data = example(case.type_name)
    target: Any = data
    for step in case.path[:-1]:
        target = target[step]
    if case.value is _DELETE:
        del target[case.path[-1]]
    else:
        target[case.path[-1]] = case.value
    return data


def _line(**changes: Any) -> list[dict[str, Any]]:
    line = example("claim.adjudicated")["lines"][0]
    line.update(changes)
    return [line]


CASES = [
    # NPI: 10 digits with a Luhn check digit over the 80840 prefix
    Case("npi-wrong-check-digit", "member.pcp_selected", ("pcp_npi",), "1234567890",
         ("data.pcp_npi", "check digit")),
    Case("npi-nine-digits", "member.pcp_selected", ("pcp_npi",), "123456789",
         ("data.pcp_npi", "10 digits")),
    Case("npi-eleven-digits", "member.pcp_selected", ("pcp_npi",), "12345678931",
         ("data.pcp_npi", "10 digits")),
    Case("npi-letters", "member.pcp_selected", ("pcp_npi",), "12345678AB",
         ("data.pcp_npi", "10 digits")),
    Case("facility-npi-check-digit", "encounter.admitted", ("facility", "npi"), "1245319598",
         ("data.facility.npi", "check digit")),
    Case("claim-line-npi", "claim.adjudicated", ("lines",), _line(rendering_npi="1234567894"),
         ("data.lines.0.rendering_npi", "check digit")),
    Case("care-team-optional-npi", "attribution.changed", ("previous_pcp_npi",), "0000000001",
         ("data.previous_pcp_npi",)),
    # TIN: exactly 9 digits
    Case("tin-eight-digits", "virtual_visit.completed", ("organization_tin",), "12345678",
         ("data.organization_tin", "9 digits")),
    Case("tin-with-dash", "claim.adjudicated", ("billing_tin",), "12-3456789",
         ("data.billing_tin", "9 digits")),
    Case("tin-letters", "provider.upserted", ("tin",), "ABCDEFGHI", ("data.tin", "9 digits")),
    # CPT / HCPCS shape
    Case("cpt-four-digits", "virtual_visit.completed", ("procedure_codes",), ["9921"],
         ("data.procedure_codes.0", "procedure code")),
    Case("cpt-letters", "virtual_visit.completed", ("procedure_codes",), ["99214", "ABCDE"],
         ("data.procedure_codes.1", "procedure code")),
    Case("hcpcs-letter-w", "claim.adjudicated", ("lines",), _line(procedure_code="W1234"),
         ("data.lines.0.procedure_code", "procedure code")),
    Case("cpt-six-digits", "claim.adjudicated", ("lines",), _line(procedure_code="992133"),
         ("data.lines.0.procedure_code",)),
    Case("cpt-category-suffix-x", "claim.adjudicated", ("lines",), _line(procedure_code="1111X"),
         ("data.lines.0.procedure_code",)),
    Case("cpt-no-codes", "virtual_visit.completed", ("procedure_codes",), [],
         ("data.procedure_codes",)),
    # ICD-10-CM shape
    Case("icd10-digit-first", "encounter.admitted", ("diagnoses",), [{"code": "150.9"}],
         ("data.diagnoses.0.code", "ICD-10")),
    Case("icd10-too-short", "referral.requested", ("reason_codes",), ["I5"],
         ("data.reason_codes.0", "ICD-10")),
    Case("icd10-too-long", "encounter.discharged", ("diagnoses",), [{"code": "S72.00123"}],
         ("data.diagnoses.0.code",)),
    Case("icd10-double-dot", "claim.adjudicated", ("lines",), _line(diagnoses=["E11..9"]),
         ("data.lines.0.diagnoses.0",)),
    # other code shapes
    Case("taxonomy-shape", "provider.upserted", ("taxonomy",), "207Q0000X",
         ("data.taxonomy", "taxonomy")),
    Case("place-of-service-shape", "claim.adjudicated", ("lines",), _line(place_of_service="111"),
         ("data.lines.0.place_of_service",)),
    Case("modifier-shape", "claim.adjudicated", ("lines",), _line(modifiers=["25", "ABC"]),
         ("data.lines.0.modifiers.1",)),
    Case("state-shape", "member.enrolled", ("address", "state"), "Illinois",
         ("data.address.state",)),
    Case("postal-code-shape", "member.enrolled", ("address", "postal_code"), "6270",
         ("data.address.postal_code",)),
    # times and dates
    Case("naive-admitted-at", "encounter.admitted", ("admitted_at",), "2026-03-02T08:15:00",
         ("data.admitted_at", "timezone")),
    Case("naive-discharged-at", "encounter.discharged", ("discharged_at",), "2026-03-06T14:30:00",
         ("data.discharged_at", "timezone")),
    Case("impossible-date", "member.disenrolled", ("termination_date",), "2026-02-30",
         ("data.termination_date",)),
    Case("termination-before-effective", "member.enrolled", ("termination_date",), "2025-12-31",
         ("data:", "termination_date is before effective_date")),
    Case("discharge-before-admit", "encounter.discharged", ("discharged_at",),
         "2026-03-01T14:30:00-05:00", ("data:", "discharged_at is before admitted_at")),
    Case("visit-ends-before-start", "virtual_visit.completed", ("ended_at",),
         "2026-03-08T08:59:00-05:00", ("data:", "ended_at is before started_at")),
    Case("service-to-before-from", "claim.adjudicated", ("lines",),
         _line(service_from="2026-02-10", service_to="2026-02-09"),
         ("data.lines.0", "service_to is before service_from")),
    Case("birth-before-1900", "member.enrolled", ("birth_date",), "1899-12-31",
         ("data:", "birth_date")),
    # claims
    Case("reversed-without-replaces", "claim.adjudicated", ("status",), "reversed",
         ("data:", "replaces"), value_is_vocabulary=True),
    Case("adjusted-without-replaces", "claim.adjudicated", ("status",), "adjusted",
         ("data:", "replaces"), value_is_vocabulary=True),
    Case("empty-claim-lines", "claim.adjudicated", ("lines",), [], ("data.lines", "at least 1")),
    Case("201-claim-lines", "claim.adjudicated", ("lines",), _line() * 201,
         ("data.lines", "at most 200")),
    Case("claim-line-number-zero", "claim.adjudicated", ("lines",), _line(line_number=0),
         ("data.lines.0.line_number",)),
    Case("claim-amount-three-decimals", "claim.adjudicated", ("lines",),
         _line(allowed_amount="92.505"), ("data.lines.0.allowed_amount",)),
    Case("unknown-claim-status", "claim.adjudicated", ("status",), "pending", ("data.status",)),
    # bounded, clean text
    Case("201-char-given-name", "member.enrolled", ("given_name",), "A" * 201,
         ("data.given_name", "at most 200")),
    Case("201-char-facility-name", "encounter.admitted", ("facility", "name"), "S" * 201,
         ("data.facility.name", "at most 200")),
    Case("blank-given-name", "member.enrolled", ("given_name",), "   ", ("data.given_name",)),
    Case("nul-in-family-name", "member.enrolled", ("family_name",), "Exa\x00mple",
         ("data.family_name",)),
    Case("newline-in-address-line", "member.enrolled", ("address", "line"), "12 Elm St\nApt 4",
         ("data.address.line",)),
    Case("escape-in-to-unit", "encounter.transferred", ("to_unit",), "ICU\x1b[2J",
         ("data.to_unit",)),
    Case("delete-char-in-provider-name", "provider.upserted", ("name",), "Home\x7fHealth",
         ("data.name",)),
    Case("id-with-space", "member.pcp_selected", ("member_id",), "M 000001", ("data.member_id",)),
    Case("id-with-markup", "care_gap.closed", ("gap_id",), "<script>", ("data.gap_id",)),
    Case("id-too-long", "notification.acknowledged", ("notification_id",), "N" * 65,
         ("data.notification_id",)),
    Case("failed-reason-too-long", "notification.failed", ("reason",), "r" * 501,
         ("data.reason", "at most 500")),
    Case("too-many-identifiers", "member.enrolled", ("identifiers",),
         [{"system": "urn:x", "value": f"V{i}"} for i in range(21)], ("data.identifiers",)),
    # shape: unknown fields, missing fields, enums, ranges and wrong types
    Case("unknown-extra-field", "member.pcp_selected", ("favourite_colour",), "teal-blue",
         ("data.favourite_colour", "Extra inputs")),
    Case("unknown-nested-field", "encounter.admitted", ("facility", "floor"), "third",
         ("data.facility.floor", "Extra inputs")),
    Case("missing-required-field", "encounter.discharged", ("disposition",), _DELETE,
         ("data.disposition", "Field required")),
    Case("unknown-patient-class", "encounter.admitted", ("patient_class",), "ambulatory",
         ("data.patient_class",)),
    Case("unknown-trigger", "encounter.admitted", ("trigger",), "A99", ("data.trigger",)),
    Case("unknown-service-category", "referral.requested", ("service_category",), "astrology",
         ("data.service_category",)),
    Case("unknown-routing-component", "referral.routed", ("chosen", "components"), {"vibes": 1.0},
         ("data.chosen.components",)),
    Case("latitude-out-of-range", "provider.upserted", ("latitude",), 91.0, ("data.latitude",)),
    Case("risk-score-out-of-range", "member.enrolled", ("risk_score",), 100.5,
         ("data.risk_score",)),
    Case("cost-index-zero", "provider.upserted", ("cost_index",), 0, ("data.cost_index",)),
    Case("negative-visit-amount", "virtual_visit.completed", ("allowed_amount",), "-1.00",
         ("data.allowed_amount",)),
    Case("capacity-is-text", "provider.upserted", ("capacity",), "lots", ("data.capacity",)),
    Case("capacity-is-fractional", "provider.upserted", ("capacity",), 2.5, ("data.capacity",)),
    Case("accepting-is-text", "provider.upserted", ("accepting",), "perhaps",
         ("data.accepting",)),
    Case("member-id-is-number", "member.pcp_selected", ("member_id",), 12345,
         ("data.member_id",)),
    Case("lines-is-object", "claim.adjudicated", ("lines",), {"0": {}}, ("data.lines",)),
    Case("diagnoses-is-string", "encounter.admitted", ("diagnoses",), "I50.9",
         ("data.diagnoses",)),
    Case("address-is-list", "member.enrolled", ("address",), ["12 Elm St"], ("data.address",)),
    Case("attempts-is-null", "notification.delivered", ("attempts",), None, ("data.attempts",)),
]


def _echo_candidate(value: Any) -> str | None:
    """The text form of a value that must not be echoed, when it is distinctive enough."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, str) and len(value.strip()) >= 3:
        return value
    if isinstance(value, int) and abs(value) >= 100:
        return str(value)
    return None


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_an_invalid_field_is_rejected_naming_the_field_without_echoing_the_value(
    case: Case,
) -> None:
    error = rejection(wire(envelope(case.type_name, mutated(case))))
    assert error.reason == "invalid_event"
    for expected in case.expected:
        assert expected in error.detail, f"{expected!r} not in {error.detail!r}"
    leaked = None if case.value_is_vocabulary else _echo_candidate(case.value)
    if leaked is not None:
        assert leaked not in error.detail
        assert leaked not in str(error)


@pytest.mark.parametrize("code", ["G0438", "99213", "1111F", "0001T", "0001U", "A0425", "V2020"])
def test_valid_cpt_and_hcpcs_shapes_are_accepted(code: str) -> None:
    data = example("virtual_visit.completed")
    data["procedure_codes"] = [code]
    assert parse_event(wire(envelope("virtual_visit.completed", data))).data.procedure_codes == [
        code
    ]


@pytest.mark.parametrize("code", ["I50.9", "E11.9", "S72.001A", "Z00.00", "I509", "F32.A", "J45"])
def test_valid_icd10_shapes_are_accepted(code: str) -> None:
    data = example("encounter.admitted")
    data["diagnoses"] = [{"code": code}]
    assert parse_event(wire(envelope("encounter.admitted", data))).data.diagnoses[0].code == code


@pytest.mark.parametrize("code", ["U07.1", "U09.9"])
def test_icd10_chapter_u_codes_are_accepted(code: str) -> None:
    data = example("encounter.admitted")
    data["diagnoses"] = [{"code": code}]
    assert parse_event(wire(envelope("encounter.admitted", data))).data.diagnoses[0].code == code


@pytest.mark.parametrize("status", ["reversed", "adjusted"])
def test_a_reversal_naming_the_claim_it_replaces_is_accepted(status: str) -> None:
    data = example("claim.adjudicated")
    data.update(status=status, replaces_claim_id="CLM-0")
    assert parse_event(wire(envelope("claim.adjudicated", data))).data.status == status


def test_two_hundred_claim_lines_are_accepted() -> None:
    data = example("claim.adjudicated")
    data["lines"] = [{**data["lines"][0], "line_number": n} for n in range(1, 201)]
    assert len(parse_event(wire(envelope("claim.adjudicated", data))).data.lines) == 200


def test_a_200_char_name_is_accepted() -> None:
    data = example("member.enrolled")
    data["given_name"] = "A" * 200
    assert parse_event(wire(envelope("member.enrolled", data))).data.given_name == "A" * 200


def test_an_unknown_nubc_disposition_is_rejected_naming_the_field() -> None:
    data = example("encounter.discharged")
    data["disposition"] = "99"
    error = rejection(wire(envelope("encounter.discharged", data)))
    assert error.reason == "invalid_event"
    assert "data.disposition" in error.detail
    assert "NUBC" in error.detail


@pytest.mark.parametrize("disposition", ["99", "PHI-X"])
def test_an_unknown_nubc_disposition_is_not_echoed_in_the_detail(disposition: str) -> None:
    data = example("encounter.discharged")
    data["disposition"] = disposition
    error = rejection(wire(envelope("encounter.discharged", data)))
    assert repr(disposition) not in error.detail


@pytest.mark.parametrize(
    ("type_name", "path", "value"),
    [
        ("member.pcp_selected", ("pcp_npi",), "١٢٣٤٥٦٧٨٩٣"),  # Arabic-Indic 1234567893
        ("member.pcp_selected", ("pcp_tin",), "١٢٣٤٥٦٧٨٩"),
        ("claim.adjudicated", ("lines", 0, "place_of_service"), "١١"),
        ("claim.adjudicated", ("lines", 0, "procedure_code"), "٩٩٢١3"),
        ("member.enrolled", ("address", "postal_code"), "٦٢٧٠١"),
    ],
    ids=["npi", "tin", "place-of-service", "cpt", "postal-code"],
)
def test_non_ascii_digits_are_rejected_in_codes(
    type_name: str, path: tuple[str | int, ...], value: str
) -> None:
    error = rejection(wire(envelope(type_name, mutated(Case("x", type_name, path, value, ())))))
    assert error.reason == "invalid_event"


@pytest.mark.parametrize(
    ("type_name", "path", "raw_number"),
    [
        ("referral.routed", ("chosen", "score"), "NaN"),
        ("referral.routed", ("chosen", "score"), "1e999"),
        ("referral.routed", ("chosen", "components", "tier"), "Infinity"),
        ("care_gap.opened", ("priority",), "Infinity"),
    ],
    ids=["score-nan", "score-1e999", "component-infinity", "priority-infinity"],
)
def test_non_finite_numbers_are_rejected(
    type_name: str, path: tuple[str | int, ...], raw_number: str
) -> None:
    marker = "__NUMBER__"
    document = envelope(type_name, mutated(Case("x", type_name, path, marker, ())))
    raw = json.dumps(document).replace(f'"{marker}"', raw_number)
    error = rejection(raw)
    assert error.reason == "invalid_event"


def test_a_negative_routing_distance_is_rejected() -> None:
    data = example("referral.routed")
    data["chosen"]["distance_km"] = -5.0
    assert rejection(wire(envelope("referral.routed", data))).reason == "invalid_event"


def test_c1_control_characters_are_rejected_in_short_text() -> None:
    data = example("member.enrolled")
    data["given_name"] = "A\x85da"
    assert rejection(wire(envelope("member.enrolled", data))).reason == "invalid_event"


@pytest.mark.parametrize(
    ("type_name", "field"),
    [("notification.failed", "reason"), ("referral.unroutable", "detail")],
)
def test_control_characters_are_rejected_in_free_text_reasons(type_name: str, field: str) -> None:
    data = example(type_name)
    data[field] = "HTTP 500\x00\x1b[2J"
    assert rejection(wire(envelope(type_name, data))).reason == "invalid_event"


# --------------------------------------------------------------------------- envelope fields
ENVELOPE_CASES = [
    ("naive-time", {"time": "2026-03-01T12:00:00"}, "time", "2026-03-01T12:00:00"),
    ("time-not-a-time", {"time": "yesterday-ish"}, "time", "yesterday-ish"),
    ("id-with-space", {"id": "evt 1"}, "id", "evt 1"),
    ("id-empty", {"id": ""}, "id", None),
    ("subject-too-long", {"subject": "M" * 65}, "subject", "M" * 65),
    ("source-with-space", {"source": "urn:cth test"}, "source", "urn:cth test"),
    ("tenant-with-slash", {"tenant": "payer/a"}, "tenant", "payer/a"),
    ("wrong-specversion", {"specversion": "0.3"}, "specversion", None),
    ("wrong-content-type", {"datacontenttype": "text/xml"}, "datacontenttype", "text/xml"),
    ("unknown-envelope-attribute", {"partitionkey": "pk-secret"}, "partitionkey", "pk-secret"),
    ("correlation-id-with-space", {"correlationid": "c 1"}, "correlationid", "c 1"),
    ("data-not-an-object", {"data": "just text"}, "data", "just text"),
    ("data-null", {"data": None}, "data", None),
]


@pytest.mark.parametrize(
    ("overrides", "field", "value"),
    [case[1:] for case in ENVELOPE_CASES],
    ids=[case[0] for case in ENVELOPE_CASES],
)
def test_an_invalid_envelope_attribute_is_rejected_naming_it(
    overrides: dict[str, Any], field: str, value: str | None
) -> None:
    document = envelope("member.pcp_selected", example("member.pcp_selected"), **overrides)
    error = rejection(wire(document))
    assert error.reason == "invalid_event"
    assert field in error.detail
    if value:
        assert value not in error.detail


def test_a_missing_subject_is_rejected_naming_it() -> None:
    document = envelope("member.pcp_selected", example("member.pcp_selected"))
    del document["subject"]
    error = rejection(wire(document))
    assert (error.reason, "subject" in error.detail) == ("invalid_event", True)


@pytest.mark.parametrize(
    "schema",
    [
        None,
        "urn:cth:event:member.enrolled:v1",  # another type's schema
        "urn:cth:event:member.pcp_selected",
        "urn:cth:event:member.pcp_selected:vX",
        "https://example.com/schema.json",
        42,
    ],
)
def test_a_missing_or_mismatched_dataschema_is_rejected(schema: Any) -> None:
    document = envelope("member.pcp_selected", example("member.pcp_selected"))
    if schema is None:
        del document["dataschema"]
    else:
        document["dataschema"] = schema
    error = rejection(wire(document))
    assert error.reason == "invalid_event"
    assert "dataschema" in error.detail


# --------------------------------------------------------------------------- reasons
@pytest.mark.parametrize("type_value", ["encounter.exploded", "member", "", None, 7, ["x"]])
def test_an_unknown_or_missing_event_type_is_unknown_type(type_value: Any) -> None:
    document = envelope("member.pcp_selected", example("member.pcp_selected"))
    if type_value is None:
        del document["type"]
    else:
        document["type"] = type_value
    assert rejection(wire(document)).reason == "unknown_type"


@pytest.mark.parametrize(
    "raw",
    [b"", b"{", b"{not json}", b"{'type': 1}", b"\xff\xfe\x00", b'{"a": 1}}', "{\"a\": tru}"],
)
def test_malformed_json_is_invalid_json(raw: bytes | str) -> None:
    error = rejection(raw)
    assert error.reason == "invalid_json"


def test_deeply_nested_json_is_rejected_without_a_recursion_crash() -> None:
    error = rejection(b"[" * 100_000 + b"]" * 100_000)
    assert error.reason in {"invalid_json", "not_an_object"}


@pytest.mark.parametrize("raw", [b"[]", b"[{}]", b"42", b'"a string"', b"null", b"true"])
def test_a_json_value_that_is_not_an_object_is_not_an_object(raw: bytes) -> None:
    assert rejection(raw).reason == "not_an_object"


def test_a_payload_over_the_limit_is_oversize_without_being_parsed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def must_not_parse(*_args: Any, **_kwargs: Any) -> Any:
        raise AssertionError("an oversize payload was handed to the JSON parser")

    monkeypatch.setattr(envelope_module.json, "loads", must_not_parse)
    error = rejection(b"{" + b" " * MAX_EVENT_BYTES + b"}")
    assert error.reason == "oversize"
    assert str(MAX_EVENT_BYTES) in error.detail


def test_a_payload_exactly_at_the_limit_is_parsed() -> None:
    raw = wire(envelope("member.pcp_selected", example("member.pcp_selected")))
    padded = raw[:-1] + b" " * (MAX_EVENT_BYTES - len(raw)) + b"}"
    assert len(padded) == MAX_EVENT_BYTES
    assert parse_event(padded).type == "member.pcp_selected"


def test_a_caller_supplied_byte_limit_applies() -> None:
    raw = wire(envelope("member.pcp_selected", example("member.pcp_selected")))
    with pytest.raises(ContractError) as info:
        parse_event(raw, max_bytes=len(raw) - 1)
    assert info.value.reason == "oversize"


def test_a_text_payload_over_the_byte_limit_is_oversize() -> None:
    text = '{"type": "' + "é" * (MAX_EVENT_BYTES // 2 + 10) + '"}'
    assert len(text) < MAX_EVENT_BYTES < len(text.encode())
    assert rejection(text).reason == "oversize"


@pytest.mark.parametrize("version", [2, 10])
def test_a_newer_version_than_supported_is_unsupported_version(version: int) -> None:
    document = envelope("member.pcp_selected", example("member.pcp_selected"), version=version)
    assert rejection(wire(document)).reason == "unsupported_version"


def test_an_older_version_without_an_upcaster_is_unsupported_version() -> None:
    document = envelope("member.pcp_selected", example("member.pcp_selected"), version=0)
    assert rejection(wire(document)).reason == "unsupported_version"


def test_a_dataschema_version_with_thousands_of_digits_is_a_contract_error() -> None:
    document = envelope("member.pcp_selected", example("member.pcp_selected"))
    document["dataschema"] = "urn:cth:event:member.pcp_selected:v" + "9" * 5000
    try:
        parse_event(wire(document))
    except ContractError:
        return
    except Exception as exc:
        pytest.fail(f"{type(exc).__name__} escaped parse_event")
    pytest.fail("accepted")


def test_a_dataschema_version_in_non_ascii_digits_is_rejected() -> None:
    document = envelope("member.pcp_selected", example("member.pcp_selected"))
    document["dataschema"] = "urn:cth:event:member.pcp_selected:v١"
    assert rejection(wire(document)).reason in {"invalid_event", "unsupported_version"}


# --------------------------------------------------------------------------- upcasting
def _discharged_v0() -> dict[str, Any]:
    data = example("encounter.discharged")
    data["discharge_disposition"] = data.pop("disposition")
    return envelope("encounter.discharged", data, version=0)


def test_the_v0_encounter_discharged_is_upcast_to_v1() -> None:
    event = parse_event(wire(_discharged_v0()))
    assert event.version == 1
    assert event.dataschema == "urn:cth:event:encounter.discharged:v1"
    assert event.data.disposition == "06"
    assert json.loads(event.to_json_bytes())["data"]["disposition"] == "06"
    assert "discharge_disposition" not in json.loads(event.to_json_bytes())["data"]


def test_an_upcast_event_equals_the_same_event_sent_as_v1() -> None:
    current = parse_event(wire(envelope("encounter.discharged", example("encounter.discharged"))))
    assert parse_event(wire(_discharged_v0())) == current


def test_the_upcast_v0_event_is_still_validated() -> None:
    document = _discharged_v0()
    document["data"]["discharge_disposition"] = "99"
    error = rejection(wire(document))
    assert error.reason == "invalid_event"
    assert "data.disposition" in error.detail


def test_a_v0_event_with_the_v1_field_name_is_accepted() -> None:
    document = envelope("encounter.discharged", example("encounter.discharged"), version=0)
    assert parse_event(wire(document)).data.disposition == "06"


def test_a_v0_event_whose_data_is_not_an_object_is_unsupported_version() -> None:
    document = _discharged_v0()
    document["data"] = ["not", "an", "object"]
    assert rejection(wire(document)).reason == "unsupported_version"
