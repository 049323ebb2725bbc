"""Composition root of the notifications service: settings -> rules -> handlers, API, delivery job."""

from __future__ import annotations

from cth_shared.runtime import ServiceContext, ServiceDefinition, run_service

from .api import create_api
from .delivery import delivery_job
from .domain.rules import rule_set
from .handlers import AlertHandlers
from .settings import NotificationSettings

TOPICS = ["encounters", "attribution", "care-gaps", "referrals"]


def build_definition(settings: NotificationSettings) -> ServiceDefinition:
    rules = rule_set(settings.alert_rules_version)  # unknown version: fail at start-up, not per event

    def handlers(_ctx: ServiceContext) -> object:
        return AlertHandlers(rules, payer_organization_id=settings.payer_organization_id,
                             readmission_window_days=settings.readmission_window_days).mapping()

    return ServiceDefinition(
        name="notifications",
        schema="notifications",
        migrations_package="notifications",
        topics=TOPICS,
        handlers=handlers,  # type: ignore[arg-type]  # a ctx -> mapping factory
        api=create_api,
        background=[delivery_job],
    )


def main() -> None:
    settings = NotificationSettings()
    run_service(build_definition(settings), settings)


if __name__ == "__main__":
    main()
