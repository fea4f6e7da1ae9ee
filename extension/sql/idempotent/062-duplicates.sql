-- Duplicates: the groups of rows of a table that show the same picture, or nearly.
-- Each row is linked to its nearest rows by two index scans (its feature's nearest through
-- the feature column's index, its hash's nearest through the hash column's), and rows with
-- the same image bytes by one pass over sha256 of the image column; links within the
-- thresholds are grouped by python_udf/pgvision_runtime/duplicates.py. The cost is two index
-- scans a row (not all pairs): for 10^6 rows, about 2 * 10^6 scans of `neighbours` rows
-- (bench/copies.py, BENCHMARKS.md section 8, measures a scan).
-- A near link needs both a close hash and close features: small thumbnails of one kind of
-- thing (Fashion-MNIST's) are within 8 bits of each other by the thousand (5,813 pairs of
-- 2,932), 1.6% of those pairs within cosine distance 0.1, while a re-encoded or resized
-- copy of a photo stays within it; a harsher edit (JPEG quality 15, grey) can leave it.

CREATE OR REPLACE FUNCTION pgvision._duplicate_groups(a text[], b text[], verdicts text[], distances double precision[])
RETURNS TABLE (group_no int, id text, verdict text, distance double precision)
LANGUAGE plpython3u IMMUTABLE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
AS $python$
@PREAMBLE@
return pv.duplicate_groups(plpy, GD, a, b, verdicts, distances)
$python$;
COMMENT ON FUNCTION pgvision._duplicate_groups(text[], text[], text[], double precision[]) IS
'internal: the groups of pgvision.find_duplicates from its links (a, b, verdict, distance): connected parts, each row with its strongest link';

CREATE OR REPLACE FUNCTION pgvision.find_duplicates(
    tbl regclass, feature_column name DEFAULT 'feature', hash_column name DEFAULT NULL,
    image_column name DEFAULT NULL, near_bits int DEFAULT 8,
    near_distance double precision DEFAULT 0.1, similar_distance double precision DEFAULT 0.05,
    neighbours int DEFAULT 10)
RETURNS TABLE (group_no int, id text, verdict text, distance double precision)
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE COST 1000000 ROWS 100
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    _vs text := pgvision._vector_schema();
    _hash name;
    _image name;
    _key record;
    _id text;
    _links text;
    _a text[];
    _b text[];
    _v text[];
    _d double precision[];
BEGIN
    IF tbl IS NULL OR feature_column IS NULL OR near_bits IS NULL OR near_distance IS NULL
       OR similar_distance IS NULL OR neighbours IS NULL THEN
        RAISE EXCEPTION 'only hash_column and image_column may be null' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF near_bits < 0 OR near_bits > 64 THEN
        RAISE EXCEPTION 'near_bits must be between 0 and 64, not %', near_bits USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF near_distance NOT BETWEEN 0 AND 2 OR similar_distance NOT BETWEEN 0 AND 2 THEN
        RAISE EXCEPTION 'near_distance and similar_distance are cosine distances, between 0 and 2; not % and %',
                        near_distance, similar_distance USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF neighbours < 1 OR neighbours > 1000 THEN
        RAISE EXCEPTION 'neighbours must be between 1 and 1000, not %', neighbours USING ERRCODE = 'invalid_parameter_value';
    END IF;
    PERFORM pgvision._vector_column(tbl, feature_column);
    _hash := pgvision._hash_column(tbl, coalesce(hash_column, 'phash'), hash_column IS NOT NULL);
    IF image_column IS NOT NULL THEN
        PERFORM pgvision._require_column(tbl, image_column);
        IF (SELECT a.atttypid FROM pg_catalog.pg_attribute a WHERE a.attrelid = tbl AND a.attname = image_column)
           <> 'pg_catalog.bytea'::pg_catalog.regtype THEN
            RAISE EXCEPTION 'column "%" of relation % is not of type bytea', image_column, tbl
                USING ERRCODE = 'datatype_mismatch';
        END IF;
        _image := image_column;
    ELSE
        SELECT a.attname INTO _image FROM pg_catalog.pg_attribute a
        WHERE a.attrelid = tbl AND a.attname = 'image' AND a.atttypid = 'pg_catalog.bytea'::pg_catalog.regtype
          AND NOT a.attisdropped;
    END IF;
    _key := pgvision._row_key(tbl);
    IF _key.columns IS NULL THEN
        RAISE EXCEPTION 'relation % has no primary key', tbl
            USING ERRCODE = 'invalid_table_definition',
                  HINT = 'find_duplicates names rows by their primary key; add one with ALTER TABLE ... ADD PRIMARY KEY';
    END IF;
    _id := (pgvision._result_columns(tbl, _key.columns)).id;

    -- A link's verdict: exact when features (and hashes, where there are) are equal: the
    -- same pixels; near
    -- within near_bits and near_distance, else similar; its distance is that of its tier
    -- (0, hash bits, cosine distance).
    _links := pg_catalog.format(
        'WITH a AS MATERIALIZED (SELECT %1$s AS id, t.%2$I AS f, %3$s AS h FROM %4$s AS t WHERE t.%2$I IS NOT NULL),'
        ' n AS (SELECT a.id AS a, n.* FROM a CROSS JOIN LATERAL ('
        '   SELECT %1$s AS b, t.%2$I OPERATOR(%5$I.<=>) a.f AS fd, %6$s AS bits FROM %4$s AS t'
        '   WHERE t.%2$I IS NOT NULL ORDER BY t.%2$I OPERATOR(%5$I.<=>) a.f LIMIT $1) n'
        '  WHERE n.fd OPERATOR(pg_catalog.<=) $2',
        _id, feature_column,
        CASE WHEN _hash IS NULL THEN 'NULL::pg_catalog.bit(64)' ELSE pg_catalog.format('t.%I', _hash) END,
        tbl, _vs,
        CASE WHEN _hash IS NULL THEN 'NULL::pg_catalog.float8' ELSE pg_catalog.format('t.%I OPERATOR(%I.<~>) a.h', _hash, _vs) END);
    IF _hash IS NOT NULL THEN
        _links := _links || pg_catalog.format(
            ' UNION ALL SELECT a.id, n.* FROM a CROSS JOIN LATERAL ('
            '   SELECT %1$s AS b, t.%2$I OPERATOR(%5$I.<=>) a.f AS fd, t.%3$I OPERATOR(%5$I.<~>) a.h AS bits FROM %4$s AS t'
            '   WHERE t.%3$I IS NOT NULL AND t.%2$I IS NOT NULL ORDER BY t.%3$I OPERATOR(%5$I.<~>) a.h LIMIT $1) n'
            '  WHERE a.h IS NOT NULL AND n.bits OPERATOR(pg_catalog.<=) $3 AND n.fd OPERATOR(pg_catalog.<=) $4',
            _id, feature_column, _hash, tbl, _vs);
    END IF;
    _links := _links || '), l AS (SELECT n.a, n.b,'
        ' CASE WHEN coalesce(n.bits, 0::pg_catalog.float8) OPERATOR(pg_catalog.=) 0::pg_catalog.float8'
        '  AND n.fd OPERATOR(pg_catalog.<=) 1e-6::pg_catalog.float8 THEN ''exact'''
        ' WHEN n.bits OPERATOR(pg_catalog.<=) $3 AND n.fd OPERATOR(pg_catalog.<=) $4 THEN ''near'' ELSE ''similar'' END AS verdict,'
        ' n.fd, n.bits FROM n WHERE n.a OPERATOR(pg_catalog.<>) n.b'
        '  AND (n.fd OPERATOR(pg_catalog.<=) $2 OR (n.bits OPERATOR(pg_catalog.<=) $3 AND n.fd OPERATOR(pg_catalog.<=) $4)))'
        ' SELECT l.a, l.b, l.verdict, CASE l.verdict WHEN ''exact'' THEN 0::pg_catalog.float8 WHEN ''near'' THEN l.bits ELSE l.fd END FROM l';
    IF _image IS NOT NULL THEN
        -- the same bytes: each row of a digest linked to the digest's first row
        _links := _links || pg_catalog.format(
            ' UNION ALL SELECT d.first, d.id, ''exact'', 0::pg_catalog.float8 FROM ('
            '   SELECT %1$s AS id, pg_catalog.first_value(%1$s) OVER w AS first, pg_catalog.count(*) OVER w AS n'
            '   FROM %2$s AS t WHERE t.%3$I IS NOT NULL WINDOW w AS (PARTITION BY pg_catalog.sha256(t.%3$I))) d'
            ' WHERE d.n OPERATOR(pg_catalog.>) 1 AND d.id OPERATOR(pg_catalog.<>) d.first',
            _id, tbl, _image);
    END IF;
    EXECUTE 'SELECT pg_catalog.array_agg(x.a), pg_catalog.array_agg(x.b), pg_catalog.array_agg(x.v), pg_catalog.array_agg(x.d)'
            ' FROM (' || _links || ') x (a, b, v, d)'
        INTO _a, _b, _v, _d USING neighbours, similar_distance, near_bits::pg_catalog.float8, near_distance;
    RETURN QUERY SELECT * FROM pgvision._duplicate_groups(_a, _b, _v, _d);
END
$$;
COMMENT ON FUNCTION pgvision.find_duplicates(regclass, name, name, name, int, double precision, double precision, int) IS
'the groups of rows that show the same picture or nearly (rows without a duplicate are left out), by index, not all pairs: each row''s neighbours nearest rows by feature (cosine) and by perceptual hash (hash_column, default phash if the table has one: bit(64) of pgvision.phash, hnsw bit_hamming_ops index), and the rows with the same bytes (image_column, default image if it is bytea). verdict is the strongest link of the row: exact (the same bytes, or equal features and hashes: the same pixels; distance 0), near (hash distance at most near_bits with a cosine distance at most near_distance: the same picture re-encoded or resized; distance in bits), similar (cosine distance at most similar_distance; distance the cosine distance). Groups are the connected rows (so a chain of similar rows makes one group), numbered from their first row in key order. Needs a primary key; runs as the caller';
