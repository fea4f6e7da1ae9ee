-- AnalyticDB's form: a named pipeline returns the feature as JSON.
SELECT r ->> 'model' AS model, (r ->> 'dim')::int AS dim,
       jsonb_array_length(r -> 'feature') AS length
FROM (SELECT pgvision.pipeline_run_dist_random('general_feature_extractor', image) AS r
      FROM images WHERE id = 1) AS run;

-- The JSON feature searches like any vector.
SELECT id, class, l2_distance(feature, q) AS distance
FROM images,
     pgvision.feature(pgvision.pipeline_run('general_feature_extractor',
                                            pg_read_binary_file('/usr/share/darknet/data/horses.jpg'))) AS q
ORDER BY feature <-> q
LIMIT 3;
