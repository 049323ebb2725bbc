"""The provider directory as this process sees it: the in-memory candidate index, kept in step.

Sources, in order of freshness: ``provider.upserted`` handled here (applied at once, so a
referral later in the same batch already sees it), and a poll of the ``providers`` table for
rows other instances wrote (``change_seq``). Each record carries its event time (``as_of``);
an older record never replaces a newer one, so the two sources cannot fight.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime

import asyncpg

from . import store
from .domain.directory_index import ProviderIndex
from .domain.model import ProviderProfile

_log = logging.getLogger(__name__)

#: Sequence numbers are taken before commit, so a row can become visible after a higher one;
#: re-reading this many recent numbers on every poll catches such stragglers (re-applying a
#: record is harmless).
REFRESH_OVERLAP = 1000


class DirectoryCache:
    """The candidate index plus the bookkeeping that keeps it equal to the ``providers`` table."""

    def __init__(self, cell_degrees: float) -> None:
        self.index = ProviderIndex(cell_degrees=cell_degrees)
        self._as_of: dict[str, datetime] = {}
        self._records: dict[str, ProviderProfile] = {}
        self.last_seq = 0
        #: True once the table has been read in full: from then on a record this cache lacks is one the
        #: table lacked at the last poll (or another instance wrote since, within the poll interval).
        self.loaded = False

    def apply(self, profile: ProviderProfile, as_of: datetime) -> None:
        """Put ``profile`` in the index unless a newer record of the same NPI is already there."""
        known = self._as_of.get(profile.npi)
        if known is not None and known > as_of:
            return
        self._as_of[profile.npi] = as_of
        self._records[profile.npi] = profile
        self.index.upsert(profile)

    def record(self, npi: str) -> ProviderProfile | None:
        """The newest directory record of ``npi`` this process holds, active or not; None when it holds
        none (the provider may still be in the table: written by another instance since the last poll)."""
        return self._records.get(npi)

    async def refresh(self, db: store.Executor) -> int:
        """Pull rows written since the last refresh (all rows the first time); returns how many."""
        after = self.last_seq - REFRESH_OVERLAP if self.last_seq > REFRESH_OVERLAP else 0
        if self.last_seq == 0:
            after = 0
        changed = await store.providers_changed_since(db, after)
        for seq, as_of, profile in changed:
            self.apply(profile, as_of)
            self.last_seq = max(self.last_seq, seq)
        self.loaded = True
        return len(changed)

    async def keep_in_step(self, pool: asyncpg.Pool, interval_s: float) -> None:
        """Background loop: poll for other instances' directory writes until cancelled."""
        while True:
            await asyncio.sleep(interval_s)
            try:
                await self.refresh(pool)
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
                _log.warning("directory refresh failed; retrying", extra={"reason": type(exc).__name__})
