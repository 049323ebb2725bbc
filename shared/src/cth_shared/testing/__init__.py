"""Test support shared by every package: session infrastructure, isolation, service processes.

Fixtures (``infra``, ``isolated``) are registered with
``pytest_plugins = ["cth_shared.testing.infra"]`` in the root ``tests/conftest.py``.
"""

import zlib
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

import asyncpg
from aiokafka import ConsumerRecord

from cth_shared.contracts import EXAMPLES, MemberEnrolled, new_event
from cth_shared.messaging.consumer import lane_of
from cth_shared.testing.infra import (
    Infra,
    InfraKind,
    IsolatedEnv,
    ServiceProcess,
    free_port,
    isolated_env,
    start_infra,
)


def consumer_record(topic: str, offset: int, key: str, value: bytes,
                    headers: Sequence[tuple[str, bytes]] = ()) -> ConsumerRecord:
    """A record as ``BatchProcessor`` receives it from a fetch (partition from the key, as the broker's
    partitioner would spread them over six)."""
    return ConsumerRecord(topic=topic, partition=zlib.crc32(key.encode()) % 6, offset=offset, timestamp=0,
                          timestamp_type=0, key=key.encode(), value=value, checksum=None,
                          serialized_key_size=len(key), serialized_value_size=len(value), headers=list(headers))


def member_enrolled(member_id: str, event_id: str) -> bytes:
    """The wire bytes of a valid ``member.enrolled`` event (the contract's example) for ``member_id``."""
    data = MemberEnrolled.model_validate(dict(EXAMPLES["member.enrolled"], member_id=member_id))
    return new_event(data, subject=member_id, source="urn:test", tenant="t", event_id=event_id).to_json_bytes()


def keys_in_distinct_lanes(count: int, lanes: int, prefix: str = "M") -> list[str]:
    """``count`` member keys that ``BatchProcessor`` puts in ``count`` different lanes (of ``lanes``)."""
    chosen: dict[int, str] = {}
    for i in range(1000):
        key = f"{prefix}{i:06d}"
        chosen.setdefault(lane_of(key.encode(), lanes), key)
        if len(chosen) == count:
            return list(chosen.values())
    raise ValueError(f"no {count} distinct lanes among {lanes}")


@asynccontextmanager
async def statements_sent(pool: asyncpg.Pool) -> AsyncIterator[list[str]]:
    """The statements ``pool`` sends inside the block (whitespace folded), to count round trips. The pool
    must have one connection (``max_size=1``) so that every statement goes through the one observed."""
    sent: list[str] = []

    def log(record: object) -> None:
        sent.append(" ".join(str(getattr(record, "query", "")).split()))

    async with pool.acquire() as conn:
        conn.add_query_logger(log)
    try:
        yield sent
    finally:
        async with pool.acquire() as conn:
            conn.remove_query_logger(log)


def statements_after(sent: Sequence[str], prefix: str) -> list[str]:
    """The statements sent after the one statement that starts with ``prefix`` (see :func:`statements_sent`),
    each cut to what precedes its first parenthesis; asyncpg's own lookups of array and composite types (made
    on a connection's first use of them) are left out."""
    found = [i for i, q in enumerate(sent) if q.startswith(prefix)]
    assert len(found) == 1, f"{len(found)} statements start with {prefix!r}"
    return [q.split("(")[0] for q in sent[found[0] + 1:] if "'jit'" not in q and "typeinfo" not in q]


__all__ = [
    "Infra",
    "InfraKind",
    "IsolatedEnv",
    "ServiceProcess",
    "free_port",
    "isolated_env",
    "keys_in_distinct_lanes",
    "start_infra",
    "statements_after",
    "statements_sent",
]
