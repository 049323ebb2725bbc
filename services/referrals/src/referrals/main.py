"""Composition root of the referrals service: settings -> telemetry -> pool -> broker -> app.

Wires the routing policy, the leakage code map and the in-memory directory index into the
handlers; loads the index from the ``providers`` table at start; runs two background jobs
(directory refresh from other instances, reservation expiry).
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta

from cth_shared.messaging.consumer import Handler
from cth_shared.runtime import ServiceContext, ServiceDefinition, run_service

from . import store
from .api import create_api
from .directory import DirectoryCache
from .handlers import ReferralHandlers
from .settings import ReferralsSettings

_log = logging.getLogger(__name__)


def _settings(ctx: ServiceContext) -> ReferralsSettings:
    assert isinstance(ctx.settings, ReferralsSettings)
    return ctx.settings


def _directory(ctx: ServiceContext) -> DirectoryCache:
    directory = ctx.extras.get("directory")
    if directory is None:
        directory = DirectoryCache(cell_degrees=_settings(ctx).directory_grid_cell_degrees)
        ctx.extras["directory"] = directory
    assert isinstance(directory, DirectoryCache)
    return directory


TOPICS = ["referral-requests", "encounters", "provider-directory", "enrollment", "claims"]


def build_handlers(ctx: ServiceContext) -> dict[str, Handler]:
    """The handler mapping, closed over configuration and the directory index."""
    settings = _settings(ctx)
    return ReferralHandlers(settings.routing_policy(), settings.service_code_map(), _directory(ctx),
                            settings.leakage_window_days).mapping()


async def load_directory(ctx: ServiceContext) -> None:
    """Fill the candidate index from the providers table before consuming."""
    loaded = await _directory(ctx).refresh(ctx.pool)
    _log.info("provider directory loaded", extra={"service": ctx.name, "reason": f"{loaded} providers"})


async def refresh_directory(ctx: ServiceContext) -> None:
    """Background job: pull directory writes made by other instances into this one's index."""
    await _directory(ctx).keep_in_step(ctx.pool, _settings(ctx).directory_refresh_interval_s)


async def expire_reservations(ctx: ServiceContext) -> None:
    """Background job: open referrals older than the expiry release their reserved capacity.

    Runs on wall-clock time: a replay of old referrals expires their reservations at once.
    """
    settings = _settings(ctx)
    while True:
        try:
            async with ctx.unit_of_work() as uow:
                cutoff = datetime.now(UTC) - timedelta(days=settings.reservation_expiry_days)
                expired = await store.expire_open_referrals(uow.conn, cutoff)
            if expired:
                _log.info("reservations expired", extra={"service": ctx.name, "reason": f"{expired} referrals"})
        except Exception as exc:  # keep the job alive (database restarts included); the next run retries
            _log.warning("reservation expiry failed; retrying", extra={"reason": type(exc).__name__})
        await asyncio.sleep(settings.expiry_check_interval_s)


DEFINITION = ServiceDefinition(
    name="referrals",
    schema="referrals",
    migrations_package="referrals",
    topics=TOPICS,
    handlers=build_handlers,
    api=create_api,
    background=(refresh_directory, expire_reservations),
    on_start=load_directory,
)


def main() -> None:
    run_service(DEFINITION, ReferralsSettings())


if __name__ == "__main__":
    main()
