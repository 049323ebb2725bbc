"""The producer integration tests use the shared ``infra``/``isolated`` fixtures (root conftest)."""
