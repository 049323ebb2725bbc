"""Retry classification, backoff with jitter, circuit breaker and webhook signatures."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest
from notifications.domain.delivery_policy import Circuit, CircuitState, Outcome, RetrySchedule, classify_status
from notifications.domain.signing import sign, verify

NOW = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(("status", "outcome"), [
    (200, Outcome.DELIVERED), (202, Outcome.DELIVERED), (204, Outcome.DELIVERED),
    (500, Outcome.RETRY), (503, Outcome.RETRY), (408, Outcome.RETRY), (429, Outcome.RETRY), (None, Outcome.RETRY),
    (400, Outcome.DEAD), (404, Outcome.DEAD), (410, Outcome.DEAD), (301, Outcome.DEAD),
])
def test_status_codes_map_to_delivered_retry_or_dead(status: int | None, outcome: Outcome) -> None:
    assert classify_status(status) is outcome


def test_backoff_doubles_with_jitter_and_is_capped() -> None:
    schedule = RetrySchedule(timedelta(seconds=5), timedelta(hours=1), timedelta(hours=24))
    rng = random.Random(7)
    delays = [schedule.backoff(n, rng).total_seconds() for n in range(1, 12)]
    for attempt, delay in enumerate(delays, start=1):
        cap = min(3600, 5 * 2 ** (attempt - 1))
        assert cap / 2 <= delay <= cap


def test_a_delivery_still_failing_after_24_hours_is_given_up() -> None:
    schedule = RetrySchedule(timedelta(seconds=5), timedelta(hours=1), timedelta(hours=24))
    first = NOW - timedelta(hours=24, seconds=1)
    assert schedule.next_attempt_at(first, NOW, attempts=30) is None
    later = schedule.next_attempt_at(NOW - timedelta(hours=23, minutes=59), NOW, attempts=30)
    assert later is not None and later <= NOW + timedelta(minutes=1)


def test_the_circuit_opens_after_consecutive_failures_and_a_successful_probe_closes_it() -> None:
    circuit = Circuit()
    for _ in range(3):
        circuit = circuit.after(Outcome.RETRY, NOW, failure_threshold=3, open_for=timedelta(seconds=30))
    assert circuit.state is CircuitState.OPEN
    assert not circuit.allows(NOW + timedelta(seconds=10))
    assert circuit.allows(NOW + timedelta(seconds=31))  # a probe may go
    failed_probe = circuit.after(Outcome.RETRY, NOW + timedelta(seconds=31), 3, timedelta(seconds=30))
    assert failed_probe.state is CircuitState.OPEN and not failed_probe.allows(NOW + timedelta(seconds=40))
    assert circuit.after(Outcome.DELIVERED, NOW, 3, timedelta(seconds=30)).state is CircuitState.CLOSED


def test_a_signature_verifies_with_the_secret_and_not_after_tampering_or_too_late() -> None:
    body = b'{"id":"N-1"}'
    header = sign("s3cret", 1_772_000_000, body)
    assert header.startswith("t=1772000000,v1=")
    assert verify("s3cret", header, body, now=1_772_000_010)
    assert not verify("s3cret", header, body + b" ", now=1_772_000_010)
    assert not verify("other", header, body, now=1_772_000_010)
    assert not verify("s3cret", header, body, now=1_772_000_000 + 3600)
