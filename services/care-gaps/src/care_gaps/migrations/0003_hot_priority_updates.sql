-- Every lane re-ranks its members' active gaps, so most writes to gaps change only the priority.
-- PostgreSQL updates such a row in place (a HOT update: no new index entries) only when no index
-- covers the changed column and the row's page has room for the new version. The global priority
-- index served no query (the worklist is read per organization, through its members, and sorted:
-- see store.worklist) and made each of those updates add an entry to every index of the table;
-- it goes, and pages keep a fifth free for updates.
DROP INDEX IF EXISTS gaps_worklist;
ALTER TABLE gaps SET (fillfactor = 80);
