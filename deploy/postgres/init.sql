-- One database per service (DESIGN.md: a service's tables belong to it alone).
-- Run once by the postgres image on an empty data volume (docker-entrypoint-initdb.d),
-- as POSTGRES_USER, which therefore owns them. Each service applies its own migrations
-- into its own schema at start-up; nothing else is created here.
CREATE DATABASE attribution;
CREATE DATABASE referrals;
CREATE DATABASE care_gaps;
CREATE DATABASE notifications;

-- No one but the owner may connect; a per-service login role is the next step in a
-- shared cluster (see deploy/README.md, "Secrets and credentials").
REVOKE CONNECT ON DATABASE attribution FROM PUBLIC;
REVOKE CONNECT ON DATABASE referrals FROM PUBLIC;
REVOKE CONNECT ON DATABASE care_gaps FROM PUBLIC;
REVOKE CONNECT ON DATABASE notifications FROM PUBLIC;
