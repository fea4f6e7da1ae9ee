-- The engine behind search, search_batch and search_like (031-search.sql): checks, the row
-- key, the candidate query, query expansion, collapse by group. Every query it builds takes
-- the same parameters:
--   $1 query vector (text), $2 key to exclude, $3 max_distance, $4 min_similarity,
--   $5 query_no, $6 number of candidates.
-- The caller's filter is concatenated in, never a format() template (it may hold %), on
-- lines of its own so that a trailing -- comment in it ends there; it runs with the
-- caller's privileges and search_path = pg_catalog, pg_temp.

-- The checks of a search's arguments; returns the metric it runs with: the one given (the
-- search functions give pgvision._search_scan's choice), else the default.
CREATE OR REPLACE FUNCTION pgvision._search_metric(tbl regclass, k int, feature_column name, given text,
                                                   group_by name, max_distance double precision,
                                                   min_similarity double precision, expand int,
                                                   OUT metric text, OUT operator text, OUT similarity text)
LANGUAGE plpgsql STABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    _m record;
BEGIN
    IF tbl IS NULL OR feature_column IS NULL OR k IS NULL OR expand IS NULL THEN
        RAISE EXCEPTION 'tbl, k, feature_column and expand must not be null' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF k < 1 THEN
        RAISE EXCEPTION 'k must be at least 1, not %', k USING ERRCODE = 'invalid_parameter_value';
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
    SELECT * INTO _m FROM pgvision._metric(coalesce(given, pgvision._default_metric()));
    -- l2 and cosine distances are never negative (the ip "distance" is the negative inner
    -- product, which may be): a negative limit would silently find nothing.
    IF max_distance < 0 AND _m.metric IN ('l2', 'cosine') THEN
        RAISE EXCEPTION 'max_distance must not be negative with the % metric, not %', _m.metric, max_distance
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = CASE _m.metric WHEN 'l2' THEN 'l2 distances are 0 or more' ELSE 'cosine distances are between 0 and 2' END;
    END IF;
    IF expand < 0 OR expand > 1000 THEN
        RAISE EXCEPTION 'expand must be between 0 and 1000, not %', expand USING ERRCODE = 'invalid_parameter_value';
    END IF;
    PERFORM pgvision._vector_column(tbl, feature_column);
    IF group_by IS NOT NULL THEN
        PERFORM pgvision._require_column(tbl, group_by);
    END IF;
    metric := _m.metric;
    operator := _m.operator;
    similarity := _m.similarity;
END
$$;
COMMENT ON FUNCTION pgvision._search_metric(regclass, int, name, text, name, double precision, double precision, int) IS
'internal: checks the arguments of pgvision._search; returns the metric it searches with (the given one, else the default), its operator and similarity template (pgvision._metrics())';

-- What identifies a row in search results: the primary key (a composite one in its row
-- form), or what the scale-out hook says (a sharded table's partition key); NULL without.
CREATE OR REPLACE FUNCTION pgvision._row_key(tbl regclass, OUT columns name[], OUT key_type text)
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    SELECT pg_catalog.array_agg(a.attname ORDER BY pg_catalog.array_position(i.indkey::int2[], a.attnum)),
           pg_catalog.min(pg_catalog.format_type(a.atttypid, a.atttypmod))
    INTO columns, key_type
    FROM pg_catalog.pg_index i
    JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey)
    WHERE i.indrelid = tbl AND i.indisprimary;
    IF columns IS NULL THEN
        SELECT ARRAY[h.key_column], h.key_type INTO columns, key_type
        FROM pgvision._scale_out(tbl, NULL, NULL, NULL, NULL) h WHERE h.key_column IS NOT NULL;
    END IF;
END
$$;
COMMENT ON FUNCTION pgvision._row_key(regclass) IS
'internal: the columns and type of what identifies a row of a table in search results: its primary key, or the partition key of a sharded table; NULLs without';

-- The id and item columns of a result row (search's, find_copies', find_duplicates'), as
-- expressions on the table's alias t: the key (key_columns, pgvision._row_key's) as text, a
-- composite key in its row form, NULL without one; the row as jsonb without what
-- pgvision._plain_columns leaves out.
CREATE OR REPLACE FUNCTION pgvision._result_columns(tbl regclass, key_columns name[], OUT id text, OUT item text)
LANGUAGE plpgsql STABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    id := CASE WHEN key_columns IS NULL THEN 'NULL::pg_catalog.text'
               WHEN pg_catalog.cardinality(key_columns) = 1 THEN pg_catalog.format('t.%I::pg_catalog.text', key_columns[1])
               ELSE 'ROW(' || (SELECT pg_catalog.string_agg(pg_catalog.format('t.%I', u.c), ', ' ORDER BY u.i)
                               FROM pg_catalog.unnest(key_columns) WITH ORDINALITY u (c, i)) || ')::pg_catalog.text' END;
    item := coalesce((SELECT '(SELECT pg_catalog.to_jsonb(r) FROM (SELECT '
                             || pg_catalog.string_agg(pg_catalog.format('t.%I', u.c), ', ' ORDER BY u.i) || ') r)'
                      FROM pg_catalog.unnest(pgvision._plain_columns(tbl)) WITH ORDINALITY u (c, i)),
                     '''{}''::pg_catalog.jsonb');
END
$$;
COMMENT ON FUNCTION pgvision._result_columns(regclass, name[]) IS
'internal: the id (key as text) and item (row as jsonb) expressions of a result row of tbl, on alias t';

-- The candidates of a search, the $6 nearest rows that pass the filter, as the query
--   SELECT id, distance, item[, grp] ... ORDER BY distance LIMIT $6
-- and, for query expansion, the features of the $6 nearest rows. A table of this server
-- is read through its index; for a sharded table the scale-out hook gives one query per
-- shard, all sent at once.
CREATE OR REPLACE FUNCTION pgvision._search_candidates(tbl regclass, feature_column name, operator text,
                                                       filter text, group_by name, expand int,
                                                       exclude_key text,
                                                       OUT candidates text, OUT nearest text)
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    _vs text := pgvision._vector_schema();
    _key record := pgvision._row_key(tbl);
    _cols text[] := ARRAY(SELECT pg_catalog.format('t.%I', u.c) FROM pg_catalog.unnest(_key.columns) WITH ORDINALITY u (c, i)
                          ORDER BY u.i);
    _dist text := pg_catalog.format('t.%I OPERATOR(%I.%s) $1::%I.vector', feature_column, _vs, operator, _vs);
    _id text;
    _item text;
    _where text;
    _with text := '';
    _from text;
    _shards text;
BEGIN
    IF exclude_key IS NOT NULL AND pg_catalog.cardinality(_key.columns) IS DISTINCT FROM 1 THEN
        RAISE EXCEPTION 'cannot exclude a row of % by key without a single-column primary key', tbl
            USING ERRCODE = 'feature_not_supported';
    END IF;
    SELECT r.id, r.item INTO _id, _item FROM pgvision._result_columns(tbl, _key.columns) r;
    _where := pg_catalog.format('t.%I IS NOT NULL', feature_column)
              || CASE WHEN filter IS NULL THEN '' ELSE E' AND (\n' || filter || E'\n)' END
              || CASE WHEN exclude_key IS NULL THEN ''
                      ELSE pg_catalog.format(' AND %s <> CAST($2 AS %s)', _cols[1], _key.key_type) END;
    _shards := (pgvision._scale_out(tbl, ARRAY[group_by, CASE WHEN expand > 0 THEN feature_column END],
                                    _dist, _where, '$6')).candidates;
    IF _shards IS NULL THEN
        _from := ' FROM ' || tbl::text || ' AS t WHERE ' || _where || ' ORDER BY ' || _dist || ' LIMIT $6';
    ELSE
        _with := 'WITH u AS MATERIALIZED (' || _shards || ') ';
        _dist := 't.pgvision_distance';
        _from := ' FROM u AS t ORDER BY t.pgvision_distance LIMIT $6';
    END IF;
    candidates := _with || 'SELECT ' || _id || ' AS id, ' || _dist || ' AS distance, ' || _item || ' AS item'
                  || CASE WHEN group_by IS NULL THEN '' ELSE pg_catalog.format(', t.%I AS grp', group_by) END
                  || _from;
    nearest := _with || pg_catalog.format('SELECT t.%I', feature_column) || _from;
END
$$;
COMMENT ON FUNCTION pgvision._search_candidates(regclass, name, text, text, name, int, text) IS
'internal: the candidate query of pgvision._search (id, distance, item and grp of the $6 nearest rows) and the query of the $6 nearest features, for a table of this server or, through pgvision._scale_out, a sharded one';

-- Query expansion: half the query, half the mean of its n nearest rows (unit vectors for
-- cosine), i.e. the query counted n times among the n rows; BENCHMARKS.md compares it with
-- the plain mean of all n + 1 vectors.
CREATE OR REPLACE FUNCTION pgvision._search_expand(query text, nearest text, metric text, n int, exclude_key text)
RETURNS text
LANGUAGE plpgsql STABLE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    _vs text := pgvision._vector_schema();
    _q text;
BEGIN
    -- Concatenated, never a format() template: nearest holds the caller's filter.
    EXECUTE pg_catalog.format('SELECT %1$I.avg(%2$s)::pg_catalog.text FROM (SELECT $1::%1$I.vector AS f'
                              ' FROM pg_catalog.generate_series(1, $6) UNION ALL (',
                              _vs, CASE WHEN metric = 'cosine' THEN pg_catalog.format('%I.l2_normalize(s.f)', _vs) ELSE 's.f' END)
            || nearest || ')) s'
        INTO _q USING query, exclude_key, NULL::double precision, NULL::double precision, 0, n;
    RETURN _q;
END
$$;
COMMENT ON FUNCTION pgvision._search_expand(text, text, text, int, text) IS
'internal: the expanded query of pgvision._search: the mean of the query counted n times and its n nearest features (normalized for cosine)';

-- Collapse by group: how many candidates hold k groups. The candidate set grows until it
-- holds k groups or the scan runs out (end of the table, the distance threshold, or
-- hnsw.max_scan_tuples).
CREATE OR REPLACE FUNCTION pgvision._search_group_size(candidates text, ok text, k int, query text,
                                                       exclude_key text, max_distance double precision,
                                                       min_similarity double precision)
RETURNS int
LANGUAGE plpgsql STABLE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    _n int := LEAST(GREATEST(k::bigint * 10, 100), 1000000000)::int;
    _rows bigint;
    _groups bigint;
    _beyond boolean;
BEGIN
    LOOP
        EXECUTE 'WITH c AS MATERIALIZED (' || candidates || ') '
                || 'SELECT pg_catalog.count(*), '
                || 'pg_catalog.count(DISTINCT c.grp) FILTER (WHERE ' || ok || ') '
                || '+ coalesce(pg_catalog.max(1) FILTER (WHERE c.grp IS NULL AND ' || ok || '), 0), '
                || 'coalesce(pg_catalog.bool_or(NOT (' || ok || ')), false) FROM c'
            INTO _rows, _groups, _beyond
            USING query, exclude_key, max_distance, min_similarity, 0, _n;
        EXIT WHEN _groups >= k OR _rows < _n OR _beyond OR _n >= 1000000000;
        _n := LEAST(_n::bigint * 4, 1000000000)::int;
    END LOOP;
    RETURN _n;
END
$$;
COMMENT ON FUNCTION pgvision._search_group_size(text, text, int, text, text, double precision, double precision) IS
'internal: for group_by, the number of candidates of pgvision._search that holds k groups (or all there are)';

-- How pgvision._search reads a table of this server, so that its top rows are the true
-- nearest ones on collections that mix photos, cut-outs and thumbnails, where an HNSW search
-- at pgvector's default ef_search 40 often misses a photo's nearest row (BENCHMARKS.md,
-- figure 3, mixed collection: top-1 agreement with an exact scan 0.63 at 40, 0.997 at 1000
-- on 3,279 rows loaded photos first; 0.88 and 0.99 on 100,000 rows loaded shuffled, m 16):
-- - fewer than 1,500 rows: an exact scan (a sequential scan and a sort, the index left
--   unused), there about as fast as an index search at ef_search 1000; not when the session
--   turned sequential scans off (SET enable_seqscan = off asks for the index);
-- - else the index (forced when there is no filter and the column has an HNSW or IVFFlat
--   index), with the hnsw.ef_search of pgvision._hnsw_ef_search (1000 below m 32, less
--   from m 32, where a smaller beam finds as much), and ivfflat.probes 2·sqrt(lists). An
--   IVFFlat search reads only the lists whose centres are nearest the query, and a photo's
--   nearest row may lie in another: at pgvector's default of 1 probe, lists 100 on the
--   100,000-row mixed collection gave a top-1 agreement with an exact scan of 0.54 (photos
--   first) to 0.94 (shuffled), at 10 probes 0.89 to 0.996, at 30 0.98 to 0.9995; 2·sqrt(lists)
--   (20 there: 0.958 and 0.998, 25 ms against 12 at 10) reads about 2·rows/sqrt(lists)
--   rows: with create_index's lists (rows/1000) that grows with the square root of the
--   table, as pgvector's own advice (sqrt(lists)) does.
-- The session's values are raised, never lowered, and are back when the function returns:
-- these functions promise the nearest rows; the plain SQL form (ORDER BY feature <=> q
-- LIMIT k) under the session's own settings is the way to trade them for speed. An index
-- over column::halfvec serves only queries on that expression and plays no part. Sharded
-- and partitioned tables keep the planner's choice and their shards' settings.
CREATE OR REPLACE FUNCTION pgvision._search_scan(tbl regclass, feature_column name, given text,
                                                OUT metric text, OUT exact boolean, OUT ef_search int,
                                                OUT probes int, OUT indexed boolean)
LANGUAGE plpgsql STABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    exact_rows constant int := 1500;
    _kind "char";
    _reltuples real;
    _hnsw_ef int;
    _lists int;
    _n bigint;
BEGIN
    SELECT c.relkind, c.reltuples INTO _kind, _reltuples FROM pg_catalog.pg_class c WHERE c.oid = tbl;
    -- The column's indexes, read once: every search comes here. The metric, when none is
    -- given, is the one the column is indexed for, so the query can use that index (with
    -- several, the default metric's if one is indexed for it, else the oldest's); a column
    -- without an index (a small table, a sharded table whose indexes live on the shards)
    -- gets pgvision._default_metric(), which is also what create_index and
    -- create_sharded_table build when not told.
    WITH i AS MATERIALIZED (SELECT c.* FROM pgvision._column_indexes(tbl, feature_column) c WHERE c.on_column),
         chosen AS (SELECT coalesce(pg_catalog.lower(given),
                                    (SELECT i.metric FROM i ORDER BY i.is_default DESC, i.idx LIMIT 1),
                                    pgvision._default_metric()) AS name)
    SELECT chosen.name,
           (SELECT pg_catalog.max(pgvision._hnsw_ef_search(i.m, _reltuples)) FROM i WHERE i.method = 'hnsw'),
           (SELECT pg_catalog.max(coalesce(i.lists, 100)) FROM i  -- pgvector's default lists
            WHERE i.method = 'ivfflat' AND i.metric = chosen.name),
           EXISTS (SELECT FROM i) AND _kind IN ('r', 'm')
    INTO metric, _hnsw_ef, _lists, indexed
    FROM chosen;
    ef_search := GREATEST(coalesce(pg_catalog.current_setting('hnsw.ef_search', true), '40')::int, coalesce(_hnsw_ef, 1000));
    probes := LEAST(_lists, GREATEST(coalesce(pg_catalog.current_setting('ivfflat.probes', true), '1')::int,
                                     pg_catalog.ceil(2 * pg_catalog.sqrt(_lists))::int));
    exact := false;
    IF _kind IN ('r', 'm') AND pg_catalog.current_setting('enable_seqscan')::boolean
       AND (_reltuples < 0 OR _reltuples < 2 * exact_rows) THEN
        -- reltuples is an estimate (-1 before the first VACUUM, ANALYZE or CREATE INDEX):
        -- count, but never past exact_rows
        EXECUTE pg_catalog.format('SELECT pg_catalog.count(*) FROM (SELECT FROM %s LIMIT %s) s', tbl, exact_rows)
            INTO _n;
        exact := _n < exact_rows;
    END IF;
END
$$;
COMMENT ON FUNCTION pgvision._search_scan(regclass, name, text) IS
'internal: how pgvision._search reads a table: the metric (the given one, else that of the column''s index, the default metric''s first when there are several, else the default); exact (a table of this server below 1,500 rows, unless enable_seqscan is off); the hnsw.ef_search of its index scans (pgvision._hnsw_ef_search of the column''s HNSW indexes, the largest; 1000 without one) and the ivfflat.probes (2·sqrt(lists) of its IVFFlat index for the metric, at most lists; NULL without one), the session''s values raised, never lowered; indexed: a table of this server with an HNSW or IVFFlat index on the column itself';

-- Iterative index scans (pgvector 0.8) keep reading the index until k rows pass the filter;
-- relaxed_order may return rows slightly out of order, so results are sorted again. An
-- HNSW scan is iterative only where it must read past its first ef_search rows (a filter,
-- groups, k or expand at least ef_search): an iterative scan keeps what it discards for
-- the next round, which cost 0.8 ms a search at ef_search 200 on the 100,000-row mixed
-- collection (p50 9.9 ms against 9.1). The scan settings of pgvision._search_scan and this
-- one are set for the function's queries and put back before it returns (a SET clause
-- could not keep the caller's values).
CREATE OR REPLACE FUNCTION pgvision._search(
    tbl regclass, queries text[], k int, feature_column name, metric text, filter text, group_by name,
    max_distance double precision, min_similarity double precision, expand int, exclude_key text)
RETURNS TABLE (query_no int, rank int, id text, distance double precision,
               similarity double precision, item jsonb)
LANGUAGE plpgsql STABLE PARALLEL UNSAFE ROWS 10
SET search_path = pg_catalog, pg_temp
SET ivfflat.iterative_scan = relaxed_order
AS $$
DECLARE
    _scan record := pgvision._search_scan(tbl, feature_column, metric);
    _m record := pgvision._search_metric(tbl, k, feature_column, _scan.metric, group_by, max_distance,
                                         min_similarity, expand);
    _c record := pgvision._search_candidates(tbl, feature_column, _m.operator, filter, group_by, expand,
                                             exclude_key);
    _sim text := coalesce(pg_catalog.format(_m.similarity, 'c.distance'), 'NULL::double precision');
    _ok text := pg_catalog.format('($3::double precision IS NULL OR c.distance OPERATOR(pg_catalog.<=) $3)'
                                  ' AND ($4::double precision IS NULL OR %s OPERATOR(pg_catalog.>=) $4)', _sim);
    _rank constant text := 'SELECT $5, (pg_catalog.row_number() OVER (ORDER BY c.distance))::int, c.id, c.distance, ';
    _q text;
    _n int;
    _ef text := pg_catalog.current_setting('hnsw.ef_search', true);
    _probes int := CASE WHEN NOT _scan.exact THEN _scan.probes END;
    _iterative text := CASE WHEN filter IS NOT NULL OR group_by IS NOT NULL OR GREATEST(k, expand) >= _scan.ef_search
                            THEN 'relaxed_order' ELSE 'off' END;
    _session_iterative text := pg_catalog.current_setting('hnsw.iterative_scan', true);
    _session_probes text := pg_catalog.current_setting('ivfflat.probes', true);
    _indexscan text := pg_catalog.current_setting('enable_indexscan');
    _seqscan text := pg_catalog.current_setting('enable_seqscan');
    -- Without a filter, the HNSW or IVFFlat index of a table at or above the exact scan's
    -- size: at ef_search 1000 (or many probes) the planner would rather sort a table of a few
    -- thousand rows, which is exact but slower (BENCHMARKS.md, figure 3).
    _index boolean := NOT _scan.exact AND filter IS NULL AND _scan.indexed;
BEGIN
    IF _ef IS DISTINCT FROM _scan.ef_search::text THEN
        PERFORM pg_catalog.set_config('hnsw.ef_search', _scan.ef_search::text, true);
    END IF;
    IF _iterative IS DISTINCT FROM _session_iterative THEN
        PERFORM pg_catalog.set_config('hnsw.iterative_scan', _iterative, true);
    END IF;
    IF _probes IS NOT NULL AND _probes IS DISTINCT FROM _session_probes::int THEN
        PERFORM pg_catalog.set_config('ivfflat.probes', _probes::text, true);
    END IF;
    IF _scan.exact THEN
        PERFORM pg_catalog.set_config('enable_indexscan', 'off', true);
    END IF;
    IF _index THEN
        PERFORM pg_catalog.set_config('enable_seqscan', 'off', true);
    END IF;
    FOR i IN 1 .. coalesce(pg_catalog.cardinality(queries), 0) LOOP
        _q := queries[i];
        CONTINUE WHEN _q IS NULL;
        IF expand > 0 THEN
            _q := pgvision._search_expand(_q, _c.nearest, _m.metric, expand, exclude_key);
        END IF;
        IF group_by IS NULL THEN
            RETURN QUERY EXECUTE 'WITH c AS MATERIALIZED (' || _c.candidates || ') ' || _rank
                                 || _sim || ', c.item FROM c WHERE ' || _ok || ' ORDER BY c.distance'
                USING _q, exclude_key, max_distance, min_similarity, i, k;
        ELSE
            _n := pgvision._search_group_size(_c.candidates, _ok, k, _q, exclude_key, max_distance, min_similarity);
            RETURN QUERY EXECUTE 'WITH c AS MATERIALIZED (' || _c.candidates || '), '
                                 || 'g AS (SELECT DISTINCT ON (c.grp) c.* FROM c WHERE ' || _ok || ' ORDER BY c.grp, c.distance) '
                                 || _rank || _sim || ', c.item FROM g AS c ORDER BY c.distance LIMIT ' || k
                USING _q, exclude_key, max_distance, min_similarity, i, _n;
        END IF;
    END LOOP;
    -- an error on the way rolls the settings back with the (sub)transaction
    IF _ef IS DISTINCT FROM _scan.ef_search::text THEN
        PERFORM pg_catalog.set_config('hnsw.ef_search', coalesce(_ef, '40'), true);
    END IF;
    IF _iterative IS DISTINCT FROM _session_iterative THEN
        PERFORM pg_catalog.set_config('hnsw.iterative_scan', coalesce(_session_iterative, 'off'), true);
    END IF;
    IF _probes IS NOT NULL AND _probes IS DISTINCT FROM _session_probes::int THEN
        PERFORM pg_catalog.set_config('ivfflat.probes', coalesce(_session_probes, '1'), true);
    END IF;
    IF _scan.exact THEN
        PERFORM pg_catalog.set_config('enable_indexscan', _indexscan, true);
    END IF;
    IF _index THEN
        PERFORM pg_catalog.set_config('enable_seqscan', _seqscan, true);
    END IF;
END
$$;
COMMENT ON FUNCTION pgvision._search(regclass, text[], int, name, text, text, name, double precision, double precision, int, text) IS
'internal: the query behind pgvision.search, search_batch and search_like';
