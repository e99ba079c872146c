-- name: ack :execrows
-- Record the outcome of one claimed task. The guard (owner, lock_at, attempts,
-- Running, and the worker's lease when it holds one) makes a late or duplicate
-- ack update nothing: zero rows means a stale acknowledgement.
-- @outcome is Done, Failed (becomes Killed once attempts run out) or Killed.
-- nullable: lease_token
UPDATE apalis.jobs AS j
   SET status = CASE
           WHEN @outcome::text = 'Failed' AND j.attempts + 1 >= j.max_attempts THEN 'Killed'
           ELSE @outcome::text
       END,
       attempts = j.attempts + 1,
       last_result = @result::jsonb,
       done_at = now()
 WHERE j.id = @id
   AND j.job_type = @queue
   AND j.lock_by = @worker_id
   AND j.lock_at = @lock_at
   AND j.attempts = @attempts
   AND j.status = 'Running'
   AND (
        @lease_token::text IS NULL
        OR EXISTS (
            SELECT 1
              FROM apalis.workers AS w
             WHERE w.id = @worker_id
               AND w.worker_type = @queue
               AND w.lease_token = @lease_token::text
        )
   );

-- name: ack_batch :many
-- Record many outcomes in one statement, each row under the same guard as
-- ack. Returns the ids that were acknowledged; a missing id was stale.
-- nullable: lease_token
WITH acks AS (
    SELECT a.id, a.attempts, a.lock_at, a.outcome, a.result
      FROM unnest(
               @ids::text[],
               @attempts::int4[],
               @lock_ats::timestamptz[],
               @outcomes::text[],
               @results::text[]
           ) AS a(id, attempts, lock_at, outcome, result)
)
UPDATE apalis.jobs AS j
   SET status = CASE
           WHEN acks.outcome = 'Failed' AND j.attempts + 1 >= j.max_attempts THEN 'Killed'
           ELSE acks.outcome
       END,
       attempts = j.attempts + 1,
       last_result = acks.result::jsonb,
       done_at = now()
  FROM acks
 WHERE j.id = acks.id
   AND j.job_type = @queue
   AND j.lock_by = @worker_id
   AND j.lock_at = acks.lock_at
   AND j.attempts = acks.attempts
   AND j.status = 'Running'
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
RETURNING j.id, j.status;
