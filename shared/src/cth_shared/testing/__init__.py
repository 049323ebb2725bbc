"""Test support shared by every package: session infrastructure, isolation, service processes.

Fixtures (``infra``, ``isolated``) are registered with
``pytest_plugins = ["cth_shared.testing.infra"]`` in the root ``tests/conftest.py``.
"""

from cth_shared.testing.infra import (
    Infra,
    InfraKind,
    IsolatedEnv,
    ServiceProcess,
    free_port,
    isolated_env,
    start_infra,
)

__all__ = [
    "Infra",
    "InfraKind",
    "IsolatedEnv",
    "ServiceProcess",
    "free_port",
    "isolated_env",
    "start_infra",
]
