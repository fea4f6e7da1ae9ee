-- Find the images most like a query image (here: a photo from disk). The query vector as a
-- scalar subquery is computed once, before the index scan, under custom and generic plans.
SELECT id, class,
       feature <-> (SELECT pgvision.embed(pg_read_binary_file('/usr/share/darknet/data/dog.jpg'))) AS distance
FROM images
ORDER BY distance
LIMIT 3;

-- Images like a stored one ("find images like image 2").
SELECT id, class, feature <-> (SELECT feature FROM images WHERE id = 2) AS distance
FROM images
WHERE id <> 2
ORDER BY feature <-> (SELECT feature FROM images WHERE id = 2)
LIMIT 3;

-- What the model sees in a photo.
SELECT label, round(score::numeric, 3) AS score
FROM pgvision.classify(pg_read_binary_file('/usr/share/darknet/data/eagle.jpg'), 3);
