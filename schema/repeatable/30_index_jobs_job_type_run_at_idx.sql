-- Per-queue schedule scans.
DROP INDEX IF EXISTS apalis.jobs_job_type_run_at_idx;
CREATE INDEX jobs_job_type_run_at_idx ON apalis.jobs (job_type, run_at);
