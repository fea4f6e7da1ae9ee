-- The install's default model (pgvision.models_default, incremental/006): default_model() reads
-- it; it is written into the functions' signatures as the DEFAULT of their model argument,
-- so that a call that names no model, in any statement, embeds with it. PostgreSQL fills a
-- left-out argument in when it plans an expression, not when it stores it: a view, index or
-- generated column that leaves the model out follows the default, so the default changes
-- only while there is none (_default_model_users). Every write to the row
-- (set_default_model, a superuser's UPDATE, the COPY of a restore) goes through its trigger.

CREATE OR REPLACE FUNCTION pgvision.default_model()
RETURNS text
LANGUAGE sql STABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT coalesce((SELECT d.model FROM pgvision.models_default d), 'efficientnet_lite0')
$$;
COMMENT ON FUNCTION pgvision.default_model() IS
'the model pgvision.embed and embed_batch use when the call names none, and that a feature column without a recorded model is searched with: efficientnet_lite0_normalized in a fresh install, efficientnet_lite0 in a database updated from 0.2.0 or older; pgvision.set_default_model changes it';

-- The functions whose model argument defaults to the install's default. classify keeps
-- efficientnet_lite0: its logits are the same in every variant.
CREATE OR REPLACE FUNCTION pgvision._apply_default_model(model text)
RETURNS void
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    _f regprocedure;
    _def text;
    _new text;
BEGIN
    FOR _f IN
        SELECT p.oid::regprocedure FROM pg_catalog.pg_proc p
        WHERE p.pronamespace = 'pgvision'::regnamespace
          AND p.proname IN ('embed', 'embed_batch', 'create_sharded_table', 'embed_shards')
          AND pg_catalog.pg_get_function_arguments(p.oid) ~ '\mmodel text DEFAULT '
    LOOP
        _def := pg_catalog.pg_get_functiondef(_f);
        -- the first match is in the argument list, which comes before the body
        _new := pg_catalog.regexp_replace(_def, '(\mmodel text DEFAULT )''[^'']*''::text',
                                          '\1' || pg_catalog.replace(pg_catalog.quote_literal(model), '\', '\\') || '::text');
        IF _new IS DISTINCT FROM _def THEN
            EXECUTE _new;
        END IF;
    END LOOP;
    -- the built-in pipeline is embed(image) as JSON (the registry's trigger lets this
    -- through from the trigger of pgvision.models_default only)
    UPDATE pgvision.pipelines p SET model = _apply_default_model.model
    WHERE p.builtin AND p.name = 'general_feature_extractor'
      AND p.model IS DISTINCT FROM _apply_default_model.model;
END
$$;
COMMENT ON FUNCTION pgvision._apply_default_model(text) IS
'internal: writes model as the DEFAULT of the model argument of embed, embed_batch, create_sharded_table and embed_shards, and makes it the model of the built-in pipeline general_feature_extractor';

CREATE OR REPLACE FUNCTION pgvision._calls_leaving_out_model(tree text, funcs oid[], nargs int[])
RETURNS boolean
LANGUAGE plpython3u IMMUTABLE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
AS $python$
@PREAMBLE@
return pv.calls_leaving_out_model(tree, funcs, nargs)
$python$;
COMMENT ON FUNCTION pgvision._calls_leaving_out_model(text, oid[], int[]) IS
'internal: whether a stored expression (pg_node_tree as text) calls one of funcs with fewer than its nargs arguments, leaving the model to its default';

-- Stored expressions (views, indexes, generated columns, checks, policies, SQL-standard
-- function bodies) that call embed or embed_batch without a model: PostgreSQL fills in a
-- left-out argument when it plans the expression, so they follow the default model. With
-- populated_only, the generated columns of tables that have rows (a restore's data).
CREATE OR REPLACE FUNCTION pgvision._default_model_users(populated_only boolean)
RETURNS SETOF text
LANGUAGE plpgsql STABLE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    _funcs oid[] := ARRAY['pgvision.embed(bytea, text)'::pg_catalog.regprocedure,
                          'pgvision.embed_batch(bytea[], text)'::pg_catalog.regprocedure]::oid[];
    _d record;
    _has_rows boolean;
BEGIN
    FOR _d IN
        SELECT d.classid, d.objid, d.objsubid,
               CASE d.classid
                   WHEN 'pg_catalog.pg_rewrite'::pg_catalog.regclass THEN
                       (SELECT r.ev_action::text FROM pg_catalog.pg_rewrite r WHERE r.oid = d.objid)
                   WHEN 'pg_catalog.pg_attrdef'::pg_catalog.regclass THEN
                       (SELECT a.adbin::text FROM pg_catalog.pg_attrdef a WHERE a.oid = d.objid)
                   WHEN 'pg_catalog.pg_class'::pg_catalog.regclass THEN
                       (SELECT i.indexprs::text || ' ' || coalesce(i.indpred::text, '')
                        FROM pg_catalog.pg_index i WHERE i.indexrelid = d.objid)
                   WHEN 'pg_catalog.pg_constraint'::pg_catalog.regclass THEN
                       (SELECT c.conbin::text FROM pg_catalog.pg_constraint c WHERE c.oid = d.objid)
                   WHEN 'pg_catalog.pg_policy'::pg_catalog.regclass THEN
                       (SELECT coalesce(p.polqual::text, '') || ' ' || coalesce(p.polwithcheck::text, '')
                        FROM pg_catalog.pg_policy p WHERE p.oid = d.objid)
                   WHEN 'pg_catalog.pg_proc'::pg_catalog.regclass THEN
                       (SELECT p.prosqlbody::text FROM pg_catalog.pg_proc p WHERE p.oid = d.objid)
               END AS tree,
               (SELECT a.adrelid FROM pg_catalog.pg_attrdef a
                WHERE d.classid = 'pg_catalog.pg_attrdef'::pg_catalog.regclass AND a.oid = d.objid) AS generated_in,
               -- a view rather than its rule, a column rather than its default
               coalesce((SELECT pg_catalog.pg_describe_object('pg_catalog.pg_class'::pg_catalog.regclass, r.ev_class, 0)
                         FROM pg_catalog.pg_rewrite r
                         WHERE d.classid = 'pg_catalog.pg_rewrite'::pg_catalog.regclass AND r.oid = d.objid),
                        (SELECT pg_catalog.pg_describe_object('pg_catalog.pg_class'::pg_catalog.regclass, a.adrelid, a.adnum)
                         FROM pg_catalog.pg_attrdef a
                         WHERE d.classid = 'pg_catalog.pg_attrdef'::pg_catalog.regclass AND a.oid = d.objid),
                        pg_catalog.pg_describe_object(d.classid, d.objid, d.objsubid)) AS what
        FROM pg_catalog.pg_depend d
        WHERE d.refclassid = 'pg_catalog.pg_proc'::pg_catalog.regclass
          AND d.refobjid OPERATOR(pg_catalog.=) ANY (_funcs) AND d.deptype = 'n'
    LOOP
        CONTINUE WHEN NOT coalesce(pgvision._calls_leaving_out_model(_d.tree, _funcs, ARRAY[2, 2]), false);
        IF populated_only THEN
            CONTINUE WHEN _d.generated_in IS NULL;
            EXECUTE pg_catalog.format('SELECT EXISTS (SELECT FROM %s)', pgvision._rel_name(_d.generated_in))
                INTO _has_rows;
            CONTINUE WHEN NOT _has_rows;
        END IF;
        RETURN NEXT _d.what;
    END LOOP;
END
$$;
COMMENT ON FUNCTION pgvision._default_model_users(boolean) IS
'internal: the stored expressions that call embed or embed_batch without a model, and so follow the default model (with populated_only: generated columns of tables with rows)';

CREATE OR REPLACE FUNCTION pgvision._models_default_write()
RETURNS trigger
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    _current text := (SELECT d.model FROM pgvision.models_default d);
    _users text[];
    _super boolean := (SELECT r.rolsuper FROM pg_catalog.pg_roles r WHERE r.rolname = pg_catalog.current_user());
BEGIN
    IF TG_OP = 'DELETE' THEN
        RAISE EXCEPTION 'the default model cannot be removed'
            USING ERRCODE = 'feature_not_supported',
                  HINT = 'set another one with pgvision.set_default_model';
    END IF;
    IF TG_OP = 'INSERT' AND _current IS NOT NULL THEN
        -- the dumped row of a restore, on top of the one CREATE EXTENSION made; views and
        -- indexes come to it as they were, but a generated column already restored was
        -- computed with this install's default
        IF NEW.model IS DISTINCT FROM _current THEN
            IF NOT _super THEN
                RAISE EXCEPTION 'only a superuser can change the default model (from "%" to "%")', _current, NEW.model
                    USING ERRCODE = 'insufficient_privilege',
                          DETAIL = 'the default model decides what pgvision.embed(image) returns for every role',
                          HINT = 'to restore a database whose default model differs from this installation''s, restore as a superuser';
            END IF;
            _users := ARRAY(SELECT pgvision._default_model_users(true));
            IF _users <> '{}' THEN
                RAISE EXCEPTION 'the restored default model "%" is not the "%" the restored rows of % were computed with',
                                NEW.model, _current, pg_catalog.array_to_string(_users, ', ')
                    USING ERRCODE = 'object_in_use',
                          HINT = pg_catalog.format('restore into a database where CREATE EXTENSION pgvision and SELECT pgvision.set_default_model(%L) were run first', NEW.model);
            END IF;
            UPDATE pgvision.models_default SET model = NEW.model;
        END IF;
        RETURN NULL;
    END IF;
    IF NOT _super THEN
        RAISE EXCEPTION 'only a superuser can change the default model (from "%" to "%")', _current, NEW.model
            USING ERRCODE = 'insufficient_privilege',
                  DETAIL = 'the default model decides what pgvision.embed(image) returns for every role',
                  HINT = 'to restore a database whose default model differs from this installation''s, restore as a superuser';
    END IF;
    IF NOT EXISTS (SELECT FROM pgvision.models m WHERE m.name = NEW.model) THEN
        RAISE EXCEPTION 'model "%" does not exist', NEW.model
            USING ERRCODE = 'undefined_object',
                  HINT = 'SELECT name FROM pgvision.models lists the models; a restore loads pgvision.models before pgvision.models_default, unless it runs in parallel (pg_restore -j): then restore the table''s data again, or call set_default_model';
    END IF;
    -- (from the restore's branch above, one trigger deeper, the check is done: a superuser
    -- who sets the default from a trigger of his own skips it too)
    IF TG_OP = 'UPDATE' AND NEW.model IS DISTINCT FROM OLD.model AND pg_catalog.pg_trigger_depth() = 1 THEN
        _users := ARRAY(SELECT pgvision._default_model_users(false));
        IF _users <> '{}' THEN
            RAISE EXCEPTION 'cannot change the default model: % call pgvision.embed or embed_batch without a model and would change meaning',
                            pg_catalog.array_to_string(_users, ', ')
                USING ERRCODE = 'object_in_use',
                      DETAIL = 'PostgreSQL fills in a left-out argument each time it plans a stored expression',
                      HINT = pg_catalog.format('name the model in them, as pgvision.embed(image, %L), then set the default', OLD.model);
        END IF;
    END IF;
    PERFORM pgvision._apply_default_model(NEW.model);
    RETURN NEW;
END
$$;
COMMENT ON FUNCTION pgvision._models_default_write() IS
'internal: the trigger of pgvision.models_default: superusers only, the model must exist, the functions'' DEFAULT follows; a second row (a restore''s) sets the first';

DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_trigger t WHERE t.tgname = 'models_default_write'
                   AND t.tgrelid = 'pgvision.models_default'::pg_catalog.regclass) THEN
        CREATE TRIGGER models_default_write BEFORE INSERT OR UPDATE OR DELETE ON pgvision.models_default
            FOR EACH ROW EXECUTE FUNCTION pgvision._models_default_write();
    END IF;
END
$$;
COMMENT ON TRIGGER models_default_write ON pgvision.models_default IS
'every write of the default model: superusers only, an existing model, the functions'' DEFAULT follows';

CREATE OR REPLACE FUNCTION pgvision.set_default_model(model text)
RETURNS text
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    _old text := pgvision.default_model();
    _old_dim int := (SELECT m.dim FROM pgvision.models m WHERE m.name = pgvision.default_model());
    _recorded int;
BEGIN
    IF model IS NULL THEN
        RAISE EXCEPTION 'model must not be NULL' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF model = _old THEN
        RETURN _old;
    END IF;
    UPDATE pgvision.models_default SET model = set_default_model.model;  -- the trigger checks
    -- Columns without a recorded model were searched with the old default, which is what
    -- filled them: record it, so that they go on being searched with it.
    INSERT INTO pgvision.feature_models (tbl, feature_column, attnum, model)
    SELECT a.attrelid::regclass, a.attname, a.attnum, _old
    FROM pg_catalog.pg_attribute a
    JOIN pg_catalog.pg_class c ON c.oid = a.attrelid
    JOIN pg_catalog.pg_type t ON t.oid = a.atttypid
    WHERE t.typname IN ('vector', 'halfvec') AND a.atttypmod = _old_dim
      AND EXISTS (SELECT FROM pg_catalog.pg_depend d JOIN pg_catalog.pg_extension e ON e.oid = d.refobjid
                  WHERE d.classid = 'pg_catalog.pg_type'::pg_catalog.regclass AND d.objid = t.oid
                    AND d.deptype = 'e' AND e.extname = 'vector')
      AND c.relkind IN ('r', 'p', 'f') AND NOT c.relispartition
      AND c.relnamespace <> 'pgvision'::regnamespace
      AND a.attnum > 0 AND NOT a.attisdropped
      AND NOT EXISTS (SELECT FROM pgvision.feature_models f
                      WHERE f.tbl = c.oid AND f.attnum = a.attnum)
    ON CONFLICT DO NOTHING;
    GET DIAGNOSTICS _recorded = ROW_COUNT;
    RAISE NOTICE 'default model is now "%" (was "%")', model, _old
        USING DETAIL = pg_catalog.format('%s feature column(s) of %s dimensions without a recorded model were recorded as "%s"',
                                         _recorded, _old_dim, _old);
    RETURN _old;
END
$$;
COMMENT ON FUNCTION pgvision.set_default_model(text) IS
'makes model the default of pgvision.embed, embed_batch, create_sharded_table and embed_shards and of searches of columns without a recorded model; records the old default on such columns first; stored expressions keep the model they were written with; returns the old default; superusers only';
REVOKE ALL ON FUNCTION pgvision.set_default_model(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION pgvision._apply_default_model(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION pgvision._default_model_users(boolean) FROM PUBLIC;

COMMENT ON TABLE pgvision.models_default IS
'the install''s default model, one row: read it with pgvision.default_model(), change it with pgvision.set_default_model; kept by pg_dump';
COMMENT ON COLUMN pgvision.models_default.only_row IS 'true: the table has one row';
COMMENT ON COLUMN pgvision.models_default.model IS 'the default model (pgvision.models.name)';
GRANT SELECT ON pgvision.models_default TO PUBLIC;
-- a restore's COPY reaches the trigger, which takes the row when it is the same and
-- refuses to change it for anyone but a superuser
GRANT INSERT ON pgvision.models_default TO PUBLIC;
