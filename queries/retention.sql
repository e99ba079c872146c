-- name: retention_cutoff :one
-- The purge window's edge, read once at the start of a purge: a purge never
-- chases rows that finish while it runs.
-- not-null: cutoff
SELECT clock_timestamp() - make_interval(secs => @window_secs::float8) AS cutoff;

-- name: purge_batch :execrows
-- Delete up to @batch terminal tasks of a queue (Done, Killed, or Failed out of
-- attempts) that finished before @cutoff. Rows another transaction holds are
-- skipped, so concurrent purges never delete a row twice and never wait on a
-- claim. The finish time is done_at, or run_at for a terminal row without one;
-- the two arms let each use an index range instead of filtering COALESCE.
WITH doomed AS (
    SELECT id
      FROM apalis.jobs
     WHERE job_type = @queue
       AND status IN ('Done', 'Killed', 'Failed')
       AND (status <> 'Failed' OR attempts >= max_attempts)
       AND done_at < @cutoff::timestamptz
     LIMIT @batch
       FOR UPDATE SKIP LOCKED
)
DELETE FROM apalis.jobs AS j
 USING doomed
 WHERE j.id = doomed.id;

-- name: purge_batch_undated :execrows
-- purge_batch for terminal rows with no done_at (older writers left some):
-- their run_at stands in for the finish time.
WITH doomed AS (
    SELECT id
      FROM apalis.jobs
     WHERE job_type = @queue
       AND status IN ('Done', 'Killed', 'Failed')
       AND (status <> 'Failed' OR attempts >= max_attempts)
       AND done_at IS NULL
       AND run_at < @cutoff::timestamptz
     LIMIT @batch
       FOR UPDATE SKIP LOCKED
)
DELETE FROM apalis.jobs AS j
 USING doomed
 WHERE j.id = doomed.id;
