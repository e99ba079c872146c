-- name: poll_tasks :many
-- Where the tasks among @ids stand: status, result, and whether they are
-- finished for good (Done, Killed, or Failed out of attempts).
-- not-null: id, status, attempts, max_attempts, finished
SELECT id,
       job_type,
       status,
       attempts,
       max_attempts,
       last_result,
       done_at,
       (status IN ('Done', 'Killed')
        OR (status = 'Failed' AND attempts >= max_attempts)) AS finished
  FROM apalis.jobs
 WHERE id = ANY(@ids::text[]);
