-- Keyset listing across queues by status.
DROP INDEX IF EXISTS apalis.jobs_list_all_idx;
CREATE INDEX jobs_list_all_idx ON apalis.jobs (status, done_at DESC, run_at DESC, id DESC);
