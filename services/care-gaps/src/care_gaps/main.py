"""Composition root of the care-gaps service: settings -> telemetry -> pool -> broker -> app.

The rules arrive in their own issue; for now the service starts, applies its
migrations, consumes its topics through the inbox and shuts down on SIGTERM.
"""

from __future__ import annotations

from cth_shared.runtime import ServiceDefinition, run_service
from cth_shared.settings import ServiceSettings

DEFINITION = ServiceDefinition(
    name="care-gaps",
    schema="care_gaps",
    migrations_package="care_gaps",
    topics=["encounters", "virtual-visits", "claims", "enrollment", "attribution"],
    handlers={},
)


def main() -> None:
    run_service(DEFINITION, ServiceSettings())


if __name__ == "__main__":
    main()
