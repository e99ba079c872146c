-- name: ack_batch_backoff :many
-- Record many outcomes in one statement, as ack_batch does, and move the run_at
-- of every attempt that stays retryable (final status Failed) to its delay after
-- completion: @delays holds seconds per task (0 for no wait; ignored unless the
-- row ends Failed). A Rust worker sees only a later run_at, which its claim
-- already respects. The worker row is locked FOR KEY SHARE first and its lease
-- token checked: no row or another token acknowledges nothing. Guarded per row
-- by owner, lock_at, attempts and Queued/Running; a missing id was stale.
-- Returns each acknowledged id with its final status and run_at.
WITH guard AS (
    SELECT w.id
      FROM apalis.workers AS w
     WHERE w.id = @worker_id
       AND w.worker_type = @queue
       AND w.lease_token = @lease_token::text
       FOR KEY SHARE
), acks AS (
    SELECT a.id, a.attempts, a.lock_at, a.outcome, a.result, a.delay
      FROM unnest(
               @ids::text[],
               @attempts::int4[],
               @lock_ats::timestamptz[],
               @outcomes::text[],
               @results::text[],
               @delays::float8[]
           ) AS a(id, attempts, lock_at, outcome, result, delay)
), decided AS (
    SELECT acks.*,
           clock_timestamp() AS finished_at,
           CASE
               WHEN acks.outcome = 'Failed' AND acks.attempts + 1 >= j.max_attempts THEN 'Killed'
               ELSE acks.outcome
           END AS final_status
      FROM acks
      JOIN apalis.jobs AS j ON j.id = acks.id
)
UPDATE apalis.jobs AS j
   SET status = d.final_status,
       attempts = j.attempts + 1,
       last_result = d.result::jsonb,
       done_at = d.finished_at,
       run_at = CASE
           WHEN d.final_status = 'Failed'
               THEN d.finished_at + make_interval(secs => GREATEST(d.delay, 0))
           ELSE j.run_at
       END
  FROM decided AS d
 WHERE j.id = d.id
   AND j.job_type = @queue
   AND j.lock_by = @worker_id
   AND j.lock_at = d.lock_at
   AND j.attempts = d.attempts
   AND j.status IN ('Queued', 'Running')
   AND EXISTS (SELECT 1 FROM guard)
RETURNING j.id, j.status, j.run_at;
