-- Two indexes of jobs keyed on random values, each costing every accepted
-- stop a leaf page that years of history push out of memory:
--
-- jobs(instance_uuid) duplicated what instance_actions' unique
-- (instance_uuid, request_id) index already finds: a job is found by its
-- instance through its action (jobs_action, keyed on the growing action id).
DROP INDEX IF EXISTS jobs_instance;

-- jobs(request_id): request ids are `req-<uuid4>`, as Nova's, so no order
-- of theirs follows time. A trace looks a stop up by its request id with an
-- equality, which a hash index answers from a quarter of the B-tree's
-- pages (four bytes of hash per row instead of the 40-character key), so
-- more of it stays cached. The API makes every request id itself, from 122
-- random bits; nothing else relied on the unique constraint.
ALTER TABLE jobs DROP CONSTRAINT IF EXISTS jobs_request_id_key;
CREATE INDEX jobs_request ON jobs USING hash (request_id);
