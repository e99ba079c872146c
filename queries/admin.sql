-- name: find_task :one
-- One task by id, whatever its queue and status.
SELECT * FROM apalis.jobs WHERE id = @id;

-- name: list_tasks :many
-- Tasks of a queue, newest first (unfinished ones lead), optionally of one
-- status; offset paging, served by jobs_list_by_queue_idx.
-- nullable: status
SELECT *
  FROM apalis.jobs
 WHERE job_type = @queue
   AND (@status::text IS NULL OR status = @status::text)
 ORDER BY done_at DESC NULLS FIRST, run_at DESC, id DESC
 LIMIT @limit
OFFSET @offset;

-- name: queue_stats :many
-- Live per-queue counts by status and the run_at of the oldest claimable
-- Pending task (a full scan: for dashboards prefer the snapshot).
-- not-null: job_type, total, pending, queued, running, done, failed, killed
SELECT job_type,
       count(*) AS total,
       count(*) FILTER (WHERE status = 'Pending') AS pending,
       count(*) FILTER (WHERE status = 'Queued') AS queued,
       count(*) FILTER (WHERE status = 'Running') AS running,
       count(*) FILTER (WHERE status = 'Done') AS done,
       count(*) FILTER (WHERE status = 'Failed') AS failed,
       count(*) FILTER (WHERE status = 'Killed') AS killed,
       min(run_at) FILTER (WHERE status = 'Pending') AS oldest_pending_run_at
  FROM apalis.jobs
 GROUP BY job_type
 ORDER BY job_type;

-- name: refresh_queue_stats_snapshot :exec
-- Recompute apalis.queue_stats_snapshot. Plain (blocking) refresh: the view is
-- created WITH NO DATA, and CONCURRENTLY needs it populated once.
REFRESH MATERIALIZED VIEW apalis.queue_stats_snapshot;

-- name: refresh_queue_stats_snapshot_concurrently :exec
-- Recompute apalis.queue_stats_snapshot without blocking readers (after the
-- first refresh_queue_stats_snapshot).
REFRESH MATERIALIZED VIEW CONCURRENTLY apalis.queue_stats_snapshot;

-- name: read_queue_stats_snapshot :many
-- The per-queue figures of the last snapshot refresh (an error until the first
-- refresh_queue_stats_snapshot: the view is created WITH NO DATA).
-- not-null: job_type, total_jobs, running_jobs, pending_jobs, queued_jobs, failed_jobs
-- not-null: done_jobs, killed_jobs, active_jobs, jobs_past_hour, jobs_past_day
-- not-null: jobs_past_7_days, snapshot_at
SELECT * FROM apalis.queue_stats_snapshot ORDER BY job_type;

-- name: find_tasks :many
-- The tasks among @ids that exist (any queue, any status), in id order.
SELECT * FROM apalis.jobs WHERE id = ANY(@ids::text[]) ORDER BY id;

-- name: retry_task :one
-- Put a finished or failed task back to Pending, claimable at once: the lock
-- and the old result are cleared, and a task out of attempts gets exactly one
-- more.
UPDATE apalis.jobs
   SET status = 'Pending',
       lock_by = NULL,
       lock_at = NULL,
       done_at = NULL,
       last_result = NULL,
       run_at = statement_timestamp(),
       max_attempts = GREATEST(max_attempts, attempts + 1)
 WHERE id = @id
   AND status IN ('Done', 'Failed', 'Killed')
RETURNING *;

-- name: retry_tasks :execrows
-- retry_task for every task of a queue in one status (Done, Failed or Killed).
UPDATE apalis.jobs
   SET status = 'Pending',
       lock_by = NULL,
       lock_at = NULL,
       done_at = NULL,
       last_result = NULL,
       run_at = statement_timestamp(),
       max_attempts = GREATEST(max_attempts, attempts + 1)
 WHERE job_type = @queue
   AND status = @status::text
   AND status IN ('Done', 'Failed', 'Killed');

-- name: kill_task :one
-- Kill a task that has not finished: it will not be claimed again, and a
-- worker still running it gets a stale acknowledgement. lock_by, lock_at and
-- attempts stay as they were, which is how that worker tells an operator's
-- kill from a recovery (a recovery clears the lock).
UPDATE apalis.jobs
   SET status = 'Killed',
       done_at = clock_timestamp(),
       last_result = pg_catalog.jsonb_build_object('Err', @reason::text)
 WHERE id = @id
   AND (status IN ('Pending', 'Queued', 'Running')
        OR (status = 'Failed' AND attempts < max_attempts))
RETURNING *;

-- name: kill_tasks :execrows
-- kill_task for every unfinished task of a queue in one status (Pending,
-- Queued, Running, or Failed with attempts left).
UPDATE apalis.jobs
   SET status = 'Killed',
       done_at = clock_timestamp(),
       last_result = pg_catalog.jsonb_build_object('Err', @reason::text)
 WHERE job_type = @queue
   AND status = @status::text
   AND (status IN ('Pending', 'Queued', 'Running')
        OR (status = 'Failed' AND attempts < max_attempts));
