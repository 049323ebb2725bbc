-- care-gaps read models and gap state (schema care_gaps; search_path set by the runner).

-- What the rules need about each member: enrollment facts (risk, the date the member turns
-- 65 instead of the birth date, termination) and the care team from attribution.changed.
CREATE TABLE IF NOT EXISTS members (
    member_id                  text PRIMARY KEY,
    tenant                     text NOT NULL,
    risk_score                 double precision NOT NULL DEFAULT 0,
    turns_65_on                date,
    termination_date           date,
    enrollment_care_manager_id text,
    enrollment_fact_time       timestamptz,
    pcp_npi                    text,
    pcp_tin                    text,
    v1c_npi                    text,
    v1c_tin                    text,
    team_care_manager_id       text,
    organization_id            text,
    attribution_effective_date date,
    attribution_fact_time      timestamptz
);
CREATE INDEX IF NOT EXISTS members_by_organization ON members (organization_id);

-- Encounter facts as the latest ADT said them (last writer by event time wins).
CREATE TABLE IF NOT EXISTS encounters (
    encounter_id           text PRIMARY KEY,
    member_id              text NOT NULL,
    tenant                 text NOT NULL,
    patient_class          text NOT NULL,
    admitted_at            timestamptz,
    inpatient_since        timestamptz,   -- inpatient admission (A01) or conversion (A06): readmission time
    admit_event_id         text,
    admit_fact_time        timestamptz,
    admit_cancelled_at     timestamptz,
    discharged_at          timestamptz,
    discharge_offset_min   integer,       -- the facility's UTC offset at discharge, minutes
    disposition            text,
    discharge_event_id     text,
    discharge_fact_time    timestamptz,
    discharge_cancelled_at timestamptz
);
CREATE INDEX IF NOT EXISTS encounters_by_member ON encounters (member_id);

-- One row per (encounter, measure): the gap and its whole history in columns.
CREATE TABLE IF NOT EXISTS gaps (
    gap_id                text PRIMARY KEY,
    tenant                text NOT NULL,
    member_id             text NOT NULL,
    encounter_id          text NOT NULL,
    measure               text NOT NULL,
    measure_version       text NOT NULL,
    discharged_at         timestamptz NOT NULL,
    window_start          date NOT NULL,
    due_date              date NOT NULL,
    overdue_at            timestamptz NOT NULL,
    status                text NOT NULL CHECK (status IN ('open', 'closed', 'overdue', 'not_applicable')),
    owner_role            text NOT NULL,
    owner_id              text,
    priority              double precision NOT NULL DEFAULT 0,
    opened_event_id       text NOT NULL,
    closed_at             timestamptz,
    closing_event_id      text,
    closing_rule          text,
    overdue_detected_at   timestamptz,
    not_applicable_reason text,
    updated_at            timestamptz NOT NULL DEFAULT now(),
    UNIQUE (encounter_id, measure)
);
CREATE INDEX IF NOT EXISTS gaps_by_member ON gaps (member_id);
CREATE INDEX IF NOT EXISTS gaps_open_by_due ON gaps (tenant, overdue_at) WHERE status = 'open';
CREATE INDEX IF NOT EXISTS gaps_worklist ON gaps (priority DESC, due_date, gap_id) WHERE status IN ('open', 'overdue');

-- Services that may close gaps, kept so evidence that arrives before its discharge still counts.
CREATE TABLE IF NOT EXISTS evidence (
    evidence_id             text PRIMARY KEY,   -- visit:<visit_id> or claim:<claim_id>:<line>
    member_id               text NOT NULL,
    source                  text NOT NULL CHECK (source IN ('virtual_visit', 'claim')),
    source_event_id         text NOT NULL,
    claim_id                text,
    service_date            date NOT NULL,
    occurred_at             timestamptz NOT NULL,
    procedure_codes         text[] NOT NULL,
    diagnosis_codes         text[] NOT NULL DEFAULT '{}',
    rendering_taxonomy      text,
    medication_reconciliation boolean NOT NULL DEFAULT false,
    interactive_contact     boolean NOT NULL DEFAULT false,
    face_to_face_modality   boolean NOT NULL DEFAULT false
);
CREATE INDEX IF NOT EXISTS evidence_by_member ON evidence (member_id, service_date);
CREATE INDEX IF NOT EXISTS evidence_by_claim ON evidence (claim_id) WHERE claim_id IS NOT NULL;

-- Per-tenant event clock: the latest real-world time of any consumed event (domain.clock).
CREATE TABLE IF NOT EXISTS event_clocks (
    tenant     text PRIMARY KEY,
    clock_time timestamptz NOT NULL,
    live       boolean NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);
