-- Active claims per worker: orphan re-enqueue.
DROP INDEX IF EXISTS apalis.jobs_locked_by_queue_idx;
CREATE INDEX jobs_locked_by_queue_idx ON apalis.jobs (job_type, lock_by)
    WHERE lock_by IS NOT NULL AND status IN ('Running', 'Queued');
