-- 8-bit versions of registered models: onnxruntime's static quantization, calibrated on the
-- caller's images (python_udf/pgvision_runtime/quantize.py; figures in BENCHMARKS.md).

CREATE OR REPLACE FUNCTION pgvision.quantize_model(source text, name text, calibration text)
RETURNS text
LANGUAGE plpython3u VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
AS $python$
@PREAMBLE@
if source is None or name is None or calibration is None:
    plpy.error("source, name and calibration must not be null", sqlstate="22004")
return pv.quantize_model(plpy, GD, source, name, calibration)
$python$;
COMMENT ON FUNCTION pgvision.quantize_model(text, text, text) IS
'registers name: the model source with 8-bit weights and activations (static QDQ quantization, per-channel weights), calibrated on the first 128 images that the query calibration returns (run as the caller; images that do not decode are skipped with a warning); returns its sha256';

-- writes the registry, as register_model does
REVOKE ALL ON FUNCTION pgvision.quantize_model(text, text, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION pgvision.quantize_model(text, text, text) TO pgvision_admin;
