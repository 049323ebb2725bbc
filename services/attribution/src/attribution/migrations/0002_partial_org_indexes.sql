-- The organization indexes serve `WHERE pcp_tin = $1` (panel, export, as-of panel) only; unattributed
-- members (no TIN: most of a first roster load) need no entry. Partial indexes make every bulk or live
-- write of an unattributed result skip one index insert (measured: 1M-row insert 2.9 s -> 2.05 s).
DROP INDEX IF EXISTS attribution_current_org;
CREATE INDEX attribution_current_org ON attribution_current (pcp_tin, member_id) WHERE pcp_tin IS NOT NULL;
DROP INDEX IF EXISTS attribution_history_org;
CREATE INDEX attribution_history_org ON attribution_history (pcp_tin, effective_from) WHERE pcp_tin IS NOT NULL;
