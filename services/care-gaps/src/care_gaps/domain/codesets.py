"""Code-set notation used by the measure configuration.

Code sets are written the way value sets are usually quoted in measure specifications:
comma-separated codes and inclusive numeric ranges, e.g. ``"99202-99215,G0438,G0439"``.
"""

from __future__ import annotations

import re

_RANGE_RE = re.compile(r"^(?P<prefix>[A-Z]?)(?P<low>\d+)(?P<suffix>[A-Z]?)-(?P=prefix)(?P<high>\d+)(?P=suffix)$")


def expand_code_set(notation: str) -> frozenset[str]:
    """Expand ``"99202-99215,1111F"`` into the set of codes it names.

    A range keeps the width, letter prefix and suffix of its bounds (``H0035-H0037``,
    ``90832-90834``). Raises ``ValueError`` on a malformed or reversed range.
    """
    codes: set[str] = set()
    for raw in notation.split(","):
        item = raw.strip().upper()
        if not item:
            continue
        match = _RANGE_RE.match(item)
        if match is None:
            if "-" in item:
                raise ValueError(f"malformed code range {item!r}")
            codes.add(item)
            continue
        low, high = int(match["low"]), int(match["high"])
        if high < low:
            raise ValueError(f"reversed code range {item!r}")
        width = len(match["low"])
        codes.update(f"{match['prefix']}{n:0{width}d}{match['suffix']}" for n in range(low, high + 1))
    return frozenset(codes)


def matches_prefix(code: str, prefixes: tuple[str, ...]) -> bool:
    """True when ``code`` (dots ignored) starts with one of ``prefixes``."""
    normalised = code.replace(".", "").upper()
    return any(normalised.startswith(p.replace(".", "").upper()) for p in prefixes)
