-- instance_actions' unique (instance_uuid, request_id) was the largest index
-- left keyed on a random value: a uuid and a 40-character request id per
-- action, 481 MB at 5,000,000 past stops, almost four times PostgreSQL's
-- default shared_buffers. Every accepted stop inserted into a random leaf of
-- it, and in the benchmark each one read that leaf from outside
-- shared_buffers (1.00 page per stop) and pushed other indexes' pages out.
-- Every lookup of ours goes by the instance first (a server's actions, one
-- action of a server, a server's jobs, a host's drain, prune's newer-action
-- check) and then reads that server's few actions; none needs the pair to be
-- unique (the API makes every request id itself, from 122 random bits).
--
-- Nova's own index is instance_actions(instance_uuid). Keyed on the uuid
-- alone, B-tree deduplication keeps one entry per server with the list of
-- its actions: 78 MB for the same history. Building it holds off writes to
-- instance_actions while it reads the table, seconds at millions of actions,
-- once, at the upgrade.
CREATE INDEX instance_actions_instance ON instance_actions (instance_uuid);
ALTER TABLE instance_actions DROP CONSTRAINT instance_actions_instance_uuid_request_id_key;
