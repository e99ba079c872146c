-- name: queue_depth :many
-- The active rows of the given queues for depth gauges: waiting (claimable
-- statuses with attempts left) split into due now and scheduled later, queued,
-- running, and the age in seconds of the oldest due waiting task (0 when none).
-- Reads only active rows (served by jobs_dequeue_idx and
-- jobs_locked_by_queue_idx), never the finished history.
-- not-null: job_type, due, scheduled, queued, running, oldest_due_age_secs
SELECT q.job_type,
       pg_catalog.count(j.id) FILTER (
           WHERE j.status IN ('Pending', 'Failed') AND j.run_at <= statement_timestamp()
       ) AS due,
       pg_catalog.count(j.id) FILTER (
           WHERE j.status IN ('Pending', 'Failed') AND j.run_at > statement_timestamp()
       ) AS scheduled,
       pg_catalog.count(j.id) FILTER (WHERE j.status = 'Queued') AS queued,
       pg_catalog.count(j.id) FILTER (WHERE j.status = 'Running') AS running,
       COALESCE(
           EXTRACT(EPOCH FROM statement_timestamp() - min(j.run_at) FILTER (
               WHERE j.status IN ('Pending', 'Failed') AND j.run_at <= statement_timestamp()
           ))::float8,
           0
       ) AS oldest_due_age_secs
  FROM pg_catalog.unnest(@queues::text[]) AS q(job_type)
  LEFT JOIN apalis.jobs AS j
    ON j.job_type = q.job_type
   AND (
        (j.status IN ('Pending', 'Failed') AND j.attempts < j.max_attempts)
        OR (j.status IN ('Queued', 'Running') AND j.lock_by IS NOT NULL)
   )
 GROUP BY q.job_type
 ORDER BY q.job_type;
