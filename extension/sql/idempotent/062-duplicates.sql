-- Duplicates: the groups of rows of a table that show the same picture, or nearly.
-- Each row is linked to its nearest rows by two index scans (its feature's nearest through
-- the feature column's index, its hash's nearest through the hash column's), and rows with
-- the same image bytes by one pass over sha256 of the image column; links within the
-- thresholds are grouped by python_udf/pgvision_runtime/duplicates.py. The cost is two index
-- scans a row (not all pairs): for 10^6 rows, about 2 * 10^6 scans of `neighbours` rows
-- (bench/copies.py, BENCHMARKS.md section 8, measures a scan).
-- A near link needs both a close hash and close features: small thumbnails of one kind of
-- thing (Fashion-MNIST's) are within 8 bits of each other by the thousand (5,813 pairs of
-- 2,932), 1.6% of those pairs within cosine distance 0.1. Hash and features alone cannot
-- tell those from copies: a JPEG q50 re-encode of a textured photo moves its feature by a
-- cosine distance of 0.10 to 0.14, as far as look-alike thumbnails are apart. The pixels
-- can: 32x32 grey versions of a re-encoded or resized copy and its picture differ by at
-- most 1.0 grey level on average, look-alike thumbnails by 10.9 and more. So where the
-- images are in the table, a candidate within looser thresholds (16 bits, 0.2) is
-- confirmed pixel by pixel; each candidate pair costs two image decodes, the scans stay
-- as they were. Without the images, the tighter thresholds decide alone.

CREATE OR REPLACE FUNCTION pgvision._duplicate_groups(a text[], b text[], verdicts text[], distances double precision[])
RETURNS TABLE (group_no int, id text, verdict text, distance double precision)
LANGUAGE plpython3u IMMUTABLE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
AS $python$
@PREAMBLE@
return pv.duplicate_groups(plpy, GD, a, b, verdicts, distances)
$python$;
CREATE OR REPLACE FUNCTION pgvision._pixel_distance(a bytea, b bytea)
RETURNS double precision
LANGUAGE plpython3u IMMUTABLE STRICT PARALLEL UNSAFE COST 10000
SET search_path = pg_catalog, pg_temp
AS $python$
@PREAMBLE@
return pv.pixel_distance(plpy, GD, a, b)
$python$;
COMMENT ON FUNCTION pgvision._pixel_distance(bytea, bytea) IS
'internal: the mean absolute difference (0 to 255) of two images as 32x32 grey pixels, aspect ignored; NULL if one does not decode: find_duplicates'' check of a near link';

COMMENT ON FUNCTION pgvision._duplicate_groups(text[], text[], text[], double precision[]) IS
'internal: the groups of pgvision.find_duplicates from its links (a, b, verdict, distance): connected parts, each row with its strongest link';

CREATE OR REPLACE FUNCTION pgvision.find_duplicates(
    tbl regclass, feature_column name DEFAULT 'feature', hash_column name DEFAULT NULL,
    image_column name DEFAULT NULL, near_bits int DEFAULT NULL,
    near_distance double precision DEFAULT NULL, similar_distance double precision DEFAULT 0.05,
    neighbours int DEFAULT 10, near_pixels double precision DEFAULT 3)
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
    _pixels double precision;
    _bits int;
    _near double precision;
BEGIN
    IF tbl IS NULL OR feature_column IS NULL OR similar_distance IS NULL OR neighbours IS NULL THEN
        RAISE EXCEPTION 'tbl, feature_column, similar_distance and neighbours must not be null'
            USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF near_pixels NOT BETWEEN 0 AND 255 THEN
        RAISE EXCEPTION 'near_pixels is a mean difference of grey levels, between 0 and 255; not %', near_pixels
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF near_bits NOT BETWEEN 0 AND 64 THEN
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
    _image := pgvision._image_column(tbl, image_column);
    _key := pgvision._row_key(tbl);
    IF _key.columns IS NULL THEN
        RAISE EXCEPTION 'relation % has no primary key', tbl
            USING ERRCODE = 'invalid_table_definition',
                  HINT = 'find_duplicates names rows by their primary key; add one with ALTER TABLE ... ADD PRIMARY KEY';
    END IF;
    _id := (pgvision._result_columns(tbl, _key.columns)).id;
    -- With the images at hand (a plain table: rows are fetched again by ctid), a near link
    -- is confirmed pixel by pixel, which lets the hash and feature thresholds be looser:
    -- look-alikes with close hashes and features (small thumbnails of one kind of thing) are
    -- 10 grey levels and more apart, re-encoded and resized copies 1 and less.
    IF _image IS NOT NULL AND near_pixels IS NOT NULL
       AND (SELECT c.relkind FROM pg_catalog.pg_class c WHERE c.oid = tbl) = 'r' THEN
        _pixels := near_pixels;
    END IF;
    _bits := coalesce(near_bits, CASE WHEN _pixels IS NULL THEN 8 ELSE 16 END);
    _near := coalesce(near_distance, CASE WHEN _pixels IS NULL THEN 0.1 ELSE 0.2 END);

    -- A link's verdict: exact when features (and hashes, where there are) are equal: the
    -- same pixels; near within near_bits and near_distance (and near_pixels, where the
    -- images are compared), else similar; its distance is that of its tier (0, hash bits,
    -- cosine distance). Each pair once, its images compared once. (GREATEST and LEAST are
    -- SQL's own constructs, not functions a search_path could shadow.)
    _links := pg_catalog.format(
        'WITH a AS MATERIALIZED (SELECT %1$s AS id, t.%2$I AS f, %3$s AS h, t.ctid AS r FROM %4$s AS t WHERE t.%2$I IS NOT NULL),'
        ' n AS (SELECT a.id AS a, a.r AS ar, n.* FROM a CROSS JOIN LATERAL ('
        '   SELECT %1$s AS b, t.ctid AS br, t.%2$I OPERATOR(%5$I.<=>) a.f AS fd, %6$s AS bits FROM %4$s AS t'
        '   WHERE t.%2$I IS NOT NULL ORDER BY t.%2$I OPERATOR(%5$I.<=>) a.f LIMIT $1) n'
        '  WHERE n.fd OPERATOR(pg_catalog.<=) GREATEST($2, $4)',
        _id, feature_column,
        CASE WHEN _hash IS NULL THEN 'NULL::pg_catalog.bit(64)' ELSE pg_catalog.format('t.%I', _hash) END,
        tbl, _vs,
        CASE WHEN _hash IS NULL THEN 'NULL::pg_catalog.float8' ELSE pg_catalog.format('t.%I OPERATOR(%I.<~>) a.h', _hash, _vs) END);
    IF _hash IS NOT NULL THEN
        _links := _links || pg_catalog.format(
            ' UNION ALL SELECT a.id, a.r, n.* FROM a CROSS JOIN LATERAL ('
            '   SELECT %1$s AS b, t.ctid AS br, t.%2$I OPERATOR(%5$I.<=>) a.f AS fd, t.%3$I OPERATOR(%5$I.<~>) a.h AS bits FROM %4$s AS t'
            '   WHERE t.%3$I IS NOT NULL AND t.%2$I IS NOT NULL ORDER BY t.%3$I OPERATOR(%5$I.<~>) a.h LIMIT $1) n'
            '  WHERE a.h IS NOT NULL AND n.bits OPERATOR(pg_catalog.<=) $3 AND n.fd OPERATOR(pg_catalog.<=) $4',
            _id, feature_column, _hash, tbl, _vs);
    END IF;
    _links := _links || '), c AS (SELECT DISTINCT ON (LEAST(n.a, n.b), GREATEST(n.a, n.b)) n.*,'
        '  coalesce(n.bits, 0::pg_catalog.float8) OPERATOR(pg_catalog.=) 0::pg_catalog.float8'
        '   AND n.fd OPERATOR(pg_catalog.<=) 1e-6::pg_catalog.float8 AS same,'
        '  coalesce(n.bits OPERATOR(pg_catalog.<=) $3 AND n.fd OPERATOR(pg_catalog.<=) $4, false) AS close'
        ' FROM n WHERE n.a OPERATOR(pg_catalog.<>) n.b'
        ' ORDER BY LEAST(n.a, n.b), GREATEST(n.a, n.b)),'
        ' p AS MATERIALIZED (SELECT c.*, CASE WHEN NOT c.same AND c.close AND $5 IS NOT NULL THEN '
        || CASE WHEN _pixels IS NULL THEN 'NULL::pg_catalog.float8' ELSE pg_catalog.format(
            'pgvision._pixel_distance((SELECT x.%1$I FROM %2$s AS x WHERE x.ctid OPERATOR(pg_catalog.=) c.ar),'
            ' (SELECT x.%1$I FROM %2$s AS x WHERE x.ctid OPERATOR(pg_catalog.=) c.br))', _image, tbl) END
        || ' END AS pd FROM c WHERE c.same OR c.close OR c.fd OPERATOR(pg_catalog.<=) $2),'
        ' l AS (SELECT p.a, p.b, CASE WHEN p.same THEN ''exact'''
        '  WHEN p.close AND ($5 IS NULL OR p.pd OPERATOR(pg_catalog.<=) $5) THEN ''near'' ELSE ''similar'' END AS verdict,'
        '  p.fd, p.bits FROM p'
        '  WHERE p.same OR (p.close AND ($5 IS NULL OR p.pd OPERATOR(pg_catalog.<=) $5)) OR p.fd OPERATOR(pg_catalog.<=) $2)'
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
        INTO _a, _b, _v, _d USING neighbours, similar_distance, _bits::pg_catalog.float8, _near, _pixels;
    RETURN QUERY SELECT * FROM pgvision._duplicate_groups(_a, _b, _v, _d);
END
$$;
COMMENT ON FUNCTION pgvision.find_duplicates(regclass, name, name, name, int, double precision, double precision, int, double precision) IS
'the groups of rows that show the same picture or nearly (rows without a duplicate are left out), by index, not all pairs: each row''s neighbours nearest rows by feature (cosine) and by perceptual hash (hash_column, default phash if the table has one: bit(64) of pgvision.phash, hnsw bit_hamming_ops index), and the rows with the same bytes (image_column, default image if it is bytea). verdict is the strongest link of the row: exact (the same bytes, or equal features and hashes: the same pixels; distance 0), near (hash distance at most near_bits with a cosine distance at most near_distance and, in a plain table with its images, small grey versions of the two images at most near_pixels grey levels apart on average: the same picture re-encoded or resized; distance in bits; near_bits and near_distance default to 16 and 0.2 where the images are compared, else 8 and 0.1), similar (cosine distance at most similar_distance; distance the cosine distance). Groups are the connected rows (so a chain of similar rows makes one group), numbered from their first row in key order. Needs a primary key; runs as the caller';
