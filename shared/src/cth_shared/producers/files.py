"""Roster, claims and provider-directory files (CSV or NDJSON) to events, streamed.

Every reader is a generator over the file's lines: memory stays constant whatever the file
size. Each yields either a :class:`~cth_shared.contracts.CloudEvent` or a :class:`RowError`
(line number and reason, no PHI) and always carries on with the next row.

CSV columns (header row required; order free; extra columns are an error):

* roster: member_id, plan_id, network_id, product, virtual_first, v1c_group_npi,
  effective_date, termination_date, given_name, family_name, birth_date, sex, address_line,
  city, state, postal_code, latitude, longitude, risk_score, care_manager_id,
  selected_pcp_npi, identifiers (``system|value`` pairs separated by ``;``)
* claims (one row per claim line; a claim's lines are contiguous): claim_id, member_id,
  status, replaces_claim_id, billing_tin, adjudicated_on, line_number, procedure_code,
  modifiers (``;``), rendering_npi, rendering_tin, rendering_taxonomy, place_of_service,
  service_from, service_to, units, allowed_amount, diagnoses (``;``)
* providers: npi, name, organization_name, tin, taxonomy, role, services (``;``), networks
  (``network:tier`` separated by ``;``), latitude, longitude, accepting, capacity,
  quality_score, cost_index, virtual_capable, active

NDJSON rows are the event's ``data`` object (``MemberEnrolled``, ``ProviderUpserted``); a
claims NDJSON row is either a whole claim (with ``lines``) or one flat claim-line row as in
the CSV.
"""

from __future__ import annotations

import csv
import hashlib
import json
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, time
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ValidationError

from cth_shared.contracts import CloudEvent, new_event
from cth_shared.contracts.events import ClaimAdjudicated, MemberEnrolled, ProviderUpserted

__all__ = [
    "DEFAULT_MAX_LINE_BYTES",
    "FileKind",
    "RowError",
    "detect_kind",
    "read_claims",
    "read_file",
    "read_providers",
    "read_roster",
]

DEFAULT_MAX_LINE_BYTES = 65_536
FileKind = Literal["roster", "claims", "providers"]
#: How many recent claim ids are remembered to catch a claim split across the file.
RECENT_CLAIM_WINDOW = 10_000


@dataclass(frozen=True)
class RowError:
    """A rejected row: 1-based line number and a reason naming fields, never values."""

    line: int
    reason: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.reason}"


FileItem = CloudEvent[Any] | RowError


# --------------------------------------------------------------------------- line sources
def _lines(path: Path, max_line_bytes: int) -> Iterator[tuple[int, str | RowError]]:
    """(line number, decoded text | error) for each physical line, one at a time."""
    with path.open("rb") as handle:
        number = 0
        while True:
            raw = handle.readline(max_line_bytes + 1)
            if not raw:
                return
            number += 1
            if len(raw) > max_line_bytes and not raw.endswith(b"\n"):
                # Skip the rest of the over-long line without holding it.
                while raw and not raw.endswith(b"\n"):
                    raw = handle.readline(max_line_bytes + 1)
                yield number, RowError(number, f"line longer than {max_line_bytes} bytes")
                continue
            try:
                text = raw.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError:
                yield number, RowError(number, "line is not valid UTF-8")
                continue
            yield number, text


def _describe(error: ValidationError) -> str:
    parts = []
    for item in error.errors(include_input=False, include_url=False)[:5]:
        location = ".".join(str(p) for p in item["loc"]) or "<root>"
        parts.append(f"{location}: {item['msg']}")
    return "; ".join(parts)


def _csv_rows(path: Path, max_line_bytes: int) -> Iterator[tuple[int, dict[str, str] | RowError]]:
    header: list[str] | None = None
    for number, text in _lines(path, max_line_bytes):
        if isinstance(text, RowError):
            yield number, text
            continue
        if not text.strip():
            continue
        try:
            fields = next(csv.reader([text]))
        except csv.Error:
            yield number, RowError(number, "malformed CSV (quotes) on this line")
            continue
        if header is None:
            header = [f.strip().lower() for f in fields]
            continue
        if len(fields) != len(header):
            yield number, RowError(number, f"expected {len(header)} columns, found {len(fields)}")
            continue
        yield number, {k: v.strip() for k, v in zip(header, fields, strict=True)}


def _ndjson_rows(path: Path, max_line_bytes: int) -> Iterator[tuple[int, dict[str, Any] | RowError]]:
    for number, text in _lines(path, max_line_bytes):
        if isinstance(text, RowError):
            yield number, text
            continue
        if not text.strip():
            continue
        try:
            row = json.loads(text)
        except (ValueError, RecursionError):
            yield number, RowError(number, "not valid JSON")
            continue
        if not isinstance(row, dict):
            yield number, RowError(number, "a row must be a JSON object")
            continue
        yield number, row


def _rows(path: Path, max_line_bytes: int) -> Iterator[tuple[int, dict[str, Any] | RowError]]:
    if path.suffix.lower() in (".ndjson", ".jsonl"):
        yield from _ndjson_rows(path, max_line_bytes)
    else:
        yield from _csv_rows(path, max_line_bytes)


# --------------------------------------------------------------------------- cells
def _split(value: Any, sep: str = ";") -> list[str]:
    if isinstance(value, list):
        return value
    return [part.strip() for part in str(value or "").split(sep) if part.strip()]


def _none_if_blank(row: dict[str, Any], *names: str) -> None:
    for name in names:
        if row.get(name) == "":
            row[name] = None


def _bool(value: Any) -> Any:
    if isinstance(value, str):
        lowered = value.strip().lower()
        if lowered in ("true", "t", "yes", "y", "1"):
            return True
        if lowered in ("false", "f", "no", "n", "0", ""):
            return False
    return value


def _event_id(kind: str, data: BaseModel) -> str:
    return f"{kind}-" + hashlib.sha256(data.model_dump_json().encode()).hexdigest()[:40]


def _at_midnight(day: date) -> datetime:
    return datetime.combine(day, time(0), tzinfo=UTC)


def _wrap(
    data: BaseModel, *, kind: str, subject: str, source: str, tenant: str, at: datetime
) -> CloudEvent[Any]:
    return new_event(data, subject=subject, source=source, tenant=tenant, time=at, event_id=_event_id(kind, data))


# --------------------------------------------------------------------------- roster
_ROSTER_COLUMNS = {
    "member_id", "plan_id", "network_id", "product", "virtual_first", "v1c_group_npi", "effective_date",
    "termination_date", "given_name", "family_name", "birth_date", "sex", "address_line", "city", "state",
    "postal_code", "latitude", "longitude", "risk_score", "care_manager_id", "selected_pcp_npi", "identifiers",
}


def _roster_data(row: dict[str, Any]) -> dict[str, Any]:
    if "address" in row:  # NDJSON: already the data shape
        return row
    unknown = set(row) - _ROSTER_COLUMNS
    if unknown:
        raise _RowProblem(f"unknown column(s): {', '.join(sorted(unknown))}")
    data = dict(row)
    data["address"] = {
        "line": data.pop("address_line", ""),
        "city": data.pop("city", ""),
        "state": data.pop("state", ""),
        "postal_code": data.pop("postal_code", ""),
        "latitude": data.pop("latitude", ""),
        "longitude": data.pop("longitude", ""),
    }
    identifiers = []
    for pair in _split(data.pop("identifiers", "")):
        system, sep, value = pair.rpartition("|")
        if not sep:
            raise _RowProblem("identifiers must be system|value pairs separated by ';'")
        identifiers.append({"system": system, "value": value})
    data["identifiers"] = identifiers
    data["virtual_first"] = _bool(data.get("virtual_first", False))
    _none_if_blank(data, "v1c_group_npi", "termination_date", "care_manager_id", "selected_pcp_npi")
    if data.get("risk_score") == "":
        data.pop("risk_score")
    if data.get("sex") == "":
        data.pop("sex")
    return data


class _RowProblem(ValueError):
    pass


def read_roster(
    path: Path, *, tenant: str = "payer-demo", source: str = "payer-eligibility",
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
) -> Iterator[FileItem]:
    """``member.enrolled`` events (time = effective date) or row errors, in file order."""
    for number, row in _rows(path, max_line_bytes):
        if isinstance(row, RowError):
            yield row
            continue
        try:
            member = MemberEnrolled.model_validate(_roster_data(row))
        except _RowProblem as problem:
            yield RowError(number, str(problem))
            continue
        except ValidationError as exc:
            yield RowError(number, _describe(exc))
            continue
        yield _wrap(
            member, kind="roster", subject=member.member_id, source=source, tenant=tenant,
            at=_at_midnight(member.effective_date),
        )


# --------------------------------------------------------------------------- providers
_PROVIDER_COLUMNS = {
    "npi", "name", "organization_name", "tin", "taxonomy", "role", "services", "networks", "latitude",
    "longitude", "accepting", "capacity", "quality_score", "cost_index", "virtual_capable", "active",
}


def _provider_data(row: dict[str, Any]) -> dict[str, Any]:
    if isinstance(row.get("networks"), list):  # NDJSON
        return row
    unknown = set(row) - _PROVIDER_COLUMNS
    if unknown:
        raise _RowProblem(f"unknown column(s): {', '.join(sorted(unknown))}")
    data = {k: v for k, v in row.items() if v != ""}
    data["services"] = _split(row.get("services"))
    networks = []
    for pair in _split(row.get("networks")):
        network, sep, tier = pair.partition(":")
        if not sep:
            raise _RowProblem("networks must be network:tier pairs separated by ';'")
        networks.append({"network_id": network, "tier": tier})
    data["networks"] = networks
    for flag in ("accepting", "virtual_capable", "active"):
        if flag in data:
            data[flag] = _bool(data[flag])
    return data


def read_providers(
    path: Path, *, tenant: str = "payer-demo", source: str = "payer-network-management",
    as_of: datetime | None = None, max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
) -> Iterator[FileItem]:
    """``provider.upserted`` events keyed by NPI (time = ``as_of``, default now) or row errors."""
    at = as_of or datetime.now(UTC)
    for number, row in _rows(path, max_line_bytes):
        if isinstance(row, RowError):
            yield row
            continue
        try:
            provider = ProviderUpserted.model_validate(_provider_data(row))
        except _RowProblem as problem:
            yield RowError(number, str(problem))
            continue
        except ValidationError as exc:
            yield RowError(number, _describe(exc))
            continue
        yield _wrap(provider, kind="provider", subject=provider.npi, source=source, tenant=tenant, at=at)


# --------------------------------------------------------------------------- claims
_CLAIM_HEADER = ("claim_id", "member_id", "status", "replaces_claim_id", "billing_tin", "adjudicated_on")
_LINE_COLUMNS = (
    "line_number", "procedure_code", "modifiers", "rendering_npi", "rendering_tin", "rendering_taxonomy",
    "place_of_service", "service_from", "service_to", "units", "allowed_amount", "diagnoses",
)


@dataclass
class _OpenClaim:
    first_line: int
    header: dict[str, Any]
    lines: list[dict[str, Any]]
    bad: bool = False


def read_claims(
    path: Path, *, tenant: str = "payer-demo", source: str = "payer-claims",
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
) -> Iterator[FileItem]:
    """``claim.adjudicated`` events (one per claim, lines grouped by claim_id) or row errors.

    Only the claim being assembled is held in memory, plus a bounded window of recent claim
    ids to report a claim whose lines are not contiguous.
    """
    current: _OpenClaim | None = None
    recent: OrderedDict[str, None] = OrderedDict()

    def finish(claim: _OpenClaim) -> Iterator[FileItem]:
        recent[claim.header["claim_id"]] = None
        if len(recent) > RECENT_CLAIM_WINDOW:
            recent.popitem(last=False)
        if claim.bad:
            return
        yield from _claim_event(claim, tenant=tenant, source=source)

    for number, row in _rows(path, max_line_bytes):
        if isinstance(row, RowError):
            if current is not None:
                current.bad = True  # a claim with an unreadable line is not published partially
            yield row
            continue
        if "lines" in row:  # NDJSON whole claim
            if current is not None:
                yield from finish(current)
                current = None
            yield from _claim_event(_OpenClaim(number, row, []), tenant=tenant, source=source)
            continue
        unknown = set(row) - set(_CLAIM_HEADER) - set(_LINE_COLUMNS)
        if unknown:
            yield RowError(number, f"unknown column(s): {', '.join(sorted(unknown))}")
            if current is not None:
                current.bad = True
            continue
        claim_id = str(row.get("claim_id") or "")
        if not claim_id:
            yield RowError(number, "claim_id is required")
            continue
        header = {k: row.get(k) for k in _CLAIM_HEADER}
        line = {k: row.get(k) for k in _LINE_COLUMNS if k in row}
        if current is not None and claim_id == current.header["claim_id"]:
            if header != current.header:
                yield RowError(number, "claim-level columns differ between lines of the same claim")
                current.bad = True
                continue
            current.lines.append(line)
            continue
        if current is not None:
            yield from finish(current)
        if claim_id in recent:
            yield RowError(number, "claim_id reappears after other claims; a claim's lines must be contiguous")
            current = _OpenClaim(number, header, [line], bad=True)
            continue
        current = _OpenClaim(number, header, [line])
    if current is not None:
        yield from finish(current)


def _claim_event(claim: _OpenClaim, *, tenant: str, source: str) -> Iterator[FileItem]:
    if claim.lines:
        data: dict[str, Any] = {k: v for k, v in claim.header.items() if v not in ("", None)}
        lines = []
        for line in claim.lines:
            cleaned = {k: v for k, v in line.items() if v not in ("", None)}
            cleaned["modifiers"] = _split(line.get("modifiers"))
            cleaned["diagnoses"] = _split(line.get("diagnoses"))
            lines.append(cleaned)
        data["lines"] = lines
    else:
        data = claim.header
    try:
        model = ClaimAdjudicated.model_validate(data)
    except ValidationError as exc:
        yield RowError(claim.first_line, f"claim starting here: {_describe(exc)}")
        return
    yield _wrap(
        model, kind="claim", subject=model.member_id, source=source, tenant=tenant,
        at=_at_midnight(model.adjudicated_on),
    )


# --------------------------------------------------------------------------- dispatch
def detect_kind(path: Path) -> FileKind | None:
    """Which file this is, from its header (CSV) or first row (NDJSON); None if unknown."""
    for _, row in _rows(path, DEFAULT_MAX_LINE_BYTES):
        if isinstance(row, RowError):
            continue
        keys = set(row)
        if "claim_id" in keys:
            return "claims"
        if "member_id" in keys and "plan_id" in keys:
            return "roster"
        if "npi" in keys and "taxonomy" in keys:
            return "providers"
        return None
    return None


def read_file(path: Path, kind: FileKind | None = None, **options: Any) -> Iterator[FileItem]:
    """Read any supported file; ``kind`` is detected when not given."""
    kind = kind or detect_kind(path)
    readers = {"roster": read_roster, "claims": read_claims, "providers": read_providers}
    if kind not in readers:
        raise ValueError(f"{path.name}: not a roster, claims or provider file")
    yield from readers[kind](path, **options)


def iter_members(items: Iterable[FileItem]) -> Iterator[MemberEnrolled]:
    """The member snapshots among roster items (to build a MemberIndex)."""
    for item in items:
        if isinstance(item, CloudEvent) and isinstance(item.data, MemberEnrolled):
            yield item.data
