-- Scale-out on stock PostgreSQL. A coordinator holds a hash-partitioned table whose
-- partitions are postgres_fdw foreign tables, one per shard; each shard is an ordinary
-- PostgreSQL database with pgvision and pgvector, holding its rows in a plain table with
-- its own HNSW index and the automatic-embedding trigger, so the model runs where the row
-- is stored. pgvision.search and friends send each shard its own ORDER BY ... LIMIT k and
-- merge the answers (030-search.sql calls _shard_union below).
--
-- postgres_fdw and dblink ship with PostgreSQL but pgvision does not require them: a server
-- that never shards need not install them. The functions here look them up when called.
--   postgres_fdw: the foreign partitions, reads and writes through the coordinator, search;
--   dblink: what postgres_fdw cannot do: DDL on the shards, CALL embed_table on all of them
--   at once, pipeline_run on a random one.

COMMENT ON TABLE pgvision.shards IS
'the foreign servers (postgres_fdw) that are pgvision shards: pgvision.add_shard registers one; pipeline_run_dist_random runs on a random one, create_sharded_table places partitions on them';
COMMENT ON COLUMN pgvision.shards.server IS 'the foreign server''s name, as in pg_foreign_server';
COMMENT ON COLUMN pgvision.shards.added IS 'when it was registered';

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

-- A command on a shard, through dblink and the caller's user mapping for the foreign server.
CREATE OR REPLACE FUNCTION pgvision._shard_exec(srv name, command text)
RETURNS void
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    _dblink text := pgvision._dblink();
    _state text;
    _msg text;
    _detail text;
    _hint text;
BEGIN
    EXECUTE pg_catalog.format('SELECT %I.dblink_exec($1, $2)', _dblink) USING srv, command;
EXCEPTION WHEN OTHERS THEN
    GET STACKED DIAGNOSTICS _state = RETURNED_SQLSTATE, _msg = MESSAGE_TEXT,
                            _detail = PG_EXCEPTION_DETAIL, _hint = PG_EXCEPTION_HINT;
    PERFORM pgvision._shard_raise(srv, _state, _msg, _detail, _hint);
END
$$;
COMMENT ON FUNCTION pgvision._shard_exec(name, text) IS
'internal: runs a command on a shard with dblink (the caller''s user mapping); errors name the shard';

-- The rows of a query on a shard, each as jsonb (so one column definition fits every query).
CREATE OR REPLACE FUNCTION pgvision._shard_json(srv name, query text)
RETURNS SETOF jsonb
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    _dblink text := pgvision._dblink();
    _state text;
    _msg text;
    _detail text;
    _hint text;
BEGIN
    RETURN QUERY EXECUTE pg_catalog.format('SELECT t.r::jsonb FROM %I.dblink($1, $2) AS t(r text)', _dblink)
        USING srv, 'SELECT pg_catalog.to_jsonb(r)::pg_catalog.text FROM (' || query || ') AS r';
EXCEPTION WHEN OTHERS THEN
    GET STACKED DIAGNOSTICS _state = RETURNED_SQLSTATE, _msg = MESSAGE_TEXT,
                            _detail = PG_EXCEPTION_DETAIL, _hint = PG_EXCEPTION_HINT;
    PERFORM pgvision._shard_raise(srv, _state, _msg, _detail, _hint);
END
$$;
COMMENT ON FUNCTION pgvision._shard_json(name, text) IS
'internal: runs a query on a shard with dblink and returns its rows as jsonb; errors name the shard';

-- What a shard has: pgvision, and pgvector in the schema the coordinator's queries name.
CREATE OR REPLACE FUNCTION pgvision._shard_check(srv name)
RETURNS jsonb
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    _info jsonb;
BEGIN
    SELECT j INTO _info FROM pgvision._shard_json(srv,
        'SELECT (SELECT e.extversion FROM pg_catalog.pg_extension e WHERE e.extname OPERATOR(pg_catalog.=) ''pgvision'') AS pgvision,'
        ' (SELECT n.nspname FROM pg_catalog.pg_extension e JOIN pg_catalog.pg_namespace n'
        '  ON n.oid OPERATOR(pg_catalog.=) e.extnamespace WHERE e.extname OPERATOR(pg_catalog.=) ''vector'') AS vector_schema') AS j;
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

-- ---------------------------------------------------------------------------------------
-- The shard registry

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
    IF NOT _opts ? 'async_capable' THEN
        _fix := _fix || 'ADD async_capable ''true'''::text;
    END IF;
    IF NOT _opts ? 'parallel_commit' THEN
        _fix := _fix || 'ADD parallel_commit ''true'''::text;
    END IF;
    IF NOT _opts ? 'fdw_tuple_cost' THEN
        _fix := _fix || 'ADD fdw_tuple_cost ''0.2'''::text;
    END IF;
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
        BEGIN
            SELECT j INTO _info FROM pgvision._shard_json(_srv,
                'SELECT (SELECT e.extversion FROM pg_catalog.pg_extension e WHERE e.extname OPERATOR(pg_catalog.=) ''pgvision'') AS pgvision,'
                ' (SELECT n.nspname FROM pg_catalog.pg_extension e JOIN pg_catalog.pg_namespace n'
                '  ON n.oid OPERATOR(pg_catalog.=) e.extnamespace WHERE e.extname OPERATOR(pg_catalog.=) ''vector'') AS vector_schema') AS j;
            shard := _srv;
            reachable := true;
            pgvision_version := _info ->> 'pgvision';
            vector_schema := _info ->> 'vector_schema';
            error := NULL;
        EXCEPTION WHEN OTHERS THEN
            GET STACKED DIAGNOSTICS _msg = MESSAGE_TEXT, _detail = PG_EXCEPTION_DETAIL;
            shard := _srv;
            reachable := false;
            pgvision_version := NULL;
            vector_schema := NULL;
            error := _msg || CASE WHEN _detail <> '' THEN ': ' || _detail ELSE '' END;
        END;
        RETURN NEXT;
    END LOOP;
END
$$;
COMMENT ON FUNCTION pgvision.shard_status() IS
'one row per registered shard: whether it answers (through dblink and the caller''s user mapping), its pgvision version and pgvector schema, or the error';

-- ---------------------------------------------------------------------------------------
-- Sharded tables: a hash-partitioned table whose partitions are all foreign tables

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
    _vs text;
    _cols text;
    _partial boolean;
    _parts regclass[];
    _servers name[];
    _branches text[] := '{}';
    _left text[] := '{}';
    _msg text;
    _detail text;
BEGIN
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_class c WHERE c.oid = tbl AND c.relkind = 'p') THEN
        RETURN NULL;  -- the common case, decided at the cost of one catalog lookup
    END IF;
    SELECT pg_catalog.array_agg(st.foreign_table), pg_catalog.array_agg(st.server)
    INTO _parts, _servers
    FROM pgvision._shard_tables(tbl) st
    HAVING pg_catalog.bool_and(pg_catalog.has_table_privilege(st.foreign_table, 'SELECT'));
    IF _parts IS NULL OR (SELECT c.relrowsecurity FROM pg_catalog.pg_class c WHERE c.oid = tbl) THEN
        RETURN NULL;
    END IF;
    _vs := pgvision._vector_schema();
    SELECT pg_catalog.string_agg(pg_catalog.format('t.%I', a.attname), ', ' ORDER BY a.attnum) INTO _cols
    FROM pg_catalog.pg_attribute a
    WHERE a.attrelid = tbl AND a.attnum > 0 AND NOT a.attisdropped
      AND ((a.atttypid <> 'pg_catalog.bytea'::pg_catalog.regtype
            AND a.atttypid NOT IN (SELECT ty.oid FROM pg_catalog.pg_type ty
                                   JOIN pg_catalog.pg_namespace ns ON ns.oid = ty.typnamespace
                                   WHERE ns.nspname = _vs AND ty.typname IN ('vector', 'halfvec', 'sparsevec')))
           OR a.attname = ANY (coalesce(extra_columns, '{}'))
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
                    USING DETAIL = _msg || CASE WHEN _detail <> '' THEN ': ' || _detail ELSE '' END;
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

CREATE OR REPLACE FUNCTION pgvision.create_sharded_table(
    tbl regclass,
    shards name[] DEFAULT NULL,
    image_column name DEFAULT 'image',
    feature_column name DEFAULT 'feature',
    model text DEFAULT 'efficientnet_lite0',
    auto_embed boolean DEFAULT true,
    metric text DEFAULT 'l2',
    m int DEFAULT 16,
    ef_construction int DEFAULT 64)
RETURNS TABLE (shard name, foreign_table regclass, remote_table text)
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    _nsp name;
    _rel name;
    _strategy "char";
    _natts int;
    _key name;
    _servers name[];
    _srv name;
    _n int;
    _cols text;
    _script text;
    _base text;
    _part text;
    _done name[] := '{}';
BEGIN
    IF tbl IS NULL OR auto_embed IS NULL THEN
        RAISE EXCEPTION 'tbl and auto_embed must not be null' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    PERFORM pgvision._postgres_fdw();
    PERFORM pgvision._dblink();
    PERFORM pgvision._check_owner(tbl);

    SELECT n.nspname, c.relname INTO _nsp, _rel
    FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = tbl;
    SELECT p.partstrat, p.partnatts, a.attname INTO _strategy, _natts, _key
    FROM pg_catalog.pg_partitioned_table p
    LEFT JOIN pg_catalog.pg_attribute a ON a.attrelid = p.partrelid AND a.attnum = p.partattrs[0]
    WHERE p.partrelid = tbl;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'table % is not partitioned', tbl USING ERRCODE = 'wrong_object_type',
            HINT = 'create it with PARTITION BY HASH (key): CREATE TABLE images (id bigint NOT NULL, ...) PARTITION BY HASH (id)';
    END IF;
    IF _strategy <> 'h' OR _natts <> 1 OR _key IS NULL THEN
        RAISE EXCEPTION 'table % is not partitioned by hash of one column', tbl
            USING ERRCODE = 'feature_not_supported',
                  HINT = 'a sharded table is created with PARTITION BY HASH (key), the key being a column';
    END IF;
    IF EXISTS (SELECT FROM pg_catalog.pg_inherits i WHERE i.inhparent = tbl) THEN
        RAISE EXCEPTION 'table % already has partitions', tbl USING ERRCODE = 'object_not_in_prerequisite_state',
            HINT = 'create_sharded_table makes one partition on each shard: start from a table without any';
    END IF;

    _servers := coalesce(shards, ARRAY(SELECT s.server FROM pgvision.shards s ORDER BY s.server));
    IF pg_catalog.cardinality(_servers) IS DISTINCT FROM (SELECT pg_catalog.count(DISTINCT x) FROM pg_catalog.unnest(_servers) x)::int THEN
        RAISE EXCEPTION 'shards must not be null nor repeat a server' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF pg_catalog.cardinality(_servers) = 0 THEN
        RAISE EXCEPTION 'no shards to place % on', tbl USING ERRCODE = 'object_not_in_prerequisite_state',
            HINT = 'a member of pgvision_admin registers foreign servers with pgvision.add_shard(server)';
    END IF;
    FOREACH _srv IN ARRAY _servers LOOP
        IF NOT EXISTS (SELECT FROM pgvision.shards s WHERE s.server = _srv) THEN
            RAISE EXCEPTION 'foreign server "%" is not a pgvision shard', _srv USING ERRCODE = 'undefined_object',
                HINT = pg_catalog.format('a member of pgvision_admin registers it with SELECT pgvision.add_shard(%L)', _srv);
        END IF;
    END LOOP;
    IF auto_embed THEN
        PERFORM pgvision._embed_columns(tbl, image_column, feature_column, model);
    END IF;
    IF metric IS NOT NULL THEN
        IF pg_catalog.lower(metric) NOT IN ('l2', 'cosine', 'ip') THEN
            RAISE EXCEPTION 'unknown metric "%"', metric
                USING ERRCODE = 'invalid_parameter_value', HINT = 'expected l2, cosine or ip, or NULL for no index';
        END IF;
        IF pgvision._vector_column(tbl, feature_column) < 1 THEN
            RAISE EXCEPTION 'column "%" of relation % has no dimensions', feature_column, tbl
                USING ERRCODE = 'invalid_parameter_value',
                      HINT = pg_catalog.format('vector indexes need them: ALTER TABLE %s ALTER COLUMN %I TYPE vector(1280)',
                                               tbl, feature_column);
        END IF;
    END IF;
    -- Every shard answers and has what the table needs before anything is created.
    FOREACH _srv IN ARRAY _servers LOOP
        PERFORM pgvision._shard_check(_srv);
    END LOOP;

    -- The shard's table: the parent's columns, types (pgvector's named with its schema, the
    -- same on every server) and NOT NULLs, and a primary key on the partition key. Defaults
    -- are left out: rows come through the coordinator, which applies the parent's.
    SELECT pg_catalog.string_agg(pg_catalog.format('%I %s', a.attname, pg_catalog.format_type(a.atttypid, a.atttypmod))
                                 || CASE WHEN a.attcollation <> ty.typcollation
                                         THEN pg_catalog.format(' COLLATE %I.%I', cn.nspname, co.collname) ELSE '' END
                                 || CASE WHEN a.attnotnull THEN ' NOT NULL' ELSE '' END,
                                 ', ' ORDER BY a.attnum)
    INTO _cols
    FROM pg_catalog.pg_attribute a
    JOIN pg_catalog.pg_type ty ON ty.oid = a.atttypid
    LEFT JOIN pg_catalog.pg_collation co ON co.oid = a.attcollation
    LEFT JOIN pg_catalog.pg_namespace cn ON cn.oid = co.collnamespace
    WHERE a.attrelid = tbl AND a.attnum > 0 AND NOT a.attisdropped;
    -- One remote transaction per shard: its table, index and trigger all exist or none does.
    -- The shard runs it with the search_path the type names were written under here.
    _script := 'BEGIN; SET LOCAL search_path = pg_catalog, pg_temp; '
        || pg_catalog.format('CREATE TABLE %I.%I (%s, PRIMARY KEY (%I)); ', _nsp, _rel, _cols, _key)
        || CASE WHEN metric IS NULL THEN '' ELSE pg_catalog.format(
               'SELECT pgvision.create_index(%L, %L, metric => %L, m => %s, ef_construction => %s); ',
               pg_catalog.format('%I.%I', _nsp, _rel), feature_column, metric,
               coalesce(m::text, 'NULL'), coalesce(ef_construction::text, 'NULL')) END
        || CASE WHEN NOT auto_embed THEN '' ELSE pg_catalog.format(
               'SELECT pgvision.enable_auto_embed(%L, %L, %L, %L); ',
               pg_catalog.format('%I.%I', _nsp, _rel), image_column, feature_column, model) END
        || 'COMMIT';

    _n := pg_catalog.cardinality(_servers);
    BEGIN
        FOR i IN 1 .. _n LOOP
            _srv := _servers[i];
            PERFORM pgvision._shard_exec(_srv, _script);
            _done := _done || _srv;
            -- <table>_<server>, shortened to fit NAMEDATALEN
            _base := _rel;
            WHILE pg_catalog.octet_length(_base || '_' || _srv) > 63 LOOP
                _base := pg_catalog.left(_base, -1);
            END LOOP;
            _part := pg_catalog.format('%I.%I', _nsp, _base || '_' || _srv);
            -- use_remote_estimate: without statistics postgres_fdw guesses a few rows per
            -- shard (fewer than k with a filter), and then neither pushes the LIMIT down nor
            -- keeps the scan asynchronous; the shard's own estimate costs a round trip
            -- while planning. (ANALYZE of a foreign table would read the whole shard.)
            EXECUTE pg_catalog.format(
                'CREATE FOREIGN TABLE %s PARTITION OF %s FOR VALUES WITH (MODULUS %s, REMAINDER %s)'
                ' SERVER %I OPTIONS (schema_name %L, table_name %L, use_remote_estimate %L)',
                _part, tbl, _n, i - 1, _srv, _nsp, _rel, 'true');
            shard := _srv;
            foreign_table := _part::regclass;
            remote_table := pg_catalog.format('%I.%I', _nsp, _rel);
            RETURN NEXT;
        END LOOP;
    EXCEPTION WHEN OTHERS THEN
        -- Leave no table behind on the shards that got one before the failure.
        FOREACH _srv IN ARRAY _done LOOP
            BEGIN
                PERFORM pgvision._shard_exec(_srv, pg_catalog.format('DROP TABLE IF EXISTS %I.%I', _nsp, _rel));
            EXCEPTION WHEN OTHERS THEN
                RAISE WARNING 'could not drop %.% on shard "%" after the failure: %', _nsp, _rel, _srv, SQLERRM;
            END;
        END LOOP;
        RAISE;
    END;
END
$$;
COMMENT ON FUNCTION pgvision.create_sharded_table(regclass, name[], name, name, text, boolean, text, int, int) IS
'places an empty table created with PARTITION BY HASH (key) on shards (default: all of pgvision.shards): on each, a table with the same columns and a primary key on the key, an HNSW index on feature_column (metric l2, cosine or ip; NULL for none) and, when auto_embed, the trigger that embeds image_column with model where the row is stored; here, one foreign partition per shard. Returns each shard, its partition and the table on the shard. For the table''s owner, with USAGE on the servers and a user mapping';

-- ---------------------------------------------------------------------------------------
-- Backfill on every shard at once

CREATE OR REPLACE FUNCTION pgvision.embed_shards(tbl regclass, image_column name, feature_column name,
                                                 model text DEFAULT 'efficientnet_lite0',
                                                 batch_size int DEFAULT 64,
                                                 retry_errors boolean DEFAULT false)
RETURNS TABLE (shard name, rows_embedded bigint, failed bigint, without_image bigint, seconds double precision)
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    _dblink text;
    _servers name[];
    _remotes text[];
    _conns text[];
    _running boolean[];
    _errors text[];
    _states text[];
    _results jsonb[];
    _n int;
    _busy int;
    _any boolean;
    _res jsonb;
    _state text;
    _msg text;
    _detail text;
    _failed text[] := '{}';
    _first_state text;
BEGIN
    IF tbl IS NULL OR image_column IS NULL OR feature_column IS NULL OR model IS NULL OR retry_errors IS NULL THEN
        RAISE EXCEPTION 'tbl, image_column, feature_column, model and retry_errors must not be null'
            USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF batch_size IS NULL THEN
        RAISE EXCEPTION 'batch_size must not be null' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF batch_size < 1 THEN
        RAISE EXCEPTION 'batch_size must be at least 1, not %', batch_size
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    _dblink := pgvision._dblink();
    IF NOT pgvision._is_sharded(tbl) THEN
        RAISE EXCEPTION '% is not a sharded table', tbl USING ERRCODE = 'wrong_object_type',
            HINT = 'CALL pgvision.embed_table backfills a table of this server; pgvision.create_sharded_table places one on shards';
    END IF;
    PERFORM pgvision._embed_columns(tbl, image_column, feature_column, model);
    SELECT pg_catalog.array_agg(st.server ORDER BY st.server), pg_catalog.array_agg(st.remote_table ORDER BY st.server)
    INTO _servers, _remotes FROM pgvision._shard_tables(tbl) st;
    _n := pg_catalog.cardinality(_servers);
    _conns := ARRAY(SELECT 'pgvision_embed_shards_' || i FROM pg_catalog.generate_series(1, _n) i);
    _running := pg_catalog.array_fill(false, ARRAY[_n]);
    _errors := pg_catalog.array_fill(NULL::text, ARRAY[_n]);
    _states := pg_catalog.array_fill(NULL::text, ARRAY[_n]);
    _results := pg_catalog.array_fill(NULL::jsonb, ARRAY[_n]);

    BEGIN
        -- Start CALL pgvision.embed_table on every shard, each on a connection of its own.
        -- A shard that cannot start is reported at the end; the others go on.
        FOR i IN 1 .. _n LOOP
            EXECUTE pg_catalog.format('SELECT $1 = ANY (coalesce(%I.dblink_get_connections(), ''{}''))', _dblink)
                INTO _any USING _conns[i];
            IF _any THEN  -- left by an earlier call that failed before it could close it
                EXECUTE pg_catalog.format('SELECT %I.dblink_disconnect($1)', _dblink) USING _conns[i];
            END IF;
            BEGIN
                EXECUTE pg_catalog.format('SELECT %I.dblink_connect($1, $2)', _dblink) USING _conns[i], _servers[i];
                -- The shard's per-batch NOTICEs would only reach this server's log.
                EXECUTE pg_catalog.format('SELECT %I.dblink_exec($1, $2)', _dblink)
                    USING _conns[i], 'SET client_min_messages = warning';
                EXECUTE pg_catalog.format('SELECT %I.dblink_send_query($1, $2)', _dblink)
                    USING _conns[i], pg_catalog.format('CALL pgvision.embed_table(%L, %L, %L, %L, %s, NULL, %L)',
                                                       _remotes[i], image_column, feature_column, model,
                                                       batch_size, retry_errors);
                _running[i] := true;
            EXCEPTION WHEN OTHERS THEN
                GET STACKED DIAGNOSTICS _state = RETURNED_SQLSTATE, _msg = MESSAGE_TEXT, _detail = PG_EXCEPTION_DETAIL;
                _states[i] := _state;
                _errors[i] := _msg || CASE WHEN _detail <> '' THEN ': ' || _detail ELSE '' END;
            END;
        END LOOP;

        -- Wait for them, polling so that a cancel of this query is noticed.
        LOOP
            _any := false;
            FOR i IN 1 .. _n LOOP
                CONTINUE WHEN NOT _running[i];
                EXECUTE pg_catalog.format('SELECT %I.dblink_is_busy($1)', _dblink) INTO _busy USING _conns[i];
                IF _busy = 1 THEN
                    _any := true;
                    CONTINUE;
                END IF;
                _running[i] := false;
                BEGIN
                    -- raises the shard's error, if the CALL failed
                    EXECUTE pg_catalog.format('SELECT pg_catalog.count(*) FROM %I.dblink_get_result($1) AS r(status text)', _dblink)
                        USING _conns[i];
                    EXECUTE pg_catalog.format('SELECT pg_catalog.count(*) FROM %I.dblink_get_result($1) AS r(status text)', _dblink)
                        USING _conns[i];
                    -- Every feature changed: fresh statistics on the shard, whose estimates
                    -- the coordinator plans with (use_remote_estimate).
                    EXECUTE pg_catalog.format('SELECT %I.dblink_exec($1, $2)', _dblink)
                        USING _conns[i], 'ANALYZE ' || _remotes[i];
                    EXECUTE pg_catalog.format('SELECT t.r::jsonb FROM %I.dblink($1, $2) AS t(r text)', _dblink)
                        INTO _res
                        USING _conns[i], pg_catalog.format(
                            'SELECT pg_catalog.to_jsonb(r)::pg_catalog.text FROM (SELECT p.rows_done, p.errors, p.null_images,'
                            ' pg_catalog.date_part(''epoch'', p.finished OPERATOR(pg_catalog.-) p.started) AS seconds'
                            ' FROM pgvision.backfill_progress p WHERE p.tbl OPERATOR(pg_catalog.=) %L::pg_catalog.regclass'
                            ' AND p.feature_column OPERATOR(pg_catalog.=) %L::pg_catalog.name) r',
                            _remotes[i], feature_column);
                    _results[i] := _res;
                    RAISE NOTICE 'shard "%": % rows embedded in % s, % failed, % without image', _servers[i],
                        _results[i] ->> 'rows_done', round((_results[i] ->> 'seconds')::numeric, 1),
                        _results[i] ->> 'errors', _results[i] ->> 'null_images';
                EXCEPTION WHEN OTHERS THEN
                    GET STACKED DIAGNOSTICS _state = RETURNED_SQLSTATE, _msg = MESSAGE_TEXT, _detail = PG_EXCEPTION_DETAIL;
                    _states[i] := _state;
                    _errors[i] := _msg || CASE WHEN _detail <> '' THEN ': ' || _detail ELSE '' END;
                END;
            END LOOP;
            EXIT WHEN NOT _any;
            PERFORM pg_catalog.pg_sleep(0.1);
        END LOOP;
    EXCEPTION WHEN OTHERS OR query_canceled THEN
        -- Stop the shards' backfills too (each keeps the batches it committed) and close.
        FOR i IN 1 .. _n LOOP
            BEGIN
                IF _running[i] THEN
                    EXECUTE pg_catalog.format('SELECT %I.dblink_cancel_query($1)', _dblink) USING _conns[i];
                END IF;
                EXECUTE pg_catalog.format('SELECT %I.dblink_disconnect($1)', _dblink) USING _conns[i];
            EXCEPTION WHEN OTHERS THEN
                NULL;  -- it was never opened
            END;
        END LOOP;
        RAISE;
    END;
    FOR i IN 1 .. _n LOOP
        BEGIN
            EXECUTE pg_catalog.format('SELECT %I.dblink_disconnect($1)', _dblink) USING _conns[i];
        EXCEPTION WHEN OTHERS THEN
            NULL;  -- it was never opened (the shard could not be reached)
        END;
    END LOOP;

    FOR i IN 1 .. _n LOOP
        IF _errors[i] IS NOT NULL THEN
            _failed := _failed || pg_catalog.format('shard "%s": %s', _servers[i], _errors[i]);
            _first_state := coalesce(_first_state, _states[i]);
        END IF;
    END LOOP;
    IF pg_catalog.cardinality(_failed) > 0 THEN
        RAISE EXCEPTION 'backfill of % failed on % of % shards', tbl, pg_catalog.cardinality(_failed), _n
            USING ERRCODE = _first_state, DETAIL = pg_catalog.array_to_string(_failed, E'\n'),
                  HINT = 'the other shards finished, and every batch a shard committed stays: run pgvision.embed_shards again to continue';
    END IF;
    FOR i IN 1 .. _n LOOP
        shard := _servers[i];
        rows_embedded := (_results[i] ->> 'rows_done')::bigint;
        failed := (_results[i] ->> 'errors')::bigint;
        without_image := (_results[i] ->> 'null_images')::bigint;
        seconds := (_results[i] ->> 'seconds')::float8;
        RETURN NEXT;
    END LOOP;
END
$$;
COMMENT ON FUNCTION pgvision.embed_shards(regclass, name, name, text, int, boolean) IS
'fills the NULL features of a sharded table on all its shards at once: CALL pgvision.embed_table on each (batch by batch, committing each batch there), returning per shard the rows embedded, rows that failed (see pgvision.backfill_errors on the shard), rows without image and seconds; if a shard fails, the others finish and an error names it; run it again to continue';

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

-- ---------------------------------------------------------------------------------------
-- pipeline_run_dist_random on a random shard (005-pipelines.sql calls this when
-- pgvision.shards has rows)

CREATE OR REPLACE FUNCTION pgvision._shard_pipeline_run(name text, image bytea)
RETURNS jsonb
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    _dblink text := pgvision._dblink();
    _sql text := pg_catalog.format('SELECT pgvision.pipeline_run(%L::pg_catalog.text, %L::pg_catalog.bytea)::pg_catalog.text',
                                   name, image);
    _srv name;
    _conn text;
    _open boolean;
    _out text;
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
        EXECUTE pg_catalog.format('SELECT $1 = ANY (coalesce(%I.dblink_get_connections(), ''{}''))', _dblink)
            INTO _open USING _conn;
        BEGIN
            IF NOT _open THEN
                EXECUTE pg_catalog.format('SELECT %I.dblink_connect($1, $2)', _dblink) USING _conn, _srv;
                _open := true;
            END IF;
            EXECUTE pg_catalog.format('SELECT t.r FROM %I.dblink($1, $2) AS t(r text)', _dblink)
                INTO _out USING _conn, _sql;
            RETURN _out::jsonb;
        EXCEPTION
            WHEN connection_exception THEN
                GET STACKED DIAGNOSTICS _msg = MESSAGE_TEXT, _detail = PG_EXCEPTION_DETAIL;
                IF _open THEN  -- a kept connection that broke: the next call opens a new one
                    BEGIN
                        EXECUTE pg_catalog.format('SELECT %I.dblink_disconnect($1)', _dblink) USING _conn;
                    EXCEPTION WHEN OTHERS THEN
                        NULL;
                    END;
                END IF;
                RAISE WARNING 'shard "%" is unreachable, trying another', _srv
                    USING DETAIL = _msg || CASE WHEN _detail <> '' THEN ': ' || _detail ELSE '' END;
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

-- ---------------------------------------------------------------------------------------
-- Who may do what

-- 900-builtin.sql creates pgvision_admin too; files run in name order and the grants below
-- need the role first.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'pgvision_admin') THEN
        CREATE ROLE pgvision_admin NOLOGIN;
        COMMENT ON ROLE pgvision_admin IS 'may register and drop pgvision models and pipelines';
    END IF;
END
$$;

-- Registering a shard decides where every role's pipelines run: pgvision_admin, as for
-- models and pipelines. Sharding a table, backfilling and searching are for any role, with
-- the server privileges and user mappings the DBA gave it.
GRANT SELECT ON pgvision.shards TO PUBLIC;
GRANT INSERT, DELETE ON pgvision.shards TO pgvision_admin;
REVOKE ALL ON FUNCTION pgvision.add_shard(name) FROM PUBLIC;
REVOKE ALL ON FUNCTION pgvision.drop_shard(name) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION pgvision.add_shard(name) TO pgvision_admin;
GRANT EXECUTE ON FUNCTION pgvision.drop_shard(name) TO pgvision_admin;
