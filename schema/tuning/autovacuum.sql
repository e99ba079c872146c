-- Autovacuum for a busy queue table, applied on request (`apalis-client migrate
-- --tune-autovacuum`), never by a plain migrate.
--
-- Every claim and every ack updates a row out of the partial jobs_dequeue_idx, leaving a dead
-- entry there that only VACUUM removes; the claim walks those entries in index order before it
-- reaches a claimable row. PostgreSQL's default waits for dead rows worth 20% of the table, so
-- a table holding millions of finished tasks lets hundreds of thousands of dead entries pile up
-- in front of every claim. These settings vacuum after a fixed number of changed rows instead,
-- unthrottled. vacuum_index_cleanup = on: by default (auto) a vacuum that finds dead rows on
-- under 2% of the table's pages skips the indexes, and on a large table 10,000 finished tasks
-- sit on well under 2%, so the dead entries in front of the claim would stay until 2% of the
-- pages had some (measured at 1.2M rows: 10,080 dead entries left by a vacuum that bypassed the
-- indexes). Undo with ALTER TABLE apalis.jobs RESET (...) of the same names.
ALTER TABLE apalis.jobs SET (
    autovacuum_vacuum_scale_factor = 0,
    autovacuum_vacuum_threshold = 10000,
    autovacuum_vacuum_insert_scale_factor = 0,
    autovacuum_vacuum_insert_threshold = 10000,
    autovacuum_analyze_scale_factor = 0,
    autovacuum_analyze_threshold = 10000,
    autovacuum_vacuum_cost_delay = 0,
    vacuum_index_cleanup = on
);
