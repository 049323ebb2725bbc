-- Cancels (A11 cancel admit, A13 cancel discharge) are remembered per encounter: a cancel that
-- arrives before the event it cancels (a resend, or two feeds of one hospital) still retracts
-- the alerts that event raises. A cancel at T covers the admit/discharge at or before T.
CREATE TABLE IF NOT EXISTS encounter_cancels (
    encounter_id text NOT NULL,
    cancels      text NOT NULL CHECK (cancels IN ('admit', 'discharge')),
    cancelled_at timestamptz NOT NULL,
    PRIMARY KEY (encounter_id, cancels)
);
