-- Features for a whole table: the pgvision.embed_table backfill (batch by batch, one
-- transaction per batch) and automatic embedding with a trigger.

COMMENT ON TABLE pgvision.backfill_progress IS
'progress of pgvision.embed_table, one row per table and feature column, committed with every batch; a role sees the rows of the tables it can read';
COMMENT ON COLUMN pgvision.backfill_progress.tbl IS 'the table being backfilled';
COMMENT ON COLUMN pgvision.backfill_progress.feature_column IS 'the vector column being filled';
COMMENT ON COLUMN pgvision.backfill_progress.image_column IS 'the bytea column the images are read from';
COMMENT ON COLUMN pgvision.backfill_progress.key_column IS 'the unique column rows are addressed by (the primary key unless given)';
COMMENT ON COLUMN pgvision.backfill_progress.model IS 'the model computing the features';
COMMENT ON COLUMN pgvision.backfill_progress.batch_size IS 'rows per batch, each batch one model call and one transaction';
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

-- Names for the dynamic SQL that runs under the caller's search_path, built from the
-- catalogs: format_type and regclass output leave out the schema of whatever the current
-- search_path finds (pg_catalog's text, a temporary table), which a caller's search_path
-- with public first would then find elsewhere (a public.text domain, a public table).
CREATE OR REPLACE FUNCTION pgvision._type_name(typ oid)
RETURNS text
LANGUAGE sql STABLE PARALLEL SAFE STRICT
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT pg_catalog.quote_ident(n.nspname) || '.' || pg_catalog.quote_ident(t.typname)
    FROM pg_catalog.pg_type t JOIN pg_catalog.pg_namespace n ON n.oid = t.typnamespace
    WHERE t.oid = typ
$$;
COMMENT ON FUNCTION pgvision._type_name(oid) IS
'internal: a type''s name with its schema, both quoted, without type modifiers (pg_catalog.text, public.vector), whatever the search_path';

CREATE OR REPLACE FUNCTION pgvision._rel_name(rel regclass)
RETURNS text
LANGUAGE sql STABLE PARALLEL SAFE STRICT
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT pg_catalog.quote_ident(n.nspname) || '.' || pg_catalog.quote_ident(c.relname)
    FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
    WHERE c.oid = rel
$$;
COMMENT ON FUNCTION pgvision._rel_name(regclass) IS
'internal: a relation''s name with its schema (pg_temp_N for a temporary table), both quoted, whatever the search_path';

-- The operators that compare keys: those of the btree operator family of the key's unique
-- index, with their schema, so that a key type whose operators live outside pg_catalog
-- (citext) works and no operator of the same name elsewhere is ever chosen.
CREATE OR REPLACE FUNCTION pgvision._key_operators(rel regclass, key_col name,
                                                   OUT lt text, OUT eq text, OUT gt text)
LANGUAGE sql STABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT pg_catalog.max(o.op) FILTER (WHERE o.strategy = 1),
           pg_catalog.max(o.op) FILTER (WHERE o.strategy = 3),
           pg_catalog.max(o.op) FILTER (WHERE o.strategy = 5)
    FROM (SELECT i.indclass[0] AS opclass
          FROM pg_catalog.pg_index i
          JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]
          JOIN pg_catalog.pg_class ic ON ic.oid = i.indexrelid
          JOIN pg_catalog.pg_am am ON am.oid = ic.relam
          WHERE i.indrelid = rel AND a.attname = key_col AND i.indisunique AND i.indisvalid
            AND i.indnkeyatts = 1 AND i.indpred IS NULL AND am.amname = 'btree'
          ORDER BY i.indisprimary DESC, i.indexrelid
          LIMIT 1) ix
    JOIN pg_catalog.pg_opclass oc ON oc.oid = ix.opclass
    CROSS JOIN LATERAL (
        SELECT ao.amopstrategy AS strategy,
               pg_catalog.format('OPERATOR(%I.%s)', n.nspname, op.oprname) AS op
        FROM pg_catalog.pg_amop ao
        JOIN pg_catalog.pg_operator op ON op.oid = ao.amopopr
        JOIN pg_catalog.pg_namespace n ON n.oid = op.oprnamespace
        WHERE ao.amopfamily = oc.opcfamily AND ao.amoplefttype = oc.opcintype
          AND ao.amoprighttype = oc.opcintype AND ao.amopstrategy IN (1, 3, 5)) o
$$;
COMMENT ON FUNCTION pgvision._key_operators(regclass, name) IS
'internal: the <, = and > operators of the btree operator family of a key column''s unique index, each as OPERATOR(schema.op)';

-- Checks that tbl.image_column (bytea) can be embedded by model into tbl.feature_column (a
-- pgvector column of the model's dimensions); returns the feature column's type name.
CREATE OR REPLACE FUNCTION pgvision._embed_columns(rel regclass, image_col name, feature_col name,
                                                   model_name text)
RETURNS text
LANGUAGE plpgsql STABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    _kind "char";
    _dim int;
    _type oid;
    _typmod int;
    _generated "char";
BEGIN
    IF rel IS NULL OR image_col IS NULL OR feature_col IS NULL OR model_name IS NULL THEN
        RAISE EXCEPTION 'table, image column, feature column and model must not be null'
            USING ERRCODE = 'null_value_not_allowed';
    END IF;
    SELECT c.relkind INTO _kind FROM pg_catalog.pg_class c WHERE c.oid = rel;
    IF _kind IS NULL OR _kind NOT IN ('r', 'p') THEN
        RAISE EXCEPTION '% is not a table', rel USING ERRCODE = 'wrong_object_type';
    END IF;
    SELECT m.dim INTO _dim FROM pgvision.models m WHERE m.name = model_name;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'model "%" does not exist', model_name USING ERRCODE = 'undefined_object',
            HINT = 'SELECT name FROM pgvision.models lists the registered models';
    END IF;

    SELECT a.atttypid INTO _type FROM pg_catalog.pg_attribute a
    WHERE a.attrelid = rel AND a.attname = image_col AND a.attnum > 0 AND NOT a.attisdropped;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'column "%" of relation % does not exist', image_col, rel
            USING ERRCODE = 'undefined_column';
    END IF;
    IF _type <> 'pg_catalog.bytea'::pg_catalog.regtype THEN
        RAISE EXCEPTION 'image column "%" is of type %, not bytea', image_col,
            pg_catalog.format_type(_type, NULL) USING ERRCODE = 'datatype_mismatch';
    END IF;

    SELECT a.atttypid, a.atttypmod, a.attgenerated INTO _type, _typmod, _generated
    FROM pg_catalog.pg_attribute a
    WHERE a.attrelid = rel AND a.attname = feature_col AND a.attnum > 0 AND NOT a.attisdropped;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'column "%" of relation % does not exist', feature_col, rel
            USING ERRCODE = 'undefined_column';
    END IF;
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_type t
                   JOIN pg_catalog.pg_extension e ON e.extnamespace = t.typnamespace
                   WHERE t.oid = _type AND e.extname = 'vector' AND t.typname IN ('vector', 'halfvec')) THEN
        RAISE EXCEPTION 'feature column "%" is of type %, not vector', feature_col,
            pg_catalog.format_type(_type, _typmod) USING ERRCODE = 'datatype_mismatch',
            HINT = pg_catalog.format('features of model "%s" fit a vector(%s) column', model_name, _dim);
    END IF;
    IF _generated <> '' THEN
        RAISE EXCEPTION 'feature column "%" is a generated column', feature_col
            USING ERRCODE = 'generated_always';
    END IF;
    IF _typmod > 0 AND _typmod <> _dim THEN
        RAISE EXCEPTION 'feature column "%" has % dimensions, but model "%" returns %',
            feature_col, _typmod, model_name, _dim USING ERRCODE = 'datatype_mismatch';
    END IF;
    RETURN pg_catalog.format_type(_type, NULL);
END
$$;
COMMENT ON FUNCTION pgvision._embed_columns(regclass, name, name, text) IS
'internal: checks that an image column (bytea) can be embedded by a model into a feature column (vector of its dimensions); returns the feature column''s type';

-- The column rows are addressed by: key_col if given (it must be NOT NULL with a unique
-- index of its own), else the single-column primary key.
CREATE OR REPLACE FUNCTION pgvision._embed_key(rel regclass, key_col name)
RETURNS name
LANGUAGE plpgsql STABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    _key name;
BEGIN
    IF key_col IS NULL THEN
        SELECT a.attname INTO _key
        FROM pg_catalog.pg_index i
        JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]
        WHERE i.indrelid = rel AND i.indisprimary AND i.indnkeyatts = 1;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'table % has no single-column primary key', rel
                USING ERRCODE = 'object_not_in_prerequisite_state',
                      HINT = 'name a NOT NULL column with a unique index with key_column => ''column''';
        END IF;
        RETURN _key;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_attribute a
                   WHERE a.attrelid = rel AND a.attname = key_col AND a.attnum > 0 AND NOT a.attisdropped) THEN
        RAISE EXCEPTION 'column "%" of relation % does not exist', key_col, rel
            USING ERRCODE = 'undefined_column';
    END IF;
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_attribute a
                   JOIN pg_catalog.pg_index i ON i.indrelid = a.attrelid AND i.indkey[0] = a.attnum
                   WHERE a.attrelid = rel AND a.attname = key_col AND a.attnotnull
                     AND i.indisunique AND i.indisvalid AND i.indnkeyatts = 1 AND i.indpred IS NULL) THEN
        RAISE EXCEPTION 'key column "%" of % is not a unique NOT NULL column', key_col, rel
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'rows are addressed by the key: it needs NOT NULL and a unique index on it alone';
    END IF;
    RETURN key_col;
END
$$;
COMMENT ON FUNCTION pgvision._embed_key(regclass, name) IS
'internal: the column embed_table addresses rows by: the given one if it is NOT NULL and unique, else the single-column primary key';

CREATE OR REPLACE FUNCTION pgvision._embed_table_start(rel regclass, image_col name, feature_col name,
                                                       model_name text, nrows int, key_col name,
                                                       retry boolean)
RETURNS name
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    _key name;
    _todo bigint;
    _skipped bigint := 0;
BEGIN
    PERFORM pgvision._embed_columns(rel, image_col, feature_col, model_name);
    IF nrows IS NULL OR retry IS NULL THEN
        RAISE EXCEPTION 'batch_size and retry_errors must not be null' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF nrows < 1 THEN
        RAISE EXCEPTION 'batch_size must be at least 1, not %', nrows
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    _key := pgvision._embed_key(rel, key_col);
    IF NOT pg_catalog.has_column_privilege(rel, feature_col, 'UPDATE') THEN
        RAISE EXCEPTION 'permission denied for table %', rel USING ERRCODE = 'insufficient_privilege',
            HINT = pg_catalog.format('embed_table needs UPDATE on column %I', feature_col);
    END IF;
    IF retry THEN
        DELETE FROM pgvision.backfill_errors e WHERE e.tbl = rel AND e.feature_column = feature_col;
    END IF;
    EXECUTE pg_catalog.format('SELECT pg_catalog.count(*) FROM %s AS t WHERE t.%I IS NULL',
                              pgvision._rel_name(rel), feature_col)
        INTO _todo;
    IF NOT retry THEN
        EXECUTE pg_catalog.format(
            'SELECT pg_catalog.count(*) FROM pgvision.backfill_errors AS e JOIN %s AS t'
            ' ON t.%I::pg_catalog.text OPERATOR(pg_catalog.=) e.key'
            ' WHERE e.tbl OPERATOR(pg_catalog.=) $1 AND e.feature_column OPERATOR(pg_catalog.=) $2'
            ' AND t.%I IS NULL',
            pgvision._rel_name(rel), _key, feature_col)
            INTO _skipped USING rel, feature_col;
    END IF;
    INSERT INTO pgvision.backfill_progress AS p
        (tbl, feature_column, image_column, key_column, model, batch_size, rows_left)
    VALUES (rel, feature_col, image_col, _key, model_name, nrows, _todo - _skipped)
    ON CONFLICT (tbl, feature_column) DO UPDATE
        SET image_column = EXCLUDED.image_column, key_column = EXCLUDED.key_column,
            model = EXCLUDED.model, batch_size = EXCLUDED.batch_size, rows_done = 0,
            rows_left = EXCLUDED.rows_left, null_images = 0, errors = 0, rate = 0,
            pid = EXCLUDED.pid, started = EXCLUDED.started, updated = EXCLUDED.updated,
            finished = NULL;
    IF _skipped > 0 THEN
        RAISE NOTICE '%: % rows to embed, skipping % rows recorded in pgvision.backfill_errors',
            rel, _todo - _skipped, _skipped
            USING HINT = 'CALL pgvision.embed_table(..., retry_errors => true) tries them again';
    ELSE
        RAISE NOTICE '%: % rows to embed', rel, _todo;
    END IF;
    RETURN _key;
END
$$;
COMMENT ON FUNCTION pgvision._embed_table_start(regclass, name, name, text, int, name, boolean) IS
'internal: checks the arguments of pgvision.embed_table and starts its progress row; returns the key column';

-- One batch: the next nrows rows after after_key (in key order) whose feature is NULL,
-- embedded with one embed_batch call; if that fails on bad data, the rows are embedded one
-- at a time and those that fail are recorded in pgvision.backfill_errors. Returns the last
-- key of the batch, or NULL when there is nothing left (and marks the run finished).
-- The UPDATE of the user's table runs with the caller's search_path, so the table's own
-- triggers work as they do for the caller's UPDATEs; the statement itself names every
-- relation, type, function and operator with its schema (pgvision._type_name, _rel_name,
-- _key_operators), so that nothing the caller's search_path finds first (a public.= on
-- varchar, a public.text domain) runs in it.
CREATE OR REPLACE FUNCTION pgvision._embed_table_batch(rel regclass, image_col name, feature_col name,
                                                       model_name text, nrows int, key_col name,
                                                       retry boolean, after_key text,
                                                       caller_search_path text)
RETURNS text
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    _rel text := pgvision._rel_name(rel);
    _keytype text;
    _feattype text;
    _ops record;
    _keys text[];
    _images bytea[];
    _features text[];
    _n int;
    _nulls int := 0;
    _failed int := 0;
    _done bigint := 0;
    _msg text;
    _state text;
    _p pgvision.backfill_progress;
BEGIN
    SELECT pgvision._type_name(a.atttypid) INTO _keytype FROM pg_catalog.pg_attribute a
    WHERE a.attrelid = rel AND a.attname = key_col AND NOT a.attisdropped;
    SELECT pgvision._type_name(a.atttypid) INTO _feattype FROM pg_catalog.pg_attribute a
    WHERE a.attrelid = rel AND a.attname = feature_col AND NOT a.attisdropped;
    _ops := pgvision._key_operators(rel, key_col);
    IF _ops.lt IS NULL OR _ops.eq IS NULL OR _ops.gt IS NULL THEN
        RAISE EXCEPTION 'key column "%" of % has no btree unique index to order rows by', key_col, rel
            USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;

    -- Keyset pagination on the key's unique index: each batch reads only rows after the
    -- previous one, so a run is linear in the table's size and always ends.
    EXECUTE pg_catalog.format(
        'SELECT pg_catalog.array_agg(b.k::pg_catalog.text ORDER BY b.k USING %7$s),'
        ' pg_catalog.array_agg(b.img ORDER BY b.k USING %7$s)'
        ' FROM (SELECT t.%1$I AS k, t.%2$I AS img FROM %3$s AS t WHERE t.%4$I IS NULL %5$s %6$s'
        '       ORDER BY t.%1$I USING %7$s LIMIT $4 FOR UPDATE OF t) AS b',
        key_col, image_col, _rel, feature_col,
        CASE WHEN after_key IS NOT NULL THEN pg_catalog.format('AND t.%I %s $1::%s', key_col, _ops.gt, _keytype) END,
        CASE WHEN NOT retry THEN pg_catalog.format(
            'AND NOT EXISTS (SELECT FROM pgvision.backfill_errors AS e WHERE e.tbl OPERATOR(pg_catalog.=) $2'
            ' AND e.feature_column OPERATOR(pg_catalog.=) $3'
            ' AND e.key OPERATOR(pg_catalog.=) t.%I::pg_catalog.text)', key_col) END,
        _ops.lt)
        INTO _keys, _images USING after_key, rel, feature_col, nrows;

    _n := coalesce(pg_catalog.array_length(_keys, 1), 0);
    IF _n = 0 THEN
        PERFORM pgvision._release_batch_memory();
        UPDATE pgvision.backfill_progress AS p
        SET rows_left = 0, updated = pg_catalog.clock_timestamp(), finished = pg_catalog.clock_timestamp()
        WHERE p.tbl = rel AND p.feature_column = feature_col
        RETURNING p.* INTO _p;
        RAISE NOTICE '%: embedded % rows in % s (% rows/s), % failed, % without image',
            rel, _p.rows_done, round(extract(epoch FROM _p.finished - _p.started), 1),
            round(_p.rate::numeric, 1), _p.errors, _p.null_images;
        RETURN NULL;
    END IF;

    FOR i IN 1 .. _n LOOP
        IF _images[i] IS NULL THEN
            _nulls := _nulls + 1;
        END IF;
    END LOOP;
    IF _nulls < _n THEN
        PERFORM pg_catalog.set_config('search_path', caller_search_path, true);
        BEGIN
            -- One statement: the features go from the model to the column as float4 bytes
            -- (a round trip through text would format and parse 1280 floats per row). The
            -- model keeps its activation memory from batch to batch (regrowing it for each
            -- would cost a sixth of a thumbnail batch's time) until the run ends; a run
            -- that is interrupted leaves it to the next embed_batch or the end of the session.
            EXECUTE pg_catalog.format(
                'UPDATE %1$s AS t SET %2$I = pgvision._vector_from_float4(u.f)::%3$s'
                ' FROM ROWS FROM (pg_catalog.unnest($1::pg_catalog.text[]),'
                ' pg_catalog.unnest(pgvision._embed_batch_float4($2::pg_catalog.bytea[], $3::pg_catalog.text, true)))'
                ' AS u (k, f) WHERE t.%4$I %6$s u.k::%5$s AND u.f IS NOT NULL',
                _rel, feature_col, _feattype, key_col, _keytype, _ops.eq)
                USING _keys, _images, model_name;
            GET DIAGNOSTICS _done = ROW_COUNT;
        EXCEPTION WHEN data_exception OR program_limit_exceeded THEN
            -- Some image is bad: embed one at a time and record those that fail.
            PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);
            _features := pg_catalog.array_fill(NULL::text, ARRAY[_n]);
            FOR i IN 1 .. _n LOOP
                CONTINUE WHEN _images[i] IS NULL;
                BEGIN
                    _features[i] := pgvision.embed(_images[i], model_name)::text;
                EXCEPTION WHEN data_exception OR program_limit_exceeded THEN
                    GET STACKED DIAGNOSTICS _msg = MESSAGE_TEXT, _state = RETURNED_SQLSTATE;
                    INSERT INTO pgvision.backfill_errors AS e
                        (tbl, feature_column, key, model, error, sqlstate)
                    VALUES (rel, feature_col, _keys[i], model_name, _msg, _state)
                    ON CONFLICT (tbl, feature_column, key) DO UPDATE
                        SET model = EXCLUDED.model, error = EXCLUDED.error,
                            sqlstate = EXCLUDED.sqlstate, at = EXCLUDED.at;
                    _failed := _failed + 1;
                END;
            END LOOP;
            PERFORM pg_catalog.set_config('search_path', caller_search_path, true);
            EXECUTE pg_catalog.format(
                'UPDATE %1$s AS t SET %2$I = u.f::%3$s'
                ' FROM ROWS FROM (pg_catalog.unnest($1::pg_catalog.text[]), pg_catalog.unnest($2::pg_catalog.text[])) AS u (k, f)'
                ' WHERE t.%4$I %6$s u.k::%5$s AND u.f IS NOT NULL',
                _rel, feature_col, _feattype, key_col, _keytype, _ops.eq)
                USING _keys, _features;
            GET DIAGNOSTICS _done = ROW_COUNT;
        END;
        PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);
    END IF;

    UPDATE pgvision.backfill_progress AS p
    SET rows_done = p.rows_done + _done, null_images = p.null_images + _nulls,
        errors = p.errors + _failed, rows_left = greatest(p.rows_left - _n, 0),
        updated = pg_catalog.clock_timestamp(),
        rate = (p.rows_done + _done)
               / greatest(extract(epoch FROM pg_catalog.clock_timestamp() - p.started), 0.001)
    WHERE p.tbl = rel AND p.feature_column = feature_col
    RETURNING p.* INTO _p;
    RAISE NOTICE '%: % rows embedded, % left, % failed, % without image, % rows/s',
        rel, _p.rows_done, _p.rows_left, _p.errors, _p.null_images, round(_p.rate::numeric, 1);
    RETURN _keys[_n];
END
$$;
COMMENT ON FUNCTION pgvision._embed_table_batch(regclass, name, name, text, int, name, boolean, text, text) IS
'internal: embeds the next batch of pgvision.embed_table and records its progress; returns the batch''s last key, NULL when done';

-- PL/pgSQL cannot tell whether the procedure it runs may COMMIT; src/transaction.c asks
-- the procedure's SPI connection.
CREATE OR REPLACE FUNCTION pgvision._transaction_context()
RETURNS text
LANGUAGE c VOLATILE PARALLEL RESTRICTED
SET search_path = pg_catalog, pg_temp
AS '$libdir/pgvision', 'pgvision_transaction_context';
COMMENT ON FUNCTION pgvision._transaction_context() IS
'internal: NULL when the calling procedure may COMMIT, else why not ("run inside a transaction block", "be called from a function")';

-- No SET clause here: a procedure with one cannot COMMIT. The body runs under the caller's
-- search_path, so it declares its variables with qualified types and only calls
-- schema-qualified functions with arguments of their exact types; the work is done by the
-- functions above, which pin search_path.
CREATE OR REPLACE PROCEDURE pgvision.embed_table(tbl regclass, image_column name, feature_column name,
                                                 model text DEFAULT 'efficientnet_lite0',
                                                 batch_size int DEFAULT 64,
                                                 key_column name DEFAULT NULL,
                                                 retry_errors boolean DEFAULT false)
LANGUAGE plpgsql
AS $$
DECLARE
    _key pg_catalog.name;
    _after pg_catalog.text;
    _cannot pg_catalog.text := pgvision._transaction_context();
BEGIN
    -- COMMIT would refuse only after the first batch's work; say so before any.
    IF _cannot IS NOT NULL THEN
        RAISE EXCEPTION USING ERRCODE = 'invalid_transaction_termination',
            MESSAGE = pg_catalog.concat('pgvision.embed_table cannot ', _cannot),
            DETAIL = 'it commits after every batch',
            HINT = 'CALL it on its own, in autocommit mode; from JDBC, send CALL pgvision.embed_table(...) as a plain statement, or use {call ...} with the connection option escapeSyntaxCallMode=callIfNoReturn';
    END IF;
    _key := pgvision._embed_table_start(tbl, image_column, feature_column, model, batch_size,
                                        key_column, retry_errors);
    COMMIT;
    LOOP
        _after := pgvision._embed_table_batch(tbl, image_column, feature_column, model, batch_size,
                                              _key, retry_errors, _after,
                                              pg_catalog.current_setting('search_path'));
        COMMIT;
        EXIT WHEN _after IS NULL;
    END LOOP;
END
$$;
COMMENT ON PROCEDURE pgvision.embed_table(regclass, name, name, text, int, name, boolean) IS
'fills the NULL features of a table from its images, batch_size rows per model call, committing after each batch; progress in pgvision.backfill_progress, bad images in pgvision.backfill_errors; CALL it outside a transaction block; can be interrupted and run again';

-- Automatic embedding: one generic trigger function, told the columns and the model by the
-- trigger's arguments.
CREATE OR REPLACE FUNCTION pgvision._auto_embed()
RETURNS trigger
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    _image bytea;
BEGIN
    -- TG_ARGV: image column, feature column, model
    EXECUTE pg_catalog.format('SELECT ($1).%I', TG_ARGV[0]) INTO _image USING NEW;
    -- The feature travels as pgvector's text form, which reads back exactly.
    RETURN pg_catalog.jsonb_populate_record(
        NEW, pg_catalog.jsonb_build_object(TG_ARGV[1], pgvision.embed(_image, TG_ARGV[2])));
END
$$;
COMMENT ON FUNCTION pgvision._auto_embed() IS
'internal: trigger function of pgvision.enable_auto_embed; sets the feature column (TG_ARGV[1]) to pgvision.embed of the image column (TG_ARGV[0]) with the model TG_ARGV[2]';

CREATE OR REPLACE FUNCTION pgvision._check_owner(rel regclass)
RETURNS void
LANGUAGE plpgsql STABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_class c WHERE c.oid = rel AND pg_catalog.pg_has_role(c.relowner, 'USAGE')) THEN
        RAISE EXCEPTION 'must be owner of table %', rel USING ERRCODE = 'insufficient_privilege';
    END IF;
END
$$;
COMMENT ON FUNCTION pgvision._check_owner(regclass) IS
'internal: raises insufficient_privilege unless the current role owns the table (or is a member of its owner)';

CREATE OR REPLACE FUNCTION pgvision.enable_auto_embed(tbl regclass, image_column name, feature_column name,
                                                      model text DEFAULT 'efficientnet_lite0')
RETURNS void
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM pgvision._check_owner(tbl);
    PERFORM pgvision._embed_columns(tbl, image_column, feature_column, model);
    EXECUTE pg_catalog.format(
        'CREATE OR REPLACE TRIGGER pgvision_auto_embed BEFORE INSERT OR UPDATE OF %I ON %s'
        ' FOR EACH ROW EXECUTE FUNCTION pgvision._auto_embed(%L, %L, %L)',
        image_column, tbl, image_column, feature_column, model);
END
$$;
COMMENT ON FUNCTION pgvision.enable_auto_embed(regclass, name, name, text) IS
'creates the trigger pgvision_auto_embed, which sets the feature column to pgvision.embed of the image column on INSERT and on UPDATE of the image column (NULL image, NULL feature); replaces an earlier one; for the table''s owner';

CREATE OR REPLACE FUNCTION pgvision.disable_auto_embed(tbl regclass)
RETURNS void
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM pgvision._check_owner(tbl);
    EXECUTE pg_catalog.format('DROP TRIGGER IF EXISTS pgvision_auto_embed ON %s', tbl);
END
$$;
COMMENT ON FUNCTION pgvision.disable_auto_embed(regclass) IS
'drops the trigger created by pgvision.enable_auto_embed; features already computed stay; for the table''s owner';

-- Any role may run these on the tables it may change: embed_table checks UPDATE on the
-- feature column, enable/disable_auto_embed ownership of the table. The bookkeeping tables
-- are open to all, and row-level security narrows them to the tables a role can read
-- (SELECT) or update (writes).
GRANT SELECT, INSERT, UPDATE, DELETE ON pgvision.backfill_progress, pgvision.backfill_errors TO PUBLIC;

-- The bookkeeping of a table goes with it: a table created later may get the dropped one's
-- OID and would otherwise inherit its progress and, worse, its error rows, which make
-- embed_table skip rows. Dropping a feature column takes its rows too. SECURITY DEFINER
-- because row-level security hides a dropped table's rows from everyone but the owner of
-- the bookkeeping tables (the policies ask about privileges on an OID that no longer
-- exists); the function does nothing but delete the rows of the objects just dropped.
CREATE OR REPLACE FUNCTION pgvision._drop_backfill_rows()
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
       OR pg_catalog.to_regclass('pgvision.backfill_errors') IS NULL THEN
        RETURN;
    END IF;
    -- A row goes when its table is gone or its feature column no longer exists.
    DELETE FROM pgvision.backfill_progress p
    WHERE p.tbl::oid = ANY (_tables)
      AND NOT EXISTS (SELECT FROM pg_catalog.pg_attribute a
                      WHERE a.attrelid = p.tbl AND a.attname = p.feature_column
                        AND a.attnum > 0 AND NOT a.attisdropped);
    DELETE FROM pgvision.backfill_errors e
    WHERE e.tbl::oid = ANY (_tables)
      AND NOT EXISTS (SELECT FROM pg_catalog.pg_attribute a
                      WHERE a.attrelid = e.tbl AND a.attname = e.feature_column
                        AND a.attnum > 0 AND NOT a.attisdropped);
END
$$;
COMMENT ON FUNCTION pgvision._drop_backfill_rows() IS
'internal: sql_drop event trigger function; deletes the backfill_progress and backfill_errors rows of dropped tables and dropped feature columns';
REVOKE ALL ON FUNCTION pgvision._drop_backfill_rows() FROM PUBLIC;

DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_event_trigger t WHERE t.evtname = 'pgvision_drop_backfill_rows') THEN
        -- every command: tables and columns also go with DROP SCHEMA, TYPE, OWNED ... CASCADE
        CREATE EVENT TRIGGER pgvision_drop_backfill_rows ON sql_drop
            EXECUTE FUNCTION pgvision._drop_backfill_rows();
    END IF;
END
$$;
COMMENT ON EVENT TRIGGER pgvision_drop_backfill_rows IS
'deletes the pgvision.embed_table bookkeeping of dropped tables and feature columns';
