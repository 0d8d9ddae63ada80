-- Removing an instance action (retention, `shutoff-admin prune`) makes
-- PostgreSQL check that no job still references it (jobs.action_id's
-- foreign key). Without an index that check scanned the whole jobs table for
-- every action removed: a batch of 500 ran past the 10 s statement timeout
-- with 200,000 past stops. Action ids only grow, so the index is appended
-- to at its right edge, and action_id never changes, so updates of a job
-- stay HOT.
CREATE INDEX jobs_action ON jobs (action_id);
