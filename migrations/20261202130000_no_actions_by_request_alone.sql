-- instance_actions(request_id) alone: no statement of shutoff looks an
-- action up by its request id without its instance (those use the unique
-- (instance_uuid, request_id) index; a trace starts from jobs.request_id).
-- Keyed on a random value, it cost every accepted stop a leaf page read
-- once the history outgrew memory (429 MB at 5,000,000 past stops).
DROP INDEX IF EXISTS instance_actions_request;
