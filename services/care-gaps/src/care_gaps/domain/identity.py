"""Deterministic gap ids: one gap per (encounter, measure), whatever resends or A08 updates arrive."""

from __future__ import annotations

import hashlib

from cth_shared.contracts.events import GapMeasure


def gap_id(encounter_id: str, measure: GapMeasure) -> str:
    """``GAP-`` + 24 hex characters of SHA-256 over the encounter id and the measure."""
    digest = hashlib.sha256(f"{encounter_id}\x1f{measure.value}".encode()).hexdigest()
    return f"GAP-{digest[:24]}"
