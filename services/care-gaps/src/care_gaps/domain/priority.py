"""Worklist priority of a member's gaps (DESIGN section 3: risk score, age 65+, open-gap count).

``priority = risk_weight * risk_score / 10 + age_65_weight * [age >= 65]
            + open_gap_weight * min(open_gaps, open_gap_cap)``

With the default weights (1.0, 2.0, 0.5, cap 10) a risk score of 72.5 (0-100 scale)
contributes 7.25, being 65 or older 2.0, and each open gap 0.5 (at most 5.0): the
score ranges 0-17. Weights are configuration (``MeasureConfig.priority_*``).
"""

from __future__ import annotations

from datetime import date

from .measures import MeasureConfig


def age_65_date(birth_date: date) -> date:
    """The day a member turns 65 (Feb 29 births turn 65 on Mar 1 in non-leap years)."""
    try:
        return birth_date.replace(year=birth_date.year + 65)
    except ValueError:
        return date(birth_date.year + 65, 3, 1)


def gap_priority(risk_score: float, is_65_or_older: bool, open_gap_count: int, config: MeasureConfig) -> float:
    """The documented priority formula above, rounded to two decimals."""
    score = (
        config.priority_risk_weight * risk_score / 10
        + (config.priority_age_65_weight if is_65_or_older else 0.0)
        + config.priority_open_gap_weight * min(max(open_gap_count, 0), config.priority_open_gap_cap)
    )
    return round(max(score, 0.0), 2)
