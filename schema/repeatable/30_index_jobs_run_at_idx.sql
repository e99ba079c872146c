-- Global schedule scans.
DROP INDEX IF EXISTS apalis.jobs_run_at_idx;
CREATE INDEX jobs_run_at_idx ON apalis.jobs (run_at);
