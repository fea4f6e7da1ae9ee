-- The write policies of the backfill bookkeeping, narrowed (002-backfill.sql, released in
-- 0.1.0, let any role with UPDATE on any column of the table write them, so a role with
-- only UPDATE (note) could record error rows that made the owner's embed_table skip rows).
-- A role now writes the rows of (tbl, feature_column) only if it may UPDATE that feature
-- column, which lets it write the feature itself anyway, and SELECT from the table, which
-- embed_table needs too. The column is looked up by name and checked by number: asked by
-- name about a column that is gone (renamed, or dropped before the event trigger cleaned
-- up), has_column_privilege raises an error, which would break every query on the table.

ALTER POLICY backfill_progress_write ON pgvision.backfill_progress
    USING (pg_catalog.has_table_privilege(tbl, 'SELECT')
           AND pg_catalog.has_column_privilege(tbl,
                   (SELECT a.attnum FROM pg_catalog.pg_attribute a
                    WHERE a.attrelid = tbl AND a.attname = feature_column AND NOT a.attisdropped),
                   'UPDATE'))
    WITH CHECK (pg_catalog.has_table_privilege(tbl, 'SELECT')
                AND pg_catalog.has_column_privilege(tbl,
                        (SELECT a.attnum FROM pg_catalog.pg_attribute a
                         WHERE a.attrelid = tbl AND a.attname = feature_column AND NOT a.attisdropped),
                        'UPDATE'));

ALTER POLICY backfill_errors_write ON pgvision.backfill_errors
    USING (pg_catalog.has_table_privilege(tbl, 'SELECT')
           AND pg_catalog.has_column_privilege(tbl,
                   (SELECT a.attnum FROM pg_catalog.pg_attribute a
                    WHERE a.attrelid = tbl AND a.attname = feature_column AND NOT a.attisdropped),
                   'UPDATE'))
    WITH CHECK (pg_catalog.has_table_privilege(tbl, 'SELECT')
                AND pg_catalog.has_column_privilege(tbl,
                        (SELECT a.attnum FROM pg_catalog.pg_attribute a
                         WHERE a.attrelid = tbl AND a.attname = feature_column AND NOT a.attisdropped),
                        'UPDATE'));
