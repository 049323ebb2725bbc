-- Shared messaging tables, created in every service's schema (search_path is set by the runner).

-- Inbox: ids of consumed events; written in the same transaction as the handler's effects.
CREATE TABLE IF NOT EXISTS inbox (
    event_id    text PRIMARY KEY,
    topic       text NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now()
);

-- Outbox: events this service produced, relayed to Kafka in seq order, with trace context.
CREATE TABLE IF NOT EXISTS outbox (
    seq        bigserial PRIMARY KEY,
    topic      text NOT NULL,
    key        bytea,
    payload    bytea NOT NULL,
    headers    jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at timestamptz NOT NULL DEFAULT now()
);

-- Relay high-water mark and publish counters, for lag/backlog metrics and the demo summary.
CREATE TABLE IF NOT EXISTS outbox_published (
    topic      text PRIMARY KEY,
    published  bigint NOT NULL DEFAULT 0,
    last_seq   bigint NOT NULL DEFAULT 0,
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- Dead letters: every rejected input with its reason and the original bytes (also sent to the DLQ topic).
CREATE TABLE IF NOT EXISTS dead_letters (
    id           bigserial PRIMARY KEY,
    source_topic text NOT NULL,
    partition    integer NOT NULL,
    "offset"     bigint NOT NULL,
    key          bytea,
    reason       text NOT NULL,
    detail       text NOT NULL,
    original     bytea NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    UNIQUE (source_topic, partition, "offset")
);

-- API tokens: only a SHA-256 of each bearer token is stored.
CREATE TABLE IF NOT EXISTS api_tokens (
    token_sha256    text PRIMARY KEY,
    organization_id text NOT NULL,
    recipient_id    text,
    label           text NOT NULL DEFAULT '',
    created_at      timestamptz NOT NULL DEFAULT now(),
    revoked_at      timestamptz
);
