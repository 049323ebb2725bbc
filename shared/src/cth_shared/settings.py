"""Settings base: environment-only configuration with documented defaults.

Nothing but a service's composition root instantiates settings (STYLE.md rule 2).
The defaults point at a local stack on 127.0.0.1; the embedded stack and the test
fixtures set ``KAFKA_BOOTSTRAP_SERVERS`` and ``DATABASE_URL`` for the processes they start.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class StackSettings(BaseSettings):
    """Where the broker, the database and the telemetry backend are, and how to reach them."""

    model_config = SettingsConfigDict(extra="ignore", case_sensitive=False)

    kafka_bootstrap_servers: str = Field("127.0.0.1:9092", description="Comma-separated host:port list")
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr | None = None
    kafka_ssl_cafile: Path | None = None
    kafka_session_timeout_ms: int = Field(
        10_000, description="Tansu makes every group join wait half of this; the embedded stack lowers it"
    )
    kafka_heartbeat_interval_ms: int = 3_000
    kafka_fetch_max_wait_ms: int = Field(
        20, description="Longest a consumer's fetch waits on the broker for new records. Tansu does not answer a "
        "waiting fetch when records arrive, so with the client default (500) every hop could add up to 500 ms"
    )
    topic_prefix: str = Field("", description="Prefix for every topic name (tests isolate with it)")

    database_url: SecretStr = SecretStr("postgresql://postgres@127.0.0.1:5432/postgres")
    db_pool_min_size: int = 1
    db_pool_max_size: int = 10

    otel_exporter_otlp_endpoint: str | None = Field(None, description="OTLP/HTTP collector; unset = local only")
    otel_spans_file: Path | None = Field(None, description="JSON-lines span export the demo reads")
    otel_instrument_asyncpg: bool = Field(
        False, description="One span per SQL statement (debugging; costs ~40% of throughput, see BENCHMARKS.md)")
    log_level: str = "INFO"

    tenant: str = Field("payer-demo", description="Payer id stamped on produced events")


class ServiceSettings(StackSettings):
    """What every service shares on top of the stack: HTTP, batching and relay tuning."""

    http_host: str = "127.0.0.1"
    http_port: int = Field(8080, description="HTTP API and /healthz; 0 picks a free port")
    batch_max_records: int = Field(500, description="Records per consumed batch (one transaction)")
    batch_timeout_ms: int = Field(20, description="Longest wait to fill a batch")
    consumer_lanes: int = Field(
        4, ge=1, le=32, description="Member-keyed lanes of a batch applied concurrently, each in its own "
        "transaction and connection (a member's events always share a lane); 1 = the batch in one transaction",
    )
    consumer_lane_min_records: int = Field(
        16, ge=1, description="Fewest records per lane: a smaller batch uses fewer lanes (each lane costs a "
        "transaction, its reads and its writes, so lanes of one or two events cost more than they overlap)",
    )
    relay_batch_size: int = 500
    relay_poll_interval_ms: int = Field(200, description="Relay poll when no local commit woke it")
    inbox_retention_days: int = Field(
        30, ge=0, description="Consumed event ids are kept this long to recognise redeliveries, then pruned; "
        "keep it above the topics' retention and any replay window (0 keeps them forever)",
    )
    inbox_prune_interval_s: float = Field(3600, gt=0, description="How often the inbox is pruned")
    max_event_bytes: int = 1_048_576
    shutdown_grace_s: float = 10.0
