-- The runtime folder and what is in it.

-- The preamble calls it first: loading pgvision.so defines pgvision's settings.
CREATE OR REPLACE FUNCTION pgvision._load()
RETURNS void
LANGUAGE c VOLATILE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS '$libdir/pgvision', 'pgvision_load';
COMMENT ON FUNCTION pgvision._load() IS
'internal: does nothing; calling it loads pgvision.so, which defines the pgvision.* settings';

CREATE OR REPLACE FUNCTION pgvision.runtime_info()
RETURNS jsonb
LANGUAGE plpython3u STABLE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
AS $python$
@PREAMBLE@
return pv.runtime_info(GD["pgvision_runtime_path"], plpy, GD)
$python$;
COMMENT ON FUNCTION pgvision.runtime_info() IS
'versions of the Python runtime behind pgvision (runtime folder, Python, numpy, onnxruntime, Pillow) and the pgvision settings as this backend applies them (each cut to its superuser-set _limit)';
