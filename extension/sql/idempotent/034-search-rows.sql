-- Search results as the table's own rows, for BI tools that join or show columns: the row
-- comes back with its columns' types (the key a bigint where it is one, the image bytea
-- for pgvision.data_url), so nothing needs a cast or a join. The table is named by a NULL
-- of its row type, the one way a function can return a type chosen by its caller:
--   SELECT s.rank, s.distance, (s.found).id, (s.found).class
--   FROM pgvision.search_rows(NULL::images, $1) s;

CREATE OR REPLACE FUNCTION pgvision.search_rows(
    tbl anyelement, query bytea, k int DEFAULT 10, feature_column name DEFAULT 'feature',
    metric text DEFAULT NULL, filter text DEFAULT NULL, model text DEFAULT '',
    group_by name DEFAULT NULL, max_distance double precision DEFAULT NULL,
    min_similarity double precision DEFAULT NULL, expand int DEFAULT 0)
RETURNS TABLE (rank int, distance double precision, similarity double precision, found anyelement)
LANGUAGE plpgsql STABLE PARALLEL UNSAFE COST 100000 ROWS 10
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    _rel regclass := (SELECT ty.typrelid FROM pg_catalog.pg_type ty
                      WHERE ty.oid = pg_catalog.pg_typeof(tbl) AND ty.typrelid <> 0);
    _key record;
    _hits record;
BEGIN
    IF _rel IS NULL OR (SELECT c.relkind FROM pg_catalog.pg_class c WHERE c.oid = _rel) NOT IN ('r', 'p', 'f', 'm') THEN
        RAISE EXCEPTION 'search_rows takes a table''s row type, not %', pg_catalog.pg_typeof(tbl)
            USING ERRCODE = 'datatype_mismatch', HINT = 'name the table by a NULL of its row type: search_rows(NULL::images, ...)';
    END IF;
    _key := pgvision._row_key(_rel);
    IF pg_catalog.cardinality(_key.columns) IS DISTINCT FROM 1 THEN
        RAISE EXCEPTION 'relation % has no single-column primary key', _rel
            USING ERRCODE = 'feature_not_supported',
                  HINT = 'search_rows finds the rows by it; pgvision.search works without one';
    END IF;
    SELECT pg_catalog.array_agg(s.rank ORDER BY s.rank) AS ranks, pg_catalog.array_agg(s.id ORDER BY s.rank) AS ids,
           pg_catalog.array_agg(s.distance ORDER BY s.rank) AS distances,
           pg_catalog.array_agg(s.similarity ORDER BY s.rank) AS similarities
    INTO _hits
    FROM pgvision.search(_rel, query, k, feature_column, metric, filter, model, group_by,
                         max_distance, min_similarity, expand) s;
    RETURN QUERY EXECUTE pg_catalog.format(
        'SELECT s.rank, s.distance, s.similarity, t FROM ROWS FROM (pg_catalog.unnest($1::pg_catalog.int4[]),'
        ' pg_catalog.unnest($2::pg_catalog.text[]), pg_catalog.unnest($3::pg_catalog.float8[]),'
        ' pg_catalog.unnest($4::pg_catalog.float8[])) s (rank, id, distance, similarity)'
        ' JOIN %s AS t ON t.%I OPERATOR(pg_catalog.=) CAST(s.id AS %s) ORDER BY s.rank',
        _rel, _key.columns[1], _key.key_type)
        USING _hits.ranks, _hits.ids, _hits.distances, _hits.similarities;
END
$$;
COMMENT ON FUNCTION pgvision.search_rows(anyelement, bytea, int, name, text, text, text, name, double precision, double precision, int) IS
'pgvision.search returning the table''s own rows, typed: search_rows(NULL::images, $1) gives rank, distance, similarity and found, the row of type images, so (found).id is the key in its own type and (found).image can go to pgvision.data_url; the table needs a single-column primary key; the same options as pgvision.search';
