-- The relay looks for committed jobs whose publish never went through, oldest
-- first; keep that cheap however many finished jobs the table holds.
CREATE INDEX jobs_queued ON jobs (created_at) WHERE state = 'queued';
