-- Vector indexes: pgvision.create_index, and create_ann_index for AnalyticDB's index options.

-- pgvector is relocatable, so its schema is looked up when it is needed, not at install time.
CREATE OR REPLACE FUNCTION pgvision._vector_schema()
RETURNS text
LANGUAGE sql STABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT n.nspname::text
    FROM pg_catalog.pg_extension e JOIN pg_catalog.pg_namespace n ON n.oid = e.extnamespace
    WHERE e.extname = 'vector'
$$;
COMMENT ON FUNCTION pgvision._vector_schema() IS
'internal: the schema pgvector''s types, operators and operator classes live in';

CREATE OR REPLACE FUNCTION pgvision._vector_column(tbl regclass, column_name name)
RETURNS int
LANGUAGE plpgsql STABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    _type oid;
    _typmod int;
BEGIN
    SELECT a.atttypid, a.atttypmod INTO _type, _typmod
    FROM pg_catalog.pg_attribute a
    WHERE a.attrelid = _vector_column.tbl AND a.attname = _vector_column.column_name
      AND a.attnum > 0 AND NOT a.attisdropped;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'column "%" of relation % does not exist', column_name, tbl
            USING ERRCODE = 'undefined_column';
    END IF;
    IF _type IS DISTINCT FROM pg_catalog.to_regtype(pg_catalog.format('%I.vector', pgvision._vector_schema())) THEN
        RAISE EXCEPTION 'column "%" of relation % is of type %, not vector',
                        column_name, tbl, pg_catalog.format_type(_type, _typmod)
            USING ERRCODE = 'datatype_mismatch',
                  HINT = 'pgvision indexes and searches vector columns, such as ones filled by pgvision.embed';
    END IF;
    RETURN _typmod;
END
$$;
COMMENT ON FUNCTION pgvision._vector_column(regclass, name) IS
'internal: checks that a column exists and is of type vector; returns its dimensions, or -1 when it has none';

CREATE OR REPLACE FUNCTION pgvision.create_index(
    tbl regclass,
    column_name name,
    metric text DEFAULT 'cosine',  -- measured best for the default model: bench/quality.py
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
    _base text;
    _suffix text;
    _nsp oid;
    _i int := 0;
BEGIN
    IF tbl IS NULL OR column_name IS NULL OR _metric IS NULL OR _method IS NULL
       OR create_index.halfvec IS NULL THEN
        RAISE EXCEPTION 'tbl, column_name, metric, method and halfvec must not be null'
            USING ERRCODE = 'null_value_not_allowed';
    END IF;
    _opclass := CASE _metric WHEN 'l2' THEN 'l2_ops' WHEN 'cosine' THEN 'cosine_ops' WHEN 'ip' THEN 'ip_ops' END;
    IF _opclass IS NULL THEN
        RAISE EXCEPTION 'unknown metric "%"', create_index.metric
            USING ERRCODE = 'invalid_parameter_value', HINT = 'expected l2, cosine or ip';
    END IF;
    IF _method NOT IN ('hnsw', 'ivfflat') THEN
        RAISE EXCEPTION 'unknown index method "%"', create_index.method
            USING ERRCODE = 'invalid_parameter_value', HINT = 'expected hnsw or ivfflat';
    END IF;
    _dim := pgvision._vector_column(tbl, column_name);
    IF _dim < 1 THEN
        RAISE EXCEPTION 'column "%" of relation % has no dimensions', column_name, tbl
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = pg_catalog.format('vector indexes need them: ALTER TABLE %s ALTER COLUMN %I TYPE vector(1280)',
                                           tbl, column_name);
    END IF;

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

    IF _name IS NULL THEN
        -- <table>_<column>_<method>_<metric>[_half]_idx, shortened to fit NAMEDATALEN, numbered if taken.
        SELECT c.relnamespace INTO _nsp FROM pg_catalog.pg_class c WHERE c.oid = tbl;
        LOOP
            _suffix := pg_catalog.format('_%s_%s%s_idx%s', _method, _metric,
                                         CASE WHEN create_index.halfvec THEN '_half' ELSE '' END,
                                         CASE WHEN _i > 0 THEN _i::text ELSE '' END);
            _base := (SELECT c.relname::text FROM pg_catalog.pg_class c WHERE c.oid = tbl) || '_' || column_name;
            WHILE pg_catalog.octet_length(_base || _suffix) > 63 LOOP
                _base := pg_catalog.left(_base, -1);
            END LOOP;
            _name := _base || _suffix;
            EXIT WHEN NOT EXISTS (SELECT 1 FROM pg_catalog.pg_class c
                                  WHERE c.relname = _name AND c.relnamespace = _nsp);
            _i := _i + 1;
        END LOOP;
    END IF;

    EXECUTE pg_catalog.format('CREATE INDEX %I ON %s USING %I (%s) WITH (%s)', _name, tbl, _method, _key, _with);
    RETURN _name;
END
$$;
COMMENT ON FUNCTION pgvision.create_index(regclass, name, text, text, int, int, int, boolean, text) IS
'creates a pgvector index on a vector column and returns its name (in the table''s schema; default <table>_<column>_<method>_<metric>_idx). metric: cosine (<=>, the default, which the search functions then use), l2 (<->) or ip (<#>); method: hnsw (m, ef_construction) or ivfflat (lists; default rows/1000 clamped to [10, 10000], counted when the index is built, so load the data first). halfvec => true indexes (column::halfvec(dim)), half the size, used by queries that order by that same expression. Runs as the caller, who must own the table; for CREATE INDEX CONCURRENTLY write the DDL yourself';

-- AnalyticDB: CREATE INDEX ... USING ann (feature) WITH (dim = '1280', hnsw_m = '16', ...).
CREATE OR REPLACE FUNCTION pgvision.create_ann_index(tbl regclass, column_name name, options jsonb,
                                                     name text DEFAULT NULL)
RETURNS text
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    _known constant text := 'dim, distancemeasure, hnsw_m, hnsw_ef_construction, pq_enable, pq_segments, pq_centers, external_storage';
    _key text;
    _value text;
    _int int;
    _dim int;
    _metric text := 'l2';
    _m int := 16;
    _ef int := 64;
BEGIN
    IF tbl IS NULL OR column_name IS NULL THEN
        RAISE EXCEPTION 'tbl and column_name must not be null' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF options IS NULL THEN
        options := '{}';
    END IF;
    IF pg_catalog.jsonb_typeof(options) <> 'object' THEN
        RAISE EXCEPTION 'ann index options must be a json object, not %', pg_catalog.jsonb_typeof(options)
            USING ERRCODE = 'invalid_parameter_value', HINT = 'for example {"dim": 1280, "hnsw_m": 16}';
    END IF;
    _dim := pgvision._vector_column(tbl, column_name);

    FOR _key, _value IN SELECT pg_catalog.lower(o.key), o.value #>> '{}' FROM pg_catalog.jsonb_each(options) o LOOP
        IF _key NOT IN ('dim', 'distancemeasure', 'hnsw_m', 'hnsw_ef_construction', 'pq_enable',
                        'pq_segments', 'pq_centers', 'external_storage') THEN
            RAISE EXCEPTION 'unknown ann index option "%"', _key
                USING ERRCODE = 'invalid_parameter_value', HINT = 'known options: ' || _known;
        END IF;
        IF _key = 'distancemeasure' THEN
            _metric := CASE pg_catalog.lower(_value) WHEN 'l2' THEN 'l2' WHEN 'ip' THEN 'ip'
                       WHEN 'innerproduct' THEN 'ip' WHEN 'cosine' THEN 'cosine' END;
            IF _metric IS NULL THEN
                RAISE EXCEPTION 'invalid value for distancemeasure: "%"', _value
                    USING ERRCODE = 'invalid_parameter_value', HINT = 'expected L2, IP (or InnerProduct) or Cosine';
            END IF;
            CONTINUE;
        END IF;
        BEGIN
            _int := _value::int;
        EXCEPTION WHEN invalid_text_representation OR numeric_value_out_of_range THEN
            _int := NULL;
        END;
        IF _int IS NULL THEN
            RAISE EXCEPTION 'invalid value for %: "%"', _key, _value
                USING ERRCODE = 'invalid_parameter_value', HINT = 'expected an integer';
        END IF;
        CASE _key
        WHEN 'dim' THEN
            IF _dim < 1 THEN
                RAISE EXCEPTION 'column "%" of relation % has no dimensions', column_name, tbl
                    USING ERRCODE = 'invalid_parameter_value',
                          HINT = pg_catalog.format('declare them: ALTER TABLE %s ALTER COLUMN %I TYPE vector(%s)',
                                                   tbl, column_name, _int);
            END IF;
            IF _int <> _dim THEN
                RAISE EXCEPTION 'dim is %, but column "%" of relation % has % dimensions', _int, column_name, tbl, _dim
                    USING ERRCODE = 'invalid_parameter_value';
            END IF;
        WHEN 'hnsw_m' THEN
            _m := _int;
        WHEN 'hnsw_ef_construction' THEN
            _ef := _int;
        WHEN 'pq_enable' THEN
            IF _int <> 0 THEN
                RAISE NOTICE 'product quantization is not supported: the index is built without it'
                    USING DETAIL = 'pgvector''s HNSW index keeps the full vectors: results are at least as accurate, the index is larger',
                          HINT = 'pgvision.create_index(..., halfvec => true) builds an index half the size';
            END IF;
        WHEN 'external_storage' THEN
            IF _int <> 0 THEN
                RAISE NOTICE 'external_storage is ignored: the index is an ordinary PostgreSQL index';
            END IF;
        ELSE
            NULL;  -- pq_segments, pq_centers: only meaningful with product quantization
        END CASE;
    END LOOP;

    RETURN pgvision.create_index(tbl, column_name, metric => _metric, method => 'hnsw', m => _m,
                                 ef_construction => _ef, name => create_ann_index.name);
END
$$;
COMMENT ON FUNCTION pgvision.create_ann_index(regclass, name, jsonb, text) IS
'creates an HNSW index from AnalyticDB''s ann index options: dim (checked against the column), distancemeasure (L2, IP/InnerProduct, Cosine), hnsw_m, hnsw_ef_construction (defaults 16 and 64, pgvector''s, not AnalyticDB''s 32 and 600); pq_enable = 1 and external_storage = 1 only raise a NOTICE, since pgvector has neither; returns the index name';

CREATE OR REPLACE FUNCTION pgvision.create_ann_index(tbl regclass, column_name name, options text,
                                                     name text DEFAULT NULL)
RETURNS text
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    _text text := pg_catalog.btrim(coalesce(options, ''), E' \t\r\n');
    _out jsonb := '{}';
    _item text;
    _key text;
    _value text;
BEGIN
    IF pg_catalog.left(_text, 1) = '{' THEN
        RETURN pgvision.create_ann_index(tbl, column_name, _text::jsonb, create_ann_index.name);
    END IF;
    -- The WITH clause as copied from the DDL: [WITH] (key = 'value', key = value, ...)
    _text := pg_catalog.regexp_replace(_text, '^with\s*', '', 'i');
    IF pg_catalog.left(_text, 1) = '(' AND pg_catalog.right(_text, 1) = ')' THEN
        _text := pg_catalog.substr(_text, 2, pg_catalog.length(_text) - 2);
    END IF;
    IF pg_catalog.btrim(_text, E' \t\r\n') <> '' THEN
        FOREACH _item IN ARRAY pg_catalog.string_to_array(_text, ',') LOOP
            IF pg_catalog.strpos(_item, '=') = 0 THEN
                RAISE EXCEPTION 'invalid ann index option "%"', pg_catalog.btrim(_item, E' \t\r\n')
                    USING ERRCODE = 'invalid_parameter_value',
                          HINT = 'expected key = value pairs separated by commas, as in dim = 1280, hnsw_m = 16';
            END IF;
            _key := pg_catalog.btrim(pg_catalog.split_part(_item, '=', 1), E' \t\r\n"');
            _value := pg_catalog.btrim(pg_catalog.substr(_item, pg_catalog.strpos(_item, '=') + 1), E' \t\r\n');
            _value := pg_catalog.btrim(_value, '''"');
            _out := _out || pg_catalog.jsonb_build_object(_key, _value);
        END LOOP;
    END IF;
    RETURN pgvision.create_ann_index(tbl, column_name, _out, create_ann_index.name);
END
$$;
COMMENT ON FUNCTION pgvision.create_ann_index(regclass, name, text, text) IS
'create_ann_index with the options as written in AnalyticDB DDL, e.g. ''dim = ''''1280'''', hnsw_m = 16, pq_enable = 0'' (an optional WITH ( ... ) around them is accepted), or as a json object';
