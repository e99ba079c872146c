-- Retention sweeps of finished rows.
DROP INDEX IF EXISTS apalis.jobs_job_type_done_at_idx;
CREATE INDEX jobs_job_type_done_at_idx ON apalis.jobs (job_type, done_at) WHERE done_at IS NOT NULL;
