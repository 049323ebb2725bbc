"""Webhook signatures: HMAC-SHA256 over ``"{timestamp}.{body}"`` (the Stripe/Standard Webhooks scheme).

Header ``X-CTH-Signature: t=<unix seconds>,v1=<hex digest>``. Binding the timestamp into
the signed string lets receivers reject replays older than their tolerance.
"""

from __future__ import annotations

import hashlib
import hmac


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The ``X-CTH-Signature`` header value for ``body`` sent at ``timestamp``."""
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


def verify(secret: str, header: str, body: bytes, now: int, tolerance_s: int = 300) -> bool:
    """Receiver side: is ``header`` a valid, fresh signature of ``body``? (Constant-time compare.)"""
    try:
        parts = dict(item.split("=", 1) for item in header.split(","))
        timestamp = int(parts["t"])
        expected = parts["v1"]
    except (KeyError, ValueError):
        return False
    if abs(now - timestamp) > tolerance_s:
        return False
    return hmac.compare_digest(sign(secret, timestamp, body).split("v1=", 1)[1], expected)
