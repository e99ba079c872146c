-- name: claim_next :many
-- Claim up to @batch claimable tasks of a queue for a worker, straight to
-- Running (a claim and a start in one step), in claim order (priority first,
-- then earliest run_at, then id). The worker guard comes first: the worker row
-- is locked FOR KEY SHARE (with its lease token, when one is given), so a
-- takeover or release, which lock it FOR UPDATE, is ordered against the claim;
-- a worker whose lease was taken over or released claims nothing.
-- nullable: lease_token
WITH guard AS MATERIALIZED (
    SELECT w.id
      FROM apalis.workers AS w
     WHERE w.id = @worker_id
       AND w.worker_type = @queue
       AND (@lease_token::text IS NULL OR w.lease_token = @lease_token::text)
       FOR KEY SHARE
), next_jobs AS (
    SELECT c.id
      FROM apalis.jobs AS c
     WHERE EXISTS (SELECT 1 FROM guard)
       AND c.job_type = @queue
       AND c.status IN ('Pending', 'Failed')
       AND c.attempts < c.max_attempts
       AND c.run_at <= statement_timestamp()
     ORDER BY c.priority DESC, c.run_at ASC, c.id
     LIMIT @batch
       FOR UPDATE SKIP LOCKED
), claimed AS (
    UPDATE apalis.jobs AS j
       SET status = 'Running',
           lock_by = @worker_id,
           lock_at = date_trunc('second', statement_timestamp()),
           done_at = NULL
      FROM next_jobs
     WHERE j.id = next_jobs.id
    RETURNING j.*
)
SELECT * FROM claimed
 ORDER BY priority DESC, run_at ASC, id;

-- name: claim_by_ids :many
-- Claim the claimable tasks among @ids (a NOTIFY wake-up), the same way as
-- claim_next (worker guard first); ids already taken, not yet due or unknown
-- are left alone.
-- nullable: lease_token
WITH guard AS MATERIALIZED (
    SELECT w.id
      FROM apalis.workers AS w
     WHERE w.id = @worker_id
       AND w.worker_type = @queue
       AND (@lease_token::text IS NULL OR w.lease_token = @lease_token::text)
       FOR KEY SHARE
), next_jobs AS (
    SELECT c.id
      FROM apalis.jobs AS c
     WHERE EXISTS (SELECT 1 FROM guard)
       AND c.id = ANY(@ids::text[])
       AND c.job_type = @queue
       AND c.status IN ('Pending', 'Failed')
       AND c.attempts < c.max_attempts
       AND c.run_at <= statement_timestamp()
     ORDER BY c.priority DESC, c.run_at ASC, c.id
     LIMIT @batch
       FOR UPDATE SKIP LOCKED
), claimed AS (
    UPDATE apalis.jobs AS j
       SET status = 'Running',
           lock_by = @worker_id,
           lock_at = date_trunc('second', statement_timestamp()),
           done_at = NULL
      FROM next_jobs
     WHERE j.id = next_jobs.id
    RETURNING j.*
)
SELECT * FROM claimed
 ORDER BY priority DESC, run_at ASC, id;

-- name: lock_task :one
-- Lock one due task by id for a worker, after the worker guard. Idempotent for
-- the same worker: a row it already holds keeps its lock_at. Returns nothing
-- when the task is not claimable (finished, out of attempts, not yet due, or
-- held by another worker), or when the worker's lease was taken over.
-- nullable: lease_token
WITH guard AS MATERIALIZED (
    SELECT w.id
      FROM apalis.workers AS w
     WHERE w.id = @worker_id
       AND w.worker_type = @queue
       AND (@lease_token::text IS NULL OR w.lease_token = @lease_token::text)
       FOR KEY SHARE
)
UPDATE apalis.jobs AS j
   SET status = 'Running',
       lock_by = @worker_id,
       lock_at = CASE
           WHEN j.status IN ('Queued', 'Running') AND j.lock_by = @worker_id THEN j.lock_at
           ELSE date_trunc('second', statement_timestamp())
       END,
       done_at = NULL
 WHERE EXISTS (SELECT 1 FROM guard)
   AND j.id = @id
   AND j.job_type = @queue
   AND j.run_at <= statement_timestamp()
   AND (
        (j.status IN ('Pending', 'Failed') AND j.attempts < j.max_attempts)
        OR (j.status IN ('Queued', 'Running') AND j.lock_by = @worker_id)
   )
RETURNING j.*;
