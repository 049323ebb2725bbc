"""The topic catalog: names, partition counts, cleanup policy and DLQs.

Every member-keyed topic has the same partition count so a member's events are
co-partitioned across topics (DESIGN.md section 2). Partitions are the unit of
horizontal scale: a consumer group runs at most that many useful instances.
"""

from __future__ import annotations

from dataclasses import dataclass, field

#: Partition count of every member-keyed topic.
MEMBER_PARTITIONS = 6

SERVICES = ("attribution", "referrals", "care-gaps", "notifications")
#: Services that exist only in the test suite (the plumbing tests' echo service).
TEST_SERVICES = ("echo",)


@dataclass(frozen=True)
class TopicSpec:
    """One topic: its name (with any test/tenant prefix applied), partitions and configs."""

    name: str
    partitions: int
    configs: dict[str, str] = field(default_factory=dict)
    key: str = "member_id"


_BASE: tuple[TopicSpec, ...] = (
    TopicSpec("enrollment", MEMBER_PARTITIONS),
    TopicSpec("encounters", MEMBER_PARTITIONS),
    TopicSpec("virtual-visits", MEMBER_PARTITIONS),
    TopicSpec("claims", MEMBER_PARTITIONS),
    TopicSpec("referral-requests", MEMBER_PARTITIONS),
    TopicSpec("provider-directory", MEMBER_PARTITIONS, {"cleanup.policy": "compact"}, key="npi"),
    TopicSpec("attribution", MEMBER_PARTITIONS),
    TopicSpec("referrals", MEMBER_PARTITIONS),
    TopicSpec("care-gaps", MEMBER_PARTITIONS),
    TopicSpec("notifications", MEMBER_PARTITIONS),
)


def dlq_topic(service: str) -> str:
    """The dead-letter topic of a service (unprefixed)."""
    return f"{service}.dlq"


def topic_name(base: str, prefix: str = "") -> str:
    """The physical topic name for catalog topic ``base`` under ``prefix``."""
    return f"{prefix}{base}"


def all_topic_specs(prefix: str = "") -> list[TopicSpec]:
    """Every topic the system uses, including one DLQ per service, under ``prefix``."""
    specs = [TopicSpec(topic_name(t.name, prefix), t.partitions, dict(t.configs), t.key) for t in _BASE]
    specs += [
        TopicSpec(topic_name(dlq_topic(s), prefix), MEMBER_PARTITIONS, key="original key")
        for s in (*SERVICES, *TEST_SERVICES)
    ]
    return specs


CATALOG_TOPICS = tuple(t.name for t in _BASE)
