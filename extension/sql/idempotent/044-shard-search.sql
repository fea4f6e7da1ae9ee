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
