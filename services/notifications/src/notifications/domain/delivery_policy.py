"""Delivery policy for webhooks and FHIR ``$process-message``: what an outcome means, when to retry.

- 2xx: delivered (receipt time recorded).
- 408 Request Timeout, 429 Too Many Requests, 5xx, timeouts and connection errors: retry
  with exponential backoff and full jitter (AWS Architecture Blog, "Exponential Backoff And
  Jitter"), until ``give_up_after`` (24 h by default) has passed since the first attempt.
- every other status (4xx such as 400, 401, 404, 410 Gone; 3xx, redirects are not followed):
  the receiver refused the message; retrying cannot help, so it is dead-lettered at once.

The per-endpoint circuit breaker (Nygard, "Release It!") opens after ``failure_threshold``
consecutive retryable failures; while open, the endpoint is skipped (other endpoints are not
affected); after ``open_for`` one probe is let through (half-open): success closes it,
failure opens it again.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum


class Outcome(StrEnum):
    DELIVERED = "delivered"
    RETRY = "retry"
    DEAD = "dead"


RETRYABLE_STATUSES = frozenset({408, 429})


def classify_status(status_code: int | None) -> Outcome:
    """Outcome of one attempt; ``None`` means no HTTP answer (timeout, connection refused)."""
    if status_code is None:
        return Outcome.RETRY
    if 200 <= status_code < 300:
        return Outcome.DELIVERED
    if status_code in RETRYABLE_STATUSES or status_code >= 500:
        return Outcome.RETRY
    return Outcome.DEAD


@dataclass(frozen=True)
class RetrySchedule:
    initial: timedelta
    maximum: timedelta
    give_up_after: timedelta

    def backoff(self, attempts: int, rng: random.Random | None = None) -> timedelta:
        """Delay before attempt ``attempts + 1``: full jitter over ``min(max, initial * 2^(attempts-1))``.

        The lower bound is half the cap so a retry never fires immediately.
        """
        cap = min(self.maximum.total_seconds(), self.initial.total_seconds() * (2 ** max(0, attempts - 1)))
        draw = (rng or random).uniform(cap / 2, cap)
        return timedelta(seconds=draw)

    def next_attempt_at(
        self, first_attempt_at: datetime, now: datetime, attempts: int, rng: random.Random | None = None
    ) -> datetime | None:
        """When to try again, or None when the give-up deadline passed (dead-letter)."""
        if now - first_attempt_at >= self.give_up_after:
            return None
        return min(now + self.backoff(attempts, rng), first_attempt_at + self.give_up_after)


class CircuitState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(frozen=True)
class Circuit:
    """One endpoint's breaker: state, consecutive failures, and until when it stays open."""

    state: CircuitState = CircuitState.CLOSED
    consecutive_failures: int = 0
    open_until: datetime | None = None

    def allows(self, now: datetime) -> bool:
        """May a request go to this endpoint now? (An expired open circuit lets a probe through.)"""
        if self.state is CircuitState.OPEN:
            return self.open_until is None or now >= self.open_until
        return True

    def after(self, outcome: Outcome, now: datetime, failure_threshold: int, open_for: timedelta) -> Circuit:
        """The breaker after one attempt's outcome. A DEAD outcome is the payload's fault: it resets."""
        if outcome is not Outcome.RETRY:
            return Circuit()
        failures = self.consecutive_failures + 1
        probing = self.state is CircuitState.OPEN or self.state is CircuitState.HALF_OPEN
        if probing or failures >= failure_threshold:
            return Circuit(CircuitState.OPEN, failures, now + open_for)
        return Circuit(CircuitState.CLOSED, failures, None)
