"""CloudEvents 1.0 envelope (structured JSON mode), the event-type registry and upcasters.

Every message on every topic is one :class:`CloudEvent`. ``type`` selects the typed
``data`` model; ``dataschema`` carries the contract version
(``urn:cth:event:<type>:v<version>``). A reader upcasts older versions to the
current one before validation, so handlers only ever see the current model.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Generic, Literal, TypeVar

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError

from .codes import SafeId

#: Largest message we accept on any topic; bigger payloads go to the DLQ unread.
MAX_EVENT_BYTES = 1_048_576

_SCHEMA_RE = re.compile(r"^urn:cth:event:(?P<type>[a-z_.]+):v(?P<version>[0-9]{1,4})$")

D = TypeVar("D", bound=BaseModel)
AnyData = Any


class ContractError(ValueError):
    """An input that does not satisfy the contract.

    ``reason`` is a stable machine code (``oversize``, ``invalid_json``,
    ``not_an_object``, ``unknown_type``, ``unsupported_version``, ``invalid_event``);
    ``detail`` is a human sentence without PHI (field paths and rule names, never values).
    """

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class EventData(BaseModel):
    """Base for every ``data`` model: strict shape, no unknown fields, immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True, allow_inf_nan=False)


class CloudEvent(BaseModel, Generic[D]):
    """A CloudEvents 1.0 structured-mode envelope with typed ``data``.

    Extension attributes: ``tenant`` (payer id), ``correlationid`` (the business
    transaction, e.g. one care transition) and ``causationid`` (the event that caused
    this one).
    """

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    specversion: Literal["1.0"] = "1.0"
    id: SafeId = Field(description="Unique event id; the idempotency key")
    type: str = Field(min_length=3, max_length=64)
    source: str = Field(min_length=1, max_length=256, pattern=r"^[^\x00-\x1f\x7f\s]+$")
    subject: SafeId = Field(description="Member id (or NPI on provider-directory); the Kafka key")
    time: AwareDatetime = Field(description="When it happened in the real world")
    datacontenttype: Literal["application/json"] = "application/json"
    dataschema: str = Field(pattern=_SCHEMA_RE.pattern)
    tenant: SafeId
    correlationid: SafeId | None = None
    causationid: SafeId | None = None
    data: D

    @property
    def version(self) -> int:
        """The contract version this event was validated against."""
        match = _SCHEMA_RE.match(self.dataschema)
        assert match is not None  # guaranteed by the field pattern
        return int(match.group("version"))

    def to_json_bytes(self) -> bytes:
        """Serialise to the wire form (UTF-8 JSON)."""
        return self.model_dump_json(exclude_none=True).encode()


Upcaster = Callable[[dict[str, Any]], dict[str, Any]]


@dataclass(frozen=True)
class EventType:
    """A registered event type: its name, current version, data model and topic."""

    name: str
    version: int
    model: type[EventData]
    topic: str
    upcasters: dict[int, Upcaster] = field(default_factory=dict)

    @property
    def dataschema(self) -> str:
        """The ``dataschema`` URN of the current version."""
        return f"urn:cth:event:{self.name}:v{self.version}"


_REGISTRY: dict[str, EventType] = {}
_BY_MODEL: dict[type[EventData], EventType] = {}

M = TypeVar("M", bound=type[EventData])


def event_type(name: str, *, version: int, topic: str) -> Callable[[M], M]:
    """Class decorator registering a data model as event type ``name`` at ``version``."""

    def register(model: M) -> M:
        if name in _REGISTRY:
            raise RuntimeError(f"event type {name} registered twice")
        entry = EventType(name=name, version=version, model=model, topic=topic)
        _REGISTRY[name] = entry
        _BY_MODEL[model] = entry
        return model

    return register


def register_upcaster(name: str, from_version: int, upcaster: Upcaster) -> None:
    """Register a function turning ``data`` of ``name`` v``from_version`` into v``from_version+1``."""
    _REGISTRY[name].upcasters[from_version] = upcaster


def registered_types() -> dict[str, EventType]:
    """All registered event types by name."""
    return dict(_REGISTRY)


def type_of(model: type[EventData]) -> EventType:
    """The registered event type of a data model class."""
    return _BY_MODEL[model]


def new_event(
    data: EventData,
    *,
    subject: str,
    source: str,
    tenant: str,
    time: datetime | None = None,
    event_id: str | None = None,
    correlation_id: str | None = None,
    causation_id: str | None = None,
) -> CloudEvent[Any]:
    """Wrap ``data`` in a validated envelope; the type and schema come from the data model."""
    entry = _BY_MODEL[type(data)]
    return _envelope_model(entry)(
        id=event_id or uuid.uuid4().hex,
        type=entry.name,
        source=source,
        subject=subject,
        time=time or datetime.now(UTC),
        dataschema=entry.dataschema,
        tenant=tenant,
        correlationid=correlation_id,
        causationid=causation_id,
        data=data,
    )


def _describe(error: ValidationError) -> str:
    # Field paths and rule messages only; input values may hold PHI and are never echoed.
    parts = []
    for item in error.errors(include_input=False, include_url=False)[:10]:
        location = ".".join(str(p) for p in item["loc"]) or "<root>"
        parts.append(f"{location}: {item['msg']}")
    return "; ".join(parts)


_envelope_models: dict[str, type[CloudEvent[Any]]] = {}


def _envelope_model(entry: EventType) -> type[CloudEvent[Any]]:
    model = _envelope_models.get(entry.name)
    if model is None:
        model = CloudEvent[entry.model]  # type: ignore[name-defined]
        _envelope_models[entry.name] = model
    return model


def parse_event(raw: bytes | str, *, max_bytes: int = MAX_EVENT_BYTES, type_hint: str | None = None) -> CloudEvent[Any]:
    """Validate wire bytes into a typed event, upcasting older versions.

    Raises :class:`ContractError` (never anything else) for any invalid input.

    ``type_hint`` (the record's ``ce_type`` header, which says nothing for sure) lets a current-version
    event of that type be validated straight from its bytes, without building a Python document first
    (about half the CPU). The result is kept only if the event is of the hinted type at the current
    version; anything else (another type, an older version, an invalid event) goes the ordinary way,
    so the outcome, and every error, is the same as without a hint.
    """
    size = len(raw.encode("utf-8", "surrogatepass")) if isinstance(raw, str) else len(raw)
    if size > max_bytes:
        raise ContractError("oversize", f"{size} bytes exceeds the {max_bytes} byte limit")
    hinted = _REGISTRY.get(type_hint) if type_hint is not None else None
    if hinted is not None:
        try:
            event = _envelope_model(hinted).model_validate_json(raw)
        except (ValueError, TypeError, RecursionError):  # ValidationError is a ValueError
            pass
        else:
            if event.type == hinted.name and event.dataschema == hinted.dataschema:
                return event
    try:
        document = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise ContractError("invalid_json", f"not valid UTF-8 JSON ({type(exc).__name__})") from None
    if not isinstance(document, dict):
        raise ContractError("not_an_object", "a CloudEvent is a JSON object")
    name = document.get("type")
    entry = _REGISTRY.get(name) if isinstance(name, str) else None
    if entry is None:
        shown = name[:64] if isinstance(name, str) else type(name).__name__
        raise ContractError("unknown_type", f"event type {shown!r} is not in the catalog")
    schema = document.get("dataschema")
    match = _SCHEMA_RE.match(schema) if isinstance(schema, str) else None
    if match is None or match.group("type") != entry.name:
        raise ContractError("invalid_event", f"dataschema must be {entry.dataschema!r} or an older version")
    version = int(match.group("version"))
    if version > entry.version:
        raise ContractError("unsupported_version", f"{entry.name} v{version} is newer than v{entry.version}")
    if version < entry.version:
        data = document.get("data")
        for from_version in range(version, entry.version):
            upcaster = entry.upcasters.get(from_version)
            if upcaster is None or not isinstance(data, dict):
                raise ContractError("unsupported_version", f"no upcaster for {entry.name} v{from_version}")
            data = upcaster(data)
        document = {**document, "data": data, "dataschema": entry.dataschema}
    try:
        return _envelope_model(entry).model_validate(document)
    except ValidationError as exc:
        raise ContractError("invalid_event", _describe(exc)) from None
    except (ValueError, TypeError, RecursionError) as exc:
        raise ContractError("invalid_event", type(exc).__name__) from None
