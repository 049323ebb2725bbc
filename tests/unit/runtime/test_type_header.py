"""The ``ce_type`` header the consumer hands ``parse_event`` as a hint: read when present and ASCII, else none
(a missing or garbled hint only means the ordinary parse)."""

from __future__ import annotations

from cth_shared.messaging.consumer import type_header
from cth_shared.testing import consumer_record


def test_the_ce_type_header_is_the_hint() -> None:
    record = consumer_record("encounters", 0, "M1", b"{}",
                             [("traceparent", b"00-x"), ("ce_type", b"encounter.admitted"), ("ce_id", b"e1")])
    assert type_header(record) == "encounter.admitted"


def test_no_header_or_a_garbled_one_gives_no_hint() -> None:
    assert type_header(consumer_record("encounters", 0, "M1", b"{}")) is None
    assert type_header(consumer_record("encounters", 0, "M1", b"{}", [("ce_type", "é".encode())])) is None
    assert type_header(consumer_record("encounters", 0, "M1", b"{}", [("ce_type", None)])) is None  # type: ignore[list-item]
