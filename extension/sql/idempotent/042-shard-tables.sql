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
    model text DEFAULT 'efficientnet_lite0_normalized',
    auto_embed boolean DEFAULT true,
    metric text DEFAULT pgvision._default_metric(),
    m int DEFAULT 32,
    ef_construction int DEFAULT 200)
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
