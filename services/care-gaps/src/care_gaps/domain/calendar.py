"""Business days for CMS TCM: weekdays that are not US federal holidays.

CMS TCM requires the interactive contact "within 2 business days following the
discharge"; CMS counts Monday-Friday except federal holidays. The holiday calendar
comes from the maintained ``holidays`` library (``holidays.US``, public = federal,
with observed days such as Independence Day observed on a Friday).
"""

from __future__ import annotations

from datetime import date, timedelta
from functools import lru_cache

import holidays


@lru_cache(maxsize=64)
def _federal_holidays(year: int) -> frozenset[date]:
    return frozenset(holidays.US(years=year, categories=("public",), observed=True))


def is_business_day(day: date) -> bool:
    """Monday-Friday and not a US federal holiday (observed dates included)."""
    return day.weekday() < 5 and day not in _federal_holidays(day.year)


def add_business_days(start: date, business_days: int) -> date:
    """The ``business_days``-th business day strictly after ``start``.

    ``add_business_days(Friday, 2)`` before a Monday federal holiday is the Wednesday.
    """
    if business_days < 0:
        raise ValueError("business_days must not be negative")
    day = start
    counted = 0
    while counted < business_days:
        day += timedelta(days=1)
        if is_business_day(day):
            counted += 1
    return day
