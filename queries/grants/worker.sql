-- Worker: registers, heartbeats and deregisters itself, claims and acknowledges tasks,
-- re-enqueues the tasks of dead workers. {role} is the role.
GRANT USAGE ON SCHEMA apalis TO {role};
GRANT SELECT, UPDATE ON apalis.jobs TO {role};
GRANT SELECT, INSERT, UPDATE ON apalis.workers TO {role};
