-- The model of each feature column: whatever fills one (embed_table, enable_auto_embed,
-- create_sharded_table, embed_shards, set_column_model) records it, and the searches embed
-- their queries with it. One row per (table, column). tbl is a regclass, so it follows
-- ALTER TABLE RENAME and SET SCHEMA, and pg_dump writes it as a name; the column is kept by
-- name, which a dump keeps, with its number alongside, which a RENAME COLUMN keeps (the
-- trigger on this table and the event trigger in idempotent/005-feature-models.sql keep the two in
-- step). Row-level security as for the backfill bookkeeping (004-backfill-security.sql):
-- a role sees the rows of the tables it can read and writes those of the columns it may
-- update; the column is checked by number, which never raises for a column that is gone.

CREATE TABLE pgvision.feature_models (
    tbl             regclass NOT NULL,
    feature_column  name NOT NULL,
    attnum          int2 NOT NULL,
    model           text NOT NULL,
    recorded        timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp(),
    PRIMARY KEY (tbl, feature_column)
);

ALTER TABLE pgvision.feature_models ENABLE ROW LEVEL SECURITY;

-- The rows of dropped tables and columns are deleted by pgvision._forget_dropped (the
-- sql_drop event trigger of idempotent/010-backfill-bookkeeping.sql), as the extension's owner.
CREATE POLICY feature_models_read ON pgvision.feature_models FOR SELECT
    USING (pg_catalog.has_table_privilege(tbl, 'SELECT'));
CREATE POLICY feature_models_write ON pgvision.feature_models FOR ALL
    USING (pg_catalog.has_table_privilege(tbl, 'SELECT')
           AND pg_catalog.has_column_privilege(tbl, attnum, 'UPDATE'))
    WITH CHECK (pg_catalog.has_table_privilege(tbl, 'SELECT')
                AND pg_catalog.has_column_privilege(tbl, attnum, 'UPDATE'));

SELECT pg_catalog.pg_extension_config_dump('pgvision.feature_models', '');
