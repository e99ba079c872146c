-- Operator: the CLI's read, retry and kill commands. {role} is the role.
GRANT USAGE ON SCHEMA apalis TO {role};
GRANT SELECT ON apalis.jobs, apalis.workers, apalis.queue_stats_snapshot TO {role};
-- retry sets status, lock_by, lock_at, done_at, run_at, max_attempts; kill sets status,
-- done_at, last_result. Nothing else of a task can be changed.
GRANT UPDATE (status, lock_by, lock_at, done_at, run_at, max_attempts, last_result)
   ON apalis.jobs TO {role};
