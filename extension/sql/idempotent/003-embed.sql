-- Image bytes in, feature vector out.
-- PARALLEL UNSAFE: every plpy.execute (the registry lookup, the settings, the cancel check)
-- runs in a subtransaction, which PostgreSQL forbids during a parallel operation, so these
-- functions could not run in a parallel worker nor in a leader that has workers.

CREATE OR REPLACE FUNCTION pgvision.embed(image bytea, model text DEFAULT 'efficientnet_lite0')
RETURNS vector
LANGUAGE plpython3u IMMUTABLE STRICT PARALLEL UNSAFE COST 100000
SET search_path = pg_catalog, pg_temp
AS $python$
@PREAMBLE@
return pv.embed(plpy, GD, image, model)
$python$;
COMMENT ON FUNCTION pgvision.embed(bytea, text) IS
'feature vector of an image (JPEG, PNG, GIF, WebP, BMP or TIFF bytes) computed by a registered model; IMMUTABLE because a model never changes under its name';

CREATE OR REPLACE FUNCTION pgvision.embed_batch(images bytea[], model text DEFAULT 'efficientnet_lite0')
RETURNS vector[]
LANGUAGE plpython3u IMMUTABLE STRICT PARALLEL UNSAFE COST 1000000
SET search_path = pg_catalog, pg_temp
AS $python$
@PREAMBLE@
return pv.embed_batch(plpy, GD, images, model)
$python$;
COMMENT ON FUNCTION pgvision.embed_batch(bytea[], text) IS
'feature vectors of many images, run through the model pgvision.batch_size at a time; same order as the input, NULL for NULL';
