-- Host-aware stops. A stop is carried out only by a worker of its
-- instance's host (instances.host): the claim checks it, and every publish
-- routes the job's message to that host's own queue.

-- The host a job is for, copied from its instance at accept and written
-- again by the claim (the same value: the claim only takes jobs of the
-- worker's own host), so the job row says where it was carried out. Older
-- finished jobs keep NULL: rewriting years of history on upgrade buys
-- nothing, and the unfinished ones are filled in below.
ALTER TABLE jobs ADD COLUMN host text;
UPDATE jobs SET host = i.host
  FROM instances i
 WHERE i.uuid = jobs.instance_uuid AND jobs.finished_at IS NULL;

-- New and changed instances keep to the host names a queue name can carry
-- (shutoff_core::ids::HostName); existing rows are left as they are.
ALTER TABLE instances ADD CONSTRAINT instances_host_name
    CHECK (host ~ '^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$') NOT VALID;

-- The hosts workers have served, kept by their heartbeats. A host is up
-- while one of its workers has beaten within the deployment's
-- --host-down-after; the relay and the rescuer leave a down host's stops
-- alone (they wait in PostgreSQL), and its worker re-drives them when it
-- starts.
CREATE TABLE hosts (
    name        text PRIMARY KEY CHECK (name ~ '^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$'),
    first_seen  timestamptz NOT NULL DEFAULT now(),
    last_seen   timestamptz NOT NULL DEFAULT now()
);

-- One row per worker process serving a host, removed when it shuts down
-- cleanly; a crashed worker's row simply stops being refreshed.
CREATE TABLE host_workers (
    host        text NOT NULL REFERENCES hosts (name),
    worker      text NOT NULL,
    version     text NOT NULL,
    started_at  timestamptz NOT NULL DEFAULT now(),
    last_seen   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (host, worker)
);
ALTER TABLE hosts SET (fillfactor = 50);
ALTER TABLE host_workers SET (fillfactor = 50);
