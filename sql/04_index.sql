-- An HNSW index for L2 distance: top-k queries read it instead of scanning the table.
CREATE INDEX images_feature_idx ON images USING hnsw (feature vector_l2_ops);
ANALYZE images;
