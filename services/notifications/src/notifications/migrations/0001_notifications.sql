-- Care-team read model from attribution.changed: one row per snapshot, effective-dated.
-- effective_to (exclusive) is the next snapshot's effective_from; NULL = still in force.
CREATE TABLE IF NOT EXISTS care_team_history (
    member_id       text NOT NULL,
    effective_from  date NOT NULL,
    effective_to    date,
    method          text NOT NULL,
    care_team       jsonb NOT NULL,          -- [{"role", "id", "tin"}]
    source_event_id text NOT NULL,
    recorded_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (member_id, effective_from)
);

-- What we know about each encounter (for cancels, retractions and the FHIR rendering).
CREATE TABLE IF NOT EXISTS encounters (
    encounter_id   text PRIMARY KEY,
    member_id      text NOT NULL,
    facility       jsonb NOT NULL,
    patient_class  text NOT NULL,
    admitted_at    timestamptz,
    discharged_at  timestamptz,
    updated_at     timestamptz NOT NULL DEFAULT now()
);

-- Per-member discharge history for the 30-day readmission rule.
CREATE TABLE IF NOT EXISTS member_discharges (
    member_id     text NOT NULL,
    encounter_id  text NOT NULL,
    discharged_at timestamptz NOT NULL,
    PRIMARY KEY (member_id, encounter_id)
);

-- Organization subscriptions and delivery endpoints.
--   audience 'organization': alerts to the organization itself for members attributed to its TIN;
--   audience 'care_team':    routes the organization's clinicians' alerts to an endpoint.
CREATE TABLE IF NOT EXISTS subscriptions (
    subscription_id text PRIMARY KEY,
    organization_id text NOT NULL,
    audience        text NOT NULL CHECK (audience IN ('organization', 'care_team')),
    recipient_id    text,
    channel         text NOT NULL CHECK (channel IN ('webhook', 'fhir_message', 'inbox')),
    endpoint_url    text,
    secret          text,                    -- HMAC key; must be recoverable to sign
    kinds           text[],                  -- NULL = every kind
    patient_classes text[],                  -- NULL = every setting
    active          boolean NOT NULL DEFAULT true,
    created_at      timestamptz NOT NULL DEFAULT now(),
    CHECK (channel = 'inbox' OR endpoint_url IS NOT NULL)
);
CREATE INDEX IF NOT EXISTS subscriptions_by_org ON subscriptions (organization_id) WHERE active;

-- Gapless per-recipient sequence numbers (incremented in the alert's transaction).
CREATE TABLE IF NOT EXISTS recipient_sequences (
    organization_id text NOT NULL,
    recipient_id    text NOT NULL,
    last_sequence   bigint NOT NULL,
    PRIMARY KEY (organization_id, recipient_id)
);

-- Alerts. One per (recipient, subject, kind) and one retraction of it at most.
CREATE TABLE IF NOT EXISTS notifications (
    notification_id  text PRIMARY KEY,
    organization_id  text NOT NULL,
    recipient_id     text NOT NULL,
    recipient_role   text NOT NULL,
    member_id        text NOT NULL,
    kind             text NOT NULL,
    priority         text NOT NULL,
    retraction       boolean NOT NULL DEFAULT false,
    retracts_id      text REFERENCES notifications (notification_id),
    subject_key      text NOT NULL,           -- encounter id, gap:<id> or referral:<id>
    encounter_id     text,
    patient_class    text,
    event_time       timestamptz NOT NULL,
    due_date         date,
    sequence         bigint,
    content          jsonb NOT NULL,
    source_event_id  text NOT NULL,
    rules_version    text NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    retracted_at     timestamptz,
    acknowledged_at  timestamptz,
    UNIQUE (organization_id, recipient_id, subject_key, kind, retraction),
    UNIQUE (organization_id, recipient_id, sequence)
);
CREATE INDEX IF NOT EXISTS notifications_inbox ON notifications (organization_id, recipient_id, created_at DESC);
CREATE INDEX IF NOT EXISTS notifications_subject ON notifications (subject_key);

-- Outbound deliveries (webhook, FHIR $process-message), worked by the delivery job.
CREATE TABLE IF NOT EXISTS deliveries (
    delivery_id      bigserial PRIMARY KEY,
    notification_id  text NOT NULL REFERENCES notifications (notification_id),
    subscription_id  text NOT NULL REFERENCES subscriptions (subscription_id),
    organization_id  text NOT NULL,
    member_id        text NOT NULL,
    channel          text NOT NULL,
    endpoint_url     text NOT NULL,
    status           text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'delivered', 'dead')),
    attempts         integer NOT NULL DEFAULT 0,
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    leased_until     timestamptz,
    first_attempt_at timestamptz,
    delivered_at     timestamptz,
    dead_at          timestamptz,
    last_error       text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    UNIQUE (notification_id, subscription_id)
);
CREATE INDEX IF NOT EXISTS deliveries_due ON deliveries (endpoint_url, next_attempt_at) WHERE status = 'pending';
CREATE INDEX IF NOT EXISTS deliveries_order ON deliveries (subscription_id, member_id, delivery_id) WHERE status = 'pending';

-- Evidence: every attempt.
CREATE TABLE IF NOT EXISTS delivery_attempts (
    attempt_id      bigserial PRIMARY KEY,
    delivery_id     bigint NOT NULL REFERENCES deliveries (delivery_id),
    notification_id text NOT NULL,
    attempted_at    timestamptz NOT NULL,
    status_code     integer,
    latency_ms      double precision NOT NULL,
    error_class     text,
    outcome         text NOT NULL
);
CREATE INDEX IF NOT EXISTS delivery_attempts_by_notification ON delivery_attempts (notification_id);

-- Per-endpoint circuit breakers.
CREATE TABLE IF NOT EXISTS endpoint_circuits (
    endpoint_url         text PRIMARY KEY,
    state                text NOT NULL DEFAULT 'closed',
    consecutive_failures integer NOT NULL DEFAULT 0,
    open_until           timestamptz,
    updated_at           timestamptz NOT NULL DEFAULT now()
);
