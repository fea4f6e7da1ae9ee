-- Models learned from a table: a registered model with a linear projection, learned from
-- the table's images (PCA-whitening, or a discriminant of its labels), appended to its graph
-- (python_udf/pgvision_runtime/projection.py; figures in BENCHMARKS.md).

CREATE OR REPLACE FUNCTION pgvision.train_projection(source text, name text, tbl regclass,
                                                     image_column name,
                                                     label_column name DEFAULT NULL,
                                                     dims int DEFAULT 256)
RETURNS text
LANGUAGE plpython3u VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
AS $python$
@PREAMBLE@
if source is None or name is None or tbl is None or image_column is None or dims is None:
    plpy.error("source, name, tbl, image_column and dims must not be null", sqlstate="22004")
return pv.train_projection(plpy, GD, source, name, tbl, image_column, label_column, dims)
$python$;
COMMENT ON FUNCTION pgvision.train_projection(text, text, regclass, name, name, int) IS
'registers name: the model source with a linear projection to dims dimensions appended to its feature, learned from the images in tbl.image_column (read as the caller; at most 5000 rows, a repeatable sample of a larger table; images that do not decode are skipped with a warning): PCA-whitening, or with label_column a regularised linear discriminant of its labels, filled up to dims with PCA; returns its sha256';

-- writes the registry, as register_model does
REVOKE ALL ON FUNCTION pgvision.train_projection(text, text, regclass, name, name, int) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION pgvision.train_projection(text, text, regclass, name, name, int) TO pgvision_admin;
