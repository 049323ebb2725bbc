"""HL7 v2 ADT (A01 A02 A03 A04 A06 A08 A11 A13, v2.3-2.5.1) to encounter events.

Parsing uses the ``hl7`` library (python-hl7); this module only decides which fields
mean what, following the Da Vinci Unsolicited Notifications v2-to-FHIR map
(``shared/reference/davinci-alerts/v2-to-fhir-map.csv``):

=================  =====================================================================
MSH-10             ``source_message_id``; with MSH-3/MSH-4 it derives the event id, so a
                   resent message yields the same event id (idempotent downstream)
EVN-2 (EVN-6)      event time, UTC offset honoured; falls back to MSH-7; a timestamp
                   without an offset is read in the configured facility time zone
PID-3              patient identifiers (every repetition; system from the assigning
                   authority, PID-3.4); SSNs (PID-3.5 ``SS``) are never carried
PV1-2 (+PV1-18)    patient class: I inpatient, O outpatient, E emergency; ``O`` with
                   patient type (PV1-18) ``OBS`` is observation (configurable)
PV1-19             visit number, qualified by the facility NPI -> ``encounter_id``
PV1-36             NUBC discharge disposition (table 0112)
PD1-4 / ROL PP     the PCP as the hospital knows it (``reported_pcp_npi``)
IN1-36             policy (member) number: the payer member id when it is on the roster
DG1-3 / DG1-15     ICD-10 diagnoses; priority 1 is the principal diagnosis
PV1-44 / PV1-45    admit / discharge date-times
=================  =====================================================================

Trigger mapping: A01 and A04 -> ``encounter.admitted``; A02 -> ``encounter.transferred``;
A06 -> ``encounter.transferred`` with ``from_patient_class``; A03 ->
``encounter.discharged``; A08 -> ``encounter.admitted`` (or ``encounter.discharged`` when
PV1-45 says the patient has left); A11 / A13 -> ``encounter.cancelled``.

Every failure is an :class:`Hl7Error` with a stable ``reason`` and a ``detail`` that
names fields, never values (no PHI). A patient who is not one of the payer's members is an
:class:`UnmatchedPatient` result: returned to the caller to count and report.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import hl7
from hl7.util import unescape
from pydantic import ValidationError

from cth_shared.contracts import (
    NUBC_DISCHARGE_DISPOSITIONS,
    CloudEvent,
    PatientClass,
    new_event,
    npi_check_digit_ok,
)
from cth_shared.contracts.events import (
    Diagnosis,
    EncounterAdmitted,
    EncounterCancelled,
    EncounterDischarged,
    EncounterTransferred,
    Facility,
    Identifier,
    MemberSnapshot,
)

__all__ = [
    "DEFAULT_MAX_MESSAGE_BYTES",
    "SUPPORTED_TRIGGERS",
    "SUPPORTED_VERSIONS",
    "AdtEvent",
    "AdtSettings",
    "AdtTranslator",
    "Hl7Error",
    "MemberIndex",
    "UnmatchedPatient",
    "parse_hl7",
    "parse_hl7_timestamp",
    "split_messages",
]

DEFAULT_MAX_MESSAGE_BYTES = 1_048_576
SUPPORTED_VERSIONS = frozenset({"2.3", "2.3.1", "2.4", "2.5", "2.5.1"})
SUPPORTED_TRIGGERS = frozenset({"A01", "A02", "A03", "A04", "A06", "A08", "A11", "A13"})
#: DG1-3.3 coding systems that carry ICD-10-CM (HL7 table 0396 and common variants).
ICD10_SYSTEMS = frozenset({"I10", "I10C", "ICD10", "ICD-10", "ICD10CM", "ICD-10-CM", "2.16.840.1.113883.6.90"})

_TS_RE = re.compile(
    r"^(?P<y>\d{4})(?P<mo>\d{2})?(?P<d>\d{2})?(?P<h>\d{2})?(?P<mi>\d{2})?(?P<s>\d{2})?"
    r"(?:\.(?P<frac>\d{1,4}))?(?P<off>[+-]\d{4})?$"
)
_SAFE_CHARS_RE = re.compile(r"[^A-Za-z0-9._:\-]")
_SAFE_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:\-]{0,63}$")
_SYSTEM_BAD_RE = re.compile(r"[\x00-\x20\x7f]")
_CONTROL_CHARS_RE = re.compile(r"[\x00-\x1f\x7f]")
_HEADER_SEGMENTS = frozenset({"MSH", "BHS", "FHS"})


class _NoFieldValues(logging.Filter):
    """python-hl7 logs raw segments and field values (``Error unescaping value [...]``), which can
    be identifiers or names (PHI). Keep the library's message template, drop its arguments."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.args:
            record.msg = f"python-hl7: {str(record.msg).split('[', 1)[0].strip()} (values withheld)"
            record.args = ()
        record.exc_info = None
        record.exc_text = None
        return True


# The library names its loggers by file path (``logging.getLogger(__file__)``), not "hl7".
for _module in (hl7.util, hl7.containers):
    logging.getLogger(_module.__file__).addFilter(_NoFieldValues())


class Hl7Error(ValueError):
    """An HL7 v2 message we cannot turn into an event.

    ``reason`` is a stable machine code: ``oversize``, ``empty``, ``not_text``,
    ``missing_msh``, ``bad_encoding_characters``, ``truncated``, ``unparseable``,
    ``unsupported_message_type``, ``unsupported_trigger``, ``unsupported_version``,
    ``missing_field``, ``invalid_field``, ``unknown_facility``, ``invalid_event``.
    ``detail`` names segments and fields, never their values (no PHI).
    ``control_id`` is MSH-10 when the header could be read (for the ACK's MSA-2).
    """

    def __init__(self, reason: str, detail: str, *, control_id: str | None = None) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
        self.control_id = control_id


@dataclass(frozen=True)
class UnmatchedPatient:
    """A valid ADT whose patient is not (unambiguously) one of the payer's members.

    Carries no PHI: only the message control id, trigger, facility NPI and the identifier
    *systems* that were tried, so it can be logged and counted safely.
    """

    control_id: str
    trigger: str
    facility_npi: str
    identifier_systems: tuple[str, ...]
    reason: str  # "no_matching_member" | "ambiguous_identifiers"

    def __str__(self) -> str:
        systems = ",".join(self.identifier_systems) or "none"
        return (
            f"unmatched patient ({self.reason}) in {self.trigger} message {self.control_id} "
            f"from facility {self.facility_npi}; identifier systems tried: {systems}"
        )


@dataclass(frozen=True)
class AdtEvent:
    """A translated ADT message: the event to publish and what was skipped along the way."""

    event: CloudEvent[Any]
    control_id: str
    trigger: str
    warnings: tuple[str, ...] = ()


class MemberIndex:
    """Resolves hospital patient identifiers to payer member ids.

    Built from the enrollment roster (``MemberSnapshot.identifiers``). An identifier that
    two members share is ambiguous and never resolves (a wrong match would alert the wrong
    care team).
    """

    _AMBIGUOUS = "\x00ambiguous"

    def __init__(self) -> None:
        self._by_identifier: dict[tuple[str, str], str] = {}
        self._members: set[str] = set()

    @classmethod
    def from_members(cls, members: Iterable[MemberSnapshot]) -> MemberIndex:
        """An index over ``members`` (any iterable of enrollment snapshots)."""
        index = cls()
        for member in members:
            index.add(member)
        return index

    def add(self, member: MemberSnapshot) -> None:
        """Add or update one member's identifiers."""
        self._members.add(member.member_id)
        for ident in member.identifiers:
            key = (ident.system, ident.value)
            known = self._by_identifier.get(key)
            if known is None or known == member.member_id:
                self._by_identifier[key] = member.member_id
            else:
                self._by_identifier[key] = self._AMBIGUOUS

    def is_member(self, member_id: str) -> bool:
        """True when ``member_id`` is on the roster."""
        return member_id in self._members

    def lookup(self, identifiers: Iterable[Identifier]) -> tuple[str | None, str]:
        """``(member_id, "matched")`` or ``(None, reason)`` for a patient's identifiers."""
        found: set[str] = set()
        ambiguous = False
        for ident in identifiers:
            member = self._by_identifier.get((ident.system, ident.value))
            if member == self._AMBIGUOUS:
                ambiguous = True
            elif member is not None:
                found.add(member)
        if len(found) == 1 and not ambiguous:
            return next(iter(found)), "matched"
        if found or ambiguous:
            return None, "ambiguous_identifiers"
        return None, "no_matching_member"

    def __len__(self) -> int:
        return len(self._members)


@dataclass
class AdtSettings:
    """How to read one organisation's ADT feed. Every field has a working default.

    ``facilities`` maps a sending facility (MSH-4.1 namespace or MSH-4.2 universal id) to
    the facility record when the feed does not carry a facility NPI (EVN-7, PV1-3.4,
    MSH-4). ``assigning_authorities`` maps a PID-3.4 namespace to an identifier system URI.
    """

    tenant: str = "payer-demo"
    facility_timezone: str = "America/New_York"
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    observation_patient_types: frozenset[str] = frozenset({"OBS", "OBSERVATION", "OB"})
    emergency_patient_types: frozenset[str] = frozenset({"ER", "ED", "EMER", "EMERGENCY"})
    patient_class_map: Mapping[str, PatientClass] = field(
        default_factory=lambda: {
            "I": PatientClass.INPATIENT,
            "O": PatientClass.OUTPATIENT,
            "E": PatientClass.EMERGENCY,
            "R": PatientClass.OUTPATIENT,
            "B": PatientClass.INPATIENT,
            "OBS": PatientClass.OBSERVATION,
        }
    )
    facilities: Mapping[str, Facility] = field(default_factory=dict)
    assigning_authorities: Mapping[str, str] = field(default_factory=dict)
    default_disposition: str | None = None
    a06_default_from_class: PatientClass = PatientClass.OUTPATIENT

    def zone(self) -> ZoneInfo:
        try:
            return ZoneInfo(self.facility_timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown facility time zone {self.facility_timezone!r}") from None


# --------------------------------------------------------------------------- parsing
def _decode(raw: bytes) -> str:
    if b"\x00" in raw:
        raise Hl7Error("not_text", "message contains NUL bytes; HL7 v2 is text")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        # Legacy feeds send ISO-8859-1 / Windows-1252 without declaring MSH-18.
        return raw.decode("latin-1")


def _normalise(text: str) -> str:
    text = text.lstrip("\ufeff \t\r\n")
    # Files and some interfaces use LF or CRLF between segments; HL7 uses CR.
    return text.replace("\r\n", "\r").replace("\n", "\r").strip("\r \t")


def parse_hl7(
    raw: bytes | str,
    *,
    max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    segments: Collection[str] | None = None,
) -> hl7.Message:
    """Parse one HL7 v2 message with the ``hl7`` library after structural checks.

    Raises :class:`Hl7Error` (never anything else): ``oversize`` above ``max_bytes``,
    ``missing_msh`` when the message does not start with MSH, ``bad_encoding_characters``
    for an unusable MSH-1/MSH-2, ``truncated`` when MSH stops before MSH-12.

    ``segments`` (e.g. :data:`AdtTranslator.SEGMENTS`) limits what the library parses to MSH
    and the segments with those names: the library builds a container per field, component
    and repetition, so segments nobody reads (NK1, OBX, AL1, GT1, Z-segments ...) would cost
    as much as the ones we map. Every segment is parsed when it is None.
    """
    size = len(raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else raw)
    if size > max_bytes:
        raise Hl7Error("oversize", f"message is {size} bytes; the limit is {max_bytes} bytes")
    text = _normalise(_decode(raw) if isinstance(raw, bytes) else raw)
    if not text:
        raise Hl7Error("empty", "no message content")
    if "\x00" in text:
        raise Hl7Error("not_text", "message contains NUL characters; HL7 v2 is text")
    if not text.startswith("MSH"):
        raise Hl7Error("missing_msh", "a message must start with an MSH segment")
    _check_encoding_characters(text)
    control_id = raw_control_id(text)  # for the ACK's MSA-2 when the library cannot read the message
    if text.count("\rMSH" + text[3]) > 0:
        raise Hl7Error("unparseable", "more than one MSH segment; send one message per frame",
                       control_id=control_id)
    if segments is not None and "\r\r" not in text:  # an empty segment: parse all, as before
        selected = _select_segments(text, segments)
        if not selected[-1].isspace():  # the library strips the end: keep the last segment whole
            text = selected
    try:
        message = hl7.parse(text)
    except Exception as exc:  # the library raises assorted errors on malformed input
        raise Hl7Error("unparseable", f"the HL7 parser rejected the message ({type(exc).__name__})",
                       control_id=control_id) from None
    msh = message[0]
    if len(msh) <= 12 or not _text(msh, 9) or not _text(msh, 12):
        raise Hl7Error("truncated", "MSH ends before MSH-12 (version id); the message looks cut off",
                       control_id=control_id)
    return message


def raw_control_id(text: str) -> str | None:
    """MSH-10 (message control id) read from the raw header, for an ACK's MSA-2 when the message
    cannot be parsed or acknowledged by the library: the sender matches ACKs to messages by it.

    ``text`` starts with MSH and valid encoding characters (``parse_hl7``'s checks). None when
    absent, longer than 64 characters or not printable (an ACK must not echo arbitrary bytes)."""
    fields = text.split("\r", 1)[0].split(text[3])
    return _echoable_control_id(fields[9] if len(fields) > 9 else "")


def header_control_id(message: hl7.Message) -> str | None:
    """MSH-10 of a parsed message (see :func:`raw_control_id`), None when unreadable."""
    try:
        value = _text(message[0], 10)
    except Exception:  # an odd header: no id rather than an error on the way to an ACK
        return None
    return _echoable_control_id(value)


def _echoable_control_id(value: str) -> str | None:
    """``value`` stripped, when an ACK may echo it: present, at most 64 characters, printable."""
    value = value.strip()
    return value if value and len(value) <= 64 and value.isprintable() else None


def _select_segments(text: str, names: Collection[str]) -> str:
    """The segments named ``names``, in order (a name as the library reads it: the text before
    the first field separator) and every line the library reads as a header (MSH, BHS, FHS: it
    may reject those, and must go on doing so). The library parses each segment on its own, so
    the segments kept come out exactly as from the whole message."""
    field_sep = text[3]
    return "\r".join(
        line
        for line in text.split("\r")
        if (line[:3] in names and (len(line) == 3 or line[3] == field_sep)) or line[:3] in _HEADER_SEGMENTS
    )


def _check_encoding_characters(text: str) -> None:
    if len(text) < 8:
        raise Hl7Error("truncated", "message ends inside MSH-2 (encoding characters)")
    field_sep = text[3]
    end = text.find(field_sep, 4)
    encoding = text[4:end] if end != -1 else ""
    chars = field_sep + encoding
    valid = (
        end != -1
        and len(encoding) in (4, 5)
        and len(set(chars)) == len(chars)
        and all(not c.isalnum() and not c.isspace() and c.isprintable() for c in chars)
    )
    if not valid:
        raise Hl7Error(
            "bad_encoding_characters",
            "MSH-1/MSH-2 must be a field separator and 4 distinct non-alphanumeric encoding "
            "characters (e.g. |^~\\&)",
        )


def split_messages(data: bytes) -> list[bytes]:
    """Split a file's bytes into single messages.

    MLLP-framed content (0x0B ... 0x1C 0x0D) is split on the frames; otherwise every
    segment starting with ``MSH`` opens a new message and blank lines are ignored. Text
    before the first MSH comes back as its own item so the caller reports it (it is never
    dropped or logged). Batch/file envelopes (FHS, BHS, BTS, FTS) are skipped.
    """
    if b"\x0b" in data:
        frames = []
        for chunk in data.split(b"\x0b")[1:]:
            body = chunk.split(b"\x1c", 1)[0]
            if body.strip():
                frames.append(body)
        leading = data.split(b"\x0b", 1)[0]
        return ([leading] if leading.strip() else []) + frames
    messages: list[list[bytes]] = []
    preamble: list[bytes] = []
    for line in data.replace(b"\r\n", b"\r").replace(b"\n", b"\r").split(b"\r"):
        stripped = line.strip()
        if not stripped or stripped[:3] in (b"FHS", b"BHS", b"BTS", b"FTS"):
            continue
        if stripped.startswith(b"MSH"):
            messages.append([stripped])
        elif messages:
            messages[-1].append(stripped)
        else:
            preamble.append(stripped)
    result = [b"\r".join(m) + b"\r" for m in messages]
    return ([b"\r".join(preamble)] if preamble else []) + result


# --------------------------------------------------------------------------- field access
_list_item = list.__getitem__  # the containers' own __getitem__ only adds slice handling


def _text(segment: Any, field_no: int, rep: int = 1, comp: int = 1, sub: int = 1) -> str:
    """A field value (unescaped: \\F\\ \\S\\ \\T\\ \\R\\ \\E\\ resolved), '' when absent.

    The same result as ``segment.extract_field(1, field_no, rep, comp, sub)`` (an absent
    path is ''), read straight from the parsed containers: this runs ~35 times per message,
    and the library's accessor costs several times the lookup itself.
    """
    try:
        if field_no >= len(segment):
            return ""
        value = _list_item(_list_item(segment, field_no), rep - 1)
        if isinstance(value, hl7.Repetition):
            if comp > len(value):
                return ""
            value = _list_item(value, comp - 1)
            if isinstance(value, hl7.Component):
                if sub > len(value):
                    return ""
                value = _list_item(value, sub - 1)
            elif sub != 1:
                return ""
        elif comp != 1 or sub != 1:
            return ""
        elif field_no in (1, 2) and _list_item(_list_item(segment, 0), 0) == "MSH":
            return str(value).strip()  # MSH-1/MSH-2 are the separators themselves, never unescaped
        if value and segment.esc in value:
            value = unescape(segment, value)
    except (IndexError, KeyError, AttributeError, TypeError):
        return ""
    return str(value).strip() if value is not None else ""


def _repetitions(segment: Any, field_no: int) -> int:
    if field_no >= len(segment):
        return 0
    value = segment[field_no]
    if value and isinstance(value[0], hl7.Repetition):
        return len(value)
    return 1 if str(value) else 0


Segments = dict[str, list[Any]]


def _index_segments(message: hl7.Message) -> Segments:
    """The message's segments by name (in order), from one pass over the message."""
    found: Segments = {}
    for segment in message:
        found.setdefault(str(segment[0]), []).append(segment)
    return found


def _first(segments: Segments, name: str) -> Any | None:
    found = segments.get(name)
    return found[0] if found else None


def parse_hl7_timestamp(value: str, zone: timezone | ZoneInfo) -> datetime | None:
    """An HL7 DTM/TS value as an aware datetime; ``zone`` applies when there is no offset.

    Returns None for an empty value; raises ValueError for a malformed one.
    """
    value = value.strip()
    if not value:
        return None
    match = _TS_RE.match(value)
    if match is None:
        raise ValueError("not an HL7 timestamp (YYYY[MM[DD[HH[MM[SS[.S]]]]]][+/-ZZZZ])")
    parts = match.groupdict()
    frac = parts["frac"] or ""
    moment = datetime(
        int(parts["y"]),
        int(parts["mo"] or 1),
        int(parts["d"] or 1),
        int(parts["h"] or 0),
        int(parts["mi"] or 0),
        int(parts["s"] or 0),
        int(frac.ljust(6, "0")) if frac else 0,
    )
    if moment.year < 1900:
        raise ValueError("timestamp before 1900")
    offset = parts["off"]
    if offset:
        sign = 1 if offset[0] == "+" else -1
        hours, minutes = int(offset[1:3]), int(offset[3:5])
        if hours > 14 or minutes > 59:
            raise ValueError("UTC offset out of range")
        return moment.replace(tzinfo=timezone(sign * timedelta(hours=hours, minutes=minutes)))
    return moment.replace(tzinfo=zone)


def _safe(value: str) -> str:
    cleaned = _SAFE_CHARS_RE.sub("-", value).strip("-.:_")
    return cleaned[:64]


# --------------------------------------------------------------------------- translation
class AdtTranslator:
    """Turns ADT messages into encounter events for one tenant's member index.

    Thread-unsafe but cheap: one per listener / CLI run. ``index`` is read at translation
    time, so members enrolled later are matched by later messages.
    """

    #: The segments the mapping reads: pass as ``parse_hl7(..., segments=...)`` to skip the rest.
    SEGMENTS = frozenset({"EVN", "PID", "PD1", "ROL", "PV1", "PV2", "IN1", "DG1"})

    def __init__(self, index: MemberIndex, settings: AdtSettings | None = None) -> None:
        self.index = index
        self.settings = settings or AdtSettings()
        self._zone = self.settings.zone()

    def translate(self, raw: bytes | str | hl7.Message) -> AdtEvent | UnmatchedPatient:
        """Parse and map one message. Raises :class:`Hl7Error` only."""
        message = raw if isinstance(raw, hl7.Message) else parse_hl7(
            raw, max_bytes=self.settings.max_message_bytes, segments=self.SEGMENTS
        )
        control_id = None
        try:
            control_id = _text(message[0], 10) or None
            return self._translate(message, control_id)
        except Hl7Error as exc:
            exc.control_id = exc.control_id or control_id
            raise
        except Exception as exc:  # defensive: malformed input must never escape untyped
            raise Hl7Error(
                "unparseable", f"could not read the message ({type(exc).__name__})", control_id=control_id
            ) from None

    __call__ = translate

    # -- the mapping ---------------------------------------------------------------------
    def _translate(self, message: hl7.Message, control_id: str | None) -> AdtEvent | UnmatchedPatient:
        msh = message[0]
        warnings: list[str] = []
        if not control_id:
            raise Hl7Error("missing_field", "MSH-10 (message control id) is required")
        if len(control_id) > 64:
            raise Hl7Error("invalid_field", "MSH-10 is longer than 64 characters")
        version = _text(msh, 12)
        if version not in SUPPORTED_VERSIONS:
            raise Hl7Error(
                "unsupported_version",
                f"MSH-12 version is not one of {', '.join(sorted(SUPPORTED_VERSIONS))}",
            )
        message_code = _text(msh, 9, 1, 1)
        if message_code != "ADT":
            raise Hl7Error("unsupported_message_type", "MSH-9.1 must be ADT")
        segments = _index_segments(message)
        evn = _first(segments, "EVN")
        trigger = _text(msh, 9, 1, 2) or (_text(evn, 1) if evn is not None else "")
        if trigger not in SUPPORTED_TRIGGERS:
            raise Hl7Error(
                "unsupported_trigger",
                f"MSH-9.2 trigger must be one of {', '.join(sorted(SUPPORTED_TRIGGERS))}",
            )
        pid = _first(segments, "PID")
        pv1 = _first(segments, "PV1")
        if pid is None or pv1 is None:
            missing = " and ".join(n for n, s in (("PID", pid), ("PV1", pv1)) if s is None)
            raise Hl7Error("truncated", f"required segment {missing} is missing")

        event_time = self._event_time(msh, evn)
        facility = self._facility(msh, evn, pv1, segments)
        identifiers = self._identifiers(msh, pid, warnings)
        member_id = self._member_id(segments, identifiers)
        if member_id is None:
            _, reason = self.index.lookup(identifiers)
            return UnmatchedPatient(
                control_id=control_id,
                trigger=trigger,
                facility_npi=facility.npi,
                identifier_systems=tuple(dict.fromkeys(i.system for i in identifiers)),
                reason=reason,
            )
        patient_class = self._patient_class(pv1)
        visit = _text(pv1, 19) or _text(pid, 18)
        if not visit:
            raise Hl7Error("missing_field", "PV1-19 (visit number) and PID-18 (account number) are both empty")
        encounter_id = _safe(f"{facility.npi}-{visit}")
        if not _SAFE_ID_RE.match(encounter_id):
            raise Hl7Error("invalid_field", "PV1-19 visit number has no usable characters")
        admitted_at = self._timestamp(pv1, 44, "PV1-44")
        discharged_at = self._timestamp(pv1, 45, "PV1-45")
        common: dict[str, Any] = {
            "encounter_id": encounter_id,
            "member_id": member_id,
            "facility": facility,
            "patient_class": patient_class,
            "trigger": trigger,
            "source_message_id": control_id,
            "patient_identifiers": identifiers[:20],
            "attending_npi": self._npi(_text(pv1, 7), "PV1-7", warnings),
            "reported_pcp_npi": self._pcp(segments, warnings),
        }
        data: Any
        if trigger in ("A01", "A04") or (trigger == "A08" and discharged_at is None):
            data = self._model(
                EncounterAdmitted,
                common,
                admitted_at=admitted_at or event_time,
                diagnoses=self._diagnoses(segments, warnings),
            )
        elif trigger in ("A03", "A08"):
            data = self._model(
                EncounterDischarged,
                common,
                admitted_at=admitted_at,
                discharged_at=discharged_at or event_time,
                disposition=self._disposition(pv1),
                diagnoses=self._diagnoses(segments, warnings),
            )
        elif trigger == "A02":
            data = self._model(
                EncounterTransferred,
                common,
                transferred_at=event_time,
                to_unit=_text(pv1, 3, 1, 1) or None,
            )
        elif trigger == "A06":
            data = self._model(
                EncounterTransferred,
                common,
                transferred_at=event_time,
                from_patient_class=self._prior_class(pv1),
                to_unit=_text(pv1, 3, 1, 1) or None,
            )
        else:  # A11, A13
            data = self._model(
                EncounterCancelled,
                common,
                cancels="admit" if trigger == "A11" else "discharge",
                cancelled_at=event_time,
            )
        source = _safe(f"hl7v2:{_text(msh, 3)}:{_text(msh, 4)}") or "hl7v2"
        event_id = "hl7-" + hashlib.sha256(
            f"{_text(msh, 3)}|{_text(msh, 4)}|{control_id}".encode()
        ).hexdigest()[:40]
        try:
            event = new_event(
                data,
                subject=member_id,
                source=source,
                tenant=self.settings.tenant,
                time=event_time,
                event_id=event_id,
                correlation_id=encounter_id,
            )
        except ValidationError as exc:
            raise Hl7Error("invalid_event", _describe(exc)) from None
        return AdtEvent(event=event, control_id=control_id, trigger=trigger, warnings=tuple(warnings))

    def _model(self, model: type[Any], common: dict[str, Any], **fields: Any) -> Any:
        try:
            return model(**common, **fields)
        except ValidationError as exc:
            raise Hl7Error("invalid_event", _describe(exc)) from None

    def _timestamp(self, segment: Any, field_no: int, name: str) -> datetime | None:
        try:
            return parse_hl7_timestamp(_text(segment, field_no, 1, 1), self._zone)
        except ValueError as exc:
            raise Hl7Error("invalid_field", f"{name} is not a valid timestamp: {exc}") from None

    def _event_time(self, msh: Any, evn: Any | None) -> datetime:
        # EVN-6 (event occurred) is the clinical moment; EVN-2 is when it was recorded.
        for segment, field_no, name in ((evn, 6, "EVN-6"), (evn, 2, "EVN-2"), (msh, 7, "MSH-7")):
            if segment is None:
                continue
            moment = self._timestamp(segment, field_no, name)
            if moment is not None:
                return moment
        raise Hl7Error("missing_field", "no event time in EVN-6, EVN-2 or MSH-7")

    def _facility(self, msh: Any, evn: Any | None, pv1: Any, segments: Segments) -> Facility:
        configured = self.settings.facilities.get(_text(msh, 4, 1, 1)) or self.settings.facilities.get(
            _text(msh, 4, 1, 2)
        )
        npi = ""
        candidates = []
        if evn is not None:
            candidates.append((_text(evn, 7, 1, 2), _text(evn, 7, 1, 3), "EVN-7"))
        candidates.append((_text(pv1, 3, 1, 4, 2), _text(pv1, 3, 1, 4, 3), "PV1-3.4"))
        candidates.append((_text(msh, 4, 1, 2), _text(msh, 4, 1, 3), "MSH-4"))
        for value, kind, name in candidates:
            if value and kind.upper() == "NPI":
                if not npi_check_digit_ok(value):
                    raise Hl7Error("invalid_field", f"{name} facility NPI fails the NPI check digit")
                npi = value
                break
        if not npi and configured is not None:
            npi = configured.npi
        if not npi:
            raise Hl7Error(
                "unknown_facility",
                "no facility NPI in EVN-7, PV1-3.4 or MSH-4 and the sending facility (MSH-4) is not configured",
            )
        pv2 = _first(segments, "PV2")
        name = (
            (_text(pv2, 23, 1, 1) if pv2 is not None else "")
            or (configured.name if configured is not None else "")
            or _text(pv1, 3, 1, 4, 1)
            or _text(msh, 4, 1, 1)
            or npi
        )
        name = _CONTROL_CHARS_RE.sub(" ", name)[:200]
        return Facility(npi=npi, name=name, tin=configured.tin if configured is not None else None)

    def _identifiers(self, msh: Any, pid: Any, warnings: list[str]) -> list[Identifier]:
        result: list[Identifier] = []
        for rep in range(1, _repetitions(pid, 3) + 1):
            value = _text(pid, 3, rep, 1)
            id_type = _text(pid, 3, rep, 5).upper()
            if not value or id_type == "SS":  # never carry social security numbers
                continue
            system = self._system(
                _text(pid, 3, rep, 4, 1), _text(pid, 3, rep, 4, 2), _text(pid, 3, rep, 4, 3), msh
            )
            if not _SAFE_ID_RE.match(value):
                warnings.append(f"PID-3 repetition {rep} has characters outside the identifier alphabet; skipped")
                continue
            result.append(Identifier(system=system, value=value))
        return result

    def _system(self, namespace: str, universal_id: str, universal_type: str, msh: Any) -> str:
        if namespace and namespace in self.settings.assigning_authorities:
            system = self.settings.assigning_authorities[namespace]
        elif universal_id and universal_type.upper() == "ISO":
            system = f"urn:oid:{universal_id}"
        elif universal_id:
            system = f"urn:cth:aa:{universal_type.lower() or 'id'}:{universal_id}"
        elif namespace:
            system = f"urn:cth:aa:{namespace}"
        else:
            # No assigning authority: the identifier is scoped by the sending facility.
            system = f"urn:cth:facility:{_text(msh, 4, 1, 1) or 'unknown'}"
        return _SYSTEM_BAD_RE.sub("-", system)[:128]

    def _member_id(self, segments: Segments, identifiers: list[Identifier]) -> str | None:
        for in1 in segments.get("IN1", ()):
            policy = _text(in1, 36)
            if policy and self.index.is_member(policy):
                return policy
        member, _ = self.index.lookup(identifiers)
        return member

    def _patient_class(self, pv1: Any) -> PatientClass:
        code = _text(pv1, 2).upper()
        patient_type = _text(pv1, 18).upper()
        if code == "O" and patient_type in self.settings.observation_patient_types:
            return PatientClass.OBSERVATION
        mapped = self.settings.patient_class_map.get(code)
        if mapped is None:
            if not code:
                raise Hl7Error("missing_field", "PV1-2 (patient class) is required")
            raise Hl7Error("invalid_field", "PV1-2 patient class is not mapped (expected I, O, E or a configured code)")
        return mapped

    def _prior_class(self, pv1: Any) -> PatientClass:
        # A06 carries the *new* class in PV1-2; the prior one is inferred from the patient type.
        patient_type = _text(pv1, 18).upper()
        if patient_type in self.settings.observation_patient_types:
            return PatientClass.OBSERVATION
        if patient_type in self.settings.emergency_patient_types:
            return PatientClass.EMERGENCY
        return self.settings.a06_default_from_class

    def _disposition(self, pv1: Any) -> str:
        code = _text(pv1, 36, 1, 1)
        if not code:
            if self.settings.default_disposition is not None:
                return self.settings.default_disposition
            raise Hl7Error("missing_field", "PV1-36 (discharge disposition) is required for a discharge")
        if code.isdigit() and len(code) == 1:
            code = "0" + code  # some systems drop the leading zero of NUBC codes
        if code not in NUBC_DISCHARGE_DISPOSITIONS:
            raise Hl7Error("invalid_field", "PV1-36 is not a NUBC discharge disposition code")
        return code

    def _npi(self, value: str, name: str, warnings: list[str]) -> str | None:
        if not value:
            return None
        if npi_check_digit_ok(value):
            return value
        warnings.append(f"{name} is not a valid NPI; ignored")
        return None

    def _pcp(self, segments: Segments, warnings: list[str]) -> str | None:
        for rol in segments.get("ROL", ()):
            if _text(rol, 3, 1, 1).upper() == "PP":
                npi = self._npi(_text(rol, 4, 1, 1), "ROL-4", warnings)
                if npi:
                    return npi
        pd1 = _first(segments, "PD1")
        if pd1 is not None:
            return self._npi(_text(pd1, 4, 1, 1), "PD1-4", warnings)
        return None

    def _diagnoses(self, segments: Segments, warnings: list[str]) -> list[Diagnosis]:
        diagnoses: list[Diagnosis] = []
        seen: set[str] = set()
        for position, dg1 in enumerate(segments.get("DG1", ()), start=1):
            code = _text(dg1, 3, 1, 1).upper()
            system = _text(dg1, 3, 1, 3).upper() or _text(dg1, 2).upper()
            if not code or code in seen:
                continue
            if system and system not in ICD10_SYSTEMS:
                warnings.append(f"DG1 {position} is not coded in ICD-10-CM; skipped")
                continue
            try:
                diagnosis = Diagnosis(code=code, primary=_text(dg1, 15) == "1")
            except ValidationError:
                warnings.append(f"DG1 {position} code is not a valid ICD-10-CM code; skipped")
                continue
            seen.add(code)
            diagnoses.append(diagnosis)
            if len(diagnoses) == 50:
                break
        return diagnoses


def _describe(error: ValidationError) -> str:
    parts = []
    for item in error.errors(include_input=False, include_url=False)[:5]:
        location = ".".join(str(p) for p in item["loc"]) or "<root>"
        parts.append(f"{location}: {item['msg']}")
    return "; ".join(parts)

