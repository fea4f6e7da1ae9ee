-- The model registry.

COMMENT ON TABLE pgvision.models IS
'registered ONNX models: a model never changes under its name, so pgvision.embed can be IMMUTABLE';
COMMENT ON COLUMN pgvision.models.name IS 'name used by pgvision.embed(image, model)';
COMMENT ON COLUMN pgvision.models.sha256 IS 'sha256 of the ONNX bytes; loaded models are cached per backend by it';
COMMENT ON COLUMN pgvision.models.dim IS 'dimensions of the feature output, i.e. of the vector pgvision.embed returns';
COMMENT ON COLUMN pgvision.models.spec IS 'preprocessing spec: input name, size, resample, fit, scale, mean, std, background, outputs';
COMMENT ON COLUMN pgvision.models.labels IS 'class names of the logits output, used by pgvision.classify';
COMMENT ON COLUMN pgvision.models.onnx IS 'the ONNX model file';
COMMENT ON COLUMN pgvision.models.builtin IS 'installed with the extension (and not dumped by pg_dump, since CREATE EXTENSION brings it back)';

-- Every write to the registry tables, whoever makes it (register_model, a raw INSERT by a
-- member of pgvision_admin, the COPY of a restore), runs register_model's checks here; a
-- row never changes. Models are checked again when a backend loads one.
CREATE OR REPLACE FUNCTION pgvision._registry_write()
RETURNS trigger
LANGUAGE plpython3u VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
AS $python$
@PREAMBLE@
return pv.registry_write(plpy, GD, TD)
$python$;
COMMENT ON FUNCTION pgvision._registry_write() IS
'internal: trigger of pgvision.models and pgvision.pipelines; checks every new row as register_model and pipeline_create do, refuses changes to a row, and deletes of built-in or used ones';

CREATE OR REPLACE TRIGGER registry_write BEFORE INSERT OR UPDATE OR DELETE ON pgvision.models
FOR EACH ROW EXECUTE FUNCTION pgvision._registry_write();
COMMENT ON TRIGGER registry_write ON pgvision.models IS
'every new model passes register_model''s checks; a model never changes; built-in and used models stay';

CREATE OR REPLACE FUNCTION pgvision.register_model(name text, onnx bytea, spec jsonb,
                                                   labels text[] DEFAULT NULL)
RETURNS text
LANGUAGE plpython3u VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
AS $python$
@PREAMBLE@
if name is None or onnx is None or spec is None:
    plpy.error("name, onnx and spec must not be null", sqlstate="22004")
return pv.register_model(plpy, GD, name, onnx, spec, labels)
$python$;
COMMENT ON FUNCTION pgvision.register_model(text, bytea, jsonb, text[]) IS
'registers an ONNX model under a new name after checking it (no external data, standard operators only, outputs as the spec says, runs on a batch); returns its sha256';

CREATE OR REPLACE FUNCTION pgvision.drop_model(name text)
RETURNS void
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    _builtin boolean;
    _pipeline text;
BEGIN
    SELECT m.builtin INTO _builtin FROM pgvision.models m WHERE m.name = drop_model.name;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'model "%" does not exist', drop_model.name USING ERRCODE = 'undefined_object';
    END IF;
    IF _builtin THEN
        RAISE EXCEPTION 'model "%" is installed with the extension', drop_model.name
            USING ERRCODE = 'dependent_objects_still_exist',
                  HINT = 'built-in models go away with DROP EXTENSION pgvision';
    END IF;
    IF drop_model.name = pgvision.default_model() THEN
        RAISE EXCEPTION 'model "%" is the default model', drop_model.name
            USING ERRCODE = 'dependent_objects_still_exist',
                  HINT = 'make another one the default first with pgvision.set_default_model';
    END IF;
    SELECT p.name INTO _pipeline FROM pgvision.pipelines p WHERE p.model = drop_model.name LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'model "%" is used by pipeline "%"', drop_model.name, _pipeline
            USING ERRCODE = 'dependent_objects_still_exist',
                  HINT = 'drop the pipeline first with pgvision.pipeline_drop';
    END IF;
    DELETE FROM pgvision.models m WHERE m.name = drop_model.name;
END
$$;
COMMENT ON FUNCTION pgvision.drop_model(text) IS
'removes a registered model; features computed with it stay in their tables';

CREATE OR REPLACE FUNCTION pgvision._install_builtin_models()
RETURNS text[]
LANGUAGE plpython3u VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
AS $python$
@PREAMBLE@
return pv.install_builtin(plpy, GD, GD["pgvision_runtime_path"])
$python$;
COMMENT ON FUNCTION pgvision._install_builtin_models() IS
'internal: registers the models shipped in the runtime folder; run by CREATE EXTENSION and upgrades';
