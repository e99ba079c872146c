-- name: claim_next :many
-- Claim up to @batch claimable tasks of a queue for a worker, straight to
-- Running, in claim order (priority first, then earliest run_at, then id).
-- A worker holding a lease claims nothing once the lease was taken over.
-- nullable: lease_token
WITH next_jobs AS (
    SELECT c.id
      FROM apalis.jobs AS c
     WHERE c.job_type = @queue
       AND c.status IN ('Pending', 'Failed')
       AND c.attempts < c.max_attempts
       AND c.run_at <= now()
       AND (
            @lease_token::text IS NULL
            OR EXISTS (
                SELECT 1
                  FROM apalis.workers AS w
                 WHERE w.id = @worker_id
                   AND w.worker_type = @queue
                   AND w.lease_token = @lease_token::text
            )
       )
     ORDER BY c.priority DESC, c.run_at ASC, c.id
     LIMIT @batch
       FOR UPDATE SKIP LOCKED
), claimed AS (
    UPDATE apalis.jobs AS j
       SET status = 'Running',
           lock_by = @worker_id,
           lock_at = date_trunc('second', now()),
           done_at = NULL
      FROM next_jobs
     WHERE j.id = next_jobs.id
    RETURNING j.*
)
SELECT * FROM claimed
 ORDER BY priority DESC, run_at ASC, id;

-- name: claim_by_ids :many
-- Claim the claimable tasks among @ids (a NOTIFY wake-up), the same way as
-- claim_next; ids already taken, not yet due or unknown are left alone.
-- nullable: lease_token
WITH next_jobs AS (
    SELECT c.id
      FROM apalis.jobs AS c
     WHERE c.id = ANY(@ids::text[])
       AND c.job_type = @queue
       AND c.status IN ('Pending', 'Failed')
       AND c.attempts < c.max_attempts
       AND c.run_at <= now()
       AND (
            @lease_token::text IS NULL
            OR EXISTS (
                SELECT 1
                  FROM apalis.workers AS w
                 WHERE w.id = @worker_id
                   AND w.worker_type = @queue
                   AND w.lease_token = @lease_token::text
            )
       )
     ORDER BY c.priority DESC, c.run_at ASC, c.id
     LIMIT @batch
       FOR UPDATE SKIP LOCKED
), claimed AS (
    UPDATE apalis.jobs AS j
       SET status = 'Running',
           lock_by = @worker_id,
           lock_at = date_trunc('second', now()),
           done_at = NULL
      FROM next_jobs
     WHERE j.id = next_jobs.id
    RETURNING j.*
)
SELECT * FROM claimed
 ORDER BY priority DESC, run_at ASC, id;

-- name: lock_task :one
-- Lock one task by id for a worker. Idempotent for the same worker: a row it
-- already holds keeps its lock_at. Returns nothing when the task is not
-- claimable (finished, out of attempts, or held by another worker), or when
-- the worker's lease was taken over.
-- nullable: lease_token
UPDATE apalis.jobs AS j
   SET status = 'Running',
       lock_by = @worker_id,
       lock_at = CASE
           WHEN j.status IN ('Queued', 'Running') AND j.lock_by = @worker_id THEN j.lock_at
           ELSE date_trunc('second', now())
       END,
       done_at = NULL
 WHERE j.id = @id
   AND j.job_type = @queue
   AND (
        (j.status IN ('Pending', 'Failed') AND j.attempts < j.max_attempts)
        OR (j.status IN ('Queued', 'Running') AND j.lock_by = @worker_id)
   )
   AND (
        @lease_token::text IS NULL
        OR EXISTS (
            SELECT 1
              FROM apalis.workers AS w
             WHERE w.id = @worker_id
               AND w.worker_type = @queue
               AND w.lease_token = @lease_token::text
        )
   )
RETURNING j.*;
