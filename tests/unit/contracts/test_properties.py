"""Property tests: whatever arrives on a topic, ``parse_event`` returns an event or raises
ContractError, never any other exception."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from typing import Any

import pytest
from cth_shared.contracts import CloudEvent, ContractError, parse_event, registered_types
from cth_shared.contracts.events import PHI_FIELDS
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ._support import envelope, example, wire

BOUNDED = settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
TYPES = sorted(registered_types())

scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(10**40), max_value=10**40)
    | st.floats()
    | st.text(max_size=30)
    | st.sampled_from(["", "1234567893", "2026-03-01", "2026-03-01T12:00:00", "99213", "06"])
)
json_values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=5)
    | st.dictionaries(st.text(max_size=12), children, max_size=5),
    max_leaves=25,
)
finite_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**12), max_value=10**12)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=30)
)
finite_json_values = st.recursive(
    finite_scalars,
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=15,
)


def outcome(raw: bytes | str) -> CloudEvent[Any] | None:
    """Parse ``raw``; None when it was rejected with ContractError. Anything else propagates."""
    try:
        event = parse_event(raw)
    except ContractError as error:
        assert error.reason in {
            "oversize", "invalid_json", "not_an_object", "unknown_type",
            "unsupported_version", "invalid_event",
        }
        assert isinstance(error.detail, str)
        return None
    assert event.type in registered_types()
    assert isinstance(event.data, registered_types()[event.type].model)
    return event


def paths(value: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """Every path into a JSON document (dict keys and list indices), excluding the root."""
    if isinstance(value, dict):
        for key, child in value.items():
            yield (*prefix, key)
            yield from paths(child, (*prefix, key))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            yield (*prefix, index)
            yield from paths(child, (*prefix, index))


def swapped_type(value: Any) -> Any:
    """The same information in a different JSON type."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return {str(index): item for index, item in enumerate(value)}
    if isinstance(value, dict):
        return list(value.values())
    return 0


@st.composite
def mutated_documents(draw: st.DrawFn, values: st.SearchStrategy[Any] = json_values) -> Any:
    """A valid envelope around an example, then one to three random mutations."""
    name = draw(st.sampled_from(TYPES))
    document: Any = envelope(name, example(name))
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        if not isinstance(document, dict | list) or not (candidates := list(paths(document))):
            break
        path = draw(st.sampled_from(candidates))
        parent = document
        for step in path[:-1]:
            parent = parent[step]
        key = path[-1]
        operation = draw(st.sampled_from(["delete", "replace", "swap_type", "add_field"]))
        if operation == "delete":
            del parent[key]
        elif operation == "replace":
            parent[key] = draw(values)
        elif operation == "swap_type":
            parent[key] = swapped_type(parent[key])
        elif isinstance(parent, dict):
            parent[draw(st.text(min_size=1, max_size=12))] = draw(values)
        else:
            parent.append(draw(values))
    return document


@BOUNDED
@given(st.binary(max_size=4096))
def test_arbitrary_bytes_are_parsed_or_rejected_with_a_contract_error(raw: bytes) -> None:
    outcome(raw)


@BOUNDED
@given(st.text(max_size=2048))
def test_arbitrary_text_is_parsed_or_rejected_with_a_contract_error(raw: str) -> None:
    outcome(raw)


@BOUNDED
@given(json_values)
def test_arbitrary_json_values_are_parsed_or_rejected_with_a_contract_error(value: Any) -> None:
    outcome(json.dumps(value))


@BOUNDED
@given(st.sampled_from(TYPES), json_values)
def test_arbitrary_data_in_a_valid_envelope_is_parsed_or_rejected_with_a_contract_error(
    name: str, data: Any
) -> None:
    outcome(wire(envelope(name, data)))


@BOUNDED
@given(st.sampled_from(TYPES), st.dictionaries(st.text(max_size=16), json_values, max_size=8))
def test_a_valid_envelope_with_random_attributes_added_is_parsed_or_rejected_cleanly(
    name: str, extra: dict[str, Any]
) -> None:
    document = envelope(name, example(name))
    document.update(extra)
    outcome(wire(document))


@BOUNDED
@given(mutated_documents())
def test_mutated_valid_examples_are_parsed_or_rejected_with_a_contract_error(
    document: Any,
) -> None:
    outcome(wire(document))


@BOUNDED
@given(mutated_documents(), st.integers(min_value=0, max_value=10_000), st.binary(max_size=8))
def test_truncated_or_corrupted_wire_bytes_are_parsed_or_rejected_with_a_contract_error(
    document: Any, cut: int, noise: bytes
) -> None:
    raw = wire(document)
    outcome(raw[: cut % (len(raw) + 1)] + noise)


@BOUNDED
@given(st.sampled_from(TYPES), st.integers(min_value=-3, max_value=5) | st.text(max_size=6))
def test_any_dataschema_version_is_parsed_or_rejected_with_a_contract_error(
    name: str, version: Any
) -> None:
    document = envelope(name, example(name))
    document["dataschema"] = f"urn:cth:event:{name}:v{version}"
    outcome(wire(document))


@BOUNDED
@given(mutated_documents(finite_json_values))
def test_an_accepted_mutation_of_finite_values_round_trips_through_its_wire_form(
    document: Any,
) -> None:
    event = outcome(wire(document))
    if event is not None:
        assert parse_event(event.to_json_bytes()) == event


# ---------------------------------------------------------------------------------------------
# Every contract on its own (the tests above sample types at random), and hostile strings.

PER_TYPE = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])

HOSTILE = [
    "'; DROP TABLE inbox; --",
    "<script>alert('x')</script>",
    "\"><img src=x onerror=alert(1)>",
    "\x00\x01\x1b[31m\x7f",
    "line\r\nbreak\u2028\u2029",
    "\u202eevil\u200b",
    "𝕳𝖊𝖑𝖑𝖔 👩‍⚕️ " * 40,
    "é" * 5000,
    "{{7*7}} ${jndi:ldap://x}",
]


def string_paths(value: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """Paths to every string leaf of a JSON document."""
    if isinstance(value, str):
        yield prefix
    elif isinstance(value, dict):
        for key, child in value.items():
            yield from string_paths(child, (*prefix, key))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            yield from string_paths(child, (*prefix, index))


@st.composite
def mutated_example_of(draw: st.DrawFn, name: str) -> Any:
    document: Any = envelope(name, example(name))
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        candidates = list(paths(document["data"]))
        if not candidates:
            break
        path = draw(st.sampled_from(candidates))
        parent = document["data"]
        for step in path[:-1]:
            parent = parent[step]
        operation = draw(st.sampled_from(["delete", "replace", "swap_type"]))
        if operation == "delete":
            del parent[path[-1]]
        elif operation == "replace":
            parent[path[-1]] = draw(json_values)
        else:
            parent[path[-1]] = swapped_type(parent[path[-1]])
    return document


@pytest.mark.parametrize("name", TYPES)
def test_every_contract_parses_its_example_and_rejects_mutations_with_a_contract_error(name: str) -> None:
    event = outcome(wire(envelope(name, example(name))))
    assert event is not None, f"the example of {name} must parse"

    @PER_TYPE
    @given(mutated_example_of(name))
    def check(document: Any) -> None:
        accepted = outcome(wire(document))
        if accepted is not None:
            assert parse_event(accepted.to_json_bytes()) == accepted

    check()


@pytest.mark.parametrize("name", TYPES)
def test_hostile_strings_in_any_field_are_rejected_cleanly_or_kept_verbatim(name: str) -> None:
    base = envelope(name, example(name))
    leaves = [*string_paths(base["data"], ("data",)), ("subject",), ("source",), ("id",)]
    for path in leaves:
        for hostile in HOSTILE:
            document = copy.deepcopy(base)
            parent = document
            for step in path[:-1]:
                parent = parent[step]
            parent[path[-1]] = hostile
            event = outcome(wire(document))
            if event is None:
                continue
            # Accepted: the value travels as data, verbatim, and survives its own wire form.
            assert parse_event(event.to_json_bytes()) == event
            dumped = json.loads(event.to_json_bytes())
            node = dumped
            for step in path:
                node = node[step]
            assert node in (hostile, hostile.strip()), (name, path, node)  # surrounding whitespace may be trimmed


# ---------------------------------------------------------------------------------------------
# A rejection names fields and rules, never the rejected PHI values (the reason is logged and stored).

PHI_TYPES = sorted(n for n in TYPES if any(p for p in paths(example(n)) if set(p) & PHI_FIELDS))
marker_text = st.text(alphabet="ZQXJKVWzqxjkvw", min_size=6, max_size=12)
bad_phi_values = st.one_of(
    marker_text.map(lambda m: m + "\x01"),  # control character
    marker_text.map(lambda m: m * 30),  # too long
    marker_text,  # a name where a date or code belongs
    st.builds(lambda m: {"line": m + "\x07", "city": m}, marker_text),
)


@PER_TYPE
@given(st.sampled_from(PHI_TYPES), st.data())
def test_a_rejected_phi_value_is_never_echoed_in_the_error(name: str, data: st.DataObject) -> None:
    document = envelope(name, example(name))
    phi_paths = [p for p in paths(document["data"]) if p[-1] in PHI_FIELDS or (set(p) & PHI_FIELDS)]
    path = data.draw(st.sampled_from(phi_paths))
    value = data.draw(bad_phi_values)
    parent = document["data"]
    for step in path[:-1]:
        parent = parent[step]
    parent[path[-1]] = value
    try:
        parse_event(wire(document))
    except ContractError as error:
        marker = (value["city"] if isinstance(value, dict) else value).strip("\x01\x07")[:6]
        assert marker not in error.detail and marker not in str(error), (path, error.detail)


# ---------------------------------------------------------------------------------------------
# The ce_type header as a parsing hint: the same event, or the same error, as without it.


def outcome_with(raw: bytes | str, type_hint: str | None) -> Any:
    try:
        return parse_event(raw, type_hint=type_hint)
    except ContractError as error:
        return ("rejected", error.reason, error.detail)


hints = st.sampled_from(TYPES) | st.none() | st.text(max_size=12)


@BOUNDED
@given(mutated_documents(), hints)
def test_a_type_hint_changes_no_outcome_of_a_mutated_event(document: Any, hint: str | None) -> None:
    raw = wire(document)
    assert outcome_with(raw, hint) == outcome_with(raw, None)


@BOUNDED
@given(st.sampled_from(TYPES), st.sampled_from(TYPES), st.dictionaries(st.sampled_from(
    ["type", "dataschema", "id", "subject", "tenant", "time", "data", "specversion"]), json_values, max_size=3))
def test_a_wrong_or_repeated_attribute_under_a_type_hint_gives_the_unhinted_outcome(
    name: str, hint: str, repeated: dict[str, Any]
) -> None:
    # The valid event first, then attributes written a second time (JSON parsers keep the last).
    text = wire(envelope(name, example(name))).decode()
    raw = text[:-1] + "".join(f", {json.dumps(k)}: {json.dumps(v)}" for k, v in repeated.items()) + "}"
    assert outcome_with(raw, hint) == outcome_with(raw, None)


@pytest.mark.parametrize("name", TYPES)
def test_a_current_event_parses_to_the_same_event_with_its_type_as_a_hint(name: str) -> None:
    raw = wire(envelope(name, example(name)))
    hinted = parse_event(raw, type_hint=name)
    assert hinted == parse_event(raw) and type(hinted) is type(parse_event(raw))


@BOUNDED
@given(st.sampled_from(TYPES), st.integers(min_value=-1, max_value=4))
def test_any_version_under_its_type_as_a_hint_gives_the_unhinted_outcome(name: str, version: int) -> None:
    raw = wire(envelope(name, example(name), version=version))  # older versions go through their upcasters
    assert outcome_with(raw, name) == outcome_with(raw, None)
