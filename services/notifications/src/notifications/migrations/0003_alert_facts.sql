-- The facts every alert was raised from, one row per (subject, kind): when the care team in
-- force at an event's time becomes known only after the event was handled (attribution lags the
-- encounters topic; topics are not ordered with each other), the new team's alerts are raised
-- from these rows. Deterministic notification ids keep re-raising idempotent.
CREATE TABLE IF NOT EXISTS alert_facts (
    subject_key     text NOT NULL,
    kind            text NOT NULL,
    member_id       text NOT NULL,
    event_time      timestamptz NOT NULL,
    encounter_id    text,
    patient_class   text,
    due_date        date,
    facts           jsonb NOT NULL,
    parties         jsonb NOT NULL,
    source_event_id text NOT NULL,
    PRIMARY KEY (subject_key, kind)
);
CREATE INDEX IF NOT EXISTS alert_facts_member_time ON alert_facts (member_id, event_time);
