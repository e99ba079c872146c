-- Claim order of claimable rows: serves the claim query as an index scan.
DROP INDEX IF EXISTS apalis.jobs_dequeue_idx;
CREATE INDEX jobs_dequeue_idx ON apalis.jobs (job_type, priority DESC, run_at, id)
    WHERE status IN ('Pending', 'Failed') AND attempts < max_attempts;
