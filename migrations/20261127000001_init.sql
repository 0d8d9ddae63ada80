-- shutoff's schema. Everything an operator needs to answer "what happened to
-- request req-...?" is here, in plain tables and plain text columns.

-- Keystone-style projects (32 hex characters). A disabled or deleted project
-- is "not found" to the API.
CREATE TABLE projects (
    id          text PRIMARY KEY CHECK (id ~ '^[0-9a-f]{32}$'),
    name        text NOT NULL UNIQUE,
    enabled     boolean NOT NULL DEFAULT true,
    deleted_at  timestamptz,
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- Nova's instances, reduced to what stopping needs. vm_state and task_state
-- use Nova's spellings; power_state uses Nova's integers (RUNNING 1, SHUTDOWN 4).
CREATE TABLE instances (
    uuid         uuid PRIMARY KEY,
    project_id   text NOT NULL REFERENCES projects (id),
    user_id      text NOT NULL,
    name         text NOT NULL,
    host         text NOT NULL DEFAULT 'sim-1',
    vm_state     text NOT NULL DEFAULT 'active' CHECK (vm_state IN (
                     'active', 'building', 'paused', 'suspended', 'stopped', 'rescued',
                     'resized', 'soft-delete', 'deleted', 'error', 'shelved',
                     'shelved_offloaded')),
    task_state   text,
    power_state  smallint NOT NULL DEFAULT 1 CHECK (power_state IN (0, 1, 3, 4, 6, 7)),
    launched_at  timestamptz,
    locked       boolean NOT NULL DEFAULT false,
    -- Which hypervisor driver powers this VM off, and where: fake://?delay_ms=200, qemu+unix:///...
    hypervisor   text NOT NULL DEFAULT 'fake://',
    flavor       text NOT NULL DEFAULT 'm1.small',
    image        text NOT NULL DEFAULT '',
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX instances_project_name ON instances (project_id, name);
CREATE INDEX instances_powering_off ON instances (updated_at) WHERE task_state = 'powering-off';

-- Nova's instance_actions: one row per accepted stop request.
CREATE TABLE instance_actions (
    id             bigserial PRIMARY KEY,
    action         text NOT NULL,
    instance_uuid  uuid NOT NULL REFERENCES instances (uuid),
    request_id     text NOT NULL,
    user_id        text NOT NULL,
    project_id     text NOT NULL,
    start_time     timestamptz NOT NULL DEFAULT now(),
    finish_time    timestamptz,
    message        text,
    UNIQUE (instance_uuid, request_id)
);
CREATE INDEX instance_actions_request ON instance_actions (request_id);

-- Nova's instance_actions_events: what the worker did for an action. One
-- compute_stop_instance event per action, however many attempts it took.
CREATE TABLE instance_actions_events (
    id           bigserial PRIMARY KEY,
    action_id    bigint NOT NULL REFERENCES instance_actions (id),
    event        text NOT NULL,
    start_time   timestamptz NOT NULL DEFAULT now(),
    finish_time  timestamptz,
    result       text CHECK (result IN ('Success', 'Error')),
    traceback    text,
    details      text,
    host         text,
    UNIQUE (action_id, event)
);

-- Nova's instance_faults: why a stop failed.
CREATE TABLE instance_faults (
    id             bigserial PRIMARY KEY,
    instance_uuid  uuid NOT NULL REFERENCES instances (uuid),
    request_id     text,
    code           integer NOT NULL,
    message        text NOT NULL,
    details        text,
    host           text,
    created_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX instance_faults_instance ON instance_faults (instance_uuid);

-- One row per accepted stop. State machine (see shutoff_core::state::JobState):
--   queued -> published -> running -> succeeded | failed
--   running -> retrying -> running            (transient failure, attempts left)
CREATE TABLE jobs (
    id                uuid PRIMARY KEY,
    instance_uuid     uuid NOT NULL REFERENCES instances (uuid),
    request_id        text NOT NULL UNIQUE,
    action_id         bigint NOT NULL REFERENCES instance_actions (id),
    state             text NOT NULL DEFAULT 'queued' CHECK (state IN (
                          'queued', 'published', 'running', 'retrying', 'succeeded', 'failed')),
    attempts          integer NOT NULL DEFAULT 0,
    max_attempts      integer NOT NULL CHECK (max_attempts > 0),
    last_error        text,
    worker            text,
    -- A running job belongs to its worker until this instant; after it, another
    -- worker (or the rescuer) may take it over.
    lease_expires_at  timestamptz,
    created_at        timestamptz NOT NULL DEFAULT now(),
    published_at      timestamptz,
    started_at        timestamptz,
    finished_at       timestamptz,
    updated_at        timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX jobs_instance ON jobs (instance_uuid);
CREATE INDEX jobs_unfinished ON jobs (updated_at) WHERE state NOT IN ('succeeded', 'failed');

-- Every state change of every job, written by a trigger so no code path can
-- forget it: the audit trail that proves a job ended exactly once.
CREATE TABLE job_transitions (
    id          bigserial PRIMARY KEY,
    job_id      uuid NOT NULL REFERENCES jobs (id),
    from_state  text,
    to_state    text NOT NULL,
    attempt     integer NOT NULL,
    worker      text,
    error       text,
    at          timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX job_transitions_job ON job_transitions (job_id);

CREATE FUNCTION record_job_transition() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' OR NEW.state IS DISTINCT FROM OLD.state THEN
        INSERT INTO job_transitions (job_id, from_state, to_state, attempt, worker, error)
        VALUES (NEW.id, CASE WHEN TG_OP = 'UPDATE' THEN OLD.state END, NEW.state,
                NEW.attempts, NEW.worker, NEW.last_error);
    END IF;
    RETURN NEW;
END $$;

CREATE TRIGGER jobs_record_transition AFTER INSERT OR UPDATE OF state ON jobs
    FOR EACH ROW EXECUTE FUNCTION record_job_transition();

-- Tokens are stored as the hex SHA-256 of the token; the token itself is
-- shown once by `shutoff-admin token create` and never kept.
CREATE TABLE tokens (
    sha256      text PRIMARY KEY CHECK (sha256 ~ '^[0-9a-f]{64}$'),
    project_id  text NOT NULL REFERENCES projects (id),
    user_id     text NOT NULL,
    roles       text[] NOT NULL,
    expires_at  timestamptz NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- Messages a worker could not act on (unparseable, unknown job, wrong
-- instance). The message itself goes to the dead-letter queue; this row says
-- why, so an operator finds it with SQL.
CREATE TABLE dead_letters (
    id          bigserial PRIMARY KEY,
    queue       text NOT NULL,
    reason      text NOT NULL,
    message_id  text,
    payload     text NOT NULL,
    worker      text NOT NULL,
    at          timestamptz NOT NULL DEFAULT now()
);
