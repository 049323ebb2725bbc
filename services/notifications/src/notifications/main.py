"""Composition root of the notifications service: settings -> telemetry -> pool -> broker -> app.

The rules arrive in their own issue; for now the service starts, applies its
migrations, consumes its topics through the inbox and shuts down on SIGTERM.
"""

from __future__ import annotations

from cth_shared.runtime import ServiceDefinition, run_service
from cth_shared.settings import ServiceSettings

DEFINITION = ServiceDefinition(
    name="notifications",
    schema="notifications",
    migrations_package="notifications",
    topics=["encounters", "attribution", "care-gaps", "referrals"],
    handlers={},
)


def main() -> None:
    run_service(DEFINITION, ServiceSettings())


if __name__ == "__main__":
    main()
