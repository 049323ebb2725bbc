-- Local read models (provider directory, member coverage) and the referrals themselves.

-- Provider directory read model, from provider.upserted. change_seq lets every instance pull
-- writes made by the others into its in-memory candidate index.
CREATE SEQUENCE IF NOT EXISTS provider_change_seq;

CREATE TABLE IF NOT EXISTS providers (
    npi               text PRIMARY KEY,
    tin               text NOT NULL,
    taxonomy          text NOT NULL,
    role              text NOT NULL,
    services          text[] NOT NULL,
    networks          jsonb NOT NULL,          -- {"<network_id>": "preferred" | "standard"}
    latitude          double precision NOT NULL,
    longitude         double precision NOT NULL,
    accepting         boolean NOT NULL,
    capacity          integer NOT NULL,
    quality_score     double precision NOT NULL,
    cost_index        double precision NOT NULL,
    virtual_capable   boolean NOT NULL,
    active            boolean NOT NULL,
    as_of             timestamptz NOT NULL,    -- event time of the record applied; older ones are ignored
    change_seq        bigint NOT NULL DEFAULT nextval('provider_change_seq'),
    updated_at        timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS providers_change_seq ON providers (change_seq);

-- Member coverage read model, from enrollment (no names or birth dates are kept).
CREATE TABLE IF NOT EXISTS members (
    member_id         text PRIMARY KEY,
    plan_id           text NOT NULL,
    network_id        text NOT NULL,
    latitude          double precision NOT NULL,
    longitude         double precision NOT NULL,
    enrolled          boolean NOT NULL,
    termination_date  date,
    as_of             timestamptz NOT NULL,
    updated_at        timestamptz NOT NULL DEFAULT now()
);

-- Referrals: an open one reserves one slot of capacity at chosen_npi.
CREATE TABLE IF NOT EXISTS referrals (
    referral_id          text PRIMARY KEY,
    member_id            text NOT NULL,
    service_category     text NOT NULL,
    origin               text NOT NULL CHECK (origin IN ('request', 'discharge')),
    organization_id      text,                 -- ordering TIN (requests) or discharging facility TIN
    ordering_npi         text,
    encounter_id         text,
    urgency              text,
    requested_at         timestamptz NOT NULL,
    status               text NOT NULL CHECK (status IN ('open', 'unroutable', 'completed', 'leaked', 'expired', 'cancelled')),
    network_id           text,                 -- the member's network when routed
    chosen_npi           text,
    chosen_tin           text,
    chosen_tier          text,
    unroutable_reason    text,
    decision             jsonb,                -- the explanation: chosen, alternatives, components, weights
    routing_version      text,
    source_event_id      text NOT NULL,
    closed_at            timestamptz,
    close_reason         text,
    leakage_kind         text,
    leakage_detected_at  timestamptz,
    leakage_evidence     jsonb,
    created_at           timestamptz NOT NULL DEFAULT now(),
    updated_at           timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS referrals_member_service ON referrals (member_id, service_category);
CREATE INDEX IF NOT EXISTS referrals_open_by_provider ON referrals (chosen_npi) WHERE status = 'open';
CREATE INDEX IF NOT EXISTS referrals_open_by_time ON referrals (requested_at) WHERE status = 'open';
CREATE INDEX IF NOT EXISTS referrals_by_organization ON referrals (organization_id, requested_at);
CREATE INDEX IF NOT EXISTS referrals_by_encounter ON referrals (encounter_id) WHERE origin = 'discharge';
