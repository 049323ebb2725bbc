"""Composition root of the referrals service: settings -> telemetry -> pool -> broker -> app.

The rules arrive in their own issue; for now the service starts, applies its
migrations, consumes its topics through the inbox and shuts down on SIGTERM.
"""

from __future__ import annotations

from cth_shared.runtime import ServiceDefinition, run_service
from cth_shared.settings import ServiceSettings

DEFINITION = ServiceDefinition(
    name="referrals",
    schema="referrals",
    migrations_package="referrals",
    topics=["referral-requests", "encounters", "provider-directory", "enrollment", "claims"],
    handlers={},
)


def main() -> None:
    run_service(DEFINITION, ServiceSettings())


if __name__ == "__main__":
    main()
