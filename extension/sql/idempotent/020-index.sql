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
    m int DEFAULT 32,
    ef_construction int DEFAULT 200,
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
    _check record;
    _idx regclass;
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
    -- (a partitioned table's index is the partitions' own: check those)
    IF _method = 'hnsw' AND (SELECT c.relkind FROM pg_catalog.pg_class c WHERE c.oid = tbl) IN ('r', 'm') THEN
        -- the new index, by its schema and name, whatever the search_path
        _idx := (SELECT i.indexrelid FROM pg_catalog.pg_index i JOIN pg_catalog.pg_class c ON c.oid = i.indexrelid
                 WHERE i.indrelid = tbl AND c.relname = _name);
        SELECT pg_catalog.string_agg(pg_catalog.format('%s of %s rows from the %s', c.sampled - c.reached, c.sampled, c.part),
                                     ' and ') AS said,
               pg_catalog.bool_or(c.reached < 0.98 * c.sampled) AS bad
        INTO _check
        FROM pgvision.check_index(_idx) c;
        IF _check.bad THEN
            RAISE WARNING 'index %: % cannot be found by their own feature', _name, _check.said
                USING DETAIL = 'pgvector builds the graph in the order the rows lie in the table, and a group of rows loaded first (say photos, then many thumbnails) loses its links: queries near them end among the other rows at any hnsw.ef_search.',
                      HINT = pg_catalog.format('put the rows in a mixed order, which rebuilds every index of the table, e.g. CREATE INDEX mix ON %s ((pg_catalog.hashtext(%s::text))); CLUSTER %s USING mix; DROP INDEX mix; then check again with pgvision.check_index(%L)',
                                               tbl, coalesce(pg_catalog.quote_ident((pgvision._row_key(tbl)).columns[1]), '<key>'),
                                               tbl, _idx::oid::regclass::text);
        END IF;
    END IF;
    RETURN _name;
END
$$;
COMMENT ON FUNCTION pgvision.create_index(regclass, name, text, text, int, int, int, boolean, text) IS
'creates a pgvector index on a vector column and returns its name (in the table''s schema; default <table>_<column>_<method>_<metric>_idx). metric: cosine (<=>, the default, which the search functions then use), l2 (<->) or ip (<#>); method: hnsw (m, ef_construction; default 32 and 200, which the search functions read at hnsw.ef_search 200 from 10,000 rows, where m 16 needs 1000 on collections that mix kinds of pictures) or ivfflat (lists; default rows/1000 clamped to [10, 10000], counted when the index is built, so load the data first). halfvec => true indexes (column::halfvec(dim)), half the size, used by queries that order by that same expression. Runs as the caller, who must own the table; for CREATE INDEX CONCURRENTLY write the DDL yourself. An HNSW index is checked with pgvision.check_index once built: a WARNING says when sampled rows cannot be found by their own feature (rows loaded first as a group of their own), with the CLUSTER that mends it';


-- The hnsw.ef_search the search functions use on an HNSW index: pgvector's largest (1000)
-- for graphs of m below 32, whose search needs it on collections that mix kinds of
-- pictures, and for tables below 10,000 rows, where it costs a few ms (on 2,679 rows loaded
-- photos first, m 32 at 200 missed 2 of 228 exact top-1 rows in one build); 200 for m 32 and
-- more from 10,000 rows (BENCHMARKS.md, figure 3, mixed collection of 100,000 rows loaded
-- shuffled: m 32 at ef_search 200 agreed with an exact scan for 0.9955 of the queries at
-- p50 7.4 ms; m 16 needs 1000 for 0.990, 20-29 ms).
CREATE OR REPLACE FUNCTION pgvision._hnsw_ef_search(m int, reltuples real)
RETURNS int
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RETURN CASE WHEN coalesce(m, 16) >= 32 AND reltuples >= 10000 THEN 200 ELSE 1000 END;  -- pgvector's default m is 16
END
$$;
COMMENT ON FUNCTION pgvision._hnsw_ef_search(int, real) IS
'internal: the hnsw.ef_search the search functions use on an HNSW graph of m (NULL: pgvector''s default, 16) over a table of reltuples rows: 200 from m 32 and 10,000 rows, else 1000';

-- An HNSW graph can hold rows that no search reaches. pgvector builds it in the order the
-- rows lie in the table, and each row links to rows that came before it; a group loaded
-- first (photos, then 100,000 thumbnails) loses its links from the rows after it, and a
-- query near it then ends among the others at any ef_search (BENCHMARKS.md, figure 3:
-- the mixed collection loaded photos first, top-1 agreement 0.25 at ef_search 1000 with m
-- 16, 0.26 with m 32). Such rows cannot find themselves: the check searches the index for
-- sampled rows' own features at the search functions' ef_search, half of the rows from the
-- table's first twentieth, where rows loaded first lie, half from the whole table.
CREATE OR REPLACE FUNCTION pgvision.check_index(idx regclass, sample int DEFAULT 400)
RETURNS TABLE (part text, sampled int, reached int, share double precision)
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    _i record;
    _rel text;
    _key text;
    _op text;
    _pct double precision;
    _tids tid[];
    _got tid;
    _d double precision;
    _self double precision;
    _ef int;
    _session_ef text := pg_catalog.current_setting('hnsw.ef_search', true);
    _seqscan text := pg_catalog.current_setting('enable_seqscan');
    _n int;
BEGIN
    IF idx IS NULL OR sample IS NULL THEN
        RAISE EXCEPTION 'idx and sample must not be null' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF sample < 2 OR sample > 10000 THEN
        RAISE EXCEPTION 'sample must be between 2 and 10000, not %', sample
            USING ERRCODE = 'invalid_parameter_value', HINT = 'it is the number of rows searched for, half from the table''s first twentieth';
    END IF;
    SELECT i.indrelid::regclass AS tbl, s.index_name, s.metric, s.m, t.reltuples, a.attname AS col, i.indkey[0] AS keynum
    INTO _i
    FROM pg_catalog.pg_index i
    JOIN pg_catalog.pg_class t ON t.oid = i.indrelid
    JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum > 0 AND NOT a.attisdropped
    JOIN LATERAL pgvision._column_indexes(i.indrelid, a.attname) s ON s.idx = i.indexrelid
    WHERE i.indexrelid = check_index.idx AND s.method = 'hnsw' AND t.relkind IN ('r', 'm');
    IF NOT FOUND THEN
        RAISE EXCEPTION '% is not an HNSW index of a vector column', idx
            USING ERRCODE = 'wrong_object_type',
                  HINT = 'check_index takes an index pgvision.create_index builds with method hnsw; an IVFFlat index reads whole lists and always finds a row by its own feature';
    END IF;
    _rel := pgvision._rel_name(_i.tbl);
    _key := CASE WHEN _i.keynum <> 0 THEN pg_catalog.quote_ident(_i.col) ELSE pg_catalog.pg_get_indexdef(idx, 1, false) END;
    _op := pg_catalog.format('OPERATOR(%I.%s)', pgvision._vector_schema(), (SELECT m.operator FROM pgvision._metric(_i.metric) m));
    -- the search functions' on this column, or this index's own where they do not read it
    -- (an index over column::halfvec)
    _ef := GREATEST(pgvision._hnsw_ef_search(_i.m, _i.reltuples),
                    (SELECT pg_catalog.max(pgvision._hnsw_ef_search(c.m, _i.reltuples))
                     FROM pgvision._column_indexes(_i.tbl, _i.col) c WHERE c.method = 'hnsw' AND c.on_column));

    PERFORM pg_catalog.set_config('hnsw.ef_search', _ef::text, true);
    PERFORM pg_catalog.set_config('enable_seqscan', 'off', true);  -- the index, even on a few rows
    FOR part IN SELECT unnest(ARRAY['first twentieth', 'whole table']) LOOP
        IF part = 'first twentieth' THEN
            EXECUTE pg_catalog.format(
                'SELECT pg_catalog.array_agg(s.ctid) FROM (SELECT t.ctid FROM %s AS t WHERE t.ctid OPERATOR(pg_catalog.<) $1'
                ' AND t.%I IS NOT NULL ORDER BY pg_catalog.random() LIMIT $2) s', _rel, _i.col)
                INTO _tids
                USING pg_catalog.format('(%s,0)', GREATEST(1, pg_catalog.ceil(pg_catalog.pg_relation_size(_i.tbl)
                          / pg_catalog.current_setting('block_size')::numeric / 20)))::tid,
                      sample / 2;
        ELSE
            _pct := LEAST(100, 400.0 * sample / GREATEST(1, (SELECT c.reltuples FROM pg_catalog.pg_class c WHERE c.oid = _i.tbl)));
            EXECUTE pg_catalog.format(
                'SELECT pg_catalog.array_agg(s.ctid) FROM (SELECT t.ctid FROM %s AS t TABLESAMPLE BERNOULLI (%s)'
                ' WHERE t.%I IS NOT NULL ORDER BY pg_catalog.random() LIMIT $1) s', _rel, _pct, _i.col)
                INTO _tids USING sample - sample / 2;
        END IF;
        sampled := coalesce(pg_catalog.cardinality(_tids), 0);
        reached := 0;
        FOR _n IN 1 .. sampled LOOP
            -- the row's own feature as the query (pgvector's README form): an index scan; the
            -- key is unqualified, since an expression (the halfvec cast) takes no prefix
            EXECUTE pg_catalog.format(
                'WITH q AS MATERIALIZED (SELECT %1$s AS v FROM %2$s AS s WHERE s.ctid OPERATOR(pg_catalog.=) $1) '
                'SELECT n.ctid, n.d, (SELECT q.v %3$s q.v FROM q) FROM (SELECT t.ctid, %1$s %3$s (SELECT q.v FROM q) AS d '
                'FROM %2$s AS t ORDER BY d LIMIT 1) n', _key, _rel, _op)
                INTO _got, _d, _self USING _tids[_n];
            -- the row itself, or one at least as near (a duplicate)
            IF _got OPERATOR(pg_catalog.=) _tids[_n] OR _d <= _self + 1e-6 * GREATEST(1, abs(_self)) THEN
                reached := reached + 1;
            END IF;
        END LOOP;
        share := CASE WHEN sampled > 0 THEN reached::double precision / sampled END;
        RETURN NEXT;
    END LOOP;
    PERFORM pg_catalog.set_config('hnsw.ef_search', coalesce(_session_ef, '40'), true);
    PERFORM pg_catalog.set_config('enable_seqscan', _seqscan, true);
END
$$;
COMMENT ON FUNCTION pgvision.check_index(regclass, int) IS
'searches an HNSW index for sampled rows'' own features, at the search functions'' hnsw.ef_search, and says how many it reaches (finds the row, or one at least as near): part ''first twentieth'' (half the sample, from the table''s first twentieth of pages, where rows loaded first lie) and ''whole table''. A share below 1 means rows no search reaches: pgvector builds the graph in table order, and a group of rows loaded first (say photos, then many thumbnails) loses its links; CLUSTER the table in a mixed order to build it again. Runs as the caller, who must be able to read the table; create_index runs it on every HNSW index it builds';
