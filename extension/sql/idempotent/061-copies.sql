-- Copies: which stored images a query image is an edited copy of (a crop, a screenshot, a
-- re-encoded, turned, framed or captioned copy). The query is searched for as several views
-- (python_udf/pgvision_runtime/copies.py: as it is, turned back, without its border, its
-- picture inside a screenshot, its centre, tilted back) through the feature column's index, and, where the table has
-- a perceptual hash column, as its hashes (as it is, mirrored, turned) through that
-- column's index; the union of the candidates is scored exactly.
-- Thresholds, chosen on bench/mixed.py's collection (100 originals x 14 edits among 3,279
-- rows, every view and hash scored exactly in numpy; the SQL function measured with them:
-- bench/copies.py, BENCHMARKS.md section 8):
--   score = max over views of (cosine similarity - the view's penalty)
--           + 0.02 for each bit of hash distance under 18
--   verdict exact: hash distance 0 and the full view's cosine similarity at least 0.99;
--           near: hash distance at most 8; copy: score at least 0.9; else similar.
-- Where the table has its images, the best rows are then checked by keypoint matching
-- (python_udf/pgvision_runtime/matching.py: keypoints under one perspective transform, and
-- the query's pixels found in the stored image), which tells a crop or a screenshot of a
-- picture from the picture's look-alikes: score + 0.5 x match strength (0 to 1).

CREATE OR REPLACE FUNCTION pgvision._copy_query(image bytea, model text)
RETURNS TABLE (view text, penalty double precision, feature vector, hash bit(64))
LANGUAGE plpython3u IMMUTABLE STRICT PARALLEL UNSAFE COST 100000 ROWS 12
SET search_path = pg_catalog, pg_temp
AS $python$
@PREAMBLE@
return pv.copy_query(plpy, GD, image, model)
$python$;
COMMENT ON FUNCTION pgvision._copy_query(bytea, text) IS
'internal: the views of a query image pgvision.find_copies searches with: (view, penalty, feature) rows embedded with the model, then (''hash'', 0, NULL, phash) rows of the image as it is, mirrored and turned';

-- The first, cheap look of find_copies: the full view alone and the hashes. A re-encoded,
-- resized, grey or recoloured copy is found by them with a near or exact verdict, and the
-- other eight views (turned, trimmed, cut, tilted: most of a query's time) are then not
-- computed.
CREATE OR REPLACE FUNCTION pgvision._copy_quick(image bytea, model text)
RETURNS TABLE (view text, penalty double precision, feature vector, hash bit(64))
LANGUAGE plpython3u IMMUTABLE STRICT PARALLEL UNSAFE COST 20000 ROWS 6
SET search_path = pg_catalog, pg_temp
AS $python$
@PREAMBLE@
return pv.copy_query(plpy, GD, image, model, quick=True)
$python$;
COMMENT ON FUNCTION pgvision._copy_quick(bytea, text) IS
'internal: the full view of a query image embedded with the model, then the (''hash'', 0, NULL, phash) rows, as pgvision._copy_query gives them: what pgvision.find_copies looks with first';

-- The hash column find_copies reads: the named one, which must be bit(64); NULL when the
-- default name is not a column of the table (find_copies then uses features alone).
CREATE OR REPLACE FUNCTION pgvision._hash_column(tbl regclass, hash_column name, given boolean)
RETURNS name
LANGUAGE plpgsql STABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    _type text;
BEGIN
    IF hash_column IS NULL THEN
        RETURN NULL;
    END IF;
    SELECT pg_catalog.format_type(a.atttypid, a.atttypmod) INTO _type
    FROM pg_catalog.pg_attribute a
    WHERE a.attrelid = tbl AND a.attname = hash_column AND a.attnum > 0 AND NOT a.attisdropped;
    IF _type IS NULL THEN
        IF NOT given THEN
            RETURN NULL;
        END IF;
        RAISE EXCEPTION 'column "%" of relation % does not exist', hash_column, tbl
            USING ERRCODE = 'undefined_column',
                  HINT = pg_catalog.format('add it: ALTER TABLE %s ADD COLUMN %I bit(64) GENERATED ALWAYS AS (pgvision.phash(image)) STORED',
                                           tbl, hash_column);
    ELSIF _type <> 'bit(64)' THEN
        RAISE EXCEPTION 'column "%" of relation % is of type %, not bit(64)', hash_column, tbl, _type
            USING ERRCODE = 'datatype_mismatch', HINT = 'it must hold pgvision.phash of the row''s image';
    END IF;
    RETURN hash_column;
END
$$;
COMMENT ON FUNCTION pgvision._hash_column(regclass, name, boolean) IS
'internal: checks the perceptual hash column pgvision.find_copies reads (bit(64)); NULL when it was not named and the default is not a column';

-- The image column find_copies and find_duplicates read: the named one, which must be
-- bytea; else the table's bytea column image, if it has one and the caller may read it
-- (a role granted the other columns alone still gets an answer); else NULL.
CREATE OR REPLACE FUNCTION pgvision._image_column(tbl regclass, image_column name)
RETURNS name
LANGUAGE plpgsql STABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    _image name;
BEGIN
    IF image_column IS NOT NULL THEN
        PERFORM pgvision._require_column(tbl, image_column);
        IF (SELECT a.atttypid FROM pg_catalog.pg_attribute a WHERE a.attrelid = tbl AND a.attname = image_column)
           <> 'pg_catalog.bytea'::pg_catalog.regtype THEN
            RAISE EXCEPTION 'column "%" of relation % is not of type bytea', image_column, tbl
                USING ERRCODE = 'datatype_mismatch';
        END IF;
        RETURN image_column;
    END IF;
    SELECT a.attname INTO _image FROM pg_catalog.pg_attribute a
    WHERE a.attrelid = tbl AND a.attname = 'image' AND a.atttypid = 'pg_catalog.bytea'::pg_catalog.regtype
      AND NOT a.attisdropped AND pg_catalog.has_column_privilege(tbl, a.attnum, 'SELECT');
    RETURN _image;
END
$$;
COMMENT ON FUNCTION pgvision._image_column(regclass, name) IS
'internal: the image column pgvision.find_copies and pgvision.find_duplicates read: the named one (it must be bytea), else the table''s bytea column image where the caller may read it, else NULL';

-- The check of find_copies' best rows: does the query show a part of the stored image?
-- (python_udf/pgvision_runtime/matching.py: ORB keypoints under one RANSAC homography, and
-- the query's pixels found in it by template matching).
CREATE OR REPLACE FUNCTION pgvision._copy_match(image bytea, stored bytea[])
RETURNS double precision[]
LANGUAGE plpython3u IMMUTABLE STRICT PARALLEL UNSAFE COST 100000
SET search_path = pg_catalog, pg_temp
AS $python$
@PREAMBLE@
return pv.copy_match(plpy, GD, image, stored)
$python$;
COMMENT ON FUNCTION pgvision._copy_match(bytea, bytea[]) IS
'internal: for each stored image (at most 100), how surely and how much of it the query image shows, 0 to 1: the shares of the stored image''s and of the query''s ORB keypoints spanned by those that agree on one perspective transform, multiplied, times their number up to 40 (none below 12), or where larger the share of its area the unturned query is found in pixel for pixel; NULL where a stored image is NULL or does not decode within pgvision.max_pixels and max_image_bytes. Images are decoded one at a time, matched on one thread';

CREATE OR REPLACE FUNCTION pgvision.find_copies(
    tbl regclass, image bytea, k int DEFAULT 10, feature_column name DEFAULT 'feature',
    hash_column name DEFAULT NULL, candidates int DEFAULT 40, image_column name DEFAULT NULL,
    matched int DEFAULT 10)
RETURNS TABLE (rank int, id text, score double precision, verdict text, item jsonb)
LANGUAGE plpgsql STABLE PARALLEL UNSAFE COST 1000000 ROWS 10
SET search_path = pg_catalog, pg_temp
SET hnsw.iterative_scan = relaxed_order
AS $$
DECLARE
    _vs text := pgvision._vector_schema();
    _hash name;
    _image name;
    _match text := '';
    _where text;
    _model text;
    _features text[];
    _penalties double precision[];
    _hashes text[];
    _key record;
    _id text;
    _item text;
    _same text;
    _ef int;
    _session_ef text;
    _q text;
    _quick boolean;
    _ranks int[];
    _ids text[];
    _scores double precision[];
    _verdicts text[];
    _items jsonb[];
BEGIN
    IF tbl IS NULL OR k IS NULL OR feature_column IS NULL OR candidates IS NULL OR matched IS NULL THEN
        RAISE EXCEPTION 'tbl, k, feature_column, candidates and matched must not be null' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF k < 1 OR k > 1000 THEN
        RAISE EXCEPTION 'k must be between 1 and 1000, not %', k USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF candidates < k OR candidates > 1000 THEN
        RAISE EXCEPTION 'candidates must be between k (%) and 1000, not %', k, candidates
            USING ERRCODE = 'invalid_parameter_value', HINT = 'it is the number of rows each view of the query reads from an index';
    END IF;
    IF matched < 0 OR matched > 100 THEN
        RAISE EXCEPTION 'matched must be between 0 and 100, not %', matched
            USING ERRCODE = 'invalid_parameter_value', HINT = 'it is the number of best rows whose images are matched with the query''s keypoints; 0 matches none';
    END IF;
    PERFORM pgvision._vector_column(tbl, feature_column);
    _hash := pgvision._hash_column(tbl, coalesce(hash_column, 'phash'), hash_column IS NOT NULL);
    _image := pgvision._image_column(tbl, image_column);
    IF image IS NULL THEN
        RETURN;
    END IF;
    _model := pgvision._query_model(tbl, feature_column, NULL);

    -- Each view reads `candidates` rows from the index; an HNSW search keeps at least that
    -- many (more when the session asks for more), and the session's value comes back after.
    _ef := GREATEST(coalesce(pg_catalog.current_setting('hnsw.ef_search', true), '40')::int, 2 * candidates, 100);
    _session_ef := pg_catalog.current_setting('hnsw.ef_search', true);
    PERFORM pg_catalog.set_config('hnsw.ef_search', LEAST(_ef, 1000)::text, true);

    _key := pgvision._row_key(tbl);
    SELECT r.id, r.item INTO _id, _item FROM pgvision._result_columns(tbl, _key.columns) r;
    -- the same row found by two views: by its key, or where there is none by where it lies
    _same := CASE WHEN _key.columns IS NULL THEN 'ROW(t.tableoid, t.ctid)::pg_catalog.text' ELSE _id END;

    -- The best `matched` rows' images against the query's keypoints (pgvision._copy_match);
    -- each gains 0.5 x its match strength, so a row the query shows a part of rises above
    -- look-alikes whose features are as close.
    IF _image IS NOT NULL THEN
        _match := pg_catalog.format(
            ' m AS (SELECT u.st, u.pos FROM pg_catalog.unnest(CASE WHEN $6 OPERATOR(pg_catalog.>) 0 THEN pgvision._copy_match($7,'
            ' (SELECT pg_catalog.array_agg((SELECT i.%I FROM %s AS i WHERE i.tableoid OPERATOR(pg_catalog.=) b.toid'
            ' AND i.ctid OPERATOR(pg_catalog.=) b.tid) ORDER BY b.pos) FROM b WHERE b.pos OPERATOR(pg_catalog.<=) $6)) END)'
            ' WITH ORDINALITY u (st, pos)),', _image, tbl);
    END IF;

    -- where a row lies, to fetch its image: only then, since a role granted some columns
    -- alone may not read ctid
    _where := CASE WHEN _image IS NULL THEN 'NULL::pg_catalog.oid AS toid, NULL::pg_catalog.tid AS tid'
                   ELSE 't.tableoid AS toid, t.ctid AS tid' END;
    _q := 'WITH v AS (SELECT u.f::' || pg_catalog.quote_ident(_vs) || '.vector AS f, u.p, u.n'
          || ' FROM ROWS FROM (pg_catalog.unnest($1::pg_catalog.text[]), pg_catalog.unnest($2::pg_catalog.float8[])) WITH ORDINALITY u (f, p, n)),'
          || ' h AS (SELECT x::pg_catalog.bit(64) AS h FROM pg_catalog.unnest($3::pg_catalog.text[]) x),'
          || ' c AS MATERIALIZED ('
          || pg_catalog.format('SELECT n.* FROM v CROSS JOIN LATERAL (SELECT %s AS same, %s AS id, %s AS item, t.%I AS f, %s AS h, ' || _where || ''
                               ' FROM %s AS t WHERE t.%I IS NOT NULL ORDER BY t.%I OPERATOR(%I.<=>) v.f LIMIT $4) n',
                               _same, _id, _item, feature_column,
                               CASE WHEN _hash IS NULL THEN 'NULL::pg_catalog.bit(64)' ELSE pg_catalog.format('t.%I', _hash) END,
                               tbl, feature_column, feature_column, _vs)
          || CASE WHEN _hash IS NULL THEN '' ELSE
                 pg_catalog.format(' UNION ALL SELECT n.* FROM h CROSS JOIN LATERAL (SELECT %s AS same, %s AS id, %s AS item, t.%I AS f, t.%I AS h, ' || _where || ''
                                   ' FROM %s AS t WHERE t.%I IS NOT NULL AND t.%I IS NOT NULL ORDER BY t.%I OPERATOR(%I.<~>) h.h LIMIT $4) n',
                                   _same, _id, _item, feature_column, _hash, tbl, _hash, feature_column, _hash, _vs) END
          || '),'
          || ' s AS (SELECT DISTINCT ON (c.same) c.* FROM c),'
          || pg_catalog.format(
             ' r AS (SELECT s.id, s.item, s.toid, s.tid,'
             ' (SELECT pg_catalog.max(1 OPERATOR(pg_catalog.-) (s.f OPERATOR(%1$I.<=>) v.f) OPERATOR(pg_catalog.-) v.p) FROM v) AS fs,'
             ' (SELECT 1 OPERATOR(pg_catalog.-) (s.f OPERATOR(%1$I.<=>) v.f) FROM v WHERE v.n OPERATOR(pg_catalog.=) 1) AS full_sim,'
             ' (SELECT pg_catalog.min(s.h OPERATOR(%1$I.<~>) h.h) FROM h) AS bits FROM s),', _vs)
          -- (OPERATOR() has one precedence for all: the parentheses say what binds first)
          || ' x AS (SELECT r.*, r.fs OPERATOR(pg_catalog.+) (0.02::pg_catalog.float8 OPERATOR(pg_catalog.*)'
          || ' GREATEST(0::pg_catalog.float8, 18::pg_catalog.float8 OPERATOR(pg_catalog.-) coalesce(r.bits, 18::pg_catalog.float8))) AS score FROM r),'
          || ' b AS (SELECT x.*, pg_catalog.row_number() OVER (ORDER BY x.score DESC) AS pos FROM x'
          || ' ORDER BY x.score DESC LIMIT GREATEST($5, $6)),'
          || _match
          || ' y AS (SELECT b.*, b.score' || CASE WHEN _match = '' THEN '' ELSE
                 ' OPERATOR(pg_catalog.+) (0.5::pg_catalog.float8 OPERATOR(pg_catalog.*) coalesce(m.st, 0::pg_catalog.float8))' END
          || ' AS fused FROM b' || CASE WHEN _match = '' THEN '' ELSE ' LEFT JOIN m ON m.pos OPERATOR(pg_catalog.=) b.pos' END || ')'
          || ' SELECT (pg_catalog.row_number() OVER (ORDER BY y.fused DESC, y.pos))::pg_catalog.int4 AS rank, y.id, y.fused AS score,'
          || ' CASE WHEN y.bits OPERATOR(pg_catalog.=) 0::pg_catalog.float8 AND y.full_sim OPERATOR(pg_catalog.>=) 0.99::pg_catalog.float8 THEN ''exact'''
          || ' WHEN y.bits OPERATOR(pg_catalog.<=) 8::pg_catalog.float8 THEN ''near'''
          || ' WHEN y.fused OPERATOR(pg_catalog.>=) 0.9::pg_catalog.float8 THEN ''copy'' ELSE ''similar'' END AS verdict, y.item'
          || ' FROM y ORDER BY y.fused DESC, y.pos LIMIT $5';

    -- With a hash column, first the full view and the hashes: when their best row is an exact
    -- or near copy, that is the answer (every view could differ only where another row
    -- outscored a copy within 8 bits, and the edits answered so kept their rank-1 recall:
    -- BENCHMARKS.md, section 8); else, or without a hash column, every view.
    FOREACH _quick IN ARRAY CASE WHEN _hash IS NULL THEN ARRAY[false] ELSE ARRAY[true, false] END LOOP
        EXECUTE pg_catalog.format(
            'SELECT pg_catalog.array_agg(q.feature::pg_catalog.text ORDER BY q.n) FILTER (WHERE q.feature IS NOT NULL),'
            ' pg_catalog.array_agg(q.penalty ORDER BY q.n) FILTER (WHERE q.feature IS NOT NULL),'
            ' pg_catalog.array_agg(q.hash::pg_catalog.text ORDER BY q.n) FILTER (WHERE q.hash IS NOT NULL)'
            ' FROM pgvision.%I($1, $2) WITH ORDINALITY q (view, penalty, feature, hash, n)',
            CASE WHEN _quick THEN '_copy_quick' ELSE '_copy_query' END)
            INTO _features, _penalties, _hashes USING image, _model;
        EXECUTE 'SELECT pg_catalog.array_agg(f.rank ORDER BY f.rank), pg_catalog.array_agg(f.id ORDER BY f.rank),'
                || ' pg_catalog.array_agg(f.score ORDER BY f.rank), pg_catalog.array_agg(f.verdict ORDER BY f.rank),'
                || ' pg_catalog.array_agg(f.item ORDER BY f.rank) FROM (' || _q || ') f'
            INTO _ranks, _ids, _scores, _verdicts, _items
            USING _features, _penalties, _hashes, candidates, k, CASE WHEN _quick THEN 0 ELSE matched END, image;
        EXIT WHEN NOT _quick;
        _quick := coalesce(_verdicts[1] IN ('exact', 'near'), false);
        RAISE DEBUG 'find_copies: the full view and the hashes found % at rank 1%', coalesce(_verdicts[1], 'nothing'),
            CASE WHEN _quick THEN '' ELSE '; looking with every view' END;
        EXIT WHEN _quick;
    END LOOP;
    RETURN QUERY SELECT * FROM ROWS FROM (pg_catalog.unnest(_ranks), pg_catalog.unnest(_ids), pg_catalog.unnest(_scores),
                                          pg_catalog.unnest(_verdicts), pg_catalog.unnest(_items));
    IF _session_ef IS NOT NULL THEN
        PERFORM pg_catalog.set_config('hnsw.ef_search', _session_ef, true);
    END IF;
END
$$;
COMMENT ON FUNCTION pgvision.find_copies(regclass, bytea, int, name, name, int, name, int) IS
'the rows whose image the query image is an edited copy of (re-encoded, resized, cropped, mirrored, turned, grey, recoloured, blurred, framed, captioned, in a screenshot), best first: score is the best cosine similarity of a view of the query (as it is, turned back a quarter, a half or three quarters, without its border, the picture inside it where flat colours around reach its edge (a screenshot, a page) else its largest textured region, its centre, its centre tilted back 10 degrees either way), less the view''s penalty, plus 0.02 per bit of perceptual hash distance under 18 where the table has a hash column (hash_column, default phash if there is one: bit(64), e.g. GENERATED ALWAYS AS (pgvision.phash(image)) STORED, with an hnsw bit_hamming_ops index); verdict: exact (hash distance 0, full view similarity at least 0.99), near (hash distance at most 8), copy (score at least 0.9), else similar. Each of the 9 views and 5 hashes reads candidates rows through its index; the query image is embedded once per view with the column''s model. With a hash column the full view and the hashes are looked with first, and when their best row is exact or near that is the answer, without the other views. Otherwise, where the table has its images (image_column, default image if it is bytea), the images of the best matched rows (default 10, at most 100, 0 for none) are matched with the query''s keypoints, and each gains 0.5 x its match strength (0 to 1: the shares of the stored image''s and of the query''s keypoints spanned by those that agree on one perspective transform, multiplied, times their number up to 40, none below 12; or, when larger, the share of the stored image''s area the unturned query is found in pixel for pixel: grey correlation at least 0.9 and colours within 10 levels on average, the query scaled to 100 % down to 50 % of its side): a crop, a screenshot or a tilted copy then ranks its original above look-alikes. id and item as in pgvision.search';
