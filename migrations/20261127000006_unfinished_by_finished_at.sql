-- The unfinished-jobs index was partial on `state NOT IN ('succeeded',
-- 'failed')`. Every hot statement (claim, success, lease renewal, retry,
-- release, published mark) filters on a state that implies that predicate, so
-- the planner could serve any of them from this index; it does whenever the
-- statistics say the index is near empty, which is the normal case (analyzed
-- at a quiet moment, or while the table held only finished jobs). A backlog
-- then grows the index without the planner knowing, and each claim of a few
-- jobs walked every unfinished job: 90 ms per claim batch with 72,000 queued,
-- so a worker outage drained in time quadratic in its backlog.
--
-- Keyed on finished_at instead, which only the rescuer and the operators'
-- queries name, the hot statements can only look their jobs up by primary
-- key. The CHECK makes "finished_at is set" and "the state is terminal" the
-- same fact, so the two spellings of "unfinished" cannot drift apart.
ALTER TABLE jobs ADD CONSTRAINT jobs_finished_iff_terminal
    CHECK ((finished_at IS NOT NULL) = (state IN ('succeeded', 'failed')));
DROP INDEX jobs_unfinished;
CREATE INDEX jobs_unfinished ON jobs (updated_at) WHERE finished_at IS NULL;
