"""Fixtures for the producer toolkit's unit tests (helpers live in producer_samples.py)."""

from producer_samples import index, roster, settings, translator

__all__ = ["index", "roster", "settings", "translator"]
