-- pgvision 0.2.0: built by extension/build.py from extension/sql; do not edit
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

-- incremental/003-shards.sql
-- Scale-out: the foreign servers (postgres_fdw) that are pgvision shards. Each is a
-- PostgreSQL database with pgvision and pgvector of its own; pgvision.add_shard registers
-- one, pipeline_run_dist_random picks among them and create_sharded_table places a table's
-- partitions on them. The servers, user mappings and partitions are ordinary catalog
-- objects that pg_dump keeps; this table only says which servers are shards.

CREATE TABLE pgvision.shards (
    server  name PRIMARY KEY,
    added   timestamptz NOT NULL DEFAULT pg_catalog.now()
);

SELECT pg_catalog.pg_extension_config_dump('pgvision.shards', '');

-- incremental/004-backfill-security.sql
-- The write policies of the backfill bookkeeping, narrowed (002-backfill.sql, released in
-- 0.1.0, let any role with UPDATE on any column of the table write them, so a role with
-- only UPDATE (note) could record error rows that made the owner's embed_table skip rows).
-- A role now writes the rows of (tbl, feature_column) only if it may UPDATE that feature
-- column, which lets it write the feature itself anyway, and SELECT from the table, which
-- embed_table needs too. The column is looked up by name and checked by number: asked by
-- name about a column that is gone (renamed, or dropped before the event trigger cleaned
-- up), has_column_privilege raises an error, which would break every query on the table.

ALTER POLICY backfill_progress_write ON pgvision.backfill_progress
    USING (pg_catalog.has_table_privilege(tbl, 'SELECT')
           AND pg_catalog.has_column_privilege(tbl,
                   (SELECT a.attnum FROM pg_catalog.pg_attribute a
                    WHERE a.attrelid = tbl AND a.attname = feature_column AND NOT a.attisdropped),
                   'UPDATE'))
    WITH CHECK (pg_catalog.has_table_privilege(tbl, 'SELECT')
                AND pg_catalog.has_column_privilege(tbl,
                        (SELECT a.attnum FROM pg_catalog.pg_attribute a
                         WHERE a.attrelid = tbl AND a.attname = feature_column AND NOT a.attisdropped),
                        'UPDATE'));

ALTER POLICY backfill_errors_write ON pgvision.backfill_errors
    USING (pg_catalog.has_table_privilege(tbl, 'SELECT')
           AND pg_catalog.has_column_privilege(tbl,
                   (SELECT a.attnum FROM pg_catalog.pg_attribute a
                    WHERE a.attrelid = tbl AND a.attname = feature_column AND NOT a.attisdropped),
                   'UPDATE'))
    WITH CHECK (pg_catalog.has_table_privilege(tbl, 'SELECT')
                AND pg_catalog.has_column_privilege(tbl,
                        (SELECT a.attnum FROM pg_catalog.pg_attribute a
                         WHERE a.attrelid = tbl AND a.attname = feature_column AND NOT a.attisdropped),
                        'UPDATE'));

-- incremental/005-feature-models.sql
-- The model of each feature column: whatever fills one (embed_table, enable_auto_embed,
-- create_sharded_table, embed_shards, set_column_model) records it, and the searches embed
-- their queries with it. One row per (table, column). tbl is a regclass, so it follows
-- ALTER TABLE RENAME and SET SCHEMA, and pg_dump writes it as a name; the column is kept by
-- name, which a dump keeps, with its number alongside, which a RENAME COLUMN keeps (the
-- trigger on this table and the event trigger in idempotent/005-feature-models.sql keep the two in
-- step). Row-level security as for the backfill bookkeeping (004-backfill-security.sql):
-- a role sees the rows of the tables it can read and writes those of the columns it may
-- update; the column is checked by number, which never raises for a column that is gone.

CREATE TABLE pgvision.feature_models (
    tbl             regclass NOT NULL,
    feature_column  name NOT NULL,
    attnum          int2 NOT NULL,
    model           text NOT NULL,
    recorded        timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp(),
    PRIMARY KEY (tbl, feature_column)
);

ALTER TABLE pgvision.feature_models ENABLE ROW LEVEL SECURITY;

-- The rows of dropped tables and columns are deleted by pgvision._forget_dropped (the
-- sql_drop event trigger of idempotent/010-backfill-bookkeeping.sql), as the extension's owner.
CREATE POLICY feature_models_read ON pgvision.feature_models FOR SELECT
    USING (pg_catalog.has_table_privilege(tbl, 'SELECT'));
CREATE POLICY feature_models_write ON pgvision.feature_models FOR ALL
    USING (pg_catalog.has_table_privilege(tbl, 'SELECT')
           AND pg_catalog.has_column_privilege(tbl, attnum, 'UPDATE'))
    WITH CHECK (pg_catalog.has_table_privilege(tbl, 'SELECT')
                AND pg_catalog.has_column_privilege(tbl, attnum, 'UPDATE'));

SELECT pg_catalog.pg_extension_config_dump('pgvision.feature_models', '');

-- idempotent/000-common.sql
-- What every other file uses: the role, names for dynamic SQL, column checks, the metrics,
-- and the one hook through which scale-out (04x-shard-*.sql) plugs into search.

-- pgvision_admin registers and drops models, pipelines and shards. A model is code the
-- server runs, so registering one is not for every role. Roles belong to the cluster, not
-- to a database: the role outlives DROP EXTENSION and is shared by every database that has
-- pgvision. Created here, before any file grants to it.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'pgvision_admin') THEN
        CREATE ROLE pgvision_admin NOLOGIN;
        COMMENT ON ROLE pgvision_admin IS 'may register and drop pgvision models and pipelines';
    END IF;
END
$$;

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

-- Names for the dynamic SQL that runs under the caller's search_path (this one and
-- pgvision._column's type_name), built from the catalogs: format_type and regclass output
-- leave out the schema of whatever the current search_path finds (pg_catalog's text, a
-- temporary table), which a caller's search_path with public first would then find
-- elsewhere (a public.text domain, a public table).
CREATE OR REPLACE FUNCTION pgvision._rel_name(rel regclass)
RETURNS text
LANGUAGE sql STABLE PARALLEL SAFE STRICT
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT c.relnamespace::pg_catalog.regnamespace::text || '.' || pg_catalog.quote_ident(c.relname)
    FROM pg_catalog.pg_class c WHERE c.oid = rel
$$;
COMMENT ON FUNCTION pgvision._rel_name(regclass) IS
'internal: a relation''s name with its schema (pg_temp_N for a temporary table), both quoted, whatever the search_path';

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

-- ---------------------------------------------------------------------------------------
-- Columns

-- The one "does this column exist" query: a live user column of a relation, or no row.
-- type_name is the type's name with its schema, both quoted, without type modifiers
-- (pg_catalog.text, public.vector), whatever the search_path.
CREATE OR REPLACE FUNCTION pgvision._column(rel regclass, column_name name)
RETURNS TABLE (num int2, type oid, typmod int, notnull boolean, generated "char", type_name text)
LANGUAGE sql STABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT a.attnum, a.atttypid, a.atttypmod, a.attnotnull, a.attgenerated,
           t.typnamespace::pg_catalog.regnamespace::text || '.' || pg_catalog.quote_ident(t.typname)
    FROM pg_catalog.pg_attribute a JOIN pg_catalog.pg_type t ON t.oid = a.atttypid
    WHERE a.attrelid = rel AND a.attname = column_name AND a.attnum > 0 AND NOT a.attisdropped
$$;
COMMENT ON FUNCTION pgvision._column(regclass, name) IS
'internal: number, type, type modifier, NOT NULL, generated kind and schema-qualified type name of a live column of a relation; no row when there is none';

CREATE OR REPLACE FUNCTION pgvision._require_column(rel regclass, column_name name)
RETURNS TABLE (num int2, type oid, typmod int, notnull boolean, generated "char", type_name text)
LANGUAGE plpgsql STABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RETURN QUERY SELECT * FROM pgvision._column(rel, column_name);
    IF NOT FOUND THEN
        RAISE EXCEPTION 'column "%" of relation % does not exist', column_name, rel
            USING ERRCODE = 'undefined_column';
    END IF;
END
$$;
COMMENT ON FUNCTION pgvision._require_column(regclass, name) IS
'internal: pgvision._column, or undefined_column when the column does not exist';

-- Feature columns are pgvector's vector type: the search operators, the index operator
-- classes and embed_table's cast all take vector (a halfvec index is an expression index
-- over one, see create_index).
CREATE OR REPLACE FUNCTION pgvision._vector_column(tbl regclass, column_name name)
RETURNS int
LANGUAGE plpgsql STABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    _c record;
BEGIN
    SELECT * INTO _c FROM pgvision._require_column(tbl, column_name);
    IF _c.type IS DISTINCT FROM pg_catalog.to_regtype(pg_catalog.format('%I.vector', pgvision._vector_schema())) THEN
        RAISE EXCEPTION 'column "%" of relation % is of type %, not vector',
                        column_name, tbl, pg_catalog.format_type(_c.type, _c.typmod)
            USING ERRCODE = 'datatype_mismatch',
                  HINT = 'pgvision indexes and searches vector columns, such as ones filled by pgvision.embed';
    END IF;
    RETURN _c.typmod;
END
$$;
COMMENT ON FUNCTION pgvision._vector_column(regclass, name) IS
'internal: checks that a column exists and is of type vector; returns its dimensions, or -1 when it has none';

-- A vector column an index can be built on: one with dimensions (vector(n), not vector).
CREATE OR REPLACE FUNCTION pgvision._vector_dims(tbl regclass, column_name name, suggested int DEFAULT 1280)
RETURNS int
LANGUAGE plpgsql STABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    _dim int := pgvision._vector_column(tbl, column_name);
BEGIN
    IF _dim < 1 THEN
        RAISE EXCEPTION 'column "%" of relation % has no dimensions', column_name, tbl
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = pg_catalog.format('vector indexes need them: ALTER TABLE %s ALTER COLUMN %I TYPE vector(%s)',
                                           tbl, column_name, suggested);
    END IF;
    RETURN _dim;
END
$$;
COMMENT ON FUNCTION pgvision._vector_dims(regclass, name, int) IS
'internal: the dimensions of a vector column, or invalid_parameter_value (with an ALTER TABLE hint) when it has none';

-- What search shows of a row: no vectors and no bytea (image) columns, which BI tools cannot
-- show and which would be detoasted (or, from a shard, fetched) for nothing.
CREATE OR REPLACE FUNCTION pgvision._plain_columns(rel regclass)
RETURNS name[]
LANGUAGE sql STABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT coalesce(pg_catalog.array_agg(a.attname ORDER BY a.attnum), '{}')
    FROM pg_catalog.pg_attribute a
    WHERE a.attrelid = rel AND a.attnum > 0 AND NOT a.attisdropped
      AND a.atttypid <> 'pg_catalog.bytea'::pg_catalog.regtype
      AND a.atttypid NOT IN (SELECT ty.oid FROM pg_catalog.pg_type ty
                             JOIN pg_catalog.pg_namespace n ON n.oid = ty.typnamespace
                             WHERE n.nspname = pgvision._vector_schema()
                               AND ty.typname IN ('vector', 'halfvec', 'sparsevec'))
$$;
COMMENT ON FUNCTION pgvision._plain_columns(regclass) IS
'internal: the columns of a relation search returns in item, in order: all but pgvector and bytea columns';

-- ---------------------------------------------------------------------------------------
-- Metrics: the one table of what each metric means. The default is cosine, the metric
-- measured best for the default model (BENCHMARKS.md); create_index, create_sharded_table
-- and searches on a column without an index all take it from here.

CREATE OR REPLACE FUNCTION pgvision._metrics()
RETURNS TABLE (metric text, operator text, opclass text, similarity text, is_default boolean)
LANGUAGE sql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
    -- similarity: a format() template over the distance expression, larger is nearer
    VALUES ('l2', '<->', 'l2_ops', '1 OPERATOR(pg_catalog./) (1 OPERATOR(pg_catalog.+) %s)', false),
           ('cosine', '<=>', 'cosine_ops', '1 OPERATOR(pg_catalog.-) %s', true),
           ('ip', '<#>', 'ip_ops', 'OPERATOR(pg_catalog.-) %s', false)
$$;
COMMENT ON FUNCTION pgvision._metrics() IS
'internal: each metric''s pgvector operator (<->, <=>, <#>), operator class suffix (vector_/halfvec_ + opclass), similarity as a format() template over the distance (cosine: 1 - distance, ip: - distance, l2: 1 / (1 + distance)), and which is the default';

CREATE OR REPLACE FUNCTION pgvision._default_metric()
RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT m.metric FROM pgvision._metrics() m WHERE m.is_default
$$;
COMMENT ON FUNCTION pgvision._default_metric() IS
'internal: the metric pgvision uses when none is given and no index says otherwise (cosine)';

CREATE OR REPLACE FUNCTION pgvision._metric(name text, hint text DEFAULT 'expected l2, cosine or ip')
RETURNS TABLE (metric text, operator text, opclass text, similarity text, is_default boolean)
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RETURN QUERY SELECT * FROM pgvision._metrics() m WHERE m.metric = pg_catalog.lower(_metric.name);
    IF NOT FOUND THEN
        RAISE EXCEPTION 'unknown metric "%"', _metric.name
            USING ERRCODE = 'invalid_parameter_value', HINT = hint;
    END IF;
END
$$;
COMMENT ON FUNCTION pgvision._metric(text, text) IS
'internal: the row of pgvision._metrics() for a metric name (any case), or invalid_parameter_value';

-- ---------------------------------------------------------------------------------------
-- The scale-out hook. Core (search) asks it about every table and never names the
-- scale-out functions: for a table of this server it answers NULLs, which is all this body
-- does; 044-shard-search.sql replaces it with the one that answers for sharded tables.
-- For such a table: key_column and key_type, the column that identifies a row (a sharded
-- table has no primary key here), and, when distance is given, candidates, the top-n query
-- of the table as the shards answer it, with columns named as the table's plus
-- pgvision_distance.
CREATE OR REPLACE FUNCTION pgvision._scale_out(tbl regclass, extra_columns name[], distance text, where_clause text, n text, OUT key_column name, OUT key_type text, OUT candidates text)
LANGUAGE sql VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT NULL::name, NULL::text, NULL::text  -- a table of this server
$$;
COMMENT ON FUNCTION pgvision._scale_out(regclass, name[], text, text, text) IS
'internal: the hook search calls for every table: NULLs for a table of this server; for a sharded table (044-shard-search.sql), its row key and, with a distance, its top-n query over the shards';

-- idempotent/001-runtime.sql
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
# pgvision preamble: put the runtime folder on sys.path once per backend.
import sys
if "pgvision_runtime.sqlapi" not in sys.modules:
    import os, site, stat
    # raised as pgvision's other errors are: "pgvision: ..." with a SQLSTATE and a hint
    _Error = type("pgvision", (plpy.Error,), {"__module__": "builtins"})

    def _fail(message, sqlstate, hint, detail=None):
        e = _Error(message)
        e.sqlstate, e.hint = sqlstate, hint
        if detail:
            e.detail = detail
        raise e
    # Loading pgvision.so defines the settings (src/settings.c): a superuser-only one that a
    # role set before is then dropped, and the runtime reads checked values.
    if plpy.execute("SELECT pg_catalog.to_regprocedure('pgvision._load()') IS NOT NULL AS x")[0]["x"]:
        plpy.execute("SELECT pgvision._load()")
    # The folder decides which code the server runs: only the administrator's own sources
    # count (a placeholder, which any role can SET, is not in pg_settings).
    _rows = plpy.execute("SELECT setting FROM pg_catalog.pg_settings WHERE name = 'pgvision.runtime_path'"
                         " AND source IN ('default', 'configuration file', 'command line', 'environment variable')")
    _given = _rows[0]["setting"] if _rows else "@RUNTIME_PATH@"
    # Resolved once, and every folder from / down checked: nobody but root or the server's
    # user can then swap any part of what is imported later (links are resolved here, not
    # at import time), as ssh and sudo check their files.
    _root = os.path.realpath(_given)
    _site = os.path.join(_root, "venv", "lib", "python%d.%d" % sys.version_info[:2], "site-packages")
    _parts = [_p for _p in _site.split("/") if _p]
    for _i in range(len(_parts) + 2):
        _p = "/" + "/".join(_parts[:_i]) if _i <= len(_parts) else os.path.join(_site, "pgvision_runtime")
        try:
            _st = os.lstat(_p)
        except OSError as _e:
            _fail('runtime not found in "%s": %s' % (_given, _e.strerror.lower()), "58P01",
                  "run make install, or set pgvision.runtime_path in postgresql.conf",
                  detail='no folder "%s"' % _p)
        if (not stat.S_ISDIR(_st.st_mode) or _st.st_uid not in (0, os.geteuid())
                or _st.st_mode & 0o022):
            _fail('runtime folder "%s" is not a folder owned by root or the server\'s user and closed '
                  'to writes by others' % _p, "42501",
                  "install the runtime with make install, or fix the folder's owner and mode")
    # Keep the user's and the system's site-packages from shadowing the pinned runtime.
    sys.path[:] = [p for p in sys.path if "-packages" not in p]
    _before = list(sys.path)
    site.addsitedir(_site)
    sys.path[:] = [p for p in sys.path if p not in _before] + _before
    # numpy's OpenBLAS starts a thread per core at import, which takes half of numpy's
    # import time, and pgvision does no linear algebra; the postmaster's environment wins
    if "numpy" not in sys.modules:
        os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    import pgvision_runtime.sqlapi
    GD["pgvision_runtime_path"] = _root
from pgvision_runtime import sqlapi as pv
return pv.runtime_info(GD["pgvision_runtime_path"], plpy, GD)
$python$;
COMMENT ON FUNCTION pgvision.runtime_info() IS
'versions of the Python runtime behind pgvision (runtime folder, Python, numpy, onnxruntime, Pillow) and the pgvision settings as this backend applies them (each cut to its superuser-set _limit)';

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

-- Every write to the registry tables, whoever makes it (register_model, a raw INSERT by a
-- member of pgvision_admin, the COPY of a restore), runs register_model's checks here; a
-- row never changes. Models are checked again when a backend loads one.
CREATE OR REPLACE FUNCTION pgvision._registry_write()
RETURNS trigger
LANGUAGE plpython3u VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
AS $python$
# pgvision preamble: put the runtime folder on sys.path once per backend.
import sys
if "pgvision_runtime.sqlapi" not in sys.modules:
    import os, site, stat
    # raised as pgvision's other errors are: "pgvision: ..." with a SQLSTATE and a hint
    _Error = type("pgvision", (plpy.Error,), {"__module__": "builtins"})

    def _fail(message, sqlstate, hint, detail=None):
        e = _Error(message)
        e.sqlstate, e.hint = sqlstate, hint
        if detail:
            e.detail = detail
        raise e
    # Loading pgvision.so defines the settings (src/settings.c): a superuser-only one that a
    # role set before is then dropped, and the runtime reads checked values.
    if plpy.execute("SELECT pg_catalog.to_regprocedure('pgvision._load()') IS NOT NULL AS x")[0]["x"]:
        plpy.execute("SELECT pgvision._load()")
    # The folder decides which code the server runs: only the administrator's own sources
    # count (a placeholder, which any role can SET, is not in pg_settings).
    _rows = plpy.execute("SELECT setting FROM pg_catalog.pg_settings WHERE name = 'pgvision.runtime_path'"
                         " AND source IN ('default', 'configuration file', 'command line', 'environment variable')")
    _given = _rows[0]["setting"] if _rows else "@RUNTIME_PATH@"
    # Resolved once, and every folder from / down checked: nobody but root or the server's
    # user can then swap any part of what is imported later (links are resolved here, not
    # at import time), as ssh and sudo check their files.
    _root = os.path.realpath(_given)
    _site = os.path.join(_root, "venv", "lib", "python%d.%d" % sys.version_info[:2], "site-packages")
    _parts = [_p for _p in _site.split("/") if _p]
    for _i in range(len(_parts) + 2):
        _p = "/" + "/".join(_parts[:_i]) if _i <= len(_parts) else os.path.join(_site, "pgvision_runtime")
        try:
            _st = os.lstat(_p)
        except OSError as _e:
            _fail('runtime not found in "%s": %s' % (_given, _e.strerror.lower()), "58P01",
                  "run make install, or set pgvision.runtime_path in postgresql.conf",
                  detail='no folder "%s"' % _p)
        if (not stat.S_ISDIR(_st.st_mode) or _st.st_uid not in (0, os.geteuid())
                or _st.st_mode & 0o022):
            _fail('runtime folder "%s" is not a folder owned by root or the server\'s user and closed '
                  'to writes by others' % _p, "42501",
                  "install the runtime with make install, or fix the folder's owner and mode")
    # Keep the user's and the system's site-packages from shadowing the pinned runtime.
    sys.path[:] = [p for p in sys.path if "-packages" not in p]
    _before = list(sys.path)
    site.addsitedir(_site)
    sys.path[:] = [p for p in sys.path if p not in _before] + _before
    # numpy's OpenBLAS starts a thread per core at import, which takes half of numpy's
    # import time, and pgvision does no linear algebra; the postmaster's environment wins
    if "numpy" not in sys.modules:
        os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    import pgvision_runtime.sqlapi
    GD["pgvision_runtime_path"] = _root
from pgvision_runtime import sqlapi as pv
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
# pgvision preamble: put the runtime folder on sys.path once per backend.
import sys
if "pgvision_runtime.sqlapi" not in sys.modules:
    import os, site, stat
    # raised as pgvision's other errors are: "pgvision: ..." with a SQLSTATE and a hint
    _Error = type("pgvision", (plpy.Error,), {"__module__": "builtins"})

    def _fail(message, sqlstate, hint, detail=None):
        e = _Error(message)
        e.sqlstate, e.hint = sqlstate, hint
        if detail:
            e.detail = detail
        raise e
    # Loading pgvision.so defines the settings (src/settings.c): a superuser-only one that a
    # role set before is then dropped, and the runtime reads checked values.
    if plpy.execute("SELECT pg_catalog.to_regprocedure('pgvision._load()') IS NOT NULL AS x")[0]["x"]:
        plpy.execute("SELECT pgvision._load()")
    # The folder decides which code the server runs: only the administrator's own sources
    # count (a placeholder, which any role can SET, is not in pg_settings).
    _rows = plpy.execute("SELECT setting FROM pg_catalog.pg_settings WHERE name = 'pgvision.runtime_path'"
                         " AND source IN ('default', 'configuration file', 'command line', 'environment variable')")
    _given = _rows[0]["setting"] if _rows else "@RUNTIME_PATH@"
    # Resolved once, and every folder from / down checked: nobody but root or the server's
    # user can then swap any part of what is imported later (links are resolved here, not
    # at import time), as ssh and sudo check their files.
    _root = os.path.realpath(_given)
    _site = os.path.join(_root, "venv", "lib", "python%d.%d" % sys.version_info[:2], "site-packages")
    _parts = [_p for _p in _site.split("/") if _p]
    for _i in range(len(_parts) + 2):
        _p = "/" + "/".join(_parts[:_i]) if _i <= len(_parts) else os.path.join(_site, "pgvision_runtime")
        try:
            _st = os.lstat(_p)
        except OSError as _e:
            _fail('runtime not found in "%s": %s' % (_given, _e.strerror.lower()), "58P01",
                  "run make install, or set pgvision.runtime_path in postgresql.conf",
                  detail='no folder "%s"' % _p)
        if (not stat.S_ISDIR(_st.st_mode) or _st.st_uid not in (0, os.geteuid())
                or _st.st_mode & 0o022):
            _fail('runtime folder "%s" is not a folder owned by root or the server\'s user and closed '
                  'to writes by others' % _p, "42501",
                  "install the runtime with make install, or fix the folder's owner and mode")
    # Keep the user's and the system's site-packages from shadowing the pinned runtime.
    sys.path[:] = [p for p in sys.path if "-packages" not in p]
    _before = list(sys.path)
    site.addsitedir(_site)
    sys.path[:] = [p for p in sys.path if p not in _before] + _before
    # numpy's OpenBLAS starts a thread per core at import, which takes half of numpy's
    # import time, and pgvision does no linear algebra; the postmaster's environment wins
    if "numpy" not in sys.modules:
        os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
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
    import os, site, stat
    # raised as pgvision's other errors are: "pgvision: ..." with a SQLSTATE and a hint
    _Error = type("pgvision", (plpy.Error,), {"__module__": "builtins"})

    def _fail(message, sqlstate, hint, detail=None):
        e = _Error(message)
        e.sqlstate, e.hint = sqlstate, hint
        if detail:
            e.detail = detail
        raise e
    # Loading pgvision.so defines the settings (src/settings.c): a superuser-only one that a
    # role set before is then dropped, and the runtime reads checked values.
    if plpy.execute("SELECT pg_catalog.to_regprocedure('pgvision._load()') IS NOT NULL AS x")[0]["x"]:
        plpy.execute("SELECT pgvision._load()")
    # The folder decides which code the server runs: only the administrator's own sources
    # count (a placeholder, which any role can SET, is not in pg_settings).
    _rows = plpy.execute("SELECT setting FROM pg_catalog.pg_settings WHERE name = 'pgvision.runtime_path'"
                         " AND source IN ('default', 'configuration file', 'command line', 'environment variable')")
    _given = _rows[0]["setting"] if _rows else "@RUNTIME_PATH@"
    # Resolved once, and every folder from / down checked: nobody but root or the server's
    # user can then swap any part of what is imported later (links are resolved here, not
    # at import time), as ssh and sudo check their files.
    _root = os.path.realpath(_given)
    _site = os.path.join(_root, "venv", "lib", "python%d.%d" % sys.version_info[:2], "site-packages")
    _parts = [_p for _p in _site.split("/") if _p]
    for _i in range(len(_parts) + 2):
        _p = "/" + "/".join(_parts[:_i]) if _i <= len(_parts) else os.path.join(_site, "pgvision_runtime")
        try:
            _st = os.lstat(_p)
        except OSError as _e:
            _fail('runtime not found in "%s": %s' % (_given, _e.strerror.lower()), "58P01",
                  "run make install, or set pgvision.runtime_path in postgresql.conf",
                  detail='no folder "%s"' % _p)
        if (not stat.S_ISDIR(_st.st_mode) or _st.st_uid not in (0, os.geteuid())
                or _st.st_mode & 0o022):
            _fail('runtime folder "%s" is not a folder owned by root or the server\'s user and closed '
                  'to writes by others' % _p, "42501",
                  "install the runtime with make install, or fix the folder's owner and mode")
    # Keep the user's and the system's site-packages from shadowing the pinned runtime.
    sys.path[:] = [p for p in sys.path if "-packages" not in p]
    _before = list(sys.path)
    site.addsitedir(_site)
    sys.path[:] = [p for p in sys.path if p not in _before] + _before
    # numpy's OpenBLAS starts a thread per core at import, which takes half of numpy's
    # import time, and pgvision does no linear algebra; the postmaster's environment wins
    if "numpy" not in sys.modules:
        os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
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
# pgvision preamble: put the runtime folder on sys.path once per backend.
import sys
if "pgvision_runtime.sqlapi" not in sys.modules:
    import os, site, stat
    # raised as pgvision's other errors are: "pgvision: ..." with a SQLSTATE and a hint
    _Error = type("pgvision", (plpy.Error,), {"__module__": "builtins"})

    def _fail(message, sqlstate, hint, detail=None):
        e = _Error(message)
        e.sqlstate, e.hint = sqlstate, hint
        if detail:
            e.detail = detail
        raise e
    # Loading pgvision.so defines the settings (src/settings.c): a superuser-only one that a
    # role set before is then dropped, and the runtime reads checked values.
    if plpy.execute("SELECT pg_catalog.to_regprocedure('pgvision._load()') IS NOT NULL AS x")[0]["x"]:
        plpy.execute("SELECT pgvision._load()")
    # The folder decides which code the server runs: only the administrator's own sources
    # count (a placeholder, which any role can SET, is not in pg_settings).
    _rows = plpy.execute("SELECT setting FROM pg_catalog.pg_settings WHERE name = 'pgvision.runtime_path'"
                         " AND source IN ('default', 'configuration file', 'command line', 'environment variable')")
    _given = _rows[0]["setting"] if _rows else "@RUNTIME_PATH@"
    # Resolved once, and every folder from / down checked: nobody but root or the server's
    # user can then swap any part of what is imported later (links are resolved here, not
    # at import time), as ssh and sudo check their files.
    _root = os.path.realpath(_given)
    _site = os.path.join(_root, "venv", "lib", "python%d.%d" % sys.version_info[:2], "site-packages")
    _parts = [_p for _p in _site.split("/") if _p]
    for _i in range(len(_parts) + 2):
        _p = "/" + "/".join(_parts[:_i]) if _i <= len(_parts) else os.path.join(_site, "pgvision_runtime")
        try:
            _st = os.lstat(_p)
        except OSError as _e:
            _fail('runtime not found in "%s": %s' % (_given, _e.strerror.lower()), "58P01",
                  "run make install, or set pgvision.runtime_path in postgresql.conf",
                  detail='no folder "%s"' % _p)
        if (not stat.S_ISDIR(_st.st_mode) or _st.st_uid not in (0, os.geteuid())
                or _st.st_mode & 0o022):
            _fail('runtime folder "%s" is not a folder owned by root or the server\'s user and closed '
                  'to writes by others' % _p, "42501",
                  "install the runtime with make install, or fix the folder's owner and mode")
    # Keep the user's and the system's site-packages from shadowing the pinned runtime.
    sys.path[:] = [p for p in sys.path if "-packages" not in p]
    _before = list(sys.path)
    site.addsitedir(_site)
    sys.path[:] = [p for p in sys.path if p not in _before] + _before
    # numpy's OpenBLAS starts a thread per core at import, which takes half of numpy's
    # import time, and pgvision does no linear algebra; the postmaster's environment wins
    if "numpy" not in sys.modules:
        os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    import pgvision_runtime.sqlapi
    GD["pgvision_runtime_path"] = _root
from pgvision_runtime import sqlapi as pv
return pv.embed_float4(plpy, GD, image, model)
$python$;
COMMENT ON FUNCTION pgvision._embed_float4(bytea, text) IS
'internal: pgvision.embed''s feature as native float4 bytes';

CREATE OR REPLACE FUNCTION pgvision._embed_batch_float4(images bytea[], model text, keep_memory boolean)
RETURNS bytea[]
LANGUAGE plpython3u IMMUTABLE STRICT PARALLEL UNSAFE COST 1000000
SET search_path = pg_catalog, pg_temp
AS $python$
# pgvision preamble: put the runtime folder on sys.path once per backend.
import sys
if "pgvision_runtime.sqlapi" not in sys.modules:
    import os, site, stat
    # raised as pgvision's other errors are: "pgvision: ..." with a SQLSTATE and a hint
    _Error = type("pgvision", (plpy.Error,), {"__module__": "builtins"})

    def _fail(message, sqlstate, hint, detail=None):
        e = _Error(message)
        e.sqlstate, e.hint = sqlstate, hint
        if detail:
            e.detail = detail
        raise e
    # Loading pgvision.so defines the settings (src/settings.c): a superuser-only one that a
    # role set before is then dropped, and the runtime reads checked values.
    if plpy.execute("SELECT pg_catalog.to_regprocedure('pgvision._load()') IS NOT NULL AS x")[0]["x"]:
        plpy.execute("SELECT pgvision._load()")
    # The folder decides which code the server runs: only the administrator's own sources
    # count (a placeholder, which any role can SET, is not in pg_settings).
    _rows = plpy.execute("SELECT setting FROM pg_catalog.pg_settings WHERE name = 'pgvision.runtime_path'"
                         " AND source IN ('default', 'configuration file', 'command line', 'environment variable')")
    _given = _rows[0]["setting"] if _rows else "@RUNTIME_PATH@"
    # Resolved once, and every folder from / down checked: nobody but root or the server's
    # user can then swap any part of what is imported later (links are resolved here, not
    # at import time), as ssh and sudo check their files.
    _root = os.path.realpath(_given)
    _site = os.path.join(_root, "venv", "lib", "python%d.%d" % sys.version_info[:2], "site-packages")
    _parts = [_p for _p in _site.split("/") if _p]
    for _i in range(len(_parts) + 2):
        _p = "/" + "/".join(_parts[:_i]) if _i <= len(_parts) else os.path.join(_site, "pgvision_runtime")
        try:
            _st = os.lstat(_p)
        except OSError as _e:
            _fail('runtime not found in "%s": %s' % (_given, _e.strerror.lower()), "58P01",
                  "run make install, or set pgvision.runtime_path in postgresql.conf",
                  detail='no folder "%s"' % _p)
        if (not stat.S_ISDIR(_st.st_mode) or _st.st_uid not in (0, os.geteuid())
                or _st.st_mode & 0o022):
            _fail('runtime folder "%s" is not a folder owned by root or the server\'s user and closed '
                  'to writes by others' % _p, "42501",
                  "install the runtime with make install, or fix the folder's owner and mode")
    # Keep the user's and the system's site-packages from shadowing the pinned runtime.
    sys.path[:] = [p for p in sys.path if "-packages" not in p]
    _before = list(sys.path)
    site.addsitedir(_site)
    sys.path[:] = [p for p in sys.path if p not in _before] + _before
    # numpy's OpenBLAS starts a thread per core at import, which takes half of numpy's
    # import time, and pgvision does no linear algebra; the postmaster's environment wins
    if "numpy" not in sys.modules:
        os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    import pgvision_runtime.sqlapi
    GD["pgvision_runtime_path"] = _root
from pgvision_runtime import sqlapi as pv
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
# pgvision preamble: put the runtime folder on sys.path once per backend.
import sys
if "pgvision_runtime.sqlapi" not in sys.modules:
    import os, site, stat
    # raised as pgvision's other errors are: "pgvision: ..." with a SQLSTATE and a hint
    _Error = type("pgvision", (plpy.Error,), {"__module__": "builtins"})

    def _fail(message, sqlstate, hint, detail=None):
        e = _Error(message)
        e.sqlstate, e.hint = sqlstate, hint
        if detail:
            e.detail = detail
        raise e
    # Loading pgvision.so defines the settings (src/settings.c): a superuser-only one that a
    # role set before is then dropped, and the runtime reads checked values.
    if plpy.execute("SELECT pg_catalog.to_regprocedure('pgvision._load()') IS NOT NULL AS x")[0]["x"]:
        plpy.execute("SELECT pgvision._load()")
    # The folder decides which code the server runs: only the administrator's own sources
    # count (a placeholder, which any role can SET, is not in pg_settings).
    _rows = plpy.execute("SELECT setting FROM pg_catalog.pg_settings WHERE name = 'pgvision.runtime_path'"
                         " AND source IN ('default', 'configuration file', 'command line', 'environment variable')")
    _given = _rows[0]["setting"] if _rows else "@RUNTIME_PATH@"
    # Resolved once, and every folder from / down checked: nobody but root or the server's
    # user can then swap any part of what is imported later (links are resolved here, not
    # at import time), as ssh and sudo check their files.
    _root = os.path.realpath(_given)
    _site = os.path.join(_root, "venv", "lib", "python%d.%d" % sys.version_info[:2], "site-packages")
    _parts = [_p for _p in _site.split("/") if _p]
    for _i in range(len(_parts) + 2):
        _p = "/" + "/".join(_parts[:_i]) if _i <= len(_parts) else os.path.join(_site, "pgvision_runtime")
        try:
            _st = os.lstat(_p)
        except OSError as _e:
            _fail('runtime not found in "%s": %s' % (_given, _e.strerror.lower()), "58P01",
                  "run make install, or set pgvision.runtime_path in postgresql.conf",
                  detail='no folder "%s"' % _p)
        if (not stat.S_ISDIR(_st.st_mode) or _st.st_uid not in (0, os.geteuid())
                or _st.st_mode & 0o022):
            _fail('runtime folder "%s" is not a folder owned by root or the server\'s user and closed '
                  'to writes by others' % _p, "42501",
                  "install the runtime with make install, or fix the folder's owner and mode")
    # Keep the user's and the system's site-packages from shadowing the pinned runtime.
    sys.path[:] = [p for p in sys.path if "-packages" not in p]
    _before = list(sys.path)
    site.addsitedir(_site)
    sys.path[:] = [p for p in sys.path if p not in _before] + _before
    # numpy's OpenBLAS starts a thread per core at import, which takes half of numpy's
    # import time, and pgvision does no linear algebra; the postmaster's environment wins
    if "numpy" not in sys.modules:
        os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    import pgvision_runtime.sqlapi
    GD["pgvision_runtime_path"] = _root
from pgvision_runtime import sqlapi as pv
return pv.release_batch_memory(plpy, GD)
$python$;
COMMENT ON FUNCTION pgvision._release_batch_memory() IS
'internal: gives back the activation memory that batches run with keep_memory left in this backend''s loaded models; returns how many models it went through';

CREATE OR REPLACE FUNCTION pgvision.embed(image bytea, model text DEFAULT 'efficientnet_lite0')
RETURNS vector
LANGUAGE sql IMMUTABLE STRICT PARALLEL UNSAFE COST 100000
SET search_path = pg_catalog, pg_temp
AS $$
SELECT pgvision._vector_from_float4(pgvision._embed_float4(image, model))
$$;
COMMENT ON FUNCTION pgvision.embed(bytea, text) IS
'feature vector of an image (JPEG, PNG, GIF, WebP, BMP or TIFF bytes) computed by a registered model; IMMUTABLE because a model never changes under its name';

CREATE OR REPLACE FUNCTION pgvision.embed_batch(images bytea[], model text DEFAULT 'efficientnet_lite0')
RETURNS vector[]
LANGUAGE sql IMMUTABLE STRICT PARALLEL UNSAFE COST 1000000
SET search_path = pg_catalog, pg_temp
AS $$
SELECT COALESCE(pg_catalog.array_agg(pgvision._vector_from_float4(f.bytes) ORDER BY f.n), '{}')
FROM pg_catalog.unnest(pgvision._embed_batch_float4(images, model, false)) WITH ORDINALITY AS f (bytes, n)
$$;
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
    import os, site, stat
    # raised as pgvision's other errors are: "pgvision: ..." with a SQLSTATE and a hint
    _Error = type("pgvision", (plpy.Error,), {"__module__": "builtins"})

    def _fail(message, sqlstate, hint, detail=None):
        e = _Error(message)
        e.sqlstate, e.hint = sqlstate, hint
        if detail:
            e.detail = detail
        raise e
    # Loading pgvision.so defines the settings (src/settings.c): a superuser-only one that a
    # role set before is then dropped, and the runtime reads checked values.
    if plpy.execute("SELECT pg_catalog.to_regprocedure('pgvision._load()') IS NOT NULL AS x")[0]["x"]:
        plpy.execute("SELECT pgvision._load()")
    # The folder decides which code the server runs: only the administrator's own sources
    # count (a placeholder, which any role can SET, is not in pg_settings).
    _rows = plpy.execute("SELECT setting FROM pg_catalog.pg_settings WHERE name = 'pgvision.runtime_path'"
                         " AND source IN ('default', 'configuration file', 'command line', 'environment variable')")
    _given = _rows[0]["setting"] if _rows else "@RUNTIME_PATH@"
    # Resolved once, and every folder from / down checked: nobody but root or the server's
    # user can then swap any part of what is imported later (links are resolved here, not
    # at import time), as ssh and sudo check their files.
    _root = os.path.realpath(_given)
    _site = os.path.join(_root, "venv", "lib", "python%d.%d" % sys.version_info[:2], "site-packages")
    _parts = [_p for _p in _site.split("/") if _p]
    for _i in range(len(_parts) + 2):
        _p = "/" + "/".join(_parts[:_i]) if _i <= len(_parts) else os.path.join(_site, "pgvision_runtime")
        try:
            _st = os.lstat(_p)
        except OSError as _e:
            _fail('runtime not found in "%s": %s' % (_given, _e.strerror.lower()), "58P01",
                  "run make install, or set pgvision.runtime_path in postgresql.conf",
                  detail='no folder "%s"' % _p)
        if (not stat.S_ISDIR(_st.st_mode) or _st.st_uid not in (0, os.geteuid())
                or _st.st_mode & 0o022):
            _fail('runtime folder "%s" is not a folder owned by root or the server\'s user and closed '
                  'to writes by others' % _p, "42501",
                  "install the runtime with make install, or fix the folder's owner and mode")
    # Keep the user's and the system's site-packages from shadowing the pinned runtime.
    sys.path[:] = [p for p in sys.path if "-packages" not in p]
    _before = list(sys.path)
    site.addsitedir(_site)
    sys.path[:] = [p for p in sys.path if p not in _before] + _before
    # numpy's OpenBLAS starts a thread per core at import, which takes half of numpy's
    # import time, and pgvision does no linear algebra; the postmaster's environment wins
    if "numpy" not in sys.modules:
        os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    import pgvision_runtime.sqlapi
    GD["pgvision_runtime_path"] = _root
from pgvision_runtime import sqlapi as pv
return pv.classify(plpy, GD, image, k, model)
$python$;
COMMENT ON FUNCTION pgvision.classify(bytea, int, text) IS
'the k most likely classes of an image (ImageNet-1k for the default model), with softmax probabilities, most likely first';

-- idempotent/005-feature-models.sql
-- The model of a feature column (pgvision.feature_models, incremental/005): whatever fills
-- a column records it through set_column_model, the searches embed with _query_model.
-- A column without a record is searched with the default model, as before records existed.

CREATE OR REPLACE FUNCTION pgvision._default_model()
RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT 'efficientnet_lite0'::text
$$;
COMMENT ON FUNCTION pgvision._default_model() IS
'internal: the model a search of a column without a recorded model embeds its query with (efficientnet_lite0)';

COMMENT ON TABLE pgvision.feature_models IS
'the model that fills each feature column, recorded by embed_table, enable_auto_embed, create_sharded_table, embed_shards and set_column_model; searches embed their queries with it; a role sees the rows of the tables it can read';
COMMENT ON COLUMN pgvision.feature_models.tbl IS 'the table (follows ALTER TABLE RENAME)';
COMMENT ON COLUMN pgvision.feature_models.feature_column IS 'the vector column, by name (follows ALTER TABLE RENAME COLUMN)';
COMMENT ON COLUMN pgvision.feature_models.attnum IS 'the column''s number, set from its name whenever the row is written';
COMMENT ON COLUMN pgvision.feature_models.model IS 'the model whose features the column holds (pgvision.models.name)';
COMMENT ON COLUMN pgvision.feature_models.recorded IS 'when the model was recorded';
COMMENT ON POLICY feature_models_read ON pgvision.feature_models IS
'a role sees the model of the feature columns of the tables it can SELECT from, and the rows of tables and columns that are gone';
COMMENT ON POLICY feature_models_write ON pgvision.feature_models IS
'a role records the model of a feature column if it may UPDATE that column and SELECT from the table, as set_column_model and embed_table check; anyone deletes the rows of tables and columns that are gone';

-- Every row, whoever writes it (a function, a raw INSERT, a restore): the column exists and
-- is a vector column; its number is taken from its name.
CREATE OR REPLACE FUNCTION pgvision._feature_models_write()
RETURNS trigger
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM pgvision._vector_column(NEW.tbl, NEW.feature_column);
    NEW.attnum := (SELECT c.num FROM pgvision._column(NEW.tbl, NEW.feature_column) c);
    RETURN NEW;
END
$$;
COMMENT ON FUNCTION pgvision._feature_models_write() IS
'internal: trigger function of pgvision.feature_models; checks the row names a vector column and sets attnum from its name';

CREATE OR REPLACE TRIGGER feature_models_write BEFORE INSERT OR UPDATE ON pgvision.feature_models
    FOR EACH ROW EXECUTE FUNCTION pgvision._feature_models_write();
COMMENT ON TRIGGER feature_models_write ON pgvision.feature_models IS
'checks every row names a vector column and keeps its attnum';

CREATE OR REPLACE FUNCTION pgvision.column_model(tbl regclass, feature_column name DEFAULT 'feature')
RETURNS text
LANGUAGE sql STABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
    -- by name; else by number, for a column renamed while the event trigger did not run
    SELECT f.model FROM pgvision.feature_models f
    LEFT JOIN pg_catalog.pg_attribute a
           ON a.attrelid = f.tbl AND a.attname = f.feature_column AND a.attnum > 0 AND NOT a.attisdropped
    WHERE f.tbl = column_model.tbl
      AND (f.feature_column = column_model.feature_column
           OR (a.attnum IS NULL AND f.attnum = (SELECT c.num FROM pgvision._column(column_model.tbl, column_model.feature_column) c)))
    ORDER BY f.feature_column = column_model.feature_column DESC
    LIMIT 1
$$;
COMMENT ON FUNCTION pgvision.column_model(regclass, name) IS
'the model recorded for a feature column (pgvision.feature_models), or NULL when none is: the model its queries are embedded with';

-- The model a search of tbl.feature_column embeds with: the given one, which must be the
-- recorded one if there is a record; else the recorded one; else the default.
CREATE OR REPLACE FUNCTION pgvision._query_model(tbl regclass, feature_column name, model text)
RETURNS text
LANGUAGE plpgsql STABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    _recorded text;
BEGIN
    -- The table's lock first (a query on it keeps ACCESS SHARE to the end of the
    -- transaction), then the record of the column that has the name now, from the system
    -- caches the lock brought up to date rather than from this statement's snapshot: a
    -- search whose snapshot predates a swap of columns (switch_model_finish) and that reads
    -- the table after it reads the new column, so it must embed with that column's model.
    IF pg_catalog.has_any_column_privilege(tbl, 'SELECT') THEN
        -- (ONLY and no row: not a partition, nor a shard, is opened)
        EXECUTE pg_catalog.format('SELECT FROM ONLY %s WHERE false', pgvision._rel_name(tbl));
    END IF;
    SELECT f.model INTO _recorded FROM pgvision.feature_models f
    WHERE f.tbl = _query_model.tbl
      AND (pg_catalog.pg_identify_object_as_address('pg_catalog.pg_class'::pg_catalog.regclass, f.tbl, f.attnum)).object_names[3]
          = _query_model.feature_column;
    IF NOT FOUND THEN
        _recorded := pgvision.column_model(tbl, feature_column);
    END IF;
    IF model IS NULL OR model = '' THEN  -- not given
        RETURN coalesce(_recorded, pgvision._default_model());
    END IF;
    IF _recorded IS DISTINCT FROM model AND _recorded IS NOT NULL THEN
        RAISE EXCEPTION 'feature column "%" of relation % holds features of model "%", not "%"',
                        feature_column, tbl, _recorded, model
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = 'features of different models cannot be compared',
                  HINT = pg_catalog.format('leave the model out: the query is then embedded with "%s"', _recorded);
    END IF;
    RETURN model;
END
$$;
COMMENT ON FUNCTION pgvision._query_model(regclass, name, text) IS
'internal: the model a query on a feature column is embedded with: model if given, not NULL nor '''' (invalid_parameter_value unless it is the column''s recorded model), else the recorded one, else the default';

CREATE OR REPLACE FUNCTION pgvision.set_column_model(tbl regclass, feature_column name, model text)
RETURNS void
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    _kind "char";
    _dim int;
    _cdim int;
    _num int2;
    _recorded text;
    _filled boolean;
BEGIN
    IF tbl IS NULL OR feature_column IS NULL OR model IS NULL THEN
        RAISE EXCEPTION 'table, feature column and model must not be null' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    SELECT c.relkind INTO _kind FROM pg_catalog.pg_class c WHERE c.oid = tbl;
    IF _kind IS NULL OR _kind NOT IN ('r', 'p') THEN
        RAISE EXCEPTION '% is not a table', tbl USING ERRCODE = 'wrong_object_type';
    END IF;
    SELECT m.dim INTO _dim FROM pgvision.models m WHERE m.name = set_column_model.model;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'model "%" does not exist', model USING ERRCODE = 'undefined_object',
            HINT = 'SELECT name FROM pgvision.models lists the registered models';
    END IF;
    _cdim := pgvision._vector_column(tbl, feature_column);
    IF _cdim > 0 AND _cdim <> _dim THEN
        RAISE EXCEPTION 'feature column "%" has % dimensions, but model "%" returns %',
            feature_column, _cdim, model, _dim USING ERRCODE = 'datatype_mismatch';
    END IF;
    IF NOT pg_catalog.has_column_privilege(tbl, feature_column, 'UPDATE')
       OR NOT pg_catalog.has_table_privilege(tbl, 'SELECT') THEN
        RAISE EXCEPTION 'permission denied for table %', tbl USING ERRCODE = 'insufficient_privilege',
            HINT = pg_catalog.format('recording the model of column %I needs SELECT on the table and UPDATE on the column', feature_column);
    END IF;
    _recorded := pgvision.column_model(tbl, feature_column);
    IF _recorded = model THEN
        RETURN;
    END IF;
    IF _recorded IS NOT NULL THEN
        -- mixing two models in one column makes every search of it wrong
        EXECUTE pg_catalog.format('SELECT EXISTS (SELECT FROM %s AS t WHERE t.%I IS NOT NULL)',
                                  pgvision._rel_name(tbl), feature_column) INTO _filled;
        IF _filled THEN
            RAISE EXCEPTION 'feature column "%" of relation % holds features of model "%", not "%"',
                            feature_column, tbl, _recorded, model
                USING ERRCODE = 'invalid_parameter_value',
                      DETAIL = 'features of different models in one column cannot be compared',
                      HINT = pg_catalog.format('embed with model "%s" into a new vector(%s) column (ALTER TABLE %s ADD COLUMN ...), or set every feature of column %I to NULL first',
                                               model, _dim, tbl, feature_column);
        END IF;
    END IF;
    _num := (SELECT c.num FROM pgvision._column(tbl, feature_column) c);
    DELETE FROM pgvision.feature_models f
    WHERE f.tbl = set_column_model.tbl
      AND (f.feature_column = set_column_model.feature_column
           OR (f.attnum = _num AND NOT EXISTS (SELECT FROM pgvision._column(f.tbl, f.feature_column))));
    INSERT INTO pgvision.feature_models (tbl, feature_column, attnum, model)
    VALUES (set_column_model.tbl, set_column_model.feature_column, _num, set_column_model.model);
END
$$;
COMMENT ON FUNCTION pgvision.set_column_model(regclass, name, text) IS
'records the model that fills a feature column (pgvision.feature_models), which searches then embed their queries with; embed_table, enable_auto_embed, create_sharded_table and embed_shards call it; refuses another model while the column holds features of the recorded one; needs SELECT on the table and UPDATE on the column';

-- Follow ALTER TABLE ... RENAME COLUMN: the command names the column by table and number.
-- Runs as the caller, the table's owner, whom the write policy lets update the row.
CREATE OR REPLACE FUNCTION pgvision._rename_feature_models()
RETURNS event_trigger
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF pg_catalog.to_regclass('pgvision.feature_models') IS NULL THEN
        RETURN;
    END IF;
    UPDATE pgvision.feature_models f SET feature_column = a.attname
    FROM pg_catalog.pg_event_trigger_ddl_commands() d
    JOIN pg_catalog.pg_attribute a ON a.attrelid = d.objid AND a.attnum = d.objsubid AND NOT a.attisdropped
    WHERE d.classid = 'pg_catalog.pg_class'::pg_catalog.regclass AND d.objsubid > 0
      AND f.tbl = d.objid AND f.attnum = d.objsubid AND f.feature_column <> a.attname;
END
$$;
COMMENT ON FUNCTION pgvision._rename_feature_models() IS
'internal: ddl_command_end event trigger function; renames the feature_models rows of renamed columns';

DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_event_trigger t WHERE t.evtname = 'pgvision_rename_feature_models') THEN
        CREATE EVENT TRIGGER pgvision_rename_feature_models ON ddl_command_end
            WHEN TAG IN ('ALTER TABLE') EXECUTE FUNCTION pgvision._rename_feature_models();
    END IF;
END
$$;
COMMENT ON EVENT TRIGGER pgvision_rename_feature_models IS
'keeps pgvision.feature_models right when a feature column is renamed';

-- idempotent/006-train-projection.sql
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
# pgvision preamble: put the runtime folder on sys.path once per backend.
import sys
if "pgvision_runtime.sqlapi" not in sys.modules:
    import os, site, stat
    # raised as pgvision's other errors are: "pgvision: ..." with a SQLSTATE and a hint
    _Error = type("pgvision", (plpy.Error,), {"__module__": "builtins"})

    def _fail(message, sqlstate, hint, detail=None):
        e = _Error(message)
        e.sqlstate, e.hint = sqlstate, hint
        if detail:
            e.detail = detail
        raise e
    # Loading pgvision.so defines the settings (src/settings.c): a superuser-only one that a
    # role set before is then dropped, and the runtime reads checked values.
    if plpy.execute("SELECT pg_catalog.to_regprocedure('pgvision._load()') IS NOT NULL AS x")[0]["x"]:
        plpy.execute("SELECT pgvision._load()")
    # The folder decides which code the server runs: only the administrator's own sources
    # count (a placeholder, which any role can SET, is not in pg_settings).
    _rows = plpy.execute("SELECT setting FROM pg_catalog.pg_settings WHERE name = 'pgvision.runtime_path'"
                         " AND source IN ('default', 'configuration file', 'command line', 'environment variable')")
    _given = _rows[0]["setting"] if _rows else "@RUNTIME_PATH@"
    # Resolved once, and every folder from / down checked: nobody but root or the server's
    # user can then swap any part of what is imported later (links are resolved here, not
    # at import time), as ssh and sudo check their files.
    _root = os.path.realpath(_given)
    _site = os.path.join(_root, "venv", "lib", "python%d.%d" % sys.version_info[:2], "site-packages")
    _parts = [_p for _p in _site.split("/") if _p]
    for _i in range(len(_parts) + 2):
        _p = "/" + "/".join(_parts[:_i]) if _i <= len(_parts) else os.path.join(_site, "pgvision_runtime")
        try:
            _st = os.lstat(_p)
        except OSError as _e:
            _fail('runtime not found in "%s": %s' % (_given, _e.strerror.lower()), "58P01",
                  "run make install, or set pgvision.runtime_path in postgresql.conf",
                  detail='no folder "%s"' % _p)
        if (not stat.S_ISDIR(_st.st_mode) or _st.st_uid not in (0, os.geteuid())
                or _st.st_mode & 0o022):
            _fail('runtime folder "%s" is not a folder owned by root or the server\'s user and closed '
                  'to writes by others' % _p, "42501",
                  "install the runtime with make install, or fix the folder's owner and mode")
    # Keep the user's and the system's site-packages from shadowing the pinned runtime.
    sys.path[:] = [p for p in sys.path if "-packages" not in p]
    _before = list(sys.path)
    site.addsitedir(_site)
    sys.path[:] = [p for p in sys.path if p not in _before] + _before
    # numpy's OpenBLAS starts a thread per core at import, which takes half of numpy's
    # import time, and pgvision does no linear algebra; the postmaster's environment wins
    if "numpy" not in sys.modules:
        os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    import pgvision_runtime.sqlapi
    GD["pgvision_runtime_path"] = _root
from pgvision_runtime import sqlapi as pv
if source is None or name is None or tbl is None or image_column is None or dims is None:
    plpy.error("source, name, tbl, image_column and dims must not be null", sqlstate="22004")
return pv.train_projection(plpy, GD, source, name, tbl, image_column, label_column, dims)
$python$;
COMMENT ON FUNCTION pgvision.train_projection(text, text, regclass, name, name, int) IS
'registers name: the model source with a linear projection to dims dimensions appended to its feature, learned from the images in tbl.image_column (read as the caller; at most 5000 rows, a repeatable sample of a larger table; images that do not decode are skipped with a warning): PCA-whitening, or with label_column a regularised linear discriminant of its labels, filled up to dims with PCA; returns its sha256';

-- writes the registry, as register_model does
REVOKE ALL ON FUNCTION pgvision.train_projection(text, text, regclass, name, name, int) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION pgvision.train_projection(text, text, regclass, name, name, int) TO pgvision_admin;

-- idempotent/007-quantize.sql
-- 8-bit versions of registered models: onnxruntime's static quantization, calibrated on the
-- caller's images (python_udf/pgvision_runtime/quantize.py; figures in BENCHMARKS.md).

CREATE OR REPLACE FUNCTION pgvision.quantize_model(source text, name text, calibration text)
RETURNS text
LANGUAGE plpython3u VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
AS $python$
# pgvision preamble: put the runtime folder on sys.path once per backend.
import sys
if "pgvision_runtime.sqlapi" not in sys.modules:
    import os, site, stat
    # raised as pgvision's other errors are: "pgvision: ..." with a SQLSTATE and a hint
    _Error = type("pgvision", (plpy.Error,), {"__module__": "builtins"})

    def _fail(message, sqlstate, hint, detail=None):
        e = _Error(message)
        e.sqlstate, e.hint = sqlstate, hint
        if detail:
            e.detail = detail
        raise e
    # Loading pgvision.so defines the settings (src/settings.c): a superuser-only one that a
    # role set before is then dropped, and the runtime reads checked values.
    if plpy.execute("SELECT pg_catalog.to_regprocedure('pgvision._load()') IS NOT NULL AS x")[0]["x"]:
        plpy.execute("SELECT pgvision._load()")
    # The folder decides which code the server runs: only the administrator's own sources
    # count (a placeholder, which any role can SET, is not in pg_settings).
    _rows = plpy.execute("SELECT setting FROM pg_catalog.pg_settings WHERE name = 'pgvision.runtime_path'"
                         " AND source IN ('default', 'configuration file', 'command line', 'environment variable')")
    _given = _rows[0]["setting"] if _rows else "@RUNTIME_PATH@"
    # Resolved once, and every folder from / down checked: nobody but root or the server's
    # user can then swap any part of what is imported later (links are resolved here, not
    # at import time), as ssh and sudo check their files.
    _root = os.path.realpath(_given)
    _site = os.path.join(_root, "venv", "lib", "python%d.%d" % sys.version_info[:2], "site-packages")
    _parts = [_p for _p in _site.split("/") if _p]
    for _i in range(len(_parts) + 2):
        _p = "/" + "/".join(_parts[:_i]) if _i <= len(_parts) else os.path.join(_site, "pgvision_runtime")
        try:
            _st = os.lstat(_p)
        except OSError as _e:
            _fail('runtime not found in "%s": %s' % (_given, _e.strerror.lower()), "58P01",
                  "run make install, or set pgvision.runtime_path in postgresql.conf",
                  detail='no folder "%s"' % _p)
        if (not stat.S_ISDIR(_st.st_mode) or _st.st_uid not in (0, os.geteuid())
                or _st.st_mode & 0o022):
            _fail('runtime folder "%s" is not a folder owned by root or the server\'s user and closed '
                  'to writes by others' % _p, "42501",
                  "install the runtime with make install, or fix the folder's owner and mode")
    # Keep the user's and the system's site-packages from shadowing the pinned runtime.
    sys.path[:] = [p for p in sys.path if "-packages" not in p]
    _before = list(sys.path)
    site.addsitedir(_site)
    sys.path[:] = [p for p in sys.path if p not in _before] + _before
    # numpy's OpenBLAS starts a thread per core at import, which takes half of numpy's
    # import time, and pgvision does no linear algebra; the postmaster's environment wins
    if "numpy" not in sys.modules:
        os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    import pgvision_runtime.sqlapi
    GD["pgvision_runtime_path"] = _root
from pgvision_runtime import sqlapi as pv
if source is None or name is None or calibration is None:
    plpy.error("source, name and calibration must not be null", sqlstate="22004")
return pv.quantize_model(plpy, GD, source, name, calibration)
$python$;
COMMENT ON FUNCTION pgvision.quantize_model(text, text, text) IS
'registers name: the model source with 8-bit weights and activations (static QDQ quantization, per-channel weights), calibrated on the first 128 images that the query calibration returns (run as the caller; images that do not decode are skipped with a warning); returns its sha256';

-- writes the registry, as register_model does
REVOKE ALL ON FUNCTION pgvision.quantize_model(text, text, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION pgvision.quantize_model(text, text, text) TO pgvision_admin;

-- idempotent/010-backfill-bookkeeping.sql
-- Bookkeeping of pgvision.embed_table: progress and bad rows, who sees and writes them,
-- and the event trigger that deletes the rows of dropped tables.

COMMENT ON TABLE pgvision.backfill_progress IS
'progress of pgvision.embed_table, one row per table and feature column, committed with every batch; a role sees the rows of the tables it can read';
COMMENT ON COLUMN pgvision.backfill_progress.tbl IS 'the table being backfilled';
COMMENT ON COLUMN pgvision.backfill_progress.feature_column IS 'the vector column being filled';
COMMENT ON COLUMN pgvision.backfill_progress.image_column IS 'the bytea column the images are read from';
COMMENT ON COLUMN pgvision.backfill_progress.key_column IS 'the unique column rows are addressed by (the primary key unless given)';
COMMENT ON COLUMN pgvision.backfill_progress.model IS 'the model computing the features';
COMMENT ON COLUMN pgvision.backfill_progress.batch_size IS 'rows per batch, each batch one transaction (the model sees them pgvision.batch_size images at a time)';
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
'a role writes the progress of a table''s feature column if it may UPDATE that column and SELECT from the table, as pgvision.embed_table does for it (incremental/004-backfill-security.sql)';
COMMENT ON POLICY backfill_errors_read ON pgvision.backfill_errors IS
'a role sees the bad rows of the tables it can SELECT from';
COMMENT ON POLICY backfill_errors_write ON pgvision.backfill_errors IS
'a role records or deletes the bad rows of a table''s feature column if it may UPDATE that column and SELECT from the table (deleting one makes embed_table try it again; such a role could write the feature itself anyway)';

-- Any role may run these on the tables it may change: embed_table checks UPDATE on the
-- feature column, enable/disable_auto_embed ownership of the table. The bookkeeping tables
-- are open to all, and row-level security narrows them to the tables a role can read
-- (SELECT) or update (writes).
GRANT SELECT, INSERT, UPDATE, DELETE ON pgvision.backfill_progress, pgvision.backfill_errors TO PUBLIC;

-- What pgvision keeps about a table goes with it: a table created later may get the dropped
-- one's OID and would otherwise inherit its progress, its error rows (which make embed_table
-- skip rows) and its columns' models (005-feature-models.sql). Dropping a feature column
-- takes its rows too. SECURITY DEFINER because row-level security hides a dropped table's
-- rows from everyone but the owner of these tables (the policies ask about privileges on an
-- OID that no longer exists); the function does nothing but delete the rows of the objects
-- just dropped.
CREATE OR REPLACE FUNCTION pgvision._forget_dropped()
RETURNS event_trigger
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    _tables oid[];
BEGIN
    SELECT pg_catalog.array_agg(DISTINCT d.objid) INTO _tables
    FROM pg_catalog.pg_event_trigger_dropped_objects() d
    WHERE d.classid = 'pg_catalog.pg_class'::pg_catalog.regclass
      AND d.object_type IN ('table', 'table column', 'foreign table', 'foreign table column');
    -- nothing of interest, or pgvision itself is being dropped
    IF _tables IS NULL OR pg_catalog.to_regclass('pgvision.backfill_progress') IS NULL
       OR pg_catalog.to_regclass('pgvision.backfill_errors') IS NULL
       OR pg_catalog.to_regclass('pgvision.feature_models') IS NULL THEN
        RETURN;
    END IF;
    -- A row goes when its table is gone or its feature column no longer exists.
    DELETE FROM pgvision.backfill_progress p
    WHERE p.tbl::oid = ANY (_tables) AND NOT EXISTS (SELECT FROM pgvision._column(p.tbl, p.feature_column));
    DELETE FROM pgvision.backfill_errors e
    WHERE e.tbl::oid = ANY (_tables) AND NOT EXISTS (SELECT FROM pgvision._column(e.tbl, e.feature_column));
    -- a model's record follows its column by number (a rename keeps it)
    DELETE FROM pgvision.feature_models f
    WHERE f.tbl::oid = ANY (_tables)
      AND NOT EXISTS (SELECT FROM pg_catalog.pg_attribute a
                      WHERE a.attrelid = f.tbl AND a.attnum = f.attnum AND NOT a.attisdropped);
END
$$;
COMMENT ON FUNCTION pgvision._forget_dropped() IS
'internal: sql_drop event trigger function; deletes the backfill_progress, backfill_errors and feature_models rows of dropped tables and dropped feature columns';
REVOKE ALL ON FUNCTION pgvision._forget_dropped() FROM PUBLIC;

DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_event_trigger t WHERE t.evtname = 'pgvision_forget_dropped') THEN
        -- every command: tables and columns also go with DROP SCHEMA, TYPE, OWNED ... CASCADE
        CREATE EVENT TRIGGER pgvision_forget_dropped ON sql_drop
            EXECUTE FUNCTION pgvision._forget_dropped();
    END IF;
END
$$;
COMMENT ON EVENT TRIGGER pgvision_forget_dropped IS
'deletes the embed_table bookkeeping and the recorded models of dropped tables and feature columns';

-- idempotent/011-embed-table.sql
-- Features for a whole table: CALL pgvision.embed_table, batch by batch, one transaction
-- per batch (a batch: batch_size rows; the model takes them pgvision.batch_size images at a
-- time). This file: the checks, the start and the procedure; 012-embed-table-batch.sql: a
-- batch.

-- Checks that tbl.image_column (bytea) can be embedded by model into tbl.feature_column (a
-- vector column of the model's dimensions, as pgvision._vector_column wants it); returns
-- the feature column's type name.
CREATE OR REPLACE FUNCTION pgvision._embed_columns(rel regclass, image_col name, feature_col name,
                                                   model_name text)
RETURNS text
LANGUAGE plpgsql STABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    _kind "char";
    _dim int;
    _image record;
    _feature record;
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

    SELECT * INTO _image FROM pgvision._require_column(rel, image_col);
    IF _image.type <> 'pg_catalog.bytea'::pg_catalog.regtype THEN
        RAISE EXCEPTION 'image column "%" is of type %, not bytea', image_col,
            pg_catalog.format_type(_image.type, NULL) USING ERRCODE = 'datatype_mismatch';
    END IF;

    SELECT * INTO _feature FROM pgvision._require_column(rel, feature_col);
    IF _feature.type IS DISTINCT FROM pg_catalog.to_regtype(pg_catalog.format('%I.vector', pgvision._vector_schema())) THEN
        RAISE EXCEPTION 'feature column "%" is of type %, not vector', feature_col,
            pg_catalog.format_type(_feature.type, _feature.typmod) USING ERRCODE = 'datatype_mismatch',
            HINT = pg_catalog.format('features of model "%s" fit a vector(%s) column', model_name, _dim);
    END IF;
    IF _feature.generated <> '' THEN
        RAISE EXCEPTION 'feature column "%" is a generated column', feature_col
            USING ERRCODE = 'generated_always';
    END IF;
    IF _feature.typmod > 0 AND _feature.typmod <> _dim THEN
        RAISE EXCEPTION 'feature column "%" has % dimensions, but model "%" returns %',
            feature_col, _feature.typmod, model_name, _dim USING ERRCODE = 'datatype_mismatch';
    END IF;
    RETURN pg_catalog.format_type(_feature.type, NULL);
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
    PERFORM pgvision._require_column(rel, key_col);
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

-- batch_size of embed_table and embed_shards: rows per transaction.
CREATE OR REPLACE FUNCTION pgvision._check_batch_size(batch_size int)
RETURNS void
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF batch_size IS NULL THEN
        RAISE EXCEPTION 'batch_size must not be null' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF batch_size < 1 THEN
        RAISE EXCEPTION 'batch_size must be at least 1, not %', batch_size
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
END
$$;
COMMENT ON FUNCTION pgvision._check_batch_size(int) IS
'internal: raises unless batch_size (rows per transaction of embed_table and embed_shards) is at least 1';

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
    IF retry IS NULL THEN
        RAISE EXCEPTION 'retry_errors must not be null' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    PERFORM pgvision._check_batch_size(nrows);
    _key := pgvision._embed_key(rel, key_col);
    IF NOT pg_catalog.has_column_privilege(rel, feature_col, 'UPDATE') THEN
        RAISE EXCEPTION 'permission denied for table %', rel USING ERRCODE = 'insufficient_privilege',
            HINT = pg_catalog.format('embed_table needs UPDATE on column %I', feature_col);
    END IF;
    -- the column records its model; another model is refused while it holds features
    PERFORM pgvision.set_column_model(rel, feature_col, model_name);
    IF retry THEN
        DELETE FROM pgvision.backfill_errors e WHERE e.tbl = rel AND e.feature_column = feature_col;
    END IF;
    EXECUTE pg_catalog.format('SELECT pg_catalog.count(*) FROM %s AS t WHERE t.%I IS NULL',
                              pgvision._rel_name(rel), feature_col)
        INTO _todo;
    IF NOT retry THEN
        EXECUTE pg_catalog.format(
            'SELECT pg_catalog.count(*) FROM pgvision.backfill_errors AS e JOIN %s AS t'
            ' ON t.%I::pg_catalog.text OPERATOR(pg_catalog.=) e.key'
            ' WHERE e.tbl OPERATOR(pg_catalog.=) $1 AND e.feature_column OPERATOR(pg_catalog.=) $2'
            ' AND t.%I IS NULL',
            pgvision._rel_name(rel), _key, feature_col)
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

-- PL/pgSQL cannot tell whether the procedure it runs may COMMIT; src/transaction.c asks
-- the procedure's SPI connection.
CREATE OR REPLACE FUNCTION pgvision._transaction_context()
RETURNS text
LANGUAGE c VOLATILE PARALLEL RESTRICTED
SET search_path = pg_catalog, pg_temp
AS '$libdir/pgvision', 'pgvision_transaction_context';
COMMENT ON FUNCTION pgvision._transaction_context() IS
'internal: NULL when the calling procedure may COMMIT, else why not ("run inside a transaction block", "be called from a function")';

-- No SET clause here: a procedure with one cannot COMMIT. The body runs under the caller's
-- search_path, so it declares its variables with qualified types and only calls
-- schema-qualified functions with arguments of their exact types; the work is done by
-- pgvision._embed_table_start and _embed_table_batch, which pin search_path.
CREATE OR REPLACE PROCEDURE pgvision.embed_table(tbl regclass, image_column name, feature_column name,
                                                 model text DEFAULT '',
                                                 batch_size int DEFAULT 64,
                                                 key_column name DEFAULT NULL,
                                                 retry_errors boolean DEFAULT false)
LANGUAGE plpgsql
AS $$
DECLARE
    _key pg_catalog.name;
    _after pg_catalog.text;
    _cannot pg_catalog.text := pgvision._transaction_context();
    _model pg_catalog.text := model;
BEGIN
    -- COMMIT would refuse only after the first batch's work; say so before any.
    IF _cannot IS NOT NULL THEN
        RAISE EXCEPTION USING ERRCODE = 'invalid_transaction_termination',
            MESSAGE = pg_catalog.concat('pgvision.embed_table cannot ', _cannot),
            DETAIL = 'it commits after every batch',
            HINT = 'CALL it on its own, in autocommit mode; from JDBC, send CALL pgvision.embed_table(...) as a plain statement, or use {call ...} with the connection option escapeSyntaxCallMode=callIfNoReturn';
    END IF;
    -- left out (''): the column's recorded model, else the default one
    IF _model OPERATOR(pg_catalog.=) '' THEN
        _model := COALESCE(pgvision.column_model(tbl, feature_column), pgvision._default_model());
    END IF;
    _key := pgvision._embed_table_start(tbl, image_column, feature_column, _model, batch_size,
                                        key_column, retry_errors);
    COMMIT;
    LOOP
        _after := pgvision._embed_table_batch(tbl, image_column, feature_column, _model, batch_size,
                                              _key, retry_errors, _after,
                                              pg_catalog.current_setting('search_path'));
        COMMIT;
        EXIT WHEN _after IS NULL;
    END LOOP;
END
$$;
COMMENT ON PROCEDURE pgvision.embed_table(regclass, name, name, text, int, name, boolean) IS
'fills the NULL features of a table from its images with model (left out: the feature column''s recorded model, else efficientnet_lite0) and records the model (pgvision.set_column_model; another model is refused while the column holds features), batch_size rows per batch, committing after each batch (the model takes them pgvision.batch_size images at a time); progress in pgvision.backfill_progress, bad images in pgvision.backfill_errors; CALL it outside a transaction block; can be interrupted and run again';

-- idempotent/012-embed-table-batch.sql
-- One batch of pgvision.embed_table (011-embed-table.sql): the next rows in key order,
-- embedded in one statement, one at a time when an image is bad, and counted.

-- The operators that compare keys: those of the btree operator family of the key's unique
-- index, with their schema, so that a key type whose operators live outside pg_catalog
-- (citext) works and no operator of the same name elsewhere is ever chosen.
CREATE OR REPLACE FUNCTION pgvision._key_operators(rel regclass, key_col name,
                                                   OUT lt text, OUT eq text, OUT gt text)
LANGUAGE sql STABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT pg_catalog.max(o.op) FILTER (WHERE o.strategy = 1),
           pg_catalog.max(o.op) FILTER (WHERE o.strategy = 3),
           pg_catalog.max(o.op) FILTER (WHERE o.strategy = 5)
    FROM (SELECT i.indclass[0] AS opclass
          FROM pg_catalog.pg_index i
          JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]
          JOIN pg_catalog.pg_class ic ON ic.oid = i.indexrelid
          JOIN pg_catalog.pg_am am ON am.oid = ic.relam
          WHERE i.indrelid = rel AND a.attname = key_col AND i.indisunique AND i.indisvalid
            AND i.indnkeyatts = 1 AND i.indpred IS NULL AND am.amname = 'btree'
          ORDER BY i.indisprimary DESC, i.indexrelid
          LIMIT 1) ix
    JOIN pg_catalog.pg_opclass oc ON oc.oid = ix.opclass
    CROSS JOIN LATERAL (
        SELECT ao.amopstrategy AS strategy,
               pg_catalog.format('OPERATOR(%I.%s)', n.nspname, op.oprname) AS op
        FROM pg_catalog.pg_amop ao
        JOIN pg_catalog.pg_operator op ON op.oid = ao.amopopr
        JOIN pg_catalog.pg_namespace n ON n.oid = op.oprnamespace
        WHERE ao.amopfamily = oc.opcfamily AND ao.amoplefttype = oc.opcintype
          AND ao.amoprighttype = oc.opcintype AND ao.amopstrategy IN (1, 3, 5)) o
$$;
COMMENT ON FUNCTION pgvision._key_operators(regclass, name) IS
'internal: the <, = and > operators of the btree operator family of a key column''s unique index, each as OPERATOR(schema.op)';

-- The rows of a batch one at a time, after embed_batch failed on bad data: the features
-- (NULL where the image is NULL or bad) as pgvector's text form, which reads back exactly;
-- each bad image is recorded in pgvision.backfill_errors.
CREATE OR REPLACE FUNCTION pgvision._embed_one_by_one(rel regclass, feature_col name, model_name text,
                                                      keys text[], images bytea[])
RETURNS text[]
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    _features text[] := pg_catalog.array_fill(NULL::text, ARRAY[pg_catalog.cardinality(keys)]);
    _msg text;
    _state text;
BEGIN
    FOR i IN 1 .. pg_catalog.cardinality(keys) LOOP
        CONTINUE WHEN images[i] IS NULL;
        BEGIN
            _features[i] := pgvision.embed(images[i], model_name)::text;
        EXCEPTION WHEN data_exception OR program_limit_exceeded THEN
            GET STACKED DIAGNOSTICS _msg = MESSAGE_TEXT, _state = RETURNED_SQLSTATE;
            INSERT INTO pgvision.backfill_errors AS e
                (tbl, feature_column, key, model, error, sqlstate)
            VALUES (rel, feature_col, keys[i], model_name, _msg, _state)
            ON CONFLICT (tbl, feature_column, key) DO UPDATE
                SET model = EXCLUDED.model, error = EXCLUDED.error,
                    sqlstate = EXCLUDED.sqlstate, at = EXCLUDED.at;
        END;
    END LOOP;
    RETURN _features;
END
$$;
COMMENT ON FUNCTION pgvision._embed_one_by_one(regclass, name, text, text[], bytea[]) IS
'internal: embeds a batch of pgvision.embed_table one image at a time, recording the bad ones in pgvision.backfill_errors; returns the features as text, NULL for NULL and bad images';

-- Counts a batch into the run's progress row and says so; rows = 0 ends the run.
CREATE OR REPLACE FUNCTION pgvision._embed_table_progress(rel regclass, feature_col name, nrows int,
                                                          done bigint, nulls int, failed int)
RETURNS void
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    _p pgvision.backfill_progress;
BEGIN
    UPDATE pgvision.backfill_progress AS p
    SET rows_done = p.rows_done + done, null_images = p.null_images + nulls,
        errors = p.errors + failed, rows_left = CASE WHEN nrows = 0 THEN 0 ELSE greatest(p.rows_left - nrows, 0) END,
        updated = pg_catalog.clock_timestamp(),
        finished = CASE WHEN nrows = 0 THEN pg_catalog.clock_timestamp() END,
        rate = CASE WHEN nrows = 0 THEN p.rate
                    ELSE (p.rows_done + done) / greatest(extract(epoch FROM pg_catalog.clock_timestamp() - p.started), 0.001) END
    WHERE p.tbl = rel AND p.feature_column = feature_col
    RETURNING p.* INTO _p;
    IF nrows = 0 THEN
        RAISE NOTICE '%: embedded % rows in % s (% rows/s), % failed, % without image',
            rel, _p.rows_done, round(extract(epoch FROM _p.finished - _p.started), 1),
            round(_p.rate::numeric, 1), _p.errors, _p.null_images;
    ELSE
        RAISE NOTICE '%: % rows embedded, % left, % failed, % without image, % rows/s',
            rel, _p.rows_done, _p.rows_left, _p.errors, _p.null_images, round(_p.rate::numeric, 1);
    END IF;
END
$$;
COMMENT ON FUNCTION pgvision._embed_table_progress(regclass, name, int, bigint, int, int) IS
'internal: adds a batch of pgvision.embed_table to its progress row (a batch of 0 rows marks the run finished) and raises the NOTICE that reports it';

-- One batch: the next nrows rows after after_key (in key order) whose feature is NULL,
-- embedded with one embed_batch call; if that fails on bad data, the rows are embedded one
-- at a time and those that fail are recorded in pgvision.backfill_errors. Returns the last
-- key of the batch, or NULL when there is nothing left (and marks the run finished).
-- The UPDATE of the user's table runs with the caller's search_path, so the table's own
-- triggers work as they do for the caller's UPDATEs; the statement itself names every
-- relation, type, function and operator with its schema (pgvision._rel_name,
-- pgvision._column's type_name, _key_operators), so that nothing the caller's search_path
-- finds first (a public.= on varchar, a public.text domain) runs in it.
CREATE OR REPLACE FUNCTION pgvision._embed_table_batch(rel regclass, image_col name, feature_col name,
                                                       model_name text, nrows int, key_col name,
                                                       retry boolean, after_key text,
                                                       caller_search_path text)
RETURNS text
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    _rel text := pgvision._rel_name(rel);
    _keytype text := (SELECT c.type_name FROM pgvision._column(rel, key_col) c);
    _feattype text := (SELECT c.type_name FROM pgvision._column(rel, feature_col) c);
    _ops record := pgvision._key_operators(rel, key_col);
    _keys text[];
    _images bytea[];
    _features text[];
    _n int;
    _nulls int;
    _failed int := 0;
    _done bigint := 0;
    -- $1 keys, $2 features: text, or float4 bytes straight from the model (see below)
    _update constant text := 'UPDATE %1$s AS t SET %2$I = %7$s::%3$s FROM ROWS FROM (pg_catalog.unnest($1::pg_catalog.text[]), %8$s)'
                             ' AS u (k, f) WHERE t.%4$I %6$s u.k::%5$s AND u.f IS NOT NULL';
BEGIN
    IF _ops.lt IS NULL OR _ops.eq IS NULL OR _ops.gt IS NULL THEN
        RAISE EXCEPTION 'key column "%" of % has no btree unique index to order rows by', key_col, rel
            USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;

    -- Keyset pagination on the key's unique index: each batch reads only rows after the
    -- previous one, so a run is linear in the table's size and always ends.
    EXECUTE pg_catalog.format(
        'SELECT pg_catalog.array_agg(b.k::pg_catalog.text ORDER BY b.k USING %7$s),'
        ' pg_catalog.array_agg(b.img ORDER BY b.k USING %7$s)'
        ' FROM (SELECT t.%1$I AS k, t.%2$I AS img FROM %3$s AS t WHERE t.%4$I IS NULL %5$s %6$s'
        '       ORDER BY t.%1$I USING %7$s LIMIT $4 FOR UPDATE OF t) AS b',
        key_col, image_col, _rel, feature_col,
        CASE WHEN after_key IS NOT NULL THEN pg_catalog.format('AND t.%I %s $1::%s', key_col, _ops.gt, _keytype) END,
        CASE WHEN NOT retry THEN pg_catalog.format(
            'AND NOT EXISTS (SELECT FROM pgvision.backfill_errors AS e WHERE e.tbl OPERATOR(pg_catalog.=) $2'
            ' AND e.feature_column OPERATOR(pg_catalog.=) $3'
            ' AND e.key OPERATOR(pg_catalog.=) t.%I::pg_catalog.text)', key_col) END,
        _ops.lt)
        INTO _keys, _images USING after_key, rel, feature_col, nrows;

    _n := coalesce(pg_catalog.array_length(_keys, 1), 0);
    IF _n = 0 THEN
        PERFORM pgvision._release_batch_memory();
        PERFORM pgvision._embed_table_progress(rel, feature_col, 0, 0, 0, 0);
        RETURN NULL;
    END IF;

    _nulls := _n - pg_catalog.cardinality(pg_catalog.array_remove(_images, NULL));
    IF _nulls < _n THEN
        PERFORM pg_catalog.set_config('search_path', caller_search_path, true);
        BEGIN
            -- One statement: the features go from the model to the column as float4 bytes,
            -- without a round trip through text. The model keeps its activation memory from
            -- batch to batch until the run ends (BENCHMARKS.md has what regrowing it costs);
            -- a run that is interrupted leaves it to the next embed_batch or the end of the
            -- session.
            EXECUTE pg_catalog.format(_update, _rel, feature_col, _feattype, key_col, _keytype, _ops.eq,
                'pgvision._vector_from_float4(u.f)',
                'pg_catalog.unnest(pgvision._embed_batch_float4($2::pg_catalog.bytea[], $3::pg_catalog.text, true))')
                USING _keys, _images, model_name;
            GET DIAGNOSTICS _done = ROW_COUNT;
        EXCEPTION WHEN data_exception OR program_limit_exceeded THEN
            -- Some image is bad: embed one at a time and record those that fail.
            PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);
            _features := pgvision._embed_one_by_one(rel, feature_col, model_name, _keys, _images);
            _failed := _n - _nulls - pg_catalog.cardinality(pg_catalog.array_remove(_features, NULL));
            PERFORM pg_catalog.set_config('search_path', caller_search_path, true);
            EXECUTE pg_catalog.format(_update, _rel, feature_col, _feattype, key_col, _keytype, _ops.eq,
                'u.f', 'pg_catalog.unnest($2::pg_catalog.text[])')
                USING _keys, _features;
            GET DIAGNOSTICS _done = ROW_COUNT;
        END;
        PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);
    END IF;
    PERFORM pgvision._embed_table_progress(rel, feature_col, _n, _done, _nulls, _failed);
    RETURN _keys[_n];
END
$$;
COMMENT ON FUNCTION pgvision._embed_table_batch(regclass, name, name, text, int, name, boolean, text, text) IS
'internal: embeds the next batch of pgvision.embed_table and records its progress; returns the batch''s last key, NULL when done';


-- idempotent/013-auto-embed.sql
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

CREATE OR REPLACE FUNCTION pgvision.enable_auto_embed(tbl regclass, image_column name, feature_column name,
                                                      model text DEFAULT '')
RETURNS void
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM pgvision._check_owner(tbl);
    IF model = '' THEN  -- left out: the column's recorded model, else the default one
        model := coalesce(pgvision.column_model(tbl, feature_column), pgvision._default_model());
    END IF;
    PERFORM pgvision._embed_columns(tbl, image_column, feature_column, model);
    PERFORM pgvision.set_column_model(tbl, feature_column, model);
    EXECUTE pg_catalog.format(
        'CREATE OR REPLACE TRIGGER pgvision_auto_embed BEFORE INSERT OR UPDATE OF %I ON %s'
        ' FOR EACH ROW EXECUTE FUNCTION pgvision._auto_embed(%L, %L, %L)',
        image_column, tbl, image_column, feature_column, model);
END
$$;
COMMENT ON FUNCTION pgvision.enable_auto_embed(regclass, name, name, text) IS
'creates the trigger pgvision_auto_embed, which sets the feature column to pgvision.embed of the image column with model (left out: the column''s recorded model, else efficientnet_lite0; recorded with pgvision.set_column_model) on INSERT and on UPDATE of the image column (NULL image, NULL feature); replaces an earlier one; for the table''s owner';

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

-- idempotent/014-switch-model.sql
-- Moving a feature column to another model online: CALL pgvision.switch_model, or its steps
-- one by one (switch_model_start, CALL embed_table, switch_model_finish), and
-- switch_model_abort.
--
-- The switch keeps no state of its own: a switch under way is its trigger (arguments: the
-- image column, the new column, the model, the column being replaced), the new column's
-- model is its pgvision.feature_models record, and the backfill's progress and bad rows are
-- embed_table's bookkeeping. So every step can be run again after an interruption, and
-- pg_dump keeps a half-done switch like the rest of the table.
--
-- Why a procedure and steps: the backfill commits batch by batch (embed_table), which only
-- a procedure called on its own can do; the steps are functions so that a DBA can run them
-- apart (build the new column's index with CREATE INDEX CONCURRENTLY before the swap, say).

-- Sets the new column (TG_ARGV[1]) to pgvision.embed of the image column (TG_ARGV[0]) with
-- the new model (TG_ARGV[2]) while the column it replaces (TG_ARGV[3]) is still searched.
-- The body is _auto_embed's; it is a function of its own because the function is what tells
-- a switch's trigger from pgvision_auto_embed (pg_trigger.tgfoid), and so is the state.
CREATE OR REPLACE FUNCTION pgvision._switch_model_embed()
RETURNS trigger
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    _image bytea;
BEGIN
    EXECUTE pg_catalog.format('SELECT ($1).%I', TG_ARGV[0]) INTO _image USING NEW;
    RETURN pg_catalog.jsonb_populate_record(
        NEW, pg_catalog.jsonb_build_object(TG_ARGV[1], pgvision.embed(_image, TG_ARGV[2])));
END
$$;
COMMENT ON FUNCTION pgvision._switch_model_embed() IS
'internal: trigger function of a switch under way (pgvision.switch_model_start); sets the new feature column (TG_ARGV[1]) to pgvision.embed of the image column (TG_ARGV[0]) with the new model (TG_ARGV[2]) on INSERT and on UPDATE of the image column; TG_ARGV[3] names the column it will replace';

-- A trigger's arguments (pg_trigger.tgargs: each one NUL-terminated).
CREATE OR REPLACE FUNCTION pgvision._trigger_args(args bytea)
RETURNS text[]
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE STRICT
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    _out text[] := '{}';
    _at int;
BEGIN
    LOOP
        _at := pg_catalog.position(args, '\x00'::bytea);
        EXIT WHEN _at = 0;
        _out := _out || pg_catalog.convert_from(pg_catalog.substr(args, 1, _at - 1),
                                                pg_catalog.getdatabaseencoding());
        args := pg_catalog.substr(args, _at + 1);
    END LOOP;
    RETURN _out;
END
$$;
COMMENT ON FUNCTION pgvision._trigger_args(bytea) IS
'internal: the arguments of a trigger (pg_trigger.tgargs) as text';

-- The switch under way on tbl.feature_column, from its trigger; no row when there is none.
CREATE OR REPLACE FUNCTION pgvision._switch_state(tbl regclass, feature_column name,
                                                  OUT trigger_name name, OUT image_column name,
                                                  OUT new_column name, OUT model text)
RETURNS SETOF record
LANGUAGE sql STABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT t.tgname, a[1]::name, a[2]::name, a[3]
    FROM pg_catalog.pg_trigger t
    CROSS JOIN LATERAL pgvision._trigger_args(t.tgargs) a
    WHERE t.tgrelid = _switch_state.tbl AND NOT t.tgisinternal
      AND t.tgfoid = 'pgvision._switch_model_embed()'::pg_catalog.regprocedure
      AND a[4] = _switch_state.feature_column
    ORDER BY t.oid
    LIMIT 1
$$;
COMMENT ON FUNCTION pgvision._switch_state(regclass, name) IS
'internal: the switch under way on a feature column, read from its trigger: the trigger, the image column, the new column and its model; no row when there is none';

CREATE OR REPLACE FUNCTION pgvision._switch_none(tbl regclass, feature_column name)
RETURNS void
LANGUAGE plpgsql STABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RAISE EXCEPTION 'no switch of model is under way on column "%" of relation %', feature_column, tbl
        USING ERRCODE = 'object_not_in_prerequisite_state',
              HINT = 'start one with pgvision.switch_model_start or CALL pgvision.switch_model';
END
$$;
COMMENT ON FUNCTION pgvision._switch_none(regclass, name) IS
'internal: raises object_not_in_prerequisite_state: no switch is under way on the column';

CREATE OR REPLACE FUNCTION pgvision.switch_model_start(tbl regclass, feature_column name, model text,
                                                       image_column name DEFAULT 'image',
                                                       new_column name DEFAULT NULL)
RETURNS name
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    _s record;
    _new name := coalesce(new_column, (feature_column::text || '_next')::name);
    _current text;
    _dim int;
BEGIN
    IF tbl IS NULL OR feature_column IS NULL OR model IS NULL OR image_column IS NULL THEN
        RAISE EXCEPTION 'tbl, feature_column, model and image_column must not be null'
            USING ERRCODE = 'null_value_not_allowed';
    END IF;
    PERFORM pgvision._check_owner(tbl);
    PERFORM pgvision._vector_column(tbl, feature_column);
    -- (scale-out, 042-shard-tables.sql, may be left out)
    IF pg_catalog.to_regprocedure('pgvision._is_sharded(regclass)') IS NOT NULL THEN
        IF pgvision._is_sharded(tbl) THEN
            RAISE EXCEPTION 'relation % is sharded', tbl USING ERRCODE = 'feature_not_supported',
                HINT = 'switch the model of each shard''s table on its shard';
        END IF;
    END IF;
    SELECT * INTO _s FROM pgvision._switch_state(tbl, feature_column);
    IF FOUND THEN
        -- called again: the same switch goes on, another one is refused
        IF _s.model = model AND _s.new_column = _new AND _s.image_column = image_column THEN
            RETURN _s.new_column;
        END IF;
        RAISE EXCEPTION 'a switch of column "%" of relation % to model "%" (column "%") is under way',
                        feature_column, tbl, _s.model, _s.new_column
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = pg_catalog.format('finish it, or abandon it with SELECT pgvision.switch_model_abort(%L, %L)',
                                           tbl::text, feature_column);
    END IF;
    SELECT m.dim INTO _dim FROM pgvision.models m WHERE m.name = switch_model_start.model;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'model "%" does not exist', model USING ERRCODE = 'undefined_object',
            HINT = 'SELECT name FROM pgvision.models lists the registered models';
    END IF;
    _current := coalesce(pgvision.column_model(tbl, feature_column), pgvision._default_model());
    IF _current = model THEN
        RAISE EXCEPTION 'feature column "%" of relation % already holds features of model "%"',
                        feature_column, tbl, model USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF EXISTS (SELECT FROM pgvision._column(tbl, _new)) THEN
        RAISE EXCEPTION 'column "%" of relation % already exists', _new, tbl
            USING ERRCODE = 'duplicate_column',
                  HINT = 'name a new column with new_column => ''...''';
    END IF;
    EXECUTE pg_catalog.format('ALTER TABLE %s ADD COLUMN %I %I.vector(%s)',
                              pgvision._rel_name(tbl), _new, pgvision._vector_schema(), _dim);
    PERFORM pgvision._embed_columns(tbl, image_column, _new, model);  -- the image column
    PERFORM pgvision.set_column_model(tbl, _new, model);
    -- writes from now on get the new feature; embed_table fills the rows already there
    EXECUTE pg_catalog.format(
        'CREATE TRIGGER %I BEFORE INSERT OR UPDATE OF %I ON %s'
        ' FOR EACH ROW EXECUTE FUNCTION pgvision._switch_model_embed(%L, %L, %L, %L)',
        'pgvision_switch_model_' || (SELECT c.num FROM pgvision._column(tbl, _new) c),
        image_column, pgvision._rel_name(tbl), image_column, _new, model, feature_column);
    RETURN _new;
END
$$;
COMMENT ON FUNCTION pgvision.switch_model_start(regclass, name, text, name, name) IS
'starts moving a feature column to another model: adds the new column (new_column, default <feature_column>_next, vector of the model''s dimensions), records its model and creates the trigger that embeds the image column into it on INSERT and on UPDATE of the image column; returns the new column''s name; called again for the same switch, returns it and does nothing; searches of the feature column go on with its model until switch_model_finish; for the table''s owner';

-- The new column gets an index like each pgvector index of the column it replaces (method,
-- metric, halfvec, m/ef_construction or lists), unless it has such an index already (a
-- resumed switch, or one the DBA built with CREATE INDEX CONCURRENTLY). Returns how many
-- it built.
CREATE OR REPLACE FUNCTION pgvision._switch_model_indexes(tbl regclass, feature_column name)
RETURNS int
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    _s record;
    _i record;
    _built int := 0;
BEGIN
    PERFORM pgvision._check_owner(tbl);
    SELECT * INTO _s FROM pgvision._switch_state(tbl, feature_column);
    IF NOT FOUND THEN
        PERFORM pgvision._switch_none(tbl, feature_column);
    END IF;
    FOR _i IN
        SELECT o.* FROM pgvision._switch_indexes(tbl, feature_column) o
        WHERE NOT EXISTS (SELECT FROM pgvision._switch_indexes(tbl, _s.new_column) n
                          WHERE n.method = o.method AND n.metric = o.metric AND n.halfvec = o.halfvec)
    LOOP
        PERFORM pgvision.create_index(tbl, _s.new_column, _i.metric, _i.method,
                                      coalesce(_i.m, 16), coalesce(_i.ef_construction, 64),
                                      CASE WHEN _i.method = 'ivfflat' THEN coalesce(_i.lists, 100) END,
                                      _i.halfvec);
        _built := _built + 1;
    END LOOP;
    RETURN _built;
END
$$;
COMMENT ON FUNCTION pgvision._switch_model_indexes(regclass, name) IS
'internal: builds on the new column of a switch an index like each pgvector index of the column it replaces that it lacks; returns how many';

-- The pgvector indexes of a vector column (plain or over column::halfvec), as create_index
-- would be told to build them.
CREATE OR REPLACE FUNCTION pgvision._switch_indexes(tbl regclass, column_name name)
RETURNS TABLE (index_name name, method text, metric text, halfvec boolean, m int, ef_construction int, lists int)
LANGUAGE sql STABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT ic.relname, am.amname::text, mt.metric, o.opcname LIKE 'halfvec\_%',
           (SELECT pg_catalog.split_part(r, '=', 2)::int FROM pg_catalog.unnest(ic.reloptions) r WHERE r LIKE 'm=%'),
           (SELECT pg_catalog.split_part(r, '=', 2)::int FROM pg_catalog.unnest(ic.reloptions) r WHERE r LIKE 'ef\_construction=%'),
           (SELECT pg_catalog.split_part(r, '=', 2)::int FROM pg_catalog.unnest(ic.reloptions) r WHERE r LIKE 'lists=%')
    FROM pg_catalog.pg_index i
    JOIN pg_catalog.pg_class ic ON ic.oid = i.indexrelid
    JOIN pg_catalog.pg_am am ON am.oid = ic.relam
    JOIN pg_catalog.pg_opclass o ON o.oid = i.indclass[0]
    JOIN pg_catalog.pg_namespace n ON n.oid = o.opcnamespace
    JOIN pgvision._metrics() mt ON o.opcname IN ('vector_' || mt.opclass, 'halfvec_' || mt.opclass)
    JOIN pgvision._column(tbl, column_name) c ON true
    WHERE i.indrelid = tbl AND i.indnatts = 1 AND i.indisvalid AND i.indpred IS NULL
      AND am.amname IN ('hnsw', 'ivfflat') AND n.nspname = pgvision._vector_schema()
      -- the column itself, or an expression over it (the halfvec cast)
      AND (i.indkey[0] = c.num
           OR (i.indkey[0] = 0 AND EXISTS (
                  SELECT FROM pg_catalog.pg_depend d
                  WHERE d.classid = 'pg_catalog.pg_class'::pg_catalog.regclass AND d.objid = i.indexrelid
                    AND d.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass
                    AND d.refobjid = tbl AND d.refobjsubid = c.num)))
    ORDER BY i.indexrelid
$$;
COMMENT ON FUNCTION pgvision._switch_indexes(regclass, name) IS
'internal: the valid pgvector indexes (hnsw, ivfflat) of a vector column or of its halfvec cast: name, method, metric, halfvec, and their m, ef_construction, lists';

-- The backfill bookkeeping of a column (pgvision.backfill_progress, backfill_errors) is
-- kept by its name: switch_model_finish takes a column's rows out before it renames the
-- column and puts them back under the new name after.
CREATE OR REPLACE FUNCTION pgvision._switch_take(tbl regclass, column_name name)
RETURNS jsonb
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    _progress jsonb;
    _errors jsonb;
BEGIN
    WITH d AS (DELETE FROM pgvision.backfill_progress p
               WHERE p.tbl = _switch_take.tbl AND p.feature_column = column_name RETURNING p.*)
    SELECT pg_catalog.jsonb_agg(pg_catalog.to_jsonb(d)) INTO _progress FROM d;
    WITH d AS (DELETE FROM pgvision.backfill_errors e
               WHERE e.tbl = _switch_take.tbl AND e.feature_column = column_name RETURNING e.*)
    SELECT pg_catalog.jsonb_agg(pg_catalog.to_jsonb(d)) INTO _errors FROM d;
    RETURN pg_catalog.jsonb_build_object('progress', coalesce(_progress, '[]'), 'errors', coalesce(_errors, '[]'));
END
$$;
COMMENT ON FUNCTION pgvision._switch_take(regclass, name) IS
'internal: deletes the backfill_progress and backfill_errors rows of a column and returns them, for pgvision._switch_put after a rename';

CREATE OR REPLACE FUNCTION pgvision._switch_put(tbl regclass, column_name name, kept jsonb)
RETURNS void
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    _as jsonb := pg_catalog.jsonb_build_object('tbl', tbl::oid::text, 'feature_column', column_name);
BEGIN
    INSERT INTO pgvision.backfill_progress
    SELECT (pg_catalog.jsonb_populate_record(NULL::pgvision.backfill_progress, r OPERATOR(pg_catalog.||) _as)).*
    FROM pg_catalog.jsonb_array_elements(kept -> 'progress') r;
    INSERT INTO pgvision.backfill_errors
    SELECT (pg_catalog.jsonb_populate_record(NULL::pgvision.backfill_errors, r OPERATOR(pg_catalog.||) _as)).*
    FROM pg_catalog.jsonb_array_elements(kept -> 'errors') r;
END
$$;
COMMENT ON FUNCTION pgvision._switch_put(regclass, name, jsonb) IS
'internal: puts back the bookkeeping rows pgvision._switch_take returned, under a column''s new name';

CREATE OR REPLACE FUNCTION pgvision.switch_model_finish(tbl regclass, feature_column name,
                                                        drop_old boolean DEFAULT false,
                                                        previous_column name DEFAULT NULL)
RETURNS name
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    _s record;
    _rel text := pgvision._rel_name(tbl);
    _prev name := coalesce(previous_column, (feature_column::text || '_previous')::name);
    _key name;
    _left bigint;
    _auto record;
    _old record;
    _new record;
    _renames text[] := '{}';
    _kept jsonb;
BEGIN
    IF tbl IS NULL OR feature_column IS NULL OR drop_old IS NULL THEN
        RAISE EXCEPTION 'tbl, feature_column and drop_old must not be null'
            USING ERRCODE = 'null_value_not_allowed';
    END IF;
    PERFORM pgvision._check_owner(tbl);
    SELECT * INTO _s FROM pgvision._switch_state(tbl, feature_column);
    IF NOT FOUND THEN
        PERFORM pgvision._switch_none(tbl, feature_column);
    END IF;
    PERFORM pgvision._vector_column(tbl, feature_column);
    PERFORM pgvision._vector_column(tbl, _s.new_column);
    IF NOT drop_old AND EXISTS (SELECT FROM pgvision._column(tbl, _prev)) THEN
        RAISE EXCEPTION 'column "%" of relation % already exists', _prev, tbl
            USING ERRCODE = 'duplicate_column',
                  HINT = 'name another one with previous_column => ''...'', drop it, or drop the old column with drop_old => true';
    END IF;

    -- Every row with an image has its new feature, but those embed_table could not embed
    -- (pgvision.backfill_errors). Rows written from here on get theirs from the trigger.
    SELECT p.key_column INTO _key FROM pgvision.backfill_progress p
    WHERE p.tbl = switch_model_finish.tbl AND p.feature_column = _s.new_column;
    EXECUTE pg_catalog.format(
        'SELECT pg_catalog.count(*) FROM %s AS t WHERE t.%I IS NULL AND t.%I IS NOT NULL %s',
        _rel, _s.new_column, _s.image_column,
        CASE WHEN _key IS NOT NULL AND EXISTS (SELECT FROM pgvision._column(tbl, _key)) THEN pg_catalog.format(
            'AND NOT EXISTS (SELECT FROM pgvision.backfill_errors AS e WHERE e.tbl OPERATOR(pg_catalog.=) $1'
            ' AND e.feature_column OPERATOR(pg_catalog.=) $2 AND e.key OPERATOR(pg_catalog.=) t.%I::pg_catalog.text)',
            _key) END)
        INTO _left USING tbl, _s.new_column;
    IF _left > 0 THEN
        RAISE EXCEPTION '% rows of relation % have no feature of model "%" in column "%" yet',
                        _left, tbl, _s.model, _s.new_column
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = pg_catalog.format('CALL pgvision.embed_table(%L, %L, %L, %L) fills them',
                                           tbl::text, _s.image_column, _s.new_column, _s.model);
    END IF;
    PERFORM pgvision._switch_model_indexes(tbl, feature_column);

    -- The swap: one short transaction holding the table's ACCESS EXCLUSIVE lock, taken now
    -- so that no write slips in between the renames.
    EXECUTE pg_catalog.format('LOCK TABLE %s IN ACCESS EXCLUSIVE MODE', _rel);
    -- index names: each new index takes the name of the old one it stands in for
    FOR _old IN SELECT * FROM pgvision._switch_indexes(tbl, feature_column) LOOP
        SELECT * INTO _new FROM pgvision._switch_indexes(tbl, _s.new_column) n
        WHERE n.method = _old.method AND n.metric = _old.metric AND n.halfvec = _old.halfvec
          AND NOT n.index_name = ANY (_renames)
        LIMIT 1;
        IF FOUND THEN
            _renames := _renames || ARRAY[_old.index_name::text, _new.index_name::text,
                                          pg_catalog.format('_%s_%s%s_idx', _old.method, _old.metric,
                                                            CASE WHEN _old.halfvec THEN '_half' ELSE '' END)];
        END IF;
    END LOOP;
    SELECT t.tgname, a[1]::name AS image_column INTO _auto
    FROM pg_catalog.pg_trigger t CROSS JOIN LATERAL pgvision._trigger_args(t.tgargs) a
    WHERE t.tgrelid = tbl AND t.tgname = 'pgvision_auto_embed'
      AND t.tgfoid = 'pgvision._auto_embed()'::pg_catalog.regprocedure AND a[2] = feature_column;

    IF drop_old THEN
        -- its indexes, record and bookkeeping go with it (pgvision._forget_dropped)
        EXECUTE pg_catalog.format('ALTER TABLE %s DROP COLUMN %I', _rel, feature_column);
        _prev := NULL;
    ELSE
        FOR i IN 1 .. pg_catalog.cardinality(_renames) / 3 LOOP
            EXECUTE pg_catalog.format('ALTER INDEX %I.%I RENAME TO %I',
                                      (SELECT c.relnamespace::pg_catalog.regnamespace::text FROM pg_catalog.pg_class c WHERE c.oid = tbl),
                                      _renames[3 * i - 2], pgvision._index_name(tbl, _prev, _renames[3 * i]));
        END LOOP;
        -- the record follows the rename (pgvision._rename_feature_models); the bookkeeping
        -- is by name, and its policies let a row be written only under a column's current
        -- name: taken out before the rename, put back after
        _kept := pgvision._switch_take(tbl, feature_column);
        EXECUTE pg_catalog.format('ALTER TABLE %s RENAME COLUMN %I TO %I', _rel, feature_column, _prev);
        PERFORM pgvision._switch_put(tbl, _prev, _kept);
    END IF;
    _kept := pgvision._switch_take(tbl, _s.new_column);
    EXECUTE pg_catalog.format('ALTER TABLE %s RENAME COLUMN %I TO %I', _rel, _s.new_column, feature_column);
    PERFORM pgvision._switch_put(tbl, feature_column, _kept);
    FOR i IN 1 .. pg_catalog.cardinality(_renames) / 3 LOOP
        EXECUTE pg_catalog.format('ALTER INDEX %I.%I RENAME TO %I',
                                  (SELECT c.relnamespace::pg_catalog.regnamespace::text FROM pg_catalog.pg_class c WHERE c.oid = tbl),
                                  _renames[3 * i - 1], _renames[3 * i - 2]);
    END LOOP;
    -- writes: the switch's trigger goes; an automatic embedding of the column now embeds
    -- with the new model
    EXECUTE pg_catalog.format('DROP TRIGGER %I ON %s', _s.trigger_name, _rel);
    IF _auto.tgname IS NOT NULL THEN
        EXECUTE pg_catalog.format(
            'CREATE OR REPLACE TRIGGER pgvision_auto_embed BEFORE INSERT OR UPDATE OF %I ON %s'
            ' FOR EACH ROW EXECUTE FUNCTION pgvision._auto_embed(%L, %L, %L)',
            _s.image_column, _rel, _s.image_column, feature_column, _s.model);
    END IF;
    IF pgvision.column_model(tbl, feature_column) IS DISTINCT FROM _s.model THEN
        -- the rename event trigger did not run (disabled): record the models by hand
        DELETE FROM pgvision.feature_models f WHERE f.tbl = switch_model_finish.tbl
            AND f.feature_column IN (switch_model_finish.feature_column, _s.new_column, _prev);
        PERFORM pgvision.set_column_model(tbl, feature_column, _s.model);
    END IF;
    RETURN _prev;
END
$$;
COMMENT ON FUNCTION pgvision.switch_model_finish(regclass, name, boolean, name) IS
'ends a switch of model (pgvision.switch_model_start) once every row with an image has its new feature (else object_not_in_prerequisite_state, with the embed_table call that fills them): builds the indexes the new column lacks (like the old column''s), then in one transaction renames the old column to previous_column (default <feature_column>_previous; drop_old => true drops it instead), the new one to feature_column, gives the new indexes the old ones'' names, moves the bookkeeping and recorded model with the columns, drops the switch''s trigger and points pgvision_auto_embed, if the column had it, at the new model; returns the old column''s new name (NULL when dropped); for the table''s owner';

CREATE OR REPLACE FUNCTION pgvision.switch_model_abort(tbl regclass, feature_column name)
RETURNS boolean
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    _s record;
BEGIN
    IF tbl IS NULL OR feature_column IS NULL THEN
        RAISE EXCEPTION 'tbl and feature_column must not be null' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    PERFORM pgvision._check_owner(tbl);
    SELECT * INTO _s FROM pgvision._switch_state(tbl, feature_column);
    IF NOT FOUND THEN
        RAISE NOTICE 'no switch of model is under way on column "%" of relation %', feature_column, tbl;
        RETURN false;
    END IF;
    EXECUTE pg_catalog.format('DROP TRIGGER %I ON %s', _s.trigger_name, pgvision._rel_name(tbl));
    -- its indexes, record and bookkeeping go with it (pgvision._forget_dropped)
    EXECUTE pg_catalog.format('ALTER TABLE %s DROP COLUMN IF EXISTS %I', pgvision._rel_name(tbl), _s.new_column);
    RETURN true;
END
$$;
COMMENT ON FUNCTION pgvision.switch_model_abort(regclass, name) IS
'abandons a switch of model (pgvision.switch_model_start): drops its trigger and its new column, with that column''s indexes, recorded model and backfill bookkeeping; the feature column, its model, indexes and triggers are left as they were; returns false (and says so) when no switch is under way; for the table''s owner';

-- No SET clause: a procedure with one cannot COMMIT (as embed_table, 011-embed-table.sql):
-- the body declares qualified types and calls only schema-qualified functions.
CREATE OR REPLACE PROCEDURE pgvision.switch_model(tbl regclass, feature_column name, model text,
                                                  image_column name DEFAULT 'image',
                                                  new_column name DEFAULT NULL,
                                                  batch_size int DEFAULT 64,
                                                  key_column name DEFAULT NULL,
                                                  drop_old boolean DEFAULT false,
                                                  previous_column name DEFAULT NULL)
LANGUAGE plpgsql
AS $$
DECLARE
    _cannot pg_catalog.text := pgvision._transaction_context();
    _new pg_catalog.name;
BEGIN
    IF _cannot IS NOT NULL THEN
        RAISE EXCEPTION USING ERRCODE = 'invalid_transaction_termination',
            MESSAGE = pg_catalog.concat('pgvision.switch_model cannot ', _cannot),
            DETAIL = 'it commits after every step and every batch of the backfill',
            HINT = 'CALL it on its own, in autocommit mode, or run its steps: pgvision.switch_model_start, CALL pgvision.embed_table, pgvision.switch_model_finish';
    END IF;
    PERFORM pgvision._check_batch_size(batch_size);
    PERFORM pgvision._check_owner(tbl);
    -- called again after its swap committed: nothing left to do
    IF NOT EXISTS (SELECT FROM pgvision._switch_state(tbl, feature_column))
       AND pgvision.column_model(tbl, feature_column) OPERATOR(pg_catalog.=) model THEN
        RAISE NOTICE 'feature column "%" of relation % holds features of model "%"', feature_column, tbl, model;
        RETURN;
    END IF;
    _new := pgvision.switch_model_start(tbl, feature_column, model, image_column, new_column);
    COMMIT;
    CALL pgvision.embed_table(tbl, image_column, _new, model, batch_size, key_column);
    PERFORM pgvision._switch_model_indexes(tbl, feature_column);
    COMMIT;
    PERFORM pgvision.switch_model_finish(tbl, feature_column, drop_old, previous_column);
    COMMIT;
END
$$;
COMMENT ON PROCEDURE pgvision.switch_model(regclass, name, text, name, name, int, name, boolean, name) IS
'moves a feature column to another model while it is searched and written: pgvision.switch_model_start (the new column, its model, a trigger that keeps it current), CALL pgvision.embed_table into it (batch_size rows a transaction), its indexes like the old column''s, then pgvision.switch_model_finish (the swap, in one short transaction); each step commits; interrupted, CALL it again with the same arguments to go on (once the column holds the model, it does nothing); pgvision.switch_model_abort abandons it; CALL it outside a transaction block; for the table''s owner';

-- idempotent/020-index.sql
-- Vector indexes: pgvision.create_index, and the metric a column's index was built for.

-- <table>_<column><suffix>, shortened to fit NAMEDATALEN, numbered if taken in the
-- table's schema.
CREATE OR REPLACE FUNCTION pgvision._index_name(tbl regclass, column_name name, suffix text)
RETURNS text
LANGUAGE plpgsql STABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    _nsp oid := (SELECT c.relnamespace FROM pg_catalog.pg_class c WHERE c.oid = tbl);
    _base text;
    _name text;
    _i int := 0;
BEGIN
    LOOP
        _base := (SELECT c.relname::text FROM pg_catalog.pg_class c WHERE c.oid = tbl) || '_' || column_name;
        WHILE pg_catalog.octet_length(_base || suffix || CASE WHEN _i > 0 THEN _i::text ELSE '' END) > 63 LOOP
            _base := pg_catalog.left(_base, -1);
        END LOOP;
        _name := _base || suffix || CASE WHEN _i > 0 THEN _i::text ELSE '' END;
        EXIT WHEN NOT EXISTS (SELECT 1 FROM pg_catalog.pg_class c WHERE c.relname = _name AND c.relnamespace = _nsp);
        _i := _i + 1;
    END LOOP;
    RETURN _name;
END
$$;
COMMENT ON FUNCTION pgvision._index_name(regclass, name, text) IS
'internal: a free index name <table>_<column><suffix>[N] in the table''s schema, shortened to fit NAMEDATALEN';

CREATE OR REPLACE FUNCTION pgvision.create_index(
    tbl regclass,
    column_name name,
    metric text DEFAULT pgvision._default_metric(),
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
BEGIN
    IF tbl IS NULL OR column_name IS NULL OR _metric IS NULL OR _method IS NULL
       OR create_index.halfvec IS NULL THEN
        RAISE EXCEPTION 'tbl, column_name, metric, method and halfvec must not be null'
            USING ERRCODE = 'null_value_not_allowed';
    END IF;
    _opclass := (SELECT m.opclass FROM pgvision._metric(_metric) m);
    IF _method NOT IN ('hnsw', 'ivfflat') THEN
        RAISE EXCEPTION 'unknown index method "%"', create_index.method
            USING ERRCODE = 'invalid_parameter_value', HINT = 'expected hnsw or ivfflat';
    END IF;
    _dim := pgvision._vector_dims(tbl, column_name);

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

    _name := coalesce(_name, pgvision._index_name(tbl, column_name, pg_catalog.format('_%s_%s%s_idx', _method, _metric,
                                                   CASE WHEN create_index.halfvec THEN '_half' ELSE '' END)));
    EXECUTE pg_catalog.format('CREATE INDEX %I ON %s USING %I (%s) WITH (%s)', _name, tbl, _method, _key, _with);
    RETURN _name;
END
$$;
COMMENT ON FUNCTION pgvision.create_index(regclass, name, text, text, int, int, int, boolean, text) IS
'creates a pgvector index on a vector column and returns its name (in the table''s schema; default <table>_<column>_<method>_<metric>_idx). metric: cosine (<=>, the default, which the search functions then use), l2 (<->) or ip (<#>); method: hnsw (m, ef_construction) or ivfflat (lists; default rows/1000 clamped to [10, 10000], counted when the index is built, so load the data first). halfvec => true indexes (column::halfvec(dim)), half the size, used by queries that order by that same expression. Runs as the caller, who must own the table; for CREATE INDEX CONCURRENTLY write the DDL yourself';

-- The metric a search uses when none is given: the one the column is indexed for, so the
-- query can use that index; with several, the default metric if one is indexed for it.
-- A column without a pgvector index (a small table, a sharded table whose indexes live on
-- the shards) gets pgvision._default_metric(), which is also what create_index and
-- create_sharded_table build when not told.
CREATE OR REPLACE FUNCTION pgvision._index_metric(tbl regclass, column_name name)
RETURNS text
LANGUAGE sql STABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT m.metric
    FROM pg_catalog.pg_index i
    JOIN pg_catalog.pg_class ic ON ic.oid = i.indexrelid
    JOIN pg_catalog.pg_am am ON am.oid = ic.relam
    JOIN pg_catalog.pg_opclass o ON o.oid = i.indclass[0]
    JOIN pg_catalog.pg_namespace n ON n.oid = o.opcnamespace
    JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]
    JOIN pgvision._metrics() m ON o.opcname = 'vector_' || m.opclass
    WHERE i.indrelid = _index_metric.tbl AND a.attname = _index_metric.column_name
      AND i.indisvalid AND am.amname IN ('hnsw', 'ivfflat')
      AND n.nspname = pgvision._vector_schema()
    ORDER BY m.is_default DESC, i.indexrelid  -- several: the default metric's, else the oldest
    LIMIT 1
$$;
COMMENT ON FUNCTION pgvision._index_metric(regclass, name) IS
'internal: the metric (l2, cosine or ip) of the pgvector index (hnsw or ivfflat) on a vector column, the default metric''s first when there are several; NULL without one';


-- idempotent/030-search-engine.sql
-- The engine behind search, search_batch and search_like (031-search.sql): checks, the row
-- key, the candidate query, query expansion, collapse by group. Every query it builds takes
-- the same parameters:
--   $1 query vector (text), $2 key to exclude, $3 max_distance, $4 min_similarity,
--   $5 query_no, $6 number of candidates.
-- The caller's filter is concatenated in, never a format() template (it may hold %), on
-- lines of its own so that a trailing -- comment in it ends there; it runs with the
-- caller's privileges and search_path = pg_catalog, pg_temp.

-- The checks of a search's arguments; returns the metric it runs with: the one given, else
-- that of the column's index, else the default.
CREATE OR REPLACE FUNCTION pgvision._search_metric(tbl regclass, k int, feature_column name, given text,
                                                   group_by name, max_distance double precision,
                                                   min_similarity double precision, expand int,
                                                   OUT metric text, OUT operator text, OUT similarity text)
LANGUAGE plpgsql STABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    _m record;
BEGIN
    IF tbl IS NULL OR feature_column IS NULL OR k IS NULL OR expand IS NULL THEN
        RAISE EXCEPTION 'tbl, k, feature_column and expand must not be null' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF k < 1 THEN
        RAISE EXCEPTION 'k must be at least 1, not %', k USING ERRCODE = 'invalid_parameter_value';
    END IF;
    -- Every comparison with NaN is false in SQL but NaN sorts above every number in
    -- PostgreSQL, so c.distance <= 'NaN' kept every row; infinities mean no limit at all.
    IF max_distance IN ('NaN', 'Infinity', '-Infinity') THEN
        RAISE EXCEPTION 'max_distance must be a finite number, not %', max_distance
            USING ERRCODE = 'invalid_parameter_value', HINT = 'leave it NULL for no limit';
    END IF;
    IF min_similarity IN ('NaN', 'Infinity', '-Infinity') THEN
        RAISE EXCEPTION 'min_similarity must be a finite number, not %', min_similarity
            USING ERRCODE = 'invalid_parameter_value', HINT = 'leave it NULL for no limit';
    END IF;
    SELECT * INTO _m FROM pgvision._metric(coalesce(given, pgvision._index_metric(tbl, feature_column),
                                                    pgvision._default_metric()));
    -- l2 and cosine distances are never negative (the ip "distance" is the negative inner
    -- product, which may be): a negative limit would silently find nothing.
    IF max_distance < 0 AND _m.metric IN ('l2', 'cosine') THEN
        RAISE EXCEPTION 'max_distance must not be negative with the % metric, not %', _m.metric, max_distance
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = CASE _m.metric WHEN 'l2' THEN 'l2 distances are 0 or more' ELSE 'cosine distances are between 0 and 2' END;
    END IF;
    IF expand < 0 OR expand > 1000 THEN
        RAISE EXCEPTION 'expand must be between 0 and 1000, not %', expand USING ERRCODE = 'invalid_parameter_value';
    END IF;
    PERFORM pgvision._vector_column(tbl, feature_column);
    IF group_by IS NOT NULL THEN
        PERFORM pgvision._require_column(tbl, group_by);
    END IF;
    metric := _m.metric;
    operator := _m.operator;
    similarity := _m.similarity;
END
$$;
COMMENT ON FUNCTION pgvision._search_metric(regclass, int, name, text, name, double precision, double precision, int) IS
'internal: checks the arguments of pgvision._search; returns the metric it searches with (the given one, else the column index''s, else the default), its operator and similarity template (pgvision._metrics())';

-- What identifies a row in search results: the primary key (a composite one in its row
-- form), or what the scale-out hook says (a sharded table's partition key); NULL without.
CREATE OR REPLACE FUNCTION pgvision._row_key(tbl regclass, OUT columns name[], OUT key_type text)
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    SELECT pg_catalog.array_agg(a.attname ORDER BY pg_catalog.array_position(i.indkey::int2[], a.attnum)),
           pg_catalog.min(pg_catalog.format_type(a.atttypid, a.atttypmod))
    INTO columns, key_type
    FROM pg_catalog.pg_index i
    JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey)
    WHERE i.indrelid = tbl AND i.indisprimary;
    IF columns IS NULL THEN
        SELECT ARRAY[h.key_column], h.key_type INTO columns, key_type
        FROM pgvision._scale_out(tbl, NULL, NULL, NULL, NULL) h WHERE h.key_column IS NOT NULL;
    END IF;
END
$$;
COMMENT ON FUNCTION pgvision._row_key(regclass) IS
'internal: the columns and type of what identifies a row of a table in search results: its primary key, or the partition key of a sharded table; NULLs without';

-- The id and item columns of a result row (search's, find_copies', find_duplicates'), as
-- expressions on the table's alias t: the key (key_columns, pgvision._row_key's) as text, a
-- composite key in its row form, NULL without one; the row as jsonb without what
-- pgvision._plain_columns leaves out.
CREATE OR REPLACE FUNCTION pgvision._result_columns(tbl regclass, key_columns name[], OUT id text, OUT item text)
LANGUAGE plpgsql STABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    id := CASE WHEN key_columns IS NULL THEN 'NULL::pg_catalog.text'
               WHEN pg_catalog.cardinality(key_columns) = 1 THEN pg_catalog.format('t.%I::pg_catalog.text', key_columns[1])
               ELSE 'ROW(' || (SELECT pg_catalog.string_agg(pg_catalog.format('t.%I', u.c), ', ' ORDER BY u.i)
                               FROM pg_catalog.unnest(key_columns) WITH ORDINALITY u (c, i)) || ')::pg_catalog.text' END;
    item := coalesce((SELECT '(SELECT pg_catalog.to_jsonb(r) FROM (SELECT '
                             || pg_catalog.string_agg(pg_catalog.format('t.%I', u.c), ', ' ORDER BY u.i) || ') r)'
                      FROM pg_catalog.unnest(pgvision._plain_columns(tbl)) WITH ORDINALITY u (c, i)),
                     '''{}''::pg_catalog.jsonb');
END
$$;
COMMENT ON FUNCTION pgvision._result_columns(regclass, name[]) IS
'internal: the id (key as text) and item (row as jsonb) expressions of a result row of tbl, on alias t';

-- The candidates of a search, the $6 nearest rows that pass the filter, as the query
--   SELECT id, distance, item[, grp] ... ORDER BY distance LIMIT $6
-- and, for query expansion, the features of the $6 nearest rows. A table of this server
-- is read through its index; for a sharded table the scale-out hook gives one query per
-- shard, all sent at once.
CREATE OR REPLACE FUNCTION pgvision._search_candidates(tbl regclass, feature_column name, operator text,
                                                       filter text, group_by name, expand int,
                                                       exclude_key text,
                                                       OUT candidates text, OUT nearest text)
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    _vs text := pgvision._vector_schema();
    _key record := pgvision._row_key(tbl);
    _cols text[] := ARRAY(SELECT pg_catalog.format('t.%I', u.c) FROM pg_catalog.unnest(_key.columns) WITH ORDINALITY u (c, i)
                          ORDER BY u.i);
    _dist text := pg_catalog.format('t.%I OPERATOR(%I.%s) $1::%I.vector', feature_column, _vs, operator, _vs);
    _id text;
    _item text;
    _where text;
    _with text := '';
    _from text;
    _shards text;
BEGIN
    IF exclude_key IS NOT NULL AND pg_catalog.cardinality(_key.columns) IS DISTINCT FROM 1 THEN
        RAISE EXCEPTION 'cannot exclude a row of % by key without a single-column primary key', tbl
            USING ERRCODE = 'feature_not_supported';
    END IF;
    SELECT r.id, r.item INTO _id, _item FROM pgvision._result_columns(tbl, _key.columns) r;
    _where := pg_catalog.format('t.%I IS NOT NULL', feature_column)
              || CASE WHEN filter IS NULL THEN '' ELSE E' AND (\n' || filter || E'\n)' END
              || CASE WHEN exclude_key IS NULL THEN ''
                      ELSE pg_catalog.format(' AND %s <> CAST($2 AS %s)', _cols[1], _key.key_type) END;
    _shards := (pgvision._scale_out(tbl, ARRAY[group_by, CASE WHEN expand > 0 THEN feature_column END],
                                    _dist, _where, '$6')).candidates;
    IF _shards IS NULL THEN
        _from := ' FROM ' || tbl::text || ' AS t WHERE ' || _where || ' ORDER BY ' || _dist || ' LIMIT $6';
    ELSE
        _with := 'WITH u AS MATERIALIZED (' || _shards || ') ';
        _dist := 't.pgvision_distance';
        _from := ' FROM u AS t ORDER BY t.pgvision_distance LIMIT $6';
    END IF;
    candidates := _with || 'SELECT ' || _id || ' AS id, ' || _dist || ' AS distance, ' || _item || ' AS item'
                  || CASE WHEN group_by IS NULL THEN '' ELSE pg_catalog.format(', t.%I AS grp', group_by) END
                  || _from;
    nearest := _with || pg_catalog.format('SELECT t.%I', feature_column) || _from;
END
$$;
COMMENT ON FUNCTION pgvision._search_candidates(regclass, name, text, text, name, int, text) IS
'internal: the candidate query of pgvision._search (id, distance, item and grp of the $6 nearest rows) and the query of the $6 nearest features, for a table of this server or, through pgvision._scale_out, a sharded one';

-- Query expansion: half the query, half the mean of its n nearest rows (unit vectors for
-- cosine), i.e. the query counted n times among the n rows; BENCHMARKS.md compares it with
-- the plain mean of all n + 1 vectors.
CREATE OR REPLACE FUNCTION pgvision._search_expand(query text, nearest text, metric text, n int, exclude_key text)
RETURNS text
LANGUAGE plpgsql STABLE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    _vs text := pgvision._vector_schema();
    _q text;
BEGIN
    -- Concatenated, never a format() template: nearest holds the caller's filter.
    EXECUTE pg_catalog.format('SELECT %1$I.avg(%2$s)::pg_catalog.text FROM (SELECT $1::%1$I.vector AS f'
                              ' FROM pg_catalog.generate_series(1, $6) UNION ALL (',
                              _vs, CASE WHEN metric = 'cosine' THEN pg_catalog.format('%I.l2_normalize(s.f)', _vs) ELSE 's.f' END)
            || nearest || ')) s'
        INTO _q USING query, exclude_key, NULL::double precision, NULL::double precision, 0, n;
    RETURN _q;
END
$$;
COMMENT ON FUNCTION pgvision._search_expand(text, text, text, int, text) IS
'internal: the expanded query of pgvision._search: the mean of the query counted n times and its n nearest features (normalized for cosine)';

-- Collapse by group: how many candidates hold k groups. The candidate set grows until it
-- holds k groups or the scan runs out (end of the table, the distance threshold, or
-- hnsw.max_scan_tuples).
CREATE OR REPLACE FUNCTION pgvision._search_group_size(candidates text, ok text, k int, query text,
                                                       exclude_key text, max_distance double precision,
                                                       min_similarity double precision)
RETURNS int
LANGUAGE plpgsql STABLE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    _n int := LEAST(GREATEST(k::bigint * 10, 100), 1000000000)::int;
    _rows bigint;
    _groups bigint;
    _beyond boolean;
BEGIN
    LOOP
        EXECUTE 'WITH c AS MATERIALIZED (' || candidates || ') '
                || 'SELECT pg_catalog.count(*), '
                || 'pg_catalog.count(DISTINCT c.grp) FILTER (WHERE ' || ok || ') '
                || '+ coalesce(pg_catalog.max(1) FILTER (WHERE c.grp IS NULL AND ' || ok || '), 0), '
                || 'coalesce(pg_catalog.bool_or(NOT (' || ok || ')), false) FROM c'
            INTO _rows, _groups, _beyond
            USING query, exclude_key, max_distance, min_similarity, 0, _n;
        EXIT WHEN _groups >= k OR _rows < _n OR _beyond OR _n >= 1000000000;
        _n := LEAST(_n::bigint * 4, 1000000000)::int;
    END LOOP;
    RETURN _n;
END
$$;
COMMENT ON FUNCTION pgvision._search_group_size(text, text, int, text, text, double precision, double precision) IS
'internal: for group_by, the number of candidates of pgvision._search that holds k groups (or all there are)';

-- How pgvision._search reads a table of this server, so that its top rows are the true
-- nearest ones on collections that mix photos, cut-outs and thumbnails, where an HNSW search
-- at pgvector's default ef_search 40 often misses a photo's nearest row (BENCHMARKS.md,
-- figure 3, mixed collection: top-1 agreement with an exact scan 0.63 at 40, 0.997 at 1000
-- on 3,279 rows loaded photos first; 0.85 and 0.990 on 100,000 rows loaded shuffled):
-- - fewer than 1,500 rows: an exact scan (a sequential scan and a sort, the index left
--   unused), there about as fast as an index search at ef_search 1000; not when the session
--   turned sequential scans off (SET enable_seqscan = off asks for the index);
-- - else the index (forced when there is no filter and the column has an HNSW index), with
--   hnsw.ef_search 1000, pgvector's largest. The session's value is
--   raised, never lowered (it cannot be larger), and is back when the function returns:
--   these functions promise the nearest rows; the plain SQL form (ORDER BY feature <=> q
--   LIMIT k) under the session's own hnsw.ef_search is the way to trade them for speed.
-- Sharded and partitioned tables keep the planner's choice and their shards' settings.
CREATE OR REPLACE FUNCTION pgvision._search_scan(tbl regclass, OUT exact boolean, OUT ef_search int)
LANGUAGE plpgsql STABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    exact_rows constant int := 1500;
    _kind "char";
    _reltuples real;
    _n bigint;
BEGIN
    ef_search := 1000;
    exact := false;
    SELECT c.relkind, c.reltuples INTO _kind, _reltuples FROM pg_catalog.pg_class c WHERE c.oid = tbl;
    IF _kind IN ('r', 'm') AND pg_catalog.current_setting('enable_seqscan')::boolean
       AND (_reltuples < 0 OR _reltuples < 2 * exact_rows) THEN
        -- reltuples is an estimate (-1 before the first VACUUM, ANALYZE or CREATE INDEX):
        -- count, but never past exact_rows
        EXECUTE pg_catalog.format('SELECT pg_catalog.count(*) FROM (SELECT FROM %s LIMIT %s) s', tbl, exact_rows)
            INTO _n;
        exact := _n < exact_rows;
    END IF;
END
$$;
COMMENT ON FUNCTION pgvision._search_scan(regclass) IS
'internal: how pgvision._search reads a table: exact (a table of this server below 1,500 rows, unless enable_seqscan is off) and the hnsw.ef_search of its index scans (1000, pgvector''s largest: the session''s value is raised, never lowered)';

-- Iterative index scans (pgvector 0.8) keep reading the index until k rows pass the filter;
-- relaxed_order may return rows slightly out of order, so results are sorted again. The
-- scan settings of pgvision._search_scan are set for the function's queries and put back
-- before it returns (a SET clause could not keep the caller's values).
CREATE OR REPLACE FUNCTION pgvision._search(
    tbl regclass, queries text[], k int, feature_column name, metric text, filter text, group_by name,
    max_distance double precision, min_similarity double precision, expand int, exclude_key text)
RETURNS TABLE (query_no int, rank int, id text, distance double precision,
               similarity double precision, item jsonb)
LANGUAGE plpgsql STABLE PARALLEL UNSAFE ROWS 10
SET search_path = pg_catalog, pg_temp
SET hnsw.iterative_scan = relaxed_order
SET ivfflat.iterative_scan = relaxed_order
AS $$
DECLARE
    _m record := pgvision._search_metric(tbl, k, feature_column, metric, group_by, max_distance,
                                         min_similarity, expand);
    _c record := pgvision._search_candidates(tbl, feature_column, _m.operator, filter, group_by, expand,
                                             exclude_key);
    _sim text := coalesce(pg_catalog.format(_m.similarity, 'c.distance'), 'NULL::double precision');
    _ok text := pg_catalog.format('($3::double precision IS NULL OR c.distance OPERATOR(pg_catalog.<=) $3)'
                                  ' AND ($4::double precision IS NULL OR %s OPERATOR(pg_catalog.>=) $4)', _sim);
    _rank constant text := 'SELECT $5, (pg_catalog.row_number() OVER (ORDER BY c.distance))::int, c.id, c.distance, ';
    _q text;
    _n int;
    _scan record := pgvision._search_scan(tbl);
    _ef text := pg_catalog.current_setting('hnsw.ef_search', true);
    _indexscan text := pg_catalog.current_setting('enable_indexscan');
    _seqscan text := pg_catalog.current_setting('enable_seqscan');
    -- Without a filter, the HNSW index of a table at or above the exact scan's size: at
    -- ef_search 1000 the planner would rather sort a table of a few thousand rows, which is
    -- exact but slower (BENCHMARKS.md, figure 3).
    _index boolean := NOT _scan.exact AND filter IS NULL AND EXISTS (
        SELECT FROM pg_catalog.pg_index i
        JOIN pg_catalog.pg_class ic ON ic.oid = i.indexrelid
        JOIN pg_catalog.pg_am am ON am.oid = ic.relam
        JOIN pg_catalog.pg_class t ON t.oid = i.indrelid
        JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]
        WHERE i.indrelid = tbl AND a.attname = feature_column AND am.amname = 'hnsw' AND i.indisvalid
          AND t.relkind IN ('r', 'm'));
BEGIN
    IF _ef IS DISTINCT FROM _scan.ef_search::text THEN
        PERFORM pg_catalog.set_config('hnsw.ef_search', _scan.ef_search::text, true);
    END IF;
    IF _scan.exact THEN
        PERFORM pg_catalog.set_config('enable_indexscan', 'off', true);
    END IF;
    IF _index THEN
        PERFORM pg_catalog.set_config('enable_seqscan', 'off', true);
    END IF;
    FOR i IN 1 .. coalesce(pg_catalog.cardinality(queries), 0) LOOP
        _q := queries[i];
        CONTINUE WHEN _q IS NULL;
        IF expand > 0 THEN
            _q := pgvision._search_expand(_q, _c.nearest, _m.metric, expand, exclude_key);
        END IF;
        IF group_by IS NULL THEN
            RETURN QUERY EXECUTE 'WITH c AS MATERIALIZED (' || _c.candidates || ') ' || _rank
                                 || _sim || ', c.item FROM c WHERE ' || _ok || ' ORDER BY c.distance'
                USING _q, exclude_key, max_distance, min_similarity, i, k;
        ELSE
            _n := pgvision._search_group_size(_c.candidates, _ok, k, _q, exclude_key, max_distance, min_similarity);
            RETURN QUERY EXECUTE 'WITH c AS MATERIALIZED (' || _c.candidates || '), '
                                 || 'g AS (SELECT DISTINCT ON (c.grp) c.* FROM c WHERE ' || _ok || ' ORDER BY c.grp, c.distance) '
                                 || _rank || _sim || ', c.item FROM g AS c ORDER BY c.distance LIMIT ' || k
                USING _q, exclude_key, max_distance, min_similarity, i, _n;
        END IF;
    END LOOP;
    -- an error on the way rolls the settings back with the (sub)transaction
    IF _ef IS DISTINCT FROM _scan.ef_search::text THEN
        PERFORM pg_catalog.set_config('hnsw.ef_search', coalesce(_ef, '40'), true);
    END IF;
    IF _scan.exact THEN
        PERFORM pg_catalog.set_config('enable_indexscan', _indexscan, true);
    END IF;
    IF _index THEN
        PERFORM pg_catalog.set_config('enable_seqscan', _seqscan, true);
    END IF;
END
$$;
COMMENT ON FUNCTION pgvision._search(regclass, text[], int, name, text, text, name, double precision, double precision, int, text) IS
'internal: the query behind pgvision.search, search_batch and search_like';

-- idempotent/031-search.sql
-- Search functions for clients that can only call functions (BI tools): the table is an
-- argument, the result has a fixed shape. The plain SQL form (ORDER BY feature <=> q LIMIT k)
-- stays the fastest and most flexible way; these build that query for the caller
-- (pgvision._search, 030-search-engine.sql).

-- The checks search and search_batch share. embed is strict: a NULL model or image would
-- make a NULL query, which finds no rows.
CREATE OR REPLACE FUNCTION pgvision._search_needs(tbl regclass, model text, missing boolean, message text)
RETURNS void
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF tbl IS NULL THEN
        RAISE EXCEPTION 'tbl must not be null' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF model IS NULL THEN
        RAISE EXCEPTION 'model must not be null' USING ERRCODE = 'null_value_not_allowed',
            HINT = 'leave it out for the feature column''s recorded model (pgvision.column_model), else efficientnet_lite0';
    END IF;
    IF missing THEN
        RAISE EXCEPTION '%', message USING ERRCODE = 'null_value_not_allowed';
    END IF;
END
$$;
COMMENT ON FUNCTION pgvision._search_needs(regclass, text, boolean, text) IS
'internal: raises null_value_not_allowed for a NULL table or model, or with message when missing is true';

CREATE OR REPLACE FUNCTION pgvision.search(
    tbl regclass, query bytea, k int DEFAULT 10, feature_column name DEFAULT 'feature',
    metric text DEFAULT NULL, filter text DEFAULT NULL, model text DEFAULT '',
    group_by name DEFAULT NULL, max_distance double precision DEFAULT NULL,
    min_similarity double precision DEFAULT NULL, expand int DEFAULT 0)
RETURNS TABLE (query_no int, rank int, id text, distance double precision, similarity double precision, item jsonb)
LANGUAGE plpgsql STABLE PARALLEL UNSAFE COST 100000 ROWS 10
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM pgvision._search_needs(tbl, model, query IS NULL, 'query image must not be null');
    RETURN QUERY
    SELECT * FROM pgvision._search(tbl, ARRAY[pgvision.embed(query, pgvision._query_model(tbl, feature_column, model))::text], k, feature_column, metric,
                                   filter, group_by, max_distance, min_similarity, expand, NULL);
END
$$;
COMMENT ON FUNCTION pgvision.search(regclass, bytea, int, name, text, text, text, name, double precision, double precision, int) IS
'the k rows of a table whose feature is nearest to an image''s, nearest first: query_no (1), rank, id (the primary key as text), distance (l2: <->, cosine: <=>, ip: <#>, the negative inner product), similarity (larger is nearer; cosine: 1 - distance, ip: the inner product, l2: 1 / (1 + distance)), item (the row as jsonb without vector and bytea columns). The query is embedded with model, left out: the feature column''s recorded model (pgvision.column_model), else efficientnet_lite0; another model than the recorded one is refused. metric defaults to the one the column''s pgvector index was built for (pgvision.create_index builds cosine ones), cosine when it has none. filter is a SQL condition on the table''s columns, run as the caller with search_path = pg_catalog, pg_temp (qualify your own functions); iterative index scans return k rows when k rows match it. group_by keeps the best row per value of a column; max_distance and min_similarity drop farther rows; expand => n searches again with a query made half of the original and half of the mean of its n nearest rows';

CREATE OR REPLACE FUNCTION pgvision.search_batch(
    tbl regclass, queries bytea[], k int DEFAULT 10, feature_column name DEFAULT 'feature',
    metric text DEFAULT NULL, filter text DEFAULT NULL, model text DEFAULT '',
    group_by name DEFAULT NULL, max_distance double precision DEFAULT NULL,
    min_similarity double precision DEFAULT NULL, expand int DEFAULT 0)
RETURNS TABLE (query_no int, rank int, id text, distance double precision, similarity double precision, item jsonb)
LANGUAGE plpgsql STABLE PARALLEL UNSAFE COST 1000000 ROWS 100
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM pgvision._search_needs(tbl, model, queries IS NULL, 'queries must not be null');
    IF pg_catalog.cardinality(queries) > 100 THEN
        RAISE EXCEPTION 'too many query images: %, the limit is 100', pg_catalog.cardinality(queries)
            USING ERRCODE = 'program_limit_exceeded', HINT = 'split the queries into several calls';
    END IF;
    RETURN QUERY
    SELECT * FROM pgvision._search(tbl, pgvision.embed_batch(queries, pgvision._query_model(tbl, feature_column, model))::text[], k, feature_column, metric,
                                   filter, group_by, max_distance, min_similarity, expand, NULL);
END
$$;
COMMENT ON FUNCTION pgvision.search_batch(regclass, bytea[], int, name, text, text, text, name, double precision, double precision, int) IS
'pgvision.search for up to 100 query images in one call (embedded with embed_batch, with the model as search chooses it); query_no is the position of the query in the array; a NULL image gives no rows';

CREATE OR REPLACE FUNCTION pgvision.search_like(
    tbl regclass, key text, k int DEFAULT 10, feature_column name DEFAULT 'feature',
    metric text DEFAULT NULL, filter text DEFAULT NULL, group_by name DEFAULT NULL,
    max_distance double precision DEFAULT NULL, min_similarity double precision DEFAULT NULL,
    expand int DEFAULT 0)
RETURNS TABLE (query_no int, rank int, id text, distance double precision, similarity double precision, item jsonb)
LANGUAGE plpgsql STABLE PARALLEL UNSAFE ROWS 10
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    _pk record;
    _found boolean;
    _q text;
BEGIN
    IF tbl IS NULL OR key IS NULL OR feature_column IS NULL THEN
        RAISE EXCEPTION 'tbl, key and feature_column must not be null' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    PERFORM pgvision._vector_column(tbl, feature_column);
    _pk := pgvision._row_key(tbl);
    IF _pk.columns IS NULL THEN
        RAISE EXCEPTION 'relation % has no primary key', tbl
            USING ERRCODE = 'invalid_table_definition',
                  HINT = 'search_like finds the query row by its primary key; add one with ALTER TABLE ... ADD PRIMARY KEY';
    ELSIF pg_catalog.cardinality(_pk.columns) > 1 THEN
        RAISE EXCEPTION 'relation % has a primary key of % columns', tbl, pg_catalog.cardinality(_pk.columns)
            USING ERRCODE = 'feature_not_supported', HINT = 'search_like needs a single-column primary key';
    END IF;
    EXECUTE pg_catalog.format('SELECT true, t.%I::pg_catalog.text FROM %s AS t WHERE t.%I = CAST($1 AS %s)',
                              feature_column, tbl, _pk.columns[1], _pk.key_type)
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
    tbl regclass, key anyelement, k int DEFAULT 10, feature_column name DEFAULT 'feature',
    metric text DEFAULT NULL, filter text DEFAULT NULL, group_by name DEFAULT NULL,
    max_distance double precision DEFAULT NULL, min_similarity double precision DEFAULT NULL,
    expand int DEFAULT 0)
RETURNS TABLE (query_no int, rank int, id text, distance double precision, similarity double precision, item jsonb)
LANGUAGE sql STABLE PARALLEL UNSAFE ROWS 10
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT * FROM pgvision.search_like(tbl, key::text, k, feature_column, metric, filter, group_by,
                                       max_distance, min_similarity, expand)
$$;
COMMENT ON FUNCTION pgvision.search_like(regclass, anyelement, int, name, text, text, name, double precision, double precision, int) IS
'pgvision.search_like with a key of any type (compared with the primary key after a cast through text)';

-- Search by a vector: a stored row's feature, an average of several, one computed elsewhere.
-- Its own name, not a search(regclass, vector) overload: an untyped parameter or literal
-- (node-postgres and asyncpg send every parameter untyped) would then match both forms and
-- make every existing search(tbl, $1) call ambiguous.
CREATE OR REPLACE FUNCTION pgvision.search_vector(
    tbl regclass, query vector, k int DEFAULT 10, feature_column name DEFAULT 'feature',
    metric text DEFAULT NULL, filter text DEFAULT NULL, group_by name DEFAULT NULL,
    max_distance double precision DEFAULT NULL, min_similarity double precision DEFAULT NULL,
    expand int DEFAULT 0)
RETURNS TABLE (query_no int, rank int, id text, distance double precision, similarity double precision, item jsonb)
LANGUAGE plpgsql STABLE PARALLEL UNSAFE ROWS 10
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    _dim int;
BEGIN
    IF tbl IS NULL OR feature_column IS NULL THEN
        RAISE EXCEPTION 'tbl and feature_column must not be null' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF query IS NULL THEN
        RAISE EXCEPTION 'query vector must not be null' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    _dim := pgvision._vector_column(tbl, feature_column);
    IF _dim > 0 AND pg_catalog.array_length(query::pg_catalog.float4[], 1) <> _dim THEN
        RAISE EXCEPTION 'expected % dimensions, not %', _dim, pg_catalog.array_length(query::pg_catalog.float4[], 1)
            USING ERRCODE = 'data_exception',
                  HINT = pg_catalog.format('column %I of relation %s holds vector(%s)', feature_column, tbl, _dim);
    END IF;
    RETURN QUERY
    SELECT * FROM pgvision._search(tbl, ARRAY[query::text], k, feature_column, metric, filter, group_by,
                                   max_distance, min_similarity, expand, NULL);
END
$$;
COMMENT ON FUNCTION pgvision.search_vector(regclass, vector, int, name, text, text, name, double precision, double precision, int) IS
'pgvision.search with a vector as the query (a stored feature, a mean of several, one computed elsewhere), e.g. search_vector(''images'', (SELECT feature FROM images WHERE id = 7)); same columns and options (the vector must have the column''s dimensions); similarity is larger for nearer rows: cosine 1 - distance, ip the inner product, l2 1 / (1 + distance); id is the primary key as text: join with t.id = s.id::int (the cast on the result''s side keeps the table''s key index)';

-- The query vector of an image for a feature column, embedded with the column's model: for
-- the plain SQL form, ORDER BY feature <=> pgvision.query_vector('images', 'feature', $1).
CREATE OR REPLACE FUNCTION pgvision.query_vector(tbl regclass, feature_column name, image bytea)
RETURNS vector
LANGUAGE plpgsql STABLE PARALLEL UNSAFE COST 100000
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF tbl IS NULL OR feature_column IS NULL THEN
        RAISE EXCEPTION 'tbl and feature_column must not be null' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    PERFORM pgvision._vector_column(tbl, feature_column);
    RETURN pgvision.embed(image, pgvision._query_model(tbl, feature_column, NULL));
END
$$;
COMMENT ON FUNCTION pgvision.query_vector(regclass, name, bytea) IS
'pgvision.embed of an image with the model recorded for a feature column (pgvision.column_model), else efficientnet_lite0: the query vector for ORDER BY feature <=> pgvision.query_vector(''images'', ''feature'', $1); NULL for a NULL image';

-- idempotent/032-evaluate.sql
-- Measuring in SQL: pgvision.evaluate, the quality of a feature column's rankings by label
-- (precision@k, mAP@k) and its index's recall@k against an exact scan, so that two columns
-- or two models can be compared before a table switches.
--
-- The approximate top-k is the candidate query the search functions send
-- (pgvision._search_candidates, 030-search-engine.sql), with the same iterative-scan
-- settings, so it goes through the column's index as a search does. The exact top-k orders
-- by the same distance plus 0, an expression no index can serve, so it is a scan of every
-- row. Labels are compared with the label type's default equality (array equality, GROUP BY
-- and window partitions all use it), never with an operator looked up by name.

CREATE OR REPLACE FUNCTION pgvision.evaluate(
    tbl regclass, label_column name, k int DEFAULT 10, queries int DEFAULT 200,
    feature_column name DEFAULT NULL)
RETURNS TABLE (label text, query_count int, precision_at_k double precision,
               map_at_k double precision, recall_at_k double precision)
LANGUAGE plpgsql STABLE PARALLEL UNSAFE COST 1000000 ROWS 11
SET search_path = pg_catalog, pg_temp
SET hnsw.iterative_scan = relaxed_order
SET ivfflat.iterative_scan = relaxed_order
AS $$
DECLARE
    _feature name := coalesce(evaluate.feature_column, 'feature');
    _vs text := pgvision._vector_schema();
    _m record;
    _label record;
    _key record;
    _approx text;
    _exact text;
    _q record;
    _dist double precision[];
    _rel boolean[];
    _exact_dist double precision[];
    _hits int;
    _sum double precision;
    _relevant bigint;
    _within int;
    _cls bigint[] := '{}';
    _lbl text[] := '{}';
    _p double precision[] := '{}';
    _ap double precision[] := '{}';
    _rec double precision[] := '{}';
BEGIN
    IF tbl IS NULL OR label_column IS NULL OR k IS NULL OR queries IS NULL THEN
        RAISE EXCEPTION 'tbl, label_column, k and queries must not be null'
            USING ERRCODE = 'null_value_not_allowed',
                  HINT = 'leave feature_column out (or NULL) for the column "feature"';
    END IF;
    IF queries < 1 THEN
        RAISE EXCEPTION 'queries must be at least 1, not %', queries USING ERRCODE = 'invalid_parameter_value';
    END IF;
    -- the search functions' checks: k at least 1, a vector column; and their metric (the
    -- column index's, else pgvision._default_metric())
    _m := pgvision._search_metric(tbl, k, _feature, NULL, NULL, NULL, NULL, 0);
    SELECT * INTO _label FROM pgvision._require_column(tbl, label_column);
    IF (pgvision._scale_out(tbl, NULL, NULL, NULL, NULL)).key_column IS NOT NULL THEN
        RAISE EXCEPTION 'cannot evaluate sharded table %', tbl
            USING ERRCODE = 'feature_not_supported',
                  HINT = 'evaluate a shard''s table on that shard: the exact scan must run where the rows are';
    END IF;
    _key := pgvision._row_key(tbl);
    IF _key.columns IS NULL THEN
        RAISE EXCEPTION 'relation % has no primary key', tbl
            USING ERRCODE = 'invalid_table_definition',
                  HINT = 'evaluate leaves each query row out of its own results by its primary key; add one with ALTER TABLE ... ADD PRIMARY KEY';
    ELSIF pg_catalog.cardinality(_key.columns) > 1 THEN
        RAISE EXCEPTION 'relation % has a primary key of % columns', tbl, pg_catalog.cardinality(_key.columns)
            USING ERRCODE = 'feature_not_supported', HINT = 'evaluate needs a single-column primary key';
    END IF;

    -- Rows searched: a feature and a label. Parameters as in 030-search-engine.sql:
    -- $1 query vector (text), $2 key of the query row, $6 k; $7 the query's label (text).
    _approx := (pgvision._search_candidates(tbl, _feature, _m.operator,
                                            pg_catalog.format('t.%I IS NOT NULL', label_column),
                                            label_column, 0, '')).candidates;
    _approx := 'WITH c AS MATERIALIZED (' || _approx || ') '
               || 'SELECT pg_catalog.array_agg(c.distance ORDER BY c.distance), '
               || 'pg_catalog.array_agg(ARRAY[c.grp] OPERATOR(pg_catalog.=) ARRAY[CAST($7 AS ' || _label.type_name
               || ')] ORDER BY c.distance) FROM c';
    _exact := pg_catalog.format(
        'SELECT pg_catalog.array_agg(e.distance ORDER BY e.distance) FROM ('
        'SELECT (t.%1$I OPERATOR(%2$I.%3$s) $1::%2$I.vector) OPERATOR(pg_catalog.+) 0::pg_catalog.float8 AS distance'
        ' FROM %4$s AS t WHERE t.%1$I IS NOT NULL AND t.%5$I IS NOT NULL'
        ' AND t.%6$I OPERATOR(pg_catalog.<>) CAST($2 AS %7$s) ORDER BY 1 LIMIT $6) e',
        _feature, _vs, _m.operator, tbl, label_column, _key.columns[1], _key.key_type);

    -- The queries: up to `queries` rows with a feature and a label, in the order of the md5
    -- of their key's text (then the key): no seed, the same rows on every run and for every
    -- column that has them. relevant: the rows of the same label, the query's own included.
    FOR _q IN EXECUTE pg_catalog.format(
        'SELECT s.id, s.f, s.lbl, s.cls, s.relevant FROM ('
        'SELECT t.%1$I::pg_catalog.text AS id, t.%1$I AS key, t.%2$I::pg_catalog.text AS f,'
        ' t.%3$I::pg_catalog.text AS lbl, pg_catalog.dense_rank() OVER (ORDER BY t.%3$I) AS cls,'
        ' pg_catalog.count(*) OVER (PARTITION BY t.%3$I) AS relevant'
        ' FROM %4$s AS t WHERE t.%2$I IS NOT NULL AND t.%3$I IS NOT NULL) s'
        ' ORDER BY pg_catalog.md5(s.id), s.key LIMIT $1',
        _key.columns[1], _feature, label_column, tbl) USING queries
    LOOP
        EXECUTE _approx INTO _dist, _rel
            USING _q.f, _q.id, NULL::double precision, NULL::double precision, 0, k, _q.lbl;
        EXECUTE _exact INTO _exact_dist
            USING _q.f, _q.id, NULL::double precision, NULL::double precision, 0, k;
        _hits := 0;
        _sum := 0;
        FOR i IN 1 .. coalesce(pg_catalog.cardinality(_rel), 0) LOOP
            IF _rel[i] THEN
                _hits := _hits + 1;
                _sum := _sum + _hits::double precision / i;
            END IF;
        END LOOP;
        _relevant := LEAST(k, _q.relevant - 1);
        -- recall: the approximate rows no farther than the exact k-th one (ties at the k-th
        -- distance do not count against the index), over the exact rows
        _within := (SELECT pg_catalog.count(*) FROM pg_catalog.unnest(_dist) d (v)
                    WHERE d.v <= _exact_dist[pg_catalog.cardinality(_exact_dist)]);
        _cls := _cls || _q.cls;
        _lbl := _lbl || _q.lbl;
        _p := _p || (_hits::double precision / k);
        _ap := _ap || CASE WHEN _relevant > 0 THEN _sum / _relevant ELSE 0 END;
        _rec := _rec || CASE WHEN pg_catalog.cardinality(_exact_dist) > 0
                             THEN _within::double precision / pg_catalog.cardinality(_exact_dist) END;
    END LOOP;
    IF pg_catalog.cardinality(_cls) = 0 THEN
        RAISE EXCEPTION 'relation % has no row with both a feature in "%" and a label in "%"', tbl, _feature, label_column
            USING ERRCODE = 'no_data_found',
                  HINT = 'evaluate needs labelled rows with features; compute them with pgvision.embed';
    END IF;

    RETURN QUERY
    SELECT u.l, pg_catalog.count(*)::int, pg_catalog.avg(u.p), pg_catalog.avg(u.ap), pg_catalog.avg(u.r)
    FROM ROWS FROM (pg_catalog.unnest(_cls), pg_catalog.unnest(_lbl), pg_catalog.unnest(_p),
                   pg_catalog.unnest(_ap), pg_catalog.unnest(_rec)) AS u (c, l, p, ap, r)
    GROUP BY GROUPING SETS ((u.c, u.l), ())
    ORDER BY u.c NULLS LAST;
END
$$;
COMMENT ON FUNCTION pgvision.evaluate(regclass, name, int, int, name) IS
'measures a vector column against a label column: one row per label (as text, in the label''s order) of its query rows, then label NULL over all of them, with query_count, precision_at_k, map_at_k and recall_at_k, each the mean over those queries. Queries: up to `queries` rows with a feature and a label, the first by md5 of the primary key as text (no seed: the same rows on every run and for every column that has them); each searches the other rows with a feature and a label, leaving itself out. Metric: the column index''s, else cosine, as the search functions. precision@k: rows of the query''s label among the k the search returns (the search functions'' query, so through the index), divided by k. AP@k: the sum over those relevant rows of the precision at their rank, divided by min(k, R), R the rows of the query''s label other than itself (0 when R is 0); map_at_k is its mean. recall@k: the returned rows no farther than the k-th row of an exact scan (ORDER BY distance + 0, no index), divided by the exact rows (min(k, rows searched)). Costs one index search and one full scan per query. Runs as the caller; needs a single-column primary key; feature_column defaults to feature; not for sharded tables';

-- idempotent/033-thumbnail.sql
-- Thumbnails of stored images, for psql, BI tools and web pages: small pictures, and data:
-- URLs that a Grafana table cell or an HTML <img> shows as they are.
-- Decoded with embed's decoder and limits (pgvision.max_pixels, pgvision.max_image_bytes),
-- EXIF orientation applied. PARALLEL UNSAFE for the reason embed is (003-embed.sql): the
-- settings are read with plpy.execute.

CREATE OR REPLACE FUNCTION pgvision.thumbnail(image bytea, size int DEFAULT 128, format text DEFAULT 'jpeg')
RETURNS bytea
LANGUAGE plpython3u IMMUTABLE STRICT PARALLEL UNSAFE COST 10000
SET search_path = pg_catalog, pg_temp
AS $python$
# pgvision preamble: put the runtime folder on sys.path once per backend.
import sys
if "pgvision_runtime.sqlapi" not in sys.modules:
    import os, site, stat
    # raised as pgvision's other errors are: "pgvision: ..." with a SQLSTATE and a hint
    _Error = type("pgvision", (plpy.Error,), {"__module__": "builtins"})

    def _fail(message, sqlstate, hint, detail=None):
        e = _Error(message)
        e.sqlstate, e.hint = sqlstate, hint
        if detail:
            e.detail = detail
        raise e
    # Loading pgvision.so defines the settings (src/settings.c): a superuser-only one that a
    # role set before is then dropped, and the runtime reads checked values.
    if plpy.execute("SELECT pg_catalog.to_regprocedure('pgvision._load()') IS NOT NULL AS x")[0]["x"]:
        plpy.execute("SELECT pgvision._load()")
    # The folder decides which code the server runs: only the administrator's own sources
    # count (a placeholder, which any role can SET, is not in pg_settings).
    _rows = plpy.execute("SELECT setting FROM pg_catalog.pg_settings WHERE name = 'pgvision.runtime_path'"
                         " AND source IN ('default', 'configuration file', 'command line', 'environment variable')")
    _given = _rows[0]["setting"] if _rows else "@RUNTIME_PATH@"
    # Resolved once, and every folder from / down checked: nobody but root or the server's
    # user can then swap any part of what is imported later (links are resolved here, not
    # at import time), as ssh and sudo check their files.
    _root = os.path.realpath(_given)
    _site = os.path.join(_root, "venv", "lib", "python%d.%d" % sys.version_info[:2], "site-packages")
    _parts = [_p for _p in _site.split("/") if _p]
    for _i in range(len(_parts) + 2):
        _p = "/" + "/".join(_parts[:_i]) if _i <= len(_parts) else os.path.join(_site, "pgvision_runtime")
        try:
            _st = os.lstat(_p)
        except OSError as _e:
            _fail('runtime not found in "%s": %s' % (_given, _e.strerror.lower()), "58P01",
                  "run make install, or set pgvision.runtime_path in postgresql.conf",
                  detail='no folder "%s"' % _p)
        if (not stat.S_ISDIR(_st.st_mode) or _st.st_uid not in (0, os.geteuid())
                or _st.st_mode & 0o022):
            _fail('runtime folder "%s" is not a folder owned by root or the server\'s user and closed '
                  'to writes by others' % _p, "42501",
                  "install the runtime with make install, or fix the folder's owner and mode")
    # Keep the user's and the system's site-packages from shadowing the pinned runtime.
    sys.path[:] = [p for p in sys.path if "-packages" not in p]
    _before = list(sys.path)
    site.addsitedir(_site)
    sys.path[:] = [p for p in sys.path if p not in _before] + _before
    # numpy's OpenBLAS starts a thread per core at import, which takes half of numpy's
    # import time, and pgvision does no linear algebra; the postmaster's environment wins
    if "numpy" not in sys.modules:
        os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    import pgvision_runtime.sqlapi
    GD["pgvision_runtime_path"] = _root
from pgvision_runtime import sqlapi as pv
return pv.thumbnail(plpy, GD, image, size, format)
$python$;
COMMENT ON FUNCTION pgvision.thumbnail(bytea, int, text) IS
'a thumbnail of an image (JPEG, PNG, GIF, WebP, BMP or TIFF bytes): its longest side size pixels (1 to 1024), its aspect kept, EXIF orientation applied, encoded as format (jpeg, png or webp); transparency is flattened on white for jpeg and kept for png and webp; the image limits and errors of pgvision.embed';

CREATE OR REPLACE FUNCTION pgvision.data_url(image bytea, size int DEFAULT 128, format text DEFAULT 'jpeg')
RETURNS text
LANGUAGE plpython3u IMMUTABLE STRICT PARALLEL UNSAFE COST 10000
SET search_path = pg_catalog, pg_temp
AS $python$
# pgvision preamble: put the runtime folder on sys.path once per backend.
import sys
if "pgvision_runtime.sqlapi" not in sys.modules:
    import os, site, stat
    # raised as pgvision's other errors are: "pgvision: ..." with a SQLSTATE and a hint
    _Error = type("pgvision", (plpy.Error,), {"__module__": "builtins"})

    def _fail(message, sqlstate, hint, detail=None):
        e = _Error(message)
        e.sqlstate, e.hint = sqlstate, hint
        if detail:
            e.detail = detail
        raise e
    # Loading pgvision.so defines the settings (src/settings.c): a superuser-only one that a
    # role set before is then dropped, and the runtime reads checked values.
    if plpy.execute("SELECT pg_catalog.to_regprocedure('pgvision._load()') IS NOT NULL AS x")[0]["x"]:
        plpy.execute("SELECT pgvision._load()")
    # The folder decides which code the server runs: only the administrator's own sources
    # count (a placeholder, which any role can SET, is not in pg_settings).
    _rows = plpy.execute("SELECT setting FROM pg_catalog.pg_settings WHERE name = 'pgvision.runtime_path'"
                         " AND source IN ('default', 'configuration file', 'command line', 'environment variable')")
    _given = _rows[0]["setting"] if _rows else "@RUNTIME_PATH@"
    # Resolved once, and every folder from / down checked: nobody but root or the server's
    # user can then swap any part of what is imported later (links are resolved here, not
    # at import time), as ssh and sudo check their files.
    _root = os.path.realpath(_given)
    _site = os.path.join(_root, "venv", "lib", "python%d.%d" % sys.version_info[:2], "site-packages")
    _parts = [_p for _p in _site.split("/") if _p]
    for _i in range(len(_parts) + 2):
        _p = "/" + "/".join(_parts[:_i]) if _i <= len(_parts) else os.path.join(_site, "pgvision_runtime")
        try:
            _st = os.lstat(_p)
        except OSError as _e:
            _fail('runtime not found in "%s": %s' % (_given, _e.strerror.lower()), "58P01",
                  "run make install, or set pgvision.runtime_path in postgresql.conf",
                  detail='no folder "%s"' % _p)
        if (not stat.S_ISDIR(_st.st_mode) or _st.st_uid not in (0, os.geteuid())
                or _st.st_mode & 0o022):
            _fail('runtime folder "%s" is not a folder owned by root or the server\'s user and closed '
                  'to writes by others' % _p, "42501",
                  "install the runtime with make install, or fix the folder's owner and mode")
    # Keep the user's and the system's site-packages from shadowing the pinned runtime.
    sys.path[:] = [p for p in sys.path if "-packages" not in p]
    _before = list(sys.path)
    site.addsitedir(_site)
    sys.path[:] = [p for p in sys.path if p not in _before] + _before
    # numpy's OpenBLAS starts a thread per core at import, which takes half of numpy's
    # import time, and pgvision does no linear algebra; the postmaster's environment wins
    if "numpy" not in sys.modules:
        os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    import pgvision_runtime.sqlapi
    GD["pgvision_runtime_path"] = _root
from pgvision_runtime import sqlapi as pv
return pv.data_url(plpy, GD, image, size, format)
$python$;
COMMENT ON FUNCTION pgvision.data_url(bytea, int, text) IS
'pgvision.thumbnail as a data: URL (''data:image/jpeg;base64,...''), which Grafana table cells and HTML <img src> show as a picture';

-- idempotent/034-search-rows.sql
-- Search results as the table's own rows, for BI tools that join or show columns: the row
-- comes back with its columns' types (the key a bigint where it is one, the image bytea
-- for pgvision.data_url), so nothing needs a cast or a join. The table is named by a NULL
-- of its row type, the one way a function can return a type chosen by its caller:
--   SELECT s.rank, s.distance, (s.found).id, (s.found).class
--   FROM pgvision.search_rows(NULL::images, $1) s;

CREATE OR REPLACE FUNCTION pgvision.search_rows(
    tbl anyelement, query bytea, k int DEFAULT 10, feature_column name DEFAULT 'feature',
    metric text DEFAULT NULL, filter text DEFAULT NULL, model text DEFAULT '',
    group_by name DEFAULT NULL, max_distance double precision DEFAULT NULL,
    min_similarity double precision DEFAULT NULL, expand int DEFAULT 0)
RETURNS TABLE (rank int, distance double precision, similarity double precision, found anyelement)
LANGUAGE plpgsql STABLE PARALLEL UNSAFE COST 100000 ROWS 10
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    _rel regclass := (SELECT ty.typrelid FROM pg_catalog.pg_type ty
                      WHERE ty.oid = pg_catalog.pg_typeof(tbl) AND ty.typrelid <> 0);
    _key record;
    _hits record;
BEGIN
    IF _rel IS NULL OR (SELECT c.relkind FROM pg_catalog.pg_class c WHERE c.oid = _rel) NOT IN ('r', 'p', 'f', 'm') THEN
        RAISE EXCEPTION 'search_rows takes a table''s row type, not %', pg_catalog.pg_typeof(tbl)
            USING ERRCODE = 'datatype_mismatch', HINT = 'name the table by a NULL of its row type: search_rows(NULL::images, ...)';
    END IF;
    _key := pgvision._row_key(_rel);
    IF pg_catalog.cardinality(_key.columns) IS DISTINCT FROM 1 THEN
        RAISE EXCEPTION 'relation % has no single-column primary key', _rel
            USING ERRCODE = 'feature_not_supported',
                  HINT = 'search_rows finds the rows by it; pgvision.search works without one';
    END IF;
    SELECT pg_catalog.array_agg(s.rank ORDER BY s.rank) AS ranks, pg_catalog.array_agg(s.id ORDER BY s.rank) AS ids,
           pg_catalog.array_agg(s.distance ORDER BY s.rank) AS distances,
           pg_catalog.array_agg(s.similarity ORDER BY s.rank) AS similarities
    INTO _hits
    FROM pgvision.search(_rel, query, k, feature_column, metric, filter, model, group_by,
                         max_distance, min_similarity, expand) s;
    RETURN QUERY EXECUTE pg_catalog.format(
        'SELECT s.rank, s.distance, s.similarity, t FROM ROWS FROM (pg_catalog.unnest($1::pg_catalog.int4[]),'
        ' pg_catalog.unnest($2::pg_catalog.text[]), pg_catalog.unnest($3::pg_catalog.float8[]),'
        ' pg_catalog.unnest($4::pg_catalog.float8[])) s (rank, id, distance, similarity)'
        ' JOIN %s AS t ON t.%I OPERATOR(pg_catalog.=) CAST(s.id AS %s) ORDER BY s.rank',
        _rel, _key.columns[1], _key.key_type)
        USING _hits.ranks, _hits.ids, _hits.distances, _hits.similarities;
END
$$;
COMMENT ON FUNCTION pgvision.search_rows(anyelement, bytea, int, name, text, text, text, name, double precision, double precision, int) IS
'pgvision.search returning the table''s own rows, typed: search_rows(NULL::images, $1) gives rank, distance, similarity and found, the row of type images, so (found).id is the key in its own type and (found).image can go to pgvision.data_url; the table needs a single-column primary key; the same options as pgvision.search';

-- idempotent/040-shard-remote.sql
-- Scale-out on stock PostgreSQL. A coordinator holds a hash-partitioned table whose
-- partitions are postgres_fdw foreign tables, one per shard; each shard is an ordinary
-- PostgreSQL database with pgvision and pgvector, holding its rows in a plain table with
-- its own HNSW index and the automatic-embedding trigger, so the model runs where the row
-- is stored. The 04x-shard-*.sql files are a leaf: core reaches them only through the hook
-- pgvision._scale_out (000-common.sql), which 044-shard-search.sql defines for real.
--
-- postgres_fdw and dblink ship with PostgreSQL but pgvision does not require them: a server
-- that never shards need not install them. The functions here look them up when called.
--   postgres_fdw: the foreign partitions, reads and writes through the coordinator, search;
--   dblink: what postgres_fdw cannot do: DDL on the shards, CALL embed_table on all of them
--   at once, pipeline_run on a random one.
-- This file: talking to a shard (the one dblink helper, errors that name the shard, the
-- probe of what a shard has).

-- The schema an extension pgvision needs for sharding lives in, or a clear error.
CREATE OR REPLACE FUNCTION pgvision._extension_schema(ext name, purpose text)
RETURNS text
LANGUAGE plpgsql STABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    _nsp text;
BEGIN
    SELECT n.nspname INTO _nsp
    FROM pg_catalog.pg_extension e JOIN pg_catalog.pg_namespace n ON n.oid = e.extnamespace
    WHERE e.extname = ext;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'pgvision sharding needs the % extension', ext
            USING ERRCODE = 'object_not_in_prerequisite_state', DETAIL = purpose,
                  HINT = pg_catalog.format('a superuser runs CREATE EXTENSION %I in this database (it ships with PostgreSQL)', ext);
    END IF;
    RETURN _nsp;
END
$$;
COMMENT ON FUNCTION pgvision._extension_schema(name, text) IS
'internal: the schema of an extension sharding needs (postgres_fdw, dblink); raises object_not_in_prerequisite_state with a CREATE EXTENSION hint when it is not installed';

CREATE OR REPLACE FUNCTION pgvision._dblink()
RETURNS text
LANGUAGE sql STABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT pgvision._extension_schema('dblink',
        'dblink runs what postgres_fdw cannot on the shards: creating their tables, backfills, pipelines')
$$;
COMMENT ON FUNCTION pgvision._dblink() IS 'internal: the schema of dblink, or an error saying to install it';

CREATE OR REPLACE FUNCTION pgvision._postgres_fdw()
RETURNS void
LANGUAGE sql STABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT FROM pgvision._extension_schema('postgres_fdw',
        'the shards are postgres_fdw foreign servers and a sharded table''s partitions are foreign tables')
$$;
COMMENT ON FUNCTION pgvision._postgres_fdw() IS 'internal: raises an error saying to install postgres_fdw unless it is installed';

-- The one place pgvision calls dblink: dblink_<fn>(args...) of dblink's schema, whatever it
-- is, its result as text. conn (the first argument) is a connection name or a foreign
-- server's name, which dblink connects with the caller's user mapping. dblink and
-- dblink_get_result return rows: the first (a single text column) is returned.
CREATE OR REPLACE FUNCTION pgvision._dblink_call(fn text, VARIADIC args text[] DEFAULT '{}')
RETURNS text
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    _args text := (SELECT pg_catalog.string_agg(pg_catalog.format('$1[%s]', i), ', ' ORDER BY i)
                   FROM pg_catalog.generate_subscripts(args, 1) i);
    _out text;
BEGIN
    IF fn NOT IN ('dblink', 'exec', 'connect', 'disconnect', 'get_connections', 'send_query',
                  'is_busy', 'get_result', 'cancel_query') THEN
        RAISE EXCEPTION 'not a dblink function pgvision calls: %', fn USING ERRCODE = 'invalid_parameter_value';
    END IF;
    EXECUTE pg_catalog.format(CASE WHEN fn IN ('dblink', 'get_result')
                                   THEN 'SELECT r.v FROM %I.%I(%s) AS r(v pg_catalog.text) LIMIT 1'
                                   ELSE 'SELECT %I.%I(%s)::pg_catalog.text' END,
                              pgvision._dblink(), CASE fn WHEN 'dblink' THEN 'dblink' ELSE 'dblink_' || fn END,
                              coalesce(_args, ''))
        INTO _out USING args;
    RETURN _out;
END
$$;
COMMENT ON FUNCTION pgvision._dblink_call(text, text[]) IS
'internal: calls dblink''s function dblink_<fn> (or dblink itself) with text arguments, whatever dblink''s schema; returns its result, or the first row of dblink and dblink_get_result, as text';

-- Closes dblink connections, cancelling first the queries still running (running[i]; a
-- shard keeps the batches it committed); a connection never opened is passed over.
CREATE OR REPLACE FUNCTION pgvision._dblink_close(conns text[], running boolean[])
RETURNS void
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    FOR i IN 1 .. coalesce(pg_catalog.cardinality(conns), 0) LOOP
        BEGIN
            IF running[i] THEN
                PERFORM pgvision._dblink_call('cancel_query', conns[i]);
            END IF;
            PERFORM pgvision._dblink_call('disconnect', conns[i]);
        EXCEPTION WHEN OTHERS THEN
            NULL;  -- it was never opened (the shard could not be reached)
        END;
    END LOOP;
END
$$;
COMMENT ON FUNCTION pgvision._dblink_close(text[], boolean[]) IS
'internal: cancels the running queries of named dblink connections and closes them';

-- An error message with its detail, as a shard's errors are reported in lists.
CREATE OR REPLACE FUNCTION pgvision._error_text(message text, detail text)
RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT message || CASE WHEN detail <> '' THEN ': ' || detail ELSE '' END
$$;
COMMENT ON FUNCTION pgvision._error_text(text, text) IS 'internal: "message: detail", or the message alone without a detail';

-- Re-raises an error that happened on a shard with the shard's name in front.
CREATE OR REPLACE FUNCTION pgvision._shard_raise(srv name, state text, msg text, detail text, hint text)
RETURNS void
LANGUAGE plpgsql VOLATILE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    _msg text := pg_catalog.format('shard "%s": %s', srv, msg);
BEGIN
    -- RAISE refuses an empty or NULL DETAIL/HINT option, hence the branches.
    IF coalesce(detail, '') <> '' AND coalesce(hint, '') <> '' THEN
        RAISE EXCEPTION USING ERRCODE = state, MESSAGE = _msg, DETAIL = detail, HINT = hint;
    ELSIF coalesce(detail, '') <> '' THEN
        RAISE EXCEPTION USING ERRCODE = state, MESSAGE = _msg, DETAIL = detail;
    ELSIF coalesce(hint, '') <> '' THEN
        RAISE EXCEPTION USING ERRCODE = state, MESSAGE = _msg, HINT = hint;
    ELSE
        RAISE EXCEPTION USING ERRCODE = state, MESSAGE = _msg;
    END IF;
END
$$;
COMMENT ON FUNCTION pgvision._shard_raise(name, text, text, text, text) IS
'internal: raises an error with SQLSTATE state and message ''shard "srv": msg'', keeping its detail and hint';

-- A command on a shard (query IS NULL), or a query whose rows come back as jsonb (so one
-- column definition fits every query); either way an error names the shard.
CREATE OR REPLACE FUNCTION pgvision._shard_run(srv name, command text, query text)
RETURNS SETOF jsonb
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    _state text;
    _msg text;
    _detail text;
    _hint text;
BEGIN
    IF query IS NULL THEN
        PERFORM pgvision._dblink_call('exec', srv, command);
    ELSE
        RETURN QUERY SELECT pg_catalog.jsonb_array_elements(pgvision._dblink_call('dblink', srv,
            'SELECT coalesce(pg_catalog.jsonb_agg(r), ''[]'')::pg_catalog.text FROM (' || query || ') AS r')::jsonb);
    END IF;
EXCEPTION WHEN OTHERS THEN
    GET STACKED DIAGNOSTICS _state = RETURNED_SQLSTATE, _msg = MESSAGE_TEXT,
                            _detail = PG_EXCEPTION_DETAIL, _hint = PG_EXCEPTION_HINT;
    PERFORM pgvision._shard_raise(srv, _state, _msg, _detail, _hint);
END
$$;
COMMENT ON FUNCTION pgvision._shard_run(name, text, text) IS
'internal: runs a command (query NULL) or a query on a shard with dblink (the caller''s user mapping), returning a query''s rows as jsonb; errors name the shard';

CREATE OR REPLACE FUNCTION pgvision._shard_exec(srv name, command text)
RETURNS void
LANGUAGE sql VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT FROM pgvision._shard_run(srv, command, NULL)
$$;
COMMENT ON FUNCTION pgvision._shard_exec(name, text) IS
'internal: runs a command on a shard with dblink (the caller''s user mapping); errors name the shard';

CREATE OR REPLACE FUNCTION pgvision._shard_json(srv name, query text)
RETURNS SETOF jsonb
LANGUAGE sql VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT pgvision._shard_run(srv, NULL, query)
$$;
COMMENT ON FUNCTION pgvision._shard_json(name, text) IS
'internal: runs a query on a shard with dblink and returns its rows as jsonb; errors name the shard';

-- What a shard has: pgvision's version and pgvector's schema.
CREATE OR REPLACE FUNCTION pgvision._shard_probe(srv name)
RETURNS jsonb
LANGUAGE sql VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT j FROM pgvision._shard_json(srv,
        'SELECT (SELECT e.extversion FROM pg_catalog.pg_extension e WHERE e.extname OPERATOR(pg_catalog.=) ''pgvision'') AS pgvision,'
        ' (SELECT n.nspname FROM pg_catalog.pg_extension e JOIN pg_catalog.pg_namespace n'
        '  ON n.oid OPERATOR(pg_catalog.=) e.extnamespace WHERE e.extname OPERATOR(pg_catalog.=) ''vector'') AS vector_schema') AS j
$$;
COMMENT ON FUNCTION pgvision._shard_probe(name) IS
'internal: {"pgvision": version, "vector_schema": schema} of a shard, NULLs for what it lacks; errors name the shard';

-- A shard the coordinator can use: pgvision, and pgvector in the schema its queries name.
CREATE OR REPLACE FUNCTION pgvision._shard_check(srv name)
RETURNS jsonb
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    _info jsonb := pgvision._shard_probe(srv);
BEGIN
    IF _info ->> 'pgvision' IS NULL THEN
        RAISE EXCEPTION 'shard "%": pgvision is not installed', srv
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'a superuser runs CREATE EXTENSION pgvision CASCADE in the shard''s database';
    END IF;
    IF _info ->> 'vector_schema' IS DISTINCT FROM pgvision._vector_schema() THEN
        RAISE EXCEPTION 'shard "%": pgvector is in schema %, not % as here', srv,
                        _info ->> 'vector_schema', pgvision._vector_schema()
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'install pgvector into the same schema on every server: the queries sent to the shards name its operators with their schema';
    END IF;
    RETURN _info;
END
$$;
COMMENT ON FUNCTION pgvision._shard_check(name) IS
'internal: checks that a shard has pgvision and has pgvector in the same schema as this server; returns {"pgvision": version, "vector_schema": schema}';

-- idempotent/041-shard-registry.sql
-- Scale-out: the shard registry (pgvision.shards), what a shard's foreign server needs, and
-- who may register shards. See 040-shard-remote.sql for the layout.

COMMENT ON TABLE pgvision.shards IS
'the foreign servers (postgres_fdw) that are pgvision shards: pgvision.add_shard registers one; pipeline_run_dist_random runs on a random one, create_sharded_table places partitions on them';
COMMENT ON COLUMN pgvision.shards.server IS 'the foreign server''s name, as in pg_foreign_server';
COMMENT ON COLUMN pgvision.shards.added IS 'when it was registered';

-- What every shard's foreign server needs, as ALTER SERVER ... OPTIONS clauses:
--   extensions 'vector, pgvision': pgvector's operators and pgvision's functions are shippable,
--     so ORDER BY feature <-> q runs on the shard;
--   async_capable 'true': an Append of foreign scans sends the query to every shard at once;
--   parallel_commit 'true': the end of a transaction commits on the shards at once;
--   fdw_tuple_cost '0.2' (PostgreSQL 17's default; 15's is 0.01): a row carries a vector of
--     kilobytes, and at 0.01 the planner would rather fetch a whole shard and sort it here
--     than merge the shards' own ORDER BY (a query on the parent table);
--   options '-c hnsw.iterative_scan=strict_order': each shard's index keeps reading until it
--     has the k rows asked for (k may exceed hnsw.ef_search, or a filter may drop rows), in
--     exact distance order, because the coordinator keeps the first k it receives.
CREATE OR REPLACE FUNCTION pgvision._shard_option_fixes(srv name)
RETURNS text[]
LANGUAGE plpgsql STABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    _opts jsonb;
    _ext text;
    _fix text[] := '{}';
BEGIN
    SELECT coalesce(pg_catalog.jsonb_object_agg(o.option_name, o.option_value), '{}') INTO _opts
    FROM pg_catalog.pg_foreign_server s, pg_catalog.pg_options_to_table(s.srvoptions) o
    WHERE s.srvname = srv;
    _ext := _opts ->> 'extensions';
    IF _ext IS NULL THEN
        _fix := _fix || 'ADD extensions ''vector, pgvision'''::text;
    ELSIF NOT ARRAY['vector', 'pgvision'] <@ ARRAY(SELECT pg_catalog.btrim(x) FROM pg_catalog.unnest(pg_catalog.string_to_array(_ext, ',')) x) THEN
        _fix := _fix || pg_catalog.format('SET extensions %L', (
            SELECT pg_catalog.string_agg(x, ', ') FROM (
                SELECT pg_catalog.btrim(x) AS x FROM pg_catalog.unnest(pg_catalog.string_to_array(_ext, ',')) x
                UNION SELECT 'vector' UNION SELECT 'pgvision') s WHERE x <> ''));
    END IF;
    _fix := _fix || ARRAY(SELECT pg_catalog.format('ADD %s %L', d.opt, d.val)
                          FROM (VALUES (1, 'async_capable', 'true'), (2, 'parallel_commit', 'true'),
                                       (3, 'fdw_tuple_cost', '0.2')) d (n, opt, val)
                          WHERE NOT _opts ? d.opt ORDER BY d.n);
    IF NOT _opts ? 'options' THEN
        _fix := _fix || 'ADD options ''-c hnsw.iterative_scan=strict_order'''::text;
    ELSIF pg_catalog.strpos(_opts ->> 'options', 'hnsw.iterative_scan') = 0 THEN
        _fix := _fix || pg_catalog.format('SET options %L', (_opts ->> 'options') || ' -c hnsw.iterative_scan=strict_order');
    END IF;
    RETURN _fix;
END
$$;
COMMENT ON FUNCTION pgvision._shard_option_fixes(name) IS
'internal: the ALTER SERVER ... OPTIONS clauses a shard''s foreign server lacks (extensions vector and pgvision, async_capable, parallel_commit, fdw_tuple_cost, hnsw.iterative_scan in options)';

-- Every row of pgvision.shards names a postgres_fdw server, however it was written (add_shard,
-- a raw INSERT by a member of pgvision_admin, the COPY of a restore); rows never change.
CREATE OR REPLACE FUNCTION pgvision._shards_write()
RETURNS trigger
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    _fdw name;
BEGIN
    IF TG_OP = 'UPDATE' THEN
        RAISE EXCEPTION 'cannot change a row of pgvision.shards' USING ERRCODE = 'feature_not_supported',
            HINT = 'pgvision.drop_shard and pgvision.add_shard replace one';
    END IF;
    SELECT w.fdwname INTO _fdw
    FROM pg_catalog.pg_foreign_server s JOIN pg_catalog.pg_foreign_data_wrapper w ON w.oid = s.srvfdw
    WHERE s.srvname = NEW.server;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'server "%" does not exist', NEW.server USING ERRCODE = 'undefined_object';
    ELSIF _fdw <> 'postgres_fdw' THEN
        RAISE EXCEPTION 'foreign server "%" uses %, not postgres_fdw', NEW.server, _fdw
            USING ERRCODE = 'wrong_object_type';
    END IF;
    RETURN NEW;
END
$$;
COMMENT ON FUNCTION pgvision._shards_write() IS
'internal: trigger of pgvision.shards; a row names an existing postgres_fdw server and never changes';

CREATE OR REPLACE TRIGGER shards_write BEFORE INSERT OR UPDATE ON pgvision.shards
FOR EACH ROW EXECUTE FUNCTION pgvision._shards_write();
COMMENT ON TRIGGER shards_write ON pgvision.shards IS
'a shard is an existing postgres_fdw server; rows never change';

CREATE OR REPLACE FUNCTION pgvision.add_shard(server name)
RETURNS void
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    _fdw name;
    _owner oid;
    _fix text[];
BEGIN
    IF server IS NULL THEN
        RAISE EXCEPTION 'server must not be null' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    PERFORM pgvision._postgres_fdw();
    SELECT w.fdwname, s.srvowner INTO _fdw, _owner
    FROM pg_catalog.pg_foreign_server s JOIN pg_catalog.pg_foreign_data_wrapper w ON w.oid = s.srvfdw
    WHERE s.srvname = add_shard.server;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'server "%" does not exist', server USING ERRCODE = 'undefined_object',
            HINT = pg_catalog.format('CREATE SERVER %I FOREIGN DATA WRAPPER postgres_fdw OPTIONS (host ''...'', port ''5432'', dbname ''...'') makes it', server);
    END IF;
    IF _fdw <> 'postgres_fdw' THEN
        RAISE EXCEPTION 'foreign server "%" uses %, not postgres_fdw', server, _fdw
            USING ERRCODE = 'wrong_object_type';
    END IF;
    _fix := pgvision._shard_option_fixes(server);
    IF pg_catalog.cardinality(_fix) > 0 THEN
        IF NOT pg_catalog.pg_has_role(_owner, 'USAGE') THEN
            RAISE EXCEPTION 'foreign server "%" lacks options a pgvision shard needs', server
                USING ERRCODE = 'insufficient_privilege',
                      HINT = pg_catalog.format('its owner runs ALTER SERVER %I OPTIONS (%s)', server,
                                               pg_catalog.array_to_string(_fix, ', '));
        END IF;
        EXECUTE pg_catalog.format('ALTER SERVER %I OPTIONS (%s)', server, pg_catalog.array_to_string(_fix, ', '));
        RAISE NOTICE 'foreign server "%": %', server, pg_catalog.array_to_string(_fix, ', ');
    END IF;
    INSERT INTO pgvision.shards AS s (server) VALUES (add_shard.server) ON CONFLICT DO NOTHING;
END
$$;
COMMENT ON FUNCTION pgvision.add_shard(name) IS
'registers a postgres_fdw foreign server as a pgvision shard, first adding the options a shard needs when they are missing (extensions ''vector, pgvision'', async_capable, parallel_commit, fdw_tuple_cost ''0.2'', options ''-c hnsw.iterative_scan=strict_order''); for members of pgvision_admin who own the server';

CREATE OR REPLACE FUNCTION pgvision.drop_shard(server name)
RETURNS void
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    DELETE FROM pgvision.shards AS s WHERE s.server = drop_shard.server;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'foreign server "%" is not a pgvision shard', server USING ERRCODE = 'undefined_object';
    END IF;
END
$$;
COMMENT ON FUNCTION pgvision.drop_shard(name) IS
'removes a foreign server from pgvision.shards: pipeline_run_dist_random and create_sharded_table stop using it; existing partitions on it stay; for members of pgvision_admin';

CREATE OR REPLACE FUNCTION pgvision.shard_status()
RETURNS TABLE (shard name, reachable boolean, pgvision_version text, vector_schema text, error text)
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    _srv name;
    _info jsonb;
    _msg text;
    _detail text;
BEGIN
    PERFORM pgvision._dblink();
    FOR _srv IN SELECT s.server FROM pgvision.shards s ORDER BY s.server LOOP
        shard := _srv;
        BEGIN
            _info := pgvision._shard_probe(_srv);
            reachable := true;
            error := NULL;
        EXCEPTION WHEN OTHERS THEN
            GET STACKED DIAGNOSTICS _msg = MESSAGE_TEXT, _detail = PG_EXCEPTION_DETAIL;
            _info := NULL;
            reachable := false;
            error := pgvision._error_text(_msg, _detail);
        END;
        pgvision_version := _info ->> 'pgvision';
        vector_schema := _info ->> 'vector_schema';
        RETURN NEXT;
    END LOOP;
END
$$;
COMMENT ON FUNCTION pgvision.shard_status() IS
'one row per registered shard: whether it answers (through dblink and the caller''s user mapping), its pgvision version and pgvector schema, or the error';

-- Who may do what

-- Registering a shard decides where every role's pipelines run: pgvision_admin, as for
-- models and pipelines. Sharding a table, backfilling and searching are for any role, with
-- the server privileges and user mappings the DBA gave it.
GRANT SELECT ON pgvision.shards TO PUBLIC;
GRANT INSERT, DELETE ON pgvision.shards TO pgvision_admin;
REVOKE ALL ON FUNCTION pgvision.add_shard(name) FROM PUBLIC;
REVOKE ALL ON FUNCTION pgvision.drop_shard(name) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION pgvision.add_shard(name) TO pgvision_admin;
GRANT EXECUTE ON FUNCTION pgvision.drop_shard(name) TO pgvision_admin;

-- idempotent/042-shard-tables.sql
-- Scale-out: sharded tables. A sharded table is a hash-partitioned table whose partitions
-- are all foreign tables, one per shard; create_sharded_table builds one from an empty
-- partitioned table. See 040-shard-remote.sql for the layout.

CREATE OR REPLACE FUNCTION pgvision._is_sharded(tbl regclass)
RETURNS boolean
LANGUAGE sql STABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT EXISTS (SELECT FROM pg_catalog.pg_class c WHERE c.oid = tbl AND c.relkind = 'p')
       AND EXISTS (SELECT FROM pg_catalog.pg_partition_tree(tbl) p WHERE p.isleaf)
       AND NOT EXISTS (SELECT FROM pg_catalog.pg_partition_tree(tbl) p
                       JOIN pg_catalog.pg_class c ON c.oid = p.relid
                       WHERE p.isleaf AND c.relkind <> 'f')
$$;
COMMENT ON FUNCTION pgvision._is_sharded(regclass) IS
'internal: whether a table is partitioned and all its partitions are foreign tables';

CREATE OR REPLACE FUNCTION pgvision._shard_tables(tbl regclass)
RETURNS TABLE (foreign_table regclass, server name, remote_table text)
LANGUAGE sql STABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT c.oid::regclass, s.srvname,
           pg_catalog.format('%I.%I',
               coalesce((SELECT o.option_value FROM pg_catalog.pg_options_to_table(f.ftoptions) o
                         WHERE o.option_name = 'schema_name'), n.nspname),
               coalesce((SELECT o.option_value FROM pg_catalog.pg_options_to_table(f.ftoptions) o
                         WHERE o.option_name = 'table_name'), c.relname))
    FROM pg_catalog.pg_partition_tree(tbl) p
    JOIN pg_catalog.pg_class c ON c.oid = p.relid
    JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
    JOIN pg_catalog.pg_foreign_table f ON f.ftrelid = c.oid
    JOIN pg_catalog.pg_foreign_server s ON s.oid = f.ftserver
    WHERE p.isleaf AND (SELECT pgvision._is_sharded(tbl))  -- evaluated once
    ORDER BY s.srvname, c.oid::regclass::text
$$;
COMMENT ON FUNCTION pgvision._shard_tables(regclass) IS
'internal: the foreign partitions of a sharded table, their servers and the tables they read on the shards';

-- A sharded table has no primary key on the coordinator (PostgreSQL refuses unique indexes
-- over foreign partitions); each shard's table has one on the partition key, and hashing
-- sends equal keys to the same shard, so the key identifies a row across all of them.
CREATE OR REPLACE FUNCTION pgvision._shard_key(tbl regclass)
RETURNS TABLE (key_column name, key_type text)
LANGUAGE sql STABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT a.attname, pg_catalog.format_type(a.atttypid, a.atttypmod)
    FROM pg_catalog.pg_partitioned_table p
    JOIN pg_catalog.pg_attribute a ON a.attrelid = p.partrelid AND a.attnum = p.partattrs[0]
    WHERE p.partrelid = tbl AND p.partnatts = 1 AND pgvision._is_sharded(tbl)
$$;
COMMENT ON FUNCTION pgvision._shard_key(regclass) IS
'internal: the partition key of a sharded table (the primary key of every shard''s table), which search uses as the row''s key';

-- The checks of create_sharded_table, all made before anything is created: the table is
-- the caller's, partitioned by hash of one column and without partitions; the shards are
-- registered, distinct and answer with what the table needs. Returns the table's schema,
-- name and partition key, and the servers.
CREATE OR REPLACE FUNCTION pgvision._sharded_table_check(tbl regclass, shards name[], image_column name,
                                                         feature_column name, model text,
                                                         auto_embed boolean, metric text,
                                                         OUT nsp name, OUT rel name, OUT key name,
                                                         OUT servers name[])
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    _strategy "char";
    _natts int;
    _srv name;
BEGIN
    IF tbl IS NULL OR auto_embed IS NULL THEN
        RAISE EXCEPTION 'tbl and auto_embed must not be null' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    PERFORM pgvision._postgres_fdw();
    PERFORM pgvision._dblink();
    PERFORM pgvision._check_owner(tbl);

    SELECT n.nspname, c.relname INTO nsp, rel
    FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = tbl;
    SELECT p.partstrat, p.partnatts, a.attname INTO _strategy, _natts, key
    FROM pg_catalog.pg_partitioned_table p
    LEFT JOIN pg_catalog.pg_attribute a ON a.attrelid = p.partrelid AND a.attnum = p.partattrs[0]
    WHERE p.partrelid = tbl;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'table % is not partitioned', tbl USING ERRCODE = 'wrong_object_type',
            HINT = 'create it with PARTITION BY HASH (key): CREATE TABLE images (id bigint NOT NULL, ...) PARTITION BY HASH (id)';
    END IF;
    IF _strategy <> 'h' OR _natts <> 1 OR key IS NULL THEN
        RAISE EXCEPTION 'table % is not partitioned by hash of one column', tbl
            USING ERRCODE = 'feature_not_supported',
                  HINT = 'a sharded table is created with PARTITION BY HASH (key), the key being a column';
    END IF;
    IF EXISTS (SELECT FROM pg_catalog.pg_inherits i WHERE i.inhparent = tbl) THEN
        RAISE EXCEPTION 'table % already has partitions', tbl USING ERRCODE = 'object_not_in_prerequisite_state',
            HINT = 'create_sharded_table makes one partition on each shard: start from a table without any';
    END IF;

    servers := coalesce(shards, ARRAY(SELECT s.server FROM pgvision.shards s ORDER BY s.server));
    IF pg_catalog.cardinality(servers) IS DISTINCT FROM (SELECT pg_catalog.count(DISTINCT x) FROM pg_catalog.unnest(servers) x)::int THEN
        RAISE EXCEPTION 'shards must not be null nor repeat a server' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF pg_catalog.cardinality(servers) = 0 THEN
        RAISE EXCEPTION 'no shards to place % on', tbl USING ERRCODE = 'object_not_in_prerequisite_state',
            HINT = 'a member of pgvision_admin registers foreign servers with pgvision.add_shard(server)';
    END IF;
    FOREACH _srv IN ARRAY servers LOOP
        IF NOT EXISTS (SELECT FROM pgvision.shards s WHERE s.server = _srv) THEN
            RAISE EXCEPTION 'foreign server "%" is not a pgvision shard', _srv USING ERRCODE = 'undefined_object',
                HINT = pg_catalog.format('a member of pgvision_admin registers it with SELECT pgvision.add_shard(%L)', _srv);
        END IF;
    END LOOP;
    IF auto_embed THEN
        PERFORM pgvision._embed_columns(tbl, image_column, feature_column, model);
    END IF;
    IF metric IS NOT NULL THEN
        PERFORM pgvision._metric(metric, 'expected l2, cosine or ip, or NULL for no index');
        PERFORM pgvision._vector_dims(tbl, feature_column);
    END IF;
    FOREACH _srv IN ARRAY servers LOOP
        PERFORM pgvision._shard_check(_srv);
    END LOOP;
END
$$;
COMMENT ON FUNCTION pgvision._sharded_table_check(regclass, name[], name, name, text, boolean, text) IS
'internal: the checks of pgvision.create_sharded_table; returns the table''s schema, name and partition key and the servers to place it on';

-- The shard's table: the parent's columns, types (pgvector's named with its schema, the
-- same on every server) and NOT NULLs, and a primary key on the partition key. Defaults
-- are left out: rows come through the coordinator, which applies the parent's. One remote
-- transaction per shard: its table, index and trigger all exist or none does. The shard
-- runs it with the search_path the type names were written under here.
CREATE OR REPLACE FUNCTION pgvision._sharded_table_script(tbl regclass, nsp name, rel name, key name,
                                                          image_column name, feature_column name,
                                                          model text, auto_embed boolean, metric text,
                                                          m int, ef_construction int)
RETURNS text
LANGUAGE sql STABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT 'BEGIN; SET LOCAL search_path = pg_catalog, pg_temp; '
        || pg_catalog.format('CREATE TABLE %I.%I (%s, PRIMARY KEY (%I)); ', nsp, rel, cols.list, key)
        || CASE WHEN metric IS NULL THEN '' ELSE pg_catalog.format(
               'SELECT pgvision.create_index(%L, %L, metric => %L, m => %s, ef_construction => %s); ',
               pg_catalog.format('%I.%I', nsp, rel), feature_column, metric,
               coalesce(m::text, 'NULL'), coalesce(ef_construction::text, 'NULL')) END
        || CASE WHEN NOT auto_embed THEN '' ELSE pg_catalog.format(
               'SELECT pgvision.enable_auto_embed(%L, %L, %L, %L); ',
               pg_catalog.format('%I.%I', nsp, rel), image_column, feature_column, model) END
        || 'COMMIT'
    FROM (SELECT pg_catalog.string_agg(pg_catalog.format('%I %s', a.attname, pg_catalog.format_type(a.atttypid, a.atttypmod))
                                       || CASE WHEN a.attcollation <> ty.typcollation
                                               THEN pg_catalog.format(' COLLATE %I.%I', cn.nspname, co.collname) ELSE '' END
                                       || CASE WHEN a.attnotnull THEN ' NOT NULL' ELSE '' END,
                                       ', ' ORDER BY a.attnum) AS list
          FROM pg_catalog.pg_attribute a
          JOIN pg_catalog.pg_type ty ON ty.oid = a.atttypid
          LEFT JOIN pg_catalog.pg_collation co ON co.oid = a.attcollation
          LEFT JOIN pg_catalog.pg_namespace cn ON cn.oid = co.collnamespace
          WHERE a.attrelid = tbl AND a.attnum > 0 AND NOT a.attisdropped) AS cols
$$;
COMMENT ON FUNCTION pgvision._sharded_table_script(regclass, name, name, name, name, name, text, boolean, text, int, int) IS
'internal: the transaction that creates a sharded table''s table on a shard, with its primary key, its index (unless metric is NULL) and its automatic-embedding trigger (when auto_embed)';

CREATE OR REPLACE FUNCTION pgvision.create_sharded_table(
    tbl regclass,
    shards name[] DEFAULT NULL,
    image_column name DEFAULT 'image',
    feature_column name DEFAULT 'feature',
    model text DEFAULT 'efficientnet_lite0',
    auto_embed boolean DEFAULT true,
    metric text DEFAULT pgvision._default_metric(),
    m int DEFAULT 16,
    ef_construction int DEFAULT 64)
RETURNS TABLE (shard name, foreign_table regclass, remote_table text)
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    _t record := pgvision._sharded_table_check(tbl, shards, image_column, feature_column, model,
                                               auto_embed, metric);
    _script text := pgvision._sharded_table_script(tbl, _t.nsp, _t.rel, _t.key, image_column, feature_column,
                                                   model, auto_embed, metric, m, ef_construction);
    _n int := pg_catalog.cardinality(_t.servers);
    _srv name;
    _base text;
    _part text;
    _done name[] := '{}';
BEGIN
    IF auto_embed THEN  -- the shards embed with model: the column records it
        PERFORM pgvision.set_column_model(tbl, feature_column, model);
    END IF;
    BEGIN
        FOR i IN 1 .. _n LOOP
            _srv := _t.servers[i];
            PERFORM pgvision._shard_exec(_srv, _script);
            _done := _done || _srv;
            -- <table>_<server>, shortened to fit NAMEDATALEN
            _base := _t.rel;
            WHILE pg_catalog.octet_length(_base || '_' || _srv) > 63 LOOP
                _base := pg_catalog.left(_base, -1);
            END LOOP;
            _part := pg_catalog.format('%I.%I', _t.nsp, _base || '_' || _srv);
            -- use_remote_estimate: without statistics postgres_fdw guesses a few rows per
            -- shard (fewer than k with a filter), and then neither pushes the LIMIT down nor
            -- keeps the scan asynchronous; the shard's own estimate costs a round trip
            -- while planning. (ANALYZE of a foreign table would read the whole shard.)
            EXECUTE pg_catalog.format(
                'CREATE FOREIGN TABLE %s PARTITION OF %s FOR VALUES WITH (MODULUS %s, REMAINDER %s)'
                ' SERVER %I OPTIONS (schema_name %L, table_name %L, use_remote_estimate %L)',
                _part, tbl, _n, i - 1, _srv, _t.nsp, _t.rel, 'true');
            shard := _srv;
            foreign_table := _part::regclass;
            remote_table := pg_catalog.format('%I.%I', _t.nsp, _t.rel);
            RETURN NEXT;
        END LOOP;
    EXCEPTION WHEN OTHERS THEN
        -- Leave no table behind on the shards that got one before the failure.
        FOREACH _srv IN ARRAY _done LOOP
            BEGIN
                PERFORM pgvision._shard_exec(_srv, pg_catalog.format('DROP TABLE IF EXISTS %I.%I', _t.nsp, _t.rel));
            EXCEPTION WHEN OTHERS THEN
                RAISE WARNING 'could not drop %.% on shard "%" after the failure: %', _t.nsp, _t.rel, _srv, SQLERRM;
            END;
        END LOOP;
        RAISE;
    END;
END
$$;
COMMENT ON FUNCTION pgvision.create_sharded_table(regclass, name[], name, name, text, boolean, text, int, int) IS
'places an empty table created with PARTITION BY HASH (key) on shards (default: all of pgvision.shards): on each, a table with the same columns and a primary key on the key, an HNSW index on feature_column (metric l2, cosine or ip, by default cosine; NULL for none) and, when auto_embed, the trigger that embeds image_column with model where the row is stored (the model then recorded for feature_column, pgvision.set_column_model); here, one foreign partition per shard. Returns each shard, its partition and the table on the shard. For the table''s owner, with USAGE on the servers and a user mapping';

-- idempotent/043-shard-backfill.sql
-- Scale-out: backfill on every shard at once (CALL pgvision.embed_table on each, over a
-- dblink connection of its own) and the shards' progress. See 040-shard-remote.sql.

-- One shard's backfill over the dblink connection conn, in two steps, each returning the
-- error as {"state", "error"} instead of raising it:
--   start: CALL pgvision.embed_table sent (a connection of that name an earlier call left
--     open after failing is closed first); NULL;
--   finish, once the connection is no longer busy: the CALL's error, if it failed, else fresh
--     statistics on the shard (every feature changed, and the coordinator plans with the
--     shard's estimates, use_remote_estimate) and its progress row, as {"rows_done",
--     "errors", "null_images", "seconds"}.
CREATE OR REPLACE FUNCTION pgvision._embed_shard(start boolean, conn text, srv name, remote text,
                                                 image_column name, feature_column name, model text,
                                                 batch_size int, retry_errors boolean)
RETURNS jsonb
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    _res jsonb;
    _state text;
    _msg text;
    _detail text;
BEGIN
    IF start THEN
        IF conn = ANY (coalesce(pgvision._dblink_call('get_connections')::text[], '{}')) THEN
            PERFORM pgvision._dblink_call('disconnect', conn);
        END IF;
        PERFORM pgvision._dblink_call('connect', conn, srv);
        -- The shard's per-batch NOTICEs would only reach this server's log.
        PERFORM pgvision._dblink_call('exec', conn, 'SET client_min_messages = warning');
        PERFORM pgvision._dblink_call('send_query', conn,
            pg_catalog.format('CALL pgvision.embed_table(%L, %L, %L, %L, %s, NULL, %L)',
                              remote, image_column, feature_column, model, batch_size, retry_errors));
        RETURN NULL;
    END IF;
    PERFORM pgvision._dblink_call('get_result', conn);  -- raises the shard's error, if the CALL failed
    PERFORM pgvision._dblink_call('get_result', conn);
    PERFORM pgvision._dblink_call('exec', conn, 'ANALYZE ' || remote);
    _res := pgvision._dblink_call('dblink', conn, pg_catalog.format(
        'SELECT pg_catalog.to_jsonb(r)::pg_catalog.text FROM (SELECT p.rows_done, p.errors, p.null_images,'
        ' pg_catalog.date_part(''epoch'', p.finished OPERATOR(pg_catalog.-) p.started) AS seconds'
        ' FROM pgvision.backfill_progress p WHERE p.tbl OPERATOR(pg_catalog.=) %L::pg_catalog.regclass'
        ' AND p.feature_column OPERATOR(pg_catalog.=) %L::pg_catalog.name) r',
        remote, feature_column))::jsonb;
    RAISE NOTICE 'shard "%": % rows embedded in % s, % failed, % without image', srv,
        _res ->> 'rows_done', round((_res ->> 'seconds')::numeric, 1), _res ->> 'errors', _res ->> 'null_images';
    RETURN _res;
EXCEPTION WHEN OTHERS THEN
    GET STACKED DIAGNOSTICS _state = RETURNED_SQLSTATE, _msg = MESSAGE_TEXT, _detail = PG_EXCEPTION_DETAIL;
    RETURN pg_catalog.jsonb_build_object('state', _state, 'error', pgvision._error_text(_msg, _detail));
END
$$;
COMMENT ON FUNCTION pgvision._embed_shard(boolean, text, name, text, name, name, text, int, boolean) IS
'internal: starts (start) or finishes CALL pgvision.embed_table on a shard over a dblink connection of its own; finishing analyzes the shard''s table and returns its progress; either returns an error as {"state", "error"}';

CREATE OR REPLACE FUNCTION pgvision.embed_shards(tbl regclass, image_column name, feature_column name,
                                                 model text DEFAULT 'efficientnet_lite0',
                                                 batch_size int DEFAULT 64,
                                                 retry_errors boolean DEFAULT false)
RETURNS TABLE (shard name, rows_embedded bigint, failed bigint, without_image bigint, seconds double precision)
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    _servers name[];
    _remotes text[];
    _conns text[];
    _running boolean[];
    _results jsonb[];
    _n int;
    _any boolean;
    _failed text[];
BEGIN
    IF tbl IS NULL OR image_column IS NULL OR feature_column IS NULL OR model IS NULL OR retry_errors IS NULL THEN
        RAISE EXCEPTION 'tbl, image_column, feature_column, model and retry_errors must not be null'
            USING ERRCODE = 'null_value_not_allowed';
    END IF;
    PERFORM pgvision._check_batch_size(batch_size);
    PERFORM pgvision._dblink();
    IF NOT pgvision._is_sharded(tbl) THEN
        RAISE EXCEPTION '% is not a sharded table', tbl USING ERRCODE = 'wrong_object_type',
            HINT = 'CALL pgvision.embed_table backfills a table of this server; pgvision.create_sharded_table places one on shards';
    END IF;
    PERFORM pgvision._embed_columns(tbl, image_column, feature_column, model);
    PERFORM pgvision.set_column_model(tbl, feature_column, model);
    SELECT pg_catalog.array_agg(st.server ORDER BY st.server), pg_catalog.array_agg(st.remote_table ORDER BY st.server)
    INTO _servers, _remotes FROM pgvision._shard_tables(tbl) st;
    _n := pg_catalog.cardinality(_servers);
    _conns := ARRAY(SELECT 'pgvision_embed_shards_' || i FROM pg_catalog.generate_series(1, _n) i);
    _results := pg_catalog.array_fill(NULL::jsonb, ARRAY[_n]);
    _running := pg_catalog.array_fill(false, ARRAY[_n]);
    BEGIN
        -- Start every shard; one that cannot start is reported at the end, the others go on.
        FOR i IN 1 .. _n LOOP
            _results[i] := pgvision._embed_shard(true, _conns[i], _servers[i], _remotes[i], image_column,
                                                 feature_column, model, batch_size, retry_errors);
            _running[i] := _results[i] IS NULL;
        END LOOP;
        -- Wait for them, polling so that a cancel of this query is noticed.
        LOOP
            _any := false;
            FOR i IN 1 .. _n LOOP
                CONTINUE WHEN NOT _running[i];
                IF pgvision._dblink_call('is_busy', _conns[i])::int = 1 THEN
                    _any := true;
                    CONTINUE;
                END IF;
                _running[i] := false;
                _results[i] := pgvision._embed_shard(false, _conns[i], _servers[i], _remotes[i], image_column,
                                                     feature_column, model, batch_size, retry_errors);
            END LOOP;
            EXIT WHEN NOT _any;
            PERFORM pg_catalog.pg_sleep(0.1);
        END LOOP;
    EXCEPTION WHEN OTHERS OR query_canceled THEN
        PERFORM pgvision._dblink_close(_conns, _running);
        RAISE;
    END;
    PERFORM pgvision._dblink_close(_conns, NULL);

    _failed := ARRAY(SELECT pg_catalog.format('shard "%s": %s', _servers[i], _results[i] ->> 'error')
                     FROM pg_catalog.generate_series(1, _n) i WHERE _results[i] ? 'error' ORDER BY i);
    IF pg_catalog.cardinality(_failed) > 0 THEN
        RAISE EXCEPTION 'backfill of % failed on % of % shards', tbl, pg_catalog.cardinality(_failed), _n
            USING ERRCODE = (SELECT _results[i] ->> 'state' FROM pg_catalog.generate_series(1, _n) i
                             WHERE _results[i] ? 'error' ORDER BY i LIMIT 1),
                  DETAIL = pg_catalog.array_to_string(_failed, E'\n'),
                  HINT = 'the other shards finished, and every batch a shard committed stays: run pgvision.embed_shards again to continue';
    END IF;
    RETURN QUERY SELECT _servers[i], (_results[i] ->> 'rows_done')::bigint, (_results[i] ->> 'errors')::bigint,
                        (_results[i] ->> 'null_images')::bigint, (_results[i] ->> 'seconds')::float8
                 FROM pg_catalog.generate_series(1, _n) i ORDER BY i;
END
$$;
COMMENT ON FUNCTION pgvision.embed_shards(regclass, name, name, text, int, boolean) IS
'fills the NULL features of a sharded table with model, recorded for the feature column (pgvision.set_column_model), on all its shards at once: CALL pgvision.embed_table on each (batch by batch, committing each batch there), returning per shard the rows embedded, rows that failed (see pgvision.backfill_errors on the shard), rows without image and seconds; if a shard fails, the others finish and an error names it; run it again to continue';

CREATE OR REPLACE FUNCTION pgvision.shard_backfill_progress(tbl regclass)
RETURNS TABLE (shard name, feature_column name, rows_done bigint, rows_left bigint, errors bigint,
               null_images bigint, rate double precision, started timestamptz, updated timestamptz,
               finished timestamptz)
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    _t record;
BEGIN
    IF NOT pgvision._is_sharded(tbl) THEN
        RAISE EXCEPTION '% is not a sharded table', tbl USING ERRCODE = 'wrong_object_type',
            HINT = 'pgvision.backfill_progress shows the backfills of this server''s tables';
    END IF;
    FOR _t IN SELECT st.server, st.remote_table FROM pgvision._shard_tables(tbl) st LOOP
        RETURN QUERY
        SELECT _t.server, (j ->> 'feature_column')::name, (j ->> 'rows_done')::bigint, (j ->> 'rows_left')::bigint,
               (j ->> 'errors')::bigint, (j ->> 'null_images')::bigint, (j ->> 'rate')::float8,
               (j ->> 'started')::timestamptz, (j ->> 'updated')::timestamptz, (j ->> 'finished')::timestamptz
        FROM pgvision._shard_json(_t.server, pg_catalog.format(
            'SELECT p.feature_column, p.rows_done, p.rows_left, p.errors, p.null_images, p.rate, p.started,'
            ' p.updated, p.finished FROM pgvision.backfill_progress p WHERE p.tbl OPERATOR(pg_catalog.=) %L::pg_catalog.regclass',
            _t.remote_table)) AS j;
    END LOOP;
END
$$;
COMMENT ON FUNCTION pgvision.shard_backfill_progress(regclass) IS
'pgvision.backfill_progress of a sharded table, read from each shard: one row per shard and feature column';

-- idempotent/044-shard-search.sql
-- Scale-out: queries over the shards. Search of a sharded table (the top-n query of each
-- shard, all sent at once, behind the hook pgvision._scale_out) and pipeline_run on a
-- random shard. See 040-shard-remote.sql.

-- The top-n query of a sharded table as one branch per shard, joined with UNION ALL:
--   (SELECT <columns>, <distance> AS pgvision_distance FROM <foreign partition> AS t
--    WHERE <where_clause> ORDER BY <distance> LIMIT <n>) UNION ALL (...)
-- postgres_fdw sends each branch whole (ORDER BY and LIMIT included) to its shard, whose
-- HNSW index answers it, and an Append of the branches that is not asked for an order (the
-- caller reads it from a MATERIALIZED CTE and sorts after) scans them asynchronously, all
-- shards at once. A query on the parent table would instead get a Merge Append: one shard
-- after another, without the LIMIT. The columns are those search returns (not vectors or
-- bytea, which the coordinator would fetch for nothing), the partition key and extra_columns.
-- NULL when the table is not sharded, or when the caller may read the parent but not every
-- partition, or the parent has row-level security, which reading partitions would bypass:
-- the caller then queries the parent.
-- With pgvision.partial_results on, a shard that cannot be reached is left out with a
-- WARNING naming it; off (the default), the query fails with postgres_fdw's error, which
-- names the server.
CREATE OR REPLACE FUNCTION pgvision._shard_union(tbl regclass, extra_columns name[], distance text,
                                                where_clause text, n text)
RETURNS text
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    _cols text;
    _partial boolean;
    _parts regclass[];
    _servers name[];
    _branches text[] := '{}';
    _left text[] := '{}';
    _msg text;
    _detail text;
BEGIN
    SELECT pg_catalog.array_agg(st.foreign_table), pg_catalog.array_agg(st.server)
    INTO _parts, _servers
    FROM pgvision._shard_tables(tbl) st
    HAVING pg_catalog.bool_and(pg_catalog.has_table_privilege(st.foreign_table, 'SELECT'));
    IF _parts IS NULL OR (SELECT c.relrowsecurity FROM pg_catalog.pg_class c WHERE c.oid = tbl) THEN
        RETURN NULL;
    END IF;
    SELECT pg_catalog.string_agg(pg_catalog.format('t.%I', a.attname), ', ' ORDER BY a.attnum) INTO _cols
    FROM pg_catalog.pg_attribute a
    WHERE a.attrelid = tbl AND a.attnum > 0 AND NOT a.attisdropped
      AND (a.attname = ANY (pgvision._plain_columns(tbl) || coalesce(extra_columns, '{}'))
           OR a.attnum = (SELECT p.partattrs[0] FROM pg_catalog.pg_partitioned_table p WHERE p.partrelid = tbl));
    _partial := coalesce(NULLIF(pg_catalog.current_setting('pgvision.partial_results', true), ''),
                         'off')::boolean;
    FOR i IN 1 .. pg_catalog.cardinality(_parts) LOOP
        IF _partial THEN
            BEGIN
                EXECUTE pg_catalog.format('SELECT FROM %s LIMIT 1', _parts[i]);
            EXCEPTION WHEN connection_exception THEN
                GET STACKED DIAGNOSTICS _msg = MESSAGE_TEXT, _detail = PG_EXCEPTION_DETAIL;
                RAISE WARNING 'shard "%" is unreachable: the results leave out its rows (%)', _servers[i], _parts[i]
                    USING DETAIL = pgvision._error_text(_msg, _detail);
                _left := _left || _servers[i]::text;
                CONTINUE;
            END;
        END IF;
        -- Concatenated, never a format() template: where_clause holds the caller's filter.
        _branches := _branches || ('(SELECT ' || coalesce(_cols || ', ', '') || distance || ' AS pgvision_distance FROM '
                                   || _parts[i]::text || ' AS t WHERE ' || where_clause
                                   || ' ORDER BY ' || distance || ' LIMIT ' || n || ')');
    END LOOP;
    IF pg_catalog.cardinality(_branches) = 0 THEN
        RAISE EXCEPTION 'no shard of % is reachable', tbl
            USING ERRCODE = 'sqlclient_unable_to_establish_sqlconnection',
                  DETAIL = 'unreachable: ' || pg_catalog.array_to_string(_left, ', '),
                  HINT = 'SELECT * FROM pgvision.shard_status() shows what each shard answers';
    END IF;
    RETURN pg_catalog.array_to_string(_branches, ' UNION ALL ');
END
$$;
COMMENT ON FUNCTION pgvision._shard_union(regclass, name[], text, text, text) IS
'internal: for a sharded table, the top-n query as a UNION ALL of one ORDER BY ... LIMIT n branch per foreign partition (each pushed down to its shard and scanned asynchronously); NULL for other tables, or when the caller cannot read every partition or the table has row-level security; with pgvision.partial_results on, unreachable shards are left out with a WARNING';

-- The scale-out hook of 000-common.sql, for real: sharded tables answer, others get NULLs.
CREATE OR REPLACE FUNCTION pgvision._scale_out(tbl regclass, extra_columns name[], distance text,
                                               where_clause text, n text,
                                               OUT key_column name, OUT key_type text,
                                               OUT candidates text)
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_class c WHERE c.oid = tbl AND c.relkind = 'p') THEN
        RETURN;  -- the common case, decided at the cost of one catalog lookup
    END IF;
    SELECT s.key_column, s.key_type INTO key_column, key_type FROM pgvision._shard_key(tbl) s;
    IF distance IS NOT NULL THEN
        candidates := pgvision._shard_union(tbl, extra_columns, distance, where_clause, n);
    END IF;
END
$$;
COMMENT ON FUNCTION pgvision._scale_out(regclass, name[], text, text, text) IS
'internal: the hook search calls for every table: for a sharded table its partition key (pgvision._shard_key) and, with a distance, its top-n query over the shards (pgvision._shard_union); NULLs for other tables';

-- ---------------------------------------------------------------------------------------
-- pipeline_run_dist_random on a random shard (050-analyticdb.sql calls this when
-- pgvision.shards has rows)

CREATE OR REPLACE FUNCTION pgvision._shard_pipeline_run(name text, image bytea)
RETURNS jsonb
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    _sql text := pg_catalog.format('SELECT pgvision.pipeline_run(%L::pg_catalog.text, %L::pg_catalog.bytea)::pg_catalog.text',
                                   name, image);
    _srv name;
    _conn text;
    _open boolean;
    _tried name[] := '{}';
    _state text;
    _msg text;
    _detail text;
    _hint text;
BEGIN
    -- Among the shards this role can reach (USAGE and a user mapping), in random order; one
    -- that cannot be reached gives its turn to the next, with a WARNING.
    FOR _srv IN
        SELECT s.server FROM pgvision.shards s JOIN pg_catalog.pg_foreign_server fs ON fs.srvname = s.server
        WHERE pg_catalog.has_server_privilege(fs.oid, 'USAGE')
          AND EXISTS (SELECT FROM pg_catalog.pg_user_mappings um
                      WHERE um.srvid = fs.oid AND um.umuser IN (0, current_user::regrole::oid))
        ORDER BY pg_catalog.random()
    LOOP
        _tried := _tried || _srv;
        -- One connection per shard and role, kept for the session: the shard's backend keeps
        -- the model loaded between calls, as a local backend does.
        _conn := pg_catalog.format('pgvision_pipeline:%s:%s', _srv, current_user::regrole::oid);
        _open := _conn = ANY (coalesce(pgvision._dblink_call('get_connections')::text[], '{}'));
        BEGIN
            IF NOT _open THEN
                PERFORM pgvision._dblink_call('connect', _conn, _srv);
                _open := true;
            END IF;
            RETURN pgvision._dblink_call('dblink', _conn, _sql)::jsonb;
        EXCEPTION
            WHEN connection_exception THEN
                GET STACKED DIAGNOSTICS _msg = MESSAGE_TEXT, _detail = PG_EXCEPTION_DETAIL;
                IF _open THEN  -- a kept connection that broke: the next call opens a new one
                    PERFORM pgvision._dblink_close(ARRAY[_conn], NULL);
                END IF;
                RAISE WARNING 'shard "%" is unreachable, trying another', _srv
                    USING DETAIL = pgvision._error_text(_msg, _detail);
            WHEN OTHERS THEN
                GET STACKED DIAGNOSTICS _state = RETURNED_SQLSTATE, _msg = MESSAGE_TEXT,
                                        _detail = PG_EXCEPTION_DETAIL, _hint = PG_EXCEPTION_HINT;
                PERFORM pgvision._shard_raise(_srv, _state, _msg, _detail, _hint);
        END;
    END LOOP;
    IF pg_catalog.cardinality(_tried) = 0 THEN
        RAISE EXCEPTION 'no pgvision shard is usable by role %', current_user
            USING ERRCODE = 'insufficient_privilege',
                  HINT = 'a role needs USAGE on a shard''s foreign server and a user mapping for it: CREATE USER MAPPING FOR ... SERVER ... OPTIONS (user ''...'', password ''...'')';
    END IF;
    RAISE EXCEPTION 'no pgvision shard is reachable' USING ERRCODE = 'sqlclient_unable_to_establish_sqlconnection',
        DETAIL = 'tried ' || pg_catalog.array_to_string(_tried, ', '),
        HINT = 'SELECT * FROM pgvision.shard_status() shows what each shard answers';
END
$$;
COMMENT ON FUNCTION pgvision._shard_pipeline_run(text, bytea) IS
'internal: pipeline_run on a random registered shard the role can use, through a dblink connection kept for the session; an unreachable shard passes its turn with a WARNING';

-- idempotent/050-analyticdb.sql
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
# pgvision preamble: put the runtime folder on sys.path once per backend.
import sys
if "pgvision_runtime.sqlapi" not in sys.modules:
    import os, site, stat
    # raised as pgvision's other errors are: "pgvision: ..." with a SQLSTATE and a hint
    _Error = type("pgvision", (plpy.Error,), {"__module__": "builtins"})

    def _fail(message, sqlstate, hint, detail=None):
        e = _Error(message)
        e.sqlstate, e.hint = sqlstate, hint
        if detail:
            e.detail = detail
        raise e
    # Loading pgvision.so defines the settings (src/settings.c): a superuser-only one that a
    # role set before is then dropped, and the runtime reads checked values.
    if plpy.execute("SELECT pg_catalog.to_regprocedure('pgvision._load()') IS NOT NULL AS x")[0]["x"]:
        plpy.execute("SELECT pgvision._load()")
    # The folder decides which code the server runs: only the administrator's own sources
    # count (a placeholder, which any role can SET, is not in pg_settings).
    _rows = plpy.execute("SELECT setting FROM pg_catalog.pg_settings WHERE name = 'pgvision.runtime_path'"
                         " AND source IN ('default', 'configuration file', 'command line', 'environment variable')")
    _given = _rows[0]["setting"] if _rows else "@RUNTIME_PATH@"
    # Resolved once, and every folder from / down checked: nobody but root or the server's
    # user can then swap any part of what is imported later (links are resolved here, not
    # at import time), as ssh and sudo check their files.
    _root = os.path.realpath(_given)
    _site = os.path.join(_root, "venv", "lib", "python%d.%d" % sys.version_info[:2], "site-packages")
    _parts = [_p for _p in _site.split("/") if _p]
    for _i in range(len(_parts) + 2):
        _p = "/" + "/".join(_parts[:_i]) if _i <= len(_parts) else os.path.join(_site, "pgvision_runtime")
        try:
            _st = os.lstat(_p)
        except OSError as _e:
            _fail('runtime not found in "%s": %s' % (_given, _e.strerror.lower()), "58P01",
                  "run make install, or set pgvision.runtime_path in postgresql.conf",
                  detail='no folder "%s"' % _p)
        if (not stat.S_ISDIR(_st.st_mode) or _st.st_uid not in (0, os.geteuid())
                or _st.st_mode & 0o022):
            _fail('runtime folder "%s" is not a folder owned by root or the server\'s user and closed '
                  'to writes by others' % _p, "42501",
                  "install the runtime with make install, or fix the folder's owner and mode")
    # Keep the user's and the system's site-packages from shadowing the pinned runtime.
    sys.path[:] = [p for p in sys.path if "-packages" not in p]
    _before = list(sys.path)
    site.addsitedir(_site)
    sys.path[:] = [p for p in sys.path if p not in _before] + _before
    # numpy's OpenBLAS starts a thread per core at import, which takes half of numpy's
    # import time, and pgvision does no linear algebra; the postmaster's environment wins
    if "numpy" not in sys.modules:
        os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
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
    import os, site, stat
    # raised as pgvision's other errors are: "pgvision: ..." with a SQLSTATE and a hint
    _Error = type("pgvision", (plpy.Error,), {"__module__": "builtins"})

    def _fail(message, sqlstate, hint, detail=None):
        e = _Error(message)
        e.sqlstate, e.hint = sqlstate, hint
        if detail:
            e.detail = detail
        raise e
    # Loading pgvision.so defines the settings (src/settings.c): a superuser-only one that a
    # role set before is then dropped, and the runtime reads checked values.
    if plpy.execute("SELECT pg_catalog.to_regprocedure('pgvision._load()') IS NOT NULL AS x")[0]["x"]:
        plpy.execute("SELECT pgvision._load()")
    # The folder decides which code the server runs: only the administrator's own sources
    # count (a placeholder, which any role can SET, is not in pg_settings).
    _rows = plpy.execute("SELECT setting FROM pg_catalog.pg_settings WHERE name = 'pgvision.runtime_path'"
                         " AND source IN ('default', 'configuration file', 'command line', 'environment variable')")
    _given = _rows[0]["setting"] if _rows else "@RUNTIME_PATH@"
    # Resolved once, and every folder from / down checked: nobody but root or the server's
    # user can then swap any part of what is imported later (links are resolved here, not
    # at import time), as ssh and sudo check their files.
    _root = os.path.realpath(_given)
    _site = os.path.join(_root, "venv", "lib", "python%d.%d" % sys.version_info[:2], "site-packages")
    _parts = [_p for _p in _site.split("/") if _p]
    for _i in range(len(_parts) + 2):
        _p = "/" + "/".join(_parts[:_i]) if _i <= len(_parts) else os.path.join(_site, "pgvision_runtime")
        try:
            _st = os.lstat(_p)
        except OSError as _e:
            _fail('runtime not found in "%s": %s' % (_given, _e.strerror.lower()), "58P01",
                  "run make install, or set pgvision.runtime_path in postgresql.conf",
                  detail='no folder "%s"' % _p)
        if (not stat.S_ISDIR(_st.st_mode) or _st.st_uid not in (0, os.geteuid())
                or _st.st_mode & 0o022):
            _fail('runtime folder "%s" is not a folder owned by root or the server\'s user and closed '
                  'to writes by others' % _p, "42501",
                  "install the runtime with make install, or fix the folder's owner and mode")
    # Keep the user's and the system's site-packages from shadowing the pinned runtime.
    sys.path[:] = [p for p in sys.path if "-packages" not in p]
    _before = list(sys.path)
    site.addsitedir(_site)
    sys.path[:] = [p for p in sys.path if p not in _before] + _before
    # numpy's OpenBLAS starts a thread per core at import, which takes half of numpy's
    # import time, and pgvision does no linear algebra; the postmaster's environment wins
    if "numpy" not in sys.modules:
        os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    import pgvision_runtime.sqlapi
    GD["pgvision_runtime_path"] = _root
from pgvision_runtime import sqlapi as pv
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

-- idempotent/060-hashes.sql
-- Perceptual hashes: 64 bits an image, near for near-duplicates (a re-encoded, resized or
-- lightly edited copy), compared with pgvector's Hamming distance (<~>, hamming_distance)
-- and indexed with its hnsw bit_hamming_ops. Bit for bit those of the PyPI package
-- imagehash (phash, dhash with their defaults) for the image embed's decoder gives (EXIF
-- orientation applied, transparency on white), computed with numpy alone
-- (python_udf/pgvision_runtime/hashes.py, which says where exact parity cannot be had).
-- Decoded with embed's decoder and limits (pgvision.max_pixels, pgvision.max_image_bytes).
-- PARALLEL UNSAFE for the reason embed is (003-embed.sql): the settings are read with
-- plpy.execute.
--
-- A function's result type keeps no length: an hnsw index on the expression needs the cast
-- to bit(64), and the query's ORDER BY the same expression.

CREATE OR REPLACE FUNCTION pgvision.phash(image bytea)
RETURNS bit(64)
LANGUAGE plpython3u IMMUTABLE STRICT PARALLEL UNSAFE COST 10000
SET search_path = pg_catalog, pg_temp
AS $python$
# pgvision preamble: put the runtime folder on sys.path once per backend.
import sys
if "pgvision_runtime.sqlapi" not in sys.modules:
    import os, site, stat
    # raised as pgvision's other errors are: "pgvision: ..." with a SQLSTATE and a hint
    _Error = type("pgvision", (plpy.Error,), {"__module__": "builtins"})

    def _fail(message, sqlstate, hint, detail=None):
        e = _Error(message)
        e.sqlstate, e.hint = sqlstate, hint
        if detail:
            e.detail = detail
        raise e
    # Loading pgvision.so defines the settings (src/settings.c): a superuser-only one that a
    # role set before is then dropped, and the runtime reads checked values.
    if plpy.execute("SELECT pg_catalog.to_regprocedure('pgvision._load()') IS NOT NULL AS x")[0]["x"]:
        plpy.execute("SELECT pgvision._load()")
    # The folder decides which code the server runs: only the administrator's own sources
    # count (a placeholder, which any role can SET, is not in pg_settings).
    _rows = plpy.execute("SELECT setting FROM pg_catalog.pg_settings WHERE name = 'pgvision.runtime_path'"
                         " AND source IN ('default', 'configuration file', 'command line', 'environment variable')")
    _given = _rows[0]["setting"] if _rows else "@RUNTIME_PATH@"
    # Resolved once, and every folder from / down checked: nobody but root or the server's
    # user can then swap any part of what is imported later (links are resolved here, not
    # at import time), as ssh and sudo check their files.
    _root = os.path.realpath(_given)
    _site = os.path.join(_root, "venv", "lib", "python%d.%d" % sys.version_info[:2], "site-packages")
    _parts = [_p for _p in _site.split("/") if _p]
    for _i in range(len(_parts) + 2):
        _p = "/" + "/".join(_parts[:_i]) if _i <= len(_parts) else os.path.join(_site, "pgvision_runtime")
        try:
            _st = os.lstat(_p)
        except OSError as _e:
            _fail('runtime not found in "%s": %s' % (_given, _e.strerror.lower()), "58P01",
                  "run make install, or set pgvision.runtime_path in postgresql.conf",
                  detail='no folder "%s"' % _p)
        if (not stat.S_ISDIR(_st.st_mode) or _st.st_uid not in (0, os.geteuid())
                or _st.st_mode & 0o022):
            _fail('runtime folder "%s" is not a folder owned by root or the server\'s user and closed '
                  'to writes by others' % _p, "42501",
                  "install the runtime with make install, or fix the folder's owner and mode")
    # Keep the user's and the system's site-packages from shadowing the pinned runtime.
    sys.path[:] = [p for p in sys.path if "-packages" not in p]
    _before = list(sys.path)
    site.addsitedir(_site)
    sys.path[:] = [p for p in sys.path if p not in _before] + _before
    # numpy's OpenBLAS starts a thread per core at import, which takes half of numpy's
    # import time, and pgvision does no linear algebra; the postmaster's environment wins
    if "numpy" not in sys.modules:
        os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    import pgvision_runtime.sqlapi
    GD["pgvision_runtime_path"] = _root
from pgvision_runtime import sqlapi as pv
return pv.phash(plpy, GD, image)
$python$;
COMMENT ON FUNCTION pgvision.phash(bytea) IS
'the perceptual (DCT) hash of an image (JPEG, PNG, GIF, WebP, BMP or TIFF bytes), 64 bits equal to imagehash.phash of the image with EXIF orientation applied and transparency on white (imagehash''s hex text: lpad(to_hex(pgvision.phash(image)::bigint), 16, ''0'')); near-duplicates are a few bits apart by Hamming distance, pgvector''s <~>; index a stored bit(64) column with CREATE INDEX ON t USING hnsw (h bit_hamming_ops) and query ORDER BY h <~> pgvision.phash($1) LIMIT k, or index the expression: USING hnsw ((pgvision.phash(image)::bit(64)) bit_hamming_ops) with ORDER BY pgvision.phash(image)::bit(64) <~> pgvision.phash($1); the image limits and errors of pgvision.embed';

CREATE OR REPLACE FUNCTION pgvision.dhash(image bytea)
RETURNS bit(64)
LANGUAGE plpython3u IMMUTABLE STRICT PARALLEL UNSAFE COST 10000
SET search_path = pg_catalog, pg_temp
AS $python$
# pgvision preamble: put the runtime folder on sys.path once per backend.
import sys
if "pgvision_runtime.sqlapi" not in sys.modules:
    import os, site, stat
    # raised as pgvision's other errors are: "pgvision: ..." with a SQLSTATE and a hint
    _Error = type("pgvision", (plpy.Error,), {"__module__": "builtins"})

    def _fail(message, sqlstate, hint, detail=None):
        e = _Error(message)
        e.sqlstate, e.hint = sqlstate, hint
        if detail:
            e.detail = detail
        raise e
    # Loading pgvision.so defines the settings (src/settings.c): a superuser-only one that a
    # role set before is then dropped, and the runtime reads checked values.
    if plpy.execute("SELECT pg_catalog.to_regprocedure('pgvision._load()') IS NOT NULL AS x")[0]["x"]:
        plpy.execute("SELECT pgvision._load()")
    # The folder decides which code the server runs: only the administrator's own sources
    # count (a placeholder, which any role can SET, is not in pg_settings).
    _rows = plpy.execute("SELECT setting FROM pg_catalog.pg_settings WHERE name = 'pgvision.runtime_path'"
                         " AND source IN ('default', 'configuration file', 'command line', 'environment variable')")
    _given = _rows[0]["setting"] if _rows else "@RUNTIME_PATH@"
    # Resolved once, and every folder from / down checked: nobody but root or the server's
    # user can then swap any part of what is imported later (links are resolved here, not
    # at import time), as ssh and sudo check their files.
    _root = os.path.realpath(_given)
    _site = os.path.join(_root, "venv", "lib", "python%d.%d" % sys.version_info[:2], "site-packages")
    _parts = [_p for _p in _site.split("/") if _p]
    for _i in range(len(_parts) + 2):
        _p = "/" + "/".join(_parts[:_i]) if _i <= len(_parts) else os.path.join(_site, "pgvision_runtime")
        try:
            _st = os.lstat(_p)
        except OSError as _e:
            _fail('runtime not found in "%s": %s' % (_given, _e.strerror.lower()), "58P01",
                  "run make install, or set pgvision.runtime_path in postgresql.conf",
                  detail='no folder "%s"' % _p)
        if (not stat.S_ISDIR(_st.st_mode) or _st.st_uid not in (0, os.geteuid())
                or _st.st_mode & 0o022):
            _fail('runtime folder "%s" is not a folder owned by root or the server\'s user and closed '
                  'to writes by others' % _p, "42501",
                  "install the runtime with make install, or fix the folder's owner and mode")
    # Keep the user's and the system's site-packages from shadowing the pinned runtime.
    sys.path[:] = [p for p in sys.path if "-packages" not in p]
    _before = list(sys.path)
    site.addsitedir(_site)
    sys.path[:] = [p for p in sys.path if p not in _before] + _before
    # numpy's OpenBLAS starts a thread per core at import, which takes half of numpy's
    # import time, and pgvision does no linear algebra; the postmaster's environment wins
    if "numpy" not in sys.modules:
        os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    import pgvision_runtime.sqlapi
    GD["pgvision_runtime_path"] = _root
from pgvision_runtime import sqlapi as pv
return pv.dhash(plpy, GD, image)
$python$;
COMMENT ON FUNCTION pgvision.dhash(bytea) IS
'the difference hash of an image (JPEG, PNG, GIF, WebP, BMP or TIFF bytes), 64 bits equal to imagehash.dhash of the image with EXIF orientation applied and transparency on white: whether each pixel of a 9x8 grey copy is brighter than the one on its left; compared and indexed as pgvision.phash is: pgvector''s <~> (Hamming distance), CREATE INDEX ON t USING hnsw (h bit_hamming_ops) on a stored bit(64) column, or USING hnsw ((pgvision.dhash(image)::bit(64)) bit_hamming_ops); the image limits and errors of pgvision.embed';

-- idempotent/061-copies.sql
-- Copies: which stored images a query image is an edited copy of (a crop, a screenshot, a
-- re-encoded, turned, framed or captioned copy). The query is searched for as several views
-- (python_udf/pgvision_runtime/copies.py: as it is, turned back, without its border, its
-- textured region, its centre, tilted back) through the feature column's index, and, where the table has
-- a perceptual hash column, as its hashes (as it is, mirrored, turned) through that
-- column's index; the union of the candidates is scored exactly.
-- Thresholds, chosen on bench/mixed.py's collection (100 originals x 14 edits among 3,279
-- rows, every view and hash scored exactly in numpy; the SQL function measured with them:
-- bench/copies.py, BENCHMARKS.md section 8):
--   score = max over views of (cosine similarity - the view's penalty)
--           + 0.02 for each bit of hash distance under 18
--   verdict exact: hash distance 0 and the full view's cosine similarity at least 0.99;
--           near: hash distance at most 8; copy: score at least 0.9; else similar.

CREATE OR REPLACE FUNCTION pgvision._copy_query(image bytea, model text)
RETURNS TABLE (view text, penalty double precision, feature vector, hash bit(64))
LANGUAGE plpython3u IMMUTABLE STRICT PARALLEL UNSAFE COST 100000 ROWS 12
SET search_path = pg_catalog, pg_temp
AS $python$
# pgvision preamble: put the runtime folder on sys.path once per backend.
import sys
if "pgvision_runtime.sqlapi" not in sys.modules:
    import os, site, stat
    # raised as pgvision's other errors are: "pgvision: ..." with a SQLSTATE and a hint
    _Error = type("pgvision", (plpy.Error,), {"__module__": "builtins"})

    def _fail(message, sqlstate, hint, detail=None):
        e = _Error(message)
        e.sqlstate, e.hint = sqlstate, hint
        if detail:
            e.detail = detail
        raise e
    # Loading pgvision.so defines the settings (src/settings.c): a superuser-only one that a
    # role set before is then dropped, and the runtime reads checked values.
    if plpy.execute("SELECT pg_catalog.to_regprocedure('pgvision._load()') IS NOT NULL AS x")[0]["x"]:
        plpy.execute("SELECT pgvision._load()")
    # The folder decides which code the server runs: only the administrator's own sources
    # count (a placeholder, which any role can SET, is not in pg_settings).
    _rows = plpy.execute("SELECT setting FROM pg_catalog.pg_settings WHERE name = 'pgvision.runtime_path'"
                         " AND source IN ('default', 'configuration file', 'command line', 'environment variable')")
    _given = _rows[0]["setting"] if _rows else "@RUNTIME_PATH@"
    # Resolved once, and every folder from / down checked: nobody but root or the server's
    # user can then swap any part of what is imported later (links are resolved here, not
    # at import time), as ssh and sudo check their files.
    _root = os.path.realpath(_given)
    _site = os.path.join(_root, "venv", "lib", "python%d.%d" % sys.version_info[:2], "site-packages")
    _parts = [_p for _p in _site.split("/") if _p]
    for _i in range(len(_parts) + 2):
        _p = "/" + "/".join(_parts[:_i]) if _i <= len(_parts) else os.path.join(_site, "pgvision_runtime")
        try:
            _st = os.lstat(_p)
        except OSError as _e:
            _fail('runtime not found in "%s": %s' % (_given, _e.strerror.lower()), "58P01",
                  "run make install, or set pgvision.runtime_path in postgresql.conf",
                  detail='no folder "%s"' % _p)
        if (not stat.S_ISDIR(_st.st_mode) or _st.st_uid not in (0, os.geteuid())
                or _st.st_mode & 0o022):
            _fail('runtime folder "%s" is not a folder owned by root or the server\'s user and closed '
                  'to writes by others' % _p, "42501",
                  "install the runtime with make install, or fix the folder's owner and mode")
    # Keep the user's and the system's site-packages from shadowing the pinned runtime.
    sys.path[:] = [p for p in sys.path if "-packages" not in p]
    _before = list(sys.path)
    site.addsitedir(_site)
    sys.path[:] = [p for p in sys.path if p not in _before] + _before
    # numpy's OpenBLAS starts a thread per core at import, which takes half of numpy's
    # import time, and pgvision does no linear algebra; the postmaster's environment wins
    if "numpy" not in sys.modules:
        os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    import pgvision_runtime.sqlapi
    GD["pgvision_runtime_path"] = _root
from pgvision_runtime import sqlapi as pv
return pv.copy_query(plpy, GD, image, model)
$python$;
COMMENT ON FUNCTION pgvision._copy_query(bytea, text) IS
'internal: the views of a query image pgvision.find_copies searches with: (view, penalty, feature) rows embedded with the model, then (''hash'', 0, NULL, phash) rows of the image as it is, mirrored and turned';

-- The hash column find_copies reads: the named one, which must be bit(64); NULL when the
-- default name is not a column of the table (find_copies then uses features alone).
CREATE OR REPLACE FUNCTION pgvision._hash_column(tbl regclass, hash_column name, given boolean)
RETURNS name
LANGUAGE plpgsql STABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    _type text;
BEGIN
    IF hash_column IS NULL THEN
        RETURN NULL;
    END IF;
    SELECT pg_catalog.format_type(a.atttypid, a.atttypmod) INTO _type
    FROM pg_catalog.pg_attribute a
    WHERE a.attrelid = tbl AND a.attname = hash_column AND a.attnum > 0 AND NOT a.attisdropped;
    IF _type IS NULL THEN
        IF NOT given THEN
            RETURN NULL;
        END IF;
        RAISE EXCEPTION 'column "%" of relation % does not exist', hash_column, tbl
            USING ERRCODE = 'undefined_column',
                  HINT = pg_catalog.format('add it: ALTER TABLE %s ADD COLUMN %I bit(64) GENERATED ALWAYS AS (pgvision.phash(image)) STORED',
                                           tbl, hash_column);
    ELSIF _type <> 'bit(64)' THEN
        RAISE EXCEPTION 'column "%" of relation % is of type %, not bit(64)', hash_column, tbl, _type
            USING ERRCODE = 'datatype_mismatch', HINT = 'it must hold pgvision.phash of the row''s image';
    END IF;
    RETURN hash_column;
END
$$;
COMMENT ON FUNCTION pgvision._hash_column(regclass, name, boolean) IS
'internal: checks the perceptual hash column pgvision.find_copies reads (bit(64)); NULL when it was not named and the default is not a column';

CREATE OR REPLACE FUNCTION pgvision.find_copies(
    tbl regclass, image bytea, k int DEFAULT 10, feature_column name DEFAULT 'feature',
    hash_column name DEFAULT NULL, candidates int DEFAULT 40)
RETURNS TABLE (rank int, id text, score double precision, verdict text, item jsonb)
LANGUAGE plpgsql STABLE PARALLEL UNSAFE COST 1000000 ROWS 10
SET search_path = pg_catalog, pg_temp
SET hnsw.iterative_scan = relaxed_order
AS $$
DECLARE
    _vs text := pgvision._vector_schema();
    _hash name;
    _model text;
    _features text[];
    _penalties double precision[];
    _hashes text[];
    _key record;
    _id text;
    _item text;
    _same text;
    _ef int;
    _session_ef text;
    _q text;
BEGIN
    IF tbl IS NULL OR k IS NULL OR feature_column IS NULL OR candidates IS NULL THEN
        RAISE EXCEPTION 'tbl, k, feature_column and candidates must not be null' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF k < 1 OR k > 1000 THEN
        RAISE EXCEPTION 'k must be between 1 and 1000, not %', k USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF candidates < k OR candidates > 1000 THEN
        RAISE EXCEPTION 'candidates must be between k (%) and 1000, not %', k, candidates
            USING ERRCODE = 'invalid_parameter_value', HINT = 'it is the number of rows each view of the query reads from an index';
    END IF;
    PERFORM pgvision._vector_column(tbl, feature_column);
    _hash := pgvision._hash_column(tbl, coalesce(hash_column, 'phash'), hash_column IS NOT NULL);
    IF image IS NULL THEN
        RETURN;
    END IF;
    _model := pgvision._query_model(tbl, feature_column, NULL);
    SELECT pg_catalog.array_agg(q.feature::pg_catalog.text ORDER BY q.n) FILTER (WHERE q.feature IS NOT NULL),
           pg_catalog.array_agg(q.penalty ORDER BY q.n) FILTER (WHERE q.feature IS NOT NULL),
           pg_catalog.array_agg(q.hash::pg_catalog.text ORDER BY q.n) FILTER (WHERE q.hash IS NOT NULL)
    INTO _features, _penalties, _hashes
    FROM pgvision._copy_query(image, _model) WITH ORDINALITY q (view, penalty, feature, hash, n);

    -- Each view reads `candidates` rows from the index; an HNSW search keeps at least that
    -- many (more when the session asks for more), and the session's value comes back after.
    _ef := GREATEST(coalesce(pg_catalog.current_setting('hnsw.ef_search', true), '40')::int, 2 * candidates, 100);
    _session_ef := pg_catalog.current_setting('hnsw.ef_search', true);
    PERFORM pg_catalog.set_config('hnsw.ef_search', LEAST(_ef, 1000)::text, true);

    _key := pgvision._row_key(tbl);
    SELECT r.id, r.item INTO _id, _item FROM pgvision._result_columns(tbl, _key.columns) r;
    -- the same row found by two views: by its key, or where there is none by where it lies
    _same := CASE WHEN _key.columns IS NULL THEN 'ROW(t.tableoid, t.ctid)::pg_catalog.text' ELSE _id END;

    _q := 'WITH v AS (SELECT u.f::' || pg_catalog.quote_ident(_vs) || '.vector AS f, u.p, u.n'
          || ' FROM ROWS FROM (pg_catalog.unnest($1::pg_catalog.text[]), pg_catalog.unnest($2::pg_catalog.float8[])) WITH ORDINALITY u (f, p, n)),'
          || ' h AS (SELECT x::pg_catalog.bit(64) AS h FROM pg_catalog.unnest($3::pg_catalog.text[]) x),'
          || ' c AS MATERIALIZED ('
          || pg_catalog.format('SELECT n.* FROM v CROSS JOIN LATERAL (SELECT %s AS same, %s AS id, %s AS item, t.%I AS f, %s AS h'
                               ' FROM %s AS t WHERE t.%I IS NOT NULL ORDER BY t.%I OPERATOR(%I.<=>) v.f LIMIT $4) n',
                               _same, _id, _item, feature_column,
                               CASE WHEN _hash IS NULL THEN 'NULL::pg_catalog.bit(64)' ELSE pg_catalog.format('t.%I', _hash) END,
                               tbl, feature_column, feature_column, _vs)
          || CASE WHEN _hash IS NULL THEN '' ELSE
                 pg_catalog.format(' UNION ALL SELECT n.* FROM h CROSS JOIN LATERAL (SELECT %s AS same, %s AS id, %s AS item, t.%I AS f, t.%I AS h'
                                   ' FROM %s AS t WHERE t.%I IS NOT NULL AND t.%I IS NOT NULL ORDER BY t.%I OPERATOR(%I.<~>) h.h LIMIT $4) n',
                                   _same, _id, _item, feature_column, _hash, tbl, _hash, feature_column, _hash, _vs) END
          || '),'
          || ' s AS (SELECT DISTINCT ON (c.same) c.* FROM c),'
          || pg_catalog.format(
             ' r AS (SELECT s.id, s.item,'
             ' (SELECT pg_catalog.max(1 OPERATOR(pg_catalog.-) (s.f OPERATOR(%1$I.<=>) v.f) OPERATOR(pg_catalog.-) v.p) FROM v) AS fs,'
             ' (SELECT 1 OPERATOR(pg_catalog.-) (s.f OPERATOR(%1$I.<=>) v.f) FROM v WHERE v.n OPERATOR(pg_catalog.=) 1) AS full_sim,'
             ' (SELECT pg_catalog.min(s.h OPERATOR(%1$I.<~>) h.h) FROM h) AS bits FROM s),', _vs)
          -- (OPERATOR() has one precedence for all: the parentheses say what binds first)
          || ' x AS (SELECT r.*, r.fs OPERATOR(pg_catalog.+) (0.02::pg_catalog.float8 OPERATOR(pg_catalog.*)'
          || ' GREATEST(0::pg_catalog.float8, 18::pg_catalog.float8 OPERATOR(pg_catalog.-) coalesce(r.bits, 18::pg_catalog.float8))) AS score FROM r)'
          || ' SELECT (pg_catalog.row_number() OVER (ORDER BY x.score DESC))::pg_catalog.int4, x.id, x.score,'
          || ' CASE WHEN x.bits OPERATOR(pg_catalog.=) 0::pg_catalog.float8 AND x.full_sim OPERATOR(pg_catalog.>=) 0.99::pg_catalog.float8 THEN ''exact'''
          || ' WHEN x.bits OPERATOR(pg_catalog.<=) 8::pg_catalog.float8 THEN ''near'''
          || ' WHEN x.score OPERATOR(pg_catalog.>=) 0.9::pg_catalog.float8 THEN ''copy'' ELSE ''similar'' END, x.item'
          || ' FROM x ORDER BY x.score DESC LIMIT $5';
    RETURN QUERY EXECUTE _q USING _features, _penalties, _hashes, candidates, k;
    IF _session_ef IS NOT NULL THEN
        PERFORM pg_catalog.set_config('hnsw.ef_search', _session_ef, true);
    END IF;
END
$$;
COMMENT ON FUNCTION pgvision.find_copies(regclass, bytea, int, name, name, int) IS
'the rows whose image the query image is an edited copy of (re-encoded, resized, cropped, mirrored, turned, grey, recoloured, blurred, framed, captioned, in a screenshot), best first: score is the best cosine similarity of a view of the query (as it is, turned back a quarter, a half or three quarters, without its border, its textured region, its centre, its centre tilted back 10 degrees either way), less the view''s penalty, plus 0.02 per bit of perceptual hash distance under 18 where the table has a hash column (hash_column, default phash if there is one: bit(64), e.g. GENERATED ALWAYS AS (pgvision.phash(image)) STORED, with an hnsw bit_hamming_ops index); verdict: exact (hash distance 0, full view similarity at least 0.99), near (hash distance at most 8), copy (score at least 0.9), else similar. Each of the 9 views and 5 hashes reads candidates rows through its index; the query image is embedded once per view with the column''s model. id and item as in pgvision.search';

-- idempotent/062-duplicates.sql
-- Duplicates: the groups of rows of a table that show the same picture, or nearly.
-- Each row is linked to its nearest rows by two index scans (its feature's nearest through
-- the feature column's index, its hash's nearest through the hash column's), and rows with
-- the same image bytes by one pass over sha256 of the image column; links within the
-- thresholds are grouped by python_udf/pgvision_runtime/duplicates.py. The cost is two index
-- scans a row (not all pairs): for 10^6 rows, about 2 * 10^6 scans of `neighbours` rows
-- (bench/copies.py, BENCHMARKS.md section 8, measures a scan).
-- A near link needs both a close hash and close features: small thumbnails of one kind of
-- thing (Fashion-MNIST's) are within 8 bits of each other by the thousand (5,813 pairs of
-- 2,932), 1.6% of those pairs within cosine distance 0.1, while a re-encoded or resized
-- copy of a photo stays within it; a harsher edit (JPEG quality 15, grey) can leave it.

CREATE OR REPLACE FUNCTION pgvision._duplicate_groups(a text[], b text[], verdicts text[], distances double precision[])
RETURNS TABLE (group_no int, id text, verdict text, distance double precision)
LANGUAGE plpython3u IMMUTABLE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
AS $python$
# pgvision preamble: put the runtime folder on sys.path once per backend.
import sys
if "pgvision_runtime.sqlapi" not in sys.modules:
    import os, site, stat
    # raised as pgvision's other errors are: "pgvision: ..." with a SQLSTATE and a hint
    _Error = type("pgvision", (plpy.Error,), {"__module__": "builtins"})

    def _fail(message, sqlstate, hint, detail=None):
        e = _Error(message)
        e.sqlstate, e.hint = sqlstate, hint
        if detail:
            e.detail = detail
        raise e
    # Loading pgvision.so defines the settings (src/settings.c): a superuser-only one that a
    # role set before is then dropped, and the runtime reads checked values.
    if plpy.execute("SELECT pg_catalog.to_regprocedure('pgvision._load()') IS NOT NULL AS x")[0]["x"]:
        plpy.execute("SELECT pgvision._load()")
    # The folder decides which code the server runs: only the administrator's own sources
    # count (a placeholder, which any role can SET, is not in pg_settings).
    _rows = plpy.execute("SELECT setting FROM pg_catalog.pg_settings WHERE name = 'pgvision.runtime_path'"
                         " AND source IN ('default', 'configuration file', 'command line', 'environment variable')")
    _given = _rows[0]["setting"] if _rows else "@RUNTIME_PATH@"
    # Resolved once, and every folder from / down checked: nobody but root or the server's
    # user can then swap any part of what is imported later (links are resolved here, not
    # at import time), as ssh and sudo check their files.
    _root = os.path.realpath(_given)
    _site = os.path.join(_root, "venv", "lib", "python%d.%d" % sys.version_info[:2], "site-packages")
    _parts = [_p for _p in _site.split("/") if _p]
    for _i in range(len(_parts) + 2):
        _p = "/" + "/".join(_parts[:_i]) if _i <= len(_parts) else os.path.join(_site, "pgvision_runtime")
        try:
            _st = os.lstat(_p)
        except OSError as _e:
            _fail('runtime not found in "%s": %s' % (_given, _e.strerror.lower()), "58P01",
                  "run make install, or set pgvision.runtime_path in postgresql.conf",
                  detail='no folder "%s"' % _p)
        if (not stat.S_ISDIR(_st.st_mode) or _st.st_uid not in (0, os.geteuid())
                or _st.st_mode & 0o022):
            _fail('runtime folder "%s" is not a folder owned by root or the server\'s user and closed '
                  'to writes by others' % _p, "42501",
                  "install the runtime with make install, or fix the folder's owner and mode")
    # Keep the user's and the system's site-packages from shadowing the pinned runtime.
    sys.path[:] = [p for p in sys.path if "-packages" not in p]
    _before = list(sys.path)
    site.addsitedir(_site)
    sys.path[:] = [p for p in sys.path if p not in _before] + _before
    # numpy's OpenBLAS starts a thread per core at import, which takes half of numpy's
    # import time, and pgvision does no linear algebra; the postmaster's environment wins
    if "numpy" not in sys.modules:
        os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    import pgvision_runtime.sqlapi
    GD["pgvision_runtime_path"] = _root
from pgvision_runtime import sqlapi as pv
return pv.duplicate_groups(plpy, GD, a, b, verdicts, distances)
$python$;
COMMENT ON FUNCTION pgvision._duplicate_groups(text[], text[], text[], double precision[]) IS
'internal: the groups of pgvision.find_duplicates from its links (a, b, verdict, distance): connected parts, each row with its strongest link';

CREATE OR REPLACE FUNCTION pgvision.find_duplicates(
    tbl regclass, feature_column name DEFAULT 'feature', hash_column name DEFAULT NULL,
    image_column name DEFAULT NULL, near_bits int DEFAULT 8,
    near_distance double precision DEFAULT 0.1, similar_distance double precision DEFAULT 0.05,
    neighbours int DEFAULT 10)
RETURNS TABLE (group_no int, id text, verdict text, distance double precision)
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE COST 1000000 ROWS 100
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    _vs text := pgvision._vector_schema();
    _hash name;
    _image name;
    _key record;
    _id text;
    _links text;
    _a text[];
    _b text[];
    _v text[];
    _d double precision[];
BEGIN
    IF tbl IS NULL OR feature_column IS NULL OR near_bits IS NULL OR near_distance IS NULL
       OR similar_distance IS NULL OR neighbours IS NULL THEN
        RAISE EXCEPTION 'only hash_column and image_column may be null' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF near_bits < 0 OR near_bits > 64 THEN
        RAISE EXCEPTION 'near_bits must be between 0 and 64, not %', near_bits USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF near_distance NOT BETWEEN 0 AND 2 OR similar_distance NOT BETWEEN 0 AND 2 THEN
        RAISE EXCEPTION 'near_distance and similar_distance are cosine distances, between 0 and 2; not % and %',
                        near_distance, similar_distance USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF neighbours < 1 OR neighbours > 1000 THEN
        RAISE EXCEPTION 'neighbours must be between 1 and 1000, not %', neighbours USING ERRCODE = 'invalid_parameter_value';
    END IF;
    PERFORM pgvision._vector_column(tbl, feature_column);
    _hash := pgvision._hash_column(tbl, coalesce(hash_column, 'phash'), hash_column IS NOT NULL);
    IF image_column IS NOT NULL THEN
        PERFORM pgvision._require_column(tbl, image_column);
        IF (SELECT a.atttypid FROM pg_catalog.pg_attribute a WHERE a.attrelid = tbl AND a.attname = image_column)
           <> 'pg_catalog.bytea'::pg_catalog.regtype THEN
            RAISE EXCEPTION 'column "%" of relation % is not of type bytea', image_column, tbl
                USING ERRCODE = 'datatype_mismatch';
        END IF;
        _image := image_column;
    ELSE
        SELECT a.attname INTO _image FROM pg_catalog.pg_attribute a
        WHERE a.attrelid = tbl AND a.attname = 'image' AND a.atttypid = 'pg_catalog.bytea'::pg_catalog.regtype
          AND NOT a.attisdropped;
    END IF;
    _key := pgvision._row_key(tbl);
    IF _key.columns IS NULL THEN
        RAISE EXCEPTION 'relation % has no primary key', tbl
            USING ERRCODE = 'invalid_table_definition',
                  HINT = 'find_duplicates names rows by their primary key; add one with ALTER TABLE ... ADD PRIMARY KEY';
    END IF;
    _id := (pgvision._result_columns(tbl, _key.columns)).id;

    -- A link's verdict: exact when features (and hashes, where there are) are equal: the
    -- same pixels; near
    -- within near_bits and near_distance, else similar; its distance is that of its tier
    -- (0, hash bits, cosine distance).
    _links := pg_catalog.format(
        'WITH a AS MATERIALIZED (SELECT %1$s AS id, t.%2$I AS f, %3$s AS h FROM %4$s AS t WHERE t.%2$I IS NOT NULL),'
        ' n AS (SELECT a.id AS a, n.* FROM a CROSS JOIN LATERAL ('
        '   SELECT %1$s AS b, t.%2$I OPERATOR(%5$I.<=>) a.f AS fd, %6$s AS bits FROM %4$s AS t'
        '   WHERE t.%2$I IS NOT NULL ORDER BY t.%2$I OPERATOR(%5$I.<=>) a.f LIMIT $1) n'
        '  WHERE n.fd OPERATOR(pg_catalog.<=) $2',
        _id, feature_column,
        CASE WHEN _hash IS NULL THEN 'NULL::pg_catalog.bit(64)' ELSE pg_catalog.format('t.%I', _hash) END,
        tbl, _vs,
        CASE WHEN _hash IS NULL THEN 'NULL::pg_catalog.float8' ELSE pg_catalog.format('t.%I OPERATOR(%I.<~>) a.h', _hash, _vs) END);
    IF _hash IS NOT NULL THEN
        _links := _links || pg_catalog.format(
            ' UNION ALL SELECT a.id, n.* FROM a CROSS JOIN LATERAL ('
            '   SELECT %1$s AS b, t.%2$I OPERATOR(%5$I.<=>) a.f AS fd, t.%3$I OPERATOR(%5$I.<~>) a.h AS bits FROM %4$s AS t'
            '   WHERE t.%3$I IS NOT NULL AND t.%2$I IS NOT NULL ORDER BY t.%3$I OPERATOR(%5$I.<~>) a.h LIMIT $1) n'
            '  WHERE a.h IS NOT NULL AND n.bits OPERATOR(pg_catalog.<=) $3 AND n.fd OPERATOR(pg_catalog.<=) $4',
            _id, feature_column, _hash, tbl, _vs);
    END IF;
    _links := _links || '), l AS (SELECT n.a, n.b,'
        ' CASE WHEN coalesce(n.bits, 0::pg_catalog.float8) OPERATOR(pg_catalog.=) 0::pg_catalog.float8'
        '  AND n.fd OPERATOR(pg_catalog.<=) 1e-6::pg_catalog.float8 THEN ''exact'''
        ' WHEN n.bits OPERATOR(pg_catalog.<=) $3 AND n.fd OPERATOR(pg_catalog.<=) $4 THEN ''near'' ELSE ''similar'' END AS verdict,'
        ' n.fd, n.bits FROM n WHERE n.a OPERATOR(pg_catalog.<>) n.b'
        '  AND (n.fd OPERATOR(pg_catalog.<=) $2 OR (n.bits OPERATOR(pg_catalog.<=) $3 AND n.fd OPERATOR(pg_catalog.<=) $4)))'
        ' SELECT l.a, l.b, l.verdict, CASE l.verdict WHEN ''exact'' THEN 0::pg_catalog.float8 WHEN ''near'' THEN l.bits ELSE l.fd END FROM l';
    IF _image IS NOT NULL THEN
        -- the same bytes: each row of a digest linked to the digest's first row
        _links := _links || pg_catalog.format(
            ' UNION ALL SELECT d.first, d.id, ''exact'', 0::pg_catalog.float8 FROM ('
            '   SELECT %1$s AS id, pg_catalog.first_value(%1$s) OVER w AS first, pg_catalog.count(*) OVER w AS n'
            '   FROM %2$s AS t WHERE t.%3$I IS NOT NULL WINDOW w AS (PARTITION BY pg_catalog.sha256(t.%3$I))) d'
            ' WHERE d.n OPERATOR(pg_catalog.>) 1 AND d.id OPERATOR(pg_catalog.<>) d.first',
            _id, tbl, _image);
    END IF;
    EXECUTE 'SELECT pg_catalog.array_agg(x.a), pg_catalog.array_agg(x.b), pg_catalog.array_agg(x.v), pg_catalog.array_agg(x.d)'
            ' FROM (' || _links || ') x (a, b, v, d)'
        INTO _a, _b, _v, _d USING neighbours, similar_distance, near_bits::pg_catalog.float8, near_distance;
    RETURN QUERY SELECT * FROM pgvision._duplicate_groups(_a, _b, _v, _d);
END
$$;
COMMENT ON FUNCTION pgvision.find_duplicates(regclass, name, name, name, int, double precision, double precision, int) IS
'the groups of rows that show the same picture or nearly (rows without a duplicate are left out), by index, not all pairs: each row''s neighbours nearest rows by feature (cosine) and by perceptual hash (hash_column, default phash if the table has one: bit(64) of pgvision.phash, hnsw bit_hamming_ops index), and the rows with the same bytes (image_column, default image if it is bytea). verdict is the strongest link of the row: exact (the same bytes, or equal features and hashes: the same pixels; distance 0), near (hash distance at most near_bits with a cosine distance at most near_distance: the same picture re-encoded or resized; distance in bits), similar (cosine distance at most similar_distance; distance the cosine distance). Groups are the connected rows (so a chain of similar rows makes one group), numbered from their first row in key order. Needs a primary key; runs as the caller';

-- idempotent/900-builtin.sql
-- Built-in models and pipelines, and who may use what. Runs on install and on every upgrade.

SELECT pgvision._install_builtin_models();

INSERT INTO pgvision.pipelines (name, model, options, builtin)
VALUES ('general_feature_extractor', 'efficientnet_lite0', '{"output": "feature", "normalize": false}', true)
ON CONFLICT (name) DO NOTHING;

-- pgvision_admin (000-common.sql) manages models and pipelines.
GRANT USAGE ON SCHEMA pgvision TO PUBLIC;
GRANT SELECT ON pgvision.models, pgvision.pipelines TO PUBLIC;
GRANT INSERT, DELETE ON pgvision.models, pgvision.pipelines TO pgvision_admin;
-- Feature columns' models: open to all, narrowed by row-level security to the tables a role
-- can read and the columns it may update (incremental/005-feature-models.sql).
GRANT SELECT, INSERT, UPDATE, DELETE ON pgvision.feature_models TO PUBLIC;

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

-- pgvision's objects belong to the superuser who created the extension, so a GRANT or
-- REVOKE on them by another role changes nothing, with only a WARNING (which pg_restore
-- does not even print): a REVOKE a DBA made would be lost without a word by a restore as
-- the database's owner. This makes such a statement fail instead, naming what it was.
-- PostgreSQL tells an event trigger the kind of object, not which one, so the statement's
-- text is read; a GRANT run from inside a function is not seen.
CREATE OR REPLACE FUNCTION pgvision._refuse_ineffective_grant()
RETURNS event_trigger
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    _query text := pg_catalog.current_query();
BEGIN
    IF _query IS NULL
       OR _query !~* '\mON\s+((FUNCTION|PROCEDURE|ROUTINE|TABLE|SEQUENCE)\s+)?"?pgvision"?\s*\.|\m(ON|IN)\s+SCHEMA\s+"?pgvision"?\M'
       OR pg_catalog.pg_has_role((SELECT e.extowner FROM pg_catalog.pg_extension e
                                  WHERE e.extname = 'pgvision'), 'USAGE') THEN
        RETURN;
    END IF;
    RAISE EXCEPTION 'privileges on pgvision''s objects can be changed only by a superuser'
        USING ERRCODE = 'insufficient_privilege',
              DETAIL = pg_catalog.format('statement: %s', pg_catalog.left(_query, 500)),
              HINT = 'run it as a superuser; to restore a dump that changed them, restore as a superuser';
END
$$;
COMMENT ON FUNCTION pgvision._refuse_ineffective_grant() IS
'internal: event trigger function; makes a GRANT or REVOKE on pgvision''s objects by a role that does not own them an error instead of a warning';

DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_event_trigger t WHERE t.evtname = 'pgvision_refuse_ineffective_grant') THEN
        CREATE EVENT TRIGGER pgvision_refuse_ineffective_grant ON ddl_command_end
            WHEN TAG IN ('GRANT', 'REVOKE') EXECUTE FUNCTION pgvision._refuse_ineffective_grant();
    END IF;
END
$$;
COMMENT ON EVENT TRIGGER pgvision_refuse_ineffective_grant IS
'a GRANT or REVOKE on pgvision''s objects by a role that does not own them fails instead of doing nothing';
