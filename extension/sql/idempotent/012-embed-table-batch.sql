-- One batch of pgvision.embed_table (011-embed-table.sql): the next rows in key order,
-- embedded in one statement, one at a time when an image is bad, and counted.

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
-- relation, type, function and operator with its schema (pgvision._rel_name,
-- pgvision._column's type_name, _key_operators), so that nothing the caller's search_path
-- finds first (a public.= on varchar, a public.text domain) runs in it.
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
    _keytype text := (SELECT c.type_name FROM pgvision._column(rel, key_col) c);
    _feattype text := (SELECT c.type_name FROM pgvision._column(rel, feature_col) c);
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

