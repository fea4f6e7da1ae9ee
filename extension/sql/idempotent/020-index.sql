-- Vector indexes: pgvision.create_index, and the metric a column's index was built for.

-- <table>_<column><suffix>, shortened to fit NAMEDATALEN, numbered if taken in the
-- table's schema.
CREATE OR REPLACE FUNCTION pgvision._index_name(tbl regclass, column_name name, suffix text)
RETURNS text
LANGUAGE plpgsql STABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    _nsp oid := (SELECT c.relnamespace FROM pg_catalog.pg_class c WHERE c.oid = tbl);
    _base text;
    _name text;
    _i int := 0;
BEGIN
    LOOP
        _base := (SELECT c.relname::text FROM pg_catalog.pg_class c WHERE c.oid = tbl) || '_' || column_name;
        WHILE pg_catalog.octet_length(_base || suffix || CASE WHEN _i > 0 THEN _i::text ELSE '' END) > 63 LOOP
            _base := pg_catalog.left(_base, -1);
        END LOOP;
        _name := _base || suffix || CASE WHEN _i > 0 THEN _i::text ELSE '' END;
        EXIT WHEN NOT EXISTS (SELECT 1 FROM pg_catalog.pg_class c WHERE c.relname = _name AND c.relnamespace = _nsp);
        _i := _i + 1;
    END LOOP;
    RETURN _name;
END
$$;
COMMENT ON FUNCTION pgvision._index_name(regclass, name, text) IS
'internal: a free index name <table>_<column><suffix>[N] in the table''s schema, shortened to fit NAMEDATALEN';

CREATE OR REPLACE FUNCTION pgvision.create_index(
    tbl regclass,
    column_name name,
    metric text DEFAULT pgvision._default_metric(),
    method text DEFAULT 'hnsw',
    m int DEFAULT 16,
    ef_construction int DEFAULT 64,
    lists int DEFAULT NULL,
    halfvec boolean DEFAULT false,
    name text DEFAULT NULL)
RETURNS text
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    _vs text;
    _dim int;
    _metric text := pg_catalog.lower(create_index.metric);
    _method text := pg_catalog.lower(create_index.method);
    _opclass text;
    _key text;
    _with text;
    _lists int := create_index.lists;
    _rows bigint;
    _name text := create_index.name;
BEGIN
    IF tbl IS NULL OR column_name IS NULL OR _metric IS NULL OR _method IS NULL
       OR create_index.halfvec IS NULL THEN
        RAISE EXCEPTION 'tbl, column_name, metric, method and halfvec must not be null'
            USING ERRCODE = 'null_value_not_allowed';
    END IF;
    _opclass := (SELECT m.opclass FROM pgvision._metric(_metric) m);
    IF _method NOT IN ('hnsw', 'ivfflat') THEN
        RAISE EXCEPTION 'unknown index method "%"', create_index.method
            USING ERRCODE = 'invalid_parameter_value', HINT = 'expected hnsw or ivfflat';
    END IF;
    _dim := pgvision._vector_dims(tbl, column_name);

    _vs := pgvision._vector_schema();
    IF create_index.halfvec THEN
        _key := pg_catalog.format('(%I::%I.halfvec(%s)) %I.%I', column_name, _vs, _dim, _vs, 'halfvec_' || _opclass);
    ELSE
        _key := pg_catalog.format('%I %I.%I', column_name, _vs, 'vector_' || _opclass);
    END IF;

    IF _method = 'hnsw' THEN
        IF _lists IS NOT NULL THEN
            RAISE EXCEPTION 'lists applies to ivfflat indexes only'
                USING ERRCODE = 'invalid_parameter_value', HINT = 'use m and ef_construction with hnsw';
        END IF;
        IF m IS NULL OR ef_construction IS NULL THEN
            RAISE EXCEPTION 'm and ef_construction must not be null' USING ERRCODE = 'null_value_not_allowed';
        END IF;
        -- pgvector checks the ranges and reports them in its own words.
        _with := pg_catalog.format('m = %s, ef_construction = %s', m, ef_construction);
    ELSE
        IF _lists IS NULL THEN
            EXECUTE pg_catalog.format('SELECT pg_catalog.count(*) FROM %s WHERE %I IS NOT NULL', tbl, column_name)
                INTO _rows;
            _lists := GREATEST(10, LEAST(10000, _rows / 1000));
        END IF;
        _with := pg_catalog.format('lists = %s', _lists);
    END IF;

    _name := coalesce(_name, pgvision._index_name(tbl, column_name, pg_catalog.format('_%s_%s%s_idx', _method, _metric,
                                                   CASE WHEN create_index.halfvec THEN '_half' ELSE '' END)));
    EXECUTE pg_catalog.format('CREATE INDEX %I ON %s USING %I (%s) WITH (%s)', _name, tbl, _method, _key, _with);
    RETURN _name;
END
$$;
COMMENT ON FUNCTION pgvision.create_index(regclass, name, text, text, int, int, int, boolean, text) IS
'creates a pgvector index on a vector column and returns its name (in the table''s schema; default <table>_<column>_<method>_<metric>_idx). metric: cosine (<=>, the default, which the search functions then use), l2 (<->) or ip (<#>); method: hnsw (m, ef_construction) or ivfflat (lists; default rows/1000 clamped to [10, 10000], counted when the index is built, so load the data first). halfvec => true indexes (column::halfvec(dim)), half the size, used by queries that order by that same expression. Runs as the caller, who must own the table; for CREATE INDEX CONCURRENTLY write the DDL yourself';

-- The metric a search uses when none is given: the one the column is indexed for, so the
-- query can use that index; with several, the default metric if one is indexed for it.
-- A column without a pgvector index (a small table, a sharded table whose indexes live on
-- the shards) gets pgvision._default_metric(), which is also what create_index and
-- create_sharded_table build when not told.
CREATE OR REPLACE FUNCTION pgvision._index_metric(tbl regclass, column_name name)
RETURNS text
LANGUAGE sql STABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT m.metric
    FROM pg_catalog.pg_index i
    JOIN pg_catalog.pg_class ic ON ic.oid = i.indexrelid
    JOIN pg_catalog.pg_am am ON am.oid = ic.relam
    JOIN pg_catalog.pg_opclass o ON o.oid = i.indclass[0]
    JOIN pg_catalog.pg_namespace n ON n.oid = o.opcnamespace
    JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]
    JOIN pgvision._metrics() m ON o.opcname = 'vector_' || m.opclass
    WHERE i.indrelid = _index_metric.tbl AND a.attname = _index_metric.column_name
      AND i.indisvalid AND am.amname IN ('hnsw', 'ivfflat')
      AND n.nspname = pgvision._vector_schema()
    ORDER BY m.is_default DESC, i.indexrelid  -- several: the default metric's, else the oldest
    LIMIT 1
$$;
COMMENT ON FUNCTION pgvision._index_metric(regclass, name) IS
'internal: the metric (l2, cosine or ip) of the pgvector index (hnsw or ivfflat) on a vector column, the default metric''s first when there are several; NULL without one';

