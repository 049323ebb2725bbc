"""Test support shared by every package: session infrastructure, isolation, service processes.

Fixtures (``infra``, ``isolated``) are registered with
``pytest_plugins = ["cth_shared.testing.infra"]`` in the root ``tests/conftest.py``.
"""

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


__all__ = [
    "Infra",
    "InfraKind",
    "IsolatedEnv",
    "ServiceProcess",
    "free_port",
    "isolated_env",
    "keys_in_distinct_lanes",
    "start_infra",
]
