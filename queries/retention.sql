-- name: retention_cutoff :one
-- The purge window's edge, read once at the start of a purge: a purge never
-- chases rows that finish while it runs.
-- not-null: cutoff
SELECT clock_timestamp() - make_interval(secs => @window_secs::float8) AS cutoff;

-- name: purge_batch :one
-- Delete up to @batch terminal tasks of a queue (Done, Killed, or Failed out of
-- attempts) that finished before @cutoff, oldest first from @after on. Rows
-- another transaction holds are skipped, so concurrent purges never delete a
-- row twice and never wait on a claim. Returns how many went and the newest
-- finish time among them: the next batch starts there, so no batch walks the
-- index entries earlier batches left dead (jobs_job_type_done_at_idx serves
-- the range). Terminal rows without done_at are purge_batch_undated's.
-- not-null: deleted
WITH doomed AS (
    SELECT id
      FROM apalis.jobs
     WHERE job_type = @queue
       AND done_at >= @after::timestamptz
       AND done_at < @cutoff::timestamptz
       AND status IN ('Done', 'Killed', 'Failed')
       AND (status <> 'Failed' OR attempts >= max_attempts)
     ORDER BY done_at
     LIMIT @batch
       FOR UPDATE SKIP LOCKED
), gone AS (
    DELETE FROM apalis.jobs
     WHERE id = ANY(ARRAY(SELECT id FROM doomed))
    RETURNING done_at
)
SELECT count(*) AS deleted, max(done_at) AS last_at FROM gone;

-- name: purge_batch_undated :one
-- purge_batch for terminal rows with no done_at (older writers left some):
-- their run_at stands in for the finish time (jobs_job_type_run_at_idx).
-- not-null: deleted
WITH doomed AS (
    SELECT id
      FROM apalis.jobs
     WHERE job_type = @queue
       AND run_at >= @after::timestamptz
       AND run_at < @cutoff::timestamptz
       AND done_at IS NULL
       AND status IN ('Done', 'Killed', 'Failed')
       AND (status <> 'Failed' OR attempts >= max_attempts)
     ORDER BY run_at
     LIMIT @batch
       FOR UPDATE SKIP LOCKED
), gone AS (
    DELETE FROM apalis.jobs
     WHERE id = ANY(ARRAY(SELECT id FROM doomed))
    RETURNING run_at
)
SELECT count(*) AS deleted, max(run_at) AS last_at FROM gone;
