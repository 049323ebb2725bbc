"""Configuration of the notifications service (environment only; main.py instantiates it).

Every default is documented and works for the embedded stack. The alert rules
themselves (kind -> roles + priority) are versioned data in :mod:`notifications.domain.rules`;
``alert_rules_version`` picks the rule set in force.
"""

from __future__ import annotations

import secrets

from cth_shared.settings import ServiceSettings
from pydantic import Field, SecretStr


class NotificationSettings(ServiceSettings):
    """Rules, delivery and access settings of the notifications service."""

    alert_rules_version: str = Field("alerts-2026.1", description="Which versioned rule set decides roles + priority")
    readmission_window_days: int = Field(30, ge=1, le=365, description="Admission within N days of a discharge")
    payer_organization_id: str = Field(
        "payer", description="Organization of care managers (payer staff, no TIN on the care team)"
    )

    # webhook / FHIR $process-message delivery
    delivery_poll_interval_ms: int = Field(250, description="How often the delivery worker looks for due work")
    delivery_initial_backoff_s: float = Field(5.0, description="First retry delay; doubles per attempt")
    delivery_max_backoff_s: float = Field(3600.0, description="Longest single retry delay")
    delivery_give_up_after_s: float = Field(86_400.0, description="Dead-letter a delivery still failing after this")
    delivery_timeout_s: float = Field(10.0, description="HTTP timeout of one attempt")
    delivery_lease_s: float = Field(60.0, description="A claimed delivery is re-claimable after this (crash safety)")
    delivery_batch_per_endpoint: int = Field(20, description="Deliveries one endpoint lane claims at a time")
    circuit_failure_threshold: int = Field(5, description="Consecutive failures that open an endpoint's circuit")
    webhook_allow_private_networks: bool = Field(
        False, description="Allow endpoints on loopback/private addresses and plain http (development, tests, demo "
        "only; see notifications.endpoints)")
    circuit_open_s: float = Field(30.0, description="How long an open circuit skips its endpoint before a probe")

    # inbox
    inbox_page_size_max: int = Field(200, description="Largest page the inbox API returns")
    stream_ticket_ttl_s: int = Field(60, description="Lifetime of a signed SSE stream ticket")
    stream_ticket_secret: SecretStr = Field(
        default_factory=lambda: SecretStr(secrets.token_urlsafe(32)),
        description="HMAC key of stream tickets; set it when several instances serve the inbox",
    )
    stream_keepalive_s: float = Field(15.0, description="SSE comment interval keeping proxies from closing streams")
