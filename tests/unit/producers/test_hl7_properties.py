"""Property tests of the HL7 v2 side: whatever a hospital feed sends, the translator answers with a
typed result (an event or an unmatched patient) or the typed ``Hl7Error`` family, never another
exception; the MLLP frame reader and the file splitter never fail on any byte stream; an ACK
carries its code whatever reason text goes into MSA-3.

Example counts are bounded so the whole module runs in a few seconds.
"""

from __future__ import annotations

import asyncio
import re
from zoneinfo import ZoneInfo

import hl7
from cth_shared.producers.hl7_adt import (
    AdtEvent,
    AdtSettings,
    AdtTranslator,
    Hl7Error,
    MemberIndex,
    UnmatchedPatient,
    parse_hl7_timestamp,
    split_messages,
)
from cth_shared.producers.mllp import END_BLOCK, START_BLOCK, FrameReader, OversizeFrame, ack_code, build_ack, frame
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from producer_samples import MERCY_FACILITY, feed, member

BOUNDED = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

REASONS = {
    "oversize", "empty", "not_text", "missing_msh", "bad_encoding_characters", "truncated", "unparseable",
    "unsupported_message_type", "unsupported_trigger", "unsupported_version", "missing_field", "invalid_field",
    "unknown_facility", "invalid_event",
}

SAMPLES: list[bytes] = feed("epic_style_v251.hl7") + feed("meditech_style_v23.hl7")

# Characters that mean something to HL7 (separators, escapes, segment ends) or to a parser.
HL7_ALPHABET = st.sampled_from([*"|^~\\&\r\n\x0b\x1c \t0123456789AZaz.-+#%", "MSH", "PID", "PV1", "EVN"])
hl7_noise = st.lists(HL7_ALPHABET, max_size=40).map("".join)
field_values = hl7_noise | st.text(max_size=40) | st.sampled_from([
    "", "\\F\\", "\\E\\", "\\X0D\\", "99999999999999", "20260230", "20261301120000", "19000101",
    "2026030112000000000+9999", "A" * 300, "<script>alert(1)</script>", "'; DROP TABLE inbox;--", "\u202e\u0000\u0007",
])


def _translator() -> AdtTranslator:
    index = MemberIndex.from_members([
        member("M000001", ("urn:oid:2.16.840.1.113883.3.72.5.9.1", "MRN100001")),
        member("M000002", ("urn:cth:facility:MERCYWEST", "MW0042")),
    ])
    return AdtTranslator(index, AdtSettings(facility_timezone="America/Chicago",
                                            facilities={"MERCYWEST": MERCY_FACILITY}, max_message_bytes=64 * 1024))


TRANSLATOR = _translator()


def translated(raw: bytes | str) -> AdtEvent | UnmatchedPatient | None:
    """Translate ``raw``: the typed result, or None after a well-formed Hl7Error. Anything else propagates."""
    try:
        result = TRANSLATOR.translate(raw)
    except Hl7Error as error:
        assert error.reason in REASONS, error.reason
        assert isinstance(error.detail, str) and error.detail
        assert error.control_id is None or isinstance(error.control_id, str)
        return None
    assert isinstance(result, AdtEvent | UnmatchedPatient)
    if isinstance(result, AdtEvent):
        assert result.event.type.startswith("encounter.")
    return result


def test_the_sample_feeds_translate_to_typed_results() -> None:
    # The mutations below start from messages that work; make sure they do.
    results = [translated(message) for message in SAMPLES]
    assert SAMPLES and sum(isinstance(r, AdtEvent) for r in results) >= len(SAMPLES) // 2


@BOUNDED
@given(st.binary(max_size=2048))
def test_arbitrary_bytes_give_a_typed_result_or_a_typed_error(raw: bytes) -> None:
    translated(raw)


@BOUNDED
@given(st.text(max_size=2048))
def test_arbitrary_text_gives_a_typed_result_or_a_typed_error(raw: str) -> None:
    translated(raw)


@BOUNDED
@given(hl7_noise.map(lambda tail: "MSH|^~\\&|" + tail))
def test_a_header_followed_by_hl7_noise_gives_a_typed_result_or_a_typed_error(raw: str) -> None:
    translated(raw)


@st.composite
def mutated_messages(draw: st.DrawFn) -> bytes:
    """A sample ADT with one to four field/segment/byte-level mutations."""
    text = draw(st.sampled_from(SAMPLES)).decode("latin-1")
    segments = [s.split("|") for s in text.replace("\n", "\r").split("\r") if s]
    for _ in range(draw(st.integers(min_value=1, max_value=4))):
        operation = draw(st.sampled_from(["field", "drop_field", "drop_segment", "duplicate_segment", "cut", "bytes"]))
        s = draw(st.integers(min_value=0, max_value=len(segments) - 1))
        if operation == "field":
            f = draw(st.integers(min_value=1, max_value=max(1, len(segments[s]) + 2)))
            segments[s].extend([""] * (f + 1 - len(segments[s])))
            segments[s][f] = draw(field_values)
        elif operation == "drop_field" and len(segments[s]) > 1:
            del segments[s][draw(st.integers(min_value=1, max_value=len(segments[s]) - 1))]
        elif operation == "drop_segment" and len(segments) > 1:
            del segments[s]
        elif operation == "duplicate_segment":
            segments.insert(s, list(segments[s]))
        elif operation == "cut":
            joined = "\r".join("|".join(seg) for seg in segments)
            return joined[: draw(st.integers(min_value=0, max_value=len(joined)))].encode("latin-1", "replace")
        elif operation == "bytes":
            joined = "\r".join("|".join(seg) for seg in segments).encode("utf-8", "surrogatepass")
            at = draw(st.integers(min_value=0, max_value=len(joined)))
            return joined[:at] + draw(st.binary(min_size=1, max_size=16)) + joined[at:]
    return "\r".join("|".join(seg) for seg in segments).encode("utf-8", "surrogatepass")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_messages())
def test_mutated_real_messages_give_a_typed_result_or_a_typed_error(raw: bytes) -> None:
    translated(raw)


@BOUNDED
@given(st.binary(max_size=4096))
def test_split_messages_never_fails_and_never_invents_bytes(data: bytes) -> None:
    parts = split_messages(data)
    assert all(isinstance(p, bytes) and p.strip() for p in parts)
    for part in parts:
        translated(part)


@BOUNDED
@given(st.text(max_size=40))
def test_hl7_timestamps_parse_or_raise_value_error(value: str) -> None:
    try:
        parsed = parse_hl7_timestamp(value, ZoneInfo("America/Chicago"))
    except ValueError:
        return
    assert parsed is None or parsed.tzinfo is not None


@BOUNDED
@given(st.sampled_from(["AA", "AE", "AR"]), st.text(max_size=300))
def test_an_ack_keeps_its_code_whatever_the_reason_text(code: str, text: str) -> None:
    assert ack_code(build_ack(None, code, text)) == code
    original = hl7.parse(SAMPLES[0].decode("latin-1").replace("\n", "\r").strip())
    assert ack_code(build_ack(original, code, text)) == code


# ----------------------------------------------------------------------------- MLLP frame reader
def _read_all(chunks: list[bytes], max_frame_bytes: int) -> list[bytes | OversizeFrame]:
    async def run() -> list[bytes | OversizeFrame]:
        reader = asyncio.StreamReader()
        for chunk in chunks:
            reader.feed_data(chunk)
        reader.feed_eof()
        frames = FrameReader(reader, max_frame_bytes=max_frame_bytes, read_timeout=5, idle_timeout=5)
        out: list[bytes | OversizeFrame] = []
        while (item := await frames.read()) is not None:
            out.append(item)
            assert len(out) <= sum(len(c) for c in chunks) + 1, "the reader must make progress"
        return out

    return asyncio.run(run())


stream_pieces = st.lists(
    st.sampled_from([START_BLOCK, END_BLOCK, b"\x1c", b"\r", b"MSH|^~\\&|A\r"]) | st.binary(max_size=64),
    max_size=30,
)


@BOUNDED
@given(stream_pieces, st.integers(min_value=1, max_value=40), st.integers(min_value=8, max_value=256))
def test_the_frame_reader_survives_any_byte_stream_split_anywhere(
    pieces: list[bytes], chunk: int, max_frame_bytes: int
) -> None:
    data = b"".join(pieces)
    chunks = [data[i:i + chunk] for i in range(0, len(data), chunk)]
    for item in _read_all(chunks, max_frame_bytes):
        if isinstance(item, OversizeFrame):
            assert item.size > max_frame_bytes
        else:
            assert START_BLOCK not in item and len(item) <= max_frame_bytes
            translated(item)


@BOUNDED
@given(st.lists(st.binary(max_size=120).filter(lambda b: START_BLOCK not in b and END_BLOCK not in b), max_size=6),
       st.binary(max_size=20).filter(lambda b: START_BLOCK not in b), st.integers(min_value=1, max_value=50))
def test_well_framed_messages_come_back_exactly_whatever_the_junk_and_read_sizes(
    bodies: list[bytes], junk: bytes, chunk: int
) -> None:
    data = junk + b"".join(frame(body) for body in bodies)
    chunks = [data[i:i + chunk] for i in range(0, len(data), chunk)]
    assert _read_all(chunks, 1024) == bodies


def _sample_phi() -> set[str]:
    """Names, birth dates, addresses and diagnosis texts/codes of the sample feeds (PID-5/7/11, DG1-3)."""
    values: set[str] = set()
    for raw in SAMPLES:
        for segment in raw.decode("latin-1").replace("\n", "\r").split("\r"):
            fields = segment.split("|")
            wanted = {"PID": (5, 7, 11), "DG1": (3,)}.get(fields[0], ())
            for number in wanted:
                if number < len(fields):
                    for part in re.split(r"[\^~&]", fields[number]):
                        if (len(part) >= 4 and not part.isdigit()) or re.fullmatch(r"\d{8}", part):
                            values.add(part)
    return values


SAMPLE_PHI = _sample_phi()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_messages())
def test_an_hl7_error_never_echoes_patient_values(raw: bytes) -> None:
    assert len(SAMPLE_PHI) > 10
    try:
        TRANSLATOR.translate(raw)
    except Hl7Error as error:
        text = str(error)
        leaked = {value for value in SAMPLE_PHI if value in text}
        assert not leaked, (error.reason, text)
