-- The model of a feature column (pgvision.feature_models, incremental/005): whatever fills
-- a column records it through set_column_model, the searches embed with _query_model.
-- A column without a record is searched with the default model, as before records existed.

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
    _recorded text;
BEGIN
    -- The table's lock first (a query on it keeps ACCESS SHARE to the end of the
    -- transaction), then the record of the column that has the name now, from the system
    -- caches the lock brought up to date rather than from this statement's snapshot: a
    -- search whose snapshot predates a swap of columns (switch_model_finish) and that reads
    -- the table after it reads the new column, so it must embed with that column's model.
    IF pg_catalog.has_any_column_privilege(tbl, 'SELECT') THEN
        -- (ONLY and no row: not a partition, nor a shard, is opened)
        EXECUTE pg_catalog.format('SELECT FROM ONLY %s WHERE false', pgvision._rel_name(tbl));
    END IF;
    SELECT f.model INTO _recorded FROM pgvision.feature_models f
    WHERE f.tbl = _query_model.tbl
      AND (pg_catalog.pg_identify_object_as_address('pg_catalog.pg_class'::pg_catalog.regclass, f.tbl, f.attnum)).object_names[3]
          = _query_model.feature_column;
    IF NOT FOUND THEN
        _recorded := pgvision.column_model(tbl, feature_column);
    END IF;
    IF model IS NULL OR model = '' THEN  -- not given
        RETURN coalesce(_recorded, pgvision.default_model());
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

DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_event_trigger t WHERE t.evtname = 'pgvision_rename_feature_models') THEN
        CREATE EVENT TRIGGER pgvision_rename_feature_models ON ddl_command_end
            WHEN TAG IN ('ALTER TABLE') EXECUTE FUNCTION pgvision._rename_feature_models();
    END IF;
END
$$;
COMMENT ON EVENT TRIGGER pgvision_rename_feature_models IS
'keeps pgvision.feature_models right when a feature column is renamed';
