-- The runtime folder and what is in it.

CREATE OR REPLACE FUNCTION pgvision.runtime_info()
RETURNS jsonb
LANGUAGE plpython3u STABLE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
AS $python$
@PREAMBLE@
return pv.runtime_info(GD["pgvision_runtime_path"])
$python$;
COMMENT ON FUNCTION pgvision.runtime_info() IS
'versions of the Python runtime behind pgvision (runtime folder, Python, numpy, onnxruntime, Pillow) as seen by this backend';
