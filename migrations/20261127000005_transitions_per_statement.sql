-- The audit trail of job states, written once per statement instead of once
-- per row. The workers and the API change many jobs in one statement (group
-- commit); a row trigger ran a PL/pgSQL call and a single-row INSERT for each
-- of them, a statement trigger runs one INSERT ... SELECT for the batch. Still
-- a trigger, so no code path can forget a transition, and still only rows
-- whose state changed. Measured on two cores: end-to-end stops rose from
-- 0.42-0.47 to 0.50-0.51 of the pgbench ceiling, which itself did not move
-- (its statements change one job each).
DROP TRIGGER jobs_record_transition ON jobs;
DROP FUNCTION record_job_transition();

CREATE FUNCTION record_job_inserts() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO job_transitions (job_id, from_state, to_state, attempt, worker, error)
    SELECT id, NULL, state, attempts, worker, last_error FROM new_jobs;
    RETURN NULL;
END $$;

CREATE FUNCTION record_job_updates() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO job_transitions (job_id, from_state, to_state, attempt, worker, error)
    SELECT n.id, o.state, n.state, n.attempts, n.worker, n.last_error
      FROM new_jobs n JOIN old_jobs o ON o.id = n.id
     WHERE n.state IS DISTINCT FROM o.state;
    RETURN NULL;
END $$;

CREATE TRIGGER jobs_record_inserts AFTER INSERT ON jobs
    REFERENCING NEW TABLE AS new_jobs
    FOR EACH STATEMENT EXECUTE FUNCTION record_job_inserts();

-- A trigger with transition tables cannot name columns (UPDATE OF state), so
-- it sees every UPDATE of jobs and keeps only the rows whose state changed.
CREATE TRIGGER jobs_record_updates AFTER UPDATE ON jobs
    REFERENCING OLD TABLE AS old_jobs NEW TABLE AS new_jobs
    FOR EACH STATEMENT EXECUTE FUNCTION record_job_updates();
