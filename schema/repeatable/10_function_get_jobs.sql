-- apalis.get_jobs: claim up to v_job_count claimable tasks of a queue for a
-- worker (status Queued). Parameter names and the default must stay exactly
-- so: the Rust setup runs CREATE OR REPLACE over this function.
CREATE OR REPLACE FUNCTION apalis.get_jobs(
    worker_id text,
    v_job_type text,
    v_job_count integer DEFAULT 5
)
RETURNS SETOF apalis.jobs
LANGUAGE plpgsql
VOLATILE
SECURITY INVOKER
SET search_path = pg_catalog, apalis, pg_temp
AS $function$
BEGIN
    IF worker_id IS NULL THEN
        RAISE EXCEPTION 'apalis.get_jobs: worker_id must not be NULL'
            USING ERRCODE = '22004';
    END IF;

    -- Pin the worker row so a concurrent deregistration cannot strand claims.
    PERFORM 1
       FROM apalis.workers AS w
      WHERE w.id = worker_id AND w.worker_type = v_job_type
        FOR KEY SHARE;

    RETURN QUERY
    UPDATE apalis.jobs AS j
       SET status  = 'Queued',
           lock_by = worker_id,
           lock_at = date_trunc('second', statement_timestamp()),
           done_at = NULL
      FROM (
            SELECT c.id
              FROM apalis.jobs AS c
             WHERE c.job_type = v_job_type
               AND c.status IN ('Pending', 'Failed')
               AND c.attempts < c.max_attempts
               AND c.run_at <= statement_timestamp()
             ORDER BY c.priority DESC, c.run_at ASC, c.id
             LIMIT v_job_count
               FOR UPDATE SKIP LOCKED
           ) AS next_jobs
     WHERE j.id = next_jobs.id
    RETURNING j.*;
END;
$function$;
