-- Search functions for clients that can only call functions (BI tools): the table is an
-- argument, the result has a fixed shape. The plain SQL form (ORDER BY feature <-> q LIMIT k)
-- stays the fastest and most flexible way; these build that query for the caller.

-- The metric a search uses when none is given: the one the column is indexed for, so the
-- query can use that index. bench/quality.py measured cosine above l2 on the default model's
-- feature, so pgvision.create_index builds cosine indexes by default; a column without a
-- pgvector index (a small table, a sharded table whose indexes live on the shards) keeps l2,
-- so calls made before there was a choice keep their results.
CREATE OR REPLACE FUNCTION pgvision._index_metric(tbl regclass, column_name name)
RETURNS text
LANGUAGE sql STABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT pg_catalog.substring(o.opcname::text, '^vector_(l2|cosine|ip)_ops$')
    FROM pg_catalog.pg_index i
    JOIN pg_catalog.pg_class ic ON ic.oid = i.indexrelid
    JOIN pg_catalog.pg_am am ON am.oid = ic.relam
    JOIN pg_catalog.pg_opclass o ON o.oid = i.indclass[0]
    JOIN pg_catalog.pg_namespace n ON n.oid = o.opcnamespace
    JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]
    WHERE i.indrelid = _index_metric.tbl AND a.attname = _index_metric.column_name
      AND i.indisvalid AND am.amname IN ('hnsw', 'ivfflat')
      AND n.nspname = pgvision._vector_schema()
      AND o.opcname IN ('vector_l2_ops', 'vector_cosine_ops', 'vector_ip_ops')
    ORDER BY o.opcname <> 'vector_l2_ops', i.indexrelid  -- several: l2 if one is l2, else the oldest
    LIMIT 1
$$;
COMMENT ON FUNCTION pgvision._index_metric(regclass, name) IS
'internal: the metric (l2, cosine or ip) of the pgvector index (hnsw or ivfflat) on a vector column, l2 first when there are several; NULL without one';

-- The engine behind search, search_batch and search_like. queries are vectors in their text
-- form (the public functions take images or keys, so no signature needs pgvector's schema).
-- Iterative index scans (pgvector 0.8) keep reading the index until k rows pass the filter;
-- relaxed_order may return rows slightly out of order, so results are sorted again.
CREATE OR REPLACE FUNCTION pgvision._search(
    tbl regclass,
    queries text[],
    k int,
    feature_column name,
    metric text,
    filter text,
    group_by name,
    max_distance double precision,
    min_similarity double precision,
    expand int,
    exclude_key text)
RETURNS TABLE (query_no int, rank int, id text, distance double precision,
               similarity double precision, item jsonb)
LANGUAGE plpgsql STABLE PARALLEL UNSAFE ROWS 10
SET search_path = pg_catalog, pg_temp
SET hnsw.iterative_scan = relaxed_order
SET ivfflat.iterative_scan = relaxed_order
AS $$
DECLARE
    _vs text;
    _metric text := pg_catalog.lower(coalesce(_search.metric,
                                              pgvision._index_metric(tbl, feature_column), 'l2'));
    _op text;
    _dist text;
    _sim text;
    _pk text[];
    _pktype text;
    _id text;
    _item text;
    _where text;
    _cand text;
    _final text;
    _ok text;
    _q text;
    _n int;
    _rows bigint;
    _groups bigint;
    _beyond boolean;
    _union text;
BEGIN
    IF tbl IS NULL OR feature_column IS NULL OR k IS NULL OR expand IS NULL THEN
        RAISE EXCEPTION 'tbl, k, feature_column and expand must not be null' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF k < 1 THEN
        RAISE EXCEPTION 'k must be at least 1, not %', k
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    -- Every comparison with NaN is false in SQL but NaN sorts above every number in
    -- PostgreSQL, so c.distance <= 'NaN' kept every row; infinities mean no limit at all.
    IF max_distance IN ('NaN', 'Infinity', '-Infinity') THEN
        RAISE EXCEPTION 'max_distance must be a finite number, not %', max_distance
            USING ERRCODE = 'invalid_parameter_value', HINT = 'leave it NULL for no limit';
    END IF;
    IF min_similarity IN ('NaN', 'Infinity', '-Infinity') THEN
        RAISE EXCEPTION 'min_similarity must be a finite number, not %', min_similarity
            USING ERRCODE = 'invalid_parameter_value', HINT = 'leave it NULL for no limit';
    END IF;
    _op := CASE _metric WHEN 'l2' THEN '<->' WHEN 'cosine' THEN '<=>' WHEN 'ip' THEN '<#>' END;
    IF _op IS NULL THEN
        RAISE EXCEPTION 'unknown metric "%"', _search.metric
            USING ERRCODE = 'invalid_parameter_value', HINT = 'expected l2, cosine or ip';
    END IF;
    IF min_similarity IS NOT NULL AND _metric = 'l2' THEN
        RAISE EXCEPTION 'min_similarity applies to the cosine and ip metrics'
            USING ERRCODE = 'invalid_parameter_value', HINT = 'with l2, limit the distance with max_distance';
    END IF;
    -- l2 and cosine distances are never negative (the ip "distance" is the negative inner
    -- product, which may be): a negative limit would silently find nothing.
    IF max_distance < 0 AND _metric IN ('l2', 'cosine') THEN
        RAISE EXCEPTION 'max_distance must not be negative with the % metric, not %', _metric, max_distance
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = CASE _metric WHEN 'l2' THEN 'l2 distances are 0 or more' ELSE 'cosine distances are between 0 and 2' END;
    END IF;
    IF expand < 0 OR expand > 1000 THEN
        RAISE EXCEPTION 'expand must be between 0 and 1000, not %', expand
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    PERFORM pgvision._vector_column(tbl, feature_column);
    IF group_by IS NOT NULL AND NOT EXISTS (
            SELECT 1 FROM pg_catalog.pg_attribute a
            WHERE a.attrelid = tbl AND a.attname = group_by AND a.attnum > 0 AND NOT a.attisdropped) THEN
        RAISE EXCEPTION 'column "%" of relation % does not exist', group_by, tbl USING ERRCODE = 'undefined_column';
    END IF;
    _vs := pgvision._vector_schema();

    -- id: the primary key as text (a composite key in its row form), NULL without one.
    SELECT pg_catalog.array_agg(pg_catalog.format('t.%I', a.attname) ORDER BY pg_catalog.array_position(i.indkey::int2[], a.attnum)),
           pg_catalog.min(pg_catalog.format_type(a.atttypid, a.atttypmod))
    INTO _pk, _pktype
    FROM pg_catalog.pg_index i
    JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey)
    WHERE i.indrelid = tbl AND i.indisprimary;
    IF _pk IS NULL THEN  -- a sharded table: its partition key, see pgvision._shard_key
        SELECT ARRAY[pg_catalog.format('t.%I', s.key_column)], s.key_type INTO _pk, _pktype
        FROM pgvision._shard_key(tbl) s;
    END IF;
    _id := CASE WHEN _pk IS NULL THEN 'NULL::text'
                WHEN pg_catalog.cardinality(_pk) = 1 THEN _pk[1] || '::pg_catalog.text'
                ELSE 'ROW(' || pg_catalog.array_to_string(_pk, ', ') || ')::pg_catalog.text' END;
    IF exclude_key IS NOT NULL AND pg_catalog.cardinality(_pk) IS DISTINCT FROM 1 THEN
        RAISE EXCEPTION 'cannot exclude a row of % by key without a single-column primary key', tbl
            USING ERRCODE = 'feature_not_supported';
    END IF;

    -- item: the row as jsonb without vectors and bytea (image) columns, which BI tools
    -- cannot show and which would be detoasted for nothing.
    SELECT '(SELECT pg_catalog.to_jsonb(r) FROM (SELECT '
           || pg_catalog.string_agg(pg_catalog.format('t.%I', a.attname), ', ' ORDER BY a.attnum) || ') r)'
    INTO _item
    FROM pg_catalog.pg_attribute a
    WHERE a.attrelid = tbl AND a.attnum > 0 AND NOT a.attisdropped
      AND a.attname <> feature_column
      AND a.atttypid <> 'pg_catalog.bytea'::pg_catalog.regtype
      AND a.atttypid NOT IN (SELECT ty.oid FROM pg_catalog.pg_type ty JOIN pg_catalog.pg_namespace n ON n.oid = ty.typnamespace
                             WHERE n.nspname = _vs AND ty.typname IN ('vector', 'halfvec', 'sparsevec'));
    _item := coalesce(_item, '''{}''::pg_catalog.jsonb');

    -- $1 query vector (text), $2 key to exclude, $3 max_distance, $4 min_similarity, $5 query_no,
    -- $6 number of candidates
    _dist := pg_catalog.format('t.%I OPERATOR(%I.%s) $1::%I.vector', feature_column, _vs, _op, _vs);
    _sim := CASE _metric WHEN 'l2' THEN 'NULL::double precision'
                         WHEN 'cosine' THEN '1 OPERATOR(pg_catalog.-) c.distance'
                         ELSE 'OPERATOR(pg_catalog.-) c.distance' END;
    _ok := pg_catalog.format('($3::double precision IS NULL OR c.distance OPERATOR(pg_catalog.<=) $3)'
                             ' AND ($4::double precision IS NULL OR %s OPERATOR(pg_catalog.>=) $4)', _sim);
    -- The filter is the caller's SQL, run with the caller's privileges; on lines of its own so
    -- that a trailing -- comment in it ends there.
    _where := pg_catalog.format('t.%I IS NOT NULL', feature_column)
              || CASE WHEN filter IS NULL THEN '' ELSE E' AND (\n' || filter || E'\n)' END
              || CASE WHEN exclude_key IS NULL THEN ''
                      ELSE pg_catalog.format(' AND %s <> CAST($2 AS %s)', _pk[1], _pktype) END;
    -- candidates: the $6 nearest rows. (Never a format() template: the filter may hold %.)
    _cand := 'SELECT ' || _id || ' AS id, ' || _dist || ' AS distance, ' || _item || ' AS item'
             || CASE WHEN group_by IS NULL THEN '' ELSE pg_catalog.format(', t.%I AS grp', group_by) END
             || ' FROM ' || tbl::text || ' AS t WHERE ' || _where
             || ' ORDER BY ' || _dist || ' LIMIT $6';
    -- A sharded table: each shard answers its own top $6, all at once (pgvision._shard_union).
    _union := pgvision._shard_union(tbl, ARRAY[group_by, CASE WHEN expand > 0 THEN feature_column END],
                                    _dist, _where, '$6');
    IF _union IS NOT NULL THEN
        _cand := 'WITH u AS MATERIALIZED (' || _union || ') SELECT ' || _id || ' AS id, t.pgvision_distance AS distance, '
                 || _item || ' AS item'
                 || CASE WHEN group_by IS NULL THEN '' ELSE pg_catalog.format(', t.%I AS grp', group_by) END
                 || ' FROM u AS t ORDER BY t.pgvision_distance LIMIT $6';
    END IF;

    FOR i IN 1 .. coalesce(pg_catalog.cardinality(queries), 0) LOOP
        _q := queries[i];
        CONTINUE WHEN _q IS NULL;

        IF expand > 0 AND _union IS NOT NULL THEN
            EXECUTE pg_catalog.format(
                'SELECT %1$I.avg(%2$s)::pg_catalog.text FROM (SELECT $1::%1$I.vector AS f FROM pg_catalog.generate_series(1, $6) UNION ALL (WITH u AS MATERIALIZED (%3$s) SELECT t.%4$I FROM u AS t ORDER BY t.pgvision_distance LIMIT $6)) s',
                _vs, CASE WHEN _metric = 'cosine' THEN pg_catalog.format('%I.l2_normalize(s.f)', _vs) ELSE 's.f' END,
                _union, feature_column)
            INTO _q USING _q, exclude_key, max_distance, min_similarity, i, expand;
        ELSIF expand > 0 THEN
            -- Query expansion: half the query, half the mean of its n nearest rows (unit
            -- vectors for cosine), i.e. the query counted n times among the n rows. On
            -- Fashion-MNIST (cosine, n = 3) this beat the plain mean of all n + 1 vectors.
            EXECUTE pg_catalog.format(
                'SELECT %1$I.avg(%2$s)::pg_catalog.text FROM (SELECT $1::%1$I.vector AS f FROM pg_catalog.generate_series(1, %7$s) UNION ALL (SELECT t.%3$I FROM %4$s AS t WHERE %5$s ORDER BY %6$s LIMIT %7$s)) s',
                _vs, CASE WHEN _metric = 'cosine' THEN pg_catalog.format('%I.l2_normalize(s.f)', _vs) ELSE 's.f' END,
                feature_column, tbl::text, _where, _dist, expand)
            INTO _q USING _q, exclude_key;
        END IF;

        IF group_by IS NULL THEN
            _final := 'WITH c AS MATERIALIZED (' || _cand || ') '
                      || 'SELECT $5, (pg_catalog.row_number() OVER (ORDER BY c.distance))::int, c.id, c.distance, '
                      || _sim || ', c.item FROM c WHERE ' || _ok || ' ORDER BY c.distance';
        ELSE
            -- Collapse: one row per group value, best first, over a candidate set that grows
            -- until it holds k groups or the scan runs out (end of the table, the distance
            -- threshold, or hnsw.max_scan_tuples).
            _n := LEAST(GREATEST(k::bigint * 10, 100), 1000000000)::int;
            LOOP
                EXECUTE 'WITH c AS MATERIALIZED (' || _cand || ') '
                        || 'SELECT pg_catalog.count(*), '
                        || 'pg_catalog.count(DISTINCT c.grp) FILTER (WHERE ' || _ok || ') '
                        || '+ coalesce(pg_catalog.max(1) FILTER (WHERE c.grp IS NULL AND ' || _ok || '), 0), '
                        || 'coalesce(pg_catalog.bool_or(NOT (' || _ok || ')), false) FROM c'
                    INTO _rows, _groups, _beyond
                    USING _q, exclude_key, max_distance, min_similarity, 0, _n;
                EXIT WHEN _groups >= k OR _rows < _n OR _beyond OR _n >= 1000000000;
                _n := LEAST(_n::bigint * 4, 1000000000)::int;
            END LOOP;
            _final := 'WITH c AS MATERIALIZED (' || _cand || '), '
                      || 'g AS (SELECT DISTINCT ON (c.grp) c.* FROM c WHERE ' || _ok || ' ORDER BY c.grp, c.distance) '
                      || 'SELECT $5, (pg_catalog.row_number() OVER (ORDER BY c.distance))::int, c.id, c.distance, '
                      || _sim || ', c.item FROM g AS c ORDER BY c.distance LIMIT ' || k;
        END IF;
        RETURN QUERY EXECUTE _final USING _q, exclude_key, max_distance, min_similarity, i, coalesce(_n, k);
    END LOOP;
END
$$;
COMMENT ON FUNCTION pgvision._search(regclass, text[], int, name, text, text, name, double precision, double precision, int, text) IS
'internal: the query behind pgvision.search, search_batch and search_like';

CREATE OR REPLACE FUNCTION pgvision.search(
    tbl regclass,
    query bytea,
    k int DEFAULT 10,
    feature_column name DEFAULT 'feature',
    metric text DEFAULT NULL,
    filter text DEFAULT NULL,
    model text DEFAULT 'efficientnet_lite0',
    group_by name DEFAULT NULL,
    max_distance double precision DEFAULT NULL,
    min_similarity double precision DEFAULT NULL,
    expand int DEFAULT 0)
RETURNS TABLE (query_no int, rank int, id text, distance double precision,
               similarity double precision, item jsonb)
LANGUAGE plpgsql STABLE PARALLEL UNSAFE COST 100000 ROWS 10
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF tbl IS NULL THEN
        RAISE EXCEPTION 'tbl must not be null' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    -- embed is strict: a NULL model or image would make a NULL query, which finds no rows
    IF model IS NULL THEN
        RAISE EXCEPTION 'model must not be null' USING ERRCODE = 'null_value_not_allowed',
            HINT = 'leave it out for the default model, efficientnet_lite0';
    END IF;
    IF query IS NULL THEN
        RAISE EXCEPTION 'query image must not be null' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    RETURN QUERY
    SELECT * FROM pgvision._search(tbl, ARRAY[pgvision.embed(query, model)::text], k, feature_column, metric,
                                   filter, group_by, max_distance, min_similarity, expand, NULL);
END
$$;
COMMENT ON FUNCTION pgvision.search(regclass, bytea, int, name, text, text, text, name, double precision, double precision, int) IS
'the k rows of a table whose feature is nearest to an image''s, nearest first: query_no (1), rank, id (the primary key as text), distance (l2: <->, cosine: <=>, ip: <#>, the negative inner product), similarity (cosine: 1 - distance, ip: the inner product, l2: null), item (the row as jsonb without vector and bytea columns). metric defaults to the one the column''s pgvector index was built for (pgvision.create_index builds cosine ones), l2 when it has none. filter is a SQL condition on the table''s columns, run as the caller with search_path = pg_catalog, pg_temp (qualify your own functions); iterative index scans return k rows when k rows match it. group_by keeps the best row per value of a column; max_distance and min_similarity (cosine, ip) drop farther rows; expand => n searches again with a query made half of the original and half of the mean of its n nearest rows';

CREATE OR REPLACE FUNCTION pgvision.search_batch(
    tbl regclass,
    queries bytea[],
    k int DEFAULT 10,
    feature_column name DEFAULT 'feature',
    metric text DEFAULT NULL,
    filter text DEFAULT NULL,
    model text DEFAULT 'efficientnet_lite0',
    group_by name DEFAULT NULL,
    max_distance double precision DEFAULT NULL,
    min_similarity double precision DEFAULT NULL,
    expand int DEFAULT 0)
RETURNS TABLE (query_no int, rank int, id text, distance double precision,
               similarity double precision, item jsonb)
LANGUAGE plpgsql STABLE PARALLEL UNSAFE COST 1000000 ROWS 100
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF tbl IS NULL THEN
        RAISE EXCEPTION 'tbl must not be null' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF model IS NULL THEN
        RAISE EXCEPTION 'model must not be null' USING ERRCODE = 'null_value_not_allowed',
            HINT = 'leave it out for the default model, efficientnet_lite0';
    END IF;
    IF queries IS NULL THEN
        RAISE EXCEPTION 'queries must not be null' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF pg_catalog.cardinality(queries) > 100 THEN
        RAISE EXCEPTION 'too many query images: %, the limit is 100', pg_catalog.cardinality(queries)
            USING ERRCODE = 'program_limit_exceeded', HINT = 'split the queries into several calls';
    END IF;
    RETURN QUERY
    SELECT * FROM pgvision._search(tbl, pgvision.embed_batch(queries, model)::text[], k, feature_column, metric,
                                   filter, group_by, max_distance, min_similarity, expand, NULL);
END
$$;
COMMENT ON FUNCTION pgvision.search_batch(regclass, bytea[], int, name, text, text, text, name, double precision, double precision, int) IS
'pgvision.search for up to 100 query images in one call (embedded with embed_batch); query_no is the position of the query in the array; a NULL image gives no rows';

CREATE OR REPLACE FUNCTION pgvision.search_like(
    tbl regclass,
    key text,
    k int DEFAULT 10,
    feature_column name DEFAULT 'feature',
    metric text DEFAULT NULL,
    filter text DEFAULT NULL,
    group_by name DEFAULT NULL,
    max_distance double precision DEFAULT NULL,
    min_similarity double precision DEFAULT NULL,
    expand int DEFAULT 0)
RETURNS TABLE (query_no int, rank int, id text, distance double precision,
               similarity double precision, item jsonb)
LANGUAGE plpgsql STABLE PARALLEL UNSAFE ROWS 10
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    _pk text[];
    _pktype text;
    _found boolean;
    _q text;
BEGIN
    IF tbl IS NULL OR key IS NULL OR feature_column IS NULL THEN
        RAISE EXCEPTION 'tbl, key and feature_column must not be null' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    PERFORM pgvision._vector_column(tbl, feature_column);
    SELECT pg_catalog.array_agg(a.attname::text), pg_catalog.min(pg_catalog.format_type(a.atttypid, a.atttypmod))
    INTO _pk, _pktype
    FROM pg_catalog.pg_index i
    JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey)
    WHERE i.indrelid = tbl AND i.indisprimary;
    IF _pk IS NULL THEN  -- a sharded table: its partition key, see pgvision._shard_key
        SELECT ARRAY[s.key_column::text], s.key_type INTO _pk, _pktype FROM pgvision._shard_key(tbl) s;
    END IF;
    IF _pk IS NULL THEN
        RAISE EXCEPTION 'relation % has no primary key', tbl
            USING ERRCODE = 'invalid_table_definition',
                  HINT = 'search_like finds the query row by its primary key; add one with ALTER TABLE ... ADD PRIMARY KEY';
    ELSIF pg_catalog.cardinality(_pk) > 1 THEN
        RAISE EXCEPTION 'relation % has a primary key of % columns', tbl, pg_catalog.cardinality(_pk)
            USING ERRCODE = 'feature_not_supported', HINT = 'search_like needs a single-column primary key';
    END IF;
    EXECUTE pg_catalog.format('SELECT true, t.%I::pg_catalog.text FROM %s AS t WHERE t.%I = CAST($1 AS %s)',
                              feature_column, tbl, _pk[1], _pktype)
        INTO _found, _q USING key;
    IF _found IS NULL THEN
        RAISE EXCEPTION 'relation % has no row with key %', tbl, key
            USING ERRCODE = 'no_data_found';
    ELSIF _q IS NULL THEN
        RAISE EXCEPTION 'row % of relation % has no feature', key, tbl
            USING ERRCODE = 'null_value_not_allowed', HINT = 'compute it with pgvision.embed';
    END IF;
    RETURN QUERY
    SELECT * FROM pgvision._search(tbl, ARRAY[_q], k, feature_column, metric, filter, group_by,
                                   max_distance, min_similarity, expand, key);
END
$$;
COMMENT ON FUNCTION pgvision.search_like(regclass, text, int, name, text, text, name, double precision, double precision, int) IS
'pgvision.search with a stored row''s feature as the query ("images like image 4999"): the row is found by its primary key and left out of the results';

-- Any key type: search_like('images', 4999). An untyped literal ('4999') goes to the text form.
CREATE OR REPLACE FUNCTION pgvision.search_like(
    tbl regclass,
    key anyelement,
    k int DEFAULT 10,
    feature_column name DEFAULT 'feature',
    metric text DEFAULT NULL,
    filter text DEFAULT NULL,
    group_by name DEFAULT NULL,
    max_distance double precision DEFAULT NULL,
    min_similarity double precision DEFAULT NULL,
    expand int DEFAULT 0)
RETURNS TABLE (query_no int, rank int, id text, distance double precision,
               similarity double precision, item jsonb)
LANGUAGE sql STABLE PARALLEL UNSAFE ROWS 10
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT * FROM pgvision.search_like(tbl, key::text, k, feature_column, metric, filter, group_by,
                                       max_distance, min_similarity, expand)
$$;
COMMENT ON FUNCTION pgvision.search_like(regclass, anyelement, int, name, text, text, name, double precision, double precision, int) IS
'pgvision.search_like with a key of any type (compared with the primary key after a cast through text)';
