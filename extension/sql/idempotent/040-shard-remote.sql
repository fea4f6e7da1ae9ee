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
