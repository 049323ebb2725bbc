"""Test support shared by every package: session infrastructure, isolation, service processes.

Fixtures (``infra``, ``isolated``) are registered with
``pytest_plugins = ["cth_shared.testing.infra"]`` in the root ``tests/conftest.py``.
"""

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

import asyncpg

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
