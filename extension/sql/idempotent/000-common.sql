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

-- Names for the dynamic SQL that runs under the caller's search_path (this one and
-- pgvision._column's type_name), built from the catalogs: format_type and regclass output
-- leave out the schema of whatever the current search_path finds (pg_catalog's text, a
-- temporary table), which a caller's search_path with public first would then find
-- elsewhere (a public.text domain, a public table).
CREATE OR REPLACE FUNCTION pgvision._rel_name(rel regclass)
RETURNS text
LANGUAGE sql STABLE PARALLEL SAFE STRICT
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT c.relnamespace::pg_catalog.regnamespace::text || '.' || pg_catalog.quote_ident(c.relname)
    FROM pg_catalog.pg_class c WHERE c.oid = rel
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
LANGUAGE sql STABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT a.attnum, a.atttypid, a.atttypmod, a.attnotnull, a.attgenerated,
           t.typnamespace::pg_catalog.regnamespace::text || '.' || pg_catalog.quote_ident(t.typname)
    FROM pg_catalog.pg_attribute a JOIN pg_catalog.pg_type t ON t.oid = a.atttypid
    WHERE a.attrelid = rel AND a.attname = column_name AND a.attnum > 0 AND NOT a.attisdropped
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
LANGUAGE sql STABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT coalesce(pg_catalog.array_agg(a.attname ORDER BY a.attnum), '{}')
    FROM pg_catalog.pg_attribute a
    WHERE a.attrelid = rel AND a.attnum > 0 AND NOT a.attisdropped
      AND a.atttypid <> 'pg_catalog.bytea'::pg_catalog.regtype
      AND a.atttypid NOT IN (SELECT ty.oid FROM pg_catalog.pg_type ty
                             JOIN pg_catalog.pg_namespace n ON n.oid = ty.typnamespace
                             WHERE n.nspname = pgvision._vector_schema()
                               AND ty.typname IN ('vector', 'halfvec', 'sparsevec'))
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
    -- similarity: a format() template over the distance expression; NULL for l2
    VALUES ('l2', '<->', 'l2_ops', NULL, false),
           ('cosine', '<=>', 'cosine_ops', '1 OPERATOR(pg_catalog.-) %s', true),
           ('ip', '<#>', 'ip_ops', 'OPERATOR(pg_catalog.-) %s', false)
$$;
COMMENT ON FUNCTION pgvision._metrics() IS
'internal: each metric''s pgvector operator (<->, <=>, <#>), operator class suffix (vector_/halfvec_ + opclass), similarity as a format() template over the distance (cosine: 1 - distance, ip: - distance, l2: none), and which is the default';

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

-- ---------------------------------------------------------------------------------------
-- The model of a feature column (pgvision.feature_models, incremental/005): whatever fills
-- a column records it through set_column_model, the searches embed with _query_model.
-- A column without a record is searched with the default model, as before records existed.

CREATE OR REPLACE FUNCTION pgvision._default_model()
RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT 'efficientnet_lite0'::text
$$;
COMMENT ON FUNCTION pgvision._default_model() IS
'internal: the model a search of a column without a recorded model embeds its query with (efficientnet_lite0)';

COMMENT ON TABLE pgvision.feature_models IS
'the model that fills each feature column, recorded by embed_table, enable_auto_embed, create_sharded_table, embed_shards and set_column_model; searches embed their queries with it; a role sees the rows of the tables it can read';
COMMENT ON COLUMN pgvision.feature_models.tbl IS 'the table (follows ALTER TABLE RENAME)';
COMMENT ON COLUMN pgvision.feature_models.feature_column IS 'the vector column, by name (follows ALTER TABLE RENAME COLUMN)';
COMMENT ON COLUMN pgvision.feature_models.attnum IS 'the column''s number, set from its name whenever the row is written';
COMMENT ON COLUMN pgvision.feature_models.model IS 'the model whose features the column holds (pgvision.models.name)';
COMMENT ON COLUMN pgvision.feature_models.recorded IS 'when the model was recorded';
COMMENT ON POLICY feature_models_read ON pgvision.feature_models IS
'a role sees the model of the feature columns of the tables it can SELECT from, and the rows of tables and columns that are gone';
COMMENT ON POLICY feature_models_write ON pgvision.feature_models IS
'a role records the model of a feature column if it may UPDATE that column and SELECT from the table, as set_column_model and embed_table check; anyone deletes the rows of tables and columns that are gone';

-- Every row, whoever writes it (a function, a raw INSERT, a restore): the column exists and
-- is a vector column; its number is taken from its name.
CREATE OR REPLACE FUNCTION pgvision._feature_models_write()
RETURNS trigger
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM pgvision._vector_column(NEW.tbl, NEW.feature_column);
    NEW.attnum := (SELECT c.num FROM pgvision._column(NEW.tbl, NEW.feature_column) c);
    RETURN NEW;
END
$$;
COMMENT ON FUNCTION pgvision._feature_models_write() IS
'internal: trigger function of pgvision.feature_models; checks the row names a vector column and sets attnum from its name';

CREATE OR REPLACE TRIGGER feature_models_write BEFORE INSERT OR UPDATE ON pgvision.feature_models
    FOR EACH ROW EXECUTE FUNCTION pgvision._feature_models_write();
COMMENT ON TRIGGER feature_models_write ON pgvision.feature_models IS
'checks every row names a vector column and keeps its attnum';

CREATE OR REPLACE FUNCTION pgvision.column_model(tbl regclass, feature_column name DEFAULT 'feature')
RETURNS text
LANGUAGE sql STABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
    -- by name; else by number, for a column renamed while the event trigger did not run
    SELECT f.model FROM pgvision.feature_models f
    LEFT JOIN pg_catalog.pg_attribute a
           ON a.attrelid = f.tbl AND a.attname = f.feature_column AND a.attnum > 0 AND NOT a.attisdropped
    WHERE f.tbl = column_model.tbl
      AND (f.feature_column = column_model.feature_column
           OR (a.attnum IS NULL AND f.attnum = (SELECT c.num FROM pgvision._column(column_model.tbl, column_model.feature_column) c)))
    ORDER BY f.feature_column = column_model.feature_column DESC
    LIMIT 1
$$;
COMMENT ON FUNCTION pgvision.column_model(regclass, name) IS
'the model recorded for a feature column (pgvision.feature_models), or NULL when none is: the model its queries are embedded with';

-- The model a search of tbl.feature_column embeds with: the given one, which must be the
-- recorded one if there is a record; else the recorded one; else the default.
CREATE OR REPLACE FUNCTION pgvision._query_model(tbl regclass, feature_column name, model text)
RETURNS text
LANGUAGE plpgsql STABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    _recorded text := pgvision.column_model(tbl, feature_column);
BEGIN
    IF model IS NULL OR model = '' THEN  -- not given
        RETURN coalesce(_recorded, pgvision._default_model());
    END IF;
    IF _recorded IS DISTINCT FROM model AND _recorded IS NOT NULL THEN
        RAISE EXCEPTION 'feature column "%" of relation % holds features of model "%", not "%"',
                        feature_column, tbl, _recorded, model
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = 'features of different models cannot be compared',
                  HINT = pg_catalog.format('leave the model out: the query is then embedded with "%s"', _recorded);
    END IF;
    RETURN model;
END
$$;
COMMENT ON FUNCTION pgvision._query_model(regclass, name, text) IS
'internal: the model a query on a feature column is embedded with: model if given, not NULL nor '''' (invalid_parameter_value unless it is the column''s recorded model), else the recorded one, else the default';

CREATE OR REPLACE FUNCTION pgvision.set_column_model(tbl regclass, feature_column name, model text)
RETURNS void
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    _kind "char";
    _dim int;
    _cdim int;
    _num int2;
    _recorded text;
    _filled boolean;
BEGIN
    IF tbl IS NULL OR feature_column IS NULL OR model IS NULL THEN
        RAISE EXCEPTION 'table, feature column and model must not be null' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    SELECT c.relkind INTO _kind FROM pg_catalog.pg_class c WHERE c.oid = tbl;
    IF _kind IS NULL OR _kind NOT IN ('r', 'p') THEN
        RAISE EXCEPTION '% is not a table', tbl USING ERRCODE = 'wrong_object_type';
    END IF;
    SELECT m.dim INTO _dim FROM pgvision.models m WHERE m.name = set_column_model.model;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'model "%" does not exist', model USING ERRCODE = 'undefined_object',
            HINT = 'SELECT name FROM pgvision.models lists the registered models';
    END IF;
    _cdim := pgvision._vector_column(tbl, feature_column);
    IF _cdim > 0 AND _cdim <> _dim THEN
        RAISE EXCEPTION 'feature column "%" has % dimensions, but model "%" returns %',
            feature_column, _cdim, model, _dim USING ERRCODE = 'datatype_mismatch';
    END IF;
    IF NOT pg_catalog.has_column_privilege(tbl, feature_column, 'UPDATE')
       OR NOT pg_catalog.has_table_privilege(tbl, 'SELECT') THEN
        RAISE EXCEPTION 'permission denied for table %', tbl USING ERRCODE = 'insufficient_privilege',
            HINT = pg_catalog.format('recording the model of column %I needs SELECT on the table and UPDATE on the column', feature_column);
    END IF;
    _recorded := pgvision.column_model(tbl, feature_column);
    IF _recorded = model THEN
        RETURN;
    END IF;
    IF _recorded IS NOT NULL THEN
        -- mixing two models in one column makes every search of it wrong
        EXECUTE pg_catalog.format('SELECT EXISTS (SELECT FROM %s AS t WHERE t.%I IS NOT NULL)',
                                  pgvision._rel_name(tbl), feature_column) INTO _filled;
        IF _filled THEN
            RAISE EXCEPTION 'feature column "%" of relation % holds features of model "%", not "%"',
                            feature_column, tbl, _recorded, model
                USING ERRCODE = 'invalid_parameter_value',
                      DETAIL = 'features of different models in one column cannot be compared',
                      HINT = pg_catalog.format('embed with model "%s" into a new vector(%s) column (ALTER TABLE %s ADD COLUMN ...), or set every feature of column %I to NULL first',
                                               model, _dim, tbl, feature_column);
        END IF;
    END IF;
    _num := (SELECT c.num FROM pgvision._column(tbl, feature_column) c);
    DELETE FROM pgvision.feature_models f
    WHERE f.tbl = set_column_model.tbl
      AND (f.feature_column = set_column_model.feature_column
           OR (f.attnum = _num AND NOT EXISTS (SELECT FROM pgvision._column(f.tbl, f.feature_column))));
    INSERT INTO pgvision.feature_models (tbl, feature_column, attnum, model)
    VALUES (set_column_model.tbl, set_column_model.feature_column, _num, set_column_model.model);
END
$$;
COMMENT ON FUNCTION pgvision.set_column_model(regclass, name, text) IS
'records the model that fills a feature column (pgvision.feature_models), which searches then embed their queries with; embed_table, enable_auto_embed, create_sharded_table and embed_shards call it; refuses another model while the column holds features of the recorded one; needs SELECT on the table and UPDATE on the column';

-- Follow ALTER TABLE ... RENAME COLUMN: the command names the column by table and number.
-- Runs as the caller, the table's owner, whom the write policy lets update the row.
CREATE OR REPLACE FUNCTION pgvision._rename_feature_models()
RETURNS event_trigger
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF pg_catalog.to_regclass('pgvision.feature_models') IS NULL THEN
        RETURN;
    END IF;
    UPDATE pgvision.feature_models f SET feature_column = a.attname
    FROM pg_catalog.pg_event_trigger_ddl_commands() d
    JOIN pg_catalog.pg_attribute a ON a.attrelid = d.objid AND a.attnum = d.objsubid AND NOT a.attisdropped
    WHERE d.classid = 'pg_catalog.pg_class'::pg_catalog.regclass AND d.objsubid > 0
      AND f.tbl = d.objid AND f.attnum = d.objsubid AND f.feature_column <> a.attname;
END
$$;
COMMENT ON FUNCTION pgvision._rename_feature_models() IS
'internal: ddl_command_end event trigger function; renames the feature_models rows of renamed columns';

-- A record goes with its table or column: a later table may get the dropped one's OID.
CREATE OR REPLACE FUNCTION pgvision._drop_feature_models()
RETURNS event_trigger
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    _tables oid[];
BEGIN
    SELECT pg_catalog.array_agg(DISTINCT d.objid) INTO _tables
    FROM pg_catalog.pg_event_trigger_dropped_objects() d
    WHERE d.classid = 'pg_catalog.pg_class'::pg_catalog.regclass
      AND d.object_type IN ('table', 'table column');
    IF _tables IS NULL OR pg_catalog.to_regclass('pgvision.feature_models') IS NULL THEN
        RETURN;
    END IF;
    DELETE FROM pgvision.feature_models f
    WHERE f.tbl::oid = ANY (_tables)
      AND NOT EXISTS (SELECT FROM pg_catalog.pg_attribute a
                      WHERE a.attrelid = f.tbl AND a.attnum = f.attnum AND NOT a.attisdropped);
END
$$;
COMMENT ON FUNCTION pgvision._drop_feature_models() IS
'internal: sql_drop event trigger function; deletes the feature_models rows of dropped tables and columns';

DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_event_trigger t WHERE t.evtname = 'pgvision_rename_feature_models') THEN
        CREATE EVENT TRIGGER pgvision_rename_feature_models ON ddl_command_end
            WHEN TAG IN ('ALTER TABLE') EXECUTE FUNCTION pgvision._rename_feature_models();
    END IF;
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_event_trigger t WHERE t.evtname = 'pgvision_drop_feature_models') THEN
        CREATE EVENT TRIGGER pgvision_drop_feature_models ON sql_drop
            EXECUTE FUNCTION pgvision._drop_feature_models();
    END IF;
END
$$;
COMMENT ON EVENT TRIGGER pgvision_rename_feature_models IS
'keeps pgvision.feature_models right when a feature column is renamed';
COMMENT ON EVENT TRIGGER pgvision_drop_feature_models IS
'deletes the pgvision.feature_models rows of dropped tables and feature columns';
