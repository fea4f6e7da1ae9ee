-- Compute the features inside the database: one model call per row...
UPDATE images SET feature = pgvision.embed(image) WHERE feature IS NULL AND id <= 4;

-- ...or many images per model call, which is faster for a backfill.
WITH todo AS (
    SELECT array_agg(id ORDER BY id) AS ids, array_agg(image ORDER BY id) AS imgs
    FROM images WHERE feature IS NULL
)
UPDATE images i SET feature = b.feature
FROM todo, unnest(todo.ids, pgvision.embed_batch(todo.imgs)) AS b (id, feature)
WHERE i.id = b.id;

SELECT id, class, vector_dims(feature) AS dims FROM images ORDER BY id;
