-- AnalyticDB-style pipelines, so SQL written for open_analytic.pipeline_run ports over.

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
-- see 040-shard.sql), a random shard runs it; on a single server it runs here.
CREATE OR REPLACE FUNCTION pgvision.pipeline_run_dist_random(name text, image bytea)
RETURNS jsonb
LANGUAGE plpgsql VOLATILE STRICT PARALLEL UNSAFE COST 100000
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF EXISTS (SELECT FROM pgvision.shards) THEN
        RETURN pgvision._shard_pipeline_run(name, image);
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
        (SELECT n.nspname FROM pg_catalog.pg_extension e
         JOIN pg_catalog.pg_namespace n ON n.oid = e.extnamespace WHERE e.extname = 'vector'));
END
$do$;
COMMENT ON FUNCTION pgvision.feature(jsonb) IS
'the feature vector of a pipeline_run result, e.g. pgvision.feature(pgvision.pipeline_run(''general_feature_extractor'', image))';
