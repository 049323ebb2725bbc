"""Bearer tokens scoped to an organization (and optionally one recipient).

Tokens are random 32-byte strings shown once at issue time; only their SHA-256 is
stored (``<schema>.api_tokens``). Every API route depends on :func:`principal`,
which answers 401 without a valid token; routes then check that the requested
member, alert or worklist belongs to ``principal.organization_id`` (403/404).
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass

import asyncpg
from fastapi import HTTPException, Request, status


@dataclass(frozen=True)
class Principal:
    """Who is asking: an organization, and optionally a single recipient inside it."""

    organization_id: str
    recipient_id: str | None = None


def hash_token(token: str) -> str:
    """The stored form of a token."""
    return hashlib.sha256(token.encode()).hexdigest()


async def issue_token(
    conn: asyncpg.Connection | asyncpg.Pool, organization_id: str, recipient_id: str | None = None, label: str = ""
) -> str:
    """Create a token for ``organization_id``; returns the only copy of the secret."""
    token = "cth_" + secrets.token_urlsafe(32)
    await conn.execute(
        "INSERT INTO api_tokens(token_sha256, organization_id, recipient_id, label) VALUES ($1, $2, $3, $4)",
        hash_token(token),
        organization_id,
        recipient_id,
        label,
    )
    return token


async def authenticate(pool: asyncpg.Pool, authorization: str | None) -> Principal:
    """Resolve an ``Authorization: Bearer ...`` header to a principal or raise 401."""
    if not authorization or not authorization.lower().startswith("bearer "):
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED, "bearer token required", headers={"WWW-Authenticate": "Bearer"}
        )
    token = authorization[7:].strip()
    row = await pool.fetchrow(
        "SELECT organization_id, recipient_id FROM api_tokens WHERE token_sha256 = $1 AND revoked_at IS NULL",
        hash_token(token),
    )
    if row is None:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED, "invalid or revoked token", headers={"WWW-Authenticate": "Bearer"}
        )
    return Principal(organization_id=row["organization_id"], recipient_id=row["recipient_id"])


def principal_dependency(pool_getter: object) -> object:
    """A FastAPI dependency resolving the caller; ``pool_getter()`` returns the service pool."""

    async def principal(request: Request) -> Principal:
        pool = pool_getter() if callable(pool_getter) else pool_getter
        return await authenticate(pool, request.headers.get("authorization"))

    return principal
