-- Features for a whole table: the pgvision.embed_table backfill (batch by batch, one
-- transaction per batch) and automatic embedding with a trigger.

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

-- The rows of a batch one at a time, after embed_batch failed on bad data: the features
-- (NULL where the image is NULL or bad) as pgvector's text form, which reads back exactly;
-- each bad image is recorded in pgvision.backfill_errors.
CREATE OR REPLACE FUNCTION pgvision._embed_one_by_one(rel regclass, feature_col name, model_name text,
                                                      keys text[], images bytea[])
RETURNS text[]
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    _features text[] := pg_catalog.array_fill(NULL::text, ARRAY[pg_catalog.cardinality(keys)]);
    _msg text;
    _state text;
BEGIN
    FOR i IN 1 .. pg_catalog.cardinality(keys) LOOP
        CONTINUE WHEN images[i] IS NULL;
        BEGIN
            _features[i] := pgvision.embed(images[i], model_name)::text;
        EXCEPTION WHEN data_exception OR program_limit_exceeded THEN
            GET STACKED DIAGNOSTICS _msg = MESSAGE_TEXT, _state = RETURNED_SQLSTATE;
            INSERT INTO pgvision.backfill_errors AS e
                (tbl, feature_column, key, model, error, sqlstate)
            VALUES (rel, feature_col, keys[i], model_name, _msg, _state)
            ON CONFLICT (tbl, feature_column, key) DO UPDATE
                SET model = EXCLUDED.model, error = EXCLUDED.error,
                    sqlstate = EXCLUDED.sqlstate, at = EXCLUDED.at;
        END;
    END LOOP;
    RETURN _features;
END
$$;
COMMENT ON FUNCTION pgvision._embed_one_by_one(regclass, name, text, text[], bytea[]) IS
'internal: embeds a batch of pgvision.embed_table one image at a time, recording the bad ones in pgvision.backfill_errors; returns the features as text, NULL for NULL and bad images';

-- Counts a batch into the run's progress row and says so; rows = 0 ends the run.
CREATE OR REPLACE FUNCTION pgvision._embed_table_progress(rel regclass, feature_col name, nrows int,
                                                          done bigint, nulls int, failed int)
RETURNS void
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    _p pgvision.backfill_progress;
BEGIN
    UPDATE pgvision.backfill_progress AS p
    SET rows_done = p.rows_done + done, null_images = p.null_images + nulls,
        errors = p.errors + failed, rows_left = CASE WHEN nrows = 0 THEN 0 ELSE greatest(p.rows_left - nrows, 0) END,
        updated = pg_catalog.clock_timestamp(),
        finished = CASE WHEN nrows = 0 THEN pg_catalog.clock_timestamp() END,
        rate = CASE WHEN nrows = 0 THEN p.rate
                    ELSE (p.rows_done + done) / greatest(extract(epoch FROM pg_catalog.clock_timestamp() - p.started), 0.001) END
    WHERE p.tbl = rel AND p.feature_column = feature_col
    RETURNING p.* INTO _p;
    IF nrows = 0 THEN
        RAISE NOTICE '%: embedded % rows in % s (% rows/s), % failed, % without image',
            rel, _p.rows_done, round(extract(epoch FROM _p.finished - _p.started), 1),
            round(_p.rate::numeric, 1), _p.errors, _p.null_images;
    ELSE
        RAISE NOTICE '%: % rows embedded, % left, % failed, % without image, % rows/s',
            rel, _p.rows_done, _p.rows_left, _p.errors, _p.null_images, round(_p.rate::numeric, 1);
    END IF;
END
$$;
COMMENT ON FUNCTION pgvision._embed_table_progress(regclass, name, int, bigint, int, int) IS
'internal: adds a batch of pgvision.embed_table to its progress row (a batch of 0 rows marks the run finished) and raises the NOTICE that reports it';

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
    _keytype text := (SELECT pgvision._type_name(c.type) FROM pgvision._column(rel, key_col) c);
    _feattype text := (SELECT pgvision._type_name(c.type) FROM pgvision._column(rel, feature_col) c);
    _ops record := pgvision._key_operators(rel, key_col);
    _keys text[];
    _images bytea[];
    _features text[];
    _n int;
    _nulls int;
    _failed int := 0;
    _done bigint := 0;
    -- $1 keys, $2 features: text, or float4 bytes straight from the model (see below)
    _update constant text := 'UPDATE %1$s AS t SET %2$I = %7$s::%3$s FROM ROWS FROM (pg_catalog.unnest($1::pg_catalog.text[]), %8$s)'
                             ' AS u (k, f) WHERE t.%4$I %6$s u.k::%5$s AND u.f IS NOT NULL';
BEGIN
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
        PERFORM pgvision._embed_table_progress(rel, feature_col, 0, 0, 0, 0);
        RETURN NULL;
    END IF;

    _nulls := _n - pg_catalog.cardinality(pg_catalog.array_remove(_images, NULL));
    IF _nulls < _n THEN
        PERFORM pg_catalog.set_config('search_path', caller_search_path, true);
        BEGIN
            -- One statement: the features go from the model to the column as float4 bytes,
            -- without a round trip through text. The model keeps its activation memory from
            -- batch to batch until the run ends (BENCHMARKS.md has what regrowing it costs);
            -- a run that is interrupted leaves it to the next embed_batch or the end of the
            -- session.
            EXECUTE pg_catalog.format(_update, _rel, feature_col, _feattype, key_col, _keytype, _ops.eq,
                'pgvision._vector_from_float4(u.f)',
                'pg_catalog.unnest(pgvision._embed_batch_float4($2::pg_catalog.bytea[], $3::pg_catalog.text, true))')
                USING _keys, _images, model_name;
            GET DIAGNOSTICS _done = ROW_COUNT;
        EXCEPTION WHEN data_exception OR program_limit_exceeded THEN
            -- Some image is bad: embed one at a time and record those that fail.
            PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);
            _features := pgvision._embed_one_by_one(rel, feature_col, model_name, _keys, _images);
            _failed := _n - _nulls - pg_catalog.cardinality(pg_catalog.array_remove(_features, NULL));
            PERFORM pg_catalog.set_config('search_path', caller_search_path, true);
            EXECUTE pg_catalog.format(_update, _rel, feature_col, _feattype, key_col, _keytype, _ops.eq,
                'u.f', 'pg_catalog.unnest($2::pg_catalog.text[])')
                USING _keys, _features;
            GET DIAGNOSTICS _done = ROW_COUNT;
        END;
        PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);
    END IF;
    PERFORM pgvision._embed_table_progress(rel, feature_col, _n, _done, _nulls, _failed);
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
'fills the NULL features of a table from its images, batch_size rows per batch, committing after each batch (the model takes them pgvision.batch_size images at a time); progress in pgvision.backfill_progress, bad images in pgvision.backfill_errors; CALL it outside a transaction block; can be interrupted and run again';
