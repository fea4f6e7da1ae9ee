-- Search functions for clients that can only call functions (BI tools): the table is an
-- argument, the result has a fixed shape. The plain SQL form (ORDER BY feature <=> q LIMIT k)
-- stays the fastest and most flexible way; these build that query for the caller
-- (pgvision._search, 030-search-engine.sql).

-- The checks search and search_batch share. embed is strict: a NULL model or image would
-- make a NULL query, which finds no rows.
CREATE OR REPLACE FUNCTION pgvision._search_needs(tbl regclass, model text, missing boolean, message text)
RETURNS void
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF tbl IS NULL THEN
        RAISE EXCEPTION 'tbl must not be null' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF model IS NULL THEN
        RAISE EXCEPTION 'model must not be null' USING ERRCODE = 'null_value_not_allowed',
            HINT = 'leave it out for the feature column''s recorded model (pgvision.column_model), else the default model (pgvision.default_model())';
    END IF;
    IF missing THEN
        RAISE EXCEPTION '%', message USING ERRCODE = 'null_value_not_allowed';
    END IF;
END
$$;
COMMENT ON FUNCTION pgvision._search_needs(regclass, text, boolean, text) IS
'internal: raises null_value_not_allowed for a NULL table or model, or with message when missing is true';

CREATE OR REPLACE FUNCTION pgvision.search(
    tbl regclass, query bytea, k int DEFAULT 10, feature_column name DEFAULT 'feature',
    metric text DEFAULT NULL, filter text DEFAULT NULL, model text DEFAULT '',
    group_by name DEFAULT NULL, max_distance double precision DEFAULT NULL,
    min_similarity double precision DEFAULT NULL, expand int DEFAULT 0)
RETURNS TABLE (query_no int, rank int, id text, distance double precision, similarity double precision, item jsonb)
LANGUAGE plpgsql STABLE PARALLEL UNSAFE COST 100000 ROWS 10
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM pgvision._search_needs(tbl, model, query IS NULL, 'query image must not be null');
    RETURN QUERY
    SELECT * FROM pgvision._search(tbl, ARRAY[pgvision.embed(query, pgvision._query_model(tbl, feature_column, model))::text], k, feature_column, metric,
                                   filter, group_by, max_distance, min_similarity, expand, NULL);
END
$$;
COMMENT ON FUNCTION pgvision.search(regclass, bytea, int, name, text, text, text, name, double precision, double precision, int) IS
'the k rows of a table whose feature is nearest to an image''s, nearest first: query_no (1), rank, id (the primary key as text), distance (l2: <->, cosine: <=>, ip: <#>, the negative inner product), similarity (larger is nearer; cosine: 1 - distance, ip: the inner product, l2: 1 / (1 + distance)), item (the row as jsonb without vector and bytea columns). The query is embedded with model, left out: the feature column''s recorded model (pgvision.column_model), else the default model (pgvision.default_model()); another model than the recorded one is refused. metric defaults to the one the column''s pgvector index was built for (pgvision.create_index builds cosine ones), cosine when it has none. filter is a SQL condition on the table''s columns, run as the caller with search_path = pg_catalog, pg_temp (qualify your own functions); iterative index scans return k rows when k rows match it. group_by keeps the best row per value of a column; max_distance and min_similarity drop farther rows; expand => n searches again with a query made half of the original and half of the mean of its n nearest rows';

CREATE OR REPLACE FUNCTION pgvision.search_batch(
    tbl regclass, queries bytea[], k int DEFAULT 10, feature_column name DEFAULT 'feature',
    metric text DEFAULT NULL, filter text DEFAULT NULL, model text DEFAULT '',
    group_by name DEFAULT NULL, max_distance double precision DEFAULT NULL,
    min_similarity double precision DEFAULT NULL, expand int DEFAULT 0)
RETURNS TABLE (query_no int, rank int, id text, distance double precision, similarity double precision, item jsonb)
LANGUAGE plpgsql STABLE PARALLEL UNSAFE COST 1000000 ROWS 100
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM pgvision._search_needs(tbl, model, queries IS NULL, 'queries must not be null');
    IF pg_catalog.cardinality(queries) > 100 THEN
        RAISE EXCEPTION 'too many query images: %, the limit is 100', pg_catalog.cardinality(queries)
            USING ERRCODE = 'program_limit_exceeded', HINT = 'split the queries into several calls';
    END IF;
    RETURN QUERY
    SELECT * FROM pgvision._search(tbl, pgvision.embed_batch(queries, pgvision._query_model(tbl, feature_column, model))::text[], k, feature_column, metric,
                                   filter, group_by, max_distance, min_similarity, expand, NULL);
END
$$;
COMMENT ON FUNCTION pgvision.search_batch(regclass, bytea[], int, name, text, text, text, name, double precision, double precision, int) IS
'pgvision.search for up to 100 query images in one call (embedded with embed_batch, with the model as search chooses it); query_no is the position of the query in the array; a NULL image gives no rows';

CREATE OR REPLACE FUNCTION pgvision.search_like(
    tbl regclass, key text, k int DEFAULT 10, feature_column name DEFAULT 'feature',
    metric text DEFAULT NULL, filter text DEFAULT NULL, group_by name DEFAULT NULL,
    max_distance double precision DEFAULT NULL, min_similarity double precision DEFAULT NULL,
    expand int DEFAULT 0)
RETURNS TABLE (query_no int, rank int, id text, distance double precision, similarity double precision, item jsonb)
LANGUAGE plpgsql STABLE PARALLEL UNSAFE ROWS 10
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    _pk record;
    _found boolean;
    _q text;
BEGIN
    IF tbl IS NULL OR key IS NULL OR feature_column IS NULL THEN
        RAISE EXCEPTION 'tbl, key and feature_column must not be null' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    PERFORM pgvision._vector_column(tbl, feature_column);
    _pk := pgvision._row_key(tbl);
    IF _pk.columns IS NULL THEN
        RAISE EXCEPTION 'relation % has no primary key', tbl
            USING ERRCODE = 'invalid_table_definition',
                  HINT = 'search_like finds the query row by its primary key; add one with ALTER TABLE ... ADD PRIMARY KEY';
    ELSIF pg_catalog.cardinality(_pk.columns) > 1 THEN
        RAISE EXCEPTION 'relation % has a primary key of % columns', tbl, pg_catalog.cardinality(_pk.columns)
            USING ERRCODE = 'feature_not_supported', HINT = 'search_like needs a single-column primary key';
    END IF;
    EXECUTE pg_catalog.format('SELECT true, t.%I::pg_catalog.text FROM %s AS t WHERE t.%I = CAST($1 AS %s)',
                              feature_column, tbl, _pk.columns[1], _pk.key_type)
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
    tbl regclass, key anyelement, k int DEFAULT 10, feature_column name DEFAULT 'feature',
    metric text DEFAULT NULL, filter text DEFAULT NULL, group_by name DEFAULT NULL,
    max_distance double precision DEFAULT NULL, min_similarity double precision DEFAULT NULL,
    expand int DEFAULT 0)
RETURNS TABLE (query_no int, rank int, id text, distance double precision, similarity double precision, item jsonb)
LANGUAGE sql STABLE PARALLEL UNSAFE ROWS 10
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT * FROM pgvision.search_like(tbl, key::text, k, feature_column, metric, filter, group_by,
                                       max_distance, min_similarity, expand)
$$;
COMMENT ON FUNCTION pgvision.search_like(regclass, anyelement, int, name, text, text, name, double precision, double precision, int) IS
'pgvision.search_like with a key of any type (compared with the primary key after a cast through text)';

-- Search by a vector: a stored row's feature, an average of several, one computed elsewhere.
-- Its own name, not a search(regclass, vector) overload: an untyped parameter or literal
-- (node-postgres and asyncpg send every parameter untyped) would then match both forms and
-- make every existing search(tbl, $1) call ambiguous.
CREATE OR REPLACE FUNCTION pgvision.search_vector(
    tbl regclass, query vector, k int DEFAULT 10, feature_column name DEFAULT 'feature',
    metric text DEFAULT NULL, filter text DEFAULT NULL, group_by name DEFAULT NULL,
    max_distance double precision DEFAULT NULL, min_similarity double precision DEFAULT NULL,
    expand int DEFAULT 0)
RETURNS TABLE (query_no int, rank int, id text, distance double precision, similarity double precision, item jsonb)
LANGUAGE plpgsql STABLE PARALLEL UNSAFE ROWS 10
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    _dim int;
BEGIN
    IF tbl IS NULL OR feature_column IS NULL THEN
        RAISE EXCEPTION 'tbl and feature_column must not be null' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF query IS NULL THEN
        RAISE EXCEPTION 'query vector must not be null' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    _dim := pgvision._vector_column(tbl, feature_column);
    IF _dim > 0 AND pg_catalog.array_length(query::pg_catalog.float4[], 1) <> _dim THEN
        RAISE EXCEPTION 'expected % dimensions, not %', _dim, pg_catalog.array_length(query::pg_catalog.float4[], 1)
            USING ERRCODE = 'data_exception',
                  HINT = pg_catalog.format('column %I of relation %s holds vector(%s)', feature_column, tbl, _dim);
    END IF;
    RETURN QUERY
    SELECT * FROM pgvision._search(tbl, ARRAY[query::text], k, feature_column, metric, filter, group_by,
                                   max_distance, min_similarity, expand, NULL);
END
$$;
COMMENT ON FUNCTION pgvision.search_vector(regclass, vector, int, name, text, text, name, double precision, double precision, int) IS
'pgvision.search with a vector as the query (a stored feature, a mean of several, one computed elsewhere), e.g. search_vector(''images'', (SELECT feature FROM images WHERE id = 7)); same columns and options (the vector must have the column''s dimensions); similarity is larger for nearer rows: cosine 1 - distance, ip the inner product, l2 1 / (1 + distance); id is the primary key as text: join with t.id = s.id::int (the cast on the result''s side keeps the table''s key index)';

-- The query vector of an image for a feature column, embedded with the column's model: for
-- the plain SQL form, ORDER BY feature <=> pgvision.query_vector('images', 'feature', $1).
CREATE OR REPLACE FUNCTION pgvision.query_vector(tbl regclass, feature_column name, image bytea)
RETURNS vector
LANGUAGE plpgsql STABLE PARALLEL UNSAFE COST 100000
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF tbl IS NULL OR feature_column IS NULL THEN
        RAISE EXCEPTION 'tbl and feature_column must not be null' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    PERFORM pgvision._vector_column(tbl, feature_column);
    RETURN pgvision.embed(image, pgvision._query_model(tbl, feature_column, NULL));
END
$$;
COMMENT ON FUNCTION pgvision.query_vector(regclass, name, bytea) IS
'pgvision.embed of an image with the model recorded for a feature column (pgvision.column_model), else the default model (pgvision.default_model()): the query vector for ORDER BY feature <=> pgvision.query_vector(''images'', ''feature'', $1); NULL for a NULL image';
