-- apalis-client migration 0003: the Rust crate 0.6 migration journal.
-- A Rust 0.6 service that only calls verify_schema refuses a database without
-- apalis_diesel_postgres.__diesel_schema_migrations holding every migration it
-- ships. When that journal is absent or empty, write it as the Rust crate's own
-- adoption of an existing schema leaves it: the eleven versions it adopts, plus
-- the three later ones whose effects this client's generation 14 already holds
-- (get_jobs taking FOR KEY SHARE, jobs_active_owner_check, jobs_state_shape_check
-- with jobs_job_type_lock_by_idx). A journal with rows is the Rust crate's and
-- is left alone. The table has Diesel's own shape.
DO $$
BEGIN
    IF to_regnamespace('apalis_diesel_postgres') IS NULL THEN
        -- Only when absent: CREATE SCHEMA IF NOT EXISTS would still need CREATE
        -- on the database.
        CREATE SCHEMA apalis_diesel_postgres;
    END IF;
END;
$$;

CREATE TABLE IF NOT EXISTS apalis_diesel_postgres.__diesel_schema_migrations (
    version VARCHAR(50) PRIMARY KEY NOT NULL,
    run_on  TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP
);

INSERT INTO apalis_diesel_postgres.__diesel_schema_migrations (version)
SELECT v.version
  FROM (VALUES ('00000000000000'), ('20260520000000'), ('20260521000000'),
               ('20260521000001'), ('20260521000002'), ('20260521000003'),
               ('20260521000004'), ('20260521000005'), ('20260521000006'),
               ('20260910000000'), ('20260910000001'), ('20260912000000'),
               ('20260912000001'), ('20260914000000')) AS v(version)
 WHERE NOT EXISTS (SELECT 1 FROM apalis_diesel_postgres.__diesel_schema_migrations);
