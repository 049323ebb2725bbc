"""Shared helpers for the contract tests: envelopes around raw ``data`` and error checks."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from cth_shared.contracts import ContractError, parse_event, registered_types
from cth_shared.contracts.events import EXAMPLES

TIME = "2026-03-01T12:00:00+00:00"


def example(name: str) -> dict[str, Any]:
    """A deep copy of the registered example ``data`` of event type ``name``."""
    return copy.deepcopy(EXAMPLES[name])


def envelope(name: str, data: Any, /, *, version: int | None = None, **overrides: Any) -> dict[str, Any]:
    """A CloudEvent document (as a dict) of type ``name`` around ``data``."""
    entry = registered_types()[name]
    document: dict[str, Any] = {
        "specversion": "1.0",
        "id": "evt-0001",
        "type": name,
        "source": "urn:cth:test",
        "subject": "M000001",
        "time": TIME,
        "datacontenttype": "application/json",
        "dataschema": f"urn:cth:event:{name}:v{entry.version if version is None else version}",
        "tenant": "payer-a",
        "data": data,
    }
    document.update(overrides)
    return document


def wire(document: Any) -> bytes:
    """The UTF-8 JSON bytes of ``document`` (NaN/Infinity allowed, as Python's json emits them)."""
    return json.dumps(document).encode()


def rejection(raw: bytes | str) -> ContractError:
    """Parse ``raw`` and return the ContractError it must raise."""
    with pytest.raises(ContractError) as info:
        parse_event(raw)
    return info.value
