-- Attribution read models: enrollment facts, provider directory, netted service lines,
-- the current attribution per member and its effective-dated history.

-- Enrollment facts as attribution needs them (ids, dates, flags; no names, birth dates or addresses).
CREATE TABLE IF NOT EXISTS members (
    member_id           text PRIMARY KEY,
    plan_id             text NOT NULL,
    network_id          text,
    virtual_first       boolean NOT NULL DEFAULT false,
    v1c_group_npi       text,
    effective_date      date NOT NULL,
    termination_date    date,
    disenrolled_on      date,
    care_manager_id     text,
    selected_pcp_npi    text,
    selected_pcp_tin    text,
    selection           text,          -- member_selected | payer_assigned
    selection_effective date,
    updated_at          timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS members_selected_pcp ON members (selected_pcp_npi) WHERE selected_pcp_npi IS NOT NULL;
CREATE INDEX IF NOT EXISTS members_v1c_group ON members (v1c_group_npi) WHERE v1c_group_npi IS NOT NULL;

-- Provider directory: role pcp/v1c makes an NPI a primary-care provider; NPI -> TIN.
CREATE TABLE IF NOT EXISTS providers (
    npi          text PRIMARY KEY,
    tin          text NOT NULL,
    role         text NOT NULL,
    primary_care boolean NOT NULL,
    active       boolean NOT NULL DEFAULT true,
    updated_at   timestamptz NOT NULL DEFAULT now()
);

-- Each claim as last received (lines as compact jsonb), for reversals, adjustments and resends.
CREATE TABLE IF NOT EXISTS claims (
    claim_id          text PRIMARY KEY,
    member_id         text NOT NULL,
    status            text NOT NULL,
    replaces_claim_id text,
    content_sha256    text NOT NULL,
    lines             jsonb NOT NULL,   -- [[npi, tin, service_date, procedure_code, allowed_amount], ...]
    received_at       timestamptz NOT NULL DEFAULT now()
);

-- Claim ids voided by a reversal or an adjustment (kept even if the voided claim arrives later).
CREATE TABLE IF NOT EXISTS voided_claims (
    claim_id  text PRIMARY KEY,
    voided_by text NOT NULL
);

-- Completed V1C visits as last received (resends under new event ids are no-ops).
CREATE TABLE IF NOT EXISTS virtual_visits (
    visit_id       text PRIMARY KEY,
    member_id      text NOT NULL,
    npi            text NOT NULL,
    tin            text NOT NULL,
    service_date   date NOT NULL,
    procedure_code text NOT NULL,
    allowed_amount numeric(14, 2) NOT NULL,
    content_sha256 text NOT NULL
);

-- Per-member aggregates the rule runs on: allowed totals per provider, day and code, net of
-- reversals and adjustments. line_count 0 means fully reversed (not a visit).
CREATE TABLE IF NOT EXISTS service_days (
    member_id      text NOT NULL,
    npi            text NOT NULL,
    service_date   date NOT NULL,
    procedure_code text NOT NULL,
    virtual_visit  boolean NOT NULL,
    tin            text,
    allowed_total  numeric(14, 2) NOT NULL,
    line_count     integer NOT NULL,
    PRIMARY KEY (member_id, npi, service_date, procedure_code, virtual_visit)
);
CREATE INDEX IF NOT EXISTS service_days_npi ON service_days (npi);

-- The latest result per member (always refreshed with the latest explanation).
CREATE TABLE IF NOT EXISTS attribution_current (
    member_id      text PRIMARY KEY,
    method         text NOT NULL,
    pcp_npi        text,
    pcp_tin        text,               -- the organization that sees the member
    care_team      jsonb NOT NULL,
    explanation    jsonb NOT NULL,
    as_of          date NOT NULL,      -- the latest fact date applied (recomputation is monotone)
    effective_from date,               -- when the current outcome took effect (NULL: never attributed)
    updated_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS attribution_current_org ON attribution_current (pcp_tin, member_id);

-- Effective-dated history: one row per change, [effective_from, effective_to).
CREATE TABLE IF NOT EXISTS attribution_history (
    member_id      text NOT NULL,
    effective_from date NOT NULL,
    effective_to   date,
    method         text NOT NULL,
    pcp_npi        text,
    pcp_tin        text,
    care_team      jsonb NOT NULL,
    explanation    jsonb NOT NULL,
    cause_event_id text,
    recorded_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (member_id, effective_from)
);
CREATE INDEX IF NOT EXISTS attribution_history_org ON attribution_history (pcp_tin, effective_from);

-- Each Da Vinci ATR Group export is a version; changeType compares against one.
CREATE TABLE IF NOT EXISTS group_exports (
    organization_id text NOT NULL,
    version         integer NOT NULL,
    exported_at     timestamptz NOT NULL DEFAULT now(),
    members         jsonb NOT NULL,     -- {member_id: pcp_npi}
    PRIMARY KEY (organization_id, version)
);
