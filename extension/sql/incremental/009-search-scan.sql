-- pgvision._search_scan gained the feature column and the metric: the search functions'
-- hnsw.ef_search and ivfflat.probes follow the column's indexes, read once a search. The
-- old signature goes, the idempotent file creates the new one.
DROP FUNCTION IF EXISTS pgvision._search_scan(regclass);
