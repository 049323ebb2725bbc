"""HL7 v2 ADT -> encounter events: two sending-system styles, every trigger, malformed input."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from cth_shared.contracts import parse_event
from cth_shared.producers.hl7_adt import (
    AdtEvent,
    AdtSettings,
    AdtTranslator,
    Hl7Error,
    MemberIndex,
    UnmatchedPatient,
    parse_hl7,
    split_messages,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from producer_samples import EPIC_MRN_SYSTEM, MERCY_MRN_SYSTEM, feed, member

CST = timezone(timedelta(hours=-6))
EST = timezone(timedelta(hours=-5))


def translated(translator: AdtTranslator, raw: bytes) -> AdtEvent:
    result = translator.translate(raw)
    assert isinstance(result, AdtEvent), result
    # The event survives the wire: serialised bytes parse back to the same typed event.
    assert parse_event(result.event.to_json_bytes()) == result.event
    return result


# --------------------------------------------------------------------------- style A (2.5.1)
def test_epic_style_feed_maps_every_message_to_the_expected_event_type(translator):
    results = [translated(translator, m) for m in feed("epic_style_v251.hl7")]
    assert [(r.trigger, r.event.type) for r in results] == [
        ("A01", "encounter.admitted"),
        ("A02", "encounter.transferred"),
        ("A08", "encounter.admitted"),
        ("A03", "encounter.discharged"),
        ("A08", "encounter.discharged"),
        ("A13", "encounter.cancelled"),
        ("A04", "encounter.admitted"),
        ("A06", "encounter.transferred"),
        ("A04", "encounter.admitted"),
        ("A11", "encounter.cancelled"),
    ]
    assert {r.event.subject for r in results} == {"M000001"}


def test_a01_reads_in1_member_id_identifiers_pcp_facility_and_diagnoses(translator):
    result = translated(translator, feed("epic_style_v251.hl7")[0])
    event, data = result.event, result.event.data
    assert event.subject == data.member_id == "M000001"  # IN1-36 is on the roster
    assert data.source_message_id == "EPA-0001"
    assert data.encounter_id == "1245319599-V5550001"
    assert data.patient_class == "inpatient"
    assert data.facility.npi == "1245319599"  # EVN-7 with identifier type NPI
    assert data.facility.name == "St. Example General Hospital & Heart Center"  # PV2-23, \T\ unescaped
    assert data.attending_npi == "1982736450"
    assert data.reported_pcp_npi == "1234567893"  # ROL-3 PP
    # Every PID-3 repetition but the SSN, each with its assigning authority as the system.
    assert [(i.system, i.value) for i in data.patient_identifiers] == [
        (EPIC_MRN_SYSTEM, "MRN100001"),
        ("urn:oid:2.16.840.1.113883.3.999.1", "HIE77001"),
    ]
    assert [(d.code, d.primary) for d in data.diagnoses] == [("I21.4", True), ("E11.9", False)]
    assert any("DG1 3" in w for w in result.warnings)  # the SNOMED-coded DG1 is reported, not used
    # EVN-6 with its own offset; PV1-44 for the admission time.
    assert event.time == datetime(2026, 3, 2, 8, 12, tzinfo=EST)
    assert data.admitted_at == datetime(2026, 3, 2, 8, 0, tzinfo=EST)
    assert event.correlationid == data.encounter_id


def test_a03_carries_disposition_discharge_time_and_admit_time(translator):
    data = translated(translator, feed("epic_style_v251.hl7")[3]).event.data
    assert data.disposition == "06"
    assert data.discharged_at == datetime(2026, 3, 6, 14, 30, tzinfo=EST)
    assert data.admitted_at == datetime(2026, 3, 2, 8, 0, tzinfo=EST)


def test_a08_after_discharge_is_a_discharge_update(translator):
    data = translated(translator, feed("epic_style_v251.hl7")[4]).event.data
    assert data.trigger == "A08" and data.disposition == "06"


def test_a13_cancels_the_discharge_and_a11_the_admit(translator):
    messages = feed("epic_style_v251.hl7")
    assert translated(translator, messages[5]).event.data.cancels == "discharge"
    cancel = translated(translator, messages[9]).event.data
    assert cancel.cancels == "admit" and cancel.patient_class == "observation"


def test_a04_emergency_and_observation_registrations(translator):
    messages = feed("epic_style_v251.hl7")
    emergency = translated(translator, messages[6]).event.data
    observation = translated(translator, messages[8]).event.data
    assert emergency.patient_class == "emergency"
    assert observation.patient_class == "observation"  # PV1-2 O with PV1-18 OBS


def test_a06_emergency_to_inpatient_is_a_transfer_with_the_prior_class(translator):
    data = translated(translator, feed("epic_style_v251.hl7")[7]).event.data
    assert data.patient_class == "inpatient"
    assert data.from_patient_class == "emergency"
    assert data.to_unit == "5E"


def test_a02_transfer_names_the_new_unit(translator):
    data = translated(translator, feed("epic_style_v251.hl7")[1]).event.data
    assert data.to_unit == "CCU"
    assert data.transferred_at == datetime(2026, 3, 3, 10, 10, tzinfo=EST)


def test_a_resent_message_yields_the_same_event_id(translator):
    raw = feed("epic_style_v251.hl7")[0]
    assert translated(translator, raw).event.id == translated(translator, raw).event.id
    assert translated(translator, raw).event.id != translated(translator, feed("epic_style_v251.hl7")[1]).event.id


# --------------------------------------------------------------------------- style B (2.3)
def test_meditech_style_feed_maps_every_trigger(translator):
    results = [translated(translator, m) for m in feed("meditech_style_v23.hl7")]
    assert [(r.trigger, r.event.type) for r in results] == [
        ("A04", "encounter.admitted"),
        ("A06", "encounter.transferred"),
        ("A01", "encounter.admitted"),
        ("A02", "encounter.transferred"),
        ("A08", "encounter.admitted"),
        ("A03", "encounter.discharged"),
        ("A13", "encounter.cancelled"),
        ("A03", "encounter.discharged"),
        ("A11", "encounter.cancelled"),
    ]


def test_v23_patient_is_matched_through_the_mrn_when_in1_36_is_not_a_member_id(translator):
    data = translated(translator, feed("meditech_style_v23.hl7")[2]).event.data
    assert data.member_id == "M000002"
    # No assigning authority: the MRN is scoped by the sending facility; the PI by its namespace.
    assert [(i.system, i.value) for i in data.patient_identifiers] == [
        (MERCY_MRN_SYSTEM, "MW0042"),
        ("urn:cth:aa:MWEMPI", "E12345"),
    ]
    assert data.facility.npi == "1111111112"  # configured for MSH-4 MERCYWEST
    assert data.facility.name == "Mercy West Medical Center"
    assert data.reported_pcp_npi == "1234567893"  # PD1-4 (no ROL in 2.3)
    assert data.diagnoses[0].code == "J18.9"  # DG1-2 coding method I10 (2.3 style)


def test_timestamps_without_offset_use_the_facility_time_zone(translator):
    result = translated(translator, feed("meditech_style_v23.hl7")[2])
    assert result.event.time == datetime(2006, 3, 1, 23, 5, tzinfo=CST)
    assert result.event.data.admitted_at == datetime(2006, 3, 1, 23, 0, tzinfo=CST)


def test_single_digit_disposition_is_read_as_the_nubc_code(translator):
    messages = feed("meditech_style_v23.hl7")
    assert translated(translator, messages[5]).event.data.disposition == "06"
    assert translated(translator, messages[7]).event.data.disposition == "03"


def test_event_time_falls_back_to_msh_7_without_evn(translator):
    result = translated(translator, feed("meditech_style_v23.hl7")[8])
    assert result.event.time == datetime(2006, 3, 6, 11, 0, tzinfo=CST)


# --------------------------------------------------------------------------- identity
def test_a_patient_who_is_not_a_member_is_reported_without_phi(settings):
    translator = AdtTranslator(MemberIndex(), settings)
    result = translator.translate(feed("epic_style_v251.hl7")[0])
    assert isinstance(result, UnmatchedPatient)
    assert result.reason == "no_matching_member"
    assert result.control_id == "EPA-0001" and result.facility_npi == "1245319599"
    assert EPIC_MRN_SYSTEM in result.identifier_systems
    text = str(result)
    for phi in ("MRN100001", "Brien", "19500402", "999887777", "Elm"):
        assert phi not in text


def test_an_identifier_shared_by_two_members_never_resolves(settings):
    index = MemberIndex.from_members(
        [member("M000010", (MERCY_MRN_SYSTEM, "MW0042")), member("M000011", (MERCY_MRN_SYSTEM, "MW0042"))]
    )
    result = AdtTranslator(index, settings).translate(feed("meditech_style_v23.hl7")[2])
    assert isinstance(result, UnmatchedPatient) and result.reason == "ambiguous_identifiers"


# --------------------------------------------------------------------------- malformed input
GOOD = feed("epic_style_v251.hl7")[0]


def reason_of(translator: AdtTranslator, raw: bytes | str) -> Hl7Error:
    with pytest.raises(Hl7Error) as caught:
        translator.translate(raw)
    return caught.value


def test_missing_msh_is_rejected(translator):
    without_msh = GOOD.split(b"\r", 1)[1]
    assert reason_of(translator, without_msh).reason == "missing_msh"
    assert reason_of(translator, b"hello world").reason == "missing_msh"


def test_bad_encoding_characters_are_rejected(translator):
    for header in (b"MSH|^~|", b"MSH|^^~&|", b"MSH|ABCD|", b"MSH|^~\\&"):
        raw = header + GOOD.split(b"|", 2)[2]
        assert reason_of(translator, raw).reason == "bad_encoding_characters", header


def test_truncated_messages_are_rejected(translator):
    assert reason_of(translator, GOOD[:40]).reason == "truncated"  # cut inside MSH
    header_only = GOOD.split(b"\r", 1)[0]
    error = reason_of(translator, header_only)
    assert error.reason == "truncated" and "PID" in error.detail
    assert error.control_id == "EPA-0001"


def test_wrong_version_is_rejected(translator):
    error = reason_of(translator, GOOD.replace(b"|P|2.5.1|", b"|P|2.7|"))
    assert error.reason == "unsupported_version" and error.control_id == "EPA-0001"


def test_unsupported_trigger_and_message_type_are_rejected(translator):
    assert reason_of(translator, GOOD.replace(b"ADT^A01^ADT_A01", b"ADT^A31^ADT_A05")).reason == "unsupported_trigger"
    assert reason_of(translator, GOOD.replace(b"ADT^A01^ADT_A01", b"ORU^R01^ORU_R01")).reason == (
        "unsupported_message_type"
    )


def test_a_ten_megabyte_message_is_rejected_before_parsing(translator):
    huge = GOOD + b"ZZZ|" + b"x" * (10 * 1024 * 1024) + b"\r"
    error = reason_of(translator, huge)
    assert error.reason == "oversize" and "1048576" in error.detail


def test_size_limit_is_configurable(index):
    small = AdtTranslator(index, AdtSettings(max_message_bytes=500))
    assert reason_of(small, GOOD).reason == "oversize"


def test_invalid_fields_name_the_field_but_not_the_value(translator):
    bad_time = GOOD.replace(b"20260302080000-0500", b"2026-03-02T08:00")
    error = reason_of(translator, bad_time)
    assert error.reason == "invalid_field" and "PV1-44" in error.detail and "2026-03-02T08" not in str(error)
    bad_class = GOOD.replace(b"PV1|1|I|", b"PV1|1|Q|")
    assert reason_of(translator, bad_class).reason == "invalid_field"
    discharge = feed("epic_style_v251.hl7")[3]
    assert reason_of(translator, discharge.replace(b"|06|", b"|99|")).reason == "invalid_field"
    assert reason_of(translator, discharge.replace(b"|06|", b"||")).reason == "missing_field"


def test_missing_disposition_can_default_by_configuration(index, settings):
    settings.default_disposition = "01"
    discharge = feed("epic_style_v251.hl7")[3].replace(b"|06|", b"||")
    assert translated(AdtTranslator(index, settings), discharge).event.data.disposition == "01"


def test_unknown_facility_is_rejected(index):
    translator = AdtTranslator(index, AdtSettings())  # MERCYWEST not configured
    assert reason_of(translator, feed("meditech_style_v23.hl7")[0]).reason == "unknown_facility"


def test_binary_and_empty_input_are_rejected(translator):
    assert reason_of(translator, b"").reason == "empty"
    assert reason_of(translator, b"MSH|^~\\&|\x00\x01").reason == "not_text"


def test_latin1_bytes_are_decoded_not_rejected(translator):
    raw = GOOD.replace(b"Heart Center", "Herz Zentrum M\u00fcnchen".encode("latin-1"))
    assert translated(translator, raw).event.data.facility.name.endswith("München")


def test_parse_hl7_accepts_lf_and_crlf_segment_endings():
    for ending in (b"\n", b"\r\n"):
        message = parse_hl7(GOOD.replace(b"\r", ending))
        assert len([s for s in message if str(s[0]) == "DG1"]) == 3


# --------------------------------------------------------------------------- splitting
def test_split_messages_handles_blank_lines_mllp_frames_and_preamble():
    two = feed("epic_style_v251.hl7")[:2]
    assert split_messages(b"\n\n".join(two)) == two
    assert split_messages(b"".join(b"\x0b" + m + b"\x1c\r" for m in two)) == two
    junk_first = split_messages(b"garbage line\n" + two[0])
    assert junk_first[0] == b"garbage line" and junk_first[1] == two[0]


# --------------------------------------------------------------------------- properties
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.binary(max_size=2000), st.text(max_size=2000)))
def test_arbitrary_input_yields_only_typed_errors(raw):
    translator = AdtTranslator(MemberIndex.from_members([member("M000001")]))
    try:
        translator.translate(raw)
    except Hl7Error as error:
        assert error.reason and error.detail


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_mutated_real_messages_yield_events_or_typed_errors(data):
    translator = AdtTranslator(
        MemberIndex.from_members([member("M000001", (EPIC_MRN_SYSTEM, "MRN100001"))]),
        AdtSettings(),
    )
    raw = bytearray(data.draw(st.sampled_from(feed("epic_style_v251.hl7"))))
    for _ in range(data.draw(st.integers(1, 8))):
        position = data.draw(st.integers(0, len(raw) - 1))
        action = data.draw(st.sampled_from(["flip", "delete", "insert"]))
        byte = data.draw(st.sampled_from(list(b"|^~\\&\r\x0b\x1c0A9 ")))
        if action == "flip":
            raw[position] = byte
        elif action == "delete":
            del raw[position]
        else:
            raw.insert(position, byte)
    try:
        result = translator.translate(bytes(raw))
    except Hl7Error as error:
        assert error.reason
    else:
        assert isinstance(result, AdtEvent | UnmatchedPatient)


def test_event_times_are_aware(translator):
    for raw in feed("epic_style_v251.hl7") + feed("meditech_style_v23.hl7"):
        event = translated(translator, raw).event
        assert event.time.tzinfo is not None and event.time < datetime(2030, 1, 1, tzinfo=UTC)


@pytest.mark.parametrize(("control_id", "expected"), [
    ("EPA-0009", "EPA-0009"),
    ("X" * 65, None),              # longer than an ACK may echo
    ("EPA\x07BEL", None),          # not printable
    ("", None),
])
def test_an_unparseable_message_still_reports_its_control_id_when_it_is_safe_to_echo(control_id, expected):
    truncated = f"MSH|^~\\&|EPIC|HOSP|CTH|PAYER|20260301120000||ADT^A01|{control_id}|P\r"
    with pytest.raises(Hl7Error) as caught:
        parse_hl7(truncated)
    assert (caught.value.reason, caught.value.control_id) == ("truncated", expected)
