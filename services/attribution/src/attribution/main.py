"""Composition root of the attribution service: settings -> telemetry -> pool -> broker -> app.

The rules arrive in their own issue; for now the service starts, applies its
migrations, consumes its topics through the inbox and shuts down on SIGTERM.
"""

from __future__ import annotations

from cth_shared.runtime import ServiceDefinition, run_service
from cth_shared.settings import ServiceSettings

DEFINITION = ServiceDefinition(
    name="attribution",
    schema="attribution",
    migrations_package="attribution",
    topics=["enrollment", "claims", "virtual-visits", "provider-directory"],
    handlers={},
)


def main() -> None:
    run_service(DEFINITION, ServiceSettings())


if __name__ == "__main__":
    main()
