-- pgvision._switch_indexes became pgvision._column_indexes, the one reader of a column's
-- pgvector indexes that the search functions, switch_model and check_index share, and the
-- search functions read it once a search (pgvision._search_scan, which now also chooses
-- the metric that pgvision._index_metric gave); the idempotent files create what replaces
-- them.
DROP FUNCTION IF EXISTS pgvision._switch_indexes(regclass, name);
DROP FUNCTION IF EXISTS pgvision._index_metric(regclass, name);
