-- Rows referencing a worker: worker deletion and FK checks.
DROP INDEX IF EXISTS apalis.jobs_job_type_lock_by_idx;
CREATE INDEX jobs_job_type_lock_by_idx ON apalis.jobs (job_type, lock_by) WHERE lock_by IS NOT NULL;
