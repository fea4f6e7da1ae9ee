-- pgvision 0.1.0: built by extension/build.py from extension/sql; do not edit
\echo Use "CREATE EXTENSION pgvision" to load this file. \quit

-- incremental/001-registry.sql
-- Model registry and pipelines: state that travels with the database (pg_dump).

CREATE SCHEMA pgvision;
COMMENT ON SCHEMA pgvision IS 'pgvision: reverse image search (models, embedding, search)';

CREATE TABLE pgvision.models (
    name     text PRIMARY KEY,
    sha256   text NOT NULL CHECK (sha256 ~ '^[0-9a-f]{64}$'),
    dim      int NOT NULL CHECK (dim BETWEEN 1 AND 16000),
    spec     jsonb NOT NULL,
    labels   text[],
    onnx     bytea NOT NULL,
    builtin  boolean NOT NULL DEFAULT false,
    created  timestamptz NOT NULL DEFAULT pg_catalog.now()
);
-- Float weights barely compress: don't spend CPU on trying (and keep reads a plain copy).
ALTER TABLE pgvision.models ALTER COLUMN onnx SET STORAGE EXTERNAL;
CREATE INDEX models_sha256_idx ON pgvision.models (sha256);

CREATE TABLE pgvision.pipelines (
    name     text PRIMARY KEY,
    model    text NOT NULL,
    options  jsonb NOT NULL DEFAULT '{}',
    builtin  boolean NOT NULL DEFAULT false,
    created  timestamptz NOT NULL DEFAULT pg_catalog.now()
);

-- Built-in rows come back with CREATE EXTENSION; pg_dump keeps the user's own.
SELECT pg_catalog.pg_extension_config_dump('pgvision.models', 'WHERE NOT builtin');
SELECT pg_catalog.pg_extension_config_dump('pgvision.pipelines', 'WHERE NOT builtin');

-- incremental/002-backfill.sql
-- Backfill bookkeeping for pgvision.embed_table: one progress row per (table, feature
-- column), and the rows whose image could not be embedded. Both are written by the role
-- that runs the backfill; row-level security lets a role see the rows of the tables it can
-- read and write those of the tables it can update.

CREATE TABLE pgvision.backfill_progress (
    tbl             regclass NOT NULL,
    feature_column  name NOT NULL,
    image_column    name NOT NULL,
    key_column      name NOT NULL,
    model           text NOT NULL,
    batch_size      int NOT NULL,
    rows_done       bigint NOT NULL DEFAULT 0,
    rows_left       bigint NOT NULL DEFAULT 0,
    null_images     bigint NOT NULL DEFAULT 0,
    errors          bigint NOT NULL DEFAULT 0,
    rate            double precision NOT NULL DEFAULT 0,
    pid             int NOT NULL DEFAULT pg_catalog.pg_backend_pid(),
    started         timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp(),
    updated         timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp(),
    finished        timestamptz,
    PRIMARY KEY (tbl, feature_column)
);

CREATE TABLE pgvision.backfill_errors (
    tbl             regclass NOT NULL,
    feature_column  name NOT NULL,
    key             text NOT NULL,
    model           text NOT NULL,
    error           text NOT NULL,
    sqlstate        text NOT NULL,
    at              timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp(),
    PRIMARY KEY (tbl, feature_column, key)
);

ALTER TABLE pgvision.backfill_progress ENABLE ROW LEVEL SECURITY;
ALTER TABLE pgvision.backfill_errors ENABLE ROW LEVEL SECURITY;

CREATE POLICY backfill_progress_read ON pgvision.backfill_progress FOR SELECT
    USING (pg_catalog.has_table_privilege(tbl, 'SELECT'));
CREATE POLICY backfill_progress_write ON pgvision.backfill_progress FOR ALL
    USING (pg_catalog.has_any_column_privilege(tbl, 'UPDATE'))
    WITH CHECK (pg_catalog.has_any_column_privilege(tbl, 'UPDATE'));
CREATE POLICY backfill_errors_read ON pgvision.backfill_errors FOR SELECT
    USING (pg_catalog.has_table_privilege(tbl, 'SELECT'));
CREATE POLICY backfill_errors_write ON pgvision.backfill_errors FOR ALL
    USING (pg_catalog.has_any_column_privilege(tbl, 'UPDATE'))
    WITH CHECK (pg_catalog.has_any_column_privilege(tbl, 'UPDATE'));

-- idempotent/001-runtime.sql
-- The runtime folder and what is in it.

CREATE OR REPLACE FUNCTION pgvision.runtime_info()
RETURNS jsonb
LANGUAGE plpython3u STABLE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
AS $python$
# pgvision preamble: put the runtime folder on sys.path once per backend.
import sys
if "pgvision_runtime.sqlapi" not in sys.modules:
    import glob, os, site
    _root = plpy.execute("SELECT pg_catalog.current_setting('pgvision.runtime_path', true) AS p")[0]["p"]
    _root = _root or "@RUNTIME_PATH@"
    _site = glob.glob(os.path.join(_root, "venv", "lib", "python%d.%d" % sys.version_info[:2],
                                   "site-packages"))
    if not _site:
        plpy.error('pgvision runtime not found in "%s"' % _root,
                   hint="run make install, or set pgvision.runtime_path in postgresql.conf",
                   sqlstate="58P01")
    # Any role can SET a custom GUC, and this folder decides which code the server runs:
    # load only from folders that the root or the server's own user owns and nobody else
    # can write, as ssh and sudo do with their files.
    for _p in (_root, _site[0], os.path.join(_site[0], "pgvision_runtime")):
        _st = os.stat(_p)
        if _st.st_uid not in (0, os.geteuid()) or _st.st_mode & 0o022:
            plpy.error('pgvision runtime folder "%s" is not owned by root or is writable by others' % _p,
                       hint="install the runtime with make install, or fix the folder's owner and mode",
                       sqlstate="42501")
    # Keep the user's and the system's site-packages from shadowing the pinned runtime.
    sys.path[:] = [p for p in sys.path if "-packages" not in p]
    _before = list(sys.path)
    site.addsitedir(_site[0])
    sys.path[:] = [p for p in sys.path if p not in _before] + _before
    import pgvision_runtime.sqlapi
    GD["pgvision_runtime_path"] = _root
from pgvision_runtime import sqlapi as pv
return pv.runtime_info(GD["pgvision_runtime_path"])
$python$;
COMMENT ON FUNCTION pgvision.runtime_info() IS
'versions of the Python runtime behind pgvision (runtime folder, Python, numpy, onnxruntime, Pillow) as seen by this backend';

-- idempotent/002-models.sql
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

CREATE OR REPLACE FUNCTION pgvision.register_model(name text, onnx bytea, spec jsonb,
                                                   labels text[] DEFAULT NULL)
RETURNS text
LANGUAGE plpython3u VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
AS $python$
# pgvision preamble: put the runtime folder on sys.path once per backend.
import sys
if "pgvision_runtime.sqlapi" not in sys.modules:
    import glob, os, site
    _root = plpy.execute("SELECT pg_catalog.current_setting('pgvision.runtime_path', true) AS p")[0]["p"]
    _root = _root or "@RUNTIME_PATH@"
    _site = glob.glob(os.path.join(_root, "venv", "lib", "python%d.%d" % sys.version_info[:2],
                                   "site-packages"))
    if not _site:
        plpy.error('pgvision runtime not found in "%s"' % _root,
                   hint="run make install, or set pgvision.runtime_path in postgresql.conf",
                   sqlstate="58P01")
    # Any role can SET a custom GUC, and this folder decides which code the server runs:
    # load only from folders that the root or the server's own user owns and nobody else
    # can write, as ssh and sudo do with their files.
    for _p in (_root, _site[0], os.path.join(_site[0], "pgvision_runtime")):
        _st = os.stat(_p)
        if _st.st_uid not in (0, os.geteuid()) or _st.st_mode & 0o022:
            plpy.error('pgvision runtime folder "%s" is not owned by root or is writable by others' % _p,
                       hint="install the runtime with make install, or fix the folder's owner and mode",
                       sqlstate="42501")
    # Keep the user's and the system's site-packages from shadowing the pinned runtime.
    sys.path[:] = [p for p in sys.path if "-packages" not in p]
    _before = list(sys.path)
    site.addsitedir(_site[0])
    sys.path[:] = [p for p in sys.path if p not in _before] + _before
    import pgvision_runtime.sqlapi
    GD["pgvision_runtime_path"] = _root
from pgvision_runtime import sqlapi as pv
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
# pgvision preamble: put the runtime folder on sys.path once per backend.
import sys
if "pgvision_runtime.sqlapi" not in sys.modules:
    import glob, os, site
    _root = plpy.execute("SELECT pg_catalog.current_setting('pgvision.runtime_path', true) AS p")[0]["p"]
    _root = _root or "@RUNTIME_PATH@"
    _site = glob.glob(os.path.join(_root, "venv", "lib", "python%d.%d" % sys.version_info[:2],
                                   "site-packages"))
    if not _site:
        plpy.error('pgvision runtime not found in "%s"' % _root,
                   hint="run make install, or set pgvision.runtime_path in postgresql.conf",
                   sqlstate="58P01")
    # Any role can SET a custom GUC, and this folder decides which code the server runs:
    # load only from folders that the root or the server's own user owns and nobody else
    # can write, as ssh and sudo do with their files.
    for _p in (_root, _site[0], os.path.join(_site[0], "pgvision_runtime")):
        _st = os.stat(_p)
        if _st.st_uid not in (0, os.geteuid()) or _st.st_mode & 0o022:
            plpy.error('pgvision runtime folder "%s" is not owned by root or is writable by others' % _p,
                       hint="install the runtime with make install, or fix the folder's owner and mode",
                       sqlstate="42501")
    # Keep the user's and the system's site-packages from shadowing the pinned runtime.
    sys.path[:] = [p for p in sys.path if "-packages" not in p]
    _before = list(sys.path)
    site.addsitedir(_site[0])
    sys.path[:] = [p for p in sys.path if p not in _before] + _before
    import pgvision_runtime.sqlapi
    GD["pgvision_runtime_path"] = _root
from pgvision_runtime import sqlapi as pv
return pv.install_builtin(plpy, GD, GD["pgvision_runtime_path"])
$python$;
COMMENT ON FUNCTION pgvision._install_builtin_models() IS
'internal: registers the models shipped in the runtime folder; run by CREATE EXTENSION and upgrades';

-- idempotent/003-embed.sql
-- Image bytes in, feature vector out.
-- PARALLEL UNSAFE: every plpy.execute (the registry lookup, the settings, the cancel check)
-- runs in a subtransaction, which PostgreSQL forbids during a parallel operation, so these
-- functions could not run in a parallel worker nor in a leader that has workers.

CREATE OR REPLACE FUNCTION pgvision.embed(image bytea, model text DEFAULT 'efficientnet_lite0')
RETURNS vector
LANGUAGE plpython3u IMMUTABLE STRICT PARALLEL UNSAFE COST 100000
SET search_path = pg_catalog, pg_temp
AS $python$
# pgvision preamble: put the runtime folder on sys.path once per backend.
import sys
if "pgvision_runtime.sqlapi" not in sys.modules:
    import glob, os, site
    _root = plpy.execute("SELECT pg_catalog.current_setting('pgvision.runtime_path', true) AS p")[0]["p"]
    _root = _root or "@RUNTIME_PATH@"
    _site = glob.glob(os.path.join(_root, "venv", "lib", "python%d.%d" % sys.version_info[:2],
                                   "site-packages"))
    if not _site:
        plpy.error('pgvision runtime not found in "%s"' % _root,
                   hint="run make install, or set pgvision.runtime_path in postgresql.conf",
                   sqlstate="58P01")
    # Any role can SET a custom GUC, and this folder decides which code the server runs:
    # load only from folders that the root or the server's own user owns and nobody else
    # can write, as ssh and sudo do with their files.
    for _p in (_root, _site[0], os.path.join(_site[0], "pgvision_runtime")):
        _st = os.stat(_p)
        if _st.st_uid not in (0, os.geteuid()) or _st.st_mode & 0o022:
            plpy.error('pgvision runtime folder "%s" is not owned by root or is writable by others' % _p,
                       hint="install the runtime with make install, or fix the folder's owner and mode",
                       sqlstate="42501")
    # Keep the user's and the system's site-packages from shadowing the pinned runtime.
    sys.path[:] = [p for p in sys.path if "-packages" not in p]
    _before = list(sys.path)
    site.addsitedir(_site[0])
    sys.path[:] = [p for p in sys.path if p not in _before] + _before
    import pgvision_runtime.sqlapi
    GD["pgvision_runtime_path"] = _root
from pgvision_runtime import sqlapi as pv
return pv.embed(plpy, GD, image, model)
$python$;
COMMENT ON FUNCTION pgvision.embed(bytea, text) IS
'feature vector of an image (JPEG, PNG, GIF, WebP, BMP or TIFF bytes) computed by a registered model; IMMUTABLE because a model never changes under its name';

CREATE OR REPLACE FUNCTION pgvision.embed_batch(images bytea[], model text DEFAULT 'efficientnet_lite0')
RETURNS vector[]
LANGUAGE plpython3u IMMUTABLE STRICT PARALLEL UNSAFE COST 1000000
SET search_path = pg_catalog, pg_temp
AS $python$
# pgvision preamble: put the runtime folder on sys.path once per backend.
import sys
if "pgvision_runtime.sqlapi" not in sys.modules:
    import glob, os, site
    _root = plpy.execute("SELECT pg_catalog.current_setting('pgvision.runtime_path', true) AS p")[0]["p"]
    _root = _root or "@RUNTIME_PATH@"
    _site = glob.glob(os.path.join(_root, "venv", "lib", "python%d.%d" % sys.version_info[:2],
                                   "site-packages"))
    if not _site:
        plpy.error('pgvision runtime not found in "%s"' % _root,
                   hint="run make install, or set pgvision.runtime_path in postgresql.conf",
                   sqlstate="58P01")
    # Any role can SET a custom GUC, and this folder decides which code the server runs:
    # load only from folders that the root or the server's own user owns and nobody else
    # can write, as ssh and sudo do with their files.
    for _p in (_root, _site[0], os.path.join(_site[0], "pgvision_runtime")):
        _st = os.stat(_p)
        if _st.st_uid not in (0, os.geteuid()) or _st.st_mode & 0o022:
            plpy.error('pgvision runtime folder "%s" is not owned by root or is writable by others' % _p,
                       hint="install the runtime with make install, or fix the folder's owner and mode",
                       sqlstate="42501")
    # Keep the user's and the system's site-packages from shadowing the pinned runtime.
    sys.path[:] = [p for p in sys.path if "-packages" not in p]
    _before = list(sys.path)
    site.addsitedir(_site[0])
    sys.path[:] = [p for p in sys.path if p not in _before] + _before
    import pgvision_runtime.sqlapi
    GD["pgvision_runtime_path"] = _root
from pgvision_runtime import sqlapi as pv
return pv.embed_batch(plpy, GD, images, model)
$python$;
COMMENT ON FUNCTION pgvision.embed_batch(bytea[], text) IS
'feature vectors of many images, run through the model pgvision.batch_size at a time; same order as the input, NULL for NULL';

-- idempotent/004-classify.sql
-- Classification with the model's logits output.

CREATE OR REPLACE FUNCTION pgvision.classify(image bytea, k int DEFAULT 5,
                                             model text DEFAULT 'efficientnet_lite0')
RETURNS TABLE (label text, score real)
LANGUAGE plpython3u STABLE STRICT PARALLEL UNSAFE COST 100000 ROWS 5
SET search_path = pg_catalog, pg_temp
AS $python$
# pgvision preamble: put the runtime folder on sys.path once per backend.
import sys
if "pgvision_runtime.sqlapi" not in sys.modules:
    import glob, os, site
    _root = plpy.execute("SELECT pg_catalog.current_setting('pgvision.runtime_path', true) AS p")[0]["p"]
    _root = _root or "@RUNTIME_PATH@"
    _site = glob.glob(os.path.join(_root, "venv", "lib", "python%d.%d" % sys.version_info[:2],
                                   "site-packages"))
    if not _site:
        plpy.error('pgvision runtime not found in "%s"' % _root,
                   hint="run make install, or set pgvision.runtime_path in postgresql.conf",
                   sqlstate="58P01")
    # Any role can SET a custom GUC, and this folder decides which code the server runs:
    # load only from folders that the root or the server's own user owns and nobody else
    # can write, as ssh and sudo do with their files.
    for _p in (_root, _site[0], os.path.join(_site[0], "pgvision_runtime")):
        _st = os.stat(_p)
        if _st.st_uid not in (0, os.geteuid()) or _st.st_mode & 0o022:
            plpy.error('pgvision runtime folder "%s" is not owned by root or is writable by others' % _p,
                       hint="install the runtime with make install, or fix the folder's owner and mode",
                       sqlstate="42501")
    # Keep the user's and the system's site-packages from shadowing the pinned runtime.
    sys.path[:] = [p for p in sys.path if "-packages" not in p]
    _before = list(sys.path)
    site.addsitedir(_site[0])
    sys.path[:] = [p for p in sys.path if p not in _before] + _before
    import pgvision_runtime.sqlapi
    GD["pgvision_runtime_path"] = _root
from pgvision_runtime import sqlapi as pv
return pv.classify(plpy, GD, image, k, model)
$python$;
COMMENT ON FUNCTION pgvision.classify(bytea, int, text) IS
'the k most likely classes of an image (ImageNet-1k for the default model), with softmax probabilities, most likely first';

-- idempotent/005-pipelines.sql
-- AnalyticDB-style pipelines, so SQL written for open_analytic.pipeline_run ports over.

COMMENT ON TABLE pgvision.pipelines IS
'named feature-extraction pipelines: a model and options, run by pgvision.pipeline_run';

CREATE OR REPLACE FUNCTION pgvision.pipeline_create(name text, model text, options jsonb DEFAULT '{}')
RETURNS text
LANGUAGE plpython3u VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
AS $python$
# pgvision preamble: put the runtime folder on sys.path once per backend.
import sys
if "pgvision_runtime.sqlapi" not in sys.modules:
    import glob, os, site
    _root = plpy.execute("SELECT pg_catalog.current_setting('pgvision.runtime_path', true) AS p")[0]["p"]
    _root = _root or "@RUNTIME_PATH@"
    _site = glob.glob(os.path.join(_root, "venv", "lib", "python%d.%d" % sys.version_info[:2],
                                   "site-packages"))
    if not _site:
        plpy.error('pgvision runtime not found in "%s"' % _root,
                   hint="run make install, or set pgvision.runtime_path in postgresql.conf",
                   sqlstate="58P01")
    # Any role can SET a custom GUC, and this folder decides which code the server runs:
    # load only from folders that the root or the server's own user owns and nobody else
    # can write, as ssh and sudo do with their files.
    for _p in (_root, _site[0], os.path.join(_site[0], "pgvision_runtime")):
        _st = os.stat(_p)
        if _st.st_uid not in (0, os.geteuid()) or _st.st_mode & 0o022:
            plpy.error('pgvision runtime folder "%s" is not owned by root or is writable by others' % _p,
                       hint="install the runtime with make install, or fix the folder's owner and mode",
                       sqlstate="42501")
    # Keep the user's and the system's site-packages from shadowing the pinned runtime.
    sys.path[:] = [p for p in sys.path if "-packages" not in p]
    _before = list(sys.path)
    site.addsitedir(_site[0])
    sys.path[:] = [p for p in sys.path if p not in _before] + _before
    import pgvision_runtime.sqlapi
    GD["pgvision_runtime_path"] = _root
from pgvision_runtime import sqlapi as pv
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
# pgvision preamble: put the runtime folder on sys.path once per backend.
import sys
if "pgvision_runtime.sqlapi" not in sys.modules:
    import glob, os, site
    _root = plpy.execute("SELECT pg_catalog.current_setting('pgvision.runtime_path', true) AS p")[0]["p"]
    _root = _root or "@RUNTIME_PATH@"
    _site = glob.glob(os.path.join(_root, "venv", "lib", "python%d.%d" % sys.version_info[:2],
                                   "site-packages"))
    if not _site:
        plpy.error('pgvision runtime not found in "%s"' % _root,
                   hint="run make install, or set pgvision.runtime_path in postgresql.conf",
                   sqlstate="58P01")
    # Any role can SET a custom GUC, and this folder decides which code the server runs:
    # load only from folders that the root or the server's own user owns and nobody else
    # can write, as ssh and sudo do with their files.
    for _p in (_root, _site[0], os.path.join(_site[0], "pgvision_runtime")):
        _st = os.stat(_p)
        if _st.st_uid not in (0, os.geteuid()) or _st.st_mode & 0o022:
            plpy.error('pgvision runtime folder "%s" is not owned by root or is writable by others' % _p,
                       hint="install the runtime with make install, or fix the folder's owner and mode",
                       sqlstate="42501")
    # Keep the user's and the system's site-packages from shadowing the pinned runtime.
    sys.path[:] = [p for p in sys.path if "-packages" not in p]
    _before = list(sys.path)
    site.addsitedir(_site[0])
    sys.path[:] = [p for p in sys.path if p not in _before] + _before
    import pgvision_runtime.sqlapi
    GD["pgvision_runtime_path"] = _root
from pgvision_runtime import sqlapi as pv
return pv.pipeline_run(plpy, GD, name, image)
$python$;
COMMENT ON FUNCTION pgvision.pipeline_run(text, bytea) IS
'runs a pipeline on image bytes; returns {"pipeline", "model", "output", "dim", "normalized", "feature" (or "logits"): [...]}';

CREATE OR REPLACE FUNCTION pgvision.pipeline_run_dist_random(name text, image bytea)
RETURNS jsonb
LANGUAGE sql VOLATILE STRICT PARALLEL UNSAFE COST 100000
SET search_path = pg_catalog, pg_temp
AS $$ SELECT pgvision.pipeline_run(name, image) $$;
COMMENT ON FUNCTION pgvision.pipeline_run_dist_random(text, bytea) IS
'AnalyticDB''s name for running a pipeline on a random node; on a single server it runs locally';

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

-- idempotent/010-backfill.sql
-- Features for a whole table: the pgvision.embed_table backfill (batch by batch, one
-- transaction per batch) and automatic embedding with a trigger.

COMMENT ON TABLE pgvision.backfill_progress IS
'progress of pgvision.embed_table, one row per table and feature column, committed with every batch; a role sees the rows of the tables it can read';
COMMENT ON COLUMN pgvision.backfill_progress.tbl IS 'the table being backfilled';
COMMENT ON COLUMN pgvision.backfill_progress.feature_column IS 'the vector column being filled';
COMMENT ON COLUMN pgvision.backfill_progress.image_column IS 'the bytea column the images are read from';
COMMENT ON COLUMN pgvision.backfill_progress.key_column IS 'the unique column rows are addressed by (the primary key unless given)';
COMMENT ON COLUMN pgvision.backfill_progress.model IS 'the model computing the features';
COMMENT ON COLUMN pgvision.backfill_progress.batch_size IS 'rows per batch, each batch one model call and one transaction';
COMMENT ON COLUMN pgvision.backfill_progress.rows_done IS 'rows embedded by this run';
COMMENT ON COLUMN pgvision.backfill_progress.rows_left IS 'rows with a NULL feature this run has not looked at yet (an estimate: counted at the start)';
COMMENT ON COLUMN pgvision.backfill_progress.null_images IS 'rows skipped by this run because their image is NULL';
COMMENT ON COLUMN pgvision.backfill_progress.errors IS 'rows this run could not embed; see pgvision.backfill_errors';
COMMENT ON COLUMN pgvision.backfill_progress.rate IS 'rows embedded per second since the start of this run';
COMMENT ON COLUMN pgvision.backfill_progress.pid IS 'process id of the backend running it, as in pg_stat_activity';
COMMENT ON COLUMN pgvision.backfill_progress.started IS 'when this run started';
COMMENT ON COLUMN pgvision.backfill_progress.updated IS 'when the last batch was committed';
COMMENT ON COLUMN pgvision.backfill_progress.finished IS 'when this run finished; NULL while it runs or if it was interrupted';

COMMENT ON TABLE pgvision.backfill_errors IS
'rows pgvision.embed_table could not embed; later runs skip them unless called with retry_errors => true';
COMMENT ON COLUMN pgvision.backfill_errors.tbl IS 'the table of the row';
COMMENT ON COLUMN pgvision.backfill_errors.feature_column IS 'the vector column that was being filled';
COMMENT ON COLUMN pgvision.backfill_errors.key IS 'the key of the row, as text';
COMMENT ON COLUMN pgvision.backfill_errors.model IS 'the model that was used';
COMMENT ON COLUMN pgvision.backfill_errors.error IS 'the error message';
COMMENT ON COLUMN pgvision.backfill_errors.sqlstate IS 'the error''s SQLSTATE, e.g. 22P03 for bytes that are not an image';
COMMENT ON COLUMN pgvision.backfill_errors.at IS 'when the error happened';

COMMENT ON POLICY backfill_progress_read ON pgvision.backfill_progress IS
'a role sees the progress of the tables it can SELECT from';
COMMENT ON POLICY backfill_progress_write ON pgvision.backfill_progress IS
'a role writes the progress of the tables it can UPDATE, as pgvision.embed_table does for it';
COMMENT ON POLICY backfill_errors_read ON pgvision.backfill_errors IS
'a role sees the bad rows of the tables it can SELECT from';
COMMENT ON POLICY backfill_errors_write ON pgvision.backfill_errors IS
'a role records or deletes the bad rows of the tables it can UPDATE (deleting one makes embed_table try it again)';

-- Checks that tbl.image_column (bytea) can be embedded by model into tbl.feature_column (a
-- pgvector column of the model's dimensions); returns the feature column's type name.
CREATE OR REPLACE FUNCTION pgvision._embed_columns(rel regclass, image_col name, feature_col name,
                                                   model_name text)
RETURNS text
LANGUAGE plpgsql STABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    _kind "char";
    _dim int;
    _type oid;
    _typmod int;
    _generated "char";
BEGIN
    IF rel IS NULL OR image_col IS NULL OR feature_col IS NULL OR model_name IS NULL THEN
        RAISE EXCEPTION 'table, image column, feature column and model must not be null'
            USING ERRCODE = 'null_value_not_allowed';
    END IF;
    SELECT c.relkind INTO _kind FROM pg_catalog.pg_class c WHERE c.oid = rel;
    IF _kind IS NULL OR _kind NOT IN ('r', 'p') THEN
        RAISE EXCEPTION '% is not a table', rel USING ERRCODE = 'wrong_object_type';
    END IF;
    SELECT m.dim INTO _dim FROM pgvision.models m WHERE m.name = model_name;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'model "%" does not exist', model_name USING ERRCODE = 'undefined_object',
            HINT = 'SELECT name FROM pgvision.models lists the registered models';
    END IF;

    SELECT a.atttypid INTO _type FROM pg_catalog.pg_attribute a
    WHERE a.attrelid = rel AND a.attname = image_col AND a.attnum > 0 AND NOT a.attisdropped;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'column "%" of relation % does not exist', image_col, rel
            USING ERRCODE = 'undefined_column';
    END IF;
    IF _type <> 'pg_catalog.bytea'::pg_catalog.regtype THEN
        RAISE EXCEPTION 'image column "%" is of type %, not bytea', image_col,
            pg_catalog.format_type(_type, NULL) USING ERRCODE = 'datatype_mismatch';
    END IF;

    SELECT a.atttypid, a.atttypmod, a.attgenerated INTO _type, _typmod, _generated
    FROM pg_catalog.pg_attribute a
    WHERE a.attrelid = rel AND a.attname = feature_col AND a.attnum > 0 AND NOT a.attisdropped;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'column "%" of relation % does not exist', feature_col, rel
            USING ERRCODE = 'undefined_column';
    END IF;
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_type t
                   JOIN pg_catalog.pg_extension e ON e.extnamespace = t.typnamespace
                   WHERE t.oid = _type AND e.extname = 'vector' AND t.typname IN ('vector', 'halfvec')) THEN
        RAISE EXCEPTION 'feature column "%" is of type %, not vector', feature_col,
            pg_catalog.format_type(_type, _typmod) USING ERRCODE = 'datatype_mismatch',
            HINT = pg_catalog.format('features of model "%s" fit a vector(%s) column', model_name, _dim);
    END IF;
    IF _generated <> '' THEN
        RAISE EXCEPTION 'feature column "%" is a generated column', feature_col
            USING ERRCODE = 'generated_always';
    END IF;
    IF _typmod > 0 AND _typmod <> _dim THEN
        RAISE EXCEPTION 'feature column "%" has % dimensions, but model "%" returns %',
            feature_col, _typmod, model_name, _dim USING ERRCODE = 'datatype_mismatch';
    END IF;
    RETURN pg_catalog.format_type(_type, NULL);
END
$$;
COMMENT ON FUNCTION pgvision._embed_columns(regclass, name, name, text) IS
'internal: checks that an image column (bytea) can be embedded by a model into a feature column (vector of its dimensions); returns the feature column''s type';

-- The column rows are addressed by: key_col if given (it must be NOT NULL with a unique
-- index of its own), else the single-column primary key.
CREATE OR REPLACE FUNCTION pgvision._embed_key(rel regclass, key_col name)
RETURNS name
LANGUAGE plpgsql STABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    _key name;
BEGIN
    IF key_col IS NULL THEN
        SELECT a.attname INTO _key
        FROM pg_catalog.pg_index i
        JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]
        WHERE i.indrelid = rel AND i.indisprimary AND i.indnkeyatts = 1;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'table % has no single-column primary key', rel
                USING ERRCODE = 'object_not_in_prerequisite_state',
                      HINT = 'name a NOT NULL column with a unique index with key_column => ''column''';
        END IF;
        RETURN _key;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_attribute a
                   WHERE a.attrelid = rel AND a.attname = key_col AND a.attnum > 0 AND NOT a.attisdropped) THEN
        RAISE EXCEPTION 'column "%" of relation % does not exist', key_col, rel
            USING ERRCODE = 'undefined_column';
    END IF;
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_attribute a
                   JOIN pg_catalog.pg_index i ON i.indrelid = a.attrelid AND i.indkey[0] = a.attnum
                   WHERE a.attrelid = rel AND a.attname = key_col AND a.attnotnull
                     AND i.indisunique AND i.indisvalid AND i.indnkeyatts = 1 AND i.indpred IS NULL) THEN
        RAISE EXCEPTION 'key column "%" of % is not a unique NOT NULL column', key_col, rel
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'rows are addressed by the key: it needs NOT NULL and a unique index on it alone';
    END IF;
    RETURN key_col;
END
$$;
COMMENT ON FUNCTION pgvision._embed_key(regclass, name) IS
'internal: the column embed_table addresses rows by: the given one if it is NOT NULL and unique, else the single-column primary key';

CREATE OR REPLACE FUNCTION pgvision._embed_table_start(rel regclass, image_col name, feature_col name,
                                                       model_name text, nrows int, key_col name,
                                                       retry boolean)
RETURNS name
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    _key name;
    _todo bigint;
    _skipped bigint := 0;
BEGIN
    PERFORM pgvision._embed_columns(rel, image_col, feature_col, model_name);
    IF nrows IS NULL OR nrows < 1 THEN
        RAISE EXCEPTION 'batch_size must be at least 1, not %', coalesce(nrows::text, 'null')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    _key := pgvision._embed_key(rel, key_col);
    IF NOT pg_catalog.has_column_privilege(rel, feature_col, 'UPDATE') THEN
        RAISE EXCEPTION 'permission denied for table %', rel USING ERRCODE = 'insufficient_privilege',
            HINT = pg_catalog.format('embed_table needs UPDATE on column %I', feature_col);
    END IF;
    IF retry THEN
        DELETE FROM pgvision.backfill_errors e WHERE e.tbl = rel AND e.feature_column = feature_col;
    END IF;
    EXECUTE pg_catalog.format('SELECT pg_catalog.count(*) FROM %s AS t WHERE t.%I IS NULL', rel, feature_col)
        INTO _todo;
    IF NOT retry THEN
        EXECUTE pg_catalog.format(
            'SELECT pg_catalog.count(*) FROM pgvision.backfill_errors AS e JOIN %s AS t'
            ' ON t.%I::text = e.key WHERE e.tbl = $1 AND e.feature_column = $2 AND t.%I IS NULL',
            rel, _key, feature_col)
            INTO _skipped USING rel, feature_col;
    END IF;
    INSERT INTO pgvision.backfill_progress AS p
        (tbl, feature_column, image_column, key_column, model, batch_size, rows_left)
    VALUES (rel, feature_col, image_col, _key, model_name, nrows, _todo - _skipped)
    ON CONFLICT (tbl, feature_column) DO UPDATE
        SET image_column = EXCLUDED.image_column, key_column = EXCLUDED.key_column,
            model = EXCLUDED.model, batch_size = EXCLUDED.batch_size, rows_done = 0,
            rows_left = EXCLUDED.rows_left, null_images = 0, errors = 0, rate = 0,
            pid = EXCLUDED.pid, started = EXCLUDED.started, updated = EXCLUDED.updated,
            finished = NULL;
    IF _skipped > 0 THEN
        RAISE NOTICE '%: % rows to embed, skipping % rows recorded in pgvision.backfill_errors',
            rel, _todo - _skipped, _skipped
            USING HINT = 'CALL pgvision.embed_table(..., retry_errors => true) tries them again';
    ELSE
        RAISE NOTICE '%: % rows to embed', rel, _todo;
    END IF;
    RETURN _key;
END
$$;
COMMENT ON FUNCTION pgvision._embed_table_start(regclass, name, name, text, int, name, boolean) IS
'internal: checks the arguments of pgvision.embed_table and starts its progress row; returns the key column';

-- One batch: the next nrows rows after after_key (in key order) whose feature is NULL,
-- embedded with one embed_batch call; if that fails on bad data, the rows are embedded one
-- at a time and those that fail are recorded in pgvision.backfill_errors. Returns the last
-- key of the batch, or NULL when there is nothing left (and marks the run finished).
-- The UPDATE of the user's table runs with the caller's search_path (the statement itself
-- names everything with its schema), so the table's own triggers work as they do for the
-- caller's UPDATEs.
CREATE OR REPLACE FUNCTION pgvision._embed_table_batch(rel regclass, image_col name, feature_col name,
                                                       model_name text, nrows int, key_col name,
                                                       retry boolean, after_key text,
                                                       caller_search_path text)
RETURNS text
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    _keytype text;
    _feattype text;
    _keys text[];
    _images bytea[];
    _features text[];
    _n int;
    _nulls int := 0;
    _failed int := 0;
    _done bigint := 0;
    _msg text;
    _state text;
    _p pgvision.backfill_progress;
BEGIN
    SELECT pg_catalog.format_type(a.atttypid, NULL) INTO _keytype FROM pg_catalog.pg_attribute a
    WHERE a.attrelid = rel AND a.attname = key_col AND NOT a.attisdropped;
    SELECT pg_catalog.format_type(a.atttypid, NULL) INTO _feattype FROM pg_catalog.pg_attribute a
    WHERE a.attrelid = rel AND a.attname = feature_col AND NOT a.attisdropped;

    -- Keyset pagination on the key's unique index: each batch reads only rows after the
    -- previous one, so a run is linear in the table's size and always ends.
    EXECUTE pg_catalog.format(
        'SELECT pg_catalog.array_agg(b.k::text ORDER BY b.k), pg_catalog.array_agg(b.img ORDER BY b.k)'
        ' FROM (SELECT t.%1$I AS k, t.%2$I AS img FROM %3$s AS t WHERE t.%4$I IS NULL %5$s %6$s'
        '       ORDER BY t.%1$I LIMIT $4 FOR UPDATE OF t) AS b',
        key_col, image_col, rel, feature_col,
        CASE WHEN after_key IS NOT NULL THEN pg_catalog.format('AND t.%I > $1::%s', key_col, _keytype) END,
        CASE WHEN NOT retry THEN pg_catalog.format(
            'AND NOT EXISTS (SELECT FROM pgvision.backfill_errors AS e WHERE e.tbl = $2'
            ' AND e.feature_column = $3 AND e.key = t.%I::text)', key_col) END)
        INTO _keys, _images USING after_key, rel, feature_col, nrows;

    _n := coalesce(pg_catalog.array_length(_keys, 1), 0);
    IF _n = 0 THEN
        UPDATE pgvision.backfill_progress AS p
        SET rows_left = 0, updated = pg_catalog.clock_timestamp(), finished = pg_catalog.clock_timestamp()
        WHERE p.tbl = rel AND p.feature_column = feature_col
        RETURNING p.* INTO _p;
        RAISE NOTICE '%: embedded % rows in % s (% rows/s), % failed, % without image',
            rel, _p.rows_done, round(extract(epoch FROM _p.finished - _p.started), 1),
            round(_p.rate::numeric, 1), _p.errors, _p.null_images;
        RETURN NULL;
    END IF;

    FOR i IN 1 .. _n LOOP
        IF _images[i] IS NULL THEN
            _nulls := _nulls + 1;
        END IF;
    END LOOP;
    IF _nulls < _n THEN
        BEGIN
            _features := pgvision.embed_batch(_images, model_name)::text[];
        EXCEPTION WHEN data_exception OR program_limit_exceeded THEN
            -- Some image is bad: embed one at a time and record those that fail.
            _features := pg_catalog.array_fill(NULL::text, ARRAY[_n]);
            FOR i IN 1 .. _n LOOP
                CONTINUE WHEN _images[i] IS NULL;
                BEGIN
                    _features[i] := pgvision.embed(_images[i], model_name)::text;
                EXCEPTION WHEN data_exception OR program_limit_exceeded THEN
                    GET STACKED DIAGNOSTICS _msg = MESSAGE_TEXT, _state = RETURNED_SQLSTATE;
                    INSERT INTO pgvision.backfill_errors AS e
                        (tbl, feature_column, key, model, error, sqlstate)
                    VALUES (rel, feature_col, _keys[i], model_name, _msg, _state)
                    ON CONFLICT (tbl, feature_column, key) DO UPDATE
                        SET model = EXCLUDED.model, error = EXCLUDED.error,
                            sqlstate = EXCLUDED.sqlstate, at = EXCLUDED.at;
                    _failed := _failed + 1;
                END;
            END LOOP;
        END;
        PERFORM pg_catalog.set_config('search_path', caller_search_path, true);
        EXECUTE pg_catalog.format(
            'UPDATE %1$s AS t SET %2$I = u.f::%3$s'
            ' FROM ROWS FROM (pg_catalog.unnest($1::text[]), pg_catalog.unnest($2::text[])) AS u (k, f)'
            ' WHERE t.%4$I = u.k::%5$s AND u.f IS NOT NULL',
            rel, feature_col, _feattype, key_col, _keytype)
            USING _keys, _features;
        GET DIAGNOSTICS _done = ROW_COUNT;
        PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);
    END IF;

    UPDATE pgvision.backfill_progress AS p
    SET rows_done = p.rows_done + _done, null_images = p.null_images + _nulls,
        errors = p.errors + _failed, rows_left = greatest(p.rows_left - _n, 0),
        updated = pg_catalog.clock_timestamp(),
        rate = (p.rows_done + _done)
               / greatest(extract(epoch FROM pg_catalog.clock_timestamp() - p.started), 0.001)
    WHERE p.tbl = rel AND p.feature_column = feature_col
    RETURNING p.* INTO _p;
    RAISE NOTICE '%: % rows embedded, % left, % failed, % without image, % rows/s',
        rel, _p.rows_done, _p.rows_left, _p.errors, _p.null_images, round(_p.rate::numeric, 1);
    RETURN _keys[_n];
END
$$;
COMMENT ON FUNCTION pgvision._embed_table_batch(regclass, name, name, text, int, name, boolean, text, text) IS
'internal: embeds the next batch of pgvision.embed_table and records its progress; returns the batch''s last key, NULL when done';

-- No SET clause here: a procedure with one cannot COMMIT. The body only calls
-- schema-qualified functions with arguments of their exact types, and the work is done by
-- the functions above, which pin search_path.
CREATE OR REPLACE PROCEDURE pgvision.embed_table(tbl regclass, image_column name, feature_column name,
                                                 model text DEFAULT 'efficientnet_lite0',
                                                 batch_size int DEFAULT 64,
                                                 key_column name DEFAULT NULL,
                                                 retry_errors boolean DEFAULT false)
LANGUAGE plpgsql
AS $$
DECLARE
    _key name;
    _after text;
BEGIN
    _key := pgvision._embed_table_start(tbl, image_column, feature_column, model, batch_size,
                                        key_column, retry_errors);
    COMMIT;
    LOOP
        _after := pgvision._embed_table_batch(tbl, image_column, feature_column, model, batch_size,
                                              _key, retry_errors, _after,
                                              pg_catalog.current_setting('search_path'));
        COMMIT;
        EXIT WHEN _after IS NULL;
    END LOOP;
END
$$;
COMMENT ON PROCEDURE pgvision.embed_table(regclass, name, name, text, int, name, boolean) IS
'fills the NULL features of a table from its images, batch_size rows per model call, committing after each batch; progress in pgvision.backfill_progress, bad images in pgvision.backfill_errors; CALL it outside a transaction block; can be interrupted and run again';

-- Automatic embedding: one generic trigger function, told the columns and the model by the
-- trigger's arguments.
CREATE OR REPLACE FUNCTION pgvision._auto_embed()
RETURNS trigger
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    _image bytea;
BEGIN
    -- TG_ARGV: image column, feature column, model
    EXECUTE pg_catalog.format('SELECT ($1).%I', TG_ARGV[0]) INTO _image USING NEW;
    -- The feature travels as pgvector's text form, which reads back exactly.
    RETURN pg_catalog.jsonb_populate_record(
        NEW, pg_catalog.jsonb_build_object(TG_ARGV[1], pgvision.embed(_image, TG_ARGV[2])));
END
$$;
COMMENT ON FUNCTION pgvision._auto_embed() IS
'internal: trigger function of pgvision.enable_auto_embed; sets the feature column (TG_ARGV[1]) to pgvision.embed of the image column (TG_ARGV[0]) with the model TG_ARGV[2]';

CREATE OR REPLACE FUNCTION pgvision._check_owner(rel regclass)
RETURNS void
LANGUAGE plpgsql STABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_class c WHERE c.oid = rel AND pg_catalog.pg_has_role(c.relowner, 'USAGE')) THEN
        RAISE EXCEPTION 'must be owner of table %', rel USING ERRCODE = 'insufficient_privilege';
    END IF;
END
$$;
COMMENT ON FUNCTION pgvision._check_owner(regclass) IS
'internal: raises insufficient_privilege unless the current role owns the table (or is a member of its owner)';

CREATE OR REPLACE FUNCTION pgvision.enable_auto_embed(tbl regclass, image_column name, feature_column name,
                                                      model text DEFAULT 'efficientnet_lite0')
RETURNS void
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM pgvision._check_owner(tbl);
    PERFORM pgvision._embed_columns(tbl, image_column, feature_column, model);
    EXECUTE pg_catalog.format(
        'CREATE OR REPLACE TRIGGER pgvision_auto_embed BEFORE INSERT OR UPDATE OF %I ON %s'
        ' FOR EACH ROW EXECUTE FUNCTION pgvision._auto_embed(%L, %L, %L)',
        image_column, tbl, image_column, feature_column, model);
END
$$;
COMMENT ON FUNCTION pgvision.enable_auto_embed(regclass, name, name, text) IS
'creates the trigger pgvision_auto_embed, which sets the feature column to pgvision.embed of the image column on INSERT and on UPDATE of the image column (NULL image, NULL feature); replaces an earlier one; for the table''s owner';

CREATE OR REPLACE FUNCTION pgvision.disable_auto_embed(tbl regclass)
RETURNS void
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM pgvision._check_owner(tbl);
    EXECUTE pg_catalog.format('DROP TRIGGER IF EXISTS pgvision_auto_embed ON %s', tbl);
END
$$;
COMMENT ON FUNCTION pgvision.disable_auto_embed(regclass) IS
'drops the trigger created by pgvision.enable_auto_embed; features already computed stay; for the table''s owner';

-- Any role may run these on the tables it may change: embed_table checks UPDATE on the
-- feature column, enable/disable_auto_embed ownership of the table. The bookkeeping tables
-- are open to all, and row-level security narrows them to the tables a role can read
-- (SELECT) or update (writes).
GRANT SELECT, INSERT, UPDATE, DELETE ON pgvision.backfill_progress, pgvision.backfill_errors TO PUBLIC;

-- idempotent/020-index.sql
-- Vector indexes: pgvision.create_index, and create_ann_index for AnalyticDB's index options.

-- pgvector is relocatable, so its schema is looked up when it is needed, not at install time.
CREATE OR REPLACE FUNCTION pgvision._vector_schema()
RETURNS text
LANGUAGE sql STABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT n.nspname::text
    FROM pg_catalog.pg_extension e JOIN pg_catalog.pg_namespace n ON n.oid = e.extnamespace
    WHERE e.extname = 'vector'
$$;
COMMENT ON FUNCTION pgvision._vector_schema() IS
'internal: the schema pgvector''s types, operators and operator classes live in';

CREATE OR REPLACE FUNCTION pgvision._vector_column(tbl regclass, column_name name)
RETURNS int
LANGUAGE plpgsql STABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    _type oid;
    _typmod int;
BEGIN
    SELECT a.atttypid, a.atttypmod INTO _type, _typmod
    FROM pg_catalog.pg_attribute a
    WHERE a.attrelid = _vector_column.tbl AND a.attname = _vector_column.column_name
      AND a.attnum > 0 AND NOT a.attisdropped;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'column "%" of relation % does not exist', column_name, tbl
            USING ERRCODE = 'undefined_column';
    END IF;
    IF _type IS DISTINCT FROM pg_catalog.to_regtype(pg_catalog.format('%I.vector', pgvision._vector_schema())) THEN
        RAISE EXCEPTION 'column "%" of relation % is of type %, not vector',
                        column_name, tbl, pg_catalog.format_type(_type, _typmod)
            USING ERRCODE = 'datatype_mismatch',
                  HINT = 'pgvision indexes and searches vector columns, such as ones filled by pgvision.embed';
    END IF;
    RETURN _typmod;
END
$$;
COMMENT ON FUNCTION pgvision._vector_column(regclass, name) IS
'internal: checks that a column exists and is of type vector; returns its dimensions, or -1 when it has none';

CREATE OR REPLACE FUNCTION pgvision.create_index(
    tbl regclass,
    column_name name,
    metric text DEFAULT 'l2',
    method text DEFAULT 'hnsw',
    m int DEFAULT 16,
    ef_construction int DEFAULT 64,
    lists int DEFAULT NULL,
    halfvec boolean DEFAULT false,
    name text DEFAULT NULL)
RETURNS text
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    _vs text;
    _dim int;
    _metric text := pg_catalog.lower(create_index.metric);
    _method text := pg_catalog.lower(create_index.method);
    _opclass text;
    _key text;
    _with text;
    _lists int := create_index.lists;
    _rows bigint;
    _name text := create_index.name;
    _base text;
    _suffix text;
    _nsp oid;
    _i int := 0;
BEGIN
    IF tbl IS NULL OR column_name IS NULL OR _metric IS NULL OR _method IS NULL
       OR create_index.halfvec IS NULL THEN
        RAISE EXCEPTION 'tbl, column_name, metric, method and halfvec must not be null'
            USING ERRCODE = 'null_value_not_allowed';
    END IF;
    _opclass := CASE _metric WHEN 'l2' THEN 'l2_ops' WHEN 'cosine' THEN 'cosine_ops' WHEN 'ip' THEN 'ip_ops' END;
    IF _opclass IS NULL THEN
        RAISE EXCEPTION 'unknown metric "%"', create_index.metric
            USING ERRCODE = 'invalid_parameter_value', HINT = 'expected l2, cosine or ip';
    END IF;
    IF _method NOT IN ('hnsw', 'ivfflat') THEN
        RAISE EXCEPTION 'unknown index method "%"', create_index.method
            USING ERRCODE = 'invalid_parameter_value', HINT = 'expected hnsw or ivfflat';
    END IF;
    _dim := pgvision._vector_column(tbl, column_name);
    IF _dim < 1 THEN
        RAISE EXCEPTION 'column "%" of relation % has no dimensions', column_name, tbl
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = pg_catalog.format('vector indexes need them: ALTER TABLE %s ALTER COLUMN %I TYPE vector(1280)',
                                           tbl, column_name);
    END IF;

    _vs := pgvision._vector_schema();
    IF create_index.halfvec THEN
        _key := pg_catalog.format('(%I::%I.halfvec(%s)) %I.%I', column_name, _vs, _dim, _vs, 'halfvec_' || _opclass);
    ELSE
        _key := pg_catalog.format('%I %I.%I', column_name, _vs, 'vector_' || _opclass);
    END IF;

    IF _method = 'hnsw' THEN
        IF _lists IS NOT NULL THEN
            RAISE EXCEPTION 'lists applies to ivfflat indexes only'
                USING ERRCODE = 'invalid_parameter_value', HINT = 'use m and ef_construction with hnsw';
        END IF;
        IF m IS NULL OR ef_construction IS NULL THEN
            RAISE EXCEPTION 'm and ef_construction must not be null' USING ERRCODE = 'null_value_not_allowed';
        END IF;
        -- pgvector checks the ranges and reports them in its own words.
        _with := pg_catalog.format('m = %s, ef_construction = %s', m, ef_construction);
    ELSE
        IF _lists IS NULL THEN
            EXECUTE pg_catalog.format('SELECT pg_catalog.count(*) FROM %s WHERE %I IS NOT NULL', tbl, column_name)
                INTO _rows;
            _lists := GREATEST(10, LEAST(10000, _rows / 1000));
        END IF;
        _with := pg_catalog.format('lists = %s', _lists);
    END IF;

    IF _name IS NULL THEN
        -- <table>_<column>_<method>_<metric>[_half]_idx, shortened to fit NAMEDATALEN, numbered if taken.
        SELECT c.relnamespace INTO _nsp FROM pg_catalog.pg_class c WHERE c.oid = tbl;
        LOOP
            _suffix := pg_catalog.format('_%s_%s%s_idx%s', _method, _metric,
                                         CASE WHEN create_index.halfvec THEN '_half' ELSE '' END,
                                         CASE WHEN _i > 0 THEN _i::text ELSE '' END);
            _base := (SELECT c.relname::text FROM pg_catalog.pg_class c WHERE c.oid = tbl) || '_' || column_name;
            WHILE pg_catalog.octet_length(_base || _suffix) > 63 LOOP
                _base := pg_catalog.left(_base, -1);
            END LOOP;
            _name := _base || _suffix;
            EXIT WHEN NOT EXISTS (SELECT 1 FROM pg_catalog.pg_class c
                                  WHERE c.relname = _name AND c.relnamespace = _nsp);
            _i := _i + 1;
        END LOOP;
    END IF;

    EXECUTE pg_catalog.format('CREATE INDEX %I ON %s USING %I (%s) WITH (%s)', _name, tbl, _method, _key, _with);
    RETURN _name;
END
$$;
COMMENT ON FUNCTION pgvision.create_index(regclass, name, text, text, int, int, int, boolean, text) IS
'creates a pgvector index on a vector column and returns its name (in the table''s schema; default <table>_<column>_<method>_<metric>_idx). metric: l2 (<->), cosine (<=>) or ip (<#>); method: hnsw (m, ef_construction) or ivfflat (lists; default rows/1000 clamped to [10, 10000], counted when the index is built, so load the data first). halfvec => true indexes (column::halfvec(dim)), half the size, used by queries that order by that same expression. Runs as the caller, who must own the table; for CREATE INDEX CONCURRENTLY write the DDL yourself';

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
    _metric text := 'l2';
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
        IF _key NOT IN ('dim', 'distancemeasure', 'hnsw_m', 'hnsw_ef_construction', 'pq_enable',
                        'pq_segments', 'pq_centers', 'external_storage') THEN
            RAISE EXCEPTION 'unknown ann index option "%"', _key
                USING ERRCODE = 'invalid_parameter_value', HINT = 'known options: ' || _known;
        END IF;
        IF _key = 'distancemeasure' THEN
            _metric := CASE pg_catalog.lower(_value) WHEN 'l2' THEN 'l2' WHEN 'ip' THEN 'ip'
                       WHEN 'innerproduct' THEN 'ip' WHEN 'cosine' THEN 'cosine' END;
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
            IF _dim < 1 THEN
                RAISE EXCEPTION 'column "%" of relation % has no dimensions', column_name, tbl
                    USING ERRCODE = 'invalid_parameter_value',
                          HINT = pg_catalog.format('declare them: ALTER TABLE %s ALTER COLUMN %I TYPE vector(%s)',
                                                   tbl, column_name, _int);
            END IF;
            IF _int <> _dim THEN
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

-- idempotent/030-search.sql
-- Search functions for clients that can only call functions (BI tools): the table is an
-- argument, the result has a fixed shape. The plain SQL form (ORDER BY feature <-> q LIMIT k)
-- stays the fastest and most flexible way; these build that query for the caller.

-- The engine behind search, search_batch and search_like. queries are vectors in their text
-- form (the public functions take images or keys, so no signature needs pgvector's schema).
-- Iterative index scans (pgvector 0.8) keep reading the index until k rows pass the filter;
-- relaxed_order may return rows slightly out of order, so results are sorted again.
CREATE OR REPLACE FUNCTION pgvision._search(
    tbl regclass,
    queries text[],
    k int,
    feature_column name,
    metric text,
    filter text,
    group_by name,
    max_distance double precision,
    min_similarity double precision,
    expand int,
    exclude_key text)
RETURNS TABLE (query_no int, rank int, id text, distance double precision,
               similarity double precision, item jsonb)
LANGUAGE plpgsql STABLE PARALLEL UNSAFE ROWS 10
SET search_path = pg_catalog, pg_temp
SET hnsw.iterative_scan = relaxed_order
SET ivfflat.iterative_scan = relaxed_order
AS $$
DECLARE
    _vs text;
    _metric text := pg_catalog.lower(_search.metric);
    _op text;
    _dist text;
    _sim text;
    _pk text[];
    _pktype text;
    _id text;
    _item text;
    _where text;
    _cand text;
    _final text;
    _ok text;
    _q text;
    _n int;
    _rows bigint;
    _groups bigint;
    _beyond boolean;
BEGIN
    IF tbl IS NULL OR feature_column IS NULL OR _metric IS NULL THEN
        RAISE EXCEPTION 'tbl, feature_column and metric must not be null' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF k IS NULL OR k < 1 THEN
        RAISE EXCEPTION 'k must be at least 1, not %', coalesce(k::text, 'null')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    _op := CASE _metric WHEN 'l2' THEN '<->' WHEN 'cosine' THEN '<=>' WHEN 'ip' THEN '<#>' END;
    IF _op IS NULL THEN
        RAISE EXCEPTION 'unknown metric "%"', _search.metric
            USING ERRCODE = 'invalid_parameter_value', HINT = 'expected l2, cosine or ip';
    END IF;
    IF min_similarity IS NOT NULL AND _metric = 'l2' THEN
        RAISE EXCEPTION 'min_similarity applies to the cosine and ip metrics'
            USING ERRCODE = 'invalid_parameter_value', HINT = 'with l2, limit the distance with max_distance';
    END IF;
    IF expand IS NULL OR expand < 0 OR expand > 1000 THEN
        RAISE EXCEPTION 'expand must be between 0 and 1000, not %', coalesce(expand::text, 'null')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    PERFORM pgvision._vector_column(tbl, feature_column);
    IF group_by IS NOT NULL AND NOT EXISTS (
            SELECT 1 FROM pg_catalog.pg_attribute a
            WHERE a.attrelid = tbl AND a.attname = group_by AND a.attnum > 0 AND NOT a.attisdropped) THEN
        RAISE EXCEPTION 'column "%" of relation % does not exist', group_by, tbl USING ERRCODE = 'undefined_column';
    END IF;
    _vs := pgvision._vector_schema();

    -- id: the primary key as text (a composite key in its row form), NULL without one.
    SELECT pg_catalog.array_agg(pg_catalog.format('t.%I', a.attname) ORDER BY pg_catalog.array_position(i.indkey::int2[], a.attnum)),
           pg_catalog.min(pg_catalog.format_type(a.atttypid, a.atttypmod))
    INTO _pk, _pktype
    FROM pg_catalog.pg_index i
    JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey)
    WHERE i.indrelid = tbl AND i.indisprimary;
    _id := CASE WHEN _pk IS NULL THEN 'NULL::text'
                WHEN pg_catalog.cardinality(_pk) = 1 THEN _pk[1] || '::text'
                ELSE 'ROW(' || pg_catalog.array_to_string(_pk, ', ') || ')::text' END;
    IF exclude_key IS NOT NULL AND pg_catalog.cardinality(_pk) IS DISTINCT FROM 1 THEN
        RAISE EXCEPTION 'cannot exclude a row of % by key without a single-column primary key', tbl
            USING ERRCODE = 'feature_not_supported';
    END IF;

    -- item: the row as jsonb without vectors and bytea (image) columns, which BI tools
    -- cannot show and which would be detoasted for nothing.
    SELECT '(SELECT pg_catalog.to_jsonb(r) FROM (SELECT '
           || pg_catalog.string_agg(pg_catalog.format('t.%I', a.attname), ', ' ORDER BY a.attnum) || ') r)'
    INTO _item
    FROM pg_catalog.pg_attribute a
    WHERE a.attrelid = tbl AND a.attnum > 0 AND NOT a.attisdropped
      AND a.attname <> feature_column
      AND a.atttypid <> 'pg_catalog.bytea'::pg_catalog.regtype
      AND a.atttypid NOT IN (SELECT ty.oid FROM pg_catalog.pg_type ty JOIN pg_catalog.pg_namespace n ON n.oid = ty.typnamespace
                             WHERE n.nspname = _vs AND ty.typname IN ('vector', 'halfvec', 'sparsevec'));
    _item := coalesce(_item, '''{}''::jsonb');

    -- $1 query vector (text), $2 key to exclude, $3 max_distance, $4 min_similarity, $5 query_no,
    -- $6 number of candidates
    _dist := pg_catalog.format('t.%I OPERATOR(%I.%s) $1::%I.vector', feature_column, _vs, _op, _vs);
    _sim := CASE _metric WHEN 'l2' THEN 'NULL::double precision'
                         WHEN 'cosine' THEN '1 - c.distance' ELSE '-c.distance' END;
    _ok := pg_catalog.format('($3::double precision IS NULL OR c.distance <= $3) AND ($4::double precision IS NULL OR %s >= $4)', _sim);
    -- The filter is the caller's SQL, run with the caller's privileges; on lines of its own so
    -- that a trailing -- comment in it ends there.
    _where := pg_catalog.format('t.%I IS NOT NULL', feature_column)
              || CASE WHEN filter IS NULL THEN '' ELSE E' AND (\n' || filter || E'\n)' END
              || CASE WHEN exclude_key IS NULL THEN ''
                      ELSE pg_catalog.format(' AND %s <> CAST($2 AS %s)', _pk[1], _pktype) END;
    -- candidates: the $6 nearest rows. (Never a format() template: the filter may hold %.)
    _cand := 'SELECT ' || _id || ' AS id, ' || _dist || ' AS distance, ' || _item || ' AS item'
             || CASE WHEN group_by IS NULL THEN '' ELSE pg_catalog.format(', t.%I AS grp', group_by) END
             || ' FROM ' || tbl::text || ' AS t WHERE ' || _where
             || ' ORDER BY ' || _dist || ' LIMIT $6';

    FOR i IN 1 .. coalesce(pg_catalog.cardinality(queries), 0) LOOP
        _q := queries[i];
        CONTINUE WHEN _q IS NULL;

        IF expand > 0 THEN
            -- Query expansion: half the query, half the mean of its n nearest rows (unit
            -- vectors for cosine), i.e. the query counted n times among the n rows. On
            -- Fashion-MNIST (cosine, n = 3) this beat the plain mean of all n + 1 vectors.
            EXECUTE pg_catalog.format(
                'SELECT %1$I.avg(%2$s)::text FROM (SELECT $1::%1$I.vector AS f FROM pg_catalog.generate_series(1, %7$s) UNION ALL (SELECT t.%3$I FROM %4$s AS t WHERE %5$s ORDER BY %6$s LIMIT %7$s)) s',
                _vs, CASE WHEN _metric = 'cosine' THEN pg_catalog.format('%I.l2_normalize(s.f)', _vs) ELSE 's.f' END,
                feature_column, tbl::text, _where, _dist, expand)
            INTO _q USING _q, exclude_key;
        END IF;

        IF group_by IS NULL THEN
            _final := 'WITH c AS MATERIALIZED (' || _cand || ') '
                      || 'SELECT $5, (pg_catalog.row_number() OVER (ORDER BY c.distance))::int, c.id, c.distance, '
                      || _sim || ', c.item FROM c WHERE ' || _ok || ' ORDER BY c.distance';
        ELSE
            -- Collapse: one row per group value, best first, over a candidate set that grows
            -- until it holds k groups or the scan runs out (end of the table, the distance
            -- threshold, or hnsw.max_scan_tuples).
            _n := LEAST(GREATEST(k::bigint * 10, 100), 1000000000)::int;
            LOOP
                EXECUTE 'WITH c AS MATERIALIZED (' || _cand || ') '
                        || 'SELECT pg_catalog.count(*), '
                        || 'pg_catalog.count(DISTINCT c.grp) FILTER (WHERE ' || _ok || ') '
                        || '+ coalesce(pg_catalog.max(1) FILTER (WHERE c.grp IS NULL AND ' || _ok || '), 0), '
                        || 'coalesce(pg_catalog.bool_or(NOT (' || _ok || ')), false) FROM c'
                    INTO _rows, _groups, _beyond
                    USING _q, exclude_key, max_distance, min_similarity, 0, _n;
                EXIT WHEN _groups >= k OR _rows < _n OR _beyond OR _n >= 1000000000;
                _n := LEAST(_n::bigint * 4, 1000000000)::int;
            END LOOP;
            _final := 'WITH c AS MATERIALIZED (' || _cand || '), '
                      || 'g AS (SELECT DISTINCT ON (c.grp) c.* FROM c WHERE ' || _ok || ' ORDER BY c.grp, c.distance) '
                      || 'SELECT $5, (pg_catalog.row_number() OVER (ORDER BY c.distance))::int, c.id, c.distance, '
                      || _sim || ', c.item FROM g AS c ORDER BY c.distance LIMIT ' || k;
        END IF;
        RETURN QUERY EXECUTE _final USING _q, exclude_key, max_distance, min_similarity, i, coalesce(_n, k);
    END LOOP;
END
$$;
COMMENT ON FUNCTION pgvision._search(regclass, text[], int, name, text, text, name, double precision, double precision, int, text) IS
'internal: the query behind pgvision.search, search_batch and search_like';

CREATE OR REPLACE FUNCTION pgvision.search(
    tbl regclass,
    query bytea,
    k int DEFAULT 10,
    feature_column name DEFAULT 'feature',
    metric text DEFAULT 'l2',
    filter text DEFAULT NULL,
    model text DEFAULT 'efficientnet_lite0',
    group_by name DEFAULT NULL,
    max_distance double precision DEFAULT NULL,
    min_similarity double precision DEFAULT NULL,
    expand int DEFAULT 0)
RETURNS TABLE (query_no int, rank int, id text, distance double precision,
               similarity double precision, item jsonb)
LANGUAGE sql STABLE PARALLEL UNSAFE COST 100000 ROWS 10
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT * FROM pgvision._search(tbl, ARRAY[pgvision.embed(query, model)::text], k, feature_column, metric,
                                   filter, group_by, max_distance, min_similarity, expand, NULL)
$$;
COMMENT ON FUNCTION pgvision.search(regclass, bytea, int, name, text, text, text, name, double precision, double precision, int) IS
'the k rows of a table whose feature is nearest to an image''s, nearest first: query_no (1), rank, id (the primary key as text), distance (l2: <->, cosine: <=>, ip: <#>, the negative inner product), similarity (cosine: 1 - distance, ip: the inner product, l2: null), item (the row as jsonb without vector and bytea columns). filter is a SQL condition on the table''s columns, run as the caller with search_path = pg_catalog, pg_temp (qualify your own functions); iterative index scans return k rows when k rows match it. group_by keeps the best row per value of a column; max_distance and min_similarity (cosine, ip) drop farther rows; expand => n searches again with a query made half of the original and half of the mean of its n nearest rows';

CREATE OR REPLACE FUNCTION pgvision.search_batch(
    tbl regclass,
    queries bytea[],
    k int DEFAULT 10,
    feature_column name DEFAULT 'feature',
    metric text DEFAULT 'l2',
    filter text DEFAULT NULL,
    model text DEFAULT 'efficientnet_lite0',
    group_by name DEFAULT NULL,
    max_distance double precision DEFAULT NULL,
    min_similarity double precision DEFAULT NULL,
    expand int DEFAULT 0)
RETURNS TABLE (query_no int, rank int, id text, distance double precision,
               similarity double precision, item jsonb)
LANGUAGE plpgsql STABLE PARALLEL UNSAFE COST 1000000 ROWS 100
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF pg_catalog.cardinality(queries) > 100 THEN
        RAISE EXCEPTION 'too many query images: %, the limit is 100', pg_catalog.cardinality(queries)
            USING ERRCODE = 'program_limit_exceeded', HINT = 'split the queries into several calls';
    END IF;
    RETURN QUERY
    SELECT * FROM pgvision._search(tbl, pgvision.embed_batch(queries, model)::text[], k, feature_column, metric,
                                   filter, group_by, max_distance, min_similarity, expand, NULL);
END
$$;
COMMENT ON FUNCTION pgvision.search_batch(regclass, bytea[], int, name, text, text, text, name, double precision, double precision, int) IS
'pgvision.search for up to 100 query images in one call (embedded with embed_batch); query_no is the position of the query in the array; a NULL image gives no rows';

CREATE OR REPLACE FUNCTION pgvision.search_like(
    tbl regclass,
    key text,
    k int DEFAULT 10,
    feature_column name DEFAULT 'feature',
    metric text DEFAULT 'l2',
    filter text DEFAULT NULL,
    group_by name DEFAULT NULL,
    max_distance double precision DEFAULT NULL,
    min_similarity double precision DEFAULT NULL,
    expand int DEFAULT 0)
RETURNS TABLE (query_no int, rank int, id text, distance double precision,
               similarity double precision, item jsonb)
LANGUAGE plpgsql STABLE PARALLEL UNSAFE ROWS 10
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    _pk text[];
    _pktype text;
    _found boolean;
    _q text;
BEGIN
    IF tbl IS NULL OR key IS NULL OR feature_column IS NULL THEN
        RAISE EXCEPTION 'tbl, key and feature_column must not be null' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    PERFORM pgvision._vector_column(tbl, feature_column);
    SELECT pg_catalog.array_agg(a.attname::text), pg_catalog.min(pg_catalog.format_type(a.atttypid, a.atttypmod))
    INTO _pk, _pktype
    FROM pg_catalog.pg_index i
    JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey)
    WHERE i.indrelid = tbl AND i.indisprimary;
    IF _pk IS NULL THEN
        RAISE EXCEPTION 'relation % has no primary key', tbl
            USING ERRCODE = 'invalid_table_definition',
                  HINT = 'search_like finds the query row by its primary key; add one with ALTER TABLE ... ADD PRIMARY KEY';
    ELSIF pg_catalog.cardinality(_pk) > 1 THEN
        RAISE EXCEPTION 'relation % has a primary key of % columns', tbl, pg_catalog.cardinality(_pk)
            USING ERRCODE = 'feature_not_supported', HINT = 'search_like needs a single-column primary key';
    END IF;
    EXECUTE pg_catalog.format('SELECT true, t.%I::text FROM %s AS t WHERE t.%I = CAST($1 AS %s)',
                              feature_column, tbl, _pk[1], _pktype)
        INTO _found, _q USING key;
    IF _found IS NULL THEN
        RAISE EXCEPTION 'relation % has no row with key %', tbl, key
            USING ERRCODE = 'no_data_found';
    ELSIF _q IS NULL THEN
        RAISE EXCEPTION 'row % of relation % has no feature', key, tbl
            USING ERRCODE = 'null_value_not_allowed', HINT = 'compute it with pgvision.embed';
    END IF;
    RETURN QUERY
    SELECT * FROM pgvision._search(tbl, ARRAY[_q], k, feature_column, metric, filter, group_by,
                                   max_distance, min_similarity, expand, key);
END
$$;
COMMENT ON FUNCTION pgvision.search_like(regclass, text, int, name, text, text, name, double precision, double precision, int) IS
'pgvision.search with a stored row''s feature as the query ("images like image 4999"): the row is found by its primary key and left out of the results';

-- Any key type: search_like('images', 4999). An untyped literal ('4999') goes to the text form.
CREATE OR REPLACE FUNCTION pgvision.search_like(
    tbl regclass,
    key anyelement,
    k int DEFAULT 10,
    feature_column name DEFAULT 'feature',
    metric text DEFAULT 'l2',
    filter text DEFAULT NULL,
    group_by name DEFAULT NULL,
    max_distance double precision DEFAULT NULL,
    min_similarity double precision DEFAULT NULL,
    expand int DEFAULT 0)
RETURNS TABLE (query_no int, rank int, id text, distance double precision,
               similarity double precision, item jsonb)
LANGUAGE sql STABLE PARALLEL UNSAFE ROWS 10
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT * FROM pgvision.search_like(tbl, key::text, k, feature_column, metric, filter, group_by,
                                       max_distance, min_similarity, expand)
$$;
COMMENT ON FUNCTION pgvision.search_like(regclass, anyelement, int, name, text, text, name, double precision, double precision, int) IS
'pgvision.search_like with a key of any type (compared with the primary key after a cast through text)';

-- idempotent/900-builtin.sql
-- Built-in models and pipelines, and who may use what. Runs on install and on every upgrade.

SELECT pgvision._install_builtin_models();

INSERT INTO pgvision.pipelines (name, model, options, builtin)
VALUES ('general_feature_extractor', 'efficientnet_lite0', '{"output": "feature", "normalize": false}', true)
ON CONFLICT (name) DO NOTHING;

-- pgvision_admin manages models and pipelines. A model is code the server runs, so
-- registering one is not for every role. Roles belong to the cluster, not to a database:
-- the role outlives DROP EXTENSION and is shared by every database that has pgvision.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'pgvision_admin') THEN
        CREATE ROLE pgvision_admin NOLOGIN;
        COMMENT ON ROLE pgvision_admin IS 'may register and drop pgvision models and pipelines';
    END IF;
END
$$;

GRANT USAGE ON SCHEMA pgvision TO PUBLIC;
GRANT SELECT ON pgvision.models, pgvision.pipelines TO PUBLIC;
GRANT INSERT, DELETE ON pgvision.models, pgvision.pipelines TO pgvision_admin;

REVOKE ALL ON FUNCTION pgvision.register_model(text, bytea, jsonb, text[]) FROM PUBLIC;
REVOKE ALL ON FUNCTION pgvision.drop_model(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION pgvision.pipeline_create(text, text, jsonb) FROM PUBLIC;
REVOKE ALL ON FUNCTION pgvision.pipeline_drop(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION pgvision.register_model(text, bytea, jsonb, text[]) TO pgvision_admin;
GRANT EXECUTE ON FUNCTION pgvision.drop_model(text) TO pgvision_admin;
GRANT EXECUTE ON FUNCTION pgvision.pipeline_create(text, text, jsonb) TO pgvision_admin;
GRANT EXECUTE ON FUNCTION pgvision.pipeline_drop(text) TO pgvision_admin;
-- reads files of the server's runtime folder: CREATE EXTENSION and upgrades only
REVOKE ALL ON FUNCTION pgvision._install_builtin_models() FROM PUBLIC;
