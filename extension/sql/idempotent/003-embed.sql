-- Image bytes in, feature vector out.
-- PARALLEL UNSAFE: every plpy.execute (the registry lookup, the settings, the cancel check)
-- runs in a subtransaction, which PostgreSQL forbids during a parallel operation, so these
-- functions could not run in a parallel worker nor in a leader that has workers.
--
-- The PL/Python functions return a feature as its float4 bytes and pgvision.so makes the
-- vector of them: PL/Python would otherwise send a vector result through pgvector's text
-- input, formatting and parsing every float (see src/vector_bytes.c).

CREATE OR REPLACE FUNCTION pgvision._vector_from_float4(float4_bytes bytea)
RETURNS vector
LANGUAGE c IMMUTABLE STRICT PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS '$libdir/pgvision', 'pgvision_vector_from_float4';
COMMENT ON FUNCTION pgvision._vector_from_float4(bytea) IS
'internal: the vector of native float4 values given as bytes, as the runtime returns features';

CREATE OR REPLACE FUNCTION pgvision._embed_float4(image bytea, model text)
RETURNS bytea
LANGUAGE plpython3u IMMUTABLE STRICT PARALLEL UNSAFE COST 100000
SET search_path = pg_catalog, pg_temp
AS $python$
@PREAMBLE@
return pv.embed_float4(plpy, GD, image, model)
$python$;
COMMENT ON FUNCTION pgvision._embed_float4(bytea, text) IS
'internal: pgvision.embed''s feature as native float4 bytes';

CREATE OR REPLACE FUNCTION pgvision._embed_batch_float4(images bytea[], model text, keep_memory boolean)
RETURNS bytea[]
LANGUAGE plpython3u IMMUTABLE STRICT PARALLEL UNSAFE COST 1000000
SET search_path = pg_catalog, pg_temp
AS $python$
@PREAMBLE@
return pv.embed_batch_float4(plpy, GD, images, model, keep_memory)
$python$;
COMMENT ON FUNCTION pgvision._embed_batch_float4(bytea[], text, boolean) IS
'internal: pgvision.embed_batch''s features as native float4 bytes; keep_memory keeps the model''s activation memory for the next batch until pgvision._release_batch_memory()';

CREATE OR REPLACE FUNCTION pgvision._release_batch_memory()
RETURNS int
LANGUAGE plpython3u VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
AS $python$
if "pgvision_state" not in GD:
    return 0  # nothing loaded: no need to import the runtime for it
@PREAMBLE@
return pv.release_batch_memory(plpy, GD)
$python$;
COMMENT ON FUNCTION pgvision._release_batch_memory() IS
'internal: gives back the activation memory that batches run with keep_memory left in this backend''s loaded models; returns how many models it went through';

CREATE OR REPLACE FUNCTION pgvision.embed(image bytea, model text DEFAULT 'efficientnet_lite0_normalized')
RETURNS vector
LANGUAGE sql IMMUTABLE STRICT PARALLEL UNSAFE COST 100000
SET search_path = pg_catalog, pg_temp
AS $$
SELECT pgvision._vector_from_float4(pgvision._embed_float4(image, model))
$$;
COMMENT ON FUNCTION pgvision.embed(bytea, text) IS
'feature vector of an image (JPEG, PNG, GIF, WebP, BMP or TIFF bytes) computed by a registered model; IMMUTABLE because a model never changes under its name';

CREATE OR REPLACE FUNCTION pgvision.embed_batch(images bytea[], model text DEFAULT 'efficientnet_lite0_normalized')
RETURNS vector[]
LANGUAGE sql IMMUTABLE STRICT PARALLEL UNSAFE COST 1000000
SET search_path = pg_catalog, pg_temp
AS $$
SELECT COALESCE(pg_catalog.array_agg(pgvision._vector_from_float4(f.bytes) ORDER BY f.n), '{}')
FROM pg_catalog.unnest(pgvision._embed_batch_float4(images, model, false)) WITH ORDINALITY AS f (bytes, n)
$$;
COMMENT ON FUNCTION pgvision.embed_batch(bytea[], text) IS
'feature vectors of many images, run through the model pgvision.batch_size at a time; same order as the input, NULL for NULL';
