-- apalis.notify_new_jobs: one NOTIFY per queue per chunk of at most 100 ids
-- for the rows an INSERT statement made runnable now. NOTIFY is transactional,
-- so listeners hear only about committed pushes.
CREATE OR REPLACE FUNCTION apalis.notify_new_jobs()
RETURNS trigger
LANGUAGE plpgsql
VOLATILE
SECURITY INVOKER
SET search_path = pg_catalog, apalis, pg_temp
AS $function$
DECLARE
    batch record;
BEGIN
    FOR batch IN
        SELECT ready.job_type,
               string_agg(to_json(ready.id)::text, ', ' ORDER BY ready.id) AS ids
          FROM (
                SELECT n.job_type,
                       n.id,
                       (row_number() OVER (PARTITION BY n.job_type ORDER BY n.id) - 1) / 100
                           AS chunk
                  FROM new_jobs AS n
                 WHERE n.run_at <= statement_timestamp()
               ) AS ready
         GROUP BY ready.job_type, ready.chunk
         ORDER BY ready.job_type, ready.chunk
    LOOP
        PERFORM pg_notify(
            'apalis::job::insert',
            '{"job_type": ' || to_json(batch.job_type)::text || ', "ids": [' || batch.ids || ']}'
        );
    END LOOP;
    RETURN NULL;
END;
$function$;
