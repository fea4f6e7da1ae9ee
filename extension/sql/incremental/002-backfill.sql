-- Backfill bookkeeping for pgvision.embed_table: one progress row per (table, feature
-- column), and the rows whose image could not be embedded. Both are written by the role
-- that runs the backfill; row-level security lets a role see the rows of the tables it can
-- read and write those of the tables it can update.

CREATE TABLE pgvision.backfill_progress (
    tbl             regclass NOT NULL,
    feature_column  name NOT NULL,
    image_column    name NOT NULL,
    key_column      name NOT NULL,
    model           text NOT NULL,
    batch_size      int NOT NULL,
    rows_done       bigint NOT NULL DEFAULT 0,
    rows_left       bigint NOT NULL DEFAULT 0,
    null_images     bigint NOT NULL DEFAULT 0,
    errors          bigint NOT NULL DEFAULT 0,
    rate            double precision NOT NULL DEFAULT 0,
    pid             int NOT NULL DEFAULT pg_catalog.pg_backend_pid(),
    started         timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp(),
    updated         timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp(),
    finished        timestamptz,
    PRIMARY KEY (tbl, feature_column)
);

CREATE TABLE pgvision.backfill_errors (
    tbl             regclass NOT NULL,
    feature_column  name NOT NULL,
    key             text NOT NULL,
    model           text NOT NULL,
    error           text NOT NULL,
    sqlstate        text NOT NULL,
    at              timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp(),
    PRIMARY KEY (tbl, feature_column, key)
);

ALTER TABLE pgvision.backfill_progress ENABLE ROW LEVEL SECURITY;
ALTER TABLE pgvision.backfill_errors ENABLE ROW LEVEL SECURITY;

CREATE POLICY backfill_progress_read ON pgvision.backfill_progress FOR SELECT
    USING (pg_catalog.has_table_privilege(tbl, 'SELECT'));
CREATE POLICY backfill_progress_write ON pgvision.backfill_progress FOR ALL
    USING (pg_catalog.has_any_column_privilege(tbl, 'UPDATE'))
    WITH CHECK (pg_catalog.has_any_column_privilege(tbl, 'UPDATE'));
CREATE POLICY backfill_errors_read ON pgvision.backfill_errors FOR SELECT
    USING (pg_catalog.has_table_privilege(tbl, 'SELECT'));
CREATE POLICY backfill_errors_write ON pgvision.backfill_errors FOR ALL
    USING (pg_catalog.has_any_column_privilege(tbl, 'UPDATE'))
    WITH CHECK (pg_catalog.has_any_column_privilege(tbl, 'UPDATE'));
