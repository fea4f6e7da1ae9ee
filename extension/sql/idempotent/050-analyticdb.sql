-- The AnalyticDB compatibility layer, so SQL written for AnalyticDB ports over: named
-- pipelines (open_analytic.pipeline_run and pipeline_run_dist_random) and ann indexes
-- (CREATE INDEX ... USING ann ... WITH (...)) with their options. A leaf: nothing else in
-- pgvision calls it.

COMMENT ON TABLE pgvision.pipelines IS
'named feature-extraction pipelines: a model and options, run by pgvision.pipeline_run';

CREATE OR REPLACE TRIGGER registry_write BEFORE INSERT OR UPDATE OR DELETE ON pgvision.pipelines
FOR EACH ROW EXECUTE FUNCTION pgvision._registry_write();
COMMENT ON TRIGGER registry_write ON pgvision.pipelines IS
'every new pipeline passes pipeline_create''s checks; a pipeline never changes; built-in ones stay';

CREATE OR REPLACE FUNCTION pgvision.pipeline_create(name text, model text, options jsonb DEFAULT '{}')
RETURNS text
LANGUAGE plpython3u VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
AS $python$
@PREAMBLE@
if name is None or model is None:
    plpy.error("name and model must not be null", sqlstate="22004")
return pv.pipeline_create(plpy, GD, name, model, options)
$python$;
COMMENT ON FUNCTION pgvision.pipeline_create(text, text, jsonb) IS
'creates a named pipeline over a registered model; options: {"output": "feature"|"logits", "normalize": true|false}';

CREATE OR REPLACE FUNCTION pgvision.pipeline_drop(name text)
RETURNS void
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM pgvision.pipelines p WHERE p.name = pipeline_drop.name AND p.builtin) THEN
        RAISE EXCEPTION 'pipeline "%" is installed with the extension', pipeline_drop.name
            USING ERRCODE = 'dependent_objects_still_exist';
    END IF;
    DELETE FROM pgvision.pipelines p WHERE p.name = pipeline_drop.name;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'pipeline "%" does not exist', pipeline_drop.name USING ERRCODE = 'undefined_object';
    END IF;
END
$$;
COMMENT ON FUNCTION pgvision.pipeline_drop(text) IS 'removes a pipeline created with pgvision.pipeline_create';

CREATE OR REPLACE FUNCTION pgvision.pipeline_run(name text, image bytea)
RETURNS jsonb
LANGUAGE plpython3u STABLE STRICT PARALLEL UNSAFE COST 100000
SET search_path = pg_catalog, pg_temp
AS $python$
@PREAMBLE@
return pv.pipeline_run(plpy, GD, name, image)
$python$;
COMMENT ON FUNCTION pgvision.pipeline_run(text, bytea) IS
'runs a pipeline on image bytes; returns {"pipeline", "model", "output", "dim", "normalized", "feature" (or "logits"): [...]}';

-- AnalyticDB sends the work to a random segment: with shards registered (pgvision.shards,
-- see 041-shard-registry.sql), a random shard runs it (044-shard-search.sql); on a single
-- server it runs here.
CREATE OR REPLACE FUNCTION pgvision.pipeline_run_dist_random(name text, image bytea)
RETURNS jsonb
LANGUAGE plpgsql VOLATILE STRICT PARALLEL UNSAFE COST 100000
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF EXISTS (SELECT FROM pgvision.shards) THEN
        RETURN pgvision._shard_pipeline_run(name, image);  -- the layer's one call into scale-out
    END IF;
    RETURN pgvision.pipeline_run(name, image);
END
$$;
COMMENT ON FUNCTION pgvision.pipeline_run_dist_random(text, bytea) IS
'AnalyticDB''s name for running a pipeline on a random node: on a random shard of pgvision.shards (through dblink) when there are any, else on this server; the pipeline must exist where it runs';

-- pgvector may live in any schema; the body names its type with that schema, so the
-- function works with search_path pinned.
DO $do$
BEGIN
    EXECUTE pg_catalog.format(
        $f$CREATE OR REPLACE FUNCTION pgvision.feature(result jsonb)
           RETURNS %1$I.vector
           LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
           SET search_path = pg_catalog, pg_temp
           AS 'SELECT (result -> ''feature'')::text::%1$I.vector'$f$,
        pgvision._vector_schema());
END
$do$;
COMMENT ON FUNCTION pgvision.feature(jsonb) IS
'the feature vector of a pipeline_run result, e.g. pgvision.feature(pgvision.pipeline_run(''general_feature_extractor'', image))';

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
    _metric text := 'l2';  -- AnalyticDB's default distancemeasure, not pgvision's
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
        IF _key <> ALL (pg_catalog.string_to_array(_known, ', ')) THEN
            RAISE EXCEPTION 'unknown ann index option "%"', _key
                USING ERRCODE = 'invalid_parameter_value', HINT = 'known options: ' || _known;
        END IF;
        IF _key = 'distancemeasure' THEN
            _metric := (SELECT m.metric FROM pgvision._metrics() m
                        WHERE m.metric = pg_catalog.replace(pg_catalog.lower(_value), 'innerproduct', 'ip'));
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
            IF _int <> pgvision._vector_dims(tbl, column_name, _int) THEN
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
