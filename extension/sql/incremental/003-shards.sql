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
