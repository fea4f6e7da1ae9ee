-- What every other file uses: the role, names for dynamic SQL, column checks, the metrics,
-- and the one hook through which scale-out (04x-shard-*.sql) plugs into search.

-- pgvision_admin registers and drops models, pipelines and shards. A model is code the
-- server runs, so registering one is not for every role. Roles belong to the cluster, not
-- to a database: the role outlives DROP EXTENSION and is shared by every database that has
-- pgvision. Created here, before any file grants to it.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'pgvision_admin') THEN
        CREATE ROLE pgvision_admin NOLOGIN;
        COMMENT ON ROLE pgvision_admin IS 'may register and drop pgvision models and pipelines';
    END IF;
END
$$;

-- The catalog lookups every search makes are plpgsql, not sql: a SQL function with a SET
-- clause is never inlined and is planned again at each call (about 2 ms for
-- the reader of a column's indexes), where plpgsql keeps its plans for the session.

-- pgvector is relocatable, so its schema is looked up when it is needed, not at install time.
CREATE OR REPLACE FUNCTION pgvision._vector_schema()
RETURNS text
LANGUAGE plpgsql STABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RETURN (
        SELECT n.nspname::text
        FROM pg_catalog.pg_extension e JOIN pg_catalog.pg_namespace n ON n.oid = e.extnamespace
        WHERE e.extname = 'vector'
    );
END
$$;
COMMENT ON FUNCTION pgvision._vector_schema() IS
'internal: the schema pgvector''s types, operators and operator classes live in';

-- Names for the dynamic SQL that runs under the caller's search_path (this one and
-- pgvision._column's type_name), built from the catalogs: format_type and regclass output
-- leave out the schema of whatever the current search_path finds (pg_catalog's text, a
-- temporary table), which a caller's search_path with public first would then find
-- elsewhere (a public.text domain, a public table).
CREATE OR REPLACE FUNCTION pgvision._rel_name(rel regclass)
RETURNS text
LANGUAGE plpgsql STABLE PARALLEL SAFE STRICT
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RETURN (
        SELECT c.relnamespace::pg_catalog.regnamespace::text || '.' || pg_catalog.quote_ident(c.relname)
        FROM pg_catalog.pg_class c WHERE c.oid = rel
    );
END
$$;
COMMENT ON FUNCTION pgvision._rel_name(regclass) IS
'internal: a relation''s name with its schema (pg_temp_N for a temporary table), both quoted, whatever the search_path';

CREATE OR REPLACE FUNCTION pgvision._check_owner(rel regclass)
RETURNS void
LANGUAGE plpgsql STABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_class c WHERE c.oid = rel AND pg_catalog.pg_has_role(c.relowner, 'USAGE')) THEN
        RAISE EXCEPTION 'must be owner of table %', rel USING ERRCODE = 'insufficient_privilege';
    END IF;
END
$$;
COMMENT ON FUNCTION pgvision._check_owner(regclass) IS
'internal: raises insufficient_privilege unless the current role owns the table (or is a member of its owner)';

-- ---------------------------------------------------------------------------------------
-- Columns

-- The one "does this column exist" query: a live user column of a relation, or no row.
-- type_name is the type's name with its schema, both quoted, without type modifiers
-- (pg_catalog.text, public.vector), whatever the search_path.
CREATE OR REPLACE FUNCTION pgvision._column(rel regclass, column_name name)
RETURNS TABLE (num int2, type oid, typmod int, notnull boolean, generated "char", type_name text)
LANGUAGE plpgsql STABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
BEGIN
    RETURN QUERY
        SELECT a.attnum, a.atttypid, a.atttypmod, a.attnotnull, a.attgenerated,
               t.typnamespace::pg_catalog.regnamespace::text || '.' || pg_catalog.quote_ident(t.typname)
        FROM pg_catalog.pg_attribute a JOIN pg_catalog.pg_type t ON t.oid = a.atttypid
        WHERE a.attrelid = rel AND a.attname = column_name AND a.attnum > 0 AND NOT a.attisdropped;
END
$$;
COMMENT ON FUNCTION pgvision._column(regclass, name) IS
'internal: number, type, type modifier, NOT NULL, generated kind and schema-qualified type name of a live column of a relation; no row when there is none';

CREATE OR REPLACE FUNCTION pgvision._require_column(rel regclass, column_name name)
RETURNS TABLE (num int2, type oid, typmod int, notnull boolean, generated "char", type_name text)
LANGUAGE plpgsql STABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RETURN QUERY SELECT * FROM pgvision._column(rel, column_name);
    IF NOT FOUND THEN
        RAISE EXCEPTION 'column "%" of relation % does not exist', column_name, rel
            USING ERRCODE = 'undefined_column';
    END IF;
END
$$;
COMMENT ON FUNCTION pgvision._require_column(regclass, name) IS
'internal: pgvision._column, or undefined_column when the column does not exist';

-- Feature columns are pgvector's vector type: the search operators, the index operator
-- classes and embed_table's cast all take vector (a halfvec index is an expression index
-- over one, see create_index).
CREATE OR REPLACE FUNCTION pgvision._vector_column(tbl regclass, column_name name)
RETURNS int
LANGUAGE plpgsql STABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    _c record;
BEGIN
    SELECT * INTO _c FROM pgvision._require_column(tbl, column_name);
    IF _c.type IS DISTINCT FROM pg_catalog.to_regtype(pg_catalog.format('%I.vector', pgvision._vector_schema())) THEN
        RAISE EXCEPTION 'column "%" of relation % is of type %, not vector',
                        column_name, tbl, pg_catalog.format_type(_c.type, _c.typmod)
            USING ERRCODE = 'datatype_mismatch',
                  HINT = 'pgvision indexes and searches vector columns, such as ones filled by pgvision.embed';
    END IF;
    RETURN _c.typmod;
END
$$;
COMMENT ON FUNCTION pgvision._vector_column(regclass, name) IS
'internal: checks that a column exists and is of type vector; returns its dimensions, or -1 when it has none';

-- A vector column an index can be built on: one with dimensions (vector(n), not vector).
CREATE OR REPLACE FUNCTION pgvision._vector_dims(tbl regclass, column_name name, suggested int DEFAULT 1280)
RETURNS int
LANGUAGE plpgsql STABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    _dim int := pgvision._vector_column(tbl, column_name);
BEGIN
    IF _dim < 1 THEN
        RAISE EXCEPTION 'column "%" of relation % has no dimensions', column_name, tbl
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = pg_catalog.format('vector indexes need them: ALTER TABLE %s ALTER COLUMN %I TYPE vector(%s)',
                                           tbl, column_name, suggested);
    END IF;
    RETURN _dim;
END
$$;
COMMENT ON FUNCTION pgvision._vector_dims(regclass, name, int) IS
'internal: the dimensions of a vector column, or invalid_parameter_value (with an ALTER TABLE hint) when it has none';

-- What search shows of a row: no vectors and no bytea (image) columns, which BI tools cannot
-- show and which would be detoasted (or, from a shard, fetched) for nothing.
CREATE OR REPLACE FUNCTION pgvision._plain_columns(rel regclass)
RETURNS name[]
LANGUAGE plpgsql STABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RETURN (
        SELECT coalesce(pg_catalog.array_agg(a.attname ORDER BY a.attnum), '{}')
        FROM pg_catalog.pg_attribute a
        WHERE a.attrelid = rel AND a.attnum > 0 AND NOT a.attisdropped
          AND a.atttypid <> 'pg_catalog.bytea'::pg_catalog.regtype
          AND a.atttypid NOT IN (SELECT ty.oid FROM pg_catalog.pg_type ty
                                 JOIN pg_catalog.pg_namespace n ON n.oid = ty.typnamespace
                                 WHERE n.nspname = pgvision._vector_schema()
                                   AND ty.typname IN ('vector', 'halfvec', 'sparsevec'))
    );
END
$$;
COMMENT ON FUNCTION pgvision._plain_columns(regclass) IS
'internal: the columns of a relation search returns in item, in order: all but pgvector and bytea columns';

-- ---------------------------------------------------------------------------------------
-- Metrics: the one table of what each metric means. The default is cosine, the metric
-- measured best for the default model (BENCHMARKS.md); create_index, create_sharded_table
-- and searches on a column without an index all take it from here.

CREATE OR REPLACE FUNCTION pgvision._metrics()
RETURNS TABLE (metric text, operator text, opclass text, similarity text, is_default boolean)
LANGUAGE sql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
    -- similarity: a format() template over the distance expression, larger is nearer
    VALUES ('l2', '<->', 'l2_ops', '1 OPERATOR(pg_catalog./) (1 OPERATOR(pg_catalog.+) %s)', false),
           ('cosine', '<=>', 'cosine_ops', '1 OPERATOR(pg_catalog.-) %s', true),
           ('ip', '<#>', 'ip_ops', 'OPERATOR(pg_catalog.-) %s', false)
$$;
COMMENT ON FUNCTION pgvision._metrics() IS
'internal: each metric''s pgvector operator (<->, <=>, <#>), operator class suffix (vector_/halfvec_ + opclass), similarity as a format() template over the distance (cosine: 1 - distance, ip: - distance, l2: 1 / (1 + distance)), and which is the default';

CREATE OR REPLACE FUNCTION pgvision._default_metric()
RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT m.metric FROM pgvision._metrics() m WHERE m.is_default
$$;
COMMENT ON FUNCTION pgvision._default_metric() IS
'internal: the metric pgvision uses when none is given and no index says otherwise (cosine)';

CREATE OR REPLACE FUNCTION pgvision._metric(name text, hint text DEFAULT 'expected l2, cosine or ip')
RETURNS TABLE (metric text, operator text, opclass text, similarity text, is_default boolean)
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RETURN QUERY SELECT * FROM pgvision._metrics() m WHERE m.metric = pg_catalog.lower(_metric.name);
    IF NOT FOUND THEN
        RAISE EXCEPTION 'unknown metric "%"', _metric.name
            USING ERRCODE = 'invalid_parameter_value', HINT = hint;
    END IF;
END
$$;
COMMENT ON FUNCTION pgvision._metric(text, text) IS
'internal: the row of pgvision._metrics() for a metric name (any case), or invalid_parameter_value';

-- The one reader of a vector column's pgvector indexes (every search reads it, for its
-- metric, hnsw.ef_search and ivfflat.probes; switch_model, to build the same on the new
-- column; check_index): valid, not partial, on the column itself (on_column: what a query
-- ordering by the column can use) or on an expression over it (the halfvec cast), oldest
-- first. m, ef_construction and lists are NULL where pgvector's default applies.
CREATE OR REPLACE FUNCTION pgvision._column_indexes(tbl regclass, column_name name)
RETURNS TABLE (idx oid, index_name name, method text, metric text, is_default boolean, on_column boolean,
               halfvec boolean, m int, ef_construction int, lists int)
LANGUAGE plpgsql STABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    _vs text := pgvision._vector_schema();  -- once, not a call for each row
BEGIN
    RETURN QUERY
        SELECT i.indexrelid, ic.relname, am.amname::text, mt.metric, mt.is_default, i.indkey[0] <> 0,
               o.opcname LIKE 'halfvec\_%',
               (SELECT pg_catalog.split_part(r, '=', 2)::int FROM pg_catalog.unnest(ic.reloptions) r WHERE r LIKE 'm=%'),
               (SELECT pg_catalog.split_part(r, '=', 2)::int FROM pg_catalog.unnest(ic.reloptions) r WHERE r LIKE 'ef\_construction=%'),
               (SELECT pg_catalog.split_part(r, '=', 2)::int FROM pg_catalog.unnest(ic.reloptions) r WHERE r LIKE 'lists=%')
        FROM pg_catalog.pg_attribute a
        JOIN pg_catalog.pg_index i ON i.indrelid = a.attrelid
        JOIN pg_catalog.pg_class ic ON ic.oid = i.indexrelid
        JOIN pg_catalog.pg_am am ON am.oid = ic.relam
        JOIN pg_catalog.pg_opclass o ON o.oid = i.indclass[0]
        JOIN pg_catalog.pg_namespace n ON n.oid = o.opcnamespace
        JOIN pgvision._metrics() mt ON o.opcname IN ('vector_' || mt.opclass, 'halfvec_' || mt.opclass)
        WHERE a.attrelid = tbl AND a.attname = column_name AND a.attnum > 0 AND NOT a.attisdropped
          AND i.indnatts = 1 AND i.indisvalid AND i.indpred IS NULL
          AND am.amname IN ('hnsw', 'ivfflat') AND n.nspname = _vs
          AND (i.indkey[0] = a.attnum
               OR (i.indkey[0] = 0 AND EXISTS (
                      SELECT FROM pg_catalog.pg_depend d
                      WHERE d.classid = 'pg_catalog.pg_class'::pg_catalog.regclass AND d.objid = i.indexrelid
                        AND d.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass
                        AND d.refobjid = tbl AND d.refobjsubid = a.attnum)))
        ORDER BY i.indexrelid;
END
$$;
COMMENT ON FUNCTION pgvision._column_indexes(regclass, name) IS
'internal: the valid, non-partial pgvector indexes (hnsw, ivfflat) of a vector column or of an expression over it (the halfvec cast), oldest first: oid, name, method, metric, whether that metric is the default, whether it is on the column itself, halfvec, and m, ef_construction, lists (NULL: pgvector''s default)';

-- ---------------------------------------------------------------------------------------
-- The scale-out hook. Core (search) asks it about every table and never names the
-- scale-out functions: for a table of this server it answers NULLs, which is all this body
-- does; 044-shard-search.sql replaces it with the one that answers for sharded tables.
-- For such a table: key_column and key_type, the column that identifies a row (a sharded
-- table has no primary key here), and, when distance is given, candidates, the top-n query
-- of the table as the shards answer it, with columns named as the table's plus
-- pgvision_distance.
CREATE OR REPLACE FUNCTION pgvision._scale_out(tbl regclass, extra_columns name[], distance text, where_clause text, n text, OUT key_column name, OUT key_type text, OUT candidates text)
LANGUAGE sql VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT NULL::name, NULL::text, NULL::text  -- a table of this server
$$;
COMMENT ON FUNCTION pgvision._scale_out(regclass, name[], text, text, text) IS
'internal: the hook search calls for every table: NULLs for a table of this server; for a sharded table (044-shard-search.sql), its row key and, with a distance, its top-n query over the shards';
