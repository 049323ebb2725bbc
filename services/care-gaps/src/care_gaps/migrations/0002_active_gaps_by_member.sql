-- A member's active gaps (counted and read per lane) without visiting the closed ones, which pile up.
CREATE INDEX IF NOT EXISTS gaps_active_by_member ON gaps (member_id) WHERE status IN ('open', 'overdue');
