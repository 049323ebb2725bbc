-- A lane writes the state of the encounters its events touch (admission, discharge, cancels) in one
-- update (store.save_encounters). No index covers those columns, so PostgreSQL can update each row in
-- place (a HOT update: no new index entries) when its page has room for the new version: pages keep a
-- fifth free for that.
ALTER TABLE encounters SET (fillfactor = 80);
