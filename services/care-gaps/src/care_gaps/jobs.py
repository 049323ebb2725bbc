"""Background job: the wall-clock overdue sweep (``CLOCK=wall`` or ``both``; see ``domain.clock``)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

from cth_shared.runtime import ServiceContext

from . import store
from .domain.clock import ClockMode, wall_clock_applies
from .handlers import CareGapsUseCases

_log = logging.getLogger(__name__)


def wall_clock_sweeper(use_cases: CareGapsUseCases, mode: ClockMode, interval_s: float
                       ) -> Callable[[ServiceContext], Awaitable[None]]:
    """Every ``interval_s``: per tenant whose wall clock applies, flag what is overdue now."""

    async def sweep_forever(ctx: ServiceContext) -> None:
        while True:
            await asyncio.sleep(interval_s)
            try:
                now = datetime.now(UTC)
                for row in await store.tenants_with_open_gaps(ctx.pool):
                    if not wall_clock_applies(mode, row["live"]):
                        continue
                    async with ctx.unit_of_work() as uow:
                        uow.tenant = row["tenant"]  # produced events belong to the gaps' tenant
                        await use_cases.sweep(uow, row["tenant"], now, f"wall-clock-{now:%Y%m%dT%H%M%S}")
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # keep sweeping; the next period retries
                _log.warning("overdue sweep failed", extra={"reason": type(exc).__name__})

    return sweep_forever
