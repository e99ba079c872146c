-- name: ack :execrows
-- Record the outcome of one claimed task, after the worker guard (the worker
-- row FOR KEY SHARE, with its lease token when one is given). The row guard
-- (owner, lock_at, attempts, Queued or Running) makes a late or duplicate ack
-- update nothing: zero rows means a stale acknowledgement.
-- @outcome is Done, Failed (becomes Killed once attempts run out) or Killed.
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
   SET status = CASE
           WHEN @outcome::text = 'Failed' AND j.attempts + 1 >= j.max_attempts THEN 'Killed'
           ELSE @outcome::text
       END,
       attempts = j.attempts + 1,
       last_result = @result::jsonb,
       done_at = clock_timestamp()
 WHERE EXISTS (SELECT 1 FROM guard)
   AND j.id = @id
   AND j.job_type = @queue
   AND j.lock_by = @worker_id
   AND j.lock_at = @lock_at
   AND j.attempts = @attempts
   AND j.status IN ('Queued', 'Running');

-- name: ack_batch :many
-- Record many outcomes in one statement, after one worker guard, each row
-- under the same row guard as ack. @delays holds the retry backoff in seconds
-- per task: run_at moves to completion + delay only when the row ends Failed
-- (attempts left), so a Rust worker sees just a later run_at, which its claim
-- already respects. Returns the ids that were acknowledged with their final
-- status and run_at; a missing id was stale.
-- nullable: lease_token
WITH guard AS MATERIALIZED (
    SELECT w.id
      FROM apalis.workers AS w
     WHERE w.id = @worker_id
       AND w.worker_type = @queue
       AND (@lease_token::text IS NULL OR w.lease_token = @lease_token::text)
       FOR KEY SHARE
), acks AS (
    SELECT a.id, a.attempts, a.lock_at, a.outcome, a.result, a.delay,
           clock_timestamp() AS finished_at
      FROM ROWS FROM (
               pg_catalog.unnest(@ids::text[]),
               pg_catalog.unnest(@attempts::int4[]),
               pg_catalog.unnest(@lock_ats::timestamptz[]),
               pg_catalog.unnest(@outcomes::text[]),
               pg_catalog.unnest(@results::text[]),
               pg_catalog.unnest(@delays::float8[])
           ) AS a(id, attempts, lock_at, outcome, result, delay)
)
UPDATE apalis.jobs AS j
   SET status = CASE
           WHEN acks.outcome = 'Failed' AND j.attempts + 1 >= j.max_attempts THEN 'Killed'
           ELSE acks.outcome
       END,
       attempts = j.attempts + 1,
       last_result = acks.result::jsonb,
       done_at = acks.finished_at,
       run_at = CASE
           WHEN acks.outcome = 'Failed' AND j.attempts + 1 < j.max_attempts
               THEN acks.finished_at
                    + pg_catalog.make_interval(secs => GREATEST(acks.delay, 0::float8))
           ELSE j.run_at
       END
  FROM acks
 WHERE EXISTS (SELECT 1 FROM guard)
   AND j.id = acks.id
   AND j.job_type = @queue
   AND j.lock_by = @worker_id
   AND j.lock_at = acks.lock_at
   AND j.attempts = acks.attempts
   AND j.status IN ('Queued', 'Running')
RETURNING j.id, j.status, j.run_at;
