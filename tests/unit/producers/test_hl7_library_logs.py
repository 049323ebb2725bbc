"""python-hl7's own log records never carry field values (PHI) once our translator is imported."""

from __future__ import annotations

import logging

import cth_shared.producers.hl7_adt  # noqa: F401 - installs the filter on the library's loggers
import hl7
import pytest

MESSAGE = "MSH|^~\\&|EPIC|HOSP|CTH|PAYER|202611230800||ADT^A01|CTRL1|P|2.5.1\rPID|1||MRN7788^^^HOSP^MR"


@pytest.mark.parametrize("value", ["ZEBULON\\\\QUIXOTE", "ZEBULON\\Cxyz\\QUIXOTE", "ZEBULON\\XZZ\\QUIXOTE",
                                   "ZEBULON\\Q\\QUIXOTE"])
def test_malformed_escapes_are_logged_without_the_field_value(caplog: pytest.LogCaptureFixture, value: str) -> None:
    message = hl7.parse(MESSAGE)
    with caplog.at_level(logging.DEBUG):
        message.unescape(value)
    assert caplog.records, "the library logged nothing for a malformed escape: the test no longer exercises the filter"
    assert "ZEBULON" not in caplog.text and "QUIXOTE" not in caplog.text
    assert all(record.exc_info is None for record in caplog.records)
    assert "values withheld" in caplog.text
