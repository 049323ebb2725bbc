"""Create the topic catalog on the production broker (the ``kafka-init`` one-shot service).

The topics come from ``cth_shared.contracts.topics.all_topic_specs`` (ten catalog topics with
the member-keyed partition count, ``provider-directory`` compacted, one ``<service>.dlq`` per
service), minus the DLQs of services that exist only in the test suite. The broker runs with
auto-create off, so a service can never produce to or consume from a topic with the wrong
partition count. Topics that already exist are left alone, so re-running is harmless.

Environment: ``KAFKA_BOOTSTRAP_SERVERS`` (required), ``TOPIC_PREFIX`` (default empty),
``KAFKA_INIT_MAX_WAIT_S`` (default 60).
"""

from __future__ import annotations

import asyncio
import os
import sys

from cth_shared.contracts.topics import TEST_SERVICES, TopicSpec, all_topic_specs, dlq_topic, topic_name
from cth_shared.embedded import ensure_topics


def production_topic_specs(prefix: str = "") -> list[TopicSpec]:
    """Every topic a production deployment needs: the catalog without test-only DLQs."""
    test_only = {topic_name(dlq_topic(service), prefix) for service in TEST_SERVICES}
    return [spec for spec in all_topic_specs(prefix) if spec.name not in test_only]


async def create_topics(bootstrap_servers: str, prefix: str, max_wait_s: float) -> list[TopicSpec]:
    """Create the production topics (idempotent) and return what was asked for."""
    specs = production_topic_specs(prefix)
    await ensure_topics(
        bootstrap_servers,
        [(spec.name, spec.partitions, dict(spec.configs)) for spec in specs],
        max_wait=max_wait_s,
    )
    return specs


def main() -> int:
    bootstrap_servers = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if not bootstrap_servers:
        print("KAFKA_BOOTSTRAP_SERVERS is not set", file=sys.stderr)
        return 2
    prefix = os.environ.get("TOPIC_PREFIX", "")
    max_wait_s = float(os.environ.get("KAFKA_INIT_MAX_WAIT_S", "60"))
    specs = asyncio.run(create_topics(bootstrap_servers, prefix, max_wait_s))
    for spec in specs:
        configs = ",".join(f"{key}={value}" for key, value in sorted(spec.configs.items()))
        print(f"topic {spec.name} partitions={spec.partitions} {configs}".rstrip())
    return 0


if __name__ == "__main__":
    sys.exit(main())
