"""Inbox retention: consumed event ids are kept for a window, then pruned in small batches.

The inbox (``messaging/consumer.py``) holds the id of every consumed event, so that a redelivered
record is recognised and applied once. Without retention it grows by every event the service ever
consumed. A redelivery can only come from what the broker still holds for this service's consumer
group, so ids older than the window are pruned; the window must exceed the topics' retention and any
replay window (``INBOX_RETENTION_DAYS``, default 30 days; 0 keeps every id). An event older than the
window that is replayed anyway is applied as new.

Pruning deletes at most ``batch`` rows per statement, each in its own short transaction, and yields
between them, so it never holds a long lock and the consumer's inserts go on meanwhile. It reads the
table in heap order, where the oldest rows mostly come first (rows are only ever inserted, and space freed
by pruning is reused by newer ones), instead of through an index on ``received_at``, which would cost every
consumed event an extra index entry; a run an hour deletes about an hour's worth of ids.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta

import asyncpg
from opentelemetry import metrics

_log = logging.getLogger(__name__)

_PRUNE = ("DELETE FROM inbox WHERE ctid = ANY(ARRAY("
          "SELECT ctid FROM inbox WHERE received_at < now() - $1::interval LIMIT $2))")


async def prune_inbox(pool: asyncpg.Pool, *, older_than: timedelta, batch: int = 10_000) -> int:
    """Delete inbox rows received more than ``older_than`` ago, ``batch`` rows per transaction;
    returns how many were deleted."""
    if batch < 1:
        raise ValueError("batch must be at least 1")
    total = 0
    while True:
        status = await pool.execute(_PRUNE, older_than, batch)
        deleted = int(status.rsplit(" ", 1)[-1])  # "DELETE n"
        total += deleted
        if deleted < batch:
            return total
        await asyncio.sleep(0)  # let the consumer's transactions in between batches


async def keep_inbox_pruned(pool: asyncpg.Pool, *, service: str, retention: timedelta, interval_s: float,
                            batch: int = 10_000) -> None:
    """Background job: prune now, then every ``interval_s``; a failure (e.g. the database restarting)
    is logged by type and the next run retries. Runs until cancelled."""
    pruned = metrics.get_meter("cth_shared.inbox").create_counter(
        "inbox.pruned", unit="{event}", description="Consumed event ids removed from the inbox after the window")
    while True:
        try:
            deleted = await prune_inbox(pool, older_than=retention, batch=batch)
            if deleted:
                pruned.add(deleted, {"service": service})
                _log.info("inbox pruned", extra={"service": service, "reason": f"{deleted} ids older than {retention}"})
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the next run retries; the type only (messages can quote values)
            _log.warning("inbox pruning failed; retrying at the next run",
                         extra={"service": service, "reason": type(exc).__name__})
        await asyncio.sleep(interval_s)
