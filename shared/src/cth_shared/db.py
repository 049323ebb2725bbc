"""The asyncpg pool and the one migration runner.

Each service owns one schema. Migrations are numbered ``NNNN_name.sql`` files in the
service package's ``migrations/`` folder, applied in order at start-up inside a
transaction each, recorded in ``<schema>.schema_migrations``, serialised across
instances with an advisory lock. The shared messaging tables (inbox, outbox,
dead letters, API tokens) are migration ``0000`` of every schema.
"""

from __future__ import annotations

import hashlib
import logging
import re
from importlib.resources import files
from importlib.resources.abc import Traversable

import asyncpg

_log = logging.getLogger(__name__)
_NAME_RE = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")
_SCHEMA_RE = re.compile(r"^[a-z][a-z0-9_]{0,62}$")


async def create_pool(
    dsn: str, *, schema: str, application_name: str, min_size: int = 1, max_size: int = 10
) -> asyncpg.Pool:
    """A pool whose connections use ``schema`` as their search path."""
    _check_schema(schema)
    pool = await asyncpg.create_pool(
        dsn,
        min_size=min_size,
        max_size=max_size,
        server_settings={"search_path": f"{schema},public", "application_name": application_name},
        command_timeout=60,
        reset=keep_session,
    )
    assert pool is not None
    return pool


async def keep_session(conn: asyncpg.Connection) -> None:
    """Release a pooled connection without asyncpg's reset query (``RESET ALL; UNLISTEN *;
    pg_advisory_unlock_all(); CLOSE ALL``): one round trip less per transaction. Nothing in this code base
    leaves session state on a pooled connection: asyncpg still rolls back a transaction left open,
    settings are ``SET LOCAL``, advisory locks are transaction-scoped (the migration lock is released by its
    own ``finally``), and LISTEN has a connection of its own (notifications' alert hub)."""
    return None


def _check_schema(schema: str) -> None:
    if not _SCHEMA_RE.match(schema):
        raise ValueError(f"schema name {schema!r} must be lower-case letters, digits and underscores")


def _migration_files(folder: Traversable) -> list[tuple[str, str]]:
    found = []
    for entry in folder.iterdir():
        if entry.name.endswith(".sql"):
            if not _NAME_RE.match(entry.name):
                raise ValueError(f"migration {entry.name} must be named NNNN_lower_snake.sql")
            found.append((entry.name, entry.read_text(encoding="utf-8")))
    return sorted(found)


async def run_migrations(pool: asyncpg.Pool, schema: str, package: str) -> list[str]:
    """Apply ``cth_shared`` base migrations, then ``package``'s, to ``schema``; return what ran."""
    _check_schema(schema)
    applied: list[str] = []
    lock_key = int.from_bytes(hashlib.sha256(f"migrate:{schema}".encode()).digest()[:8], "big", signed=True)
    async with pool.acquire() as conn:
        await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")
        await conn.execute("SELECT pg_advisory_lock($1)", lock_key)
        try:
            await conn.execute(
                f"CREATE TABLE IF NOT EXISTS {schema}.schema_migrations ("
                " name text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
            )
            done = {r["name"] for r in await conn.fetch(f"SELECT name FROM {schema}.schema_migrations")}
            sources = [("cth_shared", files("cth_shared") / "migrations"), (package, files(package) / "migrations")]
            for owner, folder in sources:
                for name, sql in _migration_files(folder):
                    key = f"{owner}/{name}"
                    if key in done:
                        continue
                    async with conn.transaction():
                        await conn.execute(f"SET LOCAL search_path TO {schema}, public")
                        await conn.execute(sql)
                        await conn.execute(f"INSERT INTO {schema}.schema_migrations(name) VALUES ($1)", key)
                    applied.append(key)
                    _log.info("migration applied", extra={"service": schema, "reason": key})
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", lock_key)
    return applied
