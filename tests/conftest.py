"""Root conftest: the shared infrastructure fixtures (``infra``, ``isolated``).

Package-specific fixtures belong in the conftest.py of their own test directory.
"""

pytest_plugins = ["cth_shared.testing.infra"]
