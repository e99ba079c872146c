-- Statements the migrator and verify_schema run: schema bookkeeping and
-- catalog reads that compare the database with generation 14.

-- name: set_lock_timeout :exec
-- For the rest of the migrate transaction: how long any lock (the advisory
-- locks below, the DDL's table locks) may be waited for.
SELECT pg_catalog.set_config('lock_timeout', @timeout::text, true);

-- name: pin_search_path :exec
-- For the rest of the migrate transaction: names in the DDL resolve in
-- pg_catalog only (pg_temp last, for relations), whatever the session's
-- search_path, so no object another role created in public (an exact-type
-- overload of a built-in) can be bound into a default, constraint, index or
-- view definition, or run as the migrator.
SELECT pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);

-- name: lock_rust_migrations :exec
-- The Rust crate 0.6 setup's transaction-scoped lock: every migrator of the
-- apalis schema takes it, so a Python migrate and a Rust setup() queue up.
SELECT pg_advisory_xact_lock(hashtext('apalis_diesel_postgres'), hashtext('migrations'));

-- name: lock_schema :exec
-- This client's own lock, also transaction-scoped (taken after the Rust one).
SELECT pg_catalog.pg_advisory_xact_lock(@key);

-- name: rust_journal_present :one
-- Whether the Rust crate 0.6 migration journal exists.
-- not-null: present
SELECT to_regclass('apalis_diesel_postgres.__diesel_schema_migrations') IS NOT NULL AS present;

-- name: rust_journal_versions :many
-- The versions the Rust crate 0.6 journal records (read only when it exists).
-- not-null: version
SELECT version::text AS version
  FROM apalis_diesel_postgres.__diesel_schema_migrations
 ORDER BY 1;

-- name: relations :many
-- not-null: name, kind
SELECT c.relname::text AS name, c.relkind::text AS kind
  FROM pg_class AS c
  JOIN pg_namespace AS n ON n.oid = c.relnamespace
 WHERE n.nspname = 'apalis' AND c.relkind IN ('r', 'm', 'v', 'p')
 ORDER BY 1;

-- name: applied_migrations :many
SELECT filename, checksum FROM apalis.apalis_client_migrations ORDER BY filename;

-- name: record_migration :exec
INSERT INTO apalis.apalis_client_migrations (filename, checksum) VALUES (@filename, @checksum);

-- name: columns :many
-- not-null: table_name, column_name, data_type
SELECT c.relname::text AS table_name,
       a.attname::text AS column_name,
       format_type(a.atttypid, a.atttypmod) AS data_type,
       a.attnotnull AS not_null,
       pg_get_expr(d.adbin, d.adrelid) AS column_default
  FROM pg_attribute AS a
  JOIN pg_class AS c ON c.oid = a.attrelid
  JOIN pg_namespace AS n ON n.oid = c.relnamespace
  LEFT JOIN pg_attrdef AS d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
 WHERE n.nspname = 'apalis' AND c.relname IN ('jobs', 'workers', 'queue_stats_snapshot')
   AND a.attnum > 0 AND NOT a.attisdropped
 ORDER BY c.relname, a.attnum;

-- name: constraints :many
-- not-null: name, definition, validated, deferrable
SELECT con.conname::text AS name, pg_get_constraintdef(con.oid) AS definition,
       con.convalidated AS validated, con.condeferrable AS deferrable
  FROM pg_constraint AS con
  JOIN pg_class AS c ON c.oid = con.conrelid
  JOIN pg_namespace AS n ON n.oid = c.relnamespace
 WHERE n.nspname = 'apalis' AND c.relname IN ('jobs', 'workers')
   -- PostgreSQL 18 catalogs NOT NULL as constraints too; columns cover those.
   AND con.contype <> 'n'
 ORDER BY 1;

-- name: indexes :many
-- not-null: name, definition, valid, ready
SELECT ic.relname::text AS name, pg_get_indexdef(i.indexrelid) AS definition,
       i.indisvalid AS valid, i.indisready AS ready
  FROM pg_index AS i
  JOIN pg_class AS ic ON ic.oid = i.indexrelid
  JOIN pg_namespace AS n ON n.oid = ic.relnamespace
 WHERE n.nspname = 'apalis'
 ORDER BY 1;

-- name: functions :many
-- not-null: name, arguments, result, config, volatility, language
SELECT p.proname::text AS name,
       pg_get_function_arguments(p.oid) AS arguments,
       pg_get_function_result(p.oid) AS result,
       p.prosrc AS source,
       coalesce(pg_catalog.array_to_string(p.proconfig, ';'), '') AS config,
       p.prosecdef AS security_definer,
       p.provolatile::text AS volatility,
       l.lanname::text AS language
  FROM pg_proc AS p
  JOIN pg_namespace AS n ON n.oid = p.pronamespace
  JOIN pg_language AS l ON l.oid = p.prolang
 WHERE n.nspname = 'apalis'
 ORDER BY 1;

-- name: triggers :many
-- not-null: name, type, enabled, no_when, nargs, new_table, function
SELECT t.tgname::text AS name,
       t.tgtype::int4 AS type,
       t.tgenabled::text AS enabled,
       t.tgqual IS NULL AS no_when,
       t.tgnargs::int4 AS nargs,
       coalesce(t.tgnewtable::text, '') AS new_table,
       t.tgfoid::regproc::text AS function
  FROM pg_trigger AS t
  JOIN pg_class AS c ON c.oid = t.tgrelid
  JOIN pg_namespace AS n ON n.oid = c.relnamespace
 WHERE n.nspname = 'apalis' AND NOT t.tgisinternal
 ORDER BY 1;
