-- pgvision._search_scan gained the feature column: the search functions' hnsw.ef_search now
-- follows the column's index (pgvision._index_ef_search). The old signature goes, the
-- idempotent file creates the new one.
DROP FUNCTION IF EXISTS pgvision._search_scan(regclass);
