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
