-- Features for a whole table: CALL pgvision.embed_table, batch by batch, one transaction
-- per batch (a batch: batch_size rows; the model takes them pgvision.batch_size images at a
-- time). This file: the checks, the start and the procedure; 012-embed-table-batch.sql: a
-- batch.

-- Checks that tbl.image_column (bytea) can be embedded by model into tbl.feature_column (a
-- vector column of the model's dimensions, as pgvision._vector_column wants it); returns
-- the feature column's type name.
CREATE OR REPLACE FUNCTION pgvision._embed_columns(rel regclass, image_col name, feature_col name,
                                                   model_name text)
RETURNS text
LANGUAGE plpgsql STABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    _kind "char";
    _dim int;
    _image record;
    _feature record;
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

    SELECT * INTO _image FROM pgvision._require_column(rel, image_col);
    IF _image.type <> 'pg_catalog.bytea'::pg_catalog.regtype THEN
        RAISE EXCEPTION 'image column "%" is of type %, not bytea', image_col,
            pg_catalog.format_type(_image.type, NULL) USING ERRCODE = 'datatype_mismatch';
    END IF;

    SELECT * INTO _feature FROM pgvision._require_column(rel, feature_col);
    IF _feature.type IS DISTINCT FROM pg_catalog.to_regtype(pg_catalog.format('%I.vector', pgvision._vector_schema())) THEN
        RAISE EXCEPTION 'feature column "%" is of type %, not vector', feature_col,
            pg_catalog.format_type(_feature.type, _feature.typmod) USING ERRCODE = 'datatype_mismatch',
            HINT = pg_catalog.format('features of model "%s" fit a vector(%s) column', model_name, _dim);
    END IF;
    IF _feature.generated <> '' THEN
        RAISE EXCEPTION 'feature column "%" is a generated column', feature_col
            USING ERRCODE = 'generated_always';
    END IF;
    IF _feature.typmod > 0 AND _feature.typmod <> _dim THEN
        RAISE EXCEPTION 'feature column "%" has % dimensions, but model "%" returns %',
            feature_col, _feature.typmod, model_name, _dim USING ERRCODE = 'datatype_mismatch';
    END IF;
    RETURN pg_catalog.format_type(_feature.type, NULL);
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
    PERFORM pgvision._require_column(rel, key_col);
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

-- batch_size of embed_table and embed_shards: rows per transaction.
CREATE OR REPLACE FUNCTION pgvision._check_batch_size(batch_size int)
RETURNS void
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF batch_size IS NULL THEN
        RAISE EXCEPTION 'batch_size must not be null' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF batch_size < 1 THEN
        RAISE EXCEPTION 'batch_size must be at least 1, not %', batch_size
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
END
$$;
COMMENT ON FUNCTION pgvision._check_batch_size(int) IS
'internal: raises unless batch_size (rows per transaction of embed_table and embed_shards) is at least 1';

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
    IF retry IS NULL THEN
        RAISE EXCEPTION 'retry_errors must not be null' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    PERFORM pgvision._check_batch_size(nrows);
    _key := pgvision._embed_key(rel, key_col);
    IF NOT pg_catalog.has_column_privilege(rel, feature_col, 'UPDATE') THEN
        RAISE EXCEPTION 'permission denied for table %', rel USING ERRCODE = 'insufficient_privilege',
            HINT = pg_catalog.format('embed_table needs UPDATE on column %I', feature_col);
    END IF;
    -- the column records its model; another model is refused while it holds features
    PERFORM pgvision.set_column_model(rel, feature_col, model_name);
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
-- schema-qualified functions with arguments of their exact types; the work is done by
-- pgvision._embed_table_start and _embed_table_batch, which pin search_path.
CREATE OR REPLACE PROCEDURE pgvision.embed_table(tbl regclass, image_column name, feature_column name,
                                                 model text DEFAULT '',
                                                 batch_size int DEFAULT 64,
                                                 key_column name DEFAULT NULL,
                                                 retry_errors boolean DEFAULT false)
LANGUAGE plpgsql
AS $$
DECLARE
    _key pg_catalog.name;
    _after pg_catalog.text;
    _cannot pg_catalog.text := pgvision._transaction_context();
    _model pg_catalog.text := model;
BEGIN
    -- COMMIT would refuse only after the first batch's work; say so before any.
    IF _cannot IS NOT NULL THEN
        RAISE EXCEPTION USING ERRCODE = 'invalid_transaction_termination',
            MESSAGE = pg_catalog.concat('pgvision.embed_table cannot ', _cannot),
            DETAIL = 'it commits after every batch',
            HINT = 'CALL it on its own, in autocommit mode; from JDBC, send CALL pgvision.embed_table(...) as a plain statement, or use {call ...} with the connection option escapeSyntaxCallMode=callIfNoReturn';
    END IF;
    -- left out (''): the column's recorded model, else the default one
    IF _model OPERATOR(pg_catalog.=) '' THEN
        _model := COALESCE(pgvision.column_model(tbl, feature_column), pgvision.default_model());
    END IF;
    _key := pgvision._embed_table_start(tbl, image_column, feature_column, _model, batch_size,
                                        key_column, retry_errors);
    COMMIT;
    LOOP
        _after := pgvision._embed_table_batch(tbl, image_column, feature_column, _model, batch_size,
                                              _key, retry_errors, _after,
                                              pg_catalog.current_setting('search_path'));
        COMMIT;
        EXIT WHEN _after IS NULL;
    END LOOP;
END
$$;
COMMENT ON PROCEDURE pgvision.embed_table(regclass, name, name, text, int, name, boolean) IS
'fills the NULL features of a table from its images with model (left out: the feature column''s recorded model, else the default model, pgvision.default_model()) and records the model (pgvision.set_column_model; another model is refused while the column holds features), batch_size rows per batch, committing after each batch (the model takes them pgvision.batch_size images at a time); progress in pgvision.backfill_progress, bad images in pgvision.backfill_errors; CALL it outside a transaction block; can be interrupted and run again';
