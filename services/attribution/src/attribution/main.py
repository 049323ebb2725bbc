"""Composition root of the attribution service: settings -> rules -> handlers -> API -> runtime."""

from __future__ import annotations

from cth_shared.runtime import ServiceContext, ServiceDefinition, run_service

from .api import create_api
from .handlers import make_handlers
from .settings import AttributionSettings

TOPICS = ["enrollment", "claims", "virtual-visits", "provider-directory"]


def build_definition(settings: AttributionSettings) -> ServiceDefinition:
    """The service definition for ``settings`` (the bulk CLI and tests reuse the same wiring)."""
    rules = settings.rules()

    def api(ctx: ServiceContext):  # type: ignore[no-untyped-def]
        return create_api(ctx.pool, rules)

    return ServiceDefinition(
        name="attribution",
        schema="attribution",
        migrations_package="attribution",
        topics=TOPICS,
        handlers=lambda _ctx: make_handlers(rules),
        api=api,
    )


def main() -> None:
    settings = AttributionSettings()
    run_service(build_definition(settings), settings)


if __name__ == "__main__":
    main()
