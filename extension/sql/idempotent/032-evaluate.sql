-- Measuring in SQL: pgvision.evaluate, the quality of a feature column's rankings by label
-- (precision@k, mAP@k) and its index's recall@k against an exact scan, so that two columns
-- or two models can be compared before a table switches.
--
-- The approximate top-k is the candidate query the search functions send
-- (pgvision._search_candidates, 030-search-engine.sql) at the search functions'
-- hnsw.ef_search and ivfflat.probes (pgvision._search_scan), iterative (whose first rows are
-- those of a scan that is not), so it goes through the column's index as a search does. The exact top-k orders
-- by the same distance plus 0, an expression no index can serve, so it is a scan of every
-- row. Labels are compared with the label type's default equality (array equality, GROUP BY
-- and window partitions all use it), never with an operator looked up by name.

CREATE OR REPLACE FUNCTION pgvision.evaluate(
    tbl regclass, label_column name, k int DEFAULT 10, queries int DEFAULT 200,
    feature_column name DEFAULT NULL)
RETURNS TABLE (label text, query_count int, precision_at_k double precision,
               map_at_k double precision, recall_at_k double precision)
LANGUAGE plpgsql STABLE PARALLEL UNSAFE COST 1000000 ROWS 11
SET search_path = pg_catalog, pg_temp
SET hnsw.iterative_scan = relaxed_order
SET ivfflat.iterative_scan = relaxed_order
AS $$
DECLARE
    _feature name := coalesce(evaluate.feature_column, 'feature');
    _vs text := pgvision._vector_schema();
    _m record;
    _label record;
    _key record;
    _approx text;
    _exact text;
    _q record;
    _dist double precision[];
    _rel boolean[];
    _exact_dist double precision[];
    _hits int;
    _sum double precision;
    _relevant bigint;
    _within int;
    _cls bigint[] := '{}';
    _lbl text[] := '{}';
    _p double precision[] := '{}';
    _ap double precision[] := '{}';
    _rec double precision[] := '{}';
    _ef text := pg_catalog.current_setting('hnsw.ef_search', true);
    _session_probes text := pg_catalog.current_setting('ivfflat.probes', true);
    _scan record;
BEGIN
    IF tbl IS NULL OR label_column IS NULL OR k IS NULL OR queries IS NULL THEN
        RAISE EXCEPTION 'tbl, label_column, k and queries must not be null'
            USING ERRCODE = 'null_value_not_allowed',
                  HINT = 'leave feature_column out (or NULL) for the column "feature"';
    END IF;
    IF queries < 1 THEN
        RAISE EXCEPTION 'queries must be at least 1, not %', queries USING ERRCODE = 'invalid_parameter_value';
    END IF;
    -- the search functions' checks: k at least 1, a vector column; and their metric (the
    -- column index's, else pgvision._default_metric())
    _scan := pgvision._search_scan(tbl, _feature, NULL);
    _m := pgvision._search_metric(tbl, k, _feature, _scan.metric, NULL, NULL, NULL, 0);
    SELECT * INTO _label FROM pgvision._require_column(tbl, label_column);
    IF (pgvision._scale_out(tbl, NULL, NULL, NULL, NULL)).key_column IS NOT NULL THEN
        RAISE EXCEPTION 'cannot evaluate sharded table %', tbl
            USING ERRCODE = 'feature_not_supported',
                  HINT = 'evaluate a shard''s table on that shard: the exact scan must run where the rows are';
    END IF;
    _key := pgvision._row_key(tbl);
    IF _key.columns IS NULL THEN
        RAISE EXCEPTION 'relation % has no primary key', tbl
            USING ERRCODE = 'invalid_table_definition',
                  HINT = 'evaluate leaves each query row out of its own results by its primary key; add one with ALTER TABLE ... ADD PRIMARY KEY';
    ELSIF pg_catalog.cardinality(_key.columns) > 1 THEN
        RAISE EXCEPTION 'relation % has a primary key of % columns', tbl, pg_catalog.cardinality(_key.columns)
            USING ERRCODE = 'feature_not_supported', HINT = 'evaluate needs a single-column primary key';
    END IF;

    -- the search functions' index settings, the session's back before returning (an error
    -- rolls them back with the (sub)transaction)
    PERFORM pg_catalog.set_config('hnsw.ef_search', _scan.ef_search::text, true);
    IF _scan.probes IS NOT NULL THEN
        PERFORM pg_catalog.set_config('ivfflat.probes', _scan.probes::text, true);
    END IF;

    -- Rows searched: a feature and a label. Parameters as in 030-search-engine.sql:
    -- $1 query vector (text), $2 key of the query row, $6 k; $7 the query's label (text).
    _approx := (pgvision._search_candidates(tbl, _feature, _m.operator,
                                            pg_catalog.format('t.%I IS NOT NULL', label_column),
                                            label_column, 0, '')).candidates;
    _approx := 'WITH c AS MATERIALIZED (' || _approx || ') '
               || 'SELECT pg_catalog.array_agg(c.distance ORDER BY c.distance), '
               || 'pg_catalog.array_agg(ARRAY[c.grp] OPERATOR(pg_catalog.=) ARRAY[CAST($7 AS ' || _label.type_name
               || ')] ORDER BY c.distance) FROM c';
    _exact := pg_catalog.format(
        'SELECT pg_catalog.array_agg(e.distance ORDER BY e.distance) FROM ('
        'SELECT (t.%1$I OPERATOR(%2$I.%3$s) $1::%2$I.vector) OPERATOR(pg_catalog.+) 0::pg_catalog.float8 AS distance'
        ' FROM %4$s AS t WHERE t.%1$I IS NOT NULL AND t.%5$I IS NOT NULL'
        ' AND t.%6$I OPERATOR(pg_catalog.<>) CAST($2 AS %7$s) ORDER BY 1 LIMIT $6) e',
        _feature, _vs, _m.operator, tbl, label_column, _key.columns[1], _key.key_type);

    -- The queries: up to `queries` rows with a feature and a label, in the order of the md5
    -- of their key's text (then the key): no seed, the same rows on every run and for every
    -- column that has them. relevant: the rows of the same label, the query's own included.
    FOR _q IN EXECUTE pg_catalog.format(
        'SELECT s.id, s.f, s.lbl, s.cls, s.relevant FROM ('
        'SELECT t.%1$I::pg_catalog.text AS id, t.%1$I AS key, t.%2$I::pg_catalog.text AS f,'
        ' t.%3$I::pg_catalog.text AS lbl, pg_catalog.dense_rank() OVER (ORDER BY t.%3$I) AS cls,'
        ' pg_catalog.count(*) OVER (PARTITION BY t.%3$I) AS relevant'
        ' FROM %4$s AS t WHERE t.%2$I IS NOT NULL AND t.%3$I IS NOT NULL) s'
        ' ORDER BY pg_catalog.md5(s.id), s.key LIMIT $1',
        _key.columns[1], _feature, label_column, tbl) USING queries
    LOOP
        EXECUTE _approx INTO _dist, _rel
            USING _q.f, _q.id, NULL::double precision, NULL::double precision, 0, k, _q.lbl;
        EXECUTE _exact INTO _exact_dist
            USING _q.f, _q.id, NULL::double precision, NULL::double precision, 0, k;
        _hits := 0;
        _sum := 0;
        FOR i IN 1 .. coalesce(pg_catalog.cardinality(_rel), 0) LOOP
            IF _rel[i] THEN
                _hits := _hits + 1;
                _sum := _sum + _hits::double precision / i;
            END IF;
        END LOOP;
        _relevant := LEAST(k, _q.relevant - 1);
        -- recall: the approximate rows no farther than the exact k-th one (ties at the k-th
        -- distance do not count against the index), over the exact rows
        _within := (SELECT pg_catalog.count(*) FROM pg_catalog.unnest(_dist) d (v)
                    WHERE d.v <= _exact_dist[pg_catalog.cardinality(_exact_dist)]);
        _cls := _cls || _q.cls;
        _lbl := _lbl || _q.lbl;
        _p := _p || (_hits::double precision / k);
        _ap := _ap || CASE WHEN _relevant > 0 THEN _sum / _relevant ELSE 0 END;
        _rec := _rec || CASE WHEN pg_catalog.cardinality(_exact_dist) > 0
                             THEN _within::double precision / pg_catalog.cardinality(_exact_dist) END;
    END LOOP;
    PERFORM pg_catalog.set_config('hnsw.ef_search', coalesce(_ef, '40'), true);
    IF _scan.probes IS NOT NULL THEN
        PERFORM pg_catalog.set_config('ivfflat.probes', coalesce(_session_probes, '1'), true);
    END IF;
    IF pg_catalog.cardinality(_cls) = 0 THEN
        RAISE EXCEPTION 'relation % has no row with both a feature in "%" and a label in "%"', tbl, _feature, label_column
            USING ERRCODE = 'no_data_found',
                  HINT = 'evaluate needs labelled rows with features; compute them with pgvision.embed';
    END IF;

    RETURN QUERY
    SELECT u.l, pg_catalog.count(*)::int, pg_catalog.avg(u.p), pg_catalog.avg(u.ap), pg_catalog.avg(u.r)
    FROM ROWS FROM (pg_catalog.unnest(_cls), pg_catalog.unnest(_lbl), pg_catalog.unnest(_p),
                   pg_catalog.unnest(_ap), pg_catalog.unnest(_rec)) AS u (c, l, p, ap, r)
    GROUP BY GROUPING SETS ((u.c, u.l), ())
    ORDER BY u.c NULLS LAST;
END
$$;
COMMENT ON FUNCTION pgvision.evaluate(regclass, name, int, int, name) IS
'measures a vector column against a label column: one row per label (as text, in the label''s order) of its query rows, then label NULL over all of them, with query_count, precision_at_k, map_at_k and recall_at_k, each the mean over those queries. Queries: up to `queries` rows with a feature and a label, the first by md5 of the primary key as text (no seed: the same rows on every run and for every column that has them); each searches the other rows with a feature and a label, leaving itself out. Metric: the column index''s, else cosine, as the search functions. precision@k: rows of the query''s label among the k the search returns (the search functions'' query and index settings, so through the index), divided by k. AP@k: the sum over those relevant rows of the precision at their rank, divided by min(k, R), R the rows of the query''s label other than itself (0 when R is 0); map_at_k is its mean. recall@k: the returned rows no farther than the k-th row of an exact scan (ORDER BY distance + 0, no index), divided by the exact rows (min(k, rows searched)). Costs one index search and one full scan per query. Runs as the caller; needs a single-column primary key; feature_column defaults to feature; not for sharded tables';
