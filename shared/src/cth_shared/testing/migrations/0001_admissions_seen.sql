CREATE TABLE IF NOT EXISTS admissions_seen (
    member_id text PRIMARY KEY,
    count     integer NOT NULL
);
