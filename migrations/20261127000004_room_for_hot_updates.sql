-- A stop updates its instance twice (accept, success), its event and its
-- action once. None of those updates touches an indexed column once the
-- powering-off index is gone, so with free space on the page PostgreSQL
-- updates in place (HOT) instead of adding index entries for every version.
-- Stuck instances are still found by `task_state = 'powering-off'`; a scan of
-- instances is cheap next to maintaining that index on every stop.
DROP INDEX instances_powering_off;
ALTER TABLE instances SET (fillfactor = 80);
ALTER TABLE instance_actions SET (fillfactor = 85);
ALTER TABLE instance_actions_events SET (fillfactor = 85);
