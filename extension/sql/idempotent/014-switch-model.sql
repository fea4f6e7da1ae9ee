-- Moving a feature column to another model online: CALL pgvision.switch_model, or its steps
-- one by one (switch_model_start, CALL embed_table, switch_model_finish), and
-- switch_model_abort.
--
-- The switch keeps no state of its own: a switch under way is its trigger (arguments: the
-- image column, the new column, the model, the column being replaced), the new column's
-- model is its pgvision.feature_models record, and the backfill's progress and bad rows are
-- embed_table's bookkeeping. So every step can be run again after an interruption, and
-- pg_dump keeps a half-done switch like the rest of the table.
--
-- Why a procedure and steps: the backfill commits batch by batch (embed_table), which only
-- a procedure called on its own can do; the steps are functions so that a DBA can run them
-- apart (build the new column's index with CREATE INDEX CONCURRENTLY before the swap, say).

-- Sets the new column (TG_ARGV[1]) to pgvision.embed of the image column (TG_ARGV[0]) with
-- the new model (TG_ARGV[2]) while the column it replaces (TG_ARGV[3]) is still searched.
-- The body is _auto_embed's; it is a function of its own because the function is what tells
-- a switch's trigger from pgvision_auto_embed (pg_trigger.tgfoid), and so is the state.
CREATE OR REPLACE FUNCTION pgvision._switch_model_embed()
RETURNS trigger
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    _image bytea;
BEGIN
    EXECUTE pg_catalog.format('SELECT ($1).%I', TG_ARGV[0]) INTO _image USING NEW;
    RETURN pg_catalog.jsonb_populate_record(
        NEW, pg_catalog.jsonb_build_object(TG_ARGV[1], pgvision.embed(_image, TG_ARGV[2])));
END
$$;
COMMENT ON FUNCTION pgvision._switch_model_embed() IS
'internal: trigger function of a switch under way (pgvision.switch_model_start); sets the new feature column (TG_ARGV[1]) to pgvision.embed of the image column (TG_ARGV[0]) with the new model (TG_ARGV[2]) on INSERT and on UPDATE of the image column; TG_ARGV[3] names the column it will replace';

-- A trigger's arguments (pg_trigger.tgargs: each one NUL-terminated).
CREATE OR REPLACE FUNCTION pgvision._trigger_args(args bytea)
RETURNS text[]
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE STRICT
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    _out text[] := '{}';
    _at int;
BEGIN
    LOOP
        _at := pg_catalog.position(args, '\x00'::bytea);
        EXIT WHEN _at = 0;
        _out := _out || pg_catalog.convert_from(pg_catalog.substr(args, 1, _at - 1),
                                                pg_catalog.getdatabaseencoding());
        args := pg_catalog.substr(args, _at + 1);
    END LOOP;
    RETURN _out;
END
$$;
COMMENT ON FUNCTION pgvision._trigger_args(bytea) IS
'internal: the arguments of a trigger (pg_trigger.tgargs) as text';

-- The switch under way on tbl.feature_column, from its trigger; no row when there is none.
CREATE OR REPLACE FUNCTION pgvision._switch_state(tbl regclass, feature_column name,
                                                  OUT trigger_name name, OUT image_column name,
                                                  OUT new_column name, OUT model text)
RETURNS SETOF record
LANGUAGE sql STABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT t.tgname, a[1]::name, a[2]::name, a[3]
    FROM pg_catalog.pg_trigger t
    CROSS JOIN LATERAL pgvision._trigger_args(t.tgargs) a
    WHERE t.tgrelid = _switch_state.tbl AND NOT t.tgisinternal
      AND t.tgfoid = 'pgvision._switch_model_embed()'::pg_catalog.regprocedure
      AND a[4] = _switch_state.feature_column
    ORDER BY t.oid
    LIMIT 1
$$;
COMMENT ON FUNCTION pgvision._switch_state(regclass, name) IS
'internal: the switch under way on a feature column, read from its trigger: the trigger, the image column, the new column and its model; no row when there is none';

CREATE OR REPLACE FUNCTION pgvision._switch_none(tbl regclass, feature_column name)
RETURNS void
LANGUAGE plpgsql STABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RAISE EXCEPTION 'no switch of model is under way on column "%" of relation %', feature_column, tbl
        USING ERRCODE = 'object_not_in_prerequisite_state',
              HINT = 'start one with pgvision.switch_model_start or CALL pgvision.switch_model';
END
$$;
COMMENT ON FUNCTION pgvision._switch_none(regclass, name) IS
'internal: raises object_not_in_prerequisite_state: no switch is under way on the column';

CREATE OR REPLACE FUNCTION pgvision.switch_model_start(tbl regclass, feature_column name, model text,
                                                       image_column name DEFAULT 'image',
                                                       new_column name DEFAULT NULL)
RETURNS name
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    _s record;
    _new name := coalesce(new_column, (feature_column::text || '_next')::name);
    _current text;
    _dim int;
BEGIN
    IF tbl IS NULL OR feature_column IS NULL OR model IS NULL OR image_column IS NULL THEN
        RAISE EXCEPTION 'tbl, feature_column, model and image_column must not be null'
            USING ERRCODE = 'null_value_not_allowed';
    END IF;
    PERFORM pgvision._check_owner(tbl);
    PERFORM pgvision._vector_column(tbl, feature_column);
    -- (scale-out, 042-shard-tables.sql, may be left out)
    IF pg_catalog.to_regprocedure('pgvision._is_sharded(regclass)') IS NOT NULL THEN
        IF pgvision._is_sharded(tbl) THEN
            RAISE EXCEPTION 'relation % is sharded', tbl USING ERRCODE = 'feature_not_supported',
                HINT = 'switch the model of each shard''s table on its shard';
        END IF;
    END IF;
    SELECT * INTO _s FROM pgvision._switch_state(tbl, feature_column);
    IF FOUND THEN
        -- called again: the same switch goes on, another one is refused
        IF _s.model = model AND _s.new_column = _new AND _s.image_column = image_column THEN
            RETURN _s.new_column;
        END IF;
        RAISE EXCEPTION 'a switch of column "%" of relation % to model "%" (column "%") is under way',
                        feature_column, tbl, _s.model, _s.new_column
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = pg_catalog.format('finish it, or abandon it with SELECT pgvision.switch_model_abort(%L, %L)',
                                           tbl::text, feature_column);
    END IF;
    SELECT m.dim INTO _dim FROM pgvision.models m WHERE m.name = switch_model_start.model;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'model "%" does not exist', model USING ERRCODE = 'undefined_object',
            HINT = 'SELECT name FROM pgvision.models lists the registered models';
    END IF;
    _current := coalesce(pgvision.column_model(tbl, feature_column), pgvision.default_model());
    IF _current = model THEN
        RAISE EXCEPTION 'feature column "%" of relation % already holds features of model "%"',
                        feature_column, tbl, model USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF EXISTS (SELECT FROM pgvision._column(tbl, _new)) THEN
        RAISE EXCEPTION 'column "%" of relation % already exists', _new, tbl
            USING ERRCODE = 'duplicate_column',
                  HINT = 'name a new column with new_column => ''...''';
    END IF;
    EXECUTE pg_catalog.format('ALTER TABLE %s ADD COLUMN %I %I.vector(%s)',
                              pgvision._rel_name(tbl), _new, pgvision._vector_schema(), _dim);
    PERFORM pgvision._embed_columns(tbl, image_column, _new, model);  -- the image column
    PERFORM pgvision.set_column_model(tbl, _new, model);
    -- writes from now on get the new feature; embed_table fills the rows already there
    EXECUTE pg_catalog.format(
        'CREATE TRIGGER %I BEFORE INSERT OR UPDATE OF %I ON %s'
        ' FOR EACH ROW EXECUTE FUNCTION pgvision._switch_model_embed(%L, %L, %L, %L)',
        'pgvision_switch_model_' || (SELECT c.num FROM pgvision._column(tbl, _new) c),
        image_column, pgvision._rel_name(tbl), image_column, _new, model, feature_column);
    RETURN _new;
END
$$;
COMMENT ON FUNCTION pgvision.switch_model_start(regclass, name, text, name, name) IS
'starts moving a feature column to another model: adds the new column (new_column, default <feature_column>_next, vector of the model''s dimensions), records its model and creates the trigger that embeds the image column into it on INSERT and on UPDATE of the image column; returns the new column''s name; called again for the same switch, returns it and does nothing; searches of the feature column go on with its model until switch_model_finish; for the table''s owner';

-- The new column gets an index like each pgvector index of the column it replaces (method,
-- metric, halfvec, m/ef_construction or lists), unless it has such an index already (a
-- resumed switch, or one the DBA built with CREATE INDEX CONCURRENTLY). Returns how many
-- it built.
CREATE OR REPLACE FUNCTION pgvision._switch_model_indexes(tbl regclass, feature_column name)
RETURNS int
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    _s record;
    _i record;
    _built int := 0;
BEGIN
    PERFORM pgvision._check_owner(tbl);
    SELECT * INTO _s FROM pgvision._switch_state(tbl, feature_column);
    IF NOT FOUND THEN
        PERFORM pgvision._switch_none(tbl, feature_column);
    END IF;
    FOR _i IN
        SELECT o.* FROM pgvision._column_indexes(tbl, feature_column) o
        WHERE NOT EXISTS (SELECT FROM pgvision._column_indexes(tbl, _s.new_column) n
                          WHERE n.method = o.method AND n.metric = o.metric AND n.halfvec = o.halfvec)
    LOOP
        PERFORM pgvision.create_index(tbl, _s.new_column, _i.metric, _i.method,
                                      coalesce(_i.m, 16), coalesce(_i.ef_construction, 64),
                                      CASE WHEN _i.method = 'ivfflat' THEN coalesce(_i.lists, 100) END,
                                      _i.halfvec);
        _built := _built + 1;
    END LOOP;
    RETURN _built;
END
$$;
COMMENT ON FUNCTION pgvision._switch_model_indexes(regclass, name) IS
'internal: builds on the new column of a switch an index like each pgvector index of the column it replaces that it lacks; returns how many';

-- The backfill bookkeeping of a column (pgvision.backfill_progress, backfill_errors) is
-- kept by its name: switch_model_finish takes a column's rows out before it renames the
-- column and puts them back under the new name after.
CREATE OR REPLACE FUNCTION pgvision._switch_take(tbl regclass, column_name name)
RETURNS jsonb
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    _progress jsonb;
    _errors jsonb;
BEGIN
    WITH d AS (DELETE FROM pgvision.backfill_progress p
               WHERE p.tbl = _switch_take.tbl AND p.feature_column = column_name RETURNING p.*)
    SELECT pg_catalog.jsonb_agg(pg_catalog.to_jsonb(d)) INTO _progress FROM d;
    WITH d AS (DELETE FROM pgvision.backfill_errors e
               WHERE e.tbl = _switch_take.tbl AND e.feature_column = column_name RETURNING e.*)
    SELECT pg_catalog.jsonb_agg(pg_catalog.to_jsonb(d)) INTO _errors FROM d;
    RETURN pg_catalog.jsonb_build_object('progress', coalesce(_progress, '[]'), 'errors', coalesce(_errors, '[]'));
END
$$;
COMMENT ON FUNCTION pgvision._switch_take(regclass, name) IS
'internal: deletes the backfill_progress and backfill_errors rows of a column and returns them, for pgvision._switch_put after a rename';

CREATE OR REPLACE FUNCTION pgvision._switch_put(tbl regclass, column_name name, kept jsonb)
RETURNS void
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    _as jsonb := pg_catalog.jsonb_build_object('tbl', tbl::oid::text, 'feature_column', column_name);
BEGIN
    INSERT INTO pgvision.backfill_progress
    SELECT (pg_catalog.jsonb_populate_record(NULL::pgvision.backfill_progress, r OPERATOR(pg_catalog.||) _as)).*
    FROM pg_catalog.jsonb_array_elements(kept -> 'progress') r;
    INSERT INTO pgvision.backfill_errors
    SELECT (pg_catalog.jsonb_populate_record(NULL::pgvision.backfill_errors, r OPERATOR(pg_catalog.||) _as)).*
    FROM pg_catalog.jsonb_array_elements(kept -> 'errors') r;
END
$$;
COMMENT ON FUNCTION pgvision._switch_put(regclass, name, jsonb) IS
'internal: puts back the bookkeeping rows pgvision._switch_take returned, under a column''s new name';

CREATE OR REPLACE FUNCTION pgvision.switch_model_finish(tbl regclass, feature_column name,
                                                        drop_old boolean DEFAULT false,
                                                        previous_column name DEFAULT NULL)
RETURNS name
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    _s record;
    _rel text := pgvision._rel_name(tbl);
    _prev name := coalesce(previous_column, (feature_column::text || '_previous')::name);
    _key name;
    _left bigint;
    _auto record;
    _old record;
    _new record;
    _renames text[] := '{}';
    _kept jsonb;
BEGIN
    IF tbl IS NULL OR feature_column IS NULL OR drop_old IS NULL THEN
        RAISE EXCEPTION 'tbl, feature_column and drop_old must not be null'
            USING ERRCODE = 'null_value_not_allowed';
    END IF;
    PERFORM pgvision._check_owner(tbl);
    SELECT * INTO _s FROM pgvision._switch_state(tbl, feature_column);
    IF NOT FOUND THEN
        PERFORM pgvision._switch_none(tbl, feature_column);
    END IF;
    PERFORM pgvision._vector_column(tbl, feature_column);
    PERFORM pgvision._vector_column(tbl, _s.new_column);
    IF NOT drop_old AND EXISTS (SELECT FROM pgvision._column(tbl, _prev)) THEN
        RAISE EXCEPTION 'column "%" of relation % already exists', _prev, tbl
            USING ERRCODE = 'duplicate_column',
                  HINT = 'name another one with previous_column => ''...'', drop it, or drop the old column with drop_old => true';
    END IF;

    -- Every row with an image has its new feature, but those embed_table could not embed
    -- (pgvision.backfill_errors). Rows written from here on get theirs from the trigger.
    SELECT p.key_column INTO _key FROM pgvision.backfill_progress p
    WHERE p.tbl = switch_model_finish.tbl AND p.feature_column = _s.new_column;
    EXECUTE pg_catalog.format(
        'SELECT pg_catalog.count(*) FROM %s AS t WHERE t.%I IS NULL AND t.%I IS NOT NULL %s',
        _rel, _s.new_column, _s.image_column,
        CASE WHEN _key IS NOT NULL AND EXISTS (SELECT FROM pgvision._column(tbl, _key)) THEN pg_catalog.format(
            'AND NOT EXISTS (SELECT FROM pgvision.backfill_errors AS e WHERE e.tbl OPERATOR(pg_catalog.=) $1'
            ' AND e.feature_column OPERATOR(pg_catalog.=) $2 AND e.key OPERATOR(pg_catalog.=) t.%I::pg_catalog.text)',
            _key) END)
        INTO _left USING tbl, _s.new_column;
    IF _left > 0 THEN
        RAISE EXCEPTION '% rows of relation % have no feature of model "%" in column "%" yet',
                        _left, tbl, _s.model, _s.new_column
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = pg_catalog.format('CALL pgvision.embed_table(%L, %L, %L, %L) fills them',
                                           tbl::text, _s.image_column, _s.new_column, _s.model);
    END IF;
    PERFORM pgvision._switch_model_indexes(tbl, feature_column);

    -- The swap: one short transaction holding the table's ACCESS EXCLUSIVE lock, taken now
    -- so that no write slips in between the renames.
    EXECUTE pg_catalog.format('LOCK TABLE %s IN ACCESS EXCLUSIVE MODE', _rel);
    -- index names: each new index takes the name of the old one it stands in for
    FOR _old IN SELECT * FROM pgvision._column_indexes(tbl, feature_column) LOOP
        SELECT * INTO _new FROM pgvision._column_indexes(tbl, _s.new_column) n
        WHERE n.method = _old.method AND n.metric = _old.metric AND n.halfvec = _old.halfvec
          AND NOT n.index_name = ANY (_renames)
        LIMIT 1;
        IF FOUND THEN
            _renames := _renames || ARRAY[_old.index_name::text, _new.index_name::text,
                                          pg_catalog.format('_%s_%s%s_idx', _old.method, _old.metric,
                                                            CASE WHEN _old.halfvec THEN '_half' ELSE '' END)];
        END IF;
    END LOOP;
    SELECT t.tgname, a[1]::name AS image_column INTO _auto
    FROM pg_catalog.pg_trigger t CROSS JOIN LATERAL pgvision._trigger_args(t.tgargs) a
    WHERE t.tgrelid = tbl AND t.tgname = 'pgvision_auto_embed'
      AND t.tgfoid = 'pgvision._auto_embed()'::pg_catalog.regprocedure AND a[2] = feature_column;

    IF drop_old THEN
        -- its indexes, record and bookkeeping go with it (pgvision._forget_dropped)
        EXECUTE pg_catalog.format('ALTER TABLE %s DROP COLUMN %I', _rel, feature_column);
        _prev := NULL;
    ELSE
        FOR i IN 1 .. pg_catalog.cardinality(_renames) / 3 LOOP
            EXECUTE pg_catalog.format('ALTER INDEX %I.%I RENAME TO %I',
                                      (SELECT c.relnamespace::pg_catalog.regnamespace::text FROM pg_catalog.pg_class c WHERE c.oid = tbl),
                                      _renames[3 * i - 2], pgvision._index_name(tbl, _prev, _renames[3 * i]));
        END LOOP;
        -- the record follows the rename (pgvision._rename_feature_models); the bookkeeping
        -- is by name, and its policies let a row be written only under a column's current
        -- name: taken out before the rename, put back after
        _kept := pgvision._switch_take(tbl, feature_column);
        EXECUTE pg_catalog.format('ALTER TABLE %s RENAME COLUMN %I TO %I', _rel, feature_column, _prev);
        PERFORM pgvision._switch_put(tbl, _prev, _kept);
    END IF;
    _kept := pgvision._switch_take(tbl, _s.new_column);
    EXECUTE pg_catalog.format('ALTER TABLE %s RENAME COLUMN %I TO %I', _rel, _s.new_column, feature_column);
    PERFORM pgvision._switch_put(tbl, feature_column, _kept);
    FOR i IN 1 .. pg_catalog.cardinality(_renames) / 3 LOOP
        EXECUTE pg_catalog.format('ALTER INDEX %I.%I RENAME TO %I',
                                  (SELECT c.relnamespace::pg_catalog.regnamespace::text FROM pg_catalog.pg_class c WHERE c.oid = tbl),
                                  _renames[3 * i - 1], _renames[3 * i - 2]);
    END LOOP;
    -- writes: the switch's trigger goes; an automatic embedding of the column now embeds
    -- with the new model
    EXECUTE pg_catalog.format('DROP TRIGGER %I ON %s', _s.trigger_name, _rel);
    IF _auto.tgname IS NOT NULL THEN
        EXECUTE pg_catalog.format(
            'CREATE OR REPLACE TRIGGER pgvision_auto_embed BEFORE INSERT OR UPDATE OF %I ON %s'
            ' FOR EACH ROW EXECUTE FUNCTION pgvision._auto_embed(%L, %L, %L)',
            _s.image_column, _rel, _s.image_column, feature_column, _s.model);
    END IF;
    IF pgvision.column_model(tbl, feature_column) IS DISTINCT FROM _s.model THEN
        -- the rename event trigger did not run (disabled): record the models by hand
        DELETE FROM pgvision.feature_models f WHERE f.tbl = switch_model_finish.tbl
            AND f.feature_column IN (switch_model_finish.feature_column, _s.new_column, _prev);
        PERFORM pgvision.set_column_model(tbl, feature_column, _s.model);
    END IF;
    RETURN _prev;
END
$$;
COMMENT ON FUNCTION pgvision.switch_model_finish(regclass, name, boolean, name) IS
'ends a switch of model (pgvision.switch_model_start) once every row with an image has its new feature (else object_not_in_prerequisite_state, with the embed_table call that fills them): builds the indexes the new column lacks (like the old column''s), then in one transaction renames the old column to previous_column (default <feature_column>_previous; drop_old => true drops it instead), the new one to feature_column, gives the new indexes the old ones'' names, moves the bookkeeping and recorded model with the columns, drops the switch''s trigger and points pgvision_auto_embed, if the column had it, at the new model; returns the old column''s new name (NULL when dropped); for the table''s owner';

CREATE OR REPLACE FUNCTION pgvision.switch_model_abort(tbl regclass, feature_column name)
RETURNS boolean
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    _s record;
BEGIN
    IF tbl IS NULL OR feature_column IS NULL THEN
        RAISE EXCEPTION 'tbl and feature_column must not be null' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    PERFORM pgvision._check_owner(tbl);
    SELECT * INTO _s FROM pgvision._switch_state(tbl, feature_column);
    IF NOT FOUND THEN
        RAISE NOTICE 'no switch of model is under way on column "%" of relation %', feature_column, tbl;
        RETURN false;
    END IF;
    EXECUTE pg_catalog.format('DROP TRIGGER %I ON %s', _s.trigger_name, pgvision._rel_name(tbl));
    -- its indexes, record and bookkeeping go with it (pgvision._forget_dropped)
    EXECUTE pg_catalog.format('ALTER TABLE %s DROP COLUMN IF EXISTS %I', pgvision._rel_name(tbl), _s.new_column);
    RETURN true;
END
$$;
COMMENT ON FUNCTION pgvision.switch_model_abort(regclass, name) IS
'abandons a switch of model (pgvision.switch_model_start): drops its trigger and its new column, with that column''s indexes, recorded model and backfill bookkeeping; the feature column, its model, indexes and triggers are left as they were; returns false (and says so) when no switch is under way; for the table''s owner';

-- No SET clause: a procedure with one cannot COMMIT (as embed_table, 011-embed-table.sql):
-- the body declares qualified types and calls only schema-qualified functions.
CREATE OR REPLACE PROCEDURE pgvision.switch_model(tbl regclass, feature_column name, model text,
                                                  image_column name DEFAULT 'image',
                                                  new_column name DEFAULT NULL,
                                                  batch_size int DEFAULT 64,
                                                  key_column name DEFAULT NULL,
                                                  drop_old boolean DEFAULT false,
                                                  previous_column name DEFAULT NULL)
LANGUAGE plpgsql
AS $$
DECLARE
    _cannot pg_catalog.text := pgvision._transaction_context();
    _new pg_catalog.name;
BEGIN
    IF _cannot IS NOT NULL THEN
        RAISE EXCEPTION USING ERRCODE = 'invalid_transaction_termination',
            MESSAGE = pg_catalog.concat('pgvision.switch_model cannot ', _cannot),
            DETAIL = 'it commits after every step and every batch of the backfill',
            HINT = 'CALL it on its own, in autocommit mode, or run its steps: pgvision.switch_model_start, CALL pgvision.embed_table, pgvision.switch_model_finish';
    END IF;
    PERFORM pgvision._check_batch_size(batch_size);
    PERFORM pgvision._check_owner(tbl);
    -- called again after its swap committed: nothing left to do
    IF NOT EXISTS (SELECT FROM pgvision._switch_state(tbl, feature_column))
       AND pgvision.column_model(tbl, feature_column) OPERATOR(pg_catalog.=) model THEN
        RAISE NOTICE 'feature column "%" of relation % holds features of model "%"', feature_column, tbl, model;
        RETURN;
    END IF;
    _new := pgvision.switch_model_start(tbl, feature_column, model, image_column, new_column);
    COMMIT;
    CALL pgvision.embed_table(tbl, image_column, _new, model, batch_size, key_column);
    PERFORM pgvision._switch_model_indexes(tbl, feature_column);
    COMMIT;
    PERFORM pgvision.switch_model_finish(tbl, feature_column, drop_old, previous_column);
    COMMIT;
END
$$;
COMMENT ON PROCEDURE pgvision.switch_model(regclass, name, text, name, name, int, name, boolean, name) IS
'moves a feature column to another model while it is searched and written: pgvision.switch_model_start (the new column, its model, a trigger that keeps it current), CALL pgvision.embed_table into it (batch_size rows a transaction), its indexes like the old column''s, then pgvision.switch_model_finish (the swap, in one short transaction); each step commits; interrupted, CALL it again with the same arguments to go on (once the column holds the model, it does nothing); pgvision.switch_model_abort abandons it; CALL it outside a transaction block; for the table''s owner';
