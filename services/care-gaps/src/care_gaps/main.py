"""Composition root of the care-gaps service: settings -> rules -> handlers, API, overdue job."""

from __future__ import annotations

from datetime import timedelta

from cth_shared.runtime import ServiceDefinition, run_service

from .api import create_api
from .handlers import CareGapsUseCases, ClockPolicy
from .jobs import wall_clock_sweeper
from .settings import CareGapsSettings

TOPICS = ["encounters", "virtual-visits", "claims", "enrollment", "attribution"]


def build(settings: CareGapsSettings) -> ServiceDefinition:
    """Wire the measure configuration into the handlers, the API and the wall-clock job."""
    config = settings.measure_config()
    use_cases = CareGapsUseCases(config, ClockPolicy(
        mode=settings.clock,
        replay_lag=timedelta(hours=settings.replay_lag_hours),
        max_future_skew=timedelta(minutes=settings.max_future_skew_minutes),
    ))
    background = []
    if settings.clock in ("wall", "both"):
        background.append(wall_clock_sweeper(use_cases, settings.clock, settings.overdue_sweep_interval_s))
    return ServiceDefinition(
        name="care-gaps",
        schema="care_gaps",
        migrations_package="care_gaps",
        topics=TOPICS,
        handlers=use_cases.mapping(),
        after_batch=use_cases.after_batch,
        api=lambda ctx: create_api(lambda: ctx.pool, config),
        background=background,
    )


def main() -> None:
    settings = CareGapsSettings()
    run_service(build(settings), settings)


if __name__ == "__main__":
    main()
