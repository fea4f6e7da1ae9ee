-- pgvision._switch_indexes became pgvision._column_indexes, the one reader of a column's
-- pgvector indexes that the search functions, switch_model and check_index share; the
-- idempotent files create it.
DROP FUNCTION IF EXISTS pgvision._switch_indexes(regclass, name);
