-- Bookkeeping of pgvision.embed_table: progress and bad rows, who sees and writes them,
-- and the event trigger that deletes the rows of dropped tables.

COMMENT ON TABLE pgvision.backfill_progress IS
'progress of pgvision.embed_table, one row per table and feature column, committed with every batch; a role sees the rows of the tables it can read';
COMMENT ON COLUMN pgvision.backfill_progress.tbl IS 'the table being backfilled';
COMMENT ON COLUMN pgvision.backfill_progress.feature_column IS 'the vector column being filled';
COMMENT ON COLUMN pgvision.backfill_progress.image_column IS 'the bytea column the images are read from';
COMMENT ON COLUMN pgvision.backfill_progress.key_column IS 'the unique column rows are addressed by (the primary key unless given)';
COMMENT ON COLUMN pgvision.backfill_progress.model IS 'the model computing the features';
COMMENT ON COLUMN pgvision.backfill_progress.batch_size IS 'rows per batch, each batch one transaction (the model sees them pgvision.batch_size images at a time)';
COMMENT ON COLUMN pgvision.backfill_progress.rows_done IS 'rows embedded by this run';
COMMENT ON COLUMN pgvision.backfill_progress.rows_left IS 'rows with a NULL feature this run has not looked at yet (an estimate: counted at the start)';
COMMENT ON COLUMN pgvision.backfill_progress.null_images IS 'rows skipped by this run because their image is NULL';
COMMENT ON COLUMN pgvision.backfill_progress.errors IS 'rows this run could not embed; see pgvision.backfill_errors';
COMMENT ON COLUMN pgvision.backfill_progress.rate IS 'rows embedded per second since the start of this run';
COMMENT ON COLUMN pgvision.backfill_progress.pid IS 'process id of the backend running it, as in pg_stat_activity';
COMMENT ON COLUMN pgvision.backfill_progress.started IS 'when this run started';
COMMENT ON COLUMN pgvision.backfill_progress.updated IS 'when the last batch was committed';
COMMENT ON COLUMN pgvision.backfill_progress.finished IS 'when this run finished; NULL while it runs or if it was interrupted';

COMMENT ON TABLE pgvision.backfill_errors IS
'rows pgvision.embed_table could not embed; later runs skip them unless called with retry_errors => true';
COMMENT ON COLUMN pgvision.backfill_errors.tbl IS 'the table of the row';
COMMENT ON COLUMN pgvision.backfill_errors.feature_column IS 'the vector column that was being filled';
COMMENT ON COLUMN pgvision.backfill_errors.key IS 'the key of the row, as text';
COMMENT ON COLUMN pgvision.backfill_errors.model IS 'the model that was used';
COMMENT ON COLUMN pgvision.backfill_errors.error IS 'the error message';
COMMENT ON COLUMN pgvision.backfill_errors.sqlstate IS 'the error''s SQLSTATE, e.g. 22P03 for bytes that are not an image';
COMMENT ON COLUMN pgvision.backfill_errors.at IS 'when the error happened';

COMMENT ON POLICY backfill_progress_read ON pgvision.backfill_progress IS
'a role sees the progress of the tables it can SELECT from';
COMMENT ON POLICY backfill_progress_write ON pgvision.backfill_progress IS
'a role writes the progress of a table''s feature column if it may UPDATE that column and SELECT from the table, as pgvision.embed_table does for it (incremental/004-backfill-security.sql)';
COMMENT ON POLICY backfill_errors_read ON pgvision.backfill_errors IS
'a role sees the bad rows of the tables it can SELECT from';
COMMENT ON POLICY backfill_errors_write ON pgvision.backfill_errors IS
'a role records or deletes the bad rows of a table''s feature column if it may UPDATE that column and SELECT from the table (deleting one makes embed_table try it again; such a role could write the feature itself anyway)';

-- Any role may run these on the tables it may change: embed_table checks UPDATE on the
-- feature column, enable/disable_auto_embed ownership of the table. The bookkeeping tables
-- are open to all, and row-level security narrows them to the tables a role can read
-- (SELECT) or update (writes).
GRANT SELECT, INSERT, UPDATE, DELETE ON pgvision.backfill_progress, pgvision.backfill_errors TO PUBLIC;

-- What pgvision keeps about a table goes with it: a table created later may get the dropped
-- one's OID and would otherwise inherit its progress, its error rows (which make embed_table
-- skip rows) and its columns' models (005-feature-models.sql). Dropping a feature column
-- takes its rows too. SECURITY DEFINER because row-level security hides a dropped table's
-- rows from everyone but the owner of these tables (the policies ask about privileges on an
-- OID that no longer exists); the function does nothing but delete the rows of the objects
-- just dropped.
CREATE OR REPLACE FUNCTION pgvision._forget_dropped()
RETURNS event_trigger
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    _tables oid[];
BEGIN
    SELECT pg_catalog.array_agg(DISTINCT d.objid) INTO _tables
    FROM pg_catalog.pg_event_trigger_dropped_objects() d
    WHERE d.classid = 'pg_catalog.pg_class'::pg_catalog.regclass
      AND d.object_type IN ('table', 'table column', 'foreign table', 'foreign table column');
    -- nothing of interest, or pgvision itself is being dropped
    IF _tables IS NULL OR pg_catalog.to_regclass('pgvision.backfill_progress') IS NULL
       OR pg_catalog.to_regclass('pgvision.backfill_errors') IS NULL
       OR pg_catalog.to_regclass('pgvision.feature_models') IS NULL THEN
        RETURN;
    END IF;
    -- A row goes when its table is gone or its feature column no longer exists.
    DELETE FROM pgvision.backfill_progress p
    WHERE p.tbl::oid = ANY (_tables) AND NOT EXISTS (SELECT FROM pgvision._column(p.tbl, p.feature_column));
    DELETE FROM pgvision.backfill_errors e
    WHERE e.tbl::oid = ANY (_tables) AND NOT EXISTS (SELECT FROM pgvision._column(e.tbl, e.feature_column));
    -- a model's record follows its column by number (a rename keeps it)
    DELETE FROM pgvision.feature_models f
    WHERE f.tbl::oid = ANY (_tables)
      AND NOT EXISTS (SELECT FROM pg_catalog.pg_attribute a
                      WHERE a.attrelid = f.tbl AND a.attnum = f.attnum AND NOT a.attisdropped);
END
$$;
COMMENT ON FUNCTION pgvision._forget_dropped() IS
'internal: sql_drop event trigger function; deletes the backfill_progress, backfill_errors and feature_models rows of dropped tables and dropped feature columns';
REVOKE ALL ON FUNCTION pgvision._forget_dropped() FROM PUBLIC;

DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_event_trigger t WHERE t.evtname = 'pgvision_forget_dropped') THEN
        -- every command: tables and columns also go with DROP SCHEMA, TYPE, OWNED ... CASCADE
        CREATE EVENT TRIGGER pgvision_forget_dropped ON sql_drop
            EXECUTE FUNCTION pgvision._forget_dropped();
    END IF;
END
$$;
COMMENT ON EVENT TRIGGER pgvision_forget_dropped IS
'deletes the embed_table bookkeeping and the recorded models of dropped tables and feature columns';
